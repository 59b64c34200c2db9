/**
 * Runs a pipeline's steps in order, in this process (so a GPU is acquired
 * once), skipping each step whose inputs, flags and stage code are unchanged
 * since its last successful run. After a step succeeds a manifest
 * `<run dir>/.manifests/<step>.json` records those hashes and the hashes of
 * its outputs; a step that reruns changes its outputs' hashes, so exactly the
 * steps downstream of it rerun.
 */
import { dirname, join, relative, resolve } from "node:path";
import { writeFileAtomic, writeJsonAtomic } from "../atomic.ts";
import {
  describeOsError,
  InterruptedError,
  osError,
  osErrorCode,
  UsageError,
  UserError,
} from "../errors.ts";
import { asPipelineStep } from "../invocation.ts";
import { listCheckpoints } from "../train/checkpoint.ts";
import { describeHolder, LOCK_FILE, lockRunDir, type RunLock } from "./lock.ts";
import {
  checkExternalInputs,
  checkStepFlags,
  producerOf,
  type StepLine,
  trainConfigProblem,
} from "./preflight.ts";
import type { CommandSpec } from "../args.ts";
import {
  claimOutputDir,
  isInside,
  isMarkerInProgress,
  markerStage,
  markOutputDir,
  sameFile,
} from "../outdir.ts";
import { loadConfig, parseConfig, QUANTIZATION_KEYS, renderConfig } from "../config/config.ts";
import { parseOverride } from "../config/overrides.ts";
import { CodeHasher, Hasher } from "./hash.ts";
import {
  isOutputFlag,
  type ParamValue,
  type PipelineFile,
  readPipeline,
  type ResolvedStep,
  resolveParams,
  resolveSteps,
  UNREAD_KEYS,
} from "./pipeline.ts";
import { loadStage, stageFile, STAGES } from "../../stages/registry.ts";

export interface StageModule {
  main(args: string[]): Promise<number | void>;
  /** The stage's flags (the real stages have them; the runner checks each step's argv by them). */
  COMMAND?: CommandSpec;
}

/** How the runner finds a stage: its code (for the code hash) and a loader. */
export interface StageRef {
  file: string | URL;
  load(): Promise<StageModule>;
}

/** null: the stage is not implemented (yet). */
export type StageResolver = (stage: string) => Promise<StageRef | null>;

export interface RunOptions {
  /** `--set` overrides: params (`x=v`, `params.x=v`), step flags (`steps.S.args.K=v`), or config keys */
  sets?: string[];
  /** force this step and every later one */
  from?: string;
  /** run just this step (forced) */
  only?: string;
  /** print the plan, run nothing, write nothing */
  dryRun?: boolean;
  /** the run directory (the `out` param) */
  out?: string;
  /** run even in a non-empty directory that is not an earlier run folder */
  force?: boolean;
  /** resume the train step from its newest checkpoint, if its last run did not finish */
  resume?: boolean;
  /**
   * The command line that started the run: shown to a second run as the lock's
   * holder, and, with --resume added, as the way to go on after Ctrl-C.
   */
  command?: string[];
  /**
   * Ctrl-C in a step that does not handle it itself stops the process (exit
   * 130) after saying which step stopped and how to go on (the CLI).
   */
  handleSigint?: boolean;
  /** where stages come from (tests inject their own) */
  stages?: StageResolver;
  /** progress lines (default: console.log) */
  log?: (line: string) => void;
}

export type Action = "run" | "skip" | "not selected";

export interface StepReport {
  name: string;
  stage: string;
  action: Action;
  reason: string;
  inputs: [string, string][];
  outputs: [string, string][];
  argv: string[];
}

export interface RunResult {
  name: string;
  runDir: string;
  steps: StepReport[];
}

interface Manifest {
  version: 1;
  step: string;
  stage: string;
  argv: string[];
  code: string;
  inputs: Record<string, string | null>;
  outputs: Record<string, string | null>;
  finished: string;
}

/** Top-level config keys: a `--set` starting with one of these edits the training config. */
const CONFIG_ROOTS = [
  "data_config",
  "max_input_length",
  "max_output_length",
  "training_args",
  "peft_config",
  ...QUANTIZATION_KEYS,
];

