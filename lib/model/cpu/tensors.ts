/**
 * Tensor plumbing of the CPU reference model (./glm.ts): id checks, gradient
 * accumulation by name, the fused qkv rows split into and joined from q, k
 * and v, and prefix gradients scattered into the prefix table.
 */
import { UserError } from "../../errors.ts";

export function checkIds(ids: Int32Array, batch: number, seq: number, vocab: number): void {
  if (ids.length !== batch * seq) {
    throw new Error(`expected ${batch}×${seq} ids, got ${ids.length}`);
  }
  for (const id of ids) {
    if (id < 0 || id >= vocab) {
      throw new UserError(`token id ${id} outside the vocabulary [0, ${vocab})`);
    }
  }
}

export function accumulate(grads: Map<string, Float32Array>, name: string, g: Float32Array): void {
  const cur = grads.get(name);
  if (!cur) grads.set(name, g);
  else for (let i = 0; i < g.length; i++) cur[i] += g[i];
}

export function splitQkv(qkv: Float32Array, T: number, H: number, G: number, D: number) {
  const W = (H + 2 * G) * D;
  const q = new Float32Array(T * H * D),
    k = new Float32Array(T * G * D),
    v = new Float32Array(T * G * D);
  for (let t = 0; t < T; t++) {
    const row = qkv.subarray(t * W, (t + 1) * W);
    q.set(row.subarray(0, H * D), t * H * D);
    k.set(row.subarray(H * D, (H + G) * D), t * G * D);
    v.set(row.subarray((H + G) * D, W), t * G * D);
  }
  return { q, k, v };
}

export function joinQkv(
  dq: Float32Array,
  dk: Float32Array,
  dv: Float32Array,
  T: number,
  H: number,
  G: number,
  D: number,
) {
  const W = (H + 2 * G) * D;
  const out = new Float32Array(T * W);
  for (let t = 0; t < T; t++) {
    out.set(dq.subarray(t * H * D, (t + 1) * H * D), t * W);
    out.set(dk.subarray(t * G * D, (t + 1) * G * D), t * W + H * D);
    out.set(dv.subarray(t * G * D, (t + 1) * G * D), t * W + (H + G) * D);
  }
  return out;
}

export function scatterPrefix(
  dTable: Float32Array,
  d: Float32Array,
  layer: number,
  which: 0 | 1,
  P: number,
  GD: number,
  row: number,
): void {
  for (let p = 0; p < P; p++) {
    const o = p * row + (2 * layer + which) * GD;
    for (let i = 0; i < GD; i++) dTable[o + i] += d[p * GD + i];
  }
}
