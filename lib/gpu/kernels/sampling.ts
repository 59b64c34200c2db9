/**
 * Next-token choice for generation, one workgroup per row of logits: argmax
 * (greedy; the lowest index wins ties, as torch.argmax), and sampling with
 * temperature, then top-k, then top-p (the order of HF's logits warpers).
 * Sampling finds the top-k and top-p cut-offs on e = exp((x − max)/T) by
 * bisection (count / mass of the values above a threshold), so no sort and no
 * per-row copy of the vocabulary is needed; then it draws from the kept mass
 * with the counter-based hash RNG of ./dropout.ts. The logits are left untouched.
 *
 * Each of a workgroup's WG invocations walks a contiguous slice of the row and
 * the slices are combined through workgroup memory: a row of 65,024 logits is
 * then 254 elements an invocation, which keeps the bisections (34 walks over
 * the slice) inside the CPU drivers' loop limit (../loop_budget.ts), and uses
 * a GPU's width. Sums are combined in a fixed tree, so results are
 * deterministic. Reference: `argmaxRef` and `sampleRef` below, which add in
 * the same order in f32.
 */
import type { Gpu } from "../device.ts";
import { checkLoopBudget, LOOP_BUDGET } from "../loop_budget.ts";
import { type ComputePass, dispatch, getPipeline, packUniforms, uniforms } from "../runtime.ts";
import { dropoutUniformRef, WGSL_HASH } from "./dropout.ts";

const BISECT_STEPS = 32;
/** Walks over its slice an invocation of the top-k pass makes (the longest pass). */
const SAMPLE_WALKS = BISECT_STEPS + 2;

/**
 * Invocations per row: on a GPU a wide workgroup; on a CPU adapter the
 * fewest (from one SIMD row of 8) that keep `walks` passes over a slice
 * within the loop budget, since llvmpipe pays for every barrier of a wider one.
 */
function rowWorkgroupFor(gpu: Gpu, V: number, walks: number): number {
  let wg = gpu.deviceClass === "cpu" ? 8 : 256;
  while (wg < 256 && walks * Math.ceil(V / wg) + walks * Math.log2(wg) > LOOP_BUDGET) wg *= 2;
  checkLoopBudget("sampling", walks * Math.ceil(V / wg) + walks * Math.log2(wg));
  return wg;
}

const UNIFORMS =
  `struct U { rows: u32, V: u32, ld: u32, off: u32, invT: f32, topK: u32, topP: f32, seed: u32, stream: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> logits: array<f32>;`;

const helpers = (WG: number) =>
  `var<workgroup> red: array<f32, ${WG}>;
var<workgroup> redI: array<u32, ${WG}>;

/** Σ of every invocation's x, added pairwise (l += l + w for w = WG/2 … 1). */
fn sumAll(l: u32, x: f32) -> f32 {
  red[l] = x;
  workgroupBarrier();
  for (var w = ${WG / 2}u; w > 0u; w = w / 2u) {
    if (l < w) { red[l] += red[l + w]; }
    workgroupBarrier();
  }
  return workgroupUniformLoad(&red[0]);
}

/** The largest (value, index) over the invocations; the lower slice wins ties. */
fn maxAll(l: u32, v: f32, i: u32) -> vec2u {
  red[l] = v;
  redI[l] = i;
  workgroupBarrier();
  for (var w = ${WG / 2}u; w > 0u; w = w / 2u) {
    if (l < w && red[l + w] > red[l]) { red[l] = red[l + w]; redI[l] = redI[l + w]; }
    workgroupBarrier();
  }
  let m = workgroupUniformLoad(&red[0]);
  return vec2u(bitcast<u32>(m), workgroupUniformLoad(&redI[0]));
}

/** This invocation's share of the count / mass of e = exp((x − m)/T) ≥ t. */
fn countAbove(o: u32, lo: u32, hi: u32, m: f32, t: f32) -> f32 {
  var c = 0.0;
  for (var i = lo; i < hi; i++) { if (exp((logits[o + i] - m) * u.invT) >= t) { c += 1.0; } }
  return c;
}
fn massAbove(o: u32, lo: u32, hi: u32, m: f32, t: f32) -> f32 {
  var s = 0.0;
  for (var i = lo; i < hi; i++) { let e = exp((logits[o + i] - m) * u.invT); if (e >= t) { s += e; } }
  return s;
}`;

/**
 * A kernel over one row per workgroup: `body` sees the row's offset `o`, this
 * invocation's slice [lo, hi), the row's max `m` and its index `mx.y`.
 */
