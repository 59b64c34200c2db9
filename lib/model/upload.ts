/**
 * Base weights onto the device, once: every tensor checked against the
 * shape the config implies, frozen matrices stored as f16 (packed two per
 * u32) unless they train, or the layers' linears as 4-bit codes (QLoRA), the
 * embedding and output tables split by rows into slices that each fit a
 * binding; then the trainable tensors of the adapter.
 */
import { settleWrites, writeBuffer } from "../gpu/runtime.ts";
import { f32ToF16Packed, rawToF16Packed } from "../gpu/kernels/matmul.ts";
import { UserError } from "../errors.ts";
import {
  type AdapterSpec,
  EMBEDDING,
  FINAL_NORM,
  layerPrefix,
  LINEAR_PATH,
  LORA_TARGETS,
  loraName,
  type LoraTarget,
  OUTPUT_LAYER,
  PREFIX_DROPOUT,
  PREFIX_EMBEDDING,
  PREFIX_TRANS,
} from "./adapter.ts";
import { type Dims, linearShape, type WeightSource } from "./dims.ts";
import { type PlanQuantization, tableSliceRows } from "./memory_plan.ts";
import { quantizeRaw, uploadDynamicMap, uploadQuant4 } from "./quant/mod.ts";
import type { Quant4Weight } from "../gpu/kernels/matmul_4bit.ts";
import type { DeviceStore } from "./store.ts";
import type { Layer, Linear, Prefix, Table } from "./blocks/core.ts";
import type { TrainableParam } from "./types.ts";

export interface BaseWeights {
  embed: Table;
  layers: Layer[];
  finalNorm: GPUBuffer;
  output: Table;
  /** Host seconds spent quantizing the 4-bit weights (0 without quantization). */
  quantizeSeconds: number;
}

/**
 * Upload every base weight of `w` (f16 matrices when `f16`; full SFT keeps
 * them f32). With `quant`, each layer's four linear weights are quantized to
 * 4 bits as they load, one tensor at a time (./quant), and only their codes
 * and scales go to the device; the embedding and output tables, norm weights
 * and the qkv bias load as without it (docs/qlora.md says why).
 */
export async function uploadBase(
  store: DeviceStore,
  d: Dims,
  w: WeightSource,
  o: { full: boolean; f16: boolean; quant?: PlanQuantization },
): Promise<BaseWeights> {
  const gpu = store.gpu;
  const check = (name: string, shape: number[]) => {
    let got: number[];
    try {
      got = w.shape(name);
    } catch (e) {
      throw new UserError(`model weights: missing tensor ${name} (${(e as Error).message})`);
    }
    if (got.join(",") !== shape.join(",")) {
      throw new UserError(
        `model weights: ${name} has shape [${got}], the config implies [${shape}]`,
      );
    }
  };
  const vector = async (name: string, n: number) => {
    check(name, [n]);
    return store.up(await w.f32(name), name);
  };
  const matrix = async (name: string, shape: number[], asF16: boolean) => {
    check(name, shape);
    const dt = w.dtype(name);
    const data = !asF16
      ? await w.f32(name)
      : dt === "F32"
      ? f32ToF16Packed(await w.f32(name))
      : rawToF16Packed(await w.raw(name), dt);
    const b = store.up(data, name);
    // Staging copies of the writes go once submitted: without this a model is held twice.
    await settleWrites(gpu);
    return b;
  };
  const table = async (name: string, rows: number, cols: number, asF16: boolean) => {
    check(name, [rows, cols]);
    const limit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
    const rowBytes = cols * (asF16 ? 2 : 4);
    // Slices of a multiple of 4 rows keep the output layer's products on the
    // vec4 kernels (a 16,383-row slice of chatglm3-6b's went to the scalar one).
    let per = tableSliceRows(rows, rowBytes, limit);
    if (asF16 && (per * cols) % 2 === 1) per -= 1;
    if (per < 1) {
      throw new UserError(
        `${name}: one row of ${rowBytes} bytes exceeds the adapter's binding limit`,
      );
    }
    const slices: Table["slices"] = [];
    const dt = w.dtype(name);
    const raw = asF16 && dt !== "F32" ? await w.raw(name) : undefined;
    const all = raw ? undefined : await w.f32(name);
    // A trained table is one buffer (up to maxBufferSize) bound a slice at a time.
    const whole = o.full ? store.buf(rows * rowBytes, name) : undefined;
    for (let start = 0; start < rows; start += per) {
      const end = Math.min(rows, start + per);
      let data: Float32Array | Uint32Array;
      if (raw) data = rawToF16Packed(raw.subarray(start * cols * 2, end * cols * 2), dt);
      else {
        const part = all!.subarray(start * cols, end * cols);
        data = asF16 ? f32ToF16Packed(part) : part;
      }
      const size = (end - start) * rowBytes;
      if (whole) {
        const offset = start * rowBytes;
        if (offset % gpu.limits.minStorageBufferOffsetAlignment !== 0) {
          throw new UserError(
            `${name}: rows of ${rowBytes} bytes do not start its slices at the adapter's binding alignment`,
          );
        }
        writeBuffer(gpu, whole, offset, data);
        slices.push({
          buf: whole,
          off: start * cols,
          range: { buffer: whole, offset, size },
          start,
          end,
        });
      } else {
        const buf = store.up(data, `${name}[${start}:${end}]`);
        slices.push({ buf, off: 0, range: { buffer: buf, offset: 0, size }, start, end });
      }
      await settleWrites(gpu);
    }
    return { f16: asF16, rows, cols, slices };
  };

  const q = o.quant;
  if (q && o.full) throw new UserError("a 4-bit base is frozen: it cannot be fully fine-tuned");
  const up = (data: Uint32Array | Float32Array, label: string) => store.up(data, label);
  // The 8-bit code book of double quantization: one per model, so that it goes with the model.
  const code = q?.doubleQuant ? uploadDynamicMap(up) : undefined;
  let quantizeSeconds = 0;
  const quantized = async (name: string, shape: number[]): Promise<Quant4Weight> => {
    check(name, shape);
    const raw = await w.raw(name);
    const t0 = performance.now();
    const t = quantizeRaw(raw, w.dtype(name), shape, {
      type: q!.quantType,
      doubleQuant: q!.doubleQuant,
      blocksize: q!.blocksize ?? 64,
    });
    quantizeSeconds += (performance.now() - t0) / 1000;
    const weight = uploadQuant4(gpu, t, name, { up, code });
    await settleWrites(gpu);
    return weight;
  };

  const embed = await table(EMBEDDING, d.V, d.hidden, o.f16);
  const layers: Layer[] = [];
  for (let i = 0; i < d.L; i++) {
    const p = layerPrefix(i);
    const ln1 = await vector(p + "input_layernorm.weight", d.hidden);
    const ln2 = await vector(p + "post_attention_layernorm.weight", d.hidden);
    const lin = {} as Record<LoraTarget, Linear>;
    for (const kind of LORA_TARGETS) {
      const [inF, outF] = linearShape(d, kind);
      const name = p + LINEAR_PATH[kind] + ".weight";
      const l: Linear = q
        ? { kind, in: inF, out: outF, q4: await quantized(name, [outF, inF]), f16: false }
        : { kind, in: inF, out: outF, w: await matrix(name, [outF, inF], o.f16), f16: o.f16 };
      if (kind === "query_key_value" && d.qkvBias) {
        l.bias = await vector(p + LINEAR_PATH[kind] + ".bias", outF);
      }
      lin[kind] = l;
    }
    layers.push({ ln1, ln2, lin });
  }
  const finalNorm = await vector(FINAL_NORM, d.hidden);
  const output = await table(OUTPUT_LAYER, d.V, d.hidden, o.f16);
  return { embed, layers, finalNorm, output, quantizeSeconds };
}

