/**
 * The base weights of a chatglm3 model directory, under their Hugging Face
 * names, from `model.safetensors` or the shards of
 * `model.safetensors.index.json`. Opening reads only the headers and checks
 * that every tensor the config implies is present with its shape; each
 * tensor's bytes are read from disk when asked for, and refused (by name)
 * when they hold NaN or infinity: such weights only ever give NaN outputs.
 */
import { join } from "node:path";
import { UserError } from "../errors.ts";
import { assertFiniteTensor, firstNonFiniteRaw } from "../finite.ts";
import { Checkpoint } from "../safetensors/checkpoint.ts";
import type { DType } from "../safetensors/dtype.ts";
import { decodable } from "../safetensors/read.ts";
import { glmAttentionWidth, type GlmConfig, glmQkvWidth } from "./config.ts";

export const EMBEDDING = "transformer.embedding.word_embeddings.weight";
export const FINAL_NORM = "transformer.encoder.final_layernorm.weight";
export const OUTPUT_LAYER = "transformer.output_layer.weight";

/** Names of layer `i`'s tensors. */
export function layerNames(i: number) {
  const p = `transformer.encoder.layers.${i}`;
  return {
    inputNorm: `${p}.input_layernorm.weight`,
    qkvWeight: `${p}.self_attention.query_key_value.weight`,
    qkvBias: `${p}.self_attention.query_key_value.bias`,
    dense: `${p}.self_attention.dense.weight`,
    postNorm: `${p}.post_attention_layernorm.weight`,
    h4h: `${p}.mlp.dense_h_to_4h.weight`,
    fourhh: `${p}.mlp.dense_4h_to_h.weight`,
  };
}

/**
 * Every base tensor a config implies, in checkpoint order, with its shape
 * (torch Linear weights are [out, in]).
 */
export function glmWeightShapes(c: GlmConfig): Map<string, number[]> {
  const h = c.hidden_size, qkv = glmQkvWidth(c), f = c.ffn_hidden_size;
  const m = new Map<string, number[]>();
  m.set(EMBEDDING, [c.padded_vocab_size, h]);
  for (let i = 0; i < c.num_layers; i++) {
    const n = layerNames(i);
    m.set(n.inputNorm, [h]);
    m.set(n.qkvWeight, [qkv, h]);
    if (c.add_qkv_bias) m.set(n.qkvBias, [qkv]);
    m.set(n.dense, [h, glmAttentionWidth(c)]);
    m.set(n.postNorm, [h]);
    m.set(n.h4h, [2 * f, h]);
    m.set(n.fourhh, [h, f]);
  }
  if (c.post_layer_norm) m.set(FINAL_NORM, [h]);
  m.set(OUTPUT_LAYER, [c.padded_vocab_size, h]);
  return m;
}

export interface GlmWeights {
  /** The file named in messages: the index or model.safetensors. */
  readonly source: string;
  /** Every tensor in the checkpoint (extra ones such as rotary_pos_emb.inv_freq included). */
  names(): string[];
  /** The tensors the config requires, in checkpoint order. */
  expected(): Map<string, number[]>;
  has(name: string): boolean;
  shape(name: string): number[];
  dtype(name: string): DType;
  /** Decoded to f32 (read from disk now). */
  f32(name: string): Promise<Float32Array>;
  /** Raw little-endian bytes in `dtype(name)` (read from disk now). */
  raw(name: string): Promise<Uint8Array>;
}

/** The one-line conversion a user with PyTorch weights only should run. */
export function binConversionHint(dir: string): string {
  return `python -c "from transformers import AutoModel; ` +
    `AutoModel.from_pretrained('${dir}', trust_remote_code=True, torch_dtype='auto')` +
    `.save_pretrained('${dir}', safe_serialization=True)"`;
}

export async function listBins(dir: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (/^pytorch_model.*\.bin(\.index\.json)?$/.test(e.name)) out.push(e.name);
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`${dir}: no such model directory`);
    throw e;
  }
  return out.sort();
}

/**
 * Why `dir` has no weights this tool reads: PyTorch `.bin` files only (with
 * the command that converts them), or none at all. Every command that loads a
 * model says the same (evaluate, chat, train, a pipeline's input check).
 */
export async function noWeightsError(dir: string): Promise<UserError> {
  const bins = await listBins(dir);
  if (bins.length) {
    return new UserError(
      `${dir}: holds PyTorch weights only (${bins.join(", ")}); this tool reads safetensors. ` +
        `Convert once with: ${binConversionHint(dir)}`,
    );
  }
  return new UserError(
    `${dir}: no model.safetensors or model.safetensors.index.json (expected chatglm3 weights in safetensors format)`,
  );
}

/** Check that `dir` holds safetensors weights whose headers (and index) read, without loading a tensor. */
export async function checkWeightFiles(dir: string): Promise<void> {
  if (!(await Checkpoint.open(dir))) throw await noWeightsError(dir);
}

/** Open the weights of `dir` and check them against `config`. */
export async function openWeights(dir: string, config: GlmConfig): Promise<GlmWeights> {
  const ck = await Checkpoint.open(dir);
  if (!ck) throw await noWeightsError(dir);
  const expected = glmWeightShapes(config);
  const missing: string[] = [];
  for (const [name, shape] of expected) {
    if (!ck.has(name)) {
      missing.push(`${name} [${shape}]`);
      continue;
    }
    const info = ck.info(name);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new UserError(
        `${ck.source}: tensor ${name} has shape [${info.shape}], but ${
          join(dir, "config.json")
        } implies [${shape}]`,
      );
    }
    decodable(ck.source, info);
  }
  if (missing.length) {
    const shown = missing.slice(0, 5).join(", ");
    const more = missing.length > 5 ? ` and ${missing.length - 5} more` : "";
    throw new UserError(
      `${ck.source}: missing ${missing.length} tensor(s) the config requires: ${shown}${more}`,
    );
  }
  // As transformers says "Some weights … were not used": a config that describes fewer layers
  // than the file holds runs, but not the model the file is. (The rotary inverse frequencies
  // chatglm3 checkpoints carry are recomputed, not read.)
  const unused = ck.names().filter((n) => !expected.has(n) && !/rotary_pos_emb\.inv_freq$/.test(n));
  if (unused.length) {
    console.error(
      `note: ${ck.source}: ${unused.length} tensor(s) that ${join(dir, "config.json")} does not ` +
        `use (${unused.slice(0, 3).join(", ")}${unused.length > 3 ? ", …" : ""}); ` +
        `do the config and the weights belong together?`,
    );
  }
  return {
    source: ck.source,
    names: () => ck.names(),
    expected: () => new Map(expected),
    has: (name) => ck.has(name),
    shape: (name) => [...ck.info(name).shape],
    dtype: (name) => decodable(ck.source, ck.info(name)),
    f32: async (name) => {
      const data = await ck.f32(name);
      assertFiniteTensor(ck.source, name, data);
      return data;
    },
    raw: async (name) => {
      const bytes = await ck.raw(name);
      const dtype = ck.info(name).dtype;
      if (firstNonFiniteRaw(bytes, dtype) >= 0) {
        assertFiniteTensor(ck.source, name, await ck.f32(name));
      }
      return bytes;
    },
  };
}
