/**
 * Causal multi-query attention, flash style: one invocation per query row
 * walks its keys once with an online softmax, so the [heads, seq, seq] score
 * matrix never exists (for chatglm3-6b at seq 2048 that would be 512 MiB per
 * layer) and the forward saves only the log-sum-exp per row. Backward
 * recomputes the probabilities from it: a row pass for D = dO·O, a query pass
 * for dQ, a key pass for dK/dV (one invocation per key row looping over the
 * queries that see it: no atomics, deterministic), and a pass for the prefix
 * keys/values (P-Tuning v2 virtual positions).
 *
 * Layouts are strided so the same kernels read q/k/v straight out of fused
 * qkv rows during training and out of the KV cache during generation: query
 * (b, s, h) is at qOff + (b·S + s)·qRow + h·D; real key j of batch row b,
 * group g at kOff + b·kvBatch + j·kvRow + g·D (value: vOff + …); prefix key j
 * at pkOff + b·pBatch + j·pRow + g·D (pBatch 0 when the prefix is shared).
 * Query (b, s) sees every prefix position and real keys 0..pos[b·S + s].
 *
 * Why not materialised scores + batched matmul: the multi-query layout (keys
 * shared by heads/groups query heads, rows interleaved in the fused qkv) does
 * not fit one strided batch, the score buffers would not fit the real model,
 * and on llvmpipe the per-row loop is already a small part of a step (the
 * projections dominate: see docs/engine.md).
 *
 * Reference: `attention` / `attentionBackward` in lib/model/cpu/ops.ts.
 */
import type { Gpu } from "../device.ts";
import { checkLoopBudget, LOOP_BUDGET, spans } from "../loop_budget.ts";
import { type ComputePass, dispatch, getPipeline, packUniforms, uniforms } from "../runtime.ts";
import { entry, grid, rowWorkgroup } from "./grid.ts";
import { encodeMatmul } from "./matmul.ts";
import { rowKernel, SUBGROUP_ENTRY, SUBGROUP_WG, subgroupReductions } from "./reduce.ts";

export interface AttentionLayout {
  batch: number;
  /** Query rows per batch row. */
  seq: number;
  heads: number;
  groups: number;
  headDim: number;
  /** Prefix (virtual) positions; 0 for none. */
  prefix: number;
  scale: number;
  q: GPUBuffer;
  qOff: number;
  qRow: number;
  kv: GPUBuffer;
  kOff: number;
  vOff: number;
  kvRow: number;
  kvBatch: number;
  /** Prefix keys/values (required when prefix > 0). */
  pkv?: GPUBuffer;
  pkOff?: number;
  pvOff?: number;
  pRow?: number;
  pBatch?: number;
  /** i32 [batch·seq]: the last real key position each query sees. */
  pos: GPUBuffer;
  /** The most real keys a query sees (default `seq`; a KV cache's capacity in generation). */
  keys?: number;
  /** [2, batch·heads·seq] f32: log-sum-exp per query row (written by forward), then D = dO·O (backward). */
  stats: GPUBuffer;
}

const UNIFORM_STRUCT = `struct U {
  B: u32, S: u32, H: u32, G: u32, P: u32, scale: f32,
  qOff: u32, qRow: u32, kOff: u32, vOff: u32, kvRow: u32, kvBatch: u32,
  pkOff: u32, pvOff: u32, pRow: u32, pBatch: u32,
  oOff: u32, oRow: u32, dkOff: u32, dvOff: u32, dkvRow: u32, dkvBatch: u32,
  dpBatch: u32, sharedP: u32, sLo: u32, sHi: u32, accum: u32,
}
@group(0) @binding(0) var<uniform> u: U;`;

function packLayout(
  l: AttentionLayout,
  o: { off: number; row: number },
  d: { kOff: number; vOff: number; row: number; batch: number; pBatch: number } = {
    kOff: 0,
    vOff: 0,
    row: 0,
    batch: 0,
    pBatch: 0,
  },
  /** The key pass's query rows [sLo, sHi), added onto what an earlier range wrote when `accum`. */
  queries: { sLo: number; sHi: number; accum: boolean } = { sLo: 0, sHi: l.seq, accum: false },
): Uint32Array {
  return packUniforms([
    { u: l.batch },
    { u: l.seq },
    { u: l.heads },
    { u: l.groups },
    { u: l.prefix },
    { f: l.scale },
    { u: l.qOff },
    { u: l.qRow },
    { u: l.kOff },
    { u: l.vOff },
    { u: l.kvRow },
    { u: l.kvBatch },
    { u: l.pkOff ?? 0 },
    { u: l.pvOff ?? 0 },
    { u: l.pRow ?? 0 },
    { u: l.pBatch ?? 0 },
    { u: o.off },
    { u: o.row },
    { u: d.kOff },
    { u: d.vOff },
    { u: d.row },
    { u: d.batch },
    { u: d.pBatch },
    { u: (l.pBatch ?? 0) === 0 ? 1 : 0 },
    { u: queries.sLo },
    { u: queries.sHi },
    { u: queries.accum ? 1 : 0 },
  ]);
}

