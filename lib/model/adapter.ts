/**
 * What is trained on top of the base model, and the names trainable tensors
 * are saved under (PEFT's keys for LoRA, ChatGLM's prefix_encoder keys for
 * P-Tuning v2, the HF chatglm3 names for full SFT).
 */

export type AdapterSpec =
  /**
   * PEFT LoRA on the named linear kinds: y = Wx + scale·B(A(dropout(x))), scale
   * alpha/r, or alpha/√r with useRslora (loraScale).
   */
  | {
    kind: "lora";
    r: number;
    alpha: number;
    dropout: number;
    targetModules: string[];
    useRslora?: boolean;
  }
  /**
   * P-Tuning v2 (ChatGLM's prefix_encoder): pre_seq_len virtual key/value
   * positions per layer; dropout (default 0.1, as ChatGLM3 applies to
   * past_key_values) in training only.
   */
  | {
    kind: "prefix";
    preSeqLen: number;
    prefixProjection: boolean;
    prefixHiddenSize?: number;
    dropout?: number;
  }
  /** Full SFT: every base weight trainable. */
  | { kind: "full" }
  /** Inference with the base model only. */
  | { kind: "none" };

/** PEFT's LoRA scaling: lora_alpha / r, or lora_alpha / √r with use_rslora. */
export function loraScale(spec: AdapterSpec): number {
  if (spec.kind !== "lora") return 0;
  return spec.alpha / (spec.useRslora ? Math.sqrt(spec.r) : spec.r);
}

/** PEFT target module names for chatglm, in the order layers apply them. */
export const LORA_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"] as const;
export type LoraTarget = typeof LORA_TARGETS[number];

/** Default prefix dropout: ChatGLM3's `torch.nn.Dropout(0.1)` on past_key_values. */
export const PREFIX_DROPOUT = 0.1;

/** Where each linear kind sits inside a layer (HF chatglm3 module paths). */
export const LINEAR_PATH: Record<LoraTarget, string> = {
  query_key_value: "self_attention.query_key_value",
  dense: "self_attention.dense",
  dense_h_to_4h: "mlp.dense_h_to_4h",
  dense_4h_to_h: "mlp.dense_4h_to_h",
};

export const layerPrefix = (i: number): string => `transformer.encoder.layers.${i}.`;

/** PEFT's saved key for a LoRA factor ([r, in] for A, [out, r] for B). */
export function loraName(layer: number, kind: LoraTarget, factor: "A" | "B"): string {
  return `base_model.model.${layerPrefix(layer)}${LINEAR_PATH[kind]}.lora_${factor}.weight`;
}

export const PREFIX_EMBEDDING = "transformer.prefix_encoder.embedding.weight";
/** The optional two-layer tanh projection of the prefix encoder: [0] weight, [1] bias, [2] weight, [3] bias. */
export const PREFIX_TRANS = [
  "transformer.prefix_encoder.trans.0.weight",
  "transformer.prefix_encoder.trans.0.bias",
  "transformer.prefix_encoder.trans.2.weight",
  "transformer.prefix_encoder.trans.2.bias",
] as const;

/** HF base weight names. */
export const EMBEDDING = "transformer.embedding.word_embeddings.weight";
export const FINAL_NORM = "transformer.encoder.final_layernorm.weight";
export const OUTPUT_LAYER = "transformer.output_layer.weight";

/**
 * Initial adapter tensors for `shapes` (name → shape, in the model's parameter
 * order) with the reference libraries' distributions: LoRA A kaiming-uniform
 * (a=√5) = U(±1/√in), B = 0 (PEFT); prefix embedding N(0, 1) and projection
 * Linear layers U(±1/√in) (torch defaults). The stream differs from torch's, so
 * tests that compare with PyTorch pass the tensors explicitly.
 */
export function initAdapter(
  shapes: Map<string, number[]>,
  seed: number,
): Map<string, Float32Array> {
  const u = mulberry32(seed);
  const out = new Map<string, Float32Array>();
  for (const [name, shape] of shapes) {
    const t = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith("lora_A.weight") || name.startsWith("transformer.prefix_encoder.trans")) {
      const fanIn = name.endsWith(".bias")
        ? shapes.get(name.replace(".bias", ".weight"))![1]
        : shape[1];
      const bound = 1 / Math.sqrt(fanIn);
      for (let i = 0; i < t.length; i++) t[i] = (2 * u() - 1) * bound;
    } else if (name === PREFIX_EMBEDDING) {
      for (let i = 0; i < t.length; i++) {
        t[i] = Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
      }
    }
    out.set(name, t);
  }
  return out;
}

/** Seeded uniform [0, 1) stream (mulberry32). */
function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}