/** Stages that handle Ctrl-C themselves (train saves a checkpoint and returns 130). */
const HANDLES_SIGINT = new Set(["train"]);

/** The stages of stages/registry.ts that a pipeline step may run (not chat). */
export const defaultStages: StageResolver = async (stage) => {
  if (!Object.hasOwn(STAGES, stage) || !STAGES[stage].step) return null;
  const file = stageFile(stage);
  try {
    await Deno.stat(file);
  } catch {
    return null;
  }
  return { file, load: () => loadStage(stage) };
};

/** Resolve `NAME` to `pipelines/NAME.yaml`; anything with a slash or a .yaml/.yml suffix is a path. */
export async function pipelinePath(nameOrFile: string): Promise<string> {
  if (nameOrFile.includes("/") || /\.ya?ml$/.test(nameOrFile)) return nameOrFile;
  const path = join("pipelines", `${nameOrFile}.yaml`);
  try {
    await Deno.stat(path);
    return path;
  } catch {
    const names: string[] = [];
    try {
      for await (const e of Deno.readDir("pipelines")) {
        if (e.name.endsWith(".yaml")) names.push(e.name.slice(0, -5));
      }
    } catch { /* no pipelines directory here */ }
    throw new UserError(
      `no pipeline "${nameOrFile}" (${path} not found)` +
        (names.length ? `; pipelines: ${names.sort().join(", ")}` : ""),
    );
  }
}

