/**
 * The training loop, with HF Trainer's semantics on a WebGPU model.
 *
 * Per optimizer step: zero the gradients; for each of its micro-batches run
 * forward + backward with dLoss/dlogit seeded by 1/(valid tokens · micro-
 * batches in the step) — HF takes each micro-batch's mean loss and divides it
 * by the number of micro-batches in the accumulation window; then the global
 * grad norm and clip coefficient, and a copy of the step's loss sums and norm
 * into a small mappable buffer. The host's one wait per step is the mapping of
 * that buffer (it replaced waiting for the queue to drain, and costs the
 * same): with the loss and norm in hand it checks them (lib/train/guard.ts)
 * and only then submits the step's AdamW update — ahead of the next step's
 * work in the same queue — or, under `nan_policy`, stops or skips it. So a
 * non-finite value never reaches the weights, and logging needs no readback of
 * its own.
 *
 * Logged values follow HF: `loss` is the mean of the per-step losses since the
 * last log, `grad_norm` the pre-clip norm of the last step, `learning_rate`
 * the LR the last step used, `epoch` the float epoch.
 */
import type { Gpu } from "../gpu/device.ts";
import { createBuffer, readF32 } from "../gpu/runtime.ts";
import { submitPass } from "../gpu/recording.ts";
import { AdamWState } from "../gpu/kernels/adamw.ts";
import { GradNorm } from "../gpu/kernels/grad_norm.ts";
import type { TrainableModel } from "../model/types.ts";
import { UserError } from "../errors.ts";
import { adamwScalars } from "./adamw.ts";
import { intervalSteps, warmupSteps } from "../config/config.ts";
import type { TrainArgs } from "./args.ts";
import { DataPlan, evalBatches, type MaskedRecord, recordsDigest, splitRows } from "./data.ts";
import { makeSchedule } from "./schedule.ts";
import {
  type CheckpointState,
  checkResumable,
  findCheckpoint,
  listCheckpoints,
  type LogEntry,
  type ModelFiles,
  prepareOutDir,
  readCheckpoint,
  resumeData,
  rotateCheckpoints,
  setAsideNewer,
  writeCheckpoint,
  writeFinal,
} from "./checkpoint.ts";
import { type LogSink, MetricsLog, Progress } from "./progress.ts";
import {
  assertFiniteWeights,
  checkStep,
  divergedError,
  skippedNote,
  UniformLossWatch,
} from "./guard.ts";

export interface TrainerModel extends TrainableModel {
  readParams(): Promise<Map<string, Float32Array>>;
  setParams(tensors: Map<string, Float32Array>): void;
}

export interface TrainOptions {
  gpu: Gpu;
  model: TrainerModel;
  /** How the trainable tensors are saved (adapter, prefix or full model) and read back. */
  files: ModelFiles;
  train: readonly MaskedRecord[];
  eval?: readonly MaskedRecord[];
  args: TrainArgs;
  outDir: string;
  /** "yes": the newest complete checkpoint; a number: checkpoint-N. */
  resume?: "yes" | number;
  /** A fresh run may delete checkpoints an earlier run left in outDir (HF overwrite_output_dir). */
  overwrite?: boolean;
  /** Extra keys written to training_args.json (the config as given). */
  configEcho?: Record<string, unknown>;
  /** Install a SIGINT listener that finishes the step, saves and stops (the CLI). */
  handleSigint?: boolean;
  /** Stop after the current step when set (tests; the SIGINT listener sets it). */
  stop?: { requested: boolean };
  /** Progress lines (default: stderr). */
  progress?: Progress | null;
  /**
   * Records per forward/backward pass (default: the whole micro-batch). A
   * larger micro-batch runs as several passes whose gradients add up to the
   * same result, so activation memory is sized for this many records.
   */
  rowsPerPass?: number;
  /** Called after each step's forward and backward are submitted, with the new global step. */
  onStep?: (globalStep: number) => void;
  /** The model's vocabulary size, for the warning about a loss stuck at ln(vocab). */
  vocabSize?: number;
  /** runDataInfo(args, train), when the caller made it already (run.ts, for its early resume check). */
  dataInfo?: Record<string, unknown>;
  /** Also given every log entry (TensorBoard, lib/train/tensorboard_log.ts). */
  logSinks?: LogSink[];
}

