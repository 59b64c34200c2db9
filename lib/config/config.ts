/**
 * Load a ChatGLM3 finetune_demo config (`configs/*.yaml`) into a typed
 * `FinetuneConfig`: HF/PEFT defaults filled in, `--set` overrides applied
 * before validation, every problem reported as `FILE:LINE: key: message`.
 */
import { located, UserError } from "../errors.ts";
import { lineOfKey, parseYaml } from "../yaml.ts";
import { type Override, parseOverrides, setPath } from "./overrides.ts";
import {
  LLAMA_FACTORY_QUANTIZATION,
  QUANTIZATION_CONFIG,
  type QuantizationConfig,
  quantizationFrom,
} from "./quantization.ts";
import {
  CHATGLM_LINEAR_MODULES,
  CHATGLM_LORA_TARGETS,
  DATA_CONFIG,
  type Field,
  GENERATION_CONFIG,
  LORA_CONFIG,
  PREFIX_TUNING_CONFIG,
  type Section,
  sectionDefaults,
  TOP_LEVEL,
  TOP_SECTIONS,
  TORCH_HONOURS,
  TRAINING_ARGS,
} from "./schema.ts";

export type IntervalStrategy = "no" | "steps" | "epoch";

export interface DataConfig {
  /** relative to the data directory, as in finetune_hf.py */
  train_file: string;
  val_file: string | null;
  test_file: string | null;
  num_proc: number | null;
}

export interface GenerationConfig {
  max_length: number;
  max_new_tokens: number | null;
  min_length: number;
  min_new_tokens: number | null;
  do_sample: boolean;
  temperature: number;
  top_k: number;
  top_p: number;
  repetition_penalty: number;
  eos_token_id: number | number[] | null;
  pad_token_id: number | null;
  bos_token_id: number | null;
  num_beams: number;
  num_return_sequences: number;
  use_cache: boolean;
  output_scores: boolean;
  return_dict_in_generate: boolean;
}

/** The Seq2SeqTrainingArguments this toolkit reads (not-applicable keys are kept too). */
export interface TrainingArgs {
  output_dir: string;
  overwrite_output_dir: boolean;
  do_eval: boolean;
  eval_strategy: IntervalStrategy;
  prediction_loss_only: boolean;
  per_device_train_batch_size: number;
  per_device_eval_batch_size: number;
  gradient_accumulation_steps: number;
  eval_delay: number;
  learning_rate: number;
  weight_decay: number;
  adam_beta1: number;
  adam_beta2: number;
  adam_epsilon: number;
  /** null or <= 0: no clipping */
  max_grad_norm: number | null;
  num_train_epochs: number;
  /** -1: derived from num_train_epochs (see trainingSteps) */
  max_steps: number;
  lr_scheduler_type: string;
  lr_scheduler_kwargs: Record<string, unknown>;
  warmup_ratio: number;
  warmup_steps: number;
  logging_strategy: IntervalStrategy;
  logging_first_step: boolean;
  /** < 1: a fraction of the total steps (see intervalSteps) */
  logging_steps: number;
  save_strategy: IntervalStrategy | "best";
  save_steps: number;
  save_total_limit: number | null;
  save_safetensors: boolean;
  save_only_model: boolean;
  seed: number;
  data_seed: number | null;
  /** filled from logging_steps when evaluating by steps without it (as HF) */
  eval_steps: number | null;
  dataloader_drop_last: boolean;
  gradient_checkpointing: boolean;
  /** ours: a non-finite loss or grad norm stops the run, or skips that step's update */
  nan_policy: "stop" | "skip";
  optim: string;
  predict_with_generate: boolean;
  generation_max_length: number | null;
  generation_num_beams: number | null;
  generation_config: GenerationConfig;
  [key: string]: unknown;
}

interface PeftCommon {
  task_type: string | null;
  inference_mode: boolean;
  base_model_name_or_path: string | null;
  revision: string | null;
}