export async function runPipeline(path: string, opts: RunOptions = {}): Promise<RunResult> {
  const log = opts.log ?? ((l: string) => console.log(l));
  const stages = opts.stages ?? defaultStages;
  const file = await readPipeline(path);
  if (opts.from && opts.only) throw new UsageError("--from and --only cannot be used together");
  for (const s of [opts.from, opts.only]) {
    if (s && !file.steps.some((t) => t.name === s)) {
      throw new UserError(
        `${path}: no step named "${s}"; steps are: ${file.steps.map((t) => t.name).join(", ")}`,
      );
    }
  }

  // --set: params, step flags, or training-config keys
  const params: Record<string, ParamValue> = { out: "runs/${name}", ...file.params };
  const origins = new Map<string, string>();
  const configSets: string[] = [];
  const stepSets: { step: string; key: string; value: unknown; text: string }[] = [];
  for (const text of opts.sets ?? []) {
    const o = parseOverride(text);
    const [head, ...rest] = o.path;
    if (head === "steps") {
      if (rest.length !== 3 || rest[1] !== "args") {
        throw new UserError(`--set ${text}: step flags are set as steps.STEP.args.FLAG=value`);
      }
      const step = file.steps.find((s) => s.name === rest[0]);
      if (!step) throw new UserError(`--set ${text}: no step named "${rest[0]}"`);
      stepSets.push({ step: rest[0], key: rest[2], value: o.value, text });
      continue;
    }
    const param = head === "params" && rest.length === 1
      ? rest[0]
      : o.path.length === 1 && head in params
      ? head
      : undefined;
    if (param !== undefined) {
      if (!(param in params)) {
        throw new UserError(
          `--set ${text}: pipeline ${file.name} has no param "${param}"; params are: ${
            Object.keys(params).join(", ")
          }`,
        );
      }
      if (!isParamValue(o.value)) {
        throw new UserError(`--set ${text}: a param is a scalar or a list of scalars`);
      }
      params[param] = o.value as ParamValue;
      origins.set(param, `--set ${text}`);
      continue;
    }
    if (CONFIG_ROOTS.includes(head)) {
      configSets.push(text);
      continue;
    }
    throw new UserError(
      `--set ${text}: "${o.path.join(".")}" is neither a param of pipeline ${file.name} (${
        Object.keys(params).join(", ")
      }), a step flag (steps.STEP.args.FLAG) nor a training-config key (${
        CONFIG_ROOTS.join(", ")
      })`,
    );
  }
  if (opts.out !== undefined) {
    params.out = opts.out;
    origins.set("out", "--out");
  }
  for (const s of stepSets) {
    const step = file.steps.find((t) => t.name === s.step)!;
    if (!isParamValue(s.value)) {
      throw new UserError(`--set ${s.text}: a flag value is a scalar or a list of scalars`);
    }
    if (isOutputFlag(step.stage, s.key)) {
      throw new UserError(
        `--set ${s.text}: --${s.key} is where step "${s.step}" writes; outputs are set in the ` +
          `pipeline file, relative to the run folder (--out DIR moves the run folder)`,
      );
    }
    if (s.key in step.inputs || s.key in step.outputs) {
      throw new UserError(
        `--set ${s.text}: --${s.key} is a path of the step; set the param it uses`,
      );
    }
    step.args[s.key] = s.value;
  }

  const resolved = resolveParams(
    file,
    params,
    (k) => origins.get(k) ?? located(file, `params.${k}`),
  );
  const runDir = String(resolved.out);
  if (!runDir || resolved.out === null) throw new UserError(`${path}: the "out" param is empty`);

  const hasher = new Hasher();
  const code = new CodeHasher();

  // the training config: validated up front, and rewritten with --set overrides
  let config: unknown;
  const configFile = String(resolved.config);
  let pendingConfig: { path: string; text: string } | undefined;
  if ("config" in resolved && typeof resolved.config === "string") {
    const cfgPath = resolved.config;
    if (configSets.length > 0) {
      const text = await readText(cfgPath);
      const effective = renderConfig(text, cfgPath, configSets);
      const outPath = join(runDir, "config.yaml");
      if (await sameFile(cfgPath, outPath)) {
        throw new UserError(
          `--set ${configSets[0]}: the config ${cfgPath} is the run folder's config.yaml, which ` +
            `the run writes with the overrides applied; copy it elsewhere and set config to the copy`,
        );
      }
      pendingConfig = { path: outPath, text: effective };
      hasher.pending.set(resolve(outPath), new TextEncoder().encode(effective));
      resolved.config = outPath;
      config = parseConfig(effective, cfgPath);
    } else {
      config = await loadConfig(cfgPath);
    }
  } else if (configSets.length > 0) {
    throw new UserError(
      `--set ${configSets[0]}: pipeline ${file.name} has no "config" param to apply it to`,
    );
  }

  const steps = resolveSteps({ file, params: resolved, runDir, config });
  // Every input no step makes (data files, the model dir, the config) is checked
  // before anything runs or the run folder is made.
  const selected = (s: ResolvedStep) => !opts.only || s.name === opts.only;
  const problems = await checkExternalInputs(steps, {
    selected,
    pending: pendingConfig ? [pendingConfig.path] : [],
  });
  const fromIdx = opts.from ? steps.findIndex((s) => s.name === opts.from) : -1;
  const manifestDir = join(runDir, ".manifests");
  const forcedBy = (i: number) =>
    opts.only ? "--only" : fromIdx >= 0 && i >= fromIdx ? `--from ${opts.from}` : "";
  // So are the steps' flags, by each stage's own flag list.
  const lines: StepLine[] = [];
  for (const step of steps.filter(selected)) {
    const ref = await stages(step.stage);
    if (ref) lines.push({ step, spec: (await ref.load()).COMMAND, where: where(file, step) });
  }
  // Which steps will run, as a dry run plans it: made once, when a check needs it.
  let planned: Promise<Set<string>> | undefined;
  const plan = async () => {
    const will = new Set<string>();
    for (const [i, step] of steps.entries()) {
      if (!selected(step)) continue;
      const d = await decide(step, await stages(step.stage), {
        hasher,
        code,
        manifestDir,
        forced: forcedBy(i),
        dryRun: true,
        willRun: will,
        steps,
      });
      if (d.run) will.add(step.name);
    }
    return will;
  };
  const flagProblems = await checkStepFlags(lines, {
    // a dry run runs nothing
    runs: async (s) => !opts.dryRun && (await (planned ??= plan())).has(s.name),
    checkConfig: (cfgPath, sets, at) =>
      trainConfigProblem(cfgPath, sets, at, {
        steps,
        pending: hasher.pending,
        runDir,
        // the run's effective config.yaml: what it was made of, for the messages
        effective: pendingConfig &&
          { path: pendingConfig.path, source: configFile, sets: configSets },
      }),
  });
  // A problem of several lines (a config.json's) keeps them under its entry.
  const all = [...problems, ...flagProblems].map((p) => p.replaceAll("\n", "\n    "));
  if (all.length === 1) throw new UserError(`${all[0]}; nothing was run`);
  if (all.length > 1) {
    throw new UserError(
      `${all.length} ${flagProblems.length ? "problems in" : "inputs of"} pipeline ${file.name}${
        flagProblems.length ? "" : " are missing or unusable"
      }; nothing was run:\n  ${all.join("\n  ")}`,
    );
  }
  // Steps write only inside the run folder (resolveSteps); the folder itself must be new,
  // empty or an earlier run's, so a mistyped --out never writes among someone's files.
  await claimOutputDir(runDir, "pipeline", {
    flag: "run folder",
    who: "a pipeline run",
    force: opts.force,
    forceDoes: "run in it anyway",
    // An earlier run's, or one starting right now that has only marked the folder or taken its
    // lock: this run then goes on to the lock, whose message names that run.
    legacy: (entries) =>
      entries.includes(".manifests") ||
      entries.every((n) => n === LOCK_FILE || isMarkerInProgress(n)),
  });
  // --force runs in a folder the pipeline did not make: its own config.yaml there is the user's.
  if (pendingConfig && !(await isPipelineFolder(runDir))) {
    const exists = await Deno.lstat(pendingConfig.path).then(() => true, () => false);
    if (exists) {
      throw new UserError(
        `run folder ${runDir}: holds a config.yaml the pipeline did not write, which the run would ` +
          `replace with the config and its --set overrides; move it, or choose another --out`,
      );
    }
  }
  // --only runs one step on what earlier runs made: missing, it is said now (a dry run says it
  // too), before the run folder is made.
  const only = opts.only ? steps.find((s) => s.name === opts.only) : undefined;
  if (only) await checkInputsExist(only, steps, hasher, { madeOnly: true });
  const command = opts.command ?? ["deno", "task", "pipeline", path];

  log(
    `pipeline ${file.name} (${path}) → ${runDir}${opts.dryRun ? " [dry run: nothing is run]" : ""}`,
  );
  let lock: RunLock | undefined;
  if (!opts.dryRun) {
    try {
      await Deno.mkdir(runDir, { recursive: true });
    } catch (e) {
      throw osError(e, runDir, "create the run folder");
    }
    // The marker first: its text is the same for every run, so a second run that
    // rewrites it harms nothing, and the lock is taken before any step's output is.
    await markOutputDir(runDir, "pipeline");
    lock = await lockRunDir(runDir, command.map(shellQuote).join(" "));
    if (lock.stale) {
      log(
        `note: taking over the run lock of ${runDir} from ${
          describeHolder(lock.stale)
        }, which is no longer running`,
      );
    }
  }
  try {
    return await runSteps();
  } finally {
    lock?.release();
  }

  async function runSteps(): Promise<RunResult> {
    if (pendingConfig && !opts.dryRun) {
      const old = await Deno.readTextFile(pendingConfig.path).catch(() => undefined);
      if (old !== pendingConfig.text) await writeFileAtomic(pendingConfig.path, pendingConfig.text);
      hasher.pending.delete(resolve(pendingConfig.path));
      hasher.forget(pendingConfig.path);
    }

    const reports: StepReport[] = [];
    const willRun = new Set<string>();
    /** The run folder with links resolved, once a step writes into it. */
    let realRun: string | undefined;
    let ran = 0;
    let skipped = 0;
    for (const [i, step] of steps.entries()) {
      const report: StepReport = {
        name: step.name,
        stage: step.stage,
        action: "run",
        reason: "",
        inputs: step.inputs,
        outputs: step.outputs,
        argv: step.argv,
      };
      reports.push(report);
      if (opts.only && step.name !== opts.only) {
        report.action = "not selected";
        report.reason = `--only ${opts.only}`;
        if (opts.dryRun) printPlan(log, report);
        continue;
      }
      const ref = await stages(step.stage);
      const decision = await decide(step, ref, {
        hasher,
        code,
        manifestDir,
        forced: forcedBy(i),
        dryRun: !!opts.dryRun,
        willRun,
        steps,
      });
      report.action = decision.run ? "run" : "skip";
      report.reason = decision.reason;
      if (opts.dryRun) {
        if (decision.run) willRun.add(step.name);
        printPlan(log, report);
        continue;
      }
      if (!decision.run) {
        log(`skip ${step.name} (${decision.reason})`);
        skipped++;
        continue;
      }
      if (!ref) {
        throw new UserError(
          `step "${step.name}" (${
            where(file, step)
          }): stage "${step.stage}" is not implemented yet`,
        );
      }
      await checkInputsExist(step, steps, hasher);
      // --resume continues a train step whose last run did not finish (it left no
      // manifest) from its newest checkpoint. The flag is added to this run's argv
      // only, not to the manifest: a resumed run ends where an uninterrupted one
      // would, so the next run skips the step as usual.
      let argv = step.argv;
      let resuming = "";
      if (opts.resume && step.stage === "train") {
        const out = step.outputs.find(([k]) => k === "out")?.[1];
        const newest = out ? (await listCheckpoints(out)).at(-1) : undefined;
        if (decision.reason !== "no previous run") {
          resuming = `; --resume: its last run finished, so it trains from the start`;
        } else if (newest) {
          argv = [...step.argv, "--resume", "yes"];
          resuming = `; resuming from ${newest.dir} (--resume)`;
        } else {
          resuming = `; --resume: no checkpoint in ${out}, so it trains from the start`;
        }
      }
      log(`run ${step.name} (${decision.reason}${resuming})`);
      log(`  $ ${step.stage} ${argv.map(shellQuote).join(" ")}`);
      const manifestPath = join(manifestDir, `${step.name}.json`);
      await Deno.remove(manifestPath).catch(() => {});
      for (const [k, p] of step.outputs) {
        await Deno.mkdir(dirname(p), { recursive: true }).catch((e) => {
          throw osError(e, dirname(p), "create the directory");
        });
        // Outputs stay inside the run folder also through links: a symlink there to a folder
        // elsewhere would have the step write, and replace, files outside it.
        realRun ??= await Deno.realPath(runDir);
        const realParent = await Deno.realPath(dirname(p));
        if (!isInside(realParent, realRun)) {
          throw new UserError(
            `step "${step.name}": output --${k} ${p} leads outside the run folder (through a ` +
              `link, to ${realParent}); remove the link or choose another --out`,
          );
        }
      }
      const t0 = performance.now();
      let rc: number | void;
      // Ctrl-C in a step that does not handle it: its outputs are written atomically,
      // so stopping now loses only this step's work; say how the run goes on.
      const onSigint = () => {
        console.error(
          `\ninterrupted in step "${step.name}"; the steps before it are kept. Go on with: ${
            command.map(shellQuote).join(" ")
          }`,
        );
        lock?.release();
        Deno.exit(130);
      };
      const ownSigint = HANDLES_SIGINT.has(step.stage);
      const listen = !!opts.handleSigint && !ownSigint;
      if (listen) Deno.addSignalListener("SIGINT", onSigint);
      // A stage that handles Ctrl-C may still finish (train stopped during its last step): the
      // pipeline then stops after it, as asked.
      let sigintSeen = false;
      const noteSigint = () => sigintSeen = true;
      const note = !!opts.handleSigint && ownSigint;
      if (note) Deno.addSignalListener("SIGINT", noteSigint);
      try {
        const mod = await ref.load();
        rc = await asPipelineStep(
          { pipeline: file.name, step: step.name },
          () => mod.main([...argv]),
        );
      } catch (e) {
        if (e instanceof UserError) {
          throw new UserError(`step "${step.name}" (stage ${step.stage}) failed: ${e.message}`);
        }
        if (osErrorCode(e)) {
          throw new UserError(
            `step "${step.name}" (stage ${step.stage}) failed: ${describeOsError(e as Error)}`,
          );
        }
        console.error(`step "${step.name}" (stage ${step.stage}) crashed:`);
        throw e;
      } finally {
        if (listen) Deno.removeSignalListener("SIGINT", onSigint);
        if (note) Deno.removeSignalListener("SIGINT", noteSigint);
        for (const [, p] of step.outputs) hasher.forget(p);
      }
      if (rc === 130 && ownSigint) {
        const resume = [...command.filter((a) => a !== "--resume"), "--resume"];
        throw new InterruptedError(
          `pipeline ${file.name}: step "${step.name}" was interrupted and saved a checkpoint; ` +
            `resume it with: ${resume.map(shellQuote).join(" ")}`,
        );
      }
      if (rc !== undefined && rc !== 0) {
        throw new UserError(
          `step "${step.name}" (stage ${step.stage}) failed with exit code ${rc}`,
        );
      }
      const missing = [];
      for (const [k, p] of step.outputs) {
        if (await hasher.hash(p) === null) missing.push(`--${k} ${p}`);
      }
      if (missing.length > 0) {
        throw new UserError(
          `step "${step.name}" (stage ${step.stage}) finished but did not write ${
            missing.join(", ")
          }`,
        );
      }
      const seconds = (performance.now() - t0) / 1000;
      await writeJsonAtomic(manifestPath, {
        ...await manifestOf(step, ref!, hasher, code),
        seconds, // read by the report stage; not compared when deciding to skip
      });
      log(`  done ${step.name} in ${seconds.toFixed(1)} s`);
      ran++;
      if (sigintSeen) {
        throw new InterruptedError(
          `pipeline ${file.name}: interrupted; step "${step.name}" had finished and is kept. ` +
            `Go on with: ${command.map(shellQuote).join(" ")}`,
        );
      }
    }
    if (!opts.dryRun) log(`pipeline ${file.name}: ${ran} run, ${skipped} skipped`);
    return { name: file.name, runDir, steps: reports };
  }
}

