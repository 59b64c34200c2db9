/**
 * Checkpoints and final outputs of a run.
 *
 * OUT/checkpoint-{step}/ is built under a temporary name and renamed when
 * complete (lib/atomic.ts writeDirAtomic), so a killed run never leaves a
 * directory that looks like a checkpoint. It holds:
 *   - the trainable tensors in their user-facing format (ModelFiles: a PEFT
 *     LoRA adapter, a P-Tuning v2 prefix, or a full HF model dir);
 *   - optimizer.safetensors: AdamW moments, `{name}.exp_avg` / `{name}.exp_avg_sq`;
 *   - scheduler.json: the schedule and how many steps it has taken;
 *   - rng_state.json: seed, shuffle flag and the data position of the next step
 *     (orders and dropout masks are functions of seed, epoch and step, so this
 *     is all the randomness there is to restore);
 *   - resume_state.json: what continuing the log needs (the partly filled
 *     logging window) and the data/batching the run was made with;
 *   - trainer_state.json, as HF Trainer writes it;
 *   - training_args.json;
 *   - checkpoint_complete.json, written last: every file above with its size.
 * A checkpoint counts as complete only when that marker is there and every
 * file it lists has its size (checkpoints from before the marker: when all
 * the state files are there). Every file is fsynced before the rename that
 * publishes the directory (lib/atomic.ts), and rotation renames a checkpoint
 * aside before deleting it, so none is ever half-written or half-deleted
 * under its name.
 * The final save writes the tensors, trainer_state.json and training_args.json
 * into OUT itself (metrics.jsonl is already there).
 */
import { basename, join } from "node:path";
import { removeDirAtomic, writeDirAtomic, writeFileAtomic, writeJsonAtomic } from "../atomic.ts";
import { stepCounts } from "../config/config.ts";
import { PEFT_CONFIG, PEFT_WEIGHTS, PREFIX_CONFIG, PREFIX_WEIGHTS } from "../model/adapter_dir.ts";
import { osError, UserError } from "../errors.ts";
import type { TrainArgs } from "./args.ts";
import { type F32Tensor, readSafetensorsF32, SafetensorsFile } from "../safetensors/read.ts";
import { Checkpoint } from "../safetensors/checkpoint.ts";
import { writeSafetensors, writeSafetensorsF32 } from "../safetensors/write.ts";

/** One log_history entry: `{step, epoch, loss, learning_rate, grad_norm}`, `{step, epoch, eval_loss}`, or the run summary. */
export interface LogEntry {
  step: number;
  epoch: number;
  loss?: number;
  grad_norm?: number;
  learning_rate?: number;
  eval_loss?: number;
  [key: string]: number | undefined;
}

/** How the trainable tensors are stored for users (and read back on resume). */
export interface ModelFiles {
  kind: string;
  /** Write the tensors (and their config) into `dir`, each file atomically. */
  write(dir: string, params: Map<string, Float32Array>): Promise<void>;
  /** Read back what `write` wrote. */
  read(dir: string): Promise<Map<string, Float32Array>>;
}

/** A sum of per-step losses and how many steps it holds. */
export interface LossTotal {
  lossSum: number;
  steps: number;
}

export interface CheckpointState {
  globalStep: number;
  epoch: number;
  maxSteps: number;
  logHistory: LogEntry[];
  window: { lossSum: number; steps: number; skipped: number };
  /** Every trained step's loss so far, for the summary's train_loss (HF's mean over all steps). */
  lossTotal: LossTotal;
  lastLoggedStep: number;
  data: Record<string, unknown>;
  args: TrainArgs;
  logEvery: number;
  saveEvery: number;
  evalEvery: number;
  lr: { type: string; base: number; next: number };
  configEcho: Record<string, unknown>;
}

/** What a checkpoint gives back to resume from: the run's state as saved, tensors and moments. */
export interface LoadedCheckpoint extends
  Pick<
    CheckpointState,
    | "globalStep"
    | "epoch"
    | "maxSteps"
    | "logHistory"
    | "window"
    | "lossTotal"
    | "lastLoggedStep"
    | "data"
  > {
  dir: string;
  params: Map<string, Float32Array>;
  moments: Map<string, { m: Float32Array; v: Float32Array }>;
}

const CKPT = /^checkpoint-(\d+)$/;

/** Written last into a checkpoint: its files and their sizes. */
export const COMPLETE_MARKER = "checkpoint_complete.json";