export interface LoraConfig extends PeftCommon {
  peft_type: "LORA";
  r: number;
  lora_alpha: number;
  lora_dropout: number;
  /** PEFT's chatglm default, ["query_key_value"], when the file leaves it out */
  target_modules: string | string[];
  bias: "none";
  fan_in_fan_out: boolean;
  use_rslora: boolean;
  init_lora_weights: boolean;
  [key: string]: unknown;
}

export interface PrefixTuningConfig extends PeftCommon {
  peft_type: "PREFIX_TUNING";
  num_virtual_tokens: number;
  token_dim: number | null;
  num_transformer_submodules: number | null;
  num_attention_heads: number | null;
  num_layers: number | null;
  encoder_hidden_size: number | null;
  prefix_projection: boolean;
  /** dropout on the prefix keys/values in training (ours; ChatGLM3 hard-codes 0.1) */
  prefix_dropout: number;
}

export type PeftConfig = LoraConfig | PrefixTuningConfig;

export interface NotApplicable {
  /** dotted path, e.g. training_args.dataloader_num_workers */
  key: string;
  line?: number;
  reason: string;
}

export interface FinetuneConfig {
  /** the file it was read from */
  path: string;
  data_config: DataConfig;
  max_input_length: number;
  max_output_length: number;
  training_args: TrainingArgs;
  /** null: full-parameter fine-tuning */
  peft_config: PeftConfig | null;
  /**
   * A 4-bit frozen base (QLoRA), from `quantization_config` (transformers'
   * BitsAndBytesConfig keys) or `quantization_bit: 4` (LLaMA-Factory); null: none.
   */
  quantization: QuantizationConfig | null;
  /**
   * The same 4-bit base as `--set` overrides in LLaMA-Factory's keys
   * (`quantization_bit=4`, `quantization_type=…`, `double_quantization=…`),
   * empty without one: what evaluate and chat take to hold the base as
   * training did. Pipelines pass `${config.quantization_overrides}`.
   */
  quantization_overrides: string[];
  /** keys present in the file that only matter to PyTorch; see formatNotApplicable */
  notApplicable: NotApplicable[];
}

/** The training mode the config selects. */
export function finetuneMode(cfg: FinetuneConfig): "lora" | "ptuning" | "sft" {
  if (!cfg.peft_config) return "sft";
  return cfg.peft_config.peft_type === "LORA" ? "lora" : "ptuning";
}

/** The full HF default Seq2SeqTrainingArguments (with GenerationConfig defaults). */
export function hfTrainingDefaults(): TrainingArgs {
  const args = sectionDefaults(TRAINING_ARGS) as TrainingArgs;
  args.generation_config = sectionDefaults(GENERATION_CONFIG) as unknown as GenerationConfig;
  return args;
}

export function loraDefaults(): Omit<LoraConfig, "peft_type"> {
  const d = sectionDefaults(LORA_CONFIG);
  d.target_modules = [...CHATGLM_LORA_TARGETS];
  return d as Omit<LoraConfig, "peft_type">;
}

export function prefixTuningDefaults(): Omit<
  PrefixTuningConfig,
  "peft_type" | "num_virtual_tokens"
> {
  return sectionDefaults(PREFIX_TUNING_CONFIG) as Omit<
    PrefixTuningConfig,
    "peft_type" | "num_virtual_tokens"
  >;
}

/** HF's `logging_steps`/`save_steps`/`eval_steps` rule: a value below 1 is a fraction of the run. */
export function intervalSteps(value: number, maxSteps: number): number {
  return value < 1 ? Math.ceil(maxSteps * value) : Math.floor(value);
}

/** Step arithmetic of a run over `numExamples` records, in plain numbers (see stepCounts). */
export interface StepCounts {
  /** Micro-batches per epoch: ⌈n / batch⌉, or ⌊n / batch⌋ with drop-last. */
  microPerEpoch: number;
  /** Optimizer steps per epoch: ⌈micro-batches / accumulation⌉, at least 1. */
  updatesPerEpoch: number;
  maxSteps: number;
  numEpochs: number;
}

