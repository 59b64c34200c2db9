/**
 * Before a pipeline runs anything: every input that no step of the pipeline
 * makes — the data files, the model dir, the config, an adapter — is checked,
 * so that a mistyped `--set model=…` is reported at once instead of after
 * validate and both converts ran, leaving a half-made run folder.
 *
 * Existence for every such input, and for a model dir what the stage that
 * reads it needs: tokenize its tokenizer.model; train, evaluate and
 * merge-adapter also a config.json that parses and safetensors weights whose
 * headers read (a dir of PyTorch `.bin` files gets the conversion command).
 * The checks read headers only, never the weights themselves.
 */
import { join, resolve } from "node:path";
import { type CommandSpec, parseSpecFlags } from "../args.ts";
import { osErrorCode, UsageError, UserError } from "../errors.ts";
import { torchPython } from "../train/torch_engine.ts";
import { loadGlmConfig } from "../model/config.ts";
import { isInside } from "../outdir.ts";
import { parseConfig } from "../config/config.ts";
import { isObject } from "../data/schema.ts";
import { checkWeightFiles } from "../model/weights.ts";
import type { ResolvedStep } from "./pipeline.ts";

/** What a stage's `--model` must hold. */
const MODEL_NEEDS: Record<string, "tokenizer" | "model"> = {
  tokenize: "tokenizer",
  train: "model",
  evaluate: "model",
  "merge-adapter": "model",
};

/** The earlier step whose output is `path` or holds it. */
export function producerOf(steps: ResolvedStep[], path: string): string | undefined {
  const abs = resolve(path);
  for (const s of steps) {
    for (const [, p] of s.outputs) {
      const o = resolve(p);
      if (abs === o || abs.startsWith(o + "/")) return s.name;
    }
  }
  return undefined;
}

async function kind(path: string): Promise<"file" | "dir" | undefined> {
  try {
    return (await Deno.stat(path)).isDirectory ? "dir" : "file";
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || osErrorCode(e) === "ENOTDIR") return undefined;
    throw e;
  }
}

/** Why the model dir `dir` cannot serve `need`, or undefined. */
async function modelProblem(dir: string, need: "tokenizer" | "model"): Promise<string | undefined> {
  const k = await kind(dir);
  if (k === undefined) return `${dir}: no such model directory`;
  if (k === "file") return `${dir}: a file, expected a model directory`;
  if (await kind(join(dir, "tokenizer.model")) !== "file") {
    return `${dir}: no tokenizer.model (expected a chatglm3 model directory)`;
  }
  if (need === "tokenizer") return undefined;
  try {
    await loadGlmConfig(dir);
    await checkWeightFiles(dir);
  } catch (e) {
    if (e instanceof UserError) return e.message;
    throw e;
  }
  return undefined;
}

/**
 * The problems of the external inputs of `steps` (those `selected`), one line
 * each, every path once however many steps read it; empty when all are usable.
 */
export async function checkExternalInputs(
  steps: ResolvedStep[],
  o: {
    selected?: (s: ResolvedStep) => boolean;
    /** files the runner writes before the steps run (the effective config.yaml) */
    pending?: string[];
  } = {},
): Promise<string[]> {
  const problems = new Map<string, { text: string; steps: string[] }>();
  const pending = new Set((o.pending ?? []).map((p) => resolve(p)));
  const checked = new Map<string, Promise<string | undefined>>();
  for (const step of steps) {
    if (o.selected && !o.selected(step)) continue;
    for (const [flag, p] of step.inputs) {
      if (producerOf(steps, p) || pending.has(resolve(p))) continue;
      const need = flag === "model" ? MODEL_NEEDS[step.stage] : undefined;
      // Each path is checked once per need; a problem is listed once with every step it stops.
      const key = `${need ?? "exists"} ${resolve(p)}`;
      if (!checked.has(key)) {
        checked.set(
          key,
          need
            ? modelProblem(p, need)
            : kind(p).then((k) => k === undefined ? `${p}: no such file or directory` : undefined),
        );
      }
      const text = await checked.get(key)!;
      if (!text) continue;
      const seen = problems.get(text);
      if (seen) seen.steps.push(step.name);
      else problems.set(text, { text, steps: [step.name] });
    }
  }
  return [...problems.values()].map(({ text, steps }) =>
    `${text} (read by step${steps.length > 1 ? "s" : ""} ${steps.join(", ")})`
  );
}

/** A step as the up-front checks see it: its stage's flags, where it is written, whether it runs. */
export interface StepLine {
  step: ResolvedStep;
  spec: CommandSpec | undefined;
  where: string;
}

/**
 * How many positionals a stage's synopsis takes ("DATA_DIR MODEL_DIR CONFIG
 * [yes|N]": 3 or 4; "FILE...": 1 or more); none is the flag form.
 */