/** The state files every checkpoint has (how one from before COMPLETE_MARKER is judged). */
const STATE_FILES = [
  "optimizer.safetensors",
  "scheduler.json",
  "rng_state.json",
  "resume_state.json",
  "trainer_state.json",
  "training_args.json",
];

/** Record `dir`'s files and sizes in COMPLETE_MARKER, the last file written. */
async function markComplete(dir: string, step: number): Promise<void> {
  const files: Record<string, number> = {};
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && !e.name.startsWith(".")) {
      files[e.name] = (await Deno.stat(join(dir, e.name))).size;
    }
  }
  await writeJsonAtomic(join(dir, COMPLETE_MARKER), { step, files });
}

/** Whether checkpoint `dir` is complete (see the module comment). */
async function isComplete(dir: string): Promise<boolean> {
  let files: Record<string, number>;
  try {
    files = JSON.parse(await Deno.readTextFile(join(dir, COMPLETE_MARKER))).files;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) return false;
    // Written before the marker existed: complete when every state file is there.
    for (const f of STATE_FILES) if (!(await exists(join(dir, f)))) return false;
    return true;
  }
  if (typeof files !== "object" || files === null) return false;
  for (const [name, size] of Object.entries(files)) {
    try {
      if ((await Deno.stat(join(dir, name))).size !== size) return false;
    } catch {
      return false;
    }
  }
  return true;
}

/** HF's trainer_state.json (keys sorted, as HF's json.dumps(sort_keys=True)). */
export function trainerStateJson(s: CheckpointState): Record<string, unknown> {
  const state: Record<string, unknown> = {
    best_global_step: null,
    best_metric: null,
    best_model_checkpoint: null,
    epoch: s.epoch,
    eval_steps: s.evalEvery > 0 ? s.evalEvery : s.logEvery > 0 ? s.logEvery : 500,
    global_step: s.globalStep,
    is_hyper_param_search: false,
    is_local_process_zero: true,
    is_world_process_zero: true,
    log_history: s.logHistory,
    logging_steps: s.logEvery > 0 ? s.logEvery : 500,
    max_steps: s.maxSteps,
    num_input_tokens_seen: 0,
    num_train_epochs: s.args.maxSteps > 0
      ? Math.ceil(s.maxSteps / Math.max(1, stepsPerEpoch(s)))
      : Math.ceil(s.args.numTrainEpochs),
    save_steps: s.saveEvery > 0 ? s.saveEvery : 500,
    stateful_callbacks: {
      TrainerControl: {
        args: {
          should_epoch_stop: false,
          should_evaluate: false,
          should_log: false,
          should_save: true,
          should_training_stop: s.globalStep >= s.maxSteps,
        },
        attributes: {},
      },
    },
    total_flos: 0,
    train_batch_size: s.args.batchSize,
    trial_name: null,
    trial_params: null,
  };
  return state;
}

function stepsPerEpoch(s: CheckpointState): number {
  return stepCounts({
    numExamples: s.data.num_records as number,
    batchSize: s.args.batchSize,
    accumulation: s.args.accumulation,
    dropLast: s.args.dropLast,
    maxSteps: s.args.maxSteps,
    numTrainEpochs: s.args.numTrainEpochs,
  }).updatesPerEpoch;
}

async function writeStateFiles(dir: string, s: CheckpointState): Promise<void> {
  await writeJsonAtomic(join(dir, "trainer_state.json"), trainerStateJson(s));
  await writeJsonAtomic(join(dir, "training_args.json"), { ...s.args, ...s.configEcho });
}

/** One tensor's AdamW moments, fetched on demand. */
export interface LazyMoments {
  name: string;
  size: number;
  m: () => Promise<Float32Array>;
  v: () => Promise<Float32Array>;
}

