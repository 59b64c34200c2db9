/**
 * The training arguments the trainer honours, in its own terms, and their
 * derivation from a finetune config's `training_args` (HF names, HF defaults).
 */
import type { TrainingArgs } from "../config/config.ts";
import { UserError } from "../errors.ts";
import { SUPPORTED_SCHEDULES } from "./schedule.ts";

export type Interval = "no" | "steps" | "epoch";

export interface TrainArgs {
  learningRate: number;
  weightDecay: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** null or ≤ 0: no clipping */
  maxGradNorm: number | null;
  lrSchedulerType: string;
  lrSchedulerKwargs: Record<string, unknown>;
  warmupSteps: number;
  /** save_only_model: checkpoints without the optimizer state */
  saveOnlyModel: boolean;
  warmupRatio: number;
  batchSize: number;
  evalBatchSize: number;
  accumulation: number;
  /** > 0 wins over numTrainEpochs */
  maxSteps: number;
  numTrainEpochs: number;
  dropLast: boolean;
  loggingStrategy: Interval;
  /** < 1: a fraction of the run (HF) */
  loggingSteps: number;
  loggingFirstStep: boolean;
  saveStrategy: Interval;
  saveSteps: number;
  saveTotalLimit: number | null;
  evalStrategy: Interval;
  /** null: logging_steps (HF) */
  evalSteps: number | null;
  evalDelay: number;
  seed: number;
  shuffle: boolean;
  /** A non-finite loss or grad norm: stop the run, or skip that step's update (training_args.nan_policy). */
  nanPolicy: "stop" | "skip";
}

/** HF Seq2SeqTrainingArguments defaults, in trainer terms. */
export const DEFAULT_TRAIN_ARGS: TrainArgs = {
  learningRate: 5e-5,
  weightDecay: 0,
  beta1: 0.9,
  beta2: 0.999,
  eps: 1e-8,
  maxGradNorm: 1.0,
  lrSchedulerType: "linear",
  lrSchedulerKwargs: {},
  warmupSteps: 0,
  saveOnlyModel: false,
  warmupRatio: 0,
  batchSize: 8,
  evalBatchSize: 8,
  accumulation: 1,
  maxSteps: -1,
  numTrainEpochs: 3,
  dropLast: false,
  loggingStrategy: "steps",
  loggingSteps: 500,
  loggingFirstStep: false,
  saveStrategy: "steps",
  saveSteps: 500,
  saveTotalLimit: null,
  evalStrategy: "no",
  evalSteps: null,
  evalDelay: 0,
  seed: 42,
  shuffle: true,
  nanPolicy: "stop",
};

/**
 * Map a validated config's training_args onto TrainArgs; `configPath` names
 * the config in the messages of what this engine does not build.
 */
export function trainArgsFromConfig(
  t: TrainingArgs,
  opts: { shuffle: boolean; configPath?: string },
): TrainArgs {
  const where = opts.configPath ? `${opts.configPath}: ` : "";
  if (!(SUPPORTED_SCHEDULES as readonly string[]).includes(t.lr_scheduler_type)) {
    throw new UserError(
      `${where}training_args.lr_scheduler_type: "${t.lr_scheduler_type}" is not supported by the ` +
        `WebGPU engine (the torch engine, --engine torch, runs it); use one of ${
          SUPPORTED_SCHEDULES.join(", ")
        }`,
    );
  }
  if (t.save_strategy === "best") {
    throw new UserError(
      `${where}training_args.save_strategy: "best" needs metric_for_best_model, which this trainer does not track; use "steps", "epoch" or "no"`,
    );
  }
  return {
    learningRate: t.learning_rate,
    weightDecay: t.weight_decay,
    beta1: t.adam_beta1,
    beta2: t.adam_beta2,
    eps: t.adam_epsilon,
    maxGradNorm: t.max_grad_norm,
    lrSchedulerType: t.lr_scheduler_type,
    lrSchedulerKwargs: t.lr_scheduler_kwargs ?? {},
    warmupSteps: t.warmup_steps,
    saveOnlyModel: t.save_only_model,
    warmupRatio: t.warmup_ratio,
    batchSize: t.per_device_train_batch_size,
    evalBatchSize: t.per_device_eval_batch_size,
    accumulation: t.gradient_accumulation_steps,
    maxSteps: t.max_steps,
    numTrainEpochs: t.num_train_epochs,
    dropLast: t.dataloader_drop_last,
    loggingStrategy: t.logging_strategy,
    loggingSteps: t.logging_steps,
    loggingFirstStep: t.logging_first_step,
    saveStrategy: t.save_strategy as Interval,
    saveSteps: t.save_steps,
    saveTotalLimit: t.save_total_limit,
    evalStrategy: t.eval_strategy,
    evalSteps: t.eval_steps,
    evalDelay: t.eval_delay,
    seed: t.data_seed ?? t.seed,
    shuffle: opts.shuffle,
    nanPolicy: t.nan_policy,
  };
}