export interface TrainResult {
  globalStep: number;
  maxSteps: number;
  interrupted: boolean;
  /** checkpoint written on interruption */
  checkpoint?: string;
  logHistory: LogEntry[];
  /** per-step losses of this process's steps (0-based step → mean micro-batch loss) */
  stepLosses: Map<number, number>;
  /** steps (1-based) whose update was skipped under nan_policy: skip */
  skippedSteps: number[];
}

/** Loss-sum slots: the forward/backward passes one optimizer step may have. */
const LOSS_SLOTS = 1024;

/** One pass of a step: its micro-batch's valid tokens and 1 / micro-batches in the step. */
interface PassMeta {
  valid: number;
  weight: number;
}

/** A step whose values are on their way back and whose update waits for them. */
interface PendingStep {
  /** 1-based step number (the AdamW step count). */
  step: number;
  lr: number;
  passes: PassMeta[];
  /** [grad norm, clip, loss sum of each pass] once the step has run (the step's one wait). */
  values: Promise<Float32Array>;
}

/**
 * A training run in named phases: `train` below reads as the loop it is,
 * and each phase is a method that can be read on its own.
 */
class TrainingRun {
  readonly gpu: Gpu;
  readonly model: TrainerModel;
  readonly args: TrainArgs;
  readonly rowsPerPass: number;
  readonly plan: DataPlan;
  readonly maxSteps: number;
  readonly logEvery: number;
  readonly saveEvery: number;
  readonly evalEvery: number;
  readonly lrAt: (step: number) => number;
  readonly dataInfo: Record<string, unknown>;
  // Device state: optimizer, norm, loss slots, the staging buffer of each step's values.
  readonly adam: AdamWState;
  readonly gradNorm: GradNorm;
  readonly lossBuf: GPUBuffer;
  readonly evalBuf: GPUBuffer;
  readonly stage: GPUBuffer;
  // State a checkpoint carries.
  globalStep = 0;
  epoch = 0;
  logHistory: LogEntry[] = [];
  window = { lossSum: 0, steps: 0, skipped: 0 };
  lossTotal = { lossSum: 0, steps: 0 };
  lastLoggedStep = 0;
  // This process's run.
  metrics!: MetricsLog;
  progress: Progress | null = null;
  readonly stop: { requested: boolean };
  readonly stepLosses = new Map<number, number>();
  readonly skippedSteps: number[] = [];
  readonly uniformWatch: UniformLossWatch;
  pendingStep: PendingStep | undefined;
  lastGradNorm = NaN;
  lastLr = 0;
  windowTokens = 0;
  windowStart = performance.now();
  readonly runStart = performance.now();
  runStepsDone = 0;
  interrupted = false;
  checkpoint: string | undefined;
  private listening = false;
  private readonly onSigint = () => {
    if (this.stop.requested) return;
    this.stop.requested = true;
    this.progress?.note("interrupt: finishing the current step, then saving a checkpoint");
  };

