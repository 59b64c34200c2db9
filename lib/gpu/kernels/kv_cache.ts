/**
 * The state a decoder keeps on the device so that a generated token needs no
 * host write: where each row's new keys and values go (its position, read
 * from a buffer the GPU advances), and a ring of chosen tokens the host reads
 * back every few tokens. Reference: `kvStoreRef` and `advanceRef` below.
 */
import type { Gpu } from "../device.ts";
import { checkLoopBudget } from "../loop_budget.ts";
import { type ComputePass, dispatch, getPipeline, packUniforms, uniforms } from "../runtime.ts";
import { entry, grid, rowWorkgroup } from "./grid.ts";

function storeShader(wg: number): string {
  return `struct U { rows: u32, width: u32, srcOff: u32, srcRow: u32, dstBatch: u32, dstRow: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<i32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
${entry(wg)}
  if (idx >= u.rows * u.width) { return; }
  let b = idx / u.width;
  let j = idx - b * u.width;
  dst[b * u.dstBatch + u32(pos[b]) * u.dstRow + j] = src[u.srcOff + b * u.srcRow + j];
}`;
}

export interface KvStore {
  rows: number;
  /** Values per row copied (keys and values of every group: 2·G·D). */
  width: number;
  src: GPUBuffer;
  srcOff: number;
  /** Elements between rows of src. */
  srcRow: number;
  /** i32 [rows]: the position each row's values go to. */
  pos: GPUBuffer;
  dst: GPUBuffer;
  /** Elements between rows' caches, and between positions. */
  dstBatch: number;
  dstRow: number;
}

/** dst[b·dstBatch + pos[b]·dstRow + j] = src[srcOff + b·srcRow + j] for b < rows, j < width. */
export function encodeKvStore(gpu: Gpu, pass: ComputePass, a: KvStore): void {
  const n = a.rows * a.width;
  if (n <= 0) return;
  const wg = rowWorkgroup(gpu) * 8;
  const u = uniforms(gpu).alloc(packUniforms([
    { u: a.rows },
    { u: a.width },
    { u: a.srcOff },
    { u: a.srcRow },
    { u: a.dstBatch },
    { u: a.dstRow },
  ]));
  dispatch(
    gpu,
    pass,
    getPipeline(gpu, storeShader(wg)),
    [u, a.src, a.pos, a.dst],
    grid(gpu, n, wg),
  );
}

const ADVANCE_WG = 64;

const ADVANCE = `struct U { rows: u32, slots: u32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> ring: array<u32>;
@group(0) @binding(3) var<storage, read_write> pos: array<i32>;
@group(0) @binding(4) var<storage, read_write> counter: array<u32>;
@compute @workgroup_size(${ADVANCE_WG})
fn main(@builtin(local_invocation_index) l: u32) {
  let n = counter[0];
  let slot = n % u.slots;
  for (var b = l; b < u.rows; b += ${ADVANCE_WG}u) {
    ring[slot * u.rows + b] = ids[b];
    pos[b] += 1;
  }
  // Every invocation has read the counter before it moves on.
  storageBarrier();
  workgroupBarrier();
  if (l == 0u) { counter[0] = n + 1u; }
}`;

export interface Advance {
  rows: number;
  /** u32 [rows]: the tokens just chosen. */
  ids: GPUBuffer;
  /** u32 [slots·rows]: token n of row b at ((n mod slots)·rows + b). */
  ring: GPUBuffer;
  slots: number;
  /** i32 [rows]: each row's position, advanced by one. */
  pos: GPUBuffer;
  /** u32 [1]: tokens chosen so far (the n above), advanced by one. */
  counter: GPUBuffer;
}

/** After a token is chosen for every row: keep it in the ring, advance positions and the counter. */
export function encodeAdvance(gpu: Gpu, pass: ComputePass, a: Advance): void {
  if (a.rows <= 0) return;
  checkLoopBudget("decode advance", Math.ceil(a.rows / ADVANCE_WG));
  const u = uniforms(gpu).alloc(packUniforms([{ u: a.rows }, { u: a.slots }]));
  dispatch(gpu, pass, getPipeline(gpu, ADVANCE), [u, a.ids, a.ring, a.pos, a.counter], [1]);
}

// ---------------------------------------------------------------------------
// Host references.

export function kvStoreRef(
  src: Float32Array,
  pos: Int32Array,
  dst: Float32Array,
  a: Omit<KvStore, "src" | "pos" | "dst">,
): void {
  for (let b = 0; b < a.rows; b++) {
    for (let j = 0; j < a.width; j++) {
      dst[b * a.dstBatch + pos[b] * a.dstRow + j] = src[a.srcOff + b * a.srcRow + j];
    }
  }
}

export function advanceRef(
  ids: Uint32Array,
  ring: Uint32Array,
  pos: Int32Array,
  counter: Uint32Array,
  rows: number,
  slots: number,
): void {
  const slot = counter[0] % slots;
  for (let b = 0; b < rows; b++) {
    ring[slot * rows + b] = ids[b];
    pos[b] += 1;
  }
  counter[0] += 1;
}