/**
 * HF Trainer's (transformers 5.x) step arithmetic, the one rule the trainer
 * and the config tools share: an epoch has ⌈n / batch⌉ micro-batches
 * (⌊n / batch⌋ with dataloader_drop_last); an optimizer step takes
 * gradient_accumulation_steps of them, the last step of an epoch the
 * remainder, so an epoch has ⌈micro-batches / accumulation⌉ steps (at least
 * one); max_steps > 0 wins, else ⌈epochs × steps per epoch⌉.
 */
export function stepCounts(o: {
  numExamples: number;
  batchSize: number;
  accumulation: number;
  dropLast: boolean;
  maxSteps: number;
  numTrainEpochs: number;
}): StepCounts {
  const microPerEpoch = o.dropLast
    ? Math.floor(o.numExamples / o.batchSize)
    : Math.ceil(o.numExamples / o.batchSize);
  const updatesPerEpoch = Math.max(1, Math.ceil(microPerEpoch / o.accumulation));
  return o.maxSteps > 0
    ? {
      microPerEpoch,
      updatesPerEpoch,
      maxSteps: o.maxSteps,
      numEpochs: Math.ceil(o.maxSteps / updatesPerEpoch),
    }
    : {
      microPerEpoch,
      updatesPerEpoch,
      maxSteps: Math.ceil(o.numTrainEpochs * updatesPerEpoch),
      numEpochs: Math.ceil(o.numTrainEpochs),
    };
}

/** Optimizer steps of a run over `numExamples` training records, by stepCounts. */
export function trainingSteps(
  args: TrainingArgs,
  numExamples: number,
): { maxSteps: number; updatesPerEpoch: number; numEpochs: number } {
  const { maxSteps, updatesPerEpoch, numEpochs } = stepCounts({
    numExamples,
    batchSize: args.per_device_train_batch_size,
    accumulation: args.gradient_accumulation_steps,
    dropLast: args.dataloader_drop_last,
    maxSteps: args.max_steps,
    numTrainEpochs: args.num_train_epochs,
  });
  return { maxSteps, updatesPerEpoch, numEpochs };
}

/**
 * HF `get_warmup_steps`: warmup_steps when ≥ 1 (its integer part); a
 * warmup_steps in (0, 1) is a share of the run, as transformers 5 reads it,
 * ⌈total × warmup_steps⌉; 0 leaves it to ⌈total × warmup_ratio⌉ (4.x's key).
 */
export function warmupSteps(
  args: Pick<TrainingArgs, "warmup_steps" | "warmup_ratio">,
  totalSteps: number,
): number {
  const w = args.warmup_steps;
  if (w >= 1) return Math.trunc(w);
  return Math.ceil(totalSteps * (w > 0 ? w : args.warmup_ratio));
}

/** The training engine a run uses: the keys that apply depend on it. */
export type Engine = "webgpu" | "torch";

/** The keys a config holds that `engine` ignores (the torch engine honours TORCH_HONOURS). */
export function notApplicableFor(cfg: FinetuneConfig, engine: Engine = "webgpu"): NotApplicable[] {
  if (engine === "webgpu") return cfg.notApplicable;
  return cfg.notApplicable.filter((n) =>
    !(n.key.startsWith("training_args.") && TORCH_HONOURS.has(n.key.slice("training_args.".length)))
  );
}

/** One line listing the keys that were accepted but do not apply, or "" when none. */
export function formatNotApplicable(cfg: FinetuneConfig, engine: Engine = "webgpu"): string {
  const na = notApplicableFor(cfg, engine);
  if (na.length === 0) return "";
  const keys = na.map((n) => n.key).join(", ");
  return `${cfg.path}: not applicable here, ignored: ${keys}`;
}

const reported = new Set<string>();

/**
 * Print `formatNotApplicable(cfg)` unless this process already printed it: the
 * pipeline runs stages in one process, and each stage that loads the config
 * calls this, so the user sees the line once per run.
 */
