/**
 * The CPU drivers' loop limit (lib/gpu/loop_budget.ts) and the kernels whose
 * loops grow with the batch: walked in ranges past the budget, each adding
 * onto the last. The kernels that walk model dimensions are checked past the
 * limit in their own tests (cross-entropy, sampling, attention, matmul).
 */
import { ok as assert } from "node:assert";
import { getGpu } from "../lib/gpu/device.ts";
import { DRIVER_LOOP_LIMIT, LOOP_BUDGET } from "../lib/gpu/loop_budget.ts";
import {
  createBuffer,
  dispatch,
  getPipeline,
  packUniforms,
  readF32,
  uniforms,
  upload,
} from "../lib/gpu/runtime.ts";
import { encodeSum } from "../lib/gpu/kernels/cross_entropy.ts";
import { encodeColSum } from "../lib/gpu/kernels/elementwise.ts";
import { encodeRmsnormBackward } from "../lib/gpu/kernels/rmsnorm.ts";
import { rand, runPass } from "./test_util.ts";

Deno.test("a CPU adapter stops an invocation's loops after 65,535 iterations in all, or never", async () => {
  const gpu = await getGpu();
  const code = `struct U { n: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(1) fn main() {
  var c = 0.0;
  for (var i = 0u; i < u.n; i++) { c += 1.0; }
  for (var i = 0u; i < u.n; i++) { c += 1.0; }
  y[0] = c;
}`;
  const y = createBuffer(gpu, 4);
  const n = 50000;
  await runPass((gpu, pass) =>
    dispatch(gpu, pass, getPipeline(gpu, code), [
      uniforms(gpu).alloc(packUniforms([{ u: n }])),
      y,
    ], [1])
  );
  const got = (await readF32(gpu, y))[0];
  console.log(`two loops of ${n}: ${got} iterations ran on ${gpu.adapterInfo.description}`);
  // Mesa's llvmpipe and lavapipe share one counter between the two loops (the
  // first loop's exit takes one count); a GPU has no limit.
  assert(got === 2 * n || Math.abs(got - DRIVER_LOOP_LIMIT) <= 1, `${got}`);
  assert(LOOP_BUDGET < DRIVER_LOOP_LIMIT);
});

Deno.test("column sums, RMSNorm weight gradients and loss sums over more rows than the loop budget", async () => {
  const gpu = await getGpu();
  const rows = LOOP_BUDGET + 7000, cols = 3;
  const x = rand(rows * cols, 1), dy = rand(rows * cols, 2), rstd = rand(rows, 3);
  const y0 = rand(cols, 4);
  const want = Array.from(y0, (v, c) => {
    let s = 0.5 * v;
    for (let r = 0; r < rows; r++) s += x[r * cols + c];
    return s;
  });
  const dw0 = rand(cols, 5);
  const wantDw = Array.from(dw0, (v, c) => {
    let s = 0;
    for (let r = 0; r < rows; r++) s += dy[r * cols + c] * x[r * cols + c] * rstd[r];
    return v + s;
  });
  let wantSum = 0;
  for (let r = 0; r < rows; r++) wantSum += x[r];
  const bx = upload(gpu, x), by = upload(gpu, y0), bdw = upload(gpu, dw0);
  const bdy = upload(gpu, dy), brstd = upload(gpu, rstd);
  const sum = createBuffer(gpu, 4), dx = createBuffer(gpu, rows * cols * 4);
  await runPass((gpu, pass) => {
    encodeColSum(gpu, pass, { rows, cols, src: bx, dst: by, beta: 0.5 });
    encodeRmsnormBackward(gpu, pass, {
      x: bx,
      w: upload(gpu, new Float32Array(cols).fill(1)),
      rstd: brstd,
      dy: bdy,
      dx,
      rows,
      dim: cols,
      dw: bdw,
    });
    encodeSum(gpu, pass, bx, rows, sum, 0);
  });
  const close = (a: ArrayLike<number>, b: ArrayLike<number>, what: string) => {
    for (let i = 0; i < b.length; i++) {
      assert(Math.abs(a[i] - b[i]) < 1e-3, `${what}[${i}]: ${a[i]} vs ${b[i]}`);
    }
  };
  close(await readF32(gpu, by), want, "column sum");
  close(await readF32(gpu, bdw), wantDw, "rmsnorm dw");
  close(await readF32(gpu, sum), [wantSum], "sum");
});
