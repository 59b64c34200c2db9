/**
 * A GPU model from a model directory: config.json, then the weights streamed
 * to the device one tensor at a time (each tensor's bytes are read from disk
 * when the model asks for it and dropped once uploaded), so a checkpoint is
 * never held in memory whole.
 */
import { join } from "node:path";
import { UserError } from "../errors.ts";
import type { Gpu } from "../gpu/device.ts";
import { type DType, isDType, toF32 } from "../safetensors/dtype.ts";
import {
  createGlmModel,
  type GlmConfigFields,
  type GlmModel,
  type GlmModelOptions,
  type WeightSource,
} from "./glm.ts";

const REQUIRED: (keyof GlmConfigFields)[] = [
  "num_layers",
  "hidden_size",
  "ffn_hidden_size",
  "kv_channels",
  "num_attention_heads",
  "padded_vocab_size",
  "layernorm_epsilon",
];

/** config.json of a chatglm model dir, with the fields the model needs checked. */
export async function readModelConfig(modelDir: string): Promise<GlmConfigFields> {
  const path = join(modelDir, "config.json");
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError(`${modelDir}: no config.json (expected a chatglm3 model directory)`);
    }
    throw e;
  }
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(text);
  } catch (e) {
    throw new UserError(`${path}: not valid JSON (${(e as Error).message})`);
  }
  for (const k of REQUIRED) {
    const v = cfg[k];
    if (typeof v !== "number" || !(v > 0)) {
      throw new UserError(`${path}: ${k}: expected a positive number, got ${JSON.stringify(v)}`);
    }
  }
  if (cfg.multi_query_attention !== false) {
    const g = cfg.multi_query_group_num;
    if (typeof g !== "number" || !(g > 0)) {
      throw new UserError(
        `${path}: multi_query_group_num: expected a positive number, got ${JSON.stringify(g)}`,
      );
    }
  }
  return cfg as unknown as GlmConfigFields;
}

interface Entry {
  file: string;
  dtype: DType;
  shape: number[];
  begin: number;
  end: number;
}

/** The weight files of a model dir: one model.safetensors or the shards its index names. */
export async function weightFiles(modelDir: string): Promise<string[]> {
  const index = join(modelDir, "model.safetensors.index.json");
  try {
    const idx = JSON.parse(await Deno.readTextFile(index));
    const map = idx?.weight_map;
    if (typeof map !== "object" || map === null) {
      throw new UserError(`${index}: weight_map: expected an object of tensor name → file`);
    }
    return [...new Set(Object.values(map as Record<string, string>))].map((f) => join(modelDir, f));
  } catch (e) {
    if (e instanceof UserError) throw e;
    if (!(e instanceof Deno.errors.NotFound)) {
      throw new UserError(`${index}: ${(e as Error).message}`);
    }
  }
  const single = join(modelDir, "model.safetensors");
  try {
    await Deno.stat(single);
  } catch {
    let bin = false;
    for (const f of ["pytorch_model.bin", "pytorch_model.bin.index.json"]) {
      try {
        await Deno.stat(join(modelDir, f));
        bin = true;
      } catch { /* absent */ }
    }
    throw new UserError(
      bin
        ? `${modelDir}: holds PyTorch .bin weights only; convert them to safetensors first, e.g. ` +
          `python -c "from transformers import AutoModel; AutoModel.from_pretrained('${modelDir}', ` +
          `trust_remote_code=True).save_pretrained('${modelDir}', safe_serialization=True)"`
        : `${modelDir}: no model.safetensors nor model.safetensors.index.json`,
    );
  }
  return [single];
}

async function readExactly(f: Deno.FsFile, n: number, file: string): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let off = 0;
  while (off < n) {
    const got = await f.read(out.subarray(off));
    if (!got) throw new UserError(`${file}: truncated`);
    off += got;
  }
  return out;
}

/** Lazy tensor access over safetensors files: headers up front, each tensor's bytes when asked. */
export class LazyWeights implements WeightSource {
  private constructor(readonly entries: Map<string, Entry>) {}

  static async open(files: string[]): Promise<LazyWeights> {
    const entries = new Map<string, Entry>();
    for (const file of files) {
      let f: Deno.FsFile;
      try {
        f = await Deno.open(file);
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) throw new UserError(`${file}: no such file`);
        throw e;
      }
      try {
        const size = (await f.stat()).size;
        if (size < 8) throw new UserError(`${file}: not a safetensors file (shorter than 8 bytes)`);
        const hlen = Number(
          new DataView((await readExactly(f, 8, file)).buffer).getBigUint64(0, true),
        );
        if (8 + hlen > size) {
          throw new UserError(`${file}: the header runs past the end of the file`);
        }
        let header: Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>;
        try {
          header = JSON.parse(new TextDecoder().decode(await readExactly(f, hlen, file)));
        } catch (e) {
          if (e instanceof UserError) throw e;
          throw new UserError(`${file}: the safetensors header is not JSON`);
        }
        for (const [name, info] of Object.entries(header)) {
          if (name === "__metadata__") continue;
          if (!isDType(info.dtype)) {
            throw new UserError(
              `${file}: ${name} has dtype ${info.dtype}; F32, F16 and BF16 are supported`,
            );
          }
          const begin = 8 + hlen + info.data_offsets[0];
          const end = 8 + hlen + info.data_offsets[1];
          const n = info.shape.reduce((a, b) => a * b, 1);
          if (end > size || end - begin !== n * (info.dtype === "F32" ? 4 : 2)) {
            throw new UserError(`${file}: ${name}: data_offsets do not fit its shape or the file`);
          }
          entries.set(name, { file, dtype: info.dtype, shape: info.shape, begin, end });
        }
      } finally {
        f.close();
      }
    }
    return new LazyWeights(entries);
  }

  names(): string[] {
    return [...this.entries.keys()];
  }
  has(name: string): boolean {
    return this.entries.has(name);
  }
  private get(name: string): Entry {
    const e = this.entries.get(name);
    if (!e) throw new UserError(`model weights: no tensor ${name}`);
    return e;
  }
  file(name: string): string {
    return this.get(name).file;
  }
  shape(name: string): number[] {
    return this.get(name).shape;
  }
  dtype(name: string): DType {
    return this.get(name).dtype;
  }
  async raw(name: string): Promise<Uint8Array> {
    const e = this.get(name);
    const f = await Deno.open(e.file);
    try {
      await f.seek(e.begin, Deno.SeekMode.Start);
      return await readExactly(f, e.end - e.begin, e.file);
    } finally {
      f.close();
    }
  }
  async f32(name: string): Promise<Float32Array> {
    return toF32(await this.raw(name), this.dtype(name));
  }
}

/** Open the weights of a model dir lazily. */
export async function openModelWeights(modelDir: string): Promise<LazyWeights> {
  return await LazyWeights.open(await weightFiles(modelDir));
}

/** config.json + lazily streamed safetensors → a GlmModel on the device. */
export async function loadGlmModel(
  gpu: Gpu,
  modelDir: string,
  opts: GlmModelOptions,
): Promise<GlmModel> {
  const config = await readModelConfig(modelDir);
  return await createGlmModel(gpu, config, await openModelWeights(modelDir), opts);
}