export function reportNotApplicable(
  cfg: FinetuneConfig,
  print: (line: string) => void = (l) => console.error(l),
  engine: Engine = "webgpu",
): void {
  const line = formatNotApplicable(cfg, engine);
  if (!line || reported.has(line)) return;
  reported.add(line);
  print(line);
}

/** Read and validate a config file, applying `key.path=value` overrides first. */
export async function loadConfig(path: string, overrides: string[] = []): Promise<FinetuneConfig> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`${path}: no such config file`);
    if (e instanceof Deno.errors.IsADirectory) {
      throw new UserError(`${path}: is a directory, expected a config file`);
    }
    throw e;
  }
  return parseConfig(text, path, overrides);
}

/** `loadConfig` on text already read (`path` names it in messages). */
export function parseConfig(text: string, path: string, overrides: string[] = []): FinetuneConfig {
  const { value, lines } = parseYaml(text, path);
  const tree = (value ?? {}) as Record<string, unknown>;
  if (typeof tree !== "object" || Array.isArray(tree)) {
    throw new UserError(located(path, 1, undefined, "expected a mapping of config sections"));
  }
  const sets = parseOverrides(overrides);
  for (const o of sets) setPath(tree, o);
  // eval_strategy and its old name evaluation_strategy are one setting: a --set of either replaces
  // the file's value under the other name, rather than conflicting with it.
  const setKeys = new Set(sets.map((o) => o.path.join(".")));
  const args = tree.training_args as Record<string, unknown> | undefined;
  for (
    const [mine, other] of [["eval_strategy", "evaluation_strategy"], [
      "evaluation_strategy",
      "eval_strategy",
    ]]
  ) {
    if (
      setKeys.has(`training_args.${mine}`) && !setKeys.has(`training_args.${other}`) && args &&
      typeof args === "object"
    ) {
      delete args[other];
    }
  }
  const v = new Validator(path, lines, sets);
  const cfg = v.config(tree);
  v.finish();
  return cfg;
}

/** The top-level keys that say how the base is quantized (both spellings). */
export const QUANTIZATION_KEYS = [
  "quantization_config",
  "quantization_bit",
  "quantization_type",
  "double_quantization",
  "quantization_method",
] as const;

/** Whether a `--set` (its dotted path's first part) is about the base's quantization. */
export function isQuantizationKey(head: string): boolean {
  return (QUANTIZATION_KEYS as readonly string[]).includes(head);
}

/**
 * The quantization a list of `--set` overrides asks for, without a config
 * file (evaluate and chat: `--set quantization_bit=4`), checked by the same
 * rules and with the same messages as in a config; `where` names the command.
 */
export function quantizationFromOverrides(
  overrides: string[],
  where: string,
): QuantizationConfig | null {
  if (overrides.length === 0) return null;
  return configFromOverrides(overrides, where).quantization;
}

/**
 * A config made of `overrides` alone, checked by the same rules and messages
 * as a config file (`where` names the command): for the keys evaluate and chat
 * take by `--set` without a file.
 */
export function configFromOverrides(overrides: string[], where: string): FinetuneConfig {
  // A config that asks for nothing else: only the keys set are read from it.
  const minimal =
    "data_config: {train_file: t, val_file: v, test_file: t}\nmax_input_length: 1\nmax_output_length: 1\n" +
    "peft_config: {peft_type: LORA}\n";
  return parseConfig(minimal, where, overrides);
}

/**
 * The config text with overrides written into it (comments kept), for a run
 * that must hand the effective config to several stages. Throws a UserError
 * if the result is not a valid config.
 */
export function renderConfig(text: string, path: string, overrides: string[]): string {
  parseConfig(text, path, overrides);
  const { doc } = parseYaml(text, path);
  for (const o of parseOverrides(overrides)) {
    try {
      doc.setIn(o.path, doc.createNode(o.value));
    } catch (e) {
      throw new UserError(`--set ${o.text}: ${(e as Error).message}`);
    }
  }
  return doc.toString();
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (typeof v === "number" && !Number.isFinite(v)) {
    return Number.isNaN(v) ? ".nan" : v > 0 ? ".inf" : "-.inf";
  }
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "a mapping";
  return JSON.stringify(v);
}