/**
 * `body` (WGSL using `d` for the head dimension) once for each d < D, written
 * out: a loop over D inside the key loops would count D iterations per key
 * against the CPU drivers' loop limit (../loop_budget.ts), which 170 keys of
 * 128-wide heads already exceed. The order of operations is the loop's.
 */
function forD(D: number, body: string): string {
  let out = "";
  for (let d = 0; d < D; d++) out += body.replace(/\bd\b/g, `${d}u`) + " ";
  return out;
}

/**
 * Shader text by kernel and sizes, built once: the written-out head-dim
 * loops make each 20–40 KB, too much to build again at every encode.
 */
const shaders = new Map<string, string>();
function shader(key: string, make: () => string): string {
  let code = shaders.get(key);
  if (code === undefined) shaders.set(key, code = make());
  return code;
}

/** Keys a query row walks in the forward and dQ passes: one loop iteration each. */
function checkKeyWalk(l: AttentionLayout): void {
  checkLoopBudget("attention", l.prefix + (l.keys ?? l.seq));
}

/** Decompose a query-row index into (b, h, s) with s fastest, and the shared key group. */
const QUERY_ROW = `
  let nRows = u.B * u.H * u.S;
  if (idx >= nRows) { return; }
  let s = idx % u.S;
  let bh = idx / u.S;
  let h = bh % u.H;
  let b = bh / u.H;
  let g = h / (u.H / u.G);
  let row = b * u.S + s;
  let qo = u.qOff + row * u.qRow + h * D;`;

function forwardShader(D: number, wg: number): string {
  return `const D = ${D}u;
${UNIFORM_STRUCT}
@group(0) @binding(1) var<storage, read> Q: array<f32>;
@group(0) @binding(2) var<storage, read> KV: array<f32>;
@group(0) @binding(3) var<storage, read> PKV: array<f32>;
@group(0) @binding(4) var<storage, read> pos: array<i32>;
@group(0) @binding(5) var<storage, read_write> O: array<f32>;
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;
${entry(wg)}
${QUERY_ROW}
  var q: array<f32, D>;
  var acc: array<f32, D>;
  ${forD(D, "q[d] = Q[qo + d] * u.scale; acc[d] = 0.0;")}
  var m = -3.0e38;
  var l = 0.0;
  for (var j = 0u; j < u.P; j++) {
    let ko = u.pkOff + b * u.pBatch + j * u.pRow + g * D;
    let vo = u.pvOff + b * u.pBatch + j * u.pRow + g * D;
    var sc = 0.0;
    ${forD(D, "sc = fma(q[d], PKV[ko + d], sc);")}
    if (sc > m) { let c = exp(m - sc); l *= c; ${forD(D, "acc[d] *= c;")} m = sc; }
    let p = exp(sc - m);
    l += p;
    ${forD(D, "acc[d] = fma(p, PKV[vo + d], acc[d]);")}
  }
  let last = u32(pos[row]);
  for (var j = 0u; j <= last; j++) {
    let ko = u.kOff + b * u.kvBatch + j * u.kvRow + g * D;
    let vo = u.vOff + b * u.kvBatch + j * u.kvRow + g * D;
    var sc = 0.0;
    ${forD(D, "sc = fma(q[d], KV[ko + d], sc);")}
    if (sc > m) { let c = exp(m - sc); l *= c; ${forD(D, "acc[d] *= c;")} m = sc; }
    let p = exp(sc - m);
    l += p;
    ${forD(D, "acc[d] = fma(p, KV[vo + d], acc[d]);")}
  }
  let inv = 1.0 / l;
  let oo = u.oOff + row * u.oRow + h * D;
  ${forD(D, "O[oo + d] = acc[d] * inv;")}
  stats[idx] = m + log(l);
}`;
}

/**
 * out (b, s, h) at outOff + (b·S + s)·outRow + h·D = softmax(q·Kᵀ·scale) V over
 * the prefix and the causal keys; log-sum-exp per row into stats[0..rows).
 */
