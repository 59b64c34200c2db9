/**
 * evaluate: score or generate over masked records, writing predictions.jsonl
 * and metrics.json (see lib/eval/evaluate.ts).
 *
 *   deno task stage evaluate --model MODEL_DIR [--adapter DIR] --in records.jsonl --out EVAL_DIR
 *        [--limit N] [--batch-size N] [--config CFG] [--set key=value ...] [--segmenter jieba|space|char]
 *        [--set quantization_bit=4]  (QLoRA: the base's linear weights 4-bit, as in training)
 *        [--f32]   (frozen weights in f32 rather than f16: exact f32 math, twice the memory)
 *        [--force] (write into a non-empty --out that is not an earlier evaluate output)
 *   deno task stage evaluate --metrics-only --in preds.jsonl --out DIR [--segmenter ...]
 */
import {
  configFromOverrides,
  describeQuantization,
  isQuantizationKey,
  loadConfig,
  type QuantizationConfig,
} from "../lib/config/mod.ts";
import { parseOverride } from "../lib/config/overrides.ts";
import {
  type CommandSpec,
  type FlagValues,
  missingFlag,
  parseCommand,
  positiveIntFlag,
} from "../lib/args.ts";
import { UserError } from "../lib/errors.ts";
import { evaluate, type GenerationSettings } from "../lib/eval/evaluate.ts";
import { type SegmenterName, SEGMENTERS } from "../lib/metrics/index.ts";

export const COMMAND: CommandSpec = {
  name: "deno task stage evaluate",
  summary:
    "generate and score ROUGE-1/2/L and BLEU-4 (eval records), or teacher-forced loss (train records)",
  usage: [
    "deno task stage evaluate --model MODEL_DIR [--adapter DIR] --in records.jsonl --out EVAL_DIR",
    "  [--limit N] [--batch-size N] [--config CFG] [--set generation_config.max_new_tokens=64 ...]",
    "  [--segmenter jieba|space|char] [--f32] [--force]",
    "deno task stage evaluate --metrics-only --in preds.jsonl --out DIR [--segmenter ...] [--force]",
  ],
  flags: {
    model: {
      type: "string",
      arg: "DIR",
      help:
        "the base model dir (config.json, tokenizer.model, safetensors weights); required unless --metrics-only",
    },
    adapter: {
      type: "string",
      arg: "DIR",
      help: "a LoRA (PEFT) or P-Tuning v2 adapter dir to apply to --model",
    },
    in: {
      type: "string",
      arg: "FILE",
      required: true,
      help:
        "masked records: eval records (output_ids) are generated and scored, train records (labels) get their loss",
    },
    out: {
      type: "string",
      arg: "DIR",
      required: true,
      help: "the output dir: predictions.jsonl (written as they come) and metrics.json",
    },
    limit: {
      type: "string",
      arg: "N",
      defaultText: "all",
      help: "evaluate the first N records only",
    },
    "batch-size": {
      type: "string",
      arg: "N",
      defaultText: "8",
      help: "records generated or scored together",
    },
    config: {
      type: "string",
      arg: "CFG",
      help:
        "a training config whose generation_config and seed are used (upstream evaluates with them)",
    },
    set: {
      type: "string",
      arg: "KEY=VALUE",
      multiple: true,
      help:
        "a generation setting (max_new_tokens, do_sample, temperature, top_p, top_k, seed), a 4-bit base " +
        "(quantization_bit=4, quantization_type, double_quantization, quantization_config.*), or with --config any config key",
    },
    segmenter: {
      type: "string",
      arg: "jieba|space|char",
      defaultText: "jieba",
      help: "how text is split into words for ROUGE and BLEU (jieba as upstream)",
    },
    "metrics-only": {
      type: "boolean",
      help: "score an existing predictions.jsonl (--in) without a model",
    },
    f32: {
      type: "boolean",
      help: "keep frozen weights in f32 rather than f16: exact f32 math, twice the memory",
    },
    force: {
      type: "boolean",
      help:
        "write into a non-empty --out that is not an earlier evaluate output (only predictions.jsonl and metrics.json are replaced)",
    },
  },
};

/** Generation settings the config's generation_config and --set may change (HF GenerationConfig names). */
const GENERATION_KEYS = [
  "max_new_tokens",
  "do_sample",
  "temperature",
  "top_p",
  "top_k",
  "seed",
] as const;

/**
 * An evaluate --set as the override of a training config: the generation keys, with or without
 * `generation_config.`, go under training_args (seed is training_args.seed there); null, a
 * pipeline's unset value, is no override (undefined), as without a config.
 */
function configOverride(text: string): string | undefined {
  const o = parseOverride(text);
  const key = generationKey(o.path);
  if (key === undefined) return text;
  if (o.value === null) return undefined;
  const value = text.slice(text.indexOf("=") + 1);
  return key === "seed"
    ? `training_args.seed=${value}`
    : `training_args.generation_config.${key}=${value}`;
}

/** The generation setting a --set path names, with or without `generation_config.`, if any. */
function generationKey(path: string[]): string | undefined {
  const key = path[0] === "generation_config" ? path.slice(1) : path;
  return key.length === 1 && (GENERATION_KEYS as readonly string[]).includes(key[0])
    ? key[0]
    : undefined;
}

/**
 * `read()`, whose config errors name the --set as it was given rather than as `configOverride`
 * rewrote it.
 */
