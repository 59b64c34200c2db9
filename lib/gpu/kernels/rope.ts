/**
 * ChatGLM3 rotary embedding, in place on the q and k heads of fused qkv rows:
 * the first headDim/2 dims of each head rotate as interleaved pairs (2i, 2i+1)
 * by pos·θ_i; `inverse` rotates back, which is the backward. cos/sin come from
 * a table built on the host the way the PyTorch model builds its cache (f32
 * θ, f32 pos·θ), so large positions lose nothing to the shader's cos/sin.
 * Reference: `rope` in lib/model/cpu/ops.ts.
 */
import type { Gpu } from "../device.ts";
import { type ComputePass, dispatch, getPipeline, packUniforms, uniforms } from "../runtime.ts";
import { entry, grid, rowWorkgroup } from "./grid.ts";

/**
 * [maxPos, headDim/4, 2] of (cos, sin): θ_i = 1 / base^(2i / (headDim/2)) and
 * angle = pos·θ_i, both rounded to f32 as torch computes them.
 */
export function ropeTable(maxPos: number, headDim: number, base: number): Float32Array {
  const rotDim = headDim / 2, pairs = rotDim / 2;
  const t = new Float32Array(maxPos * pairs * 2);
  const theta = new Float32Array(pairs);
  for (let i = 0; i < pairs; i++) {
    theta[i] = Math.fround(1 / Math.fround(Math.pow(base, Math.fround((2 * i) / rotDim))));
  }
  for (let p = 0; p < maxPos; p++) {
    for (let i = 0; i < pairs; i++) {
      const ang = Math.fround(p * theta[i]);
      t[(p * pairs + i) * 2] = Math.cos(ang);
      t[(p * pairs + i) * 2 + 1] = Math.sin(ang);
    }
  }
  return t;
}

function shader(wg: number): string {
  return `struct U { rows: u32, rowStride: u32, colOff: u32, heads: u32, headDim: u32,
  pairs: u32, usePos: u32, posOffset: u32, seq: u32, sign: f32 }
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read> pos: array<i32>;
${entry(wg)}
  if (idx >= u.rows * u.heads) { return; }
  let r = idx / u.heads;
  let h = idx - r * u.heads;
  var p = r % u.seq;
  if (u.usePos != 0u) { p = u32(pos[r]); }
  p += u.posOffset;
  let o = r * u.rowStride + u.colOff + h * u.headDim;
  let t = p * u.pairs * 2u;
  for (var i = 0u; i < u.pairs; i++) {
    let c = table[t + 2u * i];
    let s = u.sign * table[t + 2u * i + 1u];
    let x0 = x[o + 2u * i];
    let x1 = x[o + 2u * i + 1u];
    x[o + 2u * i] = x0 * c - x1 * s;
    x[o + 2u * i + 1u] = x1 * c + x0 * s;
  }
}`;
}

export interface RopeArgs {
  /** Buffer of rows; heads [colOff, colOff + heads·headDim) of each row are rotated in place. */
  x: GPUBuffer;
  rows: number;
  rowStride: number;
  colOff: number;
  heads: number;
  headDim: number;
  /** From ropeTable; must cover every position used. */
  table: GPUBuffer;
  /** Per-row positions (i32); without it the position of row r is r mod seq. */
  positions?: GPUBuffer;
  seq?: number;
  /** Added to every position. */
  posOffset?: number;
  inverse?: boolean;
}

export function encodeRope(gpu: Gpu, pass: ComputePass, a: RopeArgs): void {
  const n = a.rows * a.heads;
  if (n <= 0) return;
  const wg = rowWorkgroup(gpu);
  const u = uniforms(gpu).alloc(packUniforms([
    { u: a.rows },
    { u: a.rowStride },
    { u: a.colOff },
    { u: a.heads },
    { u: a.headDim },
    { u: a.headDim / 4 },
    { u: a.positions ? 1 : 0 },
    { u: a.posOffset ?? 0 },
    { u: a.seq ?? a.rows },
    { f: a.inverse ? -1 : 1 },
  ]));
  // Without per-row positions the binding still needs a buffer: the table stands in (never read as positions).
  dispatch(
    gpu,
    pass,
    getPipeline(gpu, shader(wg)),
    [u, a.x, a.table, a.positions ?? a.table],
    grid(gpu, n, wg),
  );
}
