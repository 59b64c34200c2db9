/**
 * Plain TypeScript reference operators, forward and backward, on row-major
 * Float32Arrays. Slow and obviously correct: the CPU reference model is built
 * from them, and every WGSL kernel is tested against them.
 *
 * Conventions: a Linear weight is [out, in] as in torch; activations are
 * [rows, features]; attention tensors are [batch, seq, heads, headDim].
 */

/** y[M,N] = x[M,K] · w[N,K]ᵀ (+ b[N]). */
export function linear(
  x: Float32Array,
  w: Float32Array,
  b: Float32Array | null,
  M: number,
  K: number,
  N: number,
): Float32Array {
  const y = new Float32Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * w[n * K + k];
      y[m * N + n] = s + (b ? b[n] : 0);
    }
  }
  return y;
}

/** Gradients of `linear`: dx[M,K] = dy·w, dw[N,K] = dyᵀ·x, db[N] = Σ_rows dy. */
export function linearBackward(
  x: Float32Array,
  w: Float32Array,
  dy: Float32Array,
  M: number,
  K: number,
  N: number,
): { dx: Float32Array; dw: Float32Array; db: Float32Array } {
  const dx = new Float32Array(M * K);
  const dw = new Float32Array(N * K);
  const db = new Float32Array(N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      const g = dy[m * N + n];
      if (g === 0) continue;
      db[n] += g;
      for (let k = 0; k < K; k++) {
        dx[m * K + k] += g * w[n * K + k];
        dw[n * K + k] += g * x[m * K + k];
      }
    }
  }
  return { dx, dw, db };
}

/** RMSNorm per row: y = w ⊙ x / sqrt(mean(x²) + eps); also returns rstd per row for backward. */
export function rmsnorm(
  x: Float32Array,
  w: Float32Array,
  rows: number,
  dim: number,
  eps: number,
): { y: Float32Array; rstd: Float32Array } {
  const y = new Float32Array(rows * dim);
  const rstd = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[r * dim + i] * x[r * dim + i];
    const s = 1 / Math.sqrt(ss / dim + eps);
    rstd[r] = s;
    for (let i = 0; i < dim; i++) y[r * dim + i] = w[i] * x[r * dim + i] * s;
  }
  return { y, rstd };
}

export function rmsnormBackward(
  x: Float32Array,
  w: Float32Array,
  rstd: Float32Array,
  dy: Float32Array,
  rows: number,
  dim: number,
): { dx: Float32Array; dw: Float32Array } {
  const dx = new Float32Array(rows * dim);
  const dw = new Float32Array(dim);
  for (let r = 0; r < rows; r++) {
    const s = rstd[r];
    // y_i = w_i x_i s, s = (mean(x²)+eps)^(-1/2), ds/dx_j = -s³ x_j / dim
    let dot = 0;
    for (let i = 0; i < dim; i++) dot += dy[r * dim + i] * w[i] * x[r * dim + i];
    for (let i = 0; i < dim; i++) {
      const xi = x[r * dim + i];
      dx[r * dim + i] = dy[r * dim + i] * w[i] * s - xi * s * s * s * dot / dim;
      dw[i] += dy[r * dim + i] * xi * s;
    }
  }
  return { dx, dw };
}

/**
 * ChatGLM3 rotary embedding on x [tokens, heads, headDim]: the first headDim/2
 * dims rotate as interleaved pairs (2i, 2i+1) by angle pos·θ_i with
 * θ_i = base^(−2i/(headDim/2)), base = 10000·rope_ratio; the rest pass through.
 * `inverse` rotates by −angle, which is the backward (the rotation's transpose).
 */
export function rope(
  x: Float32Array,
  tokens: number,
  heads: number,
  headDim: number,
  positions: ArrayLike<number>,
  base: number,
  inverse = false,
): Float32Array {
  const y = x.slice();
  const rotDim = headDim / 2;
  for (let t = 0; t < tokens; t++) {
    const pos = positions[t];
    for (let h = 0; h < heads; h++) {
      const o = (t * heads + h) * headDim;
      for (let i = 0; i < rotDim / 2; i++) {
        const theta = Math.pow(base, -(2 * i) / rotDim);
        const ang = pos * theta;
        const c = Math.cos(ang), s = inverse ? -Math.sin(ang) : Math.sin(ang);
        const x0 = x[o + 2 * i], x1 = x[o + 2 * i + 1];
        y[o + 2 * i] = x0 * c - x1 * s;
        y[o + 2 * i + 1] = x1 * c + x0 * s;
      }
    }
  }
  return y;
}