export function encodeAttention(
  gpu: Gpu,
  pass: ComputePass,
  l: AttentionLayout,
  out: { buffer: GPUBuffer; off: number; row: number },
): void {
  const rows = l.batch * l.heads * l.seq;
  if (rows === 0) return;
  checkKeyWalk(l);
  const wg = rowWorkgroup(gpu);
  const u = uniforms(gpu).alloc(packLayout(l, { off: out.off, row: out.row }));
  dispatch(
    gpu,
    pass,
    getPipeline(gpu, shader(`fwd ${l.headDim} ${wg}`, () => forwardShader(l.headDim, wg))),
    [
      u,
      l.q,
      l.kv,
      l.pkv ?? l.kv,
      l.pos,
      out.buffer,
      l.stats,
    ],
    grid(gpu, rows, wg),
  );
}

function rowDotShader(D: number, wg: number): string {
  return `const D = ${D}u;
${UNIFORM_STRUCT}
@group(0) @binding(1) var<storage, read> dO: array<f32>;
@group(0) @binding(2) var<storage, read> O: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
${entry(wg)}
${QUERY_ROW}
  let oo = u.oOff + row * u.oRow + h * D;
  var s0 = 0.0;
  ${forD(D, "s0 = fma(dO[oo + d], O[oo + d], s0);")}
  stats[nRows + idx] = s0;
}`;
}

function dqShader(D: number, wg: number): string {
  return `const D = ${D}u;
${UNIFORM_STRUCT}
@group(0) @binding(1) var<storage, read> Q: array<f32>;
@group(0) @binding(2) var<storage, read> KV: array<f32>;
@group(0) @binding(3) var<storage, read> PKV: array<f32>;
@group(0) @binding(4) var<storage, read> pos: array<i32>;
@group(0) @binding(5) var<storage, read> dO: array<f32>;
@group(0) @binding(6) var<storage, read> stats: array<f32>;
@group(0) @binding(7) var<storage, read_write> dQ: array<f32>;
${entry(wg)}
${QUERY_ROW}
  let oo = u.oOff + row * u.oRow + h * D;
  var q: array<f32, D>;
  var go: array<f32, D>;
  var dq: array<f32, D>;
  ${forD(D, "q[d] = Q[qo + d] * u.scale; go[d] = dO[oo + d]; dq[d] = 0.0;")}
  let lse = stats[idx];
  let di = stats[nRows + idx];
  for (var j = 0u; j < u.P; j++) {
    let ko = u.pkOff + b * u.pBatch + j * u.pRow + g * D;
    let vo = u.pvOff + b * u.pBatch + j * u.pRow + g * D;
    var sc = 0.0;
    var dp = 0.0;
    ${forD(D, "sc = fma(q[d], PKV[ko + d], sc); dp = fma(go[d], PKV[vo + d], dp);")}
    let ds = exp(sc - lse) * (dp - di) * u.scale;
    ${forD(D, "dq[d] = fma(ds, PKV[ko + d], dq[d]);")}
  }
  let last = u32(pos[row]);
  for (var j = 0u; j <= last; j++) {
    let ko = u.kOff + b * u.kvBatch + j * u.kvRow + g * D;
    let vo = u.vOff + b * u.kvBatch + j * u.kvRow + g * D;
    var sc = 0.0;
    var dp = 0.0;
    ${forD(D, "sc = fma(q[d], KV[ko + d], sc); dp = fma(go[d], KV[vo + d], dp);")}
    let ds = exp(sc - lse) * (dp - di) * u.scale;
    ${forD(D, "dq[d] = fma(ds, KV[ko + d], dq[d]);")}
  }
  let dqo = u.dkOff + row * u.dkvRow + h * D;
  ${forD(D, "dQ[dqo + d] = dq[d];")}
}`;
}

/**
 * Key pass: one invocation per real key (b, g, j), or with PREFIX per prefix
 * key (bp, g, j), summing over the queries (and heads of the group) that see it.
 */