function rowShader(WG: number, bindings: string, body: string): string {
  return `${UNIFORMS}
${bindings}
${helpers(WG)}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) l: u32) {
  let row = wid.x;
  if (row >= u.rows) { return; }
  let o = u.off + row * u.ld;
  let per = (u.V + ${WG - 1}u) / ${WG}u;
  let lo = min(l * per, u.V);
  let hi = min(lo + per, u.V);
  var best = -3.0e38;
  var arg = 0u;
  for (var i = lo; i < hi; i++) { let v = logits[o + i]; if (v > best) { best = v; arg = i; } }
  let mx = maxAll(l, best, arg);
  let m = bitcast<f32>(mx.x);
${body}
}`;
}

const argmaxShader = (WG: number) =>
  rowShader(
    WG,
    "@group(0) @binding(2) var<storage, read_write> ids: array<u32>;",
    "  if (l == 0u) { ids[row] = mx.y; }",
  );

/**
 * Three passes per row, each leaving its result in a per-row state
 * [max, argmax, top-k cut, top-k mass, top-p cut, kept mass] (a single
 * kernel with both bisections was miscompiled by llvmpipe):
 * 1. the max and the top-k cut-off, 2. the top-p cut-off, 3. the draw.
 */
function sampleShaders(WG: number, counted = false): string[] {
  const state = "@group(0) @binding(2) var<storage, read_write> st: array<f32>;";
  const topK = rowShader(
    WG,
    state,
    `  let so = row * 6u;
  var cLo = 0.0;
  var cHi = 1.0;
  if (u.topK > 0u && u.topK < u.V) {
    for (var it = 0u; it < ${BISECT_STEPS}u; it++) {
      let mid = 0.5 * (cLo + cHi);
      if (sumAll(l, countAbove(o, lo, hi, m, mid)) >= f32(u.topK)) { cLo = mid; } else { cHi = mid; }
    }
  }
  let z = sumAll(l, massAbove(o, lo, hi, m, cLo));
  if (l == 0u) { st[so] = m; st[so + 1u] = bitcast<f32>(mx.y); st[so + 2u] = cLo; st[so + 3u] = z; }`,
  );
  const topP = rowShader(
    WG,
    state,
    `  let so = row * 6u;
  let z = st[so + 3u];
  var cLo = st[so + 2u];
  var cHi = 1.0;
  if (u.topP < 1.0) {
    for (var it = 0u; it < ${BISECT_STEPS}u; it++) {
      let mid = 0.5 * (cLo + cHi);
      if (sumAll(l, massAbove(o, lo, hi, m, mid)) >= u.topP * z) { cLo = mid; } else { cHi = mid; }
    }
  }
  let kept = sumAll(l, massAbove(o, lo, hi, m, cLo));
  if (l == 0u) { st[so + 4u] = cLo; st[so + 5u] = kept; }`,
  );
  // The draw: the first index whose running kept mass exceeds r. Invocation 0
  // runs over the slices' masses to find the slice where it does, and that
  // slice's invocation walks it from the mass before it.
  const draw = rowShader(
    WG,
    `${state}
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;
${counted ? "@group(0) @binding(4) var<storage, read> counter: array<u32>;" : ""}
${WGSL_HASH}`,
    `  let so = row * 6u;
  let tp = st[so + 4u];
  let r = uniform01(u.seed, u.stream${counted ? " + counter[0]" : ""}, row) * st[so + 5u];
  red[l] = massAbove(o, lo, hi, m, tp);
  workgroupBarrier();
  if (l == 0u) {
    var acc = 0.0;
    var at = ${WG}u;
    for (var k = 0u; k < ${WG}u; k++) {
      if (acc + red[k] > r) { at = k; break; }
      acc += red[k];
    }
    redI[0] = at;
    redI[1] = bitcast<u32>(acc);
    ids[row] = bitcast<u32>(st[so + 1u]);
  }
  workgroupBarrier();
  if (l == redI[0]) {
    var acc = bitcast<f32>(redI[1]);
    for (var i = lo; i < hi; i++) {
      let e = exp((logits[o + i] - m) * u.invT);
      if (e >= tp) { acc += e; if (acc > r) { ids[row] = i; break; } }
    }
  }`,
  );
  return [topK, topP, draw];
}

function rowsDispatch(gpu: Gpu, rows: number): [number] {
  if (rows > gpu.limits.maxComputeWorkgroupsPerDimension) {
    throw new Error(`sampling: ${rows} rows exceed one dispatch dimension`);
  }
  return [rows];
}

