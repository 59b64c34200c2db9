/**
 * The ChatGLM3 finetune_demo config schema: every key a config may hold, its
 * type and its default. Defaults are those of HF `Seq2SeqTrainingArguments`,
 * `GenerationConfig` and PEFT's `LoraConfig` / `PrefixTuningConfig`, so the
 * trainer reads them from here instead of restating them.
 *
 * A key is one of:
 * - applicable: honoured by this toolkit;
 * - `na`: meaningful only to PyTorch / DeepSpeed / HF infrastructure; accepted,
 *   ignored and reported once;
 * - `only`: a real training feature this toolkit does not implement; accepted
 *   only at its default value (anything else is an error, never silently ignored).
 */

export type FieldType =
  | "int"
  | "float"
  | "bool"
  | "string"
  /** a string or a list of strings */
  | "strings"
  /** an int or a list of ints */
  | "ints"
  /** a free-form mapping */
  | "map";

export interface Field {
  type: FieldType;
  default: unknown;
  nullable?: boolean;
  required?: boolean;
  enum?: readonly string[];
  /** inclusive lower bound */
  min?: number;
  /** exclusive upper bound */
  below?: number;
  /** inclusive upper bound */
  max?: number;
  /** why the key does not apply here (accepted, ignored, reported) */
  na?: string;
  /** the only accepted values (the feature is not implemented otherwise) */
  only?: readonly unknown[];
  /** another name for this key (HF renamed some) */
  aliasOf?: string;
}

export type Section = Record<string, Field>;

const NA_TORCH = "PyTorch/HF runtime setting";
const NA_DATALOADER = "PyTorch DataLoader setting; data is streamed from JSONL";
const NA_PRECISION = "precision is chosen by the WebGPU engine (f32 math, f16 frozen weights)";
const NA_DISTRIBUTED = "distributed/DeepSpeed setting; training runs on one WebGPU device";
const NA_HUB = "Hugging Face Hub / experiment-tracker setting";
const NA_LOG = "Python logging/progress-bar setting";
const NA_PREDICT =
  "train evaluates a teacher-forced eval_loss; generated ROUGE/BLEU come from the evaluate stage, " +
  "which the pipelines run before and after training";
const NA_GENERATION = "not applied by this toolkit's generation (greedy, or sampled by " +
  "temperature, top_k and top_p; it stops at eos, <|user|> and <|observation|>, unpadded)";

const f = (type: FieldType, def: unknown, extra: Partial<Field> = {}): Field => ({
  type,
  default: def,
  ...extra,
});
const na = (type: FieldType, def: unknown, reason: string, nullable = true): Field => ({
  type,
  default: def,
  na: reason,
  nullable,
});
const only = (type: FieldType, def: unknown, extra: Partial<Field> = {}): Field => ({
  type,
  default: def,
  only: [def],
  ...extra,
});

export const INTERVAL_STRATEGIES = ["no", "steps", "epoch"] as const;

/** training_args.report_to values: what this toolkit can report to (TensorBoard, built in). */
export const REPORT_TO = ["all", "none", "tensorboard"] as const;

/** training_args.nan_policy: stop the run, or skip the optimizer update of such a step. */
export const NAN_POLICIES = ["stop", "skip"] as const;

export const LR_SCHEDULERS = [
  "linear",
  "cosine",
  "cosine_with_restarts",
  "polynomial",
  "constant",
  "constant_with_warmup",
  "inverse_sqrt",
  "reduce_lr_on_plateau",
  "cosine_with_min_lr",
  "warmup_stable_decay",
] as const;

export const ADAMW_OPTIMIZERS = [
  "adamw_torch",
  "adamw_hf",
  "adamw_torch_fused",
  "adamw_apex_fused",
  "adamw_anyprecision",
  "adamw_torch_xla",
  "adamw_torch_npu_fused",
] as const;

export const DATA_CONFIG: Section = {
  train_file: f("string", undefined, { required: true }),
  val_file: f("string", null, { nullable: true }),
  test_file: f("string", null, { nullable: true }),
  num_proc: na("int", null, "datasets.map worker count; records are processed as a stream"),
};