function dkvShader(D: number, wg: number, prefix: boolean): string {
  const keyIdx = prefix
    ? `
  let nKeys = select(u.B, 1u, u.sharedP != 0u) * u.G * u.P;
  if (idx >= nKeys) { return; }
  let j = idx % u.P;
  let bg = idx / u.P;
  let g = bg % u.G;
  let bp = bg / u.G;
  let kb = u.pkOff + bp * u.pBatch + j * u.pRow + g * D;
  let vb = u.pvOff + bp * u.pBatch + j * u.pRow + g * D;
  let b0 = select(bp, 0u, u.sharedP != 0u);
  let b1 = select(bp + 1u, u.B, u.sharedP != 0u);
  _ = pos[0];`
    : `
  let nKeys = u.B * u.G * u.S;
  if (idx >= nKeys) { return; }
  let j = idx % u.S;
  let bg = idx / u.S;
  let g = bg % u.G;
  let bp = bg / u.G;
  let kb = u.kOff + bp * u.kvBatch + j * u.kvRow + g * D;
  let vb = u.vOff + bp * u.kvBatch + j * u.kvRow + g * D;
  let b0 = bp;
  let b1 = bp + 1u;`;
  const store = prefix
    ? `
  let dko = u.dkOff + bp * u.dpBatch + j * u.dkvRow + g * D;
  let dvo = u.dvOff + bp * u.dpBatch + j * u.dkvRow + g * D;`
    : `
  let dko = u.dkOff + bp * u.dkvBatch + j * u.dkvRow + g * D;
  let dvo = u.dvOff + bp * u.dkvBatch + j * u.dkvRow + g * D;`;
  return `const D = ${D}u;
${UNIFORM_STRUCT}
@group(0) @binding(1) var<storage, read> Q: array<f32>;
@group(0) @binding(2) var<storage, read> K: array<f32>;
@group(0) @binding(3) var<storage, read> pos: array<i32>;
@group(0) @binding(4) var<storage, read> dO: array<f32>;
@group(0) @binding(5) var<storage, read> stats: array<f32>;
@group(0) @binding(6) var<storage, read_write> dKV: array<f32>;
${entry(wg)}
${keyIdx}
  let nRows = u.B * u.H * u.S;
  let hpg = u.H / u.G;
  var k: array<f32, D>;
  var v: array<f32, D>;
  var dk: array<f32, D>;
  var dv: array<f32, D>;
  ${forD(D, "k[d] = K[kb + d] * u.scale; v[d] = K[vb + d]; dk[d] = 0.0; dv[d] = 0.0;")}
  for (var b = b0; b < b1; b++) {
    for (var hh = 0u; hh < hpg; hh++) {
      let h = g * hpg + hh;
      for (var s = u.sLo; s < u.sHi; s++) {
        let row = b * u.S + s;
        ${prefix ? "" : "if (u32(pos[row]) < j) { continue; }"}
        let r = (b * u.H + h) * u.S + s;
        let qo = u.qOff + row * u.qRow + h * D;
        let oo = u.oOff + row * u.oRow + h * D;
        var sc = 0.0;
        var dp = 0.0;
        ${forD(D, "sc = fma(Q[qo + d], k[d], sc); dp = fma(dO[oo + d], v[d], dp);")}
        let p = exp(sc - stats[r]);
        let ds = p * (dp - stats[nRows + r]) * u.scale;
        ${forD(D, "dk[d] = fma(ds, Q[qo + d], dk[d]); dv[d] = fma(p, dO[oo + d], dv[d]);")}
      }
    }
  }
${store}
  let accum = u.accum != 0u;
  ${
    forD(
      D,
      "dKV[dko + d] = select(dk[d], dKV[dko + d] + dk[d], accum); dKV[dvo + d] = select(dv[d], dKV[dvo + d] + dv[d], accum);",
    )
  }
}`;
}

export interface AttentionGrads {
  /** The forward output and its gradient, both at off + (b·S + s)·row + h·D. */
  out: GPUBuffer;
  dOut: GPUBuffer;
  oOff: number;
  oRow: number;
  /** dQ/dK/dV in a buffer with the layout of the forward's fused rows (written, not accumulated). */
  dqkv: GPUBuffer;
  dqOff: number;
  dkOff: number;
  dvOff: number;
  dRow: number;
  /** Prefix gradients, written at dpkOff/dpvOff + bp·dpBatch + j·dpRow + g·D; bp over the batch when pBatch > 0, else one sum. */
  dpkv?: GPUBuffer;
  dpkOff?: number;
  dpvOff?: number;
  dpRow?: number;
  dpBatch?: number;
}

/**
 * Backward of encodeAttention for training (keys are the same tokens as the
 * queries: kv rows = q rows, kvBatch = seq·kvRow). Needs the forward's stats.
 */