/** Write OUT/checkpoint-{step}/ atomically; returns its path. */
export async function writeCheckpoint(
  outDir: string,
  s: CheckpointState,
  params: Map<string, Float32Array>,
  /** null: save_only_model, a checkpoint without the optimizer state (it cannot be resumed) */
  moments: readonly LazyMoments[] | null,
  files: ModelFiles,
): Promise<string> {
  const dir = join(outDir, `checkpoint-${s.globalStep}`);
  await writeDirAtomic(dir, async (tmp) => {
    await files.write(tmp, params);
    // Each moment is read back from the device when its turn comes, so a full
    // model's optimizer state never sits in host memory whole.
    if (moments) {
      await writeSafetensors(
        join(tmp, "optimizer.safetensors"),
        moments.flatMap((mo) => [
          { name: `${mo.name}.exp_avg`, dtype: "F32" as const, shape: [mo.size], data: mo.m },
          { name: `${mo.name}.exp_avg_sq`, dtype: "F32" as const, shape: [mo.size], data: mo.v },
        ]),
      );
    }
    await writeJsonAtomic(join(tmp, "scheduler.json"), {
      lr_scheduler_type: s.lr.type,
      base_lrs: [s.lr.base],
      last_epoch: s.globalStep,
      _step_count: s.globalStep + 1,
      _last_lr: [s.lr.next],
    });
    await writeJsonAtomic(join(tmp, "rng_state.json"), {
      seed: s.args.seed,
      shuffle: s.args.shuffle,
      order: s.args.shuffle
        ? "Fisher-Yates over record indices, generator seeded from (seed, epoch)"
        : "file order",
      dropout: "counter-based, seeded from (seed, optimizer step, micro-batch)",
      next_step: s.globalStep,
    });
    await writeJsonAtomic(join(tmp, "resume_state.json"), {
      global_step: s.globalStep,
      epoch: s.epoch,
      max_steps: s.maxSteps,
      logging_window: s.window,
      loss_total: s.lossTotal,
      last_logged_step: s.lastLoggedStep,
      data: s.data,
    });
    await writeStateFiles(tmp, s);
    await markComplete(tmp, s.globalStep);
  });
  return dir;
}

/** The final save into OUT itself. */
export async function writeFinal(
  outDir: string,
  s: CheckpointState,
  params: Map<string, Float32Array>,
  files: ModelFiles,
): Promise<void> {
  await files.write(outDir, params);
  await writeStateFiles(outDir, s);
}

