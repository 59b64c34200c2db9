/**
 * A linear layer with its LoRA branch (PEFT semantics):
 * y = x·Wᵀ (+ b) + (alpha/r)·B·A·dropout(x), forward and backward. W is
 * f16, f32, or 4-bit (QLoRA: the 4-bit matmul dequantizes it in the kernel;
 * a 4-bit W is frozen, so it needs only the input gradient). The
 * forward keeps A·dropout(x) for backward; backward draws the same dropout
 * mask again (same seed and stream) instead of keeping it.
 */
import type { ComputePass } from "../../gpu/runtime.ts";
import { encodeMatmul } from "../../gpu/kernels/matmul.ts";
import { encodeMatmul4bit } from "../../gpu/kernels/matmul_4bit.ts";
import { encodeDropout } from "../../gpu/kernels/dropout.ts";
import { encodeColSum } from "../../gpu/kernels/elementwise.ts";
import { LORA_TARGETS, loraScale, type LoraTarget } from "../adapter.ts";
import type { Core, Linear, Step } from "./core.ts";

function loraDropout(c: Core, st: Step): number {
  return c.adapter.kind === "lora" && st.training ? c.adapter.dropout : 0;
}

/** Dropout stream of a LoRA site: distinct per layer and linear kind. */
function stream(layer: number, kind: LoraTarget): number {
  return layer * 8 + LORA_TARGETS.indexOf(kind) + 1;
}

/** What a LoRA site's A sees: x, or dropout(x) in the scratch while training. */
function loraInput(
  c: Core,
  pass: ComputePass,
  st: Step,
  layer: number,
  l: Linear,
  x: GPUBuffer,
): GPUBuffer {
  const p = loraDropout(c, st);
  if (p === 0) return x;
  encodeDropout(c.gpu, pass, {
    x,
    y: c.s.xd,
    n: st.T * l.in,
    p,
    seed: st.seed,
    stream: stream(layer, l.kind),
  });
  return c.s.xd;
}

/** y = x·Wᵀ (+b) (+ y when accumulate) (+ s·B·A·dropout(x)); saves A·dropout(x) in loraSave. */
export function linearForward(
  c: Core,
  pass: ComputePass,
  st: Step,
  layer: number,
  l: Linear,
  x: GPUBuffer,
  y: GPUBuffer,
  accumulate: boolean,
  loraSave?: GPUBuffer,
): void {
  const T = st.T;
  if (l.q4) {
    // A 4-bit frozen weight, dequantized inside the product.
    encodeMatmul4bit(c.gpu, pass, {
      M: T,
      N: l.out,
      K: l.in,
      a: x,
      w: l.q4,
      c: y,
      transW: true,
      bias: l.bias,
      accumulate,
    });
  } else {
    encodeMatmul(c.gpu, pass, {
      M: T,
      N: l.out,
      K: l.in,
      a: x,
      b: l.w!,
      c: y,
      transB: true,
      bF16: l.f16,
      bFixed: !l.wParam,
      bias: l.bias,
      accumulate,
    });
  }
  if (!l.lora) return;
  const r = l.lora.A.shape[0];
  const xin = loraInput(c, pass, st, layer, l, x);
  const a = loraSave ?? c.s.da;
  encodeMatmul(c.gpu, pass, {
    M: T,
    N: r,
    K: l.in,
    a: xin,
    b: l.lora.A.weight,
    c: a,
    transB: true,
  });
  encodeMatmul(c.gpu, pass, {
    M: T,
    N: l.out,
    K: r,
    a,
    b: l.lora.B.weight,
    c: y,
    transB: true,
    alpha: loraScale(c.adapter),
    accumulate: true,
  });
}

/** Gradients of linearForward: dx (written, or left out when undefined), and into every trainable grad. */
export function linearBackward(
  c: Core,
  pass: ComputePass,
  st: Step,
  layer: number,
  l: Linear,
  x: GPUBuffer,
  dy: GPUBuffer,
  dx: GPUBuffer | undefined,
  loraSaved?: GPUBuffer,
): void {
  const T = st.T, gpu = c.gpu;
  if (dx && l.q4) {
    // dx = dy·W with W [out, in] read as [K, N]: the 4-bit weight needs no transpose.
    encodeMatmul4bit(gpu, pass, { M: T, N: l.in, K: l.out, a: dy, w: l.q4, c: dx, transW: false });
  } else if (dx) {
    encodeMatmul(gpu, pass, { M: T, N: l.in, K: l.out, a: dy, b: l.w!, c: dx, bF16: l.f16 });
  }
  if (l.wParam) {
    encodeMatmul(gpu, pass, {
      M: l.out,
      N: l.in,
      K: T,
      a: dy,
      transA: true,
      b: x,
      c: l.wParam.grad,
      accumulate: true,
    });
  }
  if (l.bParam) {
    encodeColSum(gpu, pass, { rows: T, cols: l.out, src: dy, dst: l.bParam.grad, beta: 1 });
  }
  if (!l.lora || !loraSaved) return;
  const r = l.lora.A.shape[0], s = loraScale(c.adapter);
  const p = loraDropout(c, st);
  // dB += s·dyᵀ·a ; da = s·dy·B ; dA += daᵀ·dropout(x) ; dx += dropout(da·A)
  encodeMatmul(gpu, pass, {
    M: l.out,
    N: r,
    K: T,
    a: dy,
    transA: true,
    b: loraSaved,
    c: l.lora.B.grad,
    alpha: s,
    accumulate: true,
  });
  encodeMatmul(gpu, pass, {
    M: T,
    N: r,
    K: l.out,
    a: dy,
    b: l.lora.B.weight,
    c: c.s.da,
    alpha: s,
  });
  const xin = loraInput(c, pass, st, layer, l, x);
  encodeMatmul(gpu, pass, {
    M: r,
    N: l.in,
    K: T,
    a: c.s.da,
    transA: true,
    b: xin,
    c: l.lora.A.grad,
    accumulate: true,
  });
  if (!dx) return;
  if (p > 0) {
    encodeMatmul(gpu, pass, {
      M: T,
      N: l.in,
      K: r,
      a: c.s.da,
      b: l.lora.A.weight,
      c: c.s.dxl,
    });
    encodeDropout(gpu, pass, {
      x: c.s.dxl,
      y: dx,
      n: T * l.in,
      p,
      seed: st.seed,
      stream: stream(layer, l.kind),
      beta: 1,
    });
  } else {
    encodeMatmul(gpu, pass, {
      M: T,
      N: l.in,
      K: r,
      a: c.s.da,
      b: l.lora.A.weight,
      c: dx,
      accumulate: true,
    });
  }
}