export function encodeAttentionBackward(
  gpu: Gpu,
  pass: ComputePass,
  l: AttentionLayout,
  gr: AttentionGrads,
): void {
  const rows = l.batch * l.heads * l.seq;
  if (rows === 0) return;
  checkKeyWalk(l);
  const D = l.headDim;
  const wg = rowWorkgroup(gpu);
  const u1 = uniforms(gpu).alloc(packLayout(l, { off: gr.oOff, row: gr.oRow }));
  dispatch(
    gpu,
    pass,
    getPipeline(gpu, shader(`rowdot ${D} ${wg}`, () => rowDotShader(D, wg))),
    [u1, gr.dOut, gr.out, l.stats],
    grid(gpu, rows, wg),
  );
  const u2 = uniforms(gpu).alloc(
    packLayout(l, { off: gr.oOff, row: gr.oRow }, {
      kOff: gr.dqOff,
      vOff: 0,
      row: gr.dRow,
      batch: 0,
      pBatch: 0,
    }),
  );
  dispatch(gpu, pass, getPipeline(gpu, shader(`dq ${D} ${wg}`, () => dqShader(D, wg))), [
    u2,
    l.q,
    l.kv,
    l.pkv ?? l.kv,
    l.pos,
    gr.dOut,
    l.stats,
    gr.dqkv,
  ], grid(gpu, rows, wg));
  const hpg = l.heads / l.groups;
  // The key passes walk (batch rows ×) heads of the group × query rows per
  // key: over the loop budget, the query rows go in ranges, each dispatch
  // adding onto the last.
  const keyPass = (
    prefix: boolean,
    kvBuf: GPUBuffer,
    out: GPUBuffer,
    dl: { kOff: number; vOff: number; row: number; batch: number; pBatch: number },
    keys: number,
    batchRows: number,
  ) => {
    const per = Math.floor(LOOP_BUDGET / (batchRows * hpg));
    if (per < 1) checkLoopBudget("attention key pass", batchRows * hpg);
    spans(l.seq, per).forEach(([sLo, sHi], i) => {
      const u = uniforms(gpu).alloc(
        packLayout(l, { off: gr.oOff, row: gr.oRow }, dl, { sLo, sHi, accum: i > 0 }),
      );
      dispatch(
        gpu,
        pass,
        getPipeline(gpu, shader(`dkv ${D} ${wg} ${prefix}`, () => dkvShader(D, wg, prefix))),
        [
          u,
          l.q,
          kvBuf,
          l.pos,
          gr.dOut,
          l.stats,
          out,
        ],
        grid(gpu, keys, wg),
      );
    });
  };
  keyPass(
    false,
    l.kv,
    gr.dqkv,
    {
      kOff: gr.dkOff,
      vOff: gr.dvOff,
      row: gr.dRow,
      batch: l.seq * gr.dRow,
      pBatch: 0,
    },
    l.batch * l.groups * l.seq,
    1,
  );
  if (l.prefix > 0) {
    if (!l.pkv || !gr.dpkv) {
      throw new Error("attention backward: prefix gradients need pkv and dpkv");
    }
    const shared = (l.pBatch ?? 0) === 0;
    keyPass(
      true,
      l.pkv,
      gr.dpkv,
      {
        kOff: gr.dpkOff ?? 0,
        vOff: gr.dpvOff ?? 0,
        row: gr.dpRow ?? 0,
        batch: 0,
        pBatch: gr.dpBatch ?? 0,
      },
      (shared ? 1 : l.batch) * l.groups * l.prefix,
      shared ? l.batch : 1,
    );
  }
}

// ---------------------------------------------------------------------------
// Materialised scores: the same attention through the matmul kernels.
//
// On llvmpipe the per-row loops above run far below the tiled matmul (each
// invocation walks its own keys with per-lane private arrays), so when the
// [batch, heads, seq, prefix + seq] score block fits a scratch budget the
// training/scoring path computes QKᵀ, PV and the backward products with
// strided batched matmuls (batch over the batch rows, one product per head)
// and keeps only a row softmax and a row softmax-backward as custom kernels.
// The causal upper triangle is skipped where whole tiles allow: Q·Kᵀ and dO·Vᵀ
// leave tiles above the diagonal unwritten (cUpper), and the products that
// reduce over keys or queries walk only the triangle (aBand); the row kernels
// read only the keys each query sees and zero the rest of its row. This needs
// positions that never run ahead of the row (pos[s] ≤ s, the training layout).
// Scores are recomputed in backward from q and k rather than stored per layer.
// Reference: the same `attention` / `attentionBackward`.

/**
 * WGSL for the row kernels over a score row (idx: batch, head, query): `n`,
 * the keys the query sees (the prefix, then real keys up to its position).
 * Entries past n are never read, since whole tiles of them are not computed.
 */
const VISIBLE_KEYS = `  let s = idx % u.S;
  let b = idx / (u.S * u.H);
  let n = u.P + u32(pos[b * u.S + s]) + 1u;`;