/** transformers.GenerationConfig (the keys generation honours, plus inert ones). */
export const GENERATION_CONFIG: Section = {
  max_length: f("int", 20, { min: 1 }),
  max_new_tokens: f("int", null, { nullable: true, min: 1 }),
  min_length: na("int", 0, NA_GENERATION),
  min_new_tokens: na("int", null, NA_GENERATION),
  do_sample: f("bool", false),
  temperature: f("float", 1.0, { min: 0 }),
  top_k: f("int", 50, { min: 0 }),
  top_p: f("float", 1.0, { min: 0, max: 1 }),
  repetition_penalty: na("float", 1.0, NA_GENERATION),
  // generation stops at ChatGLM3's own ids (eos, <|user|>, <|observation|>), prompts are not padded
  eos_token_id: na("ints", null, NA_GENERATION),
  pad_token_id: na("int", null, NA_GENERATION),
  bos_token_id: na("int", null, NA_GENERATION),
  num_beams: only("int", 1),
  num_return_sequences: only("int", 1),
  use_cache: na("bool", true, "the KV cache is always used"),
  output_scores: na("bool", false, NA_TORCH),
  return_dict_in_generate: na("bool", false, NA_TORCH),
};

/** transformers.Seq2SeqTrainingArguments. */
export const TRAINING_ARGS: Section = {
  output_dir: f("string", "./output"),
  overwrite_output_dir: f("bool", false),
  do_train: na("bool", false, "the train stage always trains"),
  do_eval: f("bool", false),
  do_predict: na("bool", false, "prediction is the evaluate stage"),
  eval_strategy: f("string", "no", { enum: INTERVAL_STRATEGIES }),
  evaluation_strategy: f("string", null, {
    enum: INTERVAL_STRATEGIES,
    nullable: true,
    aliasOf: "eval_strategy",
  }),
  prediction_loss_only: f("bool", false),
  per_device_train_batch_size: f("int", 8, { min: 1 }),
  per_device_eval_batch_size: f("int", 8, { min: 1 }),
  gradient_accumulation_steps: f("int", 1, { min: 1 }),
  eval_accumulation_steps: na("int", null, NA_TORCH),
  eval_delay: f("float", 0, { min: 0 }),
  learning_rate: f("float", 5e-5, { min: 0 }),
  weight_decay: f("float", 0.0, { min: 0 }),
  adam_beta1: f("float", 0.9, { min: 0, below: 1 }),
  adam_beta2: f("float", 0.999, { min: 0, below: 1 }),
  adam_epsilon: f("float", 1e-8, { min: 0 }),
  max_grad_norm: f("float", 1.0, { nullable: true }),
  // Ours, not HF's: what a non-finite loss or gradient norm does (docs/training.md).
  nan_policy: f("string", "stop", { enum: NAN_POLICIES }),
  num_train_epochs: f("float", 3.0, { min: 0 }),
  max_steps: f("int", -1, { min: -1 }),
  lr_scheduler_type: f("string", "linear", { enum: LR_SCHEDULERS }),
  lr_scheduler_kwargs: f("map", {}, { nullable: true }),
  warmup_ratio: f("float", 0.0, { min: 0, max: 1 }),
  // transformers 5: an integer, or a float in (0, 1) for a share of the run
  warmup_steps: f("float", 0, { min: 0 }),
  log_level: na("string", "passive", NA_LOG),
  log_level_replica: na("string", "warning", NA_LOG),
  log_on_each_node: na("bool", true, NA_DISTRIBUTED),
  // TensorBoard event files go here (default OUT/runs/<Mon DD_HH-MM-SS>_<host>, as HF).
  logging_dir: f("string", null, { nullable: true }),
  logging_strategy: f("string", "steps", { enum: INTERVAL_STRATEGIES }),
  logging_first_step: f("bool", false),
  logging_steps: f("float", 500, { min: 0 }),
  logging_nan_inf_filter: na("bool", true, NA_TORCH),
  save_strategy: f("string", "steps", { enum: [...INTERVAL_STRATEGIES, "best"] }),
  save_steps: f("float", 500, { min: 0 }),
  // HF: null or 0 keeps every checkpoint
  save_total_limit: f("int", null, { nullable: true, min: 0 }),
  save_safetensors: only("bool", true),
  save_only_model: f("bool", false),
  seed: f("int", 42, { min: 0 }),
  data_seed: f("int", null, { nullable: true, min: 0 }),
  eval_steps: f("float", null, { nullable: true, min: 0 }),
  dataloader_drop_last: f("bool", false),
  dataloader_num_workers: na("int", 0, NA_DATALOADER),
  dataloader_pin_memory: na("bool", true, NA_DATALOADER),
  dataloader_persistent_workers: na("bool", false, NA_DATALOADER),
  dataloader_prefetch_factor: na("int", null, NA_DATALOADER),
  remove_unused_columns: na("bool", true, "HF datasets column handling; records carry only ids"),
  label_names: na("strings", null, NA_TORCH),
  run_name: na("string", null, NA_HUB),
  // "all" (HF 4.x's default: every installed integration; here TensorBoard is built in),
  // "tensorboard", or "none"; other trackers are not available (docs/training.md).
  report_to: f("strings", "all", { nullable: true, enum: REPORT_TO }),
  disable_tqdm: na("bool", null, NA_LOG),
  push_to_hub: na("bool", false, NA_HUB),
  hub_model_id: na("string", null, NA_HUB),
  hub_strategy: na("string", "every_save", NA_HUB),
  hub_token: na("string", null, NA_HUB),
  hub_private_repo: na("bool", null, NA_HUB),
  resume_from_checkpoint: na("string", null, "use the train stage's --resume flag"),
  use_cpu: na("bool", false, "the WebGPU adapter decides; without a GPU it runs on the CPU"),
  no_cuda: na("bool", false, "the WebGPU adapter decides; without a GPU it runs on the CPU"),
  bf16: na("bool", false, NA_PRECISION),
  fp16: na("bool", false, NA_PRECISION),
  tf32: na("bool", null, NA_PRECISION),
  bf16_full_eval: na("bool", false, NA_PRECISION),
  fp16_full_eval: na("bool", false, NA_PRECISION),
  fp16_opt_level: na("string", "O1", NA_PRECISION),
  half_precision_backend: na("string", "auto", NA_PRECISION),
  deepspeed: na("string", null, NA_DISTRIBUTED),
  local_rank: na("int", -1, NA_DISTRIBUTED),
  fsdp: na("strings", "", NA_DISTRIBUTED),
  fsdp_config: na("map", null, NA_DISTRIBUTED),
  ddp_backend: na("string", null, NA_DISTRIBUTED),
  ddp_timeout: na("int", 1800, NA_DISTRIBUTED),
  ddp_find_unused_parameters: na("bool", null, NA_DISTRIBUTED),
  ddp_bucket_cap_mb: na("int", null, NA_DISTRIBUTED),
  ddp_broadcast_buffers: na("bool", null, NA_DISTRIBUTED),
  torch_compile: na("bool", false, NA_TORCH),
  torch_compile_backend: na("string", null, NA_TORCH),
  torch_compile_mode: na("string", null, NA_TORCH),
  gradient_checkpointing: f("bool", false),
  gradient_checkpointing_kwargs: na("map", null, NA_TORCH),
  include_inputs_for_metrics: na("bool", false, NA_TORCH),
  full_determinism: na("bool", false, "runs are deterministic given the seed"),
  debug: na("strings", "", NA_TORCH),
  skip_memory_metrics: na("bool", true, NA_TORCH),
  ignore_data_skip: na("bool", false, NA_TORCH),
  optim: f("string", "adamw_torch", { enum: ADAMW_OPTIMIZERS }),
  optim_args: na("string", null, NA_TORCH),
  group_by_length: only("bool", false),
  auto_find_batch_size: only("bool", false),
  load_best_model_at_end: only("bool", false),
  metric_for_best_model: only("string", null, { nullable: true }),
  greater_is_better: only("bool", null, { nullable: true }),
  label_smoothing_factor: only("float", 0.0),
  neftune_noise_alpha: only("float", null, { nullable: true }),
  sortish_sampler: only("bool", false),
  predict_with_generate: na("bool", false, NA_PREDICT),
  generation_max_length: na("int", null, NA_PREDICT),
  generation_num_beams: f("int", null, { nullable: true, only: [null, 1] }),
  // generation_config is a nested section, handled by the loader.
};