/** Complete checkpoints in `outDir`, oldest first. */
export async function listCheckpoints(
  outDir: string,
): Promise<Array<{ step: number; dir: string }>> {
  const out: Array<{ step: number; dir: string }> = [];
  try {
    for await (const e of Deno.readDir(outDir)) {
      const m = CKPT.exec(e.name);
      if (!m || !e.isDirectory) continue;
      const dir = join(outDir, e.name);
      if (await isComplete(dir)) out.push({ step: Number(m[1]), dir });
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out.sort((a, b) => a.step - b.step);
}

export async function findCheckpoint(outDir: string, which: "yes" | number): Promise<string> {
  const all = await listCheckpoints(outDir);
  if (all.length === 0) {
    throw new UserError(`cannot resume: ${outDir} holds no complete checkpoint-N directory`);
  }
  if (which === "yes") return all[all.length - 1].dir;
  const hit = all.find((c) => c.step === which);
  if (!hit) {
    throw new UserError(
      `cannot resume: ${outDir}/checkpoint-${which} does not exist or is incomplete; available: ${
        all.map((c) => c.step).join(", ")
      }`,
    );
  }
  return hit.dir;
}

/** Whether something is at `path`. */
function exists(path: string): Promise<boolean> {
  return Deno.stat(path).then(() => true, () => false);
}

/** The trainable tensors' file of each kind of run, as its ModelFiles writes them. */
const KIND_FILES: [kind: string, file: string, what: string][] = [
  ["lora", PEFT_WEIGHTS, "a LoRA"],
  ["prefix", PREFIX_WEIGHTS, "a P-Tuning v2"],
  ["full", "model.safetensors", "a full fine-tuning"],
  ["full", "model.safetensors.index.json", "a full fine-tuning"],
];

/**
 * A run continues from checkpoint `dir` only as the kind of run that made it:
 * one of another kind (its peft_config changed) is refused naming both,
 * rather than failing on the file this kind reads.
 */
async function checkSameKind(dir: string, kind: string): Promise<void> {
  const has = (f: string) => exists(join(dir, f));
  const found = [];
  for (const k of KIND_FILES) if (await has(k[1])) found.push(k);
  if (found.length === 0 || found.some(([k]) => k === kind)) return;
  const what = (k: string) => KIND_FILES.find(([x]) => x === k)?.[2] ?? k;
  throw new UserError(
    `${dir}: cannot resume: it is ${what(found[0][0])} checkpoint (${found[0][1]}), the config ` +
      `trains ${what(kind)} run (${
        kind === "full" ? "no peft_config" : "its peft_config"
      }); resume with that run's config, or start a new run`,
  );
}

/**
 * A checkpoint saved with save_only_model has no optimizer state to resume
 * from; DeepSpeed's own (global_stepN/ and `latest`) only the torch engine
 * reads. Said so, with how to start a new run from its weights instead.
 */
async function checkHasOptimizer(dir: string, kind: string, engine: Engine): Promise<void> {
  const has = (f: string) => exists(join(dir, f));
  if (await has("optimizer.safetensors")) return;
  const deepspeed = await has("latest");
  if (deepspeed && engine === "torch") return;
  const instead = kind === "full"
    ? `start a new run from its weights with --model ${dir} instead`
    : `start a new run from its weights with --init-adapter ${dir} instead`;
  throw new UserError(
    deepspeed
      ? `${dir}: cannot resume on the WebGPU engine: its optimizer state is DeepSpeed's ` +
        `(global_stepN/, latest), which only the torch engine reads; resume with --engine torch, ` +
        `or ${instead}`
      : `${dir}: cannot resume: it holds no optimizer state (optimizer.safetensors; saved with ` +
        `save_only_model?); ${instead}`,
  );
}

/** The engine that resumes: the torch engine also reads DeepSpeed's own optimizer state. */
export type Engine = "webgpu" | "torch";

/**
 * What a run's record order depends on, kept in its checkpoints
 * (resume_state.json `data`) by both engines alike, so that either resumes
 * the other's: a resume needs the same (checkResumable).
 */
export function resumeData(o: {
  records: number;
  /** RecordsDigest of the train records (lib/train/data.ts) */
  digest: string;
  /** the records one optimizer micro-step takes across all processes */
  batch: number;
  accumulation: number;
  seed: number;
  shuffle: boolean;
  dropLast: boolean;
}): Record<string, unknown> {
  return {
    num_records: o.records,
    train_batch_size: o.batch,
    gradient_accumulation_steps: o.accumulation,
    seed: o.seed,
    shuffle: o.shuffle,
    drop_last: o.dropLast,
    records_sha256: o.digest,
  };
}

/**
 * Whether a run may continue from checkpoint `dir`, checked before anything is
 * loaded, in one order for both engines: a checkpoint of the same kind of run
 * (LoRA, P-Tuning v2, full), with optimizer state, made on the same data and
 * batching, with the same schedule. Each refusal names the checkpoint and why.
 * Gives back its resume_state.json, read for the data check.
 */
export async function checkResumable(
  dir: string,
  o: {
    kind: string;
    engine: Engine;
    data: Record<string, unknown>;
    schedule: { lr_scheduler_type: string; learning_rate: number };
  },
): Promise<Record<string, unknown>> {
  await checkSameKind(dir, o.kind);
  await checkHasOptimizer(dir, o.kind, o.engine);
  const rs = await readJson(join(dir, "resume_state.json"));
  checkSameData(dir, (rs.data ?? {}) as Record<string, unknown>, o.data);
  await checkSchedule(dir, o.schedule);
  return rs;
}

/**
 * A run continues from `dir` only on the data and batching that checkpoint was
 * made with (its resume_state.json `data`), as an uninterrupted run would: the
 * restored step counts records of that order. A key the checkpoint predates
 * (records_sha256) is not checked.
 */
function checkSameData(
  dir: string,
  was: Record<string, unknown>,
  now: Record<string, unknown>,
): void {
  for (const [k, v] of Object.entries(now)) {
    if (was[k] === v || (k === "records_sha256" && was[k] === undefined)) continue;
    const what = k === "records_sha256"
      ? "the train records differ from that run's (other content, or another order)"
      : `${k} was ${JSON.stringify(was[k])} in that run, now ${JSON.stringify(v)}${
        k === "train_batch_size" ? " (per-device batch × processes)" : ""
      }`;
    throw new UserError(
      `${dir}: cannot resume: ${what}; resuming needs the same data and batching`,
    );
  }
}

/**
 * A run continues from `dir` only with the schedule that checkpoint was made
 * with: the restored step and moments belong to that learning rate and
 * scheduler (HF Trainer would silently keep the checkpoint's rate; a changed
 * one is refused, naming the key). Checkpoints without scheduler.json pass.
 */
async function checkSchedule(
  dir: string,
  now: { lr_scheduler_type: string; learning_rate: number },
): Promise<void> {
  let sch: Record<string, unknown>;
  try {
    sch = JSON.parse(await Deno.readTextFile(join(dir, "scheduler.json")));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    if (e instanceof SyntaxError) {
      throw new UserError(`${join(dir, "scheduler.json")}: not valid JSON`);
    }
    throw e;
  }
  const was = {
    lr_scheduler_type: sch.lr_scheduler_type,
    learning_rate: Array.isArray(sch.base_lrs) ? sch.base_lrs[0] : undefined,
  };
  for (const k of ["lr_scheduler_type", "learning_rate"] as const) {
    if (was[k] !== undefined && was[k] !== now[k]) {
      throw new UserError(
        `${dir}: cannot resume: training_args.${k} was ${JSON.stringify(was[k])} in that run, now ${
          JSON.stringify(now[k])
        }; a resumed run keeps its schedule (to change it, start a new run with --init-adapter ${dir})`,
      );
    }
  }
}

/**
 * Before a run continues from checkpoint-`step`: the complete checkpoints past
 * it are those of the run that went on from there, which this one replaces.
 * Each is renamed `superseded-checkpoint-M` — kept, not deleted — so that
 * rotation cannot drop this run's own checkpoints for them and a later
 * `--resume yes` cannot pick one; a note says so (both engines).
 */
export async function setAsideNewer(outDir: string, step: number): Promise<void> {
  const moved: string[] = [];
  for (const c of await listCheckpoints(outDir)) {
    if (c.step <= step) continue;
    let to = join(outDir, `superseded-checkpoint-${c.step}`);
    for (let k = 2; await exists(to); k++) {
      to = join(outDir, `superseded-checkpoint-${c.step}-${k}`);
    }
    await Deno.rename(c.dir, to);
    moved.push(basename(to));
  }
  if (moved.length) {
    console.error(
      `note: resuming from step ${step}: the later checkpoints of the run it replaces ` +
        `are kept as ${moved.join(", ")}`,
    );
  }
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`${path}: missing`);
    if (e instanceof SyntaxError) throw new UserError(`${path}: not valid JSON`);
    throw e;
  }
}

