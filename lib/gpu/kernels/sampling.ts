/**
 * Next-token choice for generation, one invocation per row of logits:
 * argmax (greedy; the lowest index wins ties, as torch.argmax), and sampling
 * with temperature, then top-k, then top-p (the order of HF's logits
 * warpers). Sampling finds the top-k and top-p cut-offs on e = exp((x − max)/T)
 * by bisection (count / mass of the values above a threshold), so no sort
 * and no per-row copy of the vocabulary is needed; then it draws from the
 * kept mass with the counter-based hash RNG of ./dropout.ts. The logits are
 * left untouched. Reference: `sampleRef` below.
 */
import type { Gpu } from "../device.ts";
import { type ComputePass, dispatch, getPipeline, packUniforms, uniforms } from "../runtime.ts";
import { dropoutUniformRef, WGSL_HASH } from "./dropout.ts";
import { entry, grid, rowWorkgroup } from "./grid.ts";

function argmaxShader(wg: number): string {
  return `struct U { rows: u32, V: u32, ld: u32, off: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
${entry(wg)}
  if (idx >= u.rows) { return; }
  let o = u.off + idx * u.ld;
  var best = logits[o];
  var arg = 0u;
  for (var i = 1u; i < u.V; i++) { let v = logits[o + i]; if (v > best) { best = v; arg = i; } }
  ids[idx] = arg;
}`;
}

/** ids[r] = argmax of logits row r (rows at off + r·ld, V columns). */
export function encodeArgmax(
  gpu: Gpu,
  pass: ComputePass,
  a: { logits: GPUBuffer; rows: number; V: number; ld?: number; off?: number; ids: GPUBuffer },
): void {
  if (a.rows <= 0) return;
  const wg = rowWorkgroup(gpu);
  const u = uniforms(gpu).alloc(
    packUniforms([{ u: a.rows }, { u: a.V }, { u: a.ld ?? a.V }, { u: a.off ?? 0 }]),
  );
  dispatch(
    gpu,
    pass,
    getPipeline(gpu, argmaxShader(wg)),
    [u, a.logits, a.ids],
    grid(gpu, a.rows, wg),
  );
}

const BISECT_STEPS = 32;

const SAMPLE_COMMON =
  `struct U { rows: u32, V: u32, ld: u32, off: u32, invT: f32, topK: u32, topP: f32, seed: u32, stream: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> st: array<f32>;
fn countAbove(o: u32, m: f32, t: f32) -> u32 {
  var c = 0u;
  for (var i = 0u; i < u.V; i++) { if (exp((logits[o + i] - m) * u.invT) >= t) { c++; } }
  return c;
}
fn massAbove(o: u32, m: f32, t: f32) -> f32 {
  var s = 0.0;
  for (var i = 0u; i < u.V; i++) { let e = exp((logits[o + i] - m) * u.invT); if (e >= t) { s += e; } }
  return s;
}`;

/**
 * Three passes per row, each leaving its result in a per-row state
 * [max, argmax, top-k cut, top-k mass, top-p cut, kept mass] (a single
 * kernel with both bisections was miscompiled by llvmpipe):
 * 1. the max and the top-k cut-off, 2. the top-p cut-off, 3. the draw.
 */
function sampleShaders(wg: number): string[] {
  const head = `${SAMPLE_COMMON}
${entry(wg)}
  if (idx >= u.rows) { return; }
  let o = u.off + idx * u.ld;
  let so = idx * 6u;`;
  const topK = `${head}
  var m = -3.0e38;
  var arg = 0u;
  for (var i = 0u; i < u.V; i++) { let v = logits[o + i]; if (v > m) { m = v; arg = i; } }
  var lo = 0.0;
  var hi = 1.0;
  if (u.topK > 0u && u.topK < u.V) {
    for (var it = 0u; it < ${BISECT_STEPS}u; it++) {
      let mid = 0.5 * (lo + hi);
      if (countAbove(o, m, mid) >= u.topK) { lo = mid; } else { hi = mid; }
    }
  }
  st[so] = m;
  st[so + 1u] = bitcast<f32>(arg);
  st[so + 2u] = lo;
  st[so + 3u] = massAbove(o, m, lo);
}`;
  const topP = `${head}
  let m = st[so];
  let z = st[so + 3u];
  var lo = st[so + 2u];
  var hi = 1.0;
  if (u.topP < 1.0) {
    for (var it = 0u; it < ${BISECT_STEPS}u; it++) {
      let mid = 0.5 * (lo + hi);
      if (massAbove(o, m, mid) >= u.topP * z) { lo = mid; } else { hi = mid; }
    }
  }
  st[so + 4u] = lo;
  st[so + 5u] = massAbove(o, m, lo);
}`;
  const draw = `${SAMPLE_COMMON}
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;
${WGSL_HASH}
${entry(wg)}
  if (idx >= u.rows) { return; }
  let o = u.off + idx * u.ld;
  let so = idx * 6u;
  let m = st[so];
  let tp = st[so + 4u];
  let r = uniform01(u.seed, u.stream, idx) * st[so + 5u];
  var acc = 0.0;
  var pick = bitcast<u32>(st[so + 1u]);
  for (var i = 0u; i < u.V; i++) {
    let e = exp((logits[o + i] - m) * u.invT);
    if (e >= tp) { acc += e; if (acc > r) { pick = i; break; } }
  }
  ids[idx] = pick;
}`;
  return [topK, topP, draw];
}