/** ids[r] = argmax of logits row r (rows at off + r·ld, V columns). */
export function encodeArgmax(
  gpu: Gpu,
  pass: ComputePass,
  a: { logits: GPUBuffer; rows: number; V: number; ld?: number; off?: number; ids: GPUBuffer },
): void {
  if (a.rows <= 0) return;
  const wg = rowWorkgroupFor(gpu, a.V, 1);
  const u = uniforms(gpu).alloc(packUniforms([
    { u: a.rows },
    { u: a.V },
    { u: a.ld ?? a.V },
    { u: a.off ?? 0 },
    ...[0, 0, 0, 0, 0].map((x) => ({ u: x })),
  ]));
  dispatch(
    gpu,
    pass,
    getPipeline(gpu, argmaxShader(wg)),
    [u, a.logits, a.ids],
    rowsDispatch(gpu, a.rows),
  );
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
    /** u32 [1] added to `stream` (a decoder's token counter, advanced on the device). */
    counter?: GPUBuffer;
  },
  s: SampleOptions,
): void {
  if (a.rows <= 0) return;
  const wg = rowWorkgroupFor(gpu, a.V, SAMPLE_WALKS);
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
  const [k, p, d] = sampleShaders(wg, !!a.counter);
  const g = rowsDispatch(gpu, a.rows);
  dispatch(gpu, pass, getPipeline(gpu, k), [uniforms(gpu).alloc(words), a.logits, a.state], g);
  dispatch(gpu, pass, getPipeline(gpu, p), [uniforms(gpu).alloc(words), a.logits, a.state], g);
  dispatch(
    gpu,
    pass,
    getPipeline(gpu, d),
    [uniforms(gpu).alloc(words), a.logits, a.state, a.ids, ...(a.counter ? [a.counter] : [])],
    g,
  );
}

// ---------------------------------------------------------------------------
// Host references: the same slices, the same tree, f32 at every step.

const f = Math.fround;

/** The [lo, hi) slice of invocation l of WG for a row of V. */
function slice(V: number, WG: number, l: number): [number, number] {
  const per = Math.ceil(V / WG);
  const lo = Math.min(l * per, V);
  return [lo, Math.min(lo + per, V)];
}

/** The kernels' pairwise sum of per-slice values. */
function treeSum(parts: Float32Array): number {
  const a = parts.slice(), WG = a.length;
  for (let w = WG / 2; w > 0; w >>= 1) for (let l = 0; l < w; l++) a[l] = f(a[l] + a[l + w]);
  return a[0];
}

/** f32 sum over each slice of the e ≥ t. */
function slicesAbove(e: Float32Array, WG: number, t: number, count: boolean): Float32Array {
  const out = new Float32Array(WG);
  for (let l = 0; l < WG; l++) {
    const [lo, hi] = slice(e.length, WG, l);
    let s = 0;
    for (let i = lo; i < hi; i++) if (e[i] >= t) s = f(s + (count ? 1 : e[i]));
    out[l] = s;
  }
  return out;
}

/** argmax of a row, the lowest index on ties. */
export function argmaxRef(row: Float32Array): number {
  let arg = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[arg]) arg = i;
  return arg;
}

/** The sampling kernels' algorithm on the host, for tests, with the workgroup size `gpu` would use. */
export function sampleRef(
  gpu: Gpu,
  row: Float32Array,
  rowIndex: number,
  s: SampleOptions,
): number {
  const V = row.length;
  const WG = rowWorkgroupFor(gpu, V, SAMPLE_WALKS);
  const arg = argmaxRef(row);
  const m = row[arg];
  const e = new Float32Array(V);
  const invT = f(1 / Math.max(s.temperature, 1e-6));
  for (let i = 0; i < V; i++) e[i] = Math.exp(f((row[i] - m) * invT));
  let tk = 0;
  if (s.topK > 0 && s.topK < V) {
    let lo = 0, hi = 1;
    for (let it = 0; it < BISECT_STEPS; it++) {
      const mid = f(0.5 * (lo + hi));
      if (treeSum(slicesAbove(e, WG, mid, true)) >= s.topK) lo = mid;
      else hi = mid;
    }
    tk = lo;
  }
  const z = treeSum(slicesAbove(e, WG, tk, false));
  let tp = tk;
  if (s.topP < 1) {
    let lo = tk, hi = 1;
    for (let it = 0; it < BISECT_STEPS; it++) {
      const mid = f(0.5 * (lo + hi));
      if (treeSum(slicesAbove(e, WG, mid, false)) >= f(f(s.topP) * z)) lo = mid;
      else hi = mid;
    }
    tp = lo;
  }
  const parts = slicesAbove(e, WG, tp, false);
  const r = f(f(dropoutUniformRef(s.seed, s.stream, rowIndex)) * treeSum(parts));
  let acc = 0;
  for (let k = 0; k < WG; k++) {
    if (f(acc + parts[k]) > r) {
      const [lo, hi] = slice(V, WG, k);
      for (let i = lo; i < hi; i++) {
        if (e[i] >= tp) {
          acc = f(acc + e[i]);
          if (acc > r) return i;
        }
      }
      return arg;
    }
    acc = f(acc + parts[k]);
  }
  return arg;
}