function softmaxShader(wg: number): string {
  return `struct U { rows: u32, S: u32, H: u32, L: u32, P: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read_write> sc: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<i32>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
${entry(wg)}
  if (idx >= u.rows) { return; }
${VISIBLE_KEYS}
  let o = idx * u.L;
  var m = -3.0e38;
  for (var j = 0u; j < n; j++) { m = max(m, sc[o + j]); }
  var z = 0.0;
  for (var j = 0u; j < n; j++) { z += exp(sc[o + j] - m); }
  let inv = 1.0 / z;
  for (var j = 0u; j < n; j++) { sc[o + j] = exp(sc[o + j] - m) * inv; }
  for (var j = n; j < u.L; j++) { sc[o + j] = 0.0; }
  stats[idx] = m + log(z);
}`;
}

/**
 * The subgroup paths of the two row kernels (../features.ts): a workgroup
 * per score row, each invocation walking every SUBGROUP_WG-th key, the row's
 * max and sums reduced through subgroups.
 */
function softmaxSubgroupShader(): string {
  const W = SUBGROUP_WG;
  return `struct U { rows: u32, S: u32, H: u32, L: u32, P: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read_write> sc: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<i32>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
${subgroupReductions(W)}
${SUBGROUP_ENTRY}
  if (idx >= u.rows) { return; }
${VISIBLE_KEYS}
  let o = idx * u.L;
  var mj = -3.0e38;
  for (var j = l; j < n; j += ${W}u) { mj = max(mj, sc[o + j]); }
  let m = wgMax(mj, sg, nsg, lane);
  var zj = 0.0;
  for (var j = l; j < n; j += ${W}u) { zj += exp(sc[o + j] - m); }
  let z = wgSum(zj, sg, nsg, lane);
  let inv = 1.0 / z;
  for (var j = l; j < n; j += ${W}u) { sc[o + j] = exp(sc[o + j] - m) * inv; }
  for (var j = n + l; j < u.L; j += ${W}u) { sc[o + j] = 0.0; }
  if (l == 0u) { stats[idx] = m + log(z); }
}`;
}

function softmaxBackwardSubgroupShader(): string {
  const W = SUBGROUP_WG;
  return `struct U { rows: u32, S: u32, H: u32, L: u32, P: u32, scale: f32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> p: array<f32>;
@group(0) @binding(2) var<storage, read_write> dp: array<f32>;
@group(0) @binding(3) var<storage, read> pos: array<i32>;
${subgroupReductions(W)}
${SUBGROUP_ENTRY}
  if (idx >= u.rows) { return; }
${VISIBLE_KEYS}
  let o = idx * u.L;
  var dj = 0.0;
  for (var j = l; j < n; j += ${W}u) { dj = fma(p[o + j], dp[o + j], dj); }
  let dot = wgSum(dj, sg, nsg, lane);
  for (var j = l; j < n; j += ${W}u) { dp[o + j] = p[o + j] * (dp[o + j] - dot) * u.scale; }
  for (var j = n + l; j < u.L; j += ${W}u) { dp[o + j] = 0.0; }
}`;
}

function softmaxBackwardShader(wg: number): string {
  return `struct U { rows: u32, S: u32, H: u32, L: u32, P: u32, scale: f32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> p: array<f32>;
@group(0) @binding(2) var<storage, read_write> dp: array<f32>;
@group(0) @binding(3) var<storage, read> pos: array<i32>;
${entry(wg)}
  if (idx >= u.rows) { return; }
${VISIBLE_KEYS}
  let o = idx * u.L;
  var dot = 0.0;
  for (var j = 0u; j < n; j++) { dot = fma(p[o + j], dp[o + j], dot); }
  for (var j = 0u; j < n; j++) { dp[o + j] = p[o + j] * (dp[o + j] - dot) * u.scale; }
  for (var j = n; j < u.L; j++) { dp[o + j] = 0.0; }
}`;
}

/** Bytes of one score block [batch, heads, seq, prefix + seq] (f32). */
export function scoreBytes(
  l: { batch: number; heads: number; seq: number; prefix: number },
): number {
  return l.batch * l.heads * l.seq * (l.prefix + l.seq) * 4;
}