function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0];
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = prev[j];
      prev[j] = Math.min(prev[j] + 1, prev[j - 1] + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = tmp;
    }
  }
  return prev[b.length];
}

function suggest(key: string, known: readonly string[]): string {
  let best = "";
  let bestD = Infinity;
  for (const k of known) {
    const d = editDistance(key, k);
    if (d < bestD) [best, bestD] = [k, d];
  }
  return bestD <= Math.max(2, Math.floor(key.length / 4)) ? ` (did you mean ${best}?)` : "";
}

/**
 * The lr_scheduler_kwargs each schedule's function in transformers takes
 * (besides last_epoch, which every one takes). get_scheduler calls constant
 * and constant_with_warmup without them, so those take anything.
 */
const SCHEDULER_KWARGS: Record<string, readonly string[]> = {
  linear: [],
  cosine: ["num_cycles"],
  cosine_with_restarts: ["num_cycles"],
  polynomial: ["lr_end", "power"],
  inverse_sqrt: ["timescale"],
  // the torch engine's only (HF runs them; the WebGPU engine refuses these schedules)
  cosine_with_min_lr: ["num_cycles", "min_lr", "min_lr_rate"],
  warmup_stable_decay: [
    "num_decay_steps",
    "num_stable_steps",
    "warmup_type",
    "decay_type",
    "min_lr_ratio",
    "num_cycles",
  ],
  // torch.optim.lr_scheduler.ReduceLROnPlateau's arguments
  reduce_lr_on_plateau: [
    "mode",
    "factor",
    "patience",
    "threshold",
    "threshold_mode",
    "cooldown",
    "min_lr",
    "eps",
  ],
};

const FLOAT_RE = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;
const INT_RE = /^[+-]?\d+$/;

class Validator {
  private errors: string[] = [];
  readonly notApplicable: NotApplicable[] = [];

  constructor(
    readonly file: string,
    readonly lines: Map<string, number>,
    readonly sets: Override[],
  ) {}

  /** `FILE:LINE: key: msg`, or `FILE: key: msg (from --set ...)` for overridden values. */
  private where(key: string, msg: string): string {
    const set = [...this.sets].reverse().find((o) => {
      const p = o.path.join(".");
      return key === p || key.startsWith(p + ".") || p.startsWith(key + ".");
    });
    if (set) return located(this.file, undefined, key, `${msg} (from --set ${set.text})`);
    return located(this.file, lineOfKey(this.lines, key), key, msg);
  }

  error(key: string, msg: string): void {
    this.errors.push(this.where(key, msg));
  }

  finish(): void {
    if (this.errors.length > 0) throw new UserError(this.errors.join("\n"));
  }

  config(tree: Record<string, unknown>): FinetuneConfig {
    const lfKeys = Object.keys(LLAMA_FACTORY_QUANTIZATION);
    const known = [...Object.keys(TOP_LEVEL), ...lfKeys, ...TOP_SECTIONS];
    for (const k of Object.keys(tree)) {
      if (!known.includes(k)) this.error(k, `unknown key${suggest(k, known)}`);
    }
    const top = this.section(TOP_LEVEL, pick(tree, Object.keys(TOP_LEVEL)), "", false);
    const lf = this.section(LLAMA_FACTORY_QUANTIZATION, pick(tree, lfKeys), "", false);
    const dataRaw = tree.data_config;
    let data_config = {} as DataConfig;
    if (dataRaw === undefined || dataRaw === null) {
      this.error("data_config", "required (train_file, val_file, test_file)");
    } else {
      data_config = this.section(DATA_CONFIG, dataRaw, "data_config") as unknown as DataConfig;
    }
    const training_args = this.trainingArgs(tree.training_args, data_config);
    const peft_config = this.peft(tree.peft_config);
    const qRaw = tree.quantization_config;
    const quantization = quantizationFrom(
      qRaw === undefined || qRaw === null
        ? undefined
        : this.section(QUANTIZATION_CONFIG, qRaw, "quantization_config"),
      lf,
      new Set(Object.keys(tree).filter((k) => tree[k] !== undefined && tree[k] !== null)),
      peft_config?.peft_type ?? null,
      (key, msg) => this.error(key, msg),
    );
    return {
      path: this.file,
      data_config,
      max_input_length: top.max_input_length as number,
      max_output_length: top.max_output_length as number,
      training_args,
      peft_config,
      quantization,
      quantization_overrides: quantization
        ? [
          "quantization_bit=4",
          `quantization_type=${quantization.quantType}`,
          `double_quantization=${quantization.doubleQuant}`,
        ]
        : [],
      notApplicable: this.notApplicable,
    };
  }