export interface AttentionShape {
  batch: number;
  seq: number;
  heads: number;
  /** Key/value groups; each serves heads/groups query heads. */
  groups: number;
  headDim: number;
  /** Virtual prefix positions (P-Tuning v2) every token attends to; 0 for none. */
  prefix: number;
  scale: number;
}

/**
 * Causal multi-query attention. q [B,S,H,D]; k, v [B,S,G,D]; prefix keys and
 * values pk, pv [P,G,D] shared by the batch. Token s attends to all prefix
 * positions and to tokens 0..s. Returns out [B,S,H,D] and the probabilities
 * probs [B,H,S,P+S] (zero where masked) for backward.
 */
export function attention(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  shape: AttentionShape,
  pk?: Float32Array,
  pv?: Float32Array,
): { out: Float32Array; probs: Float32Array } {
  const { batch: B, seq: S, heads: H, groups: G, headDim: D, prefix: P, scale } = shape;
  const L = P + S;
  const out = new Float32Array(B * S * H * D);
  const probs = new Float32Array(B * H * S * L);
  const keyAt = (b: number, j: number, g: number, src: "k" | "v"): Float32Array => {
    if (j < P) {
      const t = src === "k" ? pk! : pv!;
      return t.subarray((j * G + g) * D, (j * G + g + 1) * D);
    }
    const t = src === "k" ? k : v;
    const o = ((b * S + (j - P)) * G + g) * D;
    return t.subarray(o, o + D);
  };
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / (H / G));
      for (let s = 0; s < S; s++) {
        const qo = ((b * S + s) * H + h) * D;
        const row = probs.subarray(((b * H + h) * S + s) * L, ((b * H + h) * S + s + 1) * L);
        let max = -Infinity;
        const n = P + s + 1;
        for (let j = 0; j < n; j++) {
          const kj = keyAt(b, j, g, "k");
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[qo + d] * kj[d];
          row[j] = dot * scale;
          if (row[j] > max) max = row[j];
        }
        let sum = 0;
        for (let j = 0; j < n; j++) sum += row[j] = Math.exp(row[j] - max);
        for (let j = 0; j < n; j++) row[j] /= sum;
        for (let j = 0; j < n; j++) {
          const vj = keyAt(b, j, g, "v");
          for (let d = 0; d < D; d++) out[qo + d] += row[j] * vj[d];
        }
      }
    }
  }
  return { out, probs };
}

export function attentionBackward(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  probs: Float32Array,
  dout: Float32Array,
  shape: AttentionShape,
  pk?: Float32Array,
  pv?: Float32Array,
): { dq: Float32Array; dk: Float32Array; dv: Float32Array; dpk: Float32Array; dpv: Float32Array } {
  const { batch: B, seq: S, heads: H, groups: G, headDim: D, prefix: P, scale } = shape;
  const L = P + S;
  const dq = new Float32Array(q.length);
  const dk = new Float32Array(k.length);
  const dv = new Float32Array(v.length);
  const dpk = new Float32Array(P * G * D);
  const dpv = new Float32Array(P * G * D);
  const at = (
    b: number,
    j: number,
    g: number,
    which: "k" | "v" | "dk" | "dv",
  ): [Float32Array, number] => {
    if (j < P) {
      const t = which === "k" ? pk! : which === "v" ? pv! : which === "dk" ? dpk : dpv;
      return [t, (j * G + g) * D];
    }
    const t = which === "k" ? k : which === "v" ? v : which === "dk" ? dk : dv;
    return [t, ((b * S + (j - P)) * G + g) * D];
  };
  const dp = new Float32Array(L);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / (H / G));
      for (let s = 0; s < S; s++) {
        const qo = ((b * S + s) * H + h) * D;
        const row = probs.subarray(((b * H + h) * S + s) * L, ((b * H + h) * S + s + 1) * L);
        const n = P + s + 1;
        let rowDot = 0;
        for (let j = 0; j < n; j++) {
          const [vt, vo] = at(b, j, g, "v");
          const [dvt, dvo] = at(b, j, g, "dv");
          let d0 = 0;
          for (let d = 0; d < D; d++) {
            d0 += dout[qo + d] * vt[vo + d];
            dvt[dvo + d] += row[j] * dout[qo + d];
          }
          dp[j] = d0;
          rowDot += d0 * row[j];
        }
        for (let j = 0; j < n; j++) {
          const ds = row[j] * (dp[j] - rowDot) * scale;
          const [kt, ko] = at(b, j, g, "k");
          const [dkt, dko] = at(b, j, g, "dk");
          for (let d = 0; d < D; d++) {
            dq[qo + d] += ds * kt[ko + d];
            dkt[dko + d] += ds * q[qo + d];
          }
        }
      }
    }
  }
  return { dq, dk, dv, dpk, dpv };
}