  constructor(readonly o: TrainOptions) {
    const { gpu, model, args } = o;
    this.gpu = gpu;
    this.model = model;
    this.args = args;
    this.rowsPerPass = o.rowsPerPass ?? Infinity;
    this.plan = new DataPlan(o.train, {
      batchSize: args.batchSize,
      accumulation: args.accumulation,
      maxSteps: args.maxSteps,
      numTrainEpochs: args.numTrainEpochs,
      dropLast: args.dropLast,
      shuffle: args.shuffle,
      seed: args.seed,
    });
    const maxSteps = this.maxSteps = this.plan.maxSteps;
    this.logEvery = args.loggingStrategy === "steps"
      ? intervalSteps(args.loggingSteps, maxSteps)
      : 0;
    this.saveEvery = args.saveStrategy === "steps" ? intervalSteps(args.saveSteps, maxSteps) : 0;
    this.evalEvery = args.evalStrategy === "steps"
      ? intervalSteps(args.evalSteps ?? args.loggingSteps, maxSteps)
      : 0;
    if (args.evalStrategy !== "no" && !(o.eval && o.eval.length > 0)) {
      throw new UserError(
        `training_args.eval_strategy is "${args.evalStrategy}" but no evaluation data was given (--eval FILE, or set eval_strategy: no)`,
      );
    }
    if (args.evalStrategy === "steps" && !(this.evalEvery > 0)) {
      throw new UserError("training_args.eval_steps must be > 0 with eval_strategy: steps");
    }
    this.lrAt = makeSchedule({
      type: args.lrSchedulerType,
      baseLr: args.learningRate,
      totalSteps: maxSteps,
      warmupSteps: warmupSteps(
        { warmup_steps: args.warmupSteps, warmup_ratio: args.warmupRatio },
        maxSteps,
      ),
      kwargs: args.lrSchedulerKwargs,
    });
    this.adam = new AdamWState(gpu, model.params);
    this.gradNorm = new GradNorm(gpu, model.params);
    this.lossBuf = createBuffer(gpu, LOSS_SLOTS * 4, "train-loss");
    this.evalBuf = createBuffer(gpu, LOSS_SLOTS * 4, "eval-loss");
    this.stage = gpu.device.createBuffer({
      size: 8 + LOSS_SLOTS * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      label: "train-step-values",
    });
    this.dataInfo = o.dataInfo ?? runDataInfo(args, o.train);
    this.stop = o.stop ?? { requested: false };
    this.uniformWatch = new UniformLossWatch(o.vocabSize);
  }

  warn(line: string): void {
    if (this.progress) this.progress.note(line);
    else console.error(line);
  }

  // ------------------------------------------------------------------ start

  /** Continue from a checkpoint: its weights, optimizer moments and counters. */
  async resume(which: "yes" | number): Promise<void> {
    const { o, model, gpu, adam } = this;
    const params = model.params;
    const dir = await findCheckpoint(o.outDir, which);
    await checkResumable(dir, {
      kind: o.files.kind,
      engine: "webgpu",
      data: this.dataInfo,
      schedule: {
        lr_scheduler_type: this.args.lrSchedulerType,
        learning_rate: this.args.learningRate,
      },
    });
    const ck = await readCheckpoint(dir, o.files);
    if (ck.maxSteps !== this.maxSteps) {
      console.error(
        `note: ${dir} was written by a run of ${ck.maxSteps} steps; continuing to ${this.maxSteps}`,
      );
    }
    model.setParams(ck.params);
    const byName = new Map(params.map((p, k) => [p.name, k]));
    for (const [name, { m, v }] of ck.moments) {
      const k = byName.get(name);
      if (k === undefined) {
        throw new UserError(`${dir}: optimizer state for unknown tensor ${name}`);
      }
      if (m.length !== params[k].size || v.length !== params[k].size) {
        throw new UserError(`${dir}: optimizer state for ${name} has the wrong size`);
      }
      gpu.device.queue.writeBuffer(adam.m[k], 0, m as Float32Array<ArrayBuffer>);
      gpu.device.queue.writeBuffer(adam.v[k], 0, v as Float32Array<ArrayBuffer>);
    }
    if (ck.moments.size !== params.length) {
      throw new UserError(
        `${dir}: optimizer state holds ${ck.moments.size} tensors, the model trains ${params.length}`,
      );
    }
    await setAsideNewer(o.outDir, ck.globalStep);
    this.globalStep = ck.globalStep;
    this.epoch = ck.epoch;
    this.logHistory = ck.logHistory;
    this.window = ck.window;
    this.lossTotal = ck.lossTotal;
    this.lastLoggedStep = ck.lastLoggedStep;
    if (this.globalStep >= this.maxSteps) {
      console.error(
        `note: ${dir} is at step ${this.globalStep}, the run has ${this.maxSteps}; nothing to do`,
      );
    }
  }

