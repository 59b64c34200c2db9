/**
 * P-Tuning v2's prefix encoder: a trainable table [P, L·2·G·D] (optionally
 * through a two-layer tanh projection) that gives every layer P virtual keys
 * and values, with dropout per batch row in training. Forward, backward, and
 * where a layer's attention finds its prefix keys/values.
 */
import type { ComputePass } from "../../gpu/runtime.ts";
import { encodeMatmul } from "../../gpu/kernels/matmul.ts";
import { encodeDropout } from "../../gpu/kernels/dropout.ts";
import type { AttentionLayout } from "../../gpu/kernels/attention.ts";
import {
  encodeColSum,
  encodeCopy2d,
  encodeFill,
  encodeTanh,
  encodeTanhBackward,
} from "../../gpu/kernels/elementwise.ts";
import type { Core, Step } from "./core.ts";

/** Dropout stream of batch row b's copy of the prefix. */
const rowStream = (b: number) => 0x7f000000 + b;

/** Where layer i's prefix keys/values live: the shared table, or the per-batch dropout copies. */
export function prefixBinding(c: Core, layer: number, perBatch: boolean): Partial<AttentionLayout> {
  const pf = c.prefix;
  if (!pf) return {};
  const GD = c.dims.G * c.dims.D;
  const shared = !perBatch && !pf.trans;
  return {
    pkv: shared ? pf.emb.weight : c.s.pkv!,
    pkOff: 2 * layer * GD,
    pvOff: (2 * layer + 1) * GD,
    pRow: pf.C,
    pBatch: perBatch ? pf.P * pf.C : 0,
  };
}

/** Prefix keys/values for this step: projection (if any), then dropout per batch row when training. */
export function prefixForward(c: Core, pass: ComputePass, st: Step): void {
  const pf = c.prefix;
  if (!pf) return;
  const gpu = c.gpu, s = c.s;
  const PC = pf.P * pf.C;
  let src = pf.emb.weight;
  if (pf.trans) {
    const [w0, b0, w2, b2] = pf.trans;
    const h = pf.hidden;
    encodeMatmul(gpu, pass, {
      M: pf.P,
      N: h,
      K: pf.C,
      a: src,
      b: w0.weight,
      c: s.ph!,
      transB: true,
      bias: b0.weight,
    });
    encodeTanh(gpu, pass, s.ph!, pf.P * h);
    // With dropout the projected table goes to kvSum first, then one dropped copy per batch row.
    const dst = st.prefixPerBatch ? s.kvSum! : s.pkv!;
    encodeMatmul(gpu, pass, {
      M: pf.P,
      N: pf.C,
      K: h,
      a: s.ph!,
      b: w2.weight,
      c: dst,
      transB: true,
      bias: b2.weight,
    });
    src = dst;
  }
  if (st.prefixPerBatch) {
    for (let b = 0; b < st.B; b++) {
      encodeDropout(gpu, pass, {
        x: src,
        y: s.pkv!,
        yOff: b * PC,
        n: PC,
        p: pf.dropout,
        seed: st.seed,
        stream: rowStream(b),
      });
    }
  }
}

/** Gradients of prefixForward from the attention's dpkv. */
export function prefixBackward(c: Core, pass: ComputePass, st: Step): void {
  const pf = c.prefix;
  if (!pf) return;
  const gpu = c.gpu, s = c.s;
  const PC = pf.P * pf.C;
  let dkv = s.dpkv!;
  if (st.prefixPerBatch) {
    encodeFill(gpu, pass, s.kvSum!, PC, 0);
    for (let b = 0; b < st.B; b++) {
      encodeDropout(gpu, pass, {
        x: s.dpkv!,
        xOff: b * PC,
        y: s.kvSum!,
        n: PC,
        p: pf.dropout,
        seed: st.seed,
        stream: rowStream(b),
        beta: 1,
      });
    }
    dkv = s.kvSum!;
  }
  const E = pf.emb;
  if (!pf.trans) {
    encodeCopy2d(gpu, pass, { rows: 1, width: PC, src: dkv, dst: E.grad, beta: 1 });
    return;
  }
  const [w0, b0, w2, b2] = pf.trans;
  const h = pf.hidden;
  encodeMatmul(gpu, pass, {
    M: pf.C,
    N: h,
    K: pf.P,
    a: dkv,
    transA: true,
    b: s.ph!,
    c: w2.grad,
    accumulate: true,
  });
  encodeColSum(gpu, pass, { rows: pf.P, cols: pf.C, src: dkv, dst: b2.grad, beta: 1 });
  encodeMatmul(gpu, pass, { M: pf.P, N: h, K: pf.C, a: dkv, b: w2.weight, c: s.dph! });
  encodeTanhBackward(gpu, pass, s.ph!, s.dph!, pf.P * h);
  encodeMatmul(gpu, pass, {
    M: h,
    N: pf.C,
    K: pf.P,
    a: s.dph!,
    transA: true,
    b: E.weight,
    c: w0.grad,
    accumulate: true,
  });
  encodeColSum(gpu, pass, { rows: pf.P, cols: h, src: s.dph!, dst: b0.grad, beta: 1 });
  encodeMatmul(gpu, pass, {
    M: pf.P,
    N: pf.C,
    K: h,
    a: s.dph!,
    b: w0.weight,
    c: E.grad,
    accumulate: true,
  });
}

/**
 * Inference: encode the projected prefix table into pkv when there is a
 * projection (the raw table is read directly otherwise).
 */
export function prefixForInference(c: Core, pass: ComputePass): void {
  if (!c.prefix?.trans) return;
  prefixForward(c, pass, {
    B: 1,
    S: 1,
    T: 1,
    training: false,
    seed: 0,
    prefixPerBatch: false,
    pos: c.s.pos,
  });
}