/**
 * Every input of `step` is there (`madeOnly`: those another step makes; the
 * others are checked up front): a missing one names the step that makes it.
 */
async function checkInputsExist(
  step: ResolvedStep,
  steps: ResolvedStep[],
  hasher: Hasher,
  o: { madeOnly?: boolean } = {},
): Promise<void> {
  for (const [k, p] of step.inputs) {
    const from = producerOf(steps, p);
    if ((from || !o.madeOnly) && await hasher.hash(p) === null) {
      throw new UserError(
        `step "${step.name}": input ${k ? `--${k} ` : ""}${p} does not exist` +
          (from ? ` (made by step "${from}"; run it first, or use --from ${from})` : ""),
      );
    }
  }
}

/** Whether `dir` is an earlier pipeline run's folder (its marker, or from before markers, .manifests). */
async function isPipelineFolder(dir: string): Promise<boolean> {
  if ((await markerStage(dir)) === "pipeline") return true;
  return await Deno.stat(join(dir, ".manifests")).then((s) => s.isDirectory, () => false);
}

async function manifestOf(
  step: ResolvedStep,
  ref: StageRef,
  hasher: Hasher,
  code: CodeHasher,
): Promise<Manifest> {
  const inputs: Record<string, string | null> = {};
  for (const [k, p] of step.inputs) {
    const unread = UNREAD_KEYS[step.stage]?.[k];
    inputs[`${k || "_"} ${p}`] = unread
      ? await hasher.hashWithout(p, unread)
      : await hasher.hash(p);
  }
  const outputs: Record<string, string | null> = {};
  for (const [k, p] of step.outputs) outputs[`${k} ${p}`] = await hasher.hash(p);
  return {
    version: 1,
    step: step.name,
    stage: step.stage,
    argv: step.argv,
    code: await code.hash(ref.file),
    inputs,
    outputs,
    finished: new Date().toISOString(),
  };
}