  private trainingArgs(raw: unknown, data: DataConfig): TrainingArgs {
    const key = "training_args";
    const obj: Record<string, unknown> = raw === undefined || raw === null
      ? {}
      : isPlainObject(raw)
      ? { ...raw }
      : (this.error(key, `expected a mapping, got ${describe(raw)}`), {});
    const genRaw = obj.generation_config;
    delete obj.generation_config;
    const args = this.section(TRAINING_ARGS, obj, key) as TrainingArgs;
    args.generation_config =
      (genRaw === undefined || genRaw === null ? sectionDefaults(GENERATION_CONFIG) : this.section(
        GENERATION_CONFIG,
        genRaw,
        `${key}.generation_config`,
      )) as unknown as GenerationConfig;

    // HF renamed evaluation_strategy to eval_strategy; both are read.
    const alias = args.evaluation_strategy as IntervalStrategy | null;
    if (alias !== null && alias !== undefined) {
      if ("eval_strategy" in obj && obj.eval_strategy !== alias) {
        this.error(
          `${key}.evaluation_strategy`,
          `conflicts with eval_strategy "${obj.eval_strategy}" (the same setting)`,
        );
      }
      args.eval_strategy = alias;
    }
    delete args.evaluation_strategy;
    // TrainingArguments.__post_init__: evaluating implies do_eval, and eval_steps
    // falls back to logging_steps.
    if (args.eval_strategy !== "no") args.do_eval = true;
    if (args.eval_strategy === "steps" && (args.eval_steps === null || args.eval_steps === 0)) {
      if (args.logging_steps > 0) args.eval_steps = args.logging_steps;
      else {
        this.error(
          `${key}.eval_steps`,
          "eval_strategy is steps: needs eval_steps or logging_steps > 0",
        );
      }
    }
    // finetune_hf.py: no val_file (or do_eval off) means no evaluation.
    if (!args.do_eval || !data.val_file) {
      args.do_eval = false;
      args.eval_strategy = "no";
    }
    if (args.logging_strategy === "steps" && args.logging_steps <= 0) {
      this.error(`${key}.logging_steps`, "must be > 0 when logging_strategy is steps");
    }
    if (args.save_strategy === "steps" && args.save_steps <= 0) {
      this.error(`${key}.save_steps`, "must be > 0 when save_strategy is steps");
    }
    if (args.max_steps === 0) {
      this.error(`${key}.max_steps`, "must be > 0, or -1 to train num_train_epochs");
    }
    // HF's get_scheduler passes lr_scheduler_kwargs to the schedule's function, which refuses
    // an argument it does not take (a misspelt num_cycles would otherwise run the default).
    const takes = SCHEDULER_KWARGS[args.lr_scheduler_type];
    for (const [k, v] of Object.entries(args.lr_scheduler_kwargs ?? {})) {
      if (k === "last_epoch") {
        // -1, a schedule from its start, is what is built; a resume restores the step itself
        if (v !== -1) this.error(`${key}.lr_scheduler_kwargs.last_epoch`, "only -1 is supported");
      } else if (takes && !takes.includes(k)) {
        this.error(
          `${key}.lr_scheduler_kwargs.${k}`,
          `the ${args.lr_scheduler_type} schedule takes ${
            takes.length ? takes.join(", ") : "no arguments"
          }${suggest(k, takes)}`,
        );
      }
    }
    if (args.max_steps < 0 && args.num_train_epochs <= 0) {
      this.error(`${key}.num_train_epochs`, "must be > 0 when max_steps is not set");
    }
    return args;
  }