export interface SampleOptions {
  temperature: number;
  /** 0 = off. */
  topK: number;
  /** 1 = off. */
  topP: number;
  seed: number;
  /** Distinguishes draws of the same seed (e.g. the generation step). */
  stream: number;
}

/** ids[r] = a draw from row r; `state` is scratch of 6 f32 per row. */
export function encodeSample(
  gpu: Gpu,
  pass: ComputePass,
  a: {
    logits: GPUBuffer;
    rows: number;
    V: number;
    ld?: number;
    off?: number;
    ids: GPUBuffer;
    state: GPUBuffer;
  },
  s: SampleOptions,
): void {
  if (a.rows <= 0) return;
  const wg = rowWorkgroup(gpu);
  const words = packUniforms([
    { u: a.rows },
    { u: a.V },
    { u: a.ld ?? a.V },
    { u: a.off ?? 0 },
    { f: 1 / Math.max(s.temperature, 1e-6) },
    { u: s.topK },
    { f: s.topP },
    { u: s.seed },
    { u: s.stream },
  ]);
  const [k, p, d] = sampleShaders(wg);
  const g = grid(gpu, a.rows, wg);
  dispatch(gpu, pass, getPipeline(gpu, k), [uniforms(gpu).alloc(words), a.logits, a.state], g);
  dispatch(gpu, pass, getPipeline(gpu, p), [uniforms(gpu).alloc(words), a.logits, a.state], g);
  dispatch(
    gpu,
    pass,
    getPipeline(gpu, d),
    [uniforms(gpu).alloc(words), a.logits, a.state, a.ids],
    g,
  );
}

/** The same algorithm on the host, in f32 steps, for tests. */
export function sampleRef(row: Float32Array, rowIndex: number, s: SampleOptions): number {
  const V = row.length;
  let m = -3e38, arg = 0;
  for (let i = 0; i < V; i++) if (row[i] > m) (m = row[i], arg = i);
  const e = new Float32Array(V);
  const invT = Math.fround(1 / Math.max(s.temperature, 1e-6));
  for (let i = 0; i < V; i++) e[i] = Math.exp(Math.fround((row[i] - m) * invT));
  let tk = 0;
  if (s.topK > 0 && s.topK < V) {
    let lo = 0, hi = 1;
    for (let it = 0; it < BISECT_STEPS; it++) {
      const mid = Math.fround(0.5 * (lo + hi));
      let c = 0;
      for (let i = 0; i < V; i++) if (e[i] >= mid) c++;
      if (c >= s.topK) lo = mid;
      else hi = mid;
    }
    tk = lo;
  }
  let z = 0;
  for (let i = 0; i < V; i++) if (e[i] >= tk) z += e[i];
  let tp = tk;
  if (s.topP < 1) {
    let lo = tk, hi = 1;
    for (let it = 0; it < BISECT_STEPS; it++) {
      const mid = Math.fround(0.5 * (lo + hi));
      let sum = 0;
      for (let i = 0; i < V; i++) if (e[i] >= mid) sum += e[i];
      if (sum >= s.topP * z) lo = mid;
      else hi = mid;
    }
    tp = lo;
  }
  let kept = 0;
  for (let i = 0; i < V; i++) if (e[i] >= tp) kept += e[i];
  const r = dropoutUniformRef(s.seed, s.stream, rowIndex) * kept;
  let acc = 0;
  for (let i = 0; i < V; i++) {
    if (e[i] >= tp) {
      acc += e[i];
      if (acc > r) return i;
    }
  }
  return arg;
}
