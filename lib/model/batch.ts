/**
 * A micro-batch onto the device: its ids checked against the vocabulary and
 * uploaded, positions 0..seq-1 per record (right padding: a record's result
 * does not depend on its batch), and the labels shifted into targets (the
 * logits at i predict the label at i+1; -100 is ignored).
 */
import { writeBuffer } from "../gpu/runtime.ts";
import { UserError } from "../errors.ts";
import type { Core, Step } from "./blocks/core.ts";
import type { TrainBatch } from "./types.ts";

/** Upload `batch` into the core's ids, positions and targets; the shape of the step. */
export function uploadBatch(
  c: Core,
  batch: TrainBatch,
  max: { maxBatch: number; maxSeq: number },
  o: { training: boolean; seed: number },
): Step {
  const { batch: B, seq: S } = batch;
  if (!(B > 0 && S > 0)) throw new UserError(`empty batch (${B}×${S})`);
  if (B > max.maxBatch || S > max.maxSeq) {
    throw new UserError(
      `batch ${B}×${S} exceeds the model's buffers (${max.maxBatch}×${max.maxSeq}); raise maxBatch/maxSeq`,
    );
  }
  const T = B * S, V = c.dims.V, s = c.s, gpu = c.gpu;
  if (batch.inputIds.length !== T) {
    throw new UserError(`inputIds has ${batch.inputIds.length} ids, expected ${T}`);
  }
  for (let t = 0; t < T; t++) {
    const id = batch.inputIds[t];
    if (!(id >= 0 && id < V)) {
      throw new UserError(
        `input_ids: token ${id} at position ${t} is outside the vocabulary (0..${V - 1})`,
      );
    }
  }
  const pos = new Int32Array(T);
  for (let t = 0; t < T; t++) pos[t] = t % S;
  writeBuffer(gpu, s.ids, 0, batch.inputIds);
  writeBuffer(gpu, s.pos, 0, pos);
  if (batch.labels.length !== 0 && batch.labels.length !== T) {
    throw new UserError(`labels has ${batch.labels.length} values, expected ${T}`);
  }
  if (batch.labels.length) {
    const targets = new Int32Array(T).fill(-100);
    for (let b = 0; b < B; b++) {
      for (let t = 0; t + 1 < S; t++) {
        const l = batch.labels[b * S + t + 1];
        if (l !== -100 && !(l >= 0 && l < V)) {
          throw new UserError(
            `labels: ${l} at position ${b * S + t + 1} is neither -100 nor a token id`,
          );
        }
        targets[b * S + t] = l;
      }
    }
    writeBuffer(gpu, s.targets, 0, targets);
  }
  // Prefix dropout in training gives each batch row its own keys and values.
  const perBatch = o.training && (c.prefix?.dropout ?? 0) > 0;
  return {
    B,
    S,
    T,
    training: o.training,
    seed: o.seed >>> 0,
    prefixPerBatch: perBatch,
    pos: s.pos,
  };
}