  private peft(raw: unknown): PeftConfig | null {
    const key = "peft_config";
    if (raw === undefined || raw === null) return null;
    if (!isPlainObject(raw)) {
      this.error(key, `expected a mapping, got ${describe(raw)}`);
      return null;
    }
    const typeRaw = raw.peft_type;
    const type = typeof typeRaw === "string" ? typeRaw.toUpperCase() : typeRaw;
    if (type === "LORA") {
      const explicitTargets = raw.target_modules !== undefined && raw.target_modules !== null;
      const cfg = this.section(LORA_CONFIG, raw, key) as unknown as LoraConfig;
      if (!explicitTargets) cfg.target_modules = [...CHATGLM_LORA_TARGETS];
      const targets = typeof cfg.target_modules === "string"
        ? [cfg.target_modules]
        : cfg.target_modules;
      const known = CHATGLM_LINEAR_MODULES as readonly string[];
      if (targets.length === 0) {
        this.error(`${key}.target_modules`, `is empty; expected some of ${known.join(", ")}`);
      }
      for (const t of targets.filter((t) => !known.includes(t))) {
        this.error(
          `${key}.target_modules`,
          `unknown module ${JSON.stringify(t)}${suggest(t, [...known])}; ` +
            `chatglm3's linear layers are ${known.join(", ")}`,
        );
      }
      return cfg;
    }
    if (type === "PREFIX_TUNING") {
      return this.section(PREFIX_TUNING_CONFIG, raw, key) as unknown as PrefixTuningConfig;
    }
    if (typeRaw === undefined || typeRaw === null) {
      this.error(
        `${key}.peft_type`,
        "required: LORA or PREFIX_TUNING (leave out peft_config for full fine-tuning)",
      );
    } else {
      this.error(
        `${key}.peft_type`,
        `${
          describe(typeRaw)
        } is not supported; expected LORA or PREFIX_TUNING (leave out peft_config for full fine-tuning)`,
      );
    }
    return null;
  }

  /** Check a mapping against a section spec; the result has every default filled in. */
  section(
    spec: Section,
    raw: unknown,
    prefix: string,
    strict = true,
  ): Record<string, unknown> {
    const out = sectionDefaults(spec);
    if (!isPlainObject(raw)) {
      this.error(prefix, `expected a mapping, got ${describe(raw)}`);
      return out;
    }
    const names = Object.keys(spec);
    for (const [k, v] of Object.entries(raw)) {
      const key = prefix ? `${prefix}.${k}` : k;
      const field = spec[k];
      if (!field) {
        if (strict) this.error(key, `unknown key${suggest(k, names)}`);
        continue;
      }
      const value = this.value(field, v, key);
      if (value === INVALID) continue;
      if (field.na) {
        this.notApplicable.push({ key, line: this.lines.get(key), reason: field.na });
      }
      out[k] = value;
    }
    for (const [k, field] of Object.entries(spec)) {
      if (field.required && (raw[k] === undefined || raw[k] === null)) {
        this.error(prefix ? `${prefix}.${k}` : k, "required");
      }
    }
    return out;
  }