  /** The metrics log, progress lines and the SIGINT listener. */
  async open(): Promise<void> {
    const o = this.o;
    this.metrics = await MetricsLog.open(o.outDir, this.logHistory, {
      sinks: o.logSinks,
      startStep: this.globalStep,
    });
    this.progress = o.progress === undefined ? new Progress(this.maxSteps) : o.progress;
    if (o.handleSigint) {
      Deno.addSignalListener("SIGINT", this.onSigint);
      this.listening = true;
    }
    this.progress?.start(this.globalStep);
  }

  // ------------------------------------------------------------------ a step

  /**
   * Submit the next optimizer step: after the previous step has settled,
   * zero the gradients, forward and backward every pass of every
   * micro-batch, then the grad norm and a copy of the step's values to the
   * staging buffer. Nothing here waits.
   */
  async submitStep(): Promise<{ endsEpoch: boolean }> {
    const { gpu, model, args, plan } = this;
    const sp = plan.step(this.globalStep);
    const nMicro = sp.micro.length;
    const batches = sp.micro.map((i) => plan.microBatch(sp.epoch, i));
    const passes = batches.map((b) => splitRows(b, this.rowsPerPass));
    const nPasses = passes.reduce((a, p) => a + p.length, 0);
    if (nPasses > LOSS_SLOTS) {
      throw new UserError(
        `a step of ${nPasses} forward/backward passes is more than the ${LOSS_SLOTS} this trainer ` +
          `keeps losses for; lower gradient_accumulation_steps or raise --rows-per-pass`,
      );
    }
    // The previous step: its one wait, its checks, its update (queued before this step's work).
    await this.settle();

    const zero = gpu.device.createCommandEncoder();
    model.zeroGrads(zero);
    gpu.device.queue.submit([zero.finish()]);
    const meta: PassMeta[] = [];
    batches.forEach((b, i) => {
      if (b.validTokens === 0) this.window.skipped++;
      passes[i].forEach((p, k) => {
        const slot = meta.length;
        meta.push({ valid: b.validTokens, weight: 1 / nMicro });
        model.forwardBackward(p, {
          gradScale: b.validTokens > 0 ? 1 / (b.validTokens * nMicro) : 0,
          lossBuffer: this.lossBuf,
          lossSlot: slot,
          training: true,
          // Passes after the first draw their own dropout masks.
          dropoutSeed: (dropoutSeed(args.seed, this.globalStep, i) + k * 0x9e3779b1) >>> 0,
        });
      });
      for (let r = 0; r < b.batch; r++) {
        for (let t = 0; t < b.seq; t++) if (b.inputIds[r * b.seq + t] !== 0) this.windowTokens++;
      }
    });
    this.lastLr = this.lrAt(this.globalStep);
    submitPass(gpu, (pass) => this.gradNorm.encode(pass, args.maxGradNorm), (enc) => {
      enc.copyBufferToBuffer(this.gradNorm.result, 0, this.stage, 0, 8);
      enc.copyBufferToBuffer(this.lossBuf, 0, this.stage, 8, 4 * meta.length);
    });
    this.pendingStep = {
      step: this.globalStep + 1,
      lr: this.lastLr,
      passes: meta,
      values: this.stepValues(meta.length),
    };
    this.globalStep++;
    this.runStepsDone++;
    this.o.onStep?.(this.globalStep);
    this.epoch = sp.epochAfter;
    return { endsEpoch: sp.endsEpoch };
  }

  /** Map the staging buffer once the step that filled it has run: the step's one wait. */
  private async stepValues(n: number): Promise<Float32Array> {
    await this.stage.mapAsync(GPUMapMode.READ, 0, 8 + n * 4);
    const v = new Float32Array(this.stage.getMappedRange(0, 8 + n * 4).slice(0));
    this.stage.unmap();
    return v;
  }