/** Q·Kᵀ·scale into sc and the masked row softmax (probabilities in place, lse into stats). */
function encodeScores(
  gpu: Gpu,
  pass: ComputePass,
  l: AttentionLayout,
  sc: GPUBuffer,
): void {
  const { batch: B, seq: S, heads: H, groups: G, headDim: D, prefix: P } = l;
  const L = P + S, hpg = H / G;
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / hpg);
    const common = {
      M: S,
      K: D,
      a: l.q,
      aOffset: l.qOff + h * D,
      lda: l.qRow,
      transB: true,
      c: sc,
      ldc: L,
      alpha: l.scale,
    };
    if (P > 0) {
      encodeMatmul(gpu, pass, {
        ...common,
        N: P,
        b: l.pkv!,
        bOffset: (l.pkOff ?? 0) + g * D,
        ldb: l.pRow,
        cOffset: h * S * L,
        batch: { count: B, strideA: S * l.qRow, strideB: l.pBatch ?? 0, strideC: H * S * L },
      });
    }
    encodeMatmul(gpu, pass, {
      ...common,
      N: S,
      b: l.kv,
      bOffset: l.kOff + g * D,
      ldb: l.kvRow,
      cOffset: h * S * L + P,
      batch: { count: B, strideA: S * l.qRow, strideB: l.kvBatch, strideC: H * S * L },
      cUpper: 0,
    });
  }
  const rows = B * H * S;
  checkLoopBudget("attention softmax", 3 * L);
  const k = rowKernel(gpu, rows, softmaxShader, softmaxSubgroupShader);
  const u = uniforms(gpu).alloc(
    packUniforms([{ u: rows }, { u: S }, { u: H }, { u: L }, { u: P }]),
  );
  dispatch(gpu, pass, k.pipeline, [u, sc, l.pos, l.stats], k.groups);
}

/**
 * encodeAttention through matmuls; `scores` is scratch of scoreBytes(l).
 * Requires the training layout (keys are the query tokens: kvBatch = seq·kvRow).
 */
export function encodeAttentionMaterialized(
  gpu: Gpu,
  pass: ComputePass,
  l: AttentionLayout,
  out: { buffer: GPUBuffer; off: number; row: number },
  scores: GPUBuffer,
): void {
  const { batch: B, seq: S, heads: H, groups: G, headDim: D, prefix: P } = l;
  if (B * H * S === 0) return;
  const L = P + S, hpg = H / G;
  encodeScores(gpu, pass, l, scores);
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / hpg);
    const common = {
      M: S,
      N: D,
      a: scores,
      lda: L,
      c: out.buffer,
      cOffset: out.off + h * D,
      ldc: out.row,
    };
    if (P > 0) {
      encodeMatmul(gpu, pass, {
        ...common,
        K: P,
        aOffset: h * S * L,
        b: l.pkv!,
        bOffset: (l.pvOff ?? 0) + g * D,
        ldb: l.pRow,
        batch: { count: B, strideA: H * S * L, strideB: l.pBatch ?? 0, strideC: S * out.row },
      });
    }
    encodeMatmul(gpu, pass, {
      ...common,
      K: S,
      aOffset: h * S * L + P,
      aBand: { hi: 0 },
      b: l.kv,
      bOffset: l.vOff + g * D,
      ldb: l.kvRow,
      accumulate: P > 0,
      batch: { count: B, strideA: H * S * L, strideB: l.kvBatch, strideC: S * out.row },
    });
  }
}

/**
 * Backward of encodeAttentionMaterialized (recomputing the probabilities
 * into `scores`; `dscores` is a second scratch of the same size).
 */