  private value(field: Field, v: unknown, key: string): unknown {
    if (v === null) {
      if (field.nullable || field.na) return null;
      this.error(key, `expected ${expected(field)}, got null`);
      return INVALID;
    }
    const coerced = coerce(field, v);
    // YAML's .nan and .inf (and 1e999, which overflows) are numbers no setting can take.
    if (
      (field.type === "float" || field.type === "int") &&
      (typeof v === "number" || typeof coerced === "number") &&
      !Number.isFinite(typeof v === "number" ? v : coerced as number)
    ) {
      this.error(key, `not a finite number (got ${describe(v)})`);
      return INVALID;
    }
    if (coerced === INVALID) {
      // a setting with one supported value: say that value, not the type (init_lora_weights: gaussian)
      this.error(
        key,
        field.only
          ? `${describe(v)} is not supported (only ${field.only.map(describe).join(" or ")})`
          : `expected ${expected(field)}, got ${describe(v)}`,
      );
      return INVALID;
    }
    let value = coerced;
    if (field.enum && Array.isArray(value)) {
      // a list of choices (report_to: [tensorboard]): each one checked, as a single one is
      const hits = (value as string[]).map((x) =>
        field.enum!.find((e) => e.toLowerCase() === x.toLowerCase())
      );
      const bad = hits.findIndex((h) => h === undefined);
      if (bad >= 0) {
        this.error(key, `${describe(value[bad])} is not one of ${field.enum.join(", ")}`);
        return INVALID;
      }
      value = hits;
    }
    if (field.enum && typeof value === "string") {
      const hit = field.enum.find((e) => e === value) ??
        field.enum.find((e) => e.toLowerCase() === (value as string).toLowerCase());
      if (hit === undefined) {
        this.error(key, `${describe(v)} is not one of ${field.enum.join(", ")}`);
        return INVALID;
      }
      value = hit;
    }
    if (typeof value === "number") {
      if (field.min !== undefined && value < field.min) {
        this.error(key, `must be >= ${field.min}, got ${value}`);
        return INVALID;
      }
      if (field.max !== undefined && value > field.max) {
        this.error(key, `must be <= ${field.max}, got ${value}`);
        return INVALID;
      }
      if (field.below !== undefined && value >= field.below) {
        this.error(key, `must be < ${field.below}, got ${value}`);
        return INVALID;
      }
    }
    if (field.only && !field.only.some((o) => sameValue(o, value))) {
      const allowed = field.only.map((o) => describe(o)).join(" or ");
      this.error(key, `${describe(v)} is not supported (only ${allowed})`);
      return INVALID;
    }
    return value;
  }
}

const INVALID = Symbol("invalid");

function expected(field: Field): string {
  switch (field.type) {
    case "int":
      return "an integer";
    case "float":
      return "a number";
    case "bool":
      return "true or false";
    case "string":
      return field.enum ? `one of ${field.enum.join(", ")}` : "a string";
    case "strings":
      return "a string or a list of strings";
    case "ints":
      return "an integer or a list of integers";
    case "map":
      return "a mapping";
  }
}

function coerce(field: Field, v: unknown): unknown {
  switch (field.type) {
    case "int":
      if (typeof v === "number" && Number.isInteger(v)) return v;
      // PyYAML users quote numbers; HF's argument parser accepts them.
      if (typeof v === "string" && INT_RE.test(v.trim())) return Number(v);
      return INVALID;
    case "float":
      if (typeof v === "number" && Number.isFinite(v)) return v;
      if (typeof v === "string" && FLOAT_RE.test(v.trim())) return Number(v);
      return INVALID;
    case "bool":
      return typeof v === "boolean" ? v : INVALID;
    case "string":
      return typeof v === "string" ? v : INVALID;
    case "strings":
      if (typeof v === "string") return v;
      if (Array.isArray(v) && v.every((x) => typeof x === "string")) return v;
      return INVALID;
    case "ints":
      if (typeof v === "number" && Number.isInteger(v)) return v;
      if (Array.isArray(v) && v.every((x) => typeof x === "number" && Number.isInteger(x))) {
        return v;
      }
      return INVALID;
    case "map":
      return isPlainObject(v) ? v : INVALID;
  }
}

function sameValue(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function pick(obj: Record<string, unknown>, keys: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of keys) if (k in obj) out[k] = obj[k];
  return out;
}