/** Full SFT: every base weight becomes a trainable param, in HF state-dict order. */
export function fullParams(
  store: DeviceStore,
  d: Dims,
  base: BaseWeights,
): { finalNormParam: TrainableParam } {
  store.addParam(EMBEDDING, [d.V, d.hidden], base.embed.slices[0].buf);
  for (let i = 0; i < d.L; i++) {
    const p = layerPrefix(i), ly = base.layers[i];
    ly.ln1Param = store.addParam(p + "input_layernorm.weight", [d.hidden], ly.ln1);
    for (const kind of LORA_TARGETS) {
      const l = ly.lin[kind];
      if (kind === "dense_h_to_4h") {
        ly.ln2Param = store.addParam(p + "post_attention_layernorm.weight", [d.hidden], ly.ln2);
      }
      l.wParam = store.addParam(p + LINEAR_PATH[kind] + ".weight", [l.out, l.in], l.w!);
      if (l.bias) l.bParam = store.addParam(p + LINEAR_PATH[kind] + ".bias", [l.out], l.bias);
    }
  }
  const finalNormParam = store.addParam(FINAL_NORM, [d.hidden], base.finalNorm);
  store.addParam(OUTPUT_LAYER, [d.V, d.hidden], base.output.slices[0].buf);
  return { finalNormParam };
}

/** LoRA: A [r, in] and B [out, r] on each target linear of every layer. */
export function loraParams(
  store: DeviceStore,
  base: BaseWeights,
  a: Extract<AdapterSpec, { kind: "lora" }>,
): void {
  base.layers.forEach((ly, i) => {
    for (const kind of LORA_TARGETS) {
      if (!a.targetModules.includes(kind)) continue;
      const l = ly.lin[kind];
      l.lora = {
        A: store.addParam(loraName(i, kind, "A"), [a.r, l.in]),
        B: store.addParam(loraName(i, kind, "B"), [l.out, a.r]),
      };
    }
  });
}

/** P-Tuning v2: the prefix table [P, L·2·G·D] and, with prefix_projection, its projection. */
export function prefixParams(
  store: DeviceStore,
  d: Dims,
  a: Extract<AdapterSpec, { kind: "prefix" }>,
): Prefix {
  const P = a.preSeqLen, C = d.L * 2 * d.G * d.D, hidden = a.prefixHiddenSize ?? d.hidden;
  const emb = store.addParam(PREFIX_EMBEDDING, [P, C]);
  const trans = a.prefixProjection
    ? [
      store.addParam(PREFIX_TRANS[0], [hidden, C]),
      store.addParam(PREFIX_TRANS[1], [hidden]),
      store.addParam(PREFIX_TRANS[2], [C, hidden]),
      store.addParam(PREFIX_TRANS[3], [C]),
    ]
    : undefined;
  return { P, C, hidden, emb, trans, dropout: a.dropout ?? PREFIX_DROPOUT };
}
