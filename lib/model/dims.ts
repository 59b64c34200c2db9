/**
 * The model's dimensions, derived from the config.json fields the WebGPU
 * model reads, and where a linear of each kind maps from and to.
 */
import { UserError } from "../errors.ts";
import { glmGroups } from "./config.ts";
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

/** The widths a config implies: what the model and the memory plans size things by. */
export interface Widths {
  L: number;
  hidden: number;
  ffn: number;
  D: number;
  H: number;
  /** Key/value groups: multi_query_group_num, or H without multi-query attention (glmGroups). */
  G: number;
  V: number;
  /** Fused qkv width (H + 2G)·D. */
  W: number;
  /** Attention output width H·D. */
  A: number;
}

/** The config fields the widths come from. */
export type WidthFields = Pick<
  GlmConfigFields,
  | "num_layers"
  | "hidden_size"
  | "ffn_hidden_size"
  | "kv_channels"
  | "num_attention_heads"
  | "multi_query_attention"
  | "multi_query_group_num"
  | "padded_vocab_size"
>;

export function widthsOf(c: WidthFields): Widths {
  const H = c.num_attention_heads, D = c.kv_channels;
  const G = glmGroups(c);
  return {
    L: c.num_layers,
    hidden: c.hidden_size,
    ffn: c.ffn_hidden_size,
    D,
    H,
    G,
    V: c.padded_vocab_size,
    W: (H + 2 * G) * D,
    A: H * D,
  };
}

/** Model dimensions derived from the config. */
export interface Dims extends Widths {
  eps: number;
  ropeBase: number;
  qkvBias: boolean;
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
  const w = widthsOf(c);
  if (w.H % w.G !== 0) {
    throw new UserError(
      `config.json: num_attention_heads ${w.H} is not a multiple of multi_query_group_num ${w.G}`,
    );
  }
  if (w.D % 4 !== 0) {
    throw new UserError(`config.json: kv_channels ${w.D} must be a multiple of 4`);
  }
  return {
    ...w,
    eps: c.layernorm_epsilon,
    ropeBase: 10000 * (c.rope_ratio ?? 1),
    qkvBias: c.add_qkv_bias ?? true,
    seqLength: c.seq_length ?? 8192,
  };
}

/** (in, out) features of each linear kind. */
export function linearShape(d: Widths, kind: LoraTarget): [number, number] {
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
