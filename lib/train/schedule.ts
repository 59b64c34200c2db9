/**
 * Learning-rate schedules as HF `get_scheduler` builds them (LambdaLR over the
 * optimizer's base LR). HF Trainer steps the scheduler after each optimizer
 * step, so optimizer step k (0-based) runs with base_lr · λ(k); that is also
 * the `learning_rate` HF logs for that step (it is read before the scheduler
 * advances).
 */
import { UserError } from "../errors.ts";

export interface ScheduleSpec {
  type: string;
  baseLr: number;
  totalSteps: number;
  warmupSteps: number;
  /** lr_scheduler_kwargs (num_cycles, power, lr_end, timescale, ...) */
  kwargs?: Record<string, unknown>;
}

export const SUPPORTED_SCHEDULES = [
  "linear",
  "cosine",
  "cosine_with_restarts",
  "polynomial",
  "constant",
  "constant_with_warmup",
  "inverse_sqrt",
] as const;

function num(kwargs: Record<string, unknown> | undefined, key: string, def: number): number {
  const v = kwargs?.[key];
  if (v === undefined || v === null) return def;
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new UserError(`training_args.lr_scheduler_kwargs.${key}: expected a number`);
  }
  return v;
}

/** λ(step) of the schedule: the LR multiplier of optimizer step `step` (0-based). */
export function lrLambda(spec: ScheduleSpec): (step: number) => number {
  const { totalSteps: total, warmupSteps: warm, kwargs } = spec;
  const warmup = (s: number) => s / Math.max(1, warm);
  switch (spec.type) {
    case "constant":
      return () => 1;
    case "constant_with_warmup":
      return (s) => s < warm ? warmup(s) : 1;
    case "linear":
      return (s) => s < warm ? warmup(s) : Math.max(0, (total - s) / Math.max(1, total - warm));
    case "cosine": {
      const cycles = num(kwargs, "num_cycles", 0.5);
      return (s) => {
        if (s < warm) return warmup(s);
        const progress = (s - warm) / Math.max(1, total - warm);
        return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * cycles * 2 * progress)));
      };
    }
    case "cosine_with_restarts": {
      const cycles = num(kwargs, "num_cycles", 1);
      return (s) => {
        if (s < warm) return warmup(s);
        const progress = (s - warm) / Math.max(1, total - warm);
        if (progress >= 1) return 0;
        return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * ((cycles * progress) % 1))));
      };
    }
    case "polynomial": {
      const lrEnd = num(kwargs, "lr_end", 1e-7);
      const power = num(kwargs, "power", 1);
      const lrInit = spec.baseLr;
      if (!(lrInit > lrEnd)) {
        throw new UserError(
          `training_args.learning_rate (${lrInit}) must be greater than lr_end (${lrEnd}) for the polynomial schedule`,
        );
      }
      return (s) => {
        if (s < warm) return warmup(s);
        if (s > total) return lrEnd / lrInit;
        const decaySteps = total - warm;
        const remaining = 1 - (s - warm) / decaySteps;
        return ((lrInit - lrEnd) * remaining ** power + lrEnd) / lrInit;
      };
    }
    case "inverse_sqrt": {
      const timescale = num(kwargs, "timescale", warm || 10_000);
      return (s) => {
        if (s < warm) return warmup(s);
        const shift = timescale - warm;
        return 1 / Math.sqrt((s + shift) / timescale);
      };
    }
    default:
      throw new UserError(
        `training_args.lr_scheduler_type: "${spec.type}" is not supported; use one of ${
          SUPPORTED_SCHEDULES.join(", ")
        }`,
      );
  }
}

/** The LR optimizer step `step` (0-based) runs with. */
export function makeSchedule(spec: ScheduleSpec): (step: number) => number {
  const lambda = lrLambda(spec);
  return (step) => spec.baseLr * lambda(step);
}