export async function readCheckpoint(dir: string, files: ModelFiles): Promise<LoadedCheckpoint> {
  const rs = await readJson(join(dir, "resume_state.json"));
  const ts = await readJson(join(dir, "trainer_state.json"));
  const opt = await readSafetensorsF32(join(dir, "optimizer.safetensors"));
  const moments = new Map<string, { m: Float32Array; v: Float32Array }>();
  for (const [key, t] of opt) {
    const m = /^(.*)\.exp_avg(_sq)?$/.exec(key);
    if (!m) throw new UserError(`${dir}/optimizer.safetensors: unexpected tensor ${key}`);
    const e = moments.get(m[1]) ?? { m: new Float32Array(0), v: new Float32Array(0) };
    if (m[2]) e.v = t.data;
    else e.m = t.data;
    moments.set(m[1], e);
  }
  return {
    dir,
    globalStep: rs.global_step as number,
    epoch: rs.epoch as number,
    maxSteps: rs.max_steps as number,
    logHistory: (ts.log_history ?? []) as LogEntry[],
    window: rs.logging_window as LoadedCheckpoint["window"],
    lossTotal: lossTotalOf(rs, (ts.log_history ?? []) as LogEntry[]),
    lastLoggedStep: rs.last_logged_step as number,
    data: rs.data as Record<string, unknown>,
    params: await files.read(dir),
    moments,
  };
}

/**
 * The loss total a checkpoint carries; one saved before it was kept is rebuilt
 * from the logged means and the open window (exact unless steps were skipped).
 */
export function lossTotalOf(rs: Record<string, unknown>, history: LogEntry[]): LossTotal {
  const t = rs.loss_total as LossTotal | undefined;
  if (t && Number.isFinite(t.lossSum) && Number.isFinite(t.steps)) return t;
  const w = rs.logging_window as LossTotal;
  let lossSum = w.lossSum, steps = w.steps, prev = 0;
  for (const e of history) {
    if (e.loss === undefined || !Number.isFinite(e.loss)) continue;
    lossSum += e.loss * (e.step - prev);
    steps += e.step - prev;
    prev = e.step;
  }
  return { lossSum, steps };
}