/**
 * The `na` training_args keys that the torch engine (engine: torch) honours: it
 * hands them to HF TrainingArguments, so they are not reported as ignored there.
 */
export const TORCH_HONOURS: ReadonlySet<string> = new Set([
  "eval_accumulation_steps",
  "logging_nan_inf_filter",
  "dataloader_num_workers",
  "dataloader_pin_memory",
  "dataloader_persistent_workers",
  "dataloader_prefetch_factor",
  "run_name",
  "report_to",
  "use_cpu",
  "bf16",
  "fp16",
  "tf32",
  "bf16_full_eval",
  "fp16_full_eval",
  "deepspeed",
  "fsdp",
  "fsdp_config",
  "ddp_backend",
  "ddp_timeout",
  "ddp_find_unused_parameters",
  "ddp_bucket_cap_mb",
  "ddp_broadcast_buffers",
  "torch_compile",
  "torch_compile_backend",
  "torch_compile_mode",
  "gradient_checkpointing_kwargs",
  "full_determinism",
  "optim_args",
  "debug",
  "skip_memory_metrics",
]);

/** Keys every PEFT config has. */
const PEFT_COMMON: Section = {
  peft_type: f("string", undefined, { required: true, enum: ["LORA", "PREFIX_TUNING"] }),
  task_type: f("string", null, { nullable: true, only: [null, "CAUSAL_LM"] }),
  inference_mode: f("bool", false),
  base_model_name_or_path: f("string", null, { nullable: true }),
  revision: f("string", null, { nullable: true }),
};

