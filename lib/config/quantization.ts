/**
 * A 4-bit frozen base (QLoRA), as PyTorch users ask for it:
 *
 * - transformers' `BitsAndBytesConfig` keys under a `quantization_config`
 *   section (`load_in_4bit`, `bnb_4bit_quant_type`, `bnb_4bit_use_double_quant`,
 *   `bnb_4bit_compute_dtype`, ...), with that class's defaults (FP4, no double
 *   quantization, f32 compute);
 * - LLaMA-Factory's short form, top-level `quantization_bit: 4`, with its
 *   defaults (`quantization_type: nf4`, `double_quantization: true`,
 *   `quantization_method: bitsandbytes`).
 *
 * Both come out as one `QuantizationConfig`; lib/model/quant quantizes with it.
 */
import { UserError } from "../errors.ts";
import type { Field, Section } from "./schema.ts";

export const QUANT_TYPES = ["nf4", "fp4"] as const;
export const COMPUTE_DTYPES = ["float32", "float16", "bfloat16"] as const;

const NA_COMPUTE = "the WebGPU kernels dequantize and multiply in f32";

/** transformers.BitsAndBytesConfig (what its to_dict writes, too). */
export const QUANTIZATION_CONFIG: Section = {
  quant_method: field("string", "bitsandbytes", { only: ["bitsandbytes"] }),
  load_in_4bit: field("bool", false),
  load_in_8bit: field("bool", false),
  bnb_4bit_quant_type: field("string", "fp4", { enum: QUANT_TYPES }),
  bnb_4bit_use_double_quant: field("bool", false),
  bnb_4bit_compute_dtype: field("string", null, {
    nullable: true,
    enum: COMPUTE_DTYPES,
    na: NA_COMPUTE,
  }),
  bnb_4bit_quant_storage: field("string", null, {
    nullable: true,
    na: "the WebGPU engine packs the codes in u32 words (docs/qlora.md)",
  }),
  llm_int8_threshold: field("float", 6.0, { na: "an LLM.int8() setting; the base is 4-bit" }),
  llm_int8_has_fp16_weight: field("bool", false, {
    na: "an LLM.int8() setting; the base is 4-bit",
  }),
  // transformers keeps the output layer (the last module) unquantized by default; other
  // module lists would change what is quantized, which the engine does not offer.
  llm_int8_skip_modules: field("strings", null, { nullable: true, only: [null] }),
  llm_int8_enable_fp32_cpu_offload: field("bool", false, { only: [false] }),
};

/** LLaMA-Factory's top-level keys (ModelArguments), with its defaults. */
export const LLAMA_FACTORY_QUANTIZATION: Section = {
  quantization_bit: field("int", null, { nullable: true }),
  quantization_method: field("string", "bitsandbytes", { enum: ["bitsandbytes", "bnb"] }),
  quantization_type: field("string", "nf4", { enum: QUANT_TYPES }),
  double_quantization: field("bool", true),
};

function field(type: Field["type"], def: unknown, extra: Partial<Field> = {}): Field {
  return { type, default: def, ...extra };
}

/** What the config asks for: a 4-bit frozen base. */
export interface QuantizationConfig {
  bits: 4;
  /** NF4 (QLoRA's NormalFloat) or FP4. */
  quantType: "nf4" | "fp4";
  /** Quantize the block absmax values too (8-bit, blocks of 256). */
  doubleQuant: boolean;
  /** Values per block (bitsandbytes' Linear4bit: 64). */
  blocksize: number;
  /** Where the setting came from, for messages. */
  key: "quantization_config" | "quantization_bit";
}

/** bitsandbytes' 4-bit quantization in blocks of 64, with the (checked) type and double quantization. */
function fourBit(
  quantType: unknown,
  doubleQuant: unknown,
  key: QuantizationConfig["key"],
): QuantizationConfig {
  return {
    bits: 4,
    quantType: quantType as "nf4" | "fp4",
    doubleQuant: doubleQuant as boolean,
    blocksize: 64,
    key,
  };
}

/** Reports a problem at a dotted key (the config validator's error). */
export type ErrorAt = (key: string, msg: string) => void;

/**
 * The quantization a validated config asks for, or null. `section` is the
 * checked `quantization_config` mapping (or undefined when absent), `top` the
 * checked top-level LLaMA-Factory keys, `present` the top-level keys the file
 * (with overrides) holds.
 */
export function quantizationFrom(
  section: Record<string, unknown> | undefined,
  top: Record<string, unknown>,
  present: ReadonlySet<string>,
  peft: "LORA" | "PREFIX_TUNING" | null,
  error: ErrorAt,
): QuantizationConfig | null {
  let q: QuantizationConfig | null = null;
  if (section) {
    if (section.load_in_8bit === true) {
      error(
        "quantization_config.load_in_8bit",
        "8-bit (LLM.int8) weights are not supported; use load_in_4bit: true (QLoRA)",
      );
    } else if (section.load_in_4bit === true) {
      q = fourBit(
        section.bnb_4bit_quant_type,
        section.bnb_4bit_use_double_quant,
        "quantization_config",
      );
    }
  }
  const bit = top.quantization_bit as number | null;
  if (bit !== null && bit !== undefined) {
    if (bit !== 4) {
      error(
        "quantization_bit",
        bit === 8
          ? "8-bit (LLM.int8) weights are not supported; use 4 (QLoRA)"
          : `must be 4 (bitsandbytes' 4-bit QLoRA), got ${bit}`,
      );
    } else if (section) {
      error(
        "quantization_bit",
        "give either quantization_bit (LLaMA-Factory) or quantization_config (transformers), not both",
      );
    } else {
      q = fourBit(top.quantization_type, top.double_quantization, "quantization_bit");
    }
  } else {
    for (const k of ["quantization_type", "double_quantization", "quantization_method"]) {
      if (present.has(k)) error(k, "applies with quantization_bit: 4 (LLaMA-Factory's QLoRA keys)");
    }
  }
  if (q && peft === null) {
    error(
      q.key,
      "a 4-bit base is frozen: quantization needs an adapter to train (peft_config LORA or PREFIX_TUNING), not full fine-tuning",
    );
    return null;
  }
  return q;
}

/** A short description for titles and logs: "4-bit NF4, double quantization". */
export function describeQuantization(q: QuantizationConfig): string {
  return `4-bit ${q.quantType.toUpperCase()}${q.doubleQuant ? ", double quantization" : ""}`;
}

/**
 * Refuse a run that asks for a 4-bit base where it cannot have one (the torch
 * engine: docs/qlora.md), never running it on the unquantized base instead.
 */
export function refuseQuantization(
  cfg: { path: string; quantization: QuantizationConfig | null },
  what: string,
  why: string,
): void {
  const q = cfg.quantization;
  if (!q) return;
  throw new UserError(`${cfg.path}: ${q.key}: ${what} does not run a 4-bit base: ${why}`);
}
