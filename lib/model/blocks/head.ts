/**
 * Output and loss: the final RMSNorm, the untied output layer (a chunk of
 * rows of logits at a time, as many as one binding holds; the table may be
 * split into slices), cross-entropy against the shifted labels with its
 * gradient written over the logits, and the backward of all of it back to
 * the last layer's output.
 */
import type { ComputePass, UniformValue } from "../../gpu/runtime.ts";
import { encodeMatmul } from "../../gpu/kernels/matmul.ts";
import { encodeRmsnorm, encodeRmsnormBackward } from "../../gpu/kernels/rmsnorm.ts";
import { encodeCrossEntropy } from "../../gpu/kernels/cross_entropy.ts";
import { OUTPUT_LAYER } from "../adapter.ts";
import type { Core, Step } from "./core.ts";

/** nf = RMSNorm(x) over `rows` rows (rstd into s.rstdF). */
export function finalNormForward(
  c: Core,
  pass: ComputePass,
  x: GPUBuffer,
  rows: number,
  y: GPUBuffer,
  rstd: GPUBuffer,
): void {
  const d = c.dims;
  encodeRmsnorm(c.gpu, pass, { x, w: c.finalNorm, y, rstd, rows, dim: d.hidden, eps: d.eps });
}

/** logits[r, sl.start..sl.end) = x[r]·Wᵀ for `rows` rows of x from row r0, into rows of width V. */
export function outputForward(
  c: Core,
  pass: ComputePass,
  x: GPUBuffer,
  r0: number,
  rows: number,
  logits: GPUBuffer,
): void {
  const d = c.dims;
  for (const sl of c.output.slices) {
    encodeMatmul(c.gpu, pass, {
      M: rows,
      N: sl.end - sl.start,
      K: d.hidden,
      a: x,
      aOffset: r0 * d.hidden,
      b: sl.buf,
      bOffset: sl.off,
      transB: true,
      bF16: c.output.f16,
      bFixed: c.adapter.kind !== "full",
      c: logits,
      cOffset: sl.start,
      ldc: d.V,
    });
  }
}

/**
 * For each chunk of rows: logits, the per-row loss into s.rowLoss, and with
 * gradScale dlogits in place, then dLoss/dnf into s.dn and, for full SFT,
 * the output layer's gradient.
 */
export function headForwardBackward(
  c: Core,
  pass: ComputePass,
  st: Step,
  gradScale?: UniformValue,
): void {
  const d = c.dims, s = c.s, gpu = c.gpu;
  const outGrad = c.adapter.kind === "full" ? c.byName.get(OUTPUT_LAYER)!.grad : undefined;
  for (let r0 = 0; r0 < st.T; r0 += s.logitRows) {
    const rows = Math.min(s.logitRows, st.T - r0);
    outputForward(c, pass, s.nf, r0, rows, s.logits);
    encodeCrossEntropy(gpu, pass, {
      logits: s.logits,
      rows,
      V: d.V,
      targets: s.targets,
      targetOff: r0,
      rowLoss: s.rowLoss,
      lossOff: r0,
      partials: s.ceParts,
      gradScale,
    });
    if (gradScale === undefined) continue;
    c.output.slices.forEach((sl, k) => {
      encodeMatmul(gpu, pass, {
        M: rows,
        N: d.hidden,
        K: sl.end - sl.start,
        a: s.logits,
        aOffset: sl.start,
        lda: d.V,
        b: sl.buf,
        bOffset: sl.off,
        bF16: c.output.f16,
        c: s.dn,
        cOffset: r0 * d.hidden,
        accumulate: k > 0,
      });
    });
    if (outGrad) {
      encodeMatmul(gpu, pass, {
        M: d.V,
        N: d.hidden,
        K: rows,
        a: s.logits,
        transA: true,
        lda: d.V,
        b: s.nf,
        bOffset: r0 * d.hidden,
        c: outGrad,
        accumulate: true,
      });
    }
  }
}

/** Backward of the final norm: s.dres = dLoss/dxs[L] from s.dn. */
export function finalNormBackward(c: Core, pass: ComputePass, st: Step): void {
  const d = c.dims, s = c.s;
  encodeRmsnormBackward(c.gpu, pass, {
    x: c.xs[d.L],
    w: c.finalNorm,
    rstd: s.rstdF,
    dy: s.dn,
    dx: s.dres,
    rows: st.T,
    dim: d.hidden,
    dw: c.finalNormParam?.grad,
  });
}