  /**
   * Finish the last submitted step: wait for its loss and grad norm, check
   * them, and submit its AdamW update — or, when one is not finite, stop the
   * run (nan_policy: stop) or leave the update out (skip). Every log, eval and
   * save settles first, so they see the step's values and updated weights.
   */
  async settle(): Promise<void> {
    const p = this.pendingStep;
    if (!p) return;
    const { gpu, args } = this;
    this.pendingStep = undefined;
    const v = await p.values;
    let loss = 0;
    p.passes.forEach((m, i) => {
      if (m.valid > 0) loss += (v[2 + i] / m.valid) * m.weight;
    });
    this.lastGradNorm = v[0];
    const bad = checkStep(loss, v[0]);
    if (bad && args.nanPolicy === "stop") {
      const last = (await listCheckpoints(this.o.outDir)).at(-1)?.dir;
      throw divergedError(p.step, bad, last);
    }
    if (bad) {
      this.skippedSteps.push(p.step);
      this.warn(skippedNote(p.step, bad));
      return;
    }
    this.window.lossSum += loss;
    this.window.steps++;
    this.lossTotal.lossSum += loss;
    this.lossTotal.steps++;
    this.stepLosses.set(p.step - 1, loss);
    const scalars = adamwScalars({
      lr: p.lr,
      beta1: args.beta1,
      beta2: args.beta2,
      eps: args.eps,
      weightDecay: args.weightDecay,
    }, p.step);
    submitPass(gpu, (pass) => this.adam.encode(pass, scalars, this.gradNorm.result, 1));
  }

  // ------------------------------------------------------------------ after a step

  /** What the step just submitted is due for: a log line, an evaluation, a checkpoint. */
  due(endsEpoch: boolean): { log: boolean; eval: boolean; save: boolean } {
    const { args, globalStep, epoch } = this;
    const atEnd = globalStep >= this.maxSteps;
    // HF runs on_epoch_end when max_steps (or a fractional num_train_epochs) ends an epoch early.
    endsEpoch ||= atEnd;
    return {
      log: (globalStep === 1 && args.loggingFirstStep) ||
        (this.logEvery > 0 && globalStep % this.logEvery === 0) ||
        (args.loggingStrategy === "epoch" && endsEpoch),
      eval: (this.evalEvery > 0 && globalStep % this.evalEvery === 0 &&
        args.evalDelay <= globalStep) ||
        (args.evalStrategy === "epoch" && endsEpoch && args.evalDelay <= epoch) ||
        (atEnd && this.evalEvery > 0 && args.evalDelay <= globalStep),
      save: (this.saveEvery > 0 && globalStep % this.saveEvery === 0) ||
        (args.saveStrategy === "epoch" && endsEpoch) ||
        (atEnd && args.saveStrategy === "steps") || this.stop.requested,
    };
  }

  /** A log entry of the window since the last one (HF's averaged loss), and the progress line. */
  async log(): Promise<void> {
    const now = performance.now();
    const { globalStep, lastGradNorm, lastLr } = this;
    const entry: LogEntry = {
      loss: this.window.steps > 0 ? this.window.lossSum / this.window.steps : NaN,
      grad_norm: lastGradNorm,
      learning_rate: lastLr,
      epoch: this.epoch,
      step: globalStep,
    };
    this.logHistory.push(entry);
    const tokensPerSec = this.windowTokens / Math.max((now - this.windowStart) / 1000, 1e-9);
    await this.metrics.append(entry, { tokens_per_second: tokensPerSec });
    const collapsed = this.uniformWatch.observe(globalStep, entry.loss!, lastGradNorm);
    if (collapsed) this.warn(collapsed);
    this.progress?.log({
      step: globalStep,
      loss: entry.loss as number,
      lr: lastLr,
      gradNorm: lastGradNorm,
      tokensPerSec,
      etaSec: ((now - this.runStart) / 1000 / this.runStepsDone) * (this.maxSteps - globalStep),
    });
    this.window = { lossSum: 0, steps: 0, skipped: 0 };
    this.lastLoggedStep = globalStep;
    this.windowTokens = 0;
    this.windowStart = now;
  }

