/**
 * The word embedding: token ids → rows of the table (which may be split into
 * slices that each fit a binding), and, for full SFT, the table's gradient
 * as a sum of the rows' gradients per id (a plan made on the host groups the
 * positions of each id, so the sum is deterministic).
 */
import type { ComputePass } from "../../gpu/runtime.ts";
import { encodeEmbedding, encodeEmbeddingBackward } from "../../gpu/kernels/embedding.ts";
import { EMBEDDING } from "../adapter.ts";
import type { Core } from "./core.ts";

/** y[t] = table[ids[t]] for T tokens. */
export function embeddingForward(
  c: Core,
  pass: ComputePass,
  ids: GPUBuffer,
  T: number,
  y: GPUBuffer,
): void {
  for (const sl of c.embed.slices) {
    encodeEmbedding(c.gpu, pass, {
      ids,
      tokens: T,
      dim: c.dims.hidden,
      table: sl.range,
      f16: c.embed.f16,
      rowStart: sl.start,
      rowEnd: sl.end,
      y,
    });
  }
}

/**
 * Full SFT: the table's gradient from s.dres (dLoss/dx₀) through the plan in
 * s.plan; the gradient has the table's slices (one binding each).
 */
export function embeddingBackward(c: Core, pass: ComputePass, T: number, unique: number): void {
  const grad = c.byName.get(EMBEDDING)!.grad;
  for (const sl of c.embed.slices) {
    encodeEmbeddingBackward(c.gpu, pass, {
      plan: c.s.plan,
      unique,
      tokens: T,
      dim: c.dims.hidden,
      dy: c.s.dres,
      dtable: { buffer: grad, offset: sl.range.offset, size: sl.range.size },
      rowStart: sl.start,
      rowEnd: sl.end,
    });
  }
}