async function withGivenSets<T>(
  given: readonly (readonly [string, string])[],
  read: () => T | Promise<T>,
): Promise<T> {
  try {
    return await read();
  } catch (e) {
    if (!(e instanceof UserError)) throw e;
    let message = e.message;
    for (const [o, text] of given) message = message.replaceAll(`--set ${o})`, `--set ${text})`);
    throw new UserError(message);
  }
}

/** A positive integer flag; "null" or "" (a pipeline's unset param) means not given. */
function positiveInt(v: FlagValues[string], flag: string): number | undefined {
  return v === "null" || v === "" ? undefined : positiveIntFlag(v, flag);
}

export async function main(args: string[]): Promise<number> {
  const { values, help } = parseCommand(args, COMMAND);
  if (help) return 0;
  if (!values.in) throw missingFlag("in", COMMAND);
  if (!values.out) throw missingFlag("out", COMMAND);
  const metricsOnly = !!values["metrics-only"];
  if (!metricsOnly && !values.model) throw missingFlag("model", COMMAND, " (or --metrics-only)");
  const segmenter = (values.segmenter ?? "jieba") as SegmenterName;
  if (!SEGMENTERS.includes(segmenter)) {
    throw new UserError(
      `--segmenter: expected one of ${SEGMENTERS.join(", ")}, got "${segmenter}"`,
    );
  }

  // Upstream evaluates with the training config's generation_config; greedy by default.
  const gen: GenerationSettings = {
    maxNewTokens: 128,
    doSample: false,
    temperature: 1,
    topP: 1,
    topK: 50,
    seed: 42,
  };
  const sets = (values.set as string[] | undefined) ?? [];
  // QLoRA: the base held 4-bit, from the config or from --set quantization_bit=4.
  let quantization: QuantizationConfig | null = null;
  if (values.config) {
    // The generation settings by the names they have without a config (max_new_tokens=…,
    // generation_config.top_p=…) are the config's training_args.generation_config (and seed).
    const given = sets.flatMap((text) => {
      const o = configOverride(text);
      return o === undefined ? [] : [[o, text] as const];
    });
    const cfg = await withGivenSets(
      given,
      () => loadConfig(values.config as string, given.map(([o]) => o)),
    );
    quantization = cfg.quantization;
    // What generation does not apply is said, as train says what training does not.
    const ignored = cfg.notApplicable.filter((n) => n.key.includes(".generation_config."));
    if (ignored.length > 0) {
      console.error(
        `${cfg.path}: not applied by generation here, ignored: ${
          ignored.map((n) => n.key).join(", ")
        }`,
      );
    }
    const g = cfg.training_args.generation_config;
    if (g) {
      gen.maxNewTokens = g.max_new_tokens ?? Math.max(1, g.max_length);
      gen.doSample = g.do_sample;
      gen.temperature = g.temperature;
      gen.topP = g.top_p;
      gen.topK = g.top_k;
    }
    gen.seed = cfg.training_args.seed;
  } else {
    // The generation keys and the quantization keys, checked by the config schema's rules, as
    // with --config; each given key replaces evaluate's default.
    const given: (readonly [string, string])[] = [];
    const keys: string[] = [];
    let quantized = false;
    for (const text of sets) {
      const path = parseOverride(text).path;
      const key = generationKey(path);
      if (isQuantizationKey(path[0])) {
        given.push([text, text]);
        quantized = true;
      } else if (key !== undefined) {
        const c = configOverride(text);
        if (c !== undefined) {
          given.push([c, text]);
          keys.push(key);
        }
      } else {
        throw new UserError(
          `--set ${text}: evaluate knows ${
            GENERATION_KEYS.join(", ")
          } (optionally under generation_config.) and the quantization keys; ` +
            `pass --config CFG to override other config keys`,
        );
      }
    }
    const cfg = await withGivenSets(
      given,
      () => configFromOverrides(given.map(([o]) => o), "evaluate --set"),
    );
    if (quantized) quantization = cfg.quantization;
    const g = cfg.training_args.generation_config;
    for (const k of keys) {
      if (k === "max_new_tokens") gen.maxNewTokens = g.max_new_tokens ?? gen.maxNewTokens;
      else if (k === "do_sample") gen.doSample = g.do_sample;
      else if (k === "temperature") gen.temperature = g.temperature;
      else if (k === "top_p") gen.topP = g.top_p;
      else if (k === "top_k") gen.topK = g.top_k;
      else gen.seed = cfg.training_args.seed;
    }
  }
  if (quantization) console.error(`evaluate: on a ${describeQuantization(quantization)} base`);

  const result = await evaluate({
    modelDir: values.model as string | undefined,
    adapterDir: values.adapter as string | undefined,
    input: values.in as string,
    outDir: values.out as string,
    limit: positiveInt(values.limit, "--limit"),
    batchSize: positiveInt(values["batch-size"], "--batch-size") ?? 8,
    generation: gen,
    segmenter,
    metricsOnly,
    ...(values.f32 ? { frozenF16: false } : {}),
    ...(quantization ? { quantization } : {}),
    force: !!values.force,
  });
  const shown = Object.entries(result)
    .filter(([k, v]) => v !== null && /rouge|bleu|eval_loss|examples$/.test(k))
    .map(([k, v]) => `${k} ${typeof v === "number" ? Number(v.toFixed(4)) : v}`);
  console.error(`evaluate: ${shown.join("  ")}  → ${values.out}`);
  return 0;
}
