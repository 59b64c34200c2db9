/**
 * The model's dimensions, derived from the config.json fields the WebGPU
 * model reads, and where a linear of each kind maps from and to.
 */
import { UserError } from "../errors.ts";
import type { DType } from "../safetensors/dtype.ts";
import type { LoraTarget } from "./adapter.ts";

/** The config.json fields the model reads (HF chatglm3 spelling). */
export interface GlmConfigFields {
  num_layers: number;
  hidden_size: number;
  ffn_hidden_size: number;
  kv_channels: number;
  num_attention_heads: number;
  multi_query_attention?: boolean;
  multi_query_group_num: number;
  padded_vocab_size: number;
  layernorm_epsilon: number;
  rmsnorm?: boolean;
  add_qkv_bias?: boolean;
  add_bias_linear?: boolean;
  post_layer_norm?: boolean;
  seq_length?: number;
  rope_ratio?: number;
}

/** Read access to base weights (lib/model/weights.ts provides it for a model dir). */
export interface WeightSource {
  shape(name: string): number[];
  dtype(name: string): DType;
  f32(name: string): Float32Array | Promise<Float32Array>;
  raw(name: string): Uint8Array | Promise<Uint8Array>;
}

/** Model dimensions derived from the config. */
export interface Dims {
  L: number;
  hidden: number;
  ffn: number;
  D: number;
  H: number;
  G: number;
  V: number;
  eps: number;
  ropeBase: number;
  qkvBias: boolean;
  /** Fused qkv width (H + 2G)·D. */
  W: number;
  /** Attention output width H·D. */
  A: number;
  seqLength: number;
}

export function dimsOf(c: GlmConfigFields): Dims {
  if (c.rmsnorm === false) {
    throw new UserError("config.json: rmsnorm: only RMSNorm (chatglm3) is supported");
  }
  if (c.add_bias_linear) {
    throw new UserError("config.json: add_bias_linear: true is not supported (chatglm3 has false)");
  }
  if (c.post_layer_norm === false) {
    throw new UserError("config.json: post_layer_norm: false is not supported");
  }
  const H = c.num_attention_heads;
  const G = c.multi_query_attention === false ? H : c.multi_query_group_num;
  if (H % G !== 0) {
    throw new UserError(
      `config.json: num_attention_heads ${H} is not a multiple of multi_query_group_num ${G}`,
    );
  }
  if (c.kv_channels % 4 !== 0) {
    throw new UserError(`config.json: kv_channels ${c.kv_channels} must be a multiple of 4`);
  }
  const D = c.kv_channels;
  return {
    L: c.num_layers,
    hidden: c.hidden_size,
    ffn: c.ffn_hidden_size,
    D,
    H,
    G,
    V: c.padded_vocab_size,
    eps: c.layernorm_epsilon,
    ropeBase: 10000 * (c.rope_ratio ?? 1),
    qkvBias: c.add_qkv_bias ?? true,
    W: (H + 2 * G) * D,
    A: H * D,
    seqLength: c.seq_length ?? 8192,
  };
}

/** (in, out) features of each linear kind. */
export function linearShape(d: Dims, kind: LoraTarget): [number, number] {
  switch (kind) {
    case "query_key_value":
      return [d.hidden, d.W];
    case "dense":
      return [d.A, d.hidden];
    case "dense_h_to_4h":
      return [d.hidden, 2 * d.ffn];
    case "dense_4h_to_h":
      return [d.ffn, d.hidden];
  }
}