  /** eval_loss over the evaluation records, weighted by batch rows; logged. */
  async evaluate(): Promise<void> {
    await this.settle();
    const { gpu, model, o, args } = this;
    let weighted = 0;
    let rows = 0;
    // One entry per pass: its loss sum over the batch's valid tokens, weighted by the batch's rows.
    const meta: Array<{ slot: number; valid: number; batchRows: number; firstPass: boolean }> = [];
    const read = async () => {
      const l = await readF32(gpu, this.evalBuf, meta.length);
      meta.forEach((m, i) => {
        if (m.valid > 0) {
          weighted += (l[i] / m.valid) * m.batchRows;
          if (m.firstPass) rows += m.batchRows;
        }
      });
      meta.length = 0;
    };
    // The model's buffers hold a training pass; a larger eval batch runs in passes of that size
    // (the same loss, weighted by the whole batch's rows), so eval_batch_size costs no memory.
    const evalRows = Math.min(this.rowsPerPass, args.batchSize);
    for (const b of evalBatches(o.eval!, args.evalBatchSize)) {
      const passes = splitRows(b, evalRows);
      if (meta.length + passes.length > LOSS_SLOTS) await read();
      passes.forEach((p, i) => {
        model.forwardLoss(p, this.evalBuf, meta.length);
        meta.push({
          slot: meta.length,
          valid: b.validTokens,
          batchRows: b.batch,
          firstPass: i === 0,
        });
      });
    }
    await read();
    const evalLoss = rows > 0 ? weighted / rows : NaN;
    const entry: LogEntry = { eval_loss: evalLoss, epoch: this.epoch, step: this.globalStep };
    this.logHistory.push(entry);
    await this.metrics.append(entry);
    this.progress?.eval(this.globalStep, evalLoss);
  }

  stateNow(): CheckpointState {
    const { args, o } = this;
    return {
      globalStep: this.globalStep,
      epoch: this.epoch,
      maxSteps: this.maxSteps,
      logHistory: this.logHistory,
      window: { ...this.window },
      lossTotal: { ...this.lossTotal },
      lastLoggedStep: this.lastLoggedStep,
      data: this.dataInfo,
      args,
      logEvery: this.logEvery,
      saveEvery: this.saveEvery,
      evalEvery: this.evalEvery,
      lr: { type: args.lrSchedulerType, base: args.learningRate, next: this.lrAt(this.globalStep) },
      configEcho: o.configEcho ?? {},
    };
  }

  /** checkpoint-N with weights, optimizer moments and state; older ones rotated out. */
  async save(): Promise<string> {
    await this.settle();
    const { gpu, model, o, args, globalStep } = this;
    const what = `checkpoint-${globalStep}`;
    const tensors = await model.readParams();
    assertFiniteWeights(globalStep, what, tensors);
    // Moments are read one tensor at a time while optimizer.safetensors is written.
    const moment = async (name: string, buf: GPUBuffer, size: number) => {
      const data = await readF32(gpu, buf, size);
      assertFiniteWeights(globalStep, what, [[name, data]]);
      return data;
    };
    const moments = model.params.map((p, k) => ({
      name: p.name,
      size: p.size,
      m: () => moment(`${p.name}.exp_avg`, this.adam.m[k], p.size),
      v: () => moment(`${p.name}.exp_avg_sq`, this.adam.v[k], p.size),
    }));
    const dir = await writeCheckpoint(
      o.outDir,
      this.stateNow(),
      tensors,
      // save_only_model's checkpoints cannot be resumed; the one a Ctrl-C saves is for resuming
      args.saveOnlyModel && !this.stop.requested ? null : moments,
      o.files,
    );
    if (args.saveTotalLimit !== null && args.saveTotalLimit > 0) {
      await rotateCheckpoints(o.outDir, args.saveTotalLimit);
    }
    return dir;
  }

  // ------------------------------------------------------------------ end

