/**
 * AdamW with PyTorch's semantics (torch.optim.AdamW, the optimizer HF Trainer
 * builds for `optim: adamw_torch`), on the host. This is the reference the
 * fused GPU kernel in lib/gpu/kernels/adamw.ts is tested against, and the
 * definition of its hyper-parameters.
 *
 * Per element, at optimizer step t (1-based):
 *   g  = clip · grad                      (clip from clip_grad_norm_, 1 when not clipped)
 *   p -= lr · wd · p                      (decoupled decay, only for params with `decay`)
 *   m  = β1·m + (1−β1)·g
 *   v  = β2·v + (1−β2)·g²
 *   p -= lr/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + ε)
 */

export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

/** HF TrainingArguments defaults (adam_beta1/2, adam_epsilon, weight_decay). */
export const ADAMW_DEFAULTS: Omit<AdamWHyper, "lr"> = {
  beta1: 0.9,
  beta2: 0.999,
  eps: 1e-8,
  weightDecay: 0,
};

/** The per-step scalars both implementations use, computed once in f64. */
export interface AdamWStepScalars {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** lr · weight_decay (applied only to decayed params). */
  lrWd: number;
  /** lr / (1 − β1^t) */
  stepSize: number;
  /** sqrt(1 − β2^t) */
  bc2Sqrt: number;
}

export function adamwScalars(h: AdamWHyper, step: number): AdamWStepScalars {
  if (!(step >= 1)) throw new Error(`AdamW step must be >= 1, got ${step}`);
  return {
    lr: h.lr,
    beta1: h.beta1,
    beta2: h.beta2,
    eps: h.eps,
    lrWd: h.lr * h.weightDecay,
    stepSize: h.lr / (1 - h.beta1 ** step),
    bc2Sqrt: Math.sqrt(1 - h.beta2 ** step),
  };
}

/** One AdamW update of `p` in place (m, v updated too), f32 storage like the kernel. */
export function adamwRef(
  p: Float32Array,
  grad: Float32Array,
  m: Float32Array,
  v: Float32Array,
  h: AdamWHyper,
  step: number,
  decay: boolean,
  clip = 1,
): void {
  const s = adamwScalars(h, step);
  const f = Math.fround;
  for (let i = 0; i < p.length; i++) {
    const g = f(grad[i] * clip);
    let w = p[i];
    if (decay) w = f(w - f(f(s.lrWd) * w));
    const mi = f(f(s.beta1 * m[i]) + f(f(1 - s.beta1) * g));
    const vi = f(f(s.beta2 * v[i]) + f(f(1 - s.beta2) * f(g * g)));
    m[i] = mi;
    v[i] = vi;
    const denom = f(f(Math.sqrt(vi) / s.bc2Sqrt) + s.eps);
    p[i] = f(w - f(f(s.stepSize) * f(mi / denom)));
  }
}

/**
 * torch.nn.utils.clip_grad_norm_: the global L2 norm of all gradients and the
 * factor they are multiplied by, min(1, max_norm / (norm + 1e-6)). A max_norm
 * of 0 or null means no clipping (HF skips the call); the norm is still reported.
 */
export function gradNormRef(
  grads: Float32Array[],
  maxNorm: number | null,
): { norm: number; clip: number } {
  let sq = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) sq += g[i] * g[i];
  const norm = Math.sqrt(sq);
  return { norm, clip: clipCoefficient(norm, maxNorm) };
}

export function clipCoefficient(norm: number, maxNorm: number | null): number {
  if (maxNorm === null || !(maxNorm > 0)) return 1;
  return Math.min(1, maxNorm / (norm + 1e-6));
}