/**
 * save_total_limit: delete the oldest complete checkpoints beyond `limit`,
 * each renamed aside first (a kill mid-delete leaves a temporary, not a
 * checkpoint missing files).
 */
export async function rotateCheckpoints(outDir: string, limit: number): Promise<void> {
  const all = await listCheckpoints(outDir);
  for (const c of all.slice(0, Math.max(0, all.length - limit))) await removeDirAtomic(c.dir);
}

/** Remove temporaries a killed run left behind (`.checkpoint-N.<pid>.<rand>.tmp`). */
export async function removeStaleTemps(outDir: string): Promise<void> {
  for await (const e of Deno.readDir(outDir)) {
    if (
      e.name.startsWith(".") && e.name.endsWith(".tmp") &&
      /checkpoint-|\.json|\.safetensors/.test(e.name)
    ) {
      await Deno.remove(join(outDir, e.name), { recursive: true }).catch(() => {});
    }
  }
}

/**
 * The output dir before a run: created; temporaries of a killed run removed;
 * for a fresh run, an earlier run's checkpoints refused, or with
 * `overwrite` (HF overwrite_output_dir) removed — each renamed aside before
 * it is deleted, so none is ever left half-deleted under its name.
 */
export async function prepareOutDir(
  outDir: string,
  fresh: boolean,
  overwrite: boolean,
): Promise<void> {
  try {
    await Deno.mkdir(outDir, { recursive: true });
  } catch (e) {
    throw osError(e, outDir, "create the output dir");
  }
  await removeStaleTemps(outDir);
  if (!fresh) return;
  const old = await listCheckpoints(outDir);
  if (old.length > 0 && !overwrite) {
    throw new UserError(
      `${outDir} already holds checkpoints of an earlier run (${
        old.map((c) => `checkpoint-${c.step}`).join(", ")
      }); continue it with --resume yes, choose another output dir, or set training_args.overwrite_output_dir=true to delete them`,
    );
  }
  for (const c of old) await removeDirAtomic(c.dir);
}

// ---- ModelFiles for the three kinds of training ----

function tensorsOf(
  params: Map<string, Float32Array>,
  shapes: ReadonlyMap<string, number[]>,
): Map<string, F32Tensor> {
  const out = new Map<string, F32Tensor>();
  for (const [name, shape] of shapes) {
    const data = params.get(name);
    if (!data) throw new Error(`tensor ${name} was not read back from the model`);
    out.set(name, { shape, data });
  }
  return out;
}

/** What readChecked reads: one safetensors file, or a checkpoint dir (its shards). */
type TensorSource = Pick<Checkpoint, "names" | "info" | "f32">;

/**
 * Every tensor of `path` (a file, or `src` when given: the shards of a dir)
 * as f32, each checked to belong to `shapes` (after `rename`) with its shape,
 * and none of `shapes` missing.
 */
async function readChecked(
  path: string,
  shapes: ReadonlyMap<string, number[]>,
  rename: (key: string) => string = (k) => k,
  src?: TensorSource,
): Promise<Map<string, Float32Array>> {
  const file = src ?? await SafetensorsFile.open(path);
  const out = new Map<string, Float32Array>();
  for (const key of file.names()) {
    const name = rename(key);
    const want = shapes.get(name);
    if (!want) {
      throw new UserError(
        `${path}: tensor ${key} does not belong to this model/adapter (expected e.g. ${
          [...shapes.keys()][0]
        })`,
      );
    }
    const shape = file.info(key).shape;
    if (want.join(",") !== shape.join(",")) {
      throw new UserError(`${path}: ${key} has shape [${shape}], the model expects [${want}]`);
    }
    out.set(name, await file.f32(key));
  }
  for (const name of shapes.keys()) {
    if (!out.has(name)) throw new UserError(`${path}: tensor ${name} is missing`);
  }
  return out;
}

export interface LoraFilesOptions {
  shapes: ReadonlyMap<string, number[]>;
  r: number;
  alpha: number;
  dropout: number;
  targetModules: string[];
  baseModel: string;
  useRslora?: boolean;
}