  /** The run's summary entry and the final save (not after an interruption). */
  async finish(): Promise<void> {
    await this.settle();
    if (this.interrupted) return;
    const runtime = (performance.now() - this.runStart) / 1000;
    // HF's train_loss: the mean of every step's loss, logged or not (steps skipped by nan_policy
    // have none), over the whole run, a resumed one too.
    const total = this.lossTotal;
    const summary: LogEntry = {
      epoch: this.epoch,
      step: this.globalStep,
      train_runtime: runtime,
      train_steps_per_second: this.runStepsDone / Math.max(runtime, 1e-9),
      train_loss: total.steps > 0 ? total.lossSum / total.steps : NaN,
    };
    if (this.runStepsDone > 0) {
      this.logHistory.push(summary);
      await this.metrics.append(summary);
    }
    const skipped = this.skippedSteps;
    if (skipped.length > 0) {
      this.warn(
        `${skipped.length} step(s) had non-finite values and were skipped ` +
          `(nan_policy: skip): ${skipped.slice(0, 10).join(", ")}${
            skipped.length > 10 ? ", …" : ""
          }`,
      );
    }
    const tensors = await this.model.readParams();
    assertFiniteWeights(this.globalStep, "the final save", tensors);
    await writeFinal(this.o.outDir, this.stateNow(), tensors, this.o.files);
  }

  /** Listeners off, logs closed, in-flight work done, device buffers freed. */
  async close(): Promise<void> {
    if (this.listening) Deno.removeSignalListener("SIGINT", this.onSigint);
    this.progress?.end();
    this.metrics?.close();
    // A step still in flight (a run stopped by an error) finishes before its buffers go.
    if (this.pendingStep) await this.pendingStep.values.catch(() => {});
    await this.gpu.device.queue.onSubmittedWorkDone();
    this.adam.destroy();
    this.gradNorm.destroy();
    this.lossBuf.destroy();
    this.evalBuf.destroy();
    this.stage.destroy();
  }

  result(): TrainResult {
    return {
      globalStep: this.globalStep,
      maxSteps: this.maxSteps,
      interrupted: this.interrupted,
      checkpoint: this.checkpoint,
      logHistory: this.logHistory,
      stepLosses: this.stepLosses,
      skippedSteps: this.skippedSteps,
    };
  }
}

/** This engine's resumeData (checkpoint.ts) of a run: its records' digest is a pass over them. */
export function runDataInfo(
  args: TrainArgs,
  train: readonly MaskedRecord[],
): Record<string, unknown> {
  return resumeData({
    records: train.length,
    digest: recordsDigest(train),
    batch: args.batchSize,
    accumulation: args.accumulation,
    seed: args.seed,
    shuffle: args.shuffle,
    dropLast: args.dropLast,
  });
}

export async function train(o: TrainOptions): Promise<TrainResult> {
  const run = new TrainingRun(o);
  try {
    await prepareOutDir(o.outDir, o.resume === undefined, !!o.overwrite);
    if (o.resume !== undefined) await run.resume(o.resume);
    await run.open();
    while (run.globalStep < run.maxSteps) {
      const { endsEpoch } = await run.submitStep();
      const due = run.due(endsEpoch);
      if (due.log || due.eval || due.save) await run.settle();
      if (due.log) await run.log();
      else run.progress?.tick(run.globalStep);
      if (due.eval) await run.evaluate();
      if (due.save) {
        const dir = await run.save();
        // Stopped at the last step, the run is complete: it finishes (summary entry, final save)
        // rather than leaving a resume with nothing to do and no summary.
        if (run.stop.requested && run.globalStep < run.maxSteps) {
          run.interrupted = true;
          run.checkpoint = dir;
          break;
        }
      }
    }
    await run.finish();
  } finally {
    await run.close();
  }
  return run.result();
}

/** Dropout seed of micro-batch `micro` of optimizer step `step`: a function of the run seed only, so resumes replay it. */
export function dropoutSeed(seed: number, step: number, micro: number): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  for (const x of [step, micro]) {
    h = Math.imul(h ^ x, 0x85ebca6b) >>> 0;
    h = (h ^ (h >>> 13)) >>> 0;
    h = Math.imul(h, 0xc2b2ae35) >>> 0;
    h = (h ^ (h >>> 16)) >>> 0;
  }
  return h;
}
