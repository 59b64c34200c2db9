/**
 * The MLP block of layer i, h1 → y = h1 + dense_4h_to_h(SwiGLU(dense_h_to_4h(RMSNorm(h1)))),
 * and its backward.
 */
import type { ComputePass } from "../../gpu/runtime.ts";
import { encodeRmsnorm, encodeRmsnormBackward } from "../../gpu/kernels/rmsnorm.ts";
import { encodeSwiglu, encodeSwigluBackward } from "../../gpu/kernels/swiglu.ts";
import { encodeCopy2d } from "../../gpu/kernels/elementwise.ts";
import { type Acts, actsFor, type Core, type Step } from "./core.ts";
import { linearBackward, linearForward } from "./lora.ts";

/** a.h1 → y through layer i's MLP; a keeps what backward needs. */
export function mlpForward(
  c: Core,
  pass: ComputePass,
  st: Step,
  i: number,
  a: Acts,
  y: GPUBuffer,
): void {
  const d = c.dims, ly = c.layers[i], T = st.T, gpu = c.gpu;
  encodeRmsnorm(gpu, pass, {
    x: a.h1,
    w: ly.ln2,
    y: a.n2,
    rstd: a.rstd2,
    rows: T,
    dim: d.hidden,
    eps: d.eps,
  });
  linearForward(c, pass, st, i, ly.lin.dense_h_to_4h, a.n2, a.ff, false, a.lora.dense_h_to_4h);
  encodeSwiglu(gpu, pass, a.ff, a.sw, T, d.ffn);
  encodeCopy2d(gpu, pass, { rows: 1, width: T * d.hidden, src: a.h1, dst: y });
  linearForward(c, pass, st, i, ly.lin.dense_4h_to_h, a.sw, y, true, a.lora.dense_4h_to_h);
}

/** Backward of layer i's MLP block: s.dres holds dLoss/dy on entry and dLoss/dh1 on exit. */
export function mlpBackward(c: Core, pass: ComputePass, st: Step, i: number): void {
  const d = c.dims, ly = c.layers[i], a = actsFor(c, i), T = st.T, s = c.s, gpu = c.gpu;
  linearBackward(c, pass, st, i, ly.lin.dense_4h_to_h, a.sw, s.dres, s.dsw, a.lora.dense_4h_to_h);
  encodeSwigluBackward(gpu, pass, a.ff, s.dsw, s.dff, T, d.ffn);
  linearBackward(c, pass, st, i, ly.lin.dense_h_to_4h, a.n2, s.dff, s.dn, a.lora.dense_h_to_4h);
  encodeRmsnormBackward(gpu, pass, {
    x: a.h1,
    w: ly.ln2,
    rstd: a.rstd2,
    dy: s.dn,
    dx: s.dres,
    rows: T,
    dim: d.hidden,
    beta: 1,
    dw: ly.ln2Param?.grad,
  });
}
