/**
 * The attention block of layer i, x → h1 = x + dense(attention(rope(qkv(RMSNorm(x))))),
 * and its backward. Training and scoring attend over the step's own qkv rows;
 * a decoder passes the layout over its KV cache and a hook that stores the
 * new keys and values there (lib/model/generate.ts).
 */
import type { ComputePass } from "../../gpu/runtime.ts";
import { encodeRmsnorm, encodeRmsnormBackward } from "../../gpu/kernels/rmsnorm.ts";
import { encodeRope } from "../../gpu/kernels/rope.ts";
import {
  type AttentionLayout,
  encodeAttention,
  encodeAttentionBackward,
  encodeAttentionBackwardMaterialized,
  encodeAttentionMaterialized,
} from "../../gpu/kernels/attention.ts";
import { encodeCopy2d } from "../../gpu/kernels/elementwise.ts";
import { type Acts, actsFor, type Core, type Step } from "./core.ts";
import { linearBackward, linearForward } from "./lora.ts";
import { prefixBinding } from "./prefix.ts";

/** How a layer attends: over which keys, through which kernels. */
export interface AttentionSite {
  layout: AttentionLayout;
  /** Score scratch: attention through batched matmuls; absent: the per-row kernels. */
  scores?: GPUBuffer;
  /** Encoded after the rotary embedding, before attention: a decoder's KV cache store. */
  store?: (pass: ComputePass) => void;
}

/** Layer i attending over its own fused qkv rows (training, scoring, a prompt's prefill). */
export function ownLayout(c: Core, st: Step, layer: number, qkv: GPUBuffer, stats: GPUBuffer) {
  const d = c.dims;
  const l: AttentionLayout = {
    batch: st.B,
    seq: st.S,
    heads: d.H,
    groups: d.G,
    headDim: d.D,
    prefix: c.prefix?.P ?? 0,
    scale: 1 / Math.sqrt(d.D),
    q: qkv,
    qOff: 0,
    qRow: d.W,
    kv: qkv,
    kOff: d.A,
    vOff: d.A + d.G * d.D,
    kvRow: d.W,
    kvBatch: st.S * d.W,
    pos: st.pos,
    stats,
  };
  return Object.assign(l, prefixBinding(c, layer, st.prefixPerBatch));
}

/** x → a.h1 through layer i's attention; a keeps what backward needs. */
export function attentionForward(
  c: Core,
  pass: ComputePass,
  st: Step,
  i: number,
  x: GPUBuffer,
  a: Acts,
  site: AttentionSite,
): void {
  const d = c.dims, ly = c.layers[i], T = st.T, gpu = c.gpu;
  encodeRmsnorm(gpu, pass, {
    x,
    w: ly.ln1,
    y: a.n1,
    rstd: a.rstd1,
    rows: T,
    dim: d.hidden,
    eps: d.eps,
  });
  linearForward(c, pass, st, i, ly.lin.query_key_value, a.n1, a.qkv, false, a.lora.query_key_value);
  encodeRope(gpu, pass, {
    x: a.qkv,
    rows: T,
    rowStride: d.W,
    colOff: 0,
    heads: d.H + d.G,
    headDim: d.D,
    table: c.rope.table,
    positions: st.pos,
  });
  site.store?.(pass);
  const out = { buffer: a.attn, off: 0, row: d.A };
  if (site.scores) encodeAttentionMaterialized(gpu, pass, site.layout, out, site.scores);
  else encodeAttention(gpu, pass, site.layout, out);
  encodeCopy2d(gpu, pass, { rows: 1, width: T * d.hidden, src: x, dst: a.h1 });
  linearForward(c, pass, st, i, ly.lin.dense, a.attn, a.h1, true, a.lora.dense);
}

/**
 * Backward of layer i's attention block: s.dres holds dLoss/dh1 on entry and
 * dLoss/dx on exit (when the input gradient is wanted: not for layer 0 unless
 * the embedding trains).
 */
export function attentionBackward(c: Core, pass: ComputePass, st: Step, i: number): void {
  const d = c.dims, ly = c.layers[i], a = actsFor(c, i), T = st.T, s = c.s, gpu = c.gpu;
  const needDx = i > 0 || c.adapter.kind === "full";
  linearBackward(c, pass, st, i, ly.lin.dense, a.attn, s.dres, s.dattn, a.lora.dense);
  const layout = ownLayout(c, st, i, a.qkv, a.stats);
  const GD = d.G * d.D;
  const P = c.prefix?.P ?? 0, C = c.prefix?.C ?? 0;
  const grads = {
    out: a.attn,
    dOut: s.dattn,
    oOff: 0,
    oRow: d.A,
    dqkv: s.dqkv,
    dqOff: 0,
    dkOff: d.A,
    dvOff: d.A + GD,
    dRow: d.W,
    dpkv: s.dpkv,
    dpkOff: 2 * i * GD,
    dpvOff: (2 * i + 1) * GD,
    dpRow: C,
    dpBatch: st.prefixPerBatch ? P * C : 0,
  };
  if (s.scores && s.dscores) {
    encodeAttentionBackwardMaterialized(gpu, pass, layout, grads, s.scores, s.dscores);
  } else encodeAttentionBackward(gpu, pass, layout, grads);
  encodeRope(gpu, pass, {
    x: s.dqkv,
    rows: T,
    rowStride: d.W,
    colOff: 0,
    heads: d.H + d.G,
    headDim: d.D,
    table: c.rope.table,
    positions: st.pos,
    inverse: true,
  });
  linearBackward(
    c,
    pass,
    st,
    i,
    ly.lin.query_key_value,
    a.n1,
    s.dqkv,
    needDx ? s.dn : undefined,
    a.lora.query_key_value,
  );
  if (!needDx) return;
  encodeRmsnormBackward(gpu, pass, {
    x: c.xs[i],
    w: ly.ln1,
    rstd: a.rstd1,
    dy: s.dn,
    dx: s.dres,
    rows: T,
    dim: d.hidden,
    beta: 1,
    dw: ly.ln1Param?.grad,
  });
}