function positionalRange(spec: CommandSpec): [number, number] {
  let min = 0, max = 0;
  for (const [display] of spec.positionals ?? []) {
    for (const word of display.split(/\s+/)) {
      if (word.endsWith("...")) [min, max] = [min + 1, Infinity];
      else if (word.startsWith("[")) max++;
      else [min, max] = [min + 1, max + 1];
    }
  }
  return [min, max];
}

/**
 * The problems of the steps' command lines, found before anything runs rather
 * than when the step is reached (after hours of earlier steps on a real
 * model): a flag the stage does not have, a value it cannot take, or a count
 * of positionals it does not accept, by the stage's own flag list (its
 * COMMAND); for a train step, the config it will read with its `--set`s (a
 * logging_dir outside the run folder, through `checkConfig`) and, when it
 * will run (`runs`) and not just plan, `--engine torch` without that
 * engine's Python environment.
 */
export async function checkStepFlags(
  lines: StepLine[],
  o: {
    runs: (step: ResolvedStep) => Promise<boolean>;
    checkConfig: (config: string, sets: string[], where: string) => Promise<string | undefined>;
  },
): Promise<string[]> {
  const problems: string[] = [];
  for (const { step, spec, where } of lines) {
    if (!spec) continue;
    const at = `${where}: step "${step.name}" (stage ${step.stage})`;
    let values: Record<string, unknown>;
    let positionals: string[];
    try {
      ({ values, positionals } = parseSpecFlags(step.argv, spec));
    } catch (e) {
      if (!(e instanceof UsageError)) throw e;
      // the stage's own message, without the usage that follows it
      problems.push(`${at}: ${e.message.split("\n")[0]}`);
      continue;
    }
    const [min, max] = positionalRange(spec);
    const n = positionals.length;
    if (n > 0 && (n < min || n > max)) {
      problems.push(
        `${at}: ${n} positional argument${n === 1 ? "" : "s"} (${positionals.join(" ")}), where ` +
          `it takes ${spec.positionals!.map(([d]) => d).join(" ")} or flags`,
      );
      continue;
    }
    if (step.stage !== "train") continue;
    if (typeof values.config === "string") {
      const bad = await o.checkConfig(values.config, (values.set as string[]) ?? [], at);
      if (bad) problems.push(bad);
    }
    if (values.engine === "torch" && !values["dry-run"] && await o.runs(step)) {
      try {
        await torchPython();
      } catch (e) {
        if (!(e instanceof UserError)) throw e;
        problems.push(`${at}: ${e.message}`);
      }
    }
  }
  return problems;
}

/**
 * The train step writes its TensorBoard logs into training_args.logging_dir. Like every output of
 * a pipeline they stay inside the run folder, whoever wrote the config or the --set.
 */
export function loggingDirProblem(
  config: unknown,
  runDir: string,
  origin: string,
): string | undefined {
  const args = isObject(config) && isObject(config.training_args) ? config.training_args : {};
  const dir = args.logging_dir;
  if (typeof dir !== "string" || dir === "" || isInside(resolve(dir), resolve(runDir))) return;
  return `${origin}: training_args.logging_dir ${dir} is outside the run folder ${runDir}, and a ` +
    `pipeline writes only inside it; leave logging_dir unset (the train step's runs/ folder) or ` +
    `give a path inside the run folder`;
}

/**
 * A train step's config as the step will read it (the run's effective config.yaml may not be
 * written yet: `pending`), with the step's own `--set`s: its problems, or a logging_dir outside
 * the run folder. undefined for a config an earlier step makes, or one that is missing (the
 * inputs check says so).
 */
export async function trainConfigProblem(
  cfgPath: string,
  sets: string[],
  at: string,
  o: {
    steps: ResolvedStep[];
    pending: Map<string, Uint8Array>;
    runDir: string;
    /** The run's effective config.yaml, if it has one: the config file and --sets it is made of. */
    effective?: { path: string; source: string; sets: string[] };
  },
): Promise<string | undefined> {
  if (producerOf(o.steps, cfgPath)) return undefined;
  const pending = o.pending.get(resolve(cfgPath));
  const text = pending
    ? new TextDecoder().decode(pending)
    : await Deno.readTextFile(cfgPath).catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    // Where the logging_dir comes from: the step's --set, the pipeline's, or the config file.
    const isLog = (t: string) => t.startsWith("training_args.logging_dir=");
    const effective = o.effective && resolve(o.effective.path) === resolve(cfgPath)
      ? o.effective
      : undefined;
    const set = sets.findLast(isLog) ?? effective?.sets.findLast(isLog);
    return loggingDirProblem(
      parseConfig(text, cfgPath, sets),
      o.runDir,
      set ? `${at}: --set ${set}` : `${at}: ${effective?.source ?? cfgPath}`,
    );
  } catch (e) {
    if (e instanceof UserError) return `${at}: ${e.message}`;
    throw e;
  }
}