const silu = (a: number) => a / (1 + Math.exp(-a));

/** SwiGLU: x [rows, 2F] → silu(x[:, :F]) ⊙ x[:, F:]. */
export function swiglu(x: Float32Array, rows: number, F: number): Float32Array {
  const y = new Float32Array(rows * F);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < F; i++) y[r * F + i] = silu(x[r * 2 * F + i]) * x[r * 2 * F + F + i];
  }
  return y;
}

export function swigluBackward(
  x: Float32Array,
  dy: Float32Array,
  rows: number,
  F: number,
): Float32Array {
  const dx = new Float32Array(rows * 2 * F);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < F; i++) {
      const a = x[r * 2 * F + i], b = x[r * 2 * F + F + i], g = dy[r * F + i];
      const sig = 1 / (1 + Math.exp(-a));
      dx[r * 2 * F + i] = g * b * sig * (1 + a * (1 - sig));
      dx[r * 2 * F + F + i] = g * a * sig;
    }
  }
  return dx;
}

/** Embedding lookup: out[t] = table[ids[t]]. */
export function embedding(ids: ArrayLike<number>, table: Float32Array, dim: number): Float32Array {
  const out = new Float32Array(ids.length * dim);
  for (let t = 0; t < ids.length; t++) {
    out.set(table.subarray(ids[t] * dim, (ids[t] + 1) * dim), t * dim);
  }
  return out;
}

/** Scatter-add of dout rows into a [vocab, dim] gradient. */
export function embeddingBackward(
  ids: ArrayLike<number>,
  dout: Float32Array,
  vocab: number,
  dim: number,
): Float32Array {
  const d = new Float32Array(vocab * dim);
  for (let t = 0; t < ids.length; t++) {
    for (let i = 0; i < dim; i++) d[ids[t] * dim + i] += dout[t * dim + i];
  }
  return d;
}

/**
 * Cross-entropy of logits [rows, V] against targets (−100 = ignored), computed
 * in f64 for the reference. Returns the summed loss, the count of valid rows,
 * and dlogits = (softmax − onehot)·gradScale on valid rows (0 elsewhere).
 */
export function crossEntropy(
  logits: Float32Array,
  targets: ArrayLike<number>,
  rows: number,
  V: number,
  gradScale = 1,
): { lossSum: number; count: number; dlogits: Float32Array } {
  const dlogits = new Float32Array(rows * V);
  let lossSum = 0, count = 0;
  for (let r = 0; r < rows; r++) {
    const t = targets[r];
    if (t === -100) continue;
    let max = -Infinity;
    for (let i = 0; i < V; i++) max = Math.max(max, logits[r * V + i]);
    let sum = 0;
    for (let i = 0; i < V; i++) sum += Math.exp(logits[r * V + i] - max);
    const lse = max + Math.log(sum);
    lossSum += lse - logits[r * V + t];
    count++;
    for (let i = 0; i < V; i++) dlogits[r * V + i] = Math.exp(logits[r * V + i] - lse) * gradScale;
    dlogits[r * V + t] -= gradScale;
  }
  return { lossSum, count, dlogits };
}

/** Shift labels for next-token loss: target of position i is labels[i+1] within each sequence. */
export function shiftLabels(labels: ArrayLike<number>, batch: number, seq: number): Int32Array {
  const out = new Int32Array(batch * seq).fill(-100);
  for (let b = 0; b < batch; b++) {
    for (let s = 0; s + 1 < seq; s++) out[b * seq + s] = labels[b * seq + s + 1];
  }
  return out;
}

export function add(a: Float32Array, b: Float32Array): Float32Array {
  const y = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) y[i] = a[i] + b[i];
  return y;
}
