/**
 * The trainer's watch over its own numbers (docs/training.md, "Non-finite
 * values"): a step whose loss or gradient norm is NaN or infinite stops the
 * run (`nan_policy: stop`, the default) or has its update skipped
 * (`nan_policy: skip`); weights are checked before every save, so no NaN is
 * ever written; and a loss that sits at the uniform distribution's value with
 * no gradient — a run that has collapsed rather than diverged — is warned
 * about.
 */
import { UserError } from "../errors.ts";
import { firstNonFinite, nonFiniteName } from "../finite.ts";

/** What a step's check found: the first non-finite value, by its log name. */
export type NonFinite = { value: "loss" | "grad_norm"; x: number } | undefined;

/** The step's loss and grad norm, checked loss first (a NaN loss makes a NaN norm). */
export function checkStep(loss: number, gradNorm: number): NonFinite {
  if (!Number.isFinite(loss)) return { value: "loss", x: loss };
  if (!Number.isFinite(gradNorm)) return { value: "grad_norm", x: gradNorm };
  return undefined;
}

const NAMES = { loss: "the training loss", grad_norm: "the gradient norm" };

/** The advice every divergence message ends with. */
const ADVICE = "The usual causes are a learning_rate too high and adam_epsilon 0 " +
  "(which divides by zero)";

/**
 * The error that stops a run under `nan_policy: stop`. `lastCheckpoint` is
 * the newest checkpoint on disk (all of which hold finite weights).
 */
export function divergedError(
  step: number,
  bad: NonNullable<NonFinite>,
  lastCheckpoint: string | undefined,
): UserError {
  const kept = lastCheckpoint
    ? `the newest checkpoint, ${lastCheckpoint}, is kept (nothing after it was saved)`
    : "no checkpoint had been saved, and nothing after the failure is";
  return new UserError(
    `step ${step}: ${NAMES[bad.value]} is ${nonFiniteName(bad.x)}; training stopped ` +
      `(training_args.nan_policy: stop) with step ${step}'s update not applied; ${kept}. ` +
      `${ADVICE}; training_args.nan_policy: skip skips such steps instead.`,
  );
}

/** The log line of a step skipped under `nan_policy: skip`. */
export function skippedNote(step: number, bad: NonNullable<NonFinite>): string {
  return `step ${step}: ${NAMES[bad.value]} is ${nonFiniteName(bad.x)}; ` +
    `its optimizer update is skipped (training_args.nan_policy: skip) and its loss left out of the logged mean`;
}

/**
 * Refuse to save weights (or AdamW moments) that are not finite: an update
 * with finite gradients can still make them so (adam_epsilon 0 divides zero
 * by zero). `what` names the save ("checkpoint-12", "the final save").
 */
export function assertFiniteWeights(
  step: number,
  what: string,
  tensors: Iterable<[string, Float32Array]>,
): void {
  for (const [name, data] of tensors) {
    const i = firstNonFinite(data);
    if (i >= 0) {
      throw new UserError(
        `step ${step}: after the update, ${name} holds ${
          nonFiniteName(data[i])
        } (element ${i}); ${what} was not written, so no checkpoint holds NaN weights. ${ADVICE}.`,
      );
    }
  }
}

/** Logged steps in a row at the uniform loss with no gradient before the warning. */
export const UNIFORM_STEPS = 3;

/**
 * Watches logged entries for a collapsed run: loss ln(vocab) — the model
 * predicts every token with the same probability — and a gradient norm of 0,
 * for UNIFORM_STEPS logs in a row. (A freshly initialised model starts near
 * ln(vocab) too, but with a gradient.) Warns once.
 */
export class UniformLossWatch {
  private run = 0;
  private warned = false;
  constructor(private vocab: number | undefined) {}

  /** The warning, the first time the run has sat there long enough; else undefined. */
  observe(step: number, loss: number, gradNorm: number): string | undefined {
    if (!this.vocab || this.vocab < 2 || this.warned) return undefined;
    const uniform = Math.log(this.vocab);
    const stuck = Math.abs(loss - uniform) <= 1e-3 * uniform && Math.abs(gradNorm) <= 1e-8;
    this.run = stuck ? this.run + 1 : 0;
    if (this.run < UNIFORM_STEPS) return undefined;
    this.warned = true;
    return `warning: step ${step}: the loss has been ${
      loss.toFixed(4)
    } = ln(${this.vocab}), the uniform distribution over the vocabulary, with a gradient norm of 0, ` +
      `for ${UNIFORM_STEPS} logged steps: the model has collapsed and is no longer learning ` +
      `(a learning_rate far too high does this)`;
  }
}