/** peft.LoraConfig. */
export const LORA_CONFIG: Section = {
  ...PEFT_COMMON,
  r: f("int", 8, { min: 1 }),
  lora_alpha: f("float", 8, { min: 0 }),
  lora_dropout: f("float", 0.0, { min: 0, below: 1 }),
  target_modules: f("strings", null, { nullable: true }),
  bias: only("string", "none", { enum: ["none", "all", "lora_only"] }),
  fan_in_fan_out: only("bool", false),
  use_rslora: f("bool", false),
  // false (B random too, the adapter not a no-op at the start) is not built: B starts at 0
  init_lora_weights: only("bool", true),
  modules_to_save: only("strings", null, { nullable: true }),
  layers_to_transform: only("ints", null, { nullable: true }),
  layers_pattern: only("strings", null, { nullable: true }),
  rank_pattern: only("map", null, { nullable: true, only: [null, {}] }),
  alpha_pattern: only("map", null, { nullable: true, only: [null, {}] }),
  use_dora: only("bool", false),
  megatron_config: na("map", null, NA_DISTRIBUTED),
  megatron_core: na("string", "megatron.core", NA_DISTRIBUTED),
};

/** peft.PrefixTuningConfig (P-Tuning v2). */
export const PREFIX_TUNING_CONFIG: Section = {
  ...PEFT_COMMON,
  num_virtual_tokens: f("int", undefined, { required: true, min: 1 }),
  token_dim: f("int", null, { nullable: true, min: 1 }),
  num_transformer_submodules: f("int", null, { nullable: true, min: 1 }),
  num_attention_heads: f("int", null, { nullable: true, min: 1 }),
  num_layers: f("int", null, { nullable: true, min: 1 }),
  encoder_hidden_size: f("int", null, { nullable: true, min: 1 }),
  prefix_projection: f("bool", false),
  // Not a PEFT key: ChatGLM3's modeling code hard-codes Dropout(0.1) on the
  // prefix's past keys/values in training; this makes that rate a setting
  // (default: upstream's 0.1).
  prefix_dropout: f("float", 0.1, { min: 0, below: 1 }),
};

/** Top level of a finetune config; sections are validated by the loader. */
export const TOP_LEVEL: Section = {
  max_input_length: f("int", undefined, { required: true, min: 1 }),
  max_output_length: f("int", undefined, { required: true, min: 1 }),
};
/** Sections; quantization_config's keys are in ./quantization.ts, with LLaMA-Factory's top-level ones. */
export const TOP_SECTIONS = [
  "data_config",
  "training_args",
  "peft_config",
  "quantization_config",
] as const;

/** PEFT's default LoRA target for the chatglm model type. */
export const CHATGLM_LORA_TARGETS = ["query_key_value"];

/**
 * The linear layers of a chatglm3 block, the names peft_config.target_modules
 * may use (the same list as LORA_TARGETS in lib/model/adapter.ts; a test
 * holds them equal, as lib/config does not import lib/model).
 */
export const CHATGLM_LINEAR_MODULES = [
  "query_key_value",
  "dense",
  "dense_h_to_4h",
  "dense_4h_to_h",
] as const;

export function sectionDefaults(section: Section): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, spec] of Object.entries(section)) {
    if (spec.aliasOf || spec.default === undefined) continue;
    out[k] = structuredClone(spec.default);
  }
  return out;
}
