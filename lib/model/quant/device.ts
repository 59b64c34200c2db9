/**
 * A 4-bit tensor on the device, in the layout lib/gpu/kernels/matmul_4bit.ts
 * reads (docs/qlora.md draws it):
 *
 *   packed   bitsandbytes' packed bytes, unchanged, in a buffer of u32 words
 *            (little-endian: byte i is bits 8·(i & 3) of word i >> 2), zero-padded
 *            to a whole word. The bytes on the device are the bytes
 *            bitsandbytes stores, so what the tests compare bit for bit is
 *            what the kernels read.
 *   scales   without double quantization: f32 absmax per block of 64;
 *            with it: the 8-bit code of each block, 4 per u32 word (block b in
 *            byte b & 3 of word b >> 2), plus `nested.absmax` (f32 per 256
 *            blocks), the 8-bit code book (256 f32, one buffer per device)
 *            and the f32 offset, which rides in the kernel's uniform.
 *
 * Why this layout: a kernel reading along a weight row decodes a whole u32
 * (8 consecutive values of one block) per load with one scale lookup, and
 * the bytes need no repacking at load.
 */
import type { Gpu } from "../../gpu/device.ts";
import { createBuffer, writeBuffer } from "../../gpu/runtime.ts";
import type { Quant4Weight } from "../../gpu/kernels/matmul_4bit.ts";
import { dynamicMap, quant4Values } from "./codes.ts";
import type { Quant4Tensor } from "./quantize.ts";

/** The host arrays of the device layout (what `uploadQuant4` writes). */
export interface Quant4Host {
  packed: Uint32Array;
  /** f32 absmax, or the 8-bit codes packed 4 per word (double quantization). */
  scales: Float32Array | Uint32Array;
  nestedAbsmax?: Float32Array;
  offset?: number;
}

/** Bytes as u32 words, zero-padded to a whole word (little-endian, as WGSL reads storage). */
function words(bytes: Uint8Array): Uint32Array {
  const out = new Uint32Array(Math.ceil(bytes.length / 4));
  new Uint8Array(out.buffer).set(bytes);
  return out;
}

export function quant4Host(t: Quant4Tensor): Quant4Host {
  if (t.nested) {
    return {
      packed: words(t.packed),
      scales: words(t.nested.codes),
      nestedAbsmax: t.nested.absmax,
      offset: t.nested.offset,
    };
  }
  return { packed: words(t.packed), scales: t.absmax! };
}

const codeBuffers = new WeakMap<GPUDevice, GPUBuffer>();

/** Where uploadQuant4 puts a tensor's buffers (a model's store, so that they go with it). */
export type Quant4Allocator = (data: Uint32Array | Float32Array, label: string) => GPUBuffer;

/** The label of the 8-bit code book's buffer (benchmarks count it with the frozen weights). */
export const DYNAMIC_MAP_LABEL = "quant-dynamic-map";

/** The 8-bit dynamic map on the device, one buffer shared by every double-quantized tensor. */
function dynamicMapBuffer(gpu: Gpu): GPUBuffer {
  let b = codeBuffers.get(gpu.device);
  if (!b) {
    b = createBuffer(gpu, 256 * 4, DYNAMIC_MAP_LABEL);
    writeBuffer(gpu, b, 0, dynamicMap());
    codeBuffers.set(gpu.device, b);
  }
  return b;
}

/** The dynamic map in a buffer of `up`'s (a model's own copy, destroyed with it). */
export function uploadDynamicMap(up: Quant4Allocator): GPUBuffer {
  return up(dynamicMap(), DYNAMIC_MAP_LABEL);
}

/**
 * Upload a quantized tensor; the result is what encodeMatmul4bit takes as `w`.
 * With `o.up` the buffers are made by it (else plain buffers the caller frees
 * with destroyQuant4), with `o.code` a double-quantized tensor reads that
 * dynamic map (else one shared by the device).
 */
export function uploadQuant4(
  gpu: Gpu,
  t: Quant4Tensor,
  label = "quant4",
  o: { up?: Quant4Allocator; code?: GPUBuffer } = {},
): Quant4Weight {
  const h = quant4Host(t);
  const up = o.up ?? ((data, name) => {
    const b = createBuffer(gpu, data.byteLength, name);
    writeBuffer(gpu, b, 0, data);
    return b;
  });
  const w: Quant4Weight = {
    packed: up(h.packed, `${label}.packed`),
    scales: up(h.scales, `${label}.scales`),
    values: quant4Values(t.type),
    blocksize: t.blocksize,
  };
  if (t.nested) {
    w.nested = {
      absmax: up(h.nestedAbsmax!, `${label}.absmax2`),
      code: o.code ?? dynamicMapBuffer(gpu),
      offset: t.nested.offset,
      blocksize: t.nested.blocksize,
    };
  }
  return w;
}

/** Free a tensor's buffers (the shared code book stays). */
export function destroyQuant4(w: Quant4Weight): void {
  w.packed.destroy();
  w.scales.destroy();
  w.nested?.absmax.destroy();
}