interface DecideContext {
  hasher: Hasher;
  code: CodeHasher;
  manifestDir: string;
  forced: string;
  dryRun: boolean;
  /** dry run: steps planned to run */
  willRun: Set<string>;
  steps: ResolvedStep[];
}

async function decide(
  step: ResolvedStep,
  ref: StageRef | null,
  ctx: DecideContext,
): Promise<{ run: boolean; reason: string }> {
  if (!ref) return { run: true, reason: `stage "${step.stage}" is not implemented yet` };
  if (ctx.forced) return { run: true, reason: `forced by ${ctx.forced}` };
  if (ctx.dryRun) {
    const up = step.inputs.map(([, p]) => producerOf(ctx.steps, p)).find((s) =>
      s && ctx.willRun.has(s)
    );
    if (up) return { run: true, reason: `reads the outputs of "${up}", which runs first` };
  }
  let old: Manifest;
  try {
    old = JSON.parse(await Deno.readTextFile(join(ctx.manifestDir, `${step.name}.json`)));
  } catch {
    return { run: true, reason: "no previous run" };
  }
  for (const [, p] of step.inputs) {
    if (await ctx.hasher.hash(p) === null) {
      return { run: true, reason: `input ${p} does not exist` };
    }
  }
  const now = await manifestOf(step, ref, ctx.hasher, ctx.code);
  if (old.version !== 1 || old.stage !== step.stage) return { run: true, reason: "stage changed" };
  const changedInputs = Object.keys(now.inputs).filter((k) => now.inputs[k] !== old.inputs?.[k]);
  if (changedInputs.length > 0) {
    const names = changedInputs.map((k) => k.slice(k.indexOf(" ") + 1));
    return {
      run: true,
      reason: JSON.stringify(Object.keys(now.inputs).sort()) ===
          JSON.stringify(Object.keys(old.inputs ?? {}).sort())
        ? `input changed: ${names.join(", ")}`
        : "inputs changed",
    };
  }
  if (JSON.stringify(old.argv) !== JSON.stringify(now.argv)) {
    return { run: true, reason: `flags changed: ${diffArgv(old.argv ?? [], now.argv)}` };
  }
  if (old.code !== now.code) return { run: true, reason: `code of stage ${step.stage} changed` };
  for (const [k, p] of step.outputs) {
    const key = `${k} ${p}`;
    if (now.outputs[key] === null) return { run: true, reason: `output ${p} is missing` };
    if (now.outputs[key] !== old.outputs?.[key]) {
      return { run: true, reason: `output ${p} changed since the last run` };
    }
  }
  return { run: false, reason: "unchanged" };
}