export function encodeAttentionBackwardMaterialized(
  gpu: Gpu,
  pass: ComputePass,
  l: AttentionLayout,
  gr: AttentionGrads,
  scores: GPUBuffer,
  dscores: GPUBuffer,
): void {
  const { batch: B, seq: S, heads: H, groups: G, headDim: D, prefix: P } = l;
  if (B * H * S === 0) return;
  const L = P + S, hpg = H / G;
  const HSL = H * S * L;
  encodeScores(gpu, pass, l, scores);
  // dP = dO·Vᵀ
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / hpg);
    const common = {
      M: S,
      K: D,
      a: gr.dOut,
      aOffset: gr.oOff + h * D,
      lda: gr.oRow,
      transB: true,
      c: dscores,
      ldc: L,
    };
    if (P > 0) {
      encodeMatmul(gpu, pass, {
        ...common,
        N: P,
        b: l.pkv!,
        bOffset: (l.pvOff ?? 0) + g * D,
        ldb: l.pRow,
        cOffset: h * S * L,
        batch: { count: B, strideA: S * gr.oRow, strideB: l.pBatch ?? 0, strideC: HSL },
      });
    }
    encodeMatmul(gpu, pass, {
      ...common,
      N: S,
      b: l.kv,
      bOffset: l.vOff + g * D,
      ldb: l.kvRow,
      cOffset: h * S * L + P,
      batch: { count: B, strideA: S * gr.oRow, strideB: l.kvBatch, strideC: HSL },
      cUpper: 0,
    });
  }
  // dS = P ⊙ (dP − Σ P·dP)·scale, in place.
  const rows = B * H * S;
  checkLoopBudget("attention softmax backward", 3 * L);
  const k = rowKernel(gpu, rows, softmaxBackwardShader, softmaxBackwardSubgroupShader);
  const u = uniforms(gpu).alloc(
    packUniforms([{ u: rows }, { u: S }, { u: H }, { u: L }, { u: P }, { f: l.scale }]),
  );
  dispatch(gpu, pass, k.pipeline, [u, scores, dscores, l.pos], k.groups);
  const dRowsBatch = S * gr.dRow;
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / hpg), first = h % hpg === 0;
    // dQ = dS·K (prefix keys, then real keys)
    if (P > 0) {
      encodeMatmul(gpu, pass, {
        M: S,
        N: D,
        K: P,
        a: dscores,
        aOffset: h * S * L,
        lda: L,
        b: l.pkv!,
        bOffset: (l.pkOff ?? 0) + g * D,
        ldb: l.pRow,
        c: gr.dqkv,
        cOffset: gr.dqOff + h * D,
        ldc: gr.dRow,
        batch: { count: B, strideA: HSL, strideB: l.pBatch ?? 0, strideC: dRowsBatch },
      });
    }
    encodeMatmul(gpu, pass, {
      M: S,
      N: D,
      K: S,
      a: dscores,
      aOffset: h * S * L + P,
      lda: L,
      aBand: { hi: 0 },
      b: l.kv,
      bOffset: l.kOff + g * D,
      ldb: l.kvRow,
      c: gr.dqkv,
      cOffset: gr.dqOff + h * D,
      ldc: gr.dRow,
      accumulate: P > 0,
      batch: { count: B, strideA: HSL, strideB: l.kvBatch, strideC: dRowsBatch },
    });
    // dK += dSᵀ·Q, dV += Pᵀ·dO over the heads of the group: both reduce over the
    // queries that see a key (aBand lo 0) of a score-shaped A read transposed.
    const keyGrad = (
      a: GPUBuffer,
      b: GPUBuffer,
      bOffset: number,
      ldb: number,
      cOffset: number,
    ) =>
      encodeMatmul(gpu, pass, {
        M: S,
        N: D,
        K: S,
        a,
        aOffset: h * S * L + P,
        lda: L,
        transA: true,
        aBand: { lo: 0 },
        b,
        bOffset,
        ldb,
        c: gr.dqkv,
        cOffset,
        ldc: gr.dRow,
        accumulate: !first,
        batch: { count: B, strideA: HSL, strideB: S * ldb, strideC: dRowsBatch },
      });
    keyGrad(dscores, l.q, l.qOff + h * D, l.qRow, gr.dkOff + g * D);
    keyGrad(scores, gr.dOut, gr.oOff + h * D, gr.oRow, gr.dvOff + g * D);
  }
  if (P === 0) return;
  if (!gr.dpkv) throw new Error("attention backward: prefix gradients need dpkv");
  // Prefix keys/values: per batch row when they differ per row, else summed over the batch in order.
  const perBatch = (l.pBatch ?? 0) > 0;
  for (let g = 0; g < G; g++) {
    for (let hh = 0; hh < hpg; hh++) {
      const h = g * hpg + hh;
      const bs = perBatch ? [0] : Array.from({ length: B }, (_, b) => b);
      for (const b of bs) {
        const acc = hh > 0 || b > 0;
        const count = perBatch ? B : 1;
        const batchOf = (strideA: number, strideB: number) => ({
          count,
          strideA,
          strideB,
          strideC: gr.dpBatch ?? 0,
        });
        encodeMatmul(gpu, pass, {
          M: P,
          N: D,
          K: S,
          a: dscores,
          aOffset: b * HSL + h * S * L,
          lda: L,
          transA: true,
          b: l.q,
          bOffset: l.qOff + b * S * l.qRow + h * D,
          ldb: l.qRow,
          c: gr.dpkv,
          cOffset: (gr.dpkOff ?? 0) + g * D,
          ldc: gr.dpRow,
          accumulate: acc,
          batch: batchOf(HSL, S * l.qRow),
        });
        encodeMatmul(gpu, pass, {
          M: P,
          N: D,
          K: S,
          a: scores,
          aOffset: b * HSL + h * S * L,
          lda: L,
          transA: true,
          b: gr.dOut,
          bOffset: gr.oOff + b * S * gr.oRow + h * D,
          ldb: gr.oRow,
          c: gr.dpkv,
          cOffset: (gr.dpvOff ?? 0) + g * D,
          ldc: gr.dpRow,
          accumulate: acc,
          batch: batchOf(HSL, S * gr.oRow),
        });
      }
    }
  }
}
