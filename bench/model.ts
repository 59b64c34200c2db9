/**
 * The bench model the forward, training, generation and matmul benchmarks
 * share: hidden 512, 8 layers, 8 heads, kv_channels 64, 2 groups, ffn 1368,
 * vocab 8192 (a ChatGLM3 layout at about 1/8 width), with seeded random
 * weights built in memory, and its batch of 4 × 256 tokens.
 */
import type { GlmConfigFields } from "../lib/model/glm.ts";
import type { TrainBatch } from "../lib/model/types.ts";
import type { F32Tensor } from "../lib/safetensors/read.ts";

export const BENCH_CONFIG: GlmConfigFields = {
  num_layers: 8,
  hidden_size: 512,
  num_attention_heads: 8,
  kv_channels: 64,
  multi_query_attention: true,
  multi_query_group_num: 2,
  ffn_hidden_size: 1368,
  padded_vocab_size: 8192,
  seq_length: 512,
  layernorm_epsilon: 1e-5,
  rmsnorm: true,
  add_qkv_bias: true,
  add_bias_linear: false,
  post_layer_norm: true,
  rope_ratio: 1,
};
export const BENCH_BATCH = 4;
export const BENCH_SEQ = 256;

/** Seeded N(0, 0.02) weights (norm weights 1) for a config, by HF name. */
export function benchWeights(
  c: GlmConfigFields = BENCH_CONFIG,
  seed = 12345,
): Map<string, F32Tensor> {
  const h = c.hidden_size;
  const qkv = (c.num_attention_heads + 2 * c.multi_query_group_num) * c.kv_channels;
  let s = seed >>> 0;
  const normal = (n: number) => {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i += 2) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      const u1 = (s + 1) / 2 ** 32;
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      const r = Math.sqrt(-2 * Math.log(u1)) * 0.02;
      out[i] = r * Math.cos(2 * Math.PI * (s / 2 ** 32));
      if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * (s / 2 ** 32));
    }
    return out;
  };
  const t = new Map<string, F32Tensor>();
  const add = (name: string, shape: number[], ones = false) => {
    const n = shape.reduce((a, b) => a * b, 1);
    t.set(name, { shape, data: ones ? new Float32Array(n).fill(1) : normal(n) });
  };
  add("transformer.embedding.word_embeddings.weight", [c.padded_vocab_size, h]);
  for (let i = 0; i < c.num_layers; i++) {
    const p = `transformer.encoder.layers.${i}.`;
    add(p + "input_layernorm.weight", [h], true);
    add(p + "self_attention.query_key_value.weight", [qkv, h]);
    if (c.add_qkv_bias) add(p + "self_attention.query_key_value.bias", [qkv]);
    add(p + "self_attention.dense.weight", [h, c.num_attention_heads * c.kv_channels]);
    add(p + "post_attention_layernorm.weight", [h], true);
    add(p + "mlp.dense_h_to_4h.weight", [2 * c.ffn_hidden_size, h]);
    add(p + "mlp.dense_4h_to_h.weight", [h, c.ffn_hidden_size]);
  }
  add("transformer.encoder.final_layernorm.weight", [h], true);
  add("transformer.output_layer.weight", [c.padded_vocab_size, h]);
  return t;
}

/** The bench batch: seeded token ids, every position a target. */
export function benchBatch(): TrainBatch {
  let s = 1;
  const ids = new Int32Array(BENCH_BATCH * BENCH_SEQ).map(() => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return s % BENCH_CONFIG.padded_vocab_size;
  });
  return { batch: BENCH_BATCH, seq: BENCH_SEQ, inputIds: ids, labels: Int32Array.from(ids) };
}