/** PEFT's adapter_config.json for a LoRA adapter (the keys PEFT 0.x writes and reads). */
export function peftLoraConfig(o: LoraFilesOptions): Record<string, unknown> {
  return {
    alpha_pattern: {},
    auto_mapping: null,
    base_model_name_or_path: o.baseModel,
    bias: "none",
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: null,
    loftq_config: {},
    lora_alpha: o.alpha,
    lora_dropout: o.dropout,
    megatron_config: null,
    megatron_core: "megatron.core",
    modules_to_save: null,
    peft_type: "LORA",
    r: o.r,
    rank_pattern: {},
    revision: null,
    target_modules: [...o.targetModules].sort(),
    task_type: "CAUSAL_LM",
    use_dora: false,
    use_rslora: o.useRslora ?? false,
  };
}

/** LoRA: adapter_config.json + adapter_model.safetensors with PEFT key names. */
export function loraFiles(o: LoraFilesOptions): ModelFiles {
  return {
    kind: "lora",
    async write(dir, params) {
      await writeSafetensorsF32(
        join(dir, PEFT_WEIGHTS),
        tensorsOf(params, o.shapes),
      );
      await writeJsonAtomic(join(dir, PEFT_CONFIG), peftLoraConfig(o));
    },
    read(dir) {
      // PEFT saves without the adapter name; names with ".default." (a raw state_dict) are accepted too.
      return readChecked(
        join(dir, PEFT_WEIGHTS),
        o.shapes,
        (k) => k.replace(/\.default\.weight$/, ".weight"),
      );
    },
  };
}

export interface PrefixFilesOptions {
  shapes: ReadonlyMap<string, number[]>;
  preSeqLen: number;
  prefixProjection: boolean;
  baseModel: string;
  /** the base model's config.json fields the prefix layout depends on */
  numLayers: number;
  kvChannels: number;
  groups: number;
}

/**
 * P-Tuning v2: prefix_encoder.safetensors (`transformer.prefix_encoder.*`, the
 * names ChatGLM's own prefix encoder uses) + prefix_config.json naming
 * pre_seq_len, prefix_projection and the base model.
 */
export function prefixFiles(o: PrefixFilesOptions): ModelFiles {
  return {
    kind: "prefix",
    async write(dir, params) {
      await writeSafetensorsF32(join(dir, PREFIX_WEIGHTS), tensorsOf(params, o.shapes));
      await writeJsonAtomic(join(dir, PREFIX_CONFIG), {
        peft_type: "PREFIX_TUNING",
        task_type: "CAUSAL_LM",
        base_model_name_or_path: o.baseModel,
        pre_seq_len: o.preSeqLen,
        num_virtual_tokens: o.preSeqLen,
        prefix_projection: o.prefixProjection,
        num_layers: o.numLayers,
        kv_channels: o.kvChannels,
        multi_query_group_num: o.groups,
        weights: PREFIX_WEIGHTS,
      });
    },
    read(dir) {
      return readChecked(join(dir, PREFIX_WEIGHTS), o.shapes);
    },
  };
}

export interface FullFilesOptions {
  shapes: ReadonlyMap<string, number[]>;
  baseModelDir: string;
}

/** Files of the base model dir copied beside full weights (config, tokenizer, remote code). */
const COPY_FROM_BASE =
  /^(config\.json|generation_config\.json|tokenizer.*|special_tokens_map\.json|.*\.py|.*\.tiktoken)$/;

/** Full SFT: an HF model dir (config.json, tokenizer files, model.safetensors with the HF names). */
export function fullFiles(o: FullFilesOptions): ModelFiles {
  return {
    kind: "full",
    async write(dir, params) {
      await writeSafetensorsF32(join(dir, "model.safetensors"), tensorsOf(params, o.shapes));
      for await (const e of Deno.readDir(o.baseModelDir)) {
        if (!e.isFile || !COPY_FROM_BASE.test(e.name)) continue;
        const bytes = await Deno.readFile(join(o.baseModelDir, e.name));
        if (e.name === "config.json") {
          const cfg = JSON.parse(new TextDecoder().decode(bytes));
          cfg.torch_dtype = "float32";
          await writeJsonAtomic(join(dir, e.name), cfg);
        } else {
          await writeFileAtomic(join(dir, basename(e.name)), bytes);
        }
      }
      // A previous shard index would point at stale shards.
      await Deno.remove(join(dir, "model.safetensors.index.json")).catch(() => {});
    },
    async read(dir) {
      // The torch engine saves a model past 5 GB as HF's shards with an index.
      const ck = await Checkpoint.open(dir);
      if (!ck) return readChecked(join(dir, "model.safetensors"), o.shapes);
      return readChecked(ck.source, o.shapes, undefined, ck);
    },
  };
}
