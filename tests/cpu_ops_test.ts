/** The CPU reference operators' backward passes agree with central finite differences. */
import assert from "node:assert";
import * as ops from "../lib/model/cpu/ops.ts";
import { rand } from "./test_util.ts";

/** Checks analytic d(Σ y·w)/dx against finite differences at a few coordinates. */
function checkGrad(
  name: string,
  x: Float32Array,
  f: (x: Float32Array) => number,
  analytic: Float32Array,
  probes = 12,
) {
  const h = 1e-2;
  let worst = 0;
  for (let p = 0; p < probes; p++) {
    const i = Math.floor((p * 7919) % x.length);
    const xp = x.slice(), xm = x.slice();
    xp[i] += h;
    xm[i] -= h;
    const fd = (f(xp) - f(xm)) / (2 * h);
    const err = Math.abs(fd - analytic[i]) / Math.max(1e-2, Math.abs(fd));
    worst = Math.max(worst, err);
  }
  assert(worst < 2e-2, `${name}: finite-difference mismatch ${worst}`);
}

const dot = (a: Float32Array, b: Float32Array) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
};

Deno.test("linear backward matches finite differences", () => {
  const [M, K, N] = [3, 5, 4];
  const x = rand(M * K, 1), w = rand(N * K, 2), b = rand(N, 3), g = rand(M * N, 4);
  const { dx, dw, db } = ops.linearBackward(x, w, g, M, K, N);
  checkGrad("dx", x, (xx) => dot(ops.linear(xx, w, b, M, K, N), g), dx);
  checkGrad("dw", w, (ww) => dot(ops.linear(x, ww, b, M, K, N), g), dw);
  checkGrad("db", b, (bb) => dot(ops.linear(x, w, bb, M, K, N), g), db);
});

Deno.test("rmsnorm backward matches finite differences", () => {
  const [R, D] = [3, 8];
  const x = rand(R * D, 5), w = rand(D, 6), g = rand(R * D, 7);
  const { rstd } = ops.rmsnorm(x, w, R, D, 1e-5);
  const { dx, dw } = ops.rmsnormBackward(x, w, rstd, g, R, D);
  checkGrad("dx", x, (xx) => dot(ops.rmsnorm(xx, w, R, D, 1e-5).y, g), dx);
  checkGrad("dw", w, (ww) => dot(ops.rmsnorm(x, ww, R, D, 1e-5).y, g), dw);
});

Deno.test("rope inverse is its transpose and keeps norms", () => {
  const [T, H, D] = [4, 2, 8];
  const x = rand(T * H * D, 8), g = rand(T * H * D, 9);
  const pos = [0, 1, 2, 7];
  const y = ops.rope(x, T, H, D, pos, 10000);
  // <rope(x), g> = <x, rope⁻¹(g)>
  const lhs = dot(y, g), rhs = dot(x, ops.rope(g, T, H, D, pos, 10000, true));
  assert(Math.abs(lhs - rhs) < 1e-4, `${lhs} vs ${rhs}`);
  assert(Math.abs(dot(y, y) - dot(x, x)) < 1e-4);
  // Position 0 is the identity; the second half of each head is untouched.
  for (let i = 0; i < H * D; i++) assert(Math.abs(y[i] - x[i]) < 1e-7);
  for (let i = D / 2; i < D; i++) assert(y[H * D * 3 + i] === x[H * D * 3 + i]);
});

Deno.test("attention backward (groups, prefix) matches finite differences", () => {
  const shape = { batch: 2, seq: 3, heads: 4, groups: 2, headDim: 4, prefix: 2, scale: 0.5 };
  const { batch: B, seq: S, heads: H, groups: G, headDim: D, prefix: P } = shape;
  const q = rand(B * S * H * D, 10), k = rand(B * S * G * D, 11), v = rand(B * S * G * D, 12);
  const pk = rand(P * G * D, 13), pv = rand(P * G * D, 14), g = rand(B * S * H * D, 15);
  const { probs } = ops.attention(q, k, v, shape, pk, pv);
  const r = ops.attentionBackward(q, k, v, probs, g, shape, pk, pv);
  const f = (qq = q, kk = k, vv = v, ppk = pk, ppv = pv) =>
    dot(ops.attention(qq, kk, vv, shape, ppk, ppv).out, g);
  checkGrad("dq", q, (x) => f(x), r.dq);
  checkGrad("dk", k, (x) => f(q, x), r.dk);
  checkGrad("dv", v, (x) => f(q, k, x), r.dv);
  checkGrad("dpk", pk, (x) => f(q, k, v, x), r.dpk);
  checkGrad("dpv", pv, (x) => f(q, k, v, pk, x), r.dpv);
});

Deno.test("swiglu, embedding and cross-entropy backward match finite differences", () => {
  const [R, F] = [3, 5];
  const x = rand(R * 2 * F, 16), g = rand(R * F, 17);
  checkGrad("swiglu", x, (xx) => dot(ops.swiglu(xx, R, F), g), ops.swigluBackward(x, g, R, F));
  const ids = [2, 0, 2, 1];
  const table = rand(3 * 4, 18), ge = rand(ids.length * 4, 19);
  checkGrad(
    "embedding",
    table,
    (t) => dot(ops.embedding(ids, t, 4), ge),
    ops.embeddingBackward(ids, ge, 3, 4),
  );
  const logits = rand(4 * 6, 20, 3), targets = [1, -100, 5, 0];
  const { dlogits, count } = ops.crossEntropy(logits, targets, 4, 6);
  assert(count === 3);
  checkGrad("ce", logits, (l) => ops.crossEntropy(l, targets, 4, 6).lossSum, dlogits);
});