function diffArgv(a: string[], b: string[]): string {
  const sa = new Set(a.map((x, i) => `${i}:${x}`));
  const changed = b.filter((x, i) => !sa.has(`${i}:${x}`));
  const text = changed.slice(0, 4).join(" ");
  return text || "removed " + a.filter((x) => !b.includes(x)).slice(0, 4).join(" ");
}

function printPlan(log: (l: string) => void, r: StepReport): void {
  log(`${r.action === "not selected" ? "-   " : r.action.padEnd(4)} ${r.name} (${r.reason})`);
  if (r.action === "not selected") return;
  for (const [k, p] of r.inputs) log(`       in  ${k ? `--${k} ` : ""}${p}`);
  for (const [k, p] of r.outputs) log(`       out --${k} ${p}`);
  log(`       $ ${r.stage} ${r.argv.map(shellQuote).join(" ")}`);
}

function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}

function where(file: PipelineFile, step: ResolvedStep): string {
  return `${relative(".", file.path) || file.path}:${step.line}`;
}

function located(file: PipelineFile, key: string): string {
  const line = file.lines.get(key);
  return line === undefined ? file.path : `${file.path}:${line}`;
}

async function readText(path: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`${path}: no such config file`);
    throw e;
  }
}

function isParamValue(v: unknown): boolean {
  const scalar = (x: unknown) => x === null || ["string", "number", "boolean"].includes(typeof x);
  return scalar(v) || (Array.isArray(v) && v.every(scalar));
}
