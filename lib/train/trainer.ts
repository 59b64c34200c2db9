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
import { createBuffer, readF32, uniforms } from "../gpu/runtime.ts";
import { AdamWState } from "../gpu/kernels/adamw.ts";
import { GradNorm } from "../gpu/kernels/grad_norm.ts";
import type { TrainableModel } from "../model/types.ts";
import { osError, UserError } from "../errors.ts";
import { removeDirAtomic } from "../atomic.ts";
import { adamwScalars } from "./adamw.ts";
import { intervalSteps, warmupSteps } from "../config/config.ts";
import type { TrainArgs } from "./args.ts";
import { DataPlan, evalBatches, type MaskedRecord, splitRows } from "./data.ts";
import { makeSchedule } from "./schedule.ts";
import {
  type CheckpointState,
  findCheckpoint,
  listCheckpoints,
  type LogEntry,
  type ModelFiles,
  readCheckpoint,
  removeStaleTemps,
  rotateCheckpoints,
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

export async function train(o: TrainOptions): Promise<TrainResult> {
  const { gpu, model, args } = o;
  const rowsPerPass = o.rowsPerPass ?? Infinity;
  const plan = new DataPlan(o.train, {
    batchSize: args.batchSize,
    accumulation: args.accumulation,
    maxSteps: args.maxSteps,
    numTrainEpochs: args.numTrainEpochs,
    dropLast: args.dropLast,
    shuffle: args.shuffle,
    seed: args.seed,
  });
  const maxSteps = plan.maxSteps;
  const logEvery = args.loggingStrategy === "steps"
    ? intervalSteps(args.loggingSteps, maxSteps)
    : 0;
  const saveEvery = args.saveStrategy === "steps" ? intervalSteps(args.saveSteps, maxSteps) : 0;
  const evalEvery = args.evalStrategy === "steps"
    ? intervalSteps(args.evalSteps ?? args.loggingSteps, maxSteps)
    : 0;
  if (args.evalStrategy !== "no" && !(o.eval && o.eval.length > 0)) {
    throw new UserError(
      `training_args.eval_strategy is "${args.evalStrategy}" but no evaluation data was given (--eval FILE, or set eval_strategy: no)`,
    );
  }
  if (args.evalStrategy === "steps" && !(evalEvery > 0)) {
    throw new UserError("training_args.eval_steps must be > 0 with eval_strategy: steps");
  }
  const lrAt = makeSchedule({
    type: args.lrSchedulerType,
    baseLr: args.learningRate,
    totalSteps: maxSteps,
    warmupSteps: warmupSteps(
      { warmup_steps: args.warmupSteps, warmup_ratio: args.warmupRatio },
      maxSteps,
    ),
    kwargs: args.lrSchedulerKwargs,
  });

  const params = model.params;
  const adam = new AdamWState(gpu, params);
  const gradNorm = new GradNorm(gpu, params);
  const lossBuf = createBuffer(gpu, LOSS_SLOTS * 4, "train-loss");
  const evalBuf = createBuffer(gpu, LOSS_SLOTS * 4, "eval-loss");
  // Where each step's grad norm, clip and loss sums are copied for the host.
  const stage = gpu.device.createBuffer({
    size: 8 + LOSS_SLOTS * 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    label: "train-step-values",
  });

  await prepareOutDir(o.outDir, o.resume === undefined, !!o.overwrite);

  const dataInfo = {
    num_records: o.train.length,
    train_batch_size: args.batchSize,
    gradient_accumulation_steps: args.accumulation,
    seed: args.seed,
    shuffle: args.shuffle,
    drop_last: args.dropLast,
  };

  // State that a checkpoint carries.
  let globalStep = 0;
  let epoch = 0;
  let logHistory: LogEntry[] = [];
  let window = { lossSum: 0, steps: 0, skipped: 0 };
  let lastLoggedStep = 0;

  if (o.resume !== undefined) {
    const dir = await findCheckpoint(o.outDir, o.resume);
    const ck = await readCheckpoint(dir, o.files);
    for (const [k, v] of Object.entries(dataInfo)) {
      const was = (ck.data as Record<string, unknown>)[k];
      if (was !== v) {
        throw new UserError(
          `${dir}: cannot resume: ${k} was ${JSON.stringify(was)} in that run, now ${
            JSON.stringify(v)
          }; resuming needs the same data and batching`,
        );
      }
    }
    if (ck.maxSteps !== maxSteps) {
      console.error(
        `note: ${dir} was written by a run of ${ck.maxSteps} steps; continuing to ${maxSteps}`,
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
    globalStep = ck.globalStep;
    epoch = ck.epoch;
    logHistory = ck.logHistory;
    window = ck.window;
    lastLoggedStep = ck.lastLoggedStep;
    if (globalStep >= maxSteps) {
      console.error(
        `note: ${dir} is at step ${globalStep}, the run has ${maxSteps}; nothing to do`,
      );
    }
  }

  const metrics = await MetricsLog.open(o.outDir, logHistory, {
    sinks: o.logSinks,
    startStep: globalStep,
  });
  const progress = o.progress === undefined ? new Progress(maxSteps) : o.progress;
  const stop = o.stop ?? { requested: false };
  const onSigint = () => {
    if (stop.requested) return;
    stop.requested = true;
    progress?.note("interrupt: finishing the current step, then saving a checkpoint");
  };
  if (o.handleSigint) Deno.addSignalListener("SIGINT", onSigint);

  const stepLosses = new Map<number, number>();
  const skippedSteps: number[] = [];
  const uniformWatch = new UniformLossWatch(o.vocabSize);
  const warn = (line: string) => progress ? progress.note(line) : console.error(line);
  let pendingStep: PendingStep | undefined;
  let lastGradNorm = NaN;
  let lastLr = 0;
  let windowTokens = 0;
  let windowStart = performance.now();
  const runStart = performance.now();
  let runStepsDone = 0;

  /** Map the staging buffer once the step that filled it has run: the step's one wait. */
  const stepValues = async (n: number): Promise<Float32Array> => {
    await stage.mapAsync(GPUMapMode.READ, 0, 8 + n * 4);
    const v = new Float32Array(stage.getMappedRange(0, 8 + n * 4).slice(0));
    stage.unmap();
    return v;
  };

  /**
   * Finish the last submitted step: wait for its loss and grad norm, check
   * them, and submit its AdamW update — or, when one is not finite, stop the
   * run (nan_policy: stop) or leave the update out (skip). Every log, eval and
   * save settles first, so they see the step's values and updated weights.
   */
  const settle = async () => {
    const p = pendingStep;
    if (!p) return;
    pendingStep = undefined;
    const v = await p.values;
    let loss = 0;
    p.passes.forEach((m, i) => {
      if (m.valid > 0) loss += (v[2 + i] / m.valid) * m.weight;
    });
    lastGradNorm = v[0];
    const bad = checkStep(loss, v[0]);
    if (bad && args.nanPolicy === "stop") {
      const last = (await listCheckpoints(o.outDir)).at(-1)?.dir;
      throw divergedError(p.step, bad, last);
    }
    if (bad) {
      skippedSteps.push(p.step);
      warn(skippedNote(p.step, bad));
      return;
    }
    window.lossSum += loss;
    window.steps++;
    stepLosses.set(p.step - 1, loss);
    const enc = gpu.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    adam.encode(
      pass,
      adamwScalars({
        lr: p.lr,
        beta1: args.beta1,
        beta2: args.beta2,
        eps: args.eps,
        weightDecay: args.weightDecay,
      }, p.step),
      gradNorm.result,
      1,
    );
    pass.end();
    gpu.device.queue.submit([enc.finish()]);
    uniforms(gpu).reset();
  };

  const evaluate = async (): Promise<number> => {
    await settle();
    let weighted = 0;
    let rows = 0;
    // One entry per pass: its loss sum over the batch's valid tokens, weighted by the batch's rows.
    const meta: Array<{ slot: number; valid: number; batchRows: number; firstPass: boolean }> = [];
    const read = async () => {
      const l = await readF32(gpu, evalBuf, meta.length);
      meta.forEach((m, i) => {
        if (m.valid > 0) {
          weighted += (l[i] / m.valid) * m.batchRows;
          if (m.firstPass) rows += m.batchRows;
        }
      });
      meta.length = 0;
    };
    for (const b of evalBatches(o.eval!, args.evalBatchSize)) {
      const passes = splitRows(b, rowsPerPass);
      if (meta.length + passes.length > LOSS_SLOTS) await read();
      passes.forEach((p, i) => {
        model.forwardLoss(p, evalBuf, meta.length);
        meta.push({
          slot: meta.length,
          valid: b.validTokens,
          batchRows: b.batch,
          firstPass: i === 0,
        });
      });
    }
    await read();
    return rows > 0 ? weighted / rows : NaN;
  };

  const stateNow = (): CheckpointState => ({
    globalStep,
    epoch,
    maxSteps,
    logHistory,
    window: { ...window },
    lastLoggedStep,
    data: dataInfo,
    args,
    logEvery,
    saveEvery,
    evalEvery,
    lr: { type: args.lrSchedulerType, base: args.learningRate, next: lrAt(globalStep) },
    configEcho: o.configEcho ?? {},
  });

  const save = async (): Promise<string> => {
    await settle();
    const what = `checkpoint-${globalStep}`;
    const tensors = await model.readParams();
    assertFiniteWeights(globalStep, what, tensors);
    // Moments are read one tensor at a time while optimizer.safetensors is written.
    const moment = async (name: string, buf: GPUBuffer, size: number) => {
      const data = await readF32(gpu, buf, size);
      assertFiniteWeights(globalStep, what, [[name, data]]);
      return data;
    };
    const moments = params.map((p, k) => ({
      name: p.name,
      size: p.size,
      m: () => moment(`${p.name}.exp_avg`, adam.m[k], p.size),
      v: () => moment(`${p.name}.exp_avg_sq`, adam.v[k], p.size),
    }));
    const dir = await writeCheckpoint(o.outDir, stateNow(), tensors, moments, o.files);
    if (args.saveTotalLimit !== null && args.saveTotalLimit > 0) {
      await rotateCheckpoints(o.outDir, args.saveTotalLimit);
    }
    return dir;
  };

  let interrupted = false;
  let checkpoint: string | undefined;
  try {
    progress?.start(globalStep);
    while (globalStep < maxSteps) {
      const sp = plan.step(globalStep);
      const nMicro = sp.micro.length;
      const batches = sp.micro.map((i) => plan.microBatch(sp.epoch, i));
      const passes = batches.map((b) => splitRows(b, rowsPerPass));
      const nPasses = passes.reduce((a, p) => a + p.length, 0);
      if (nPasses > LOSS_SLOTS) {
        throw new UserError(
          `a step of ${nPasses} forward/backward passes is more than the ${LOSS_SLOTS} this trainer ` +
            `keeps losses for; lower gradient_accumulation_steps or raise --rows-per-pass`,
        );
      }
      // The previous step: its one wait, its checks, its update (queued before this step's work).
      await settle();

      const zero = gpu.device.createCommandEncoder();
      model.zeroGrads(zero);
      gpu.device.queue.submit([zero.finish()]);
      const meta: PassMeta[] = [];
      batches.forEach((b, i) => {
        if (b.validTokens === 0) window.skipped++;
        passes[i].forEach((p, k) => {
          const slot = meta.length;
          meta.push({ valid: b.validTokens, weight: 1 / nMicro });
          model.forwardBackward(p, {
            gradScale: b.validTokens > 0 ? 1 / (b.validTokens * nMicro) : 0,
            lossBuffer: lossBuf,
            lossSlot: slot,
            training: true,
            // Passes after the first draw their own dropout masks.
            dropoutSeed: (dropoutSeed(args.seed, globalStep, i) + k * 0x9e3779b1) >>> 0,
          });
        });
        for (let r = 0; r < b.batch; r++) {
          for (let t = 0; t < b.seq; t++) if (b.inputIds[r * b.seq + t] !== 0) windowTokens++;
        }
      });
      lastLr = lrAt(globalStep);
      const enc = gpu.device.createCommandEncoder();
      const pass = enc.beginComputePass();
      gradNorm.encode(pass, args.maxGradNorm);
      pass.end();
      enc.copyBufferToBuffer(gradNorm.result, 0, stage, 0, 8);
      enc.copyBufferToBuffer(lossBuf, 0, stage, 8, 4 * meta.length);
      gpu.device.queue.submit([enc.finish()]);
      uniforms(gpu).reset();
      pendingStep = {
        step: globalStep + 1,
        lr: lastLr,
        passes: meta,
        values: stepValues(meta.length),
      };

      globalStep++;
      runStepsDone++;
      o.onStep?.(globalStep);
      epoch = sp.epochAfter;
      const atEnd = globalStep >= maxSteps;

      const shouldLog = (globalStep === 1 && args.loggingFirstStep) ||
        (logEvery > 0 && globalStep % logEvery === 0) ||
        (args.loggingStrategy === "epoch" && sp.endsEpoch);
      const shouldEval = (evalEvery > 0 && globalStep % evalEvery === 0 &&
        args.evalDelay <= globalStep) ||
        (args.evalStrategy === "epoch" && sp.endsEpoch && args.evalDelay <= epoch) ||
        (atEnd && evalEvery > 0 && args.evalDelay <= globalStep);
      const shouldSave = (saveEvery > 0 && globalStep % saveEvery === 0) ||
        (args.saveStrategy === "epoch" && sp.endsEpoch) ||
        (atEnd && args.saveStrategy === "steps") || stop.requested;

      if (shouldLog || shouldEval || shouldSave) await settle();
      if (shouldLog) {
        const now = performance.now();
        const entry: LogEntry = {
          loss: window.steps > 0 ? window.lossSum / window.steps : NaN,
          grad_norm: lastGradNorm,
          learning_rate: lastLr,
          epoch,
          step: globalStep,
        };
        logHistory.push(entry);
        const tokensPerSec = windowTokens / Math.max((now - windowStart) / 1000, 1e-9);
        await metrics.append(entry, { tokens_per_second: tokensPerSec });
        const collapsed = uniformWatch.observe(globalStep, entry.loss!, lastGradNorm);
        if (collapsed) warn(collapsed);
        progress?.log({
          step: globalStep,
          loss: entry.loss as number,
          lr: lastLr,
          gradNorm: lastGradNorm,
          tokensPerSec,
          etaSec: ((now - runStart) / 1000 / runStepsDone) * (maxSteps - globalStep),
        });
        window = { lossSum: 0, steps: 0, skipped: 0 };
        lastLoggedStep = globalStep;
        windowTokens = 0;
        windowStart = now;
      } else {
        progress?.tick(globalStep);
      }
      if (shouldEval) {
        const evalLoss = await evaluate();
        const entry: LogEntry = { eval_loss: evalLoss, epoch, step: globalStep };
        logHistory.push(entry);
        await metrics.append(entry);
        progress?.eval(globalStep, evalLoss);
      }
      if (shouldSave) {
        const dir = await save();
        if (stop.requested) {
          interrupted = true;
          checkpoint = dir;
          break;
        }
      }
    }
    await settle();
    if (!interrupted) {
      const runtime = (performance.now() - runStart) / 1000;
      // A log window of skipped steps only (nan_policy: skip) has no loss to average.
      const total = logHistory.filter((e) => e.loss !== undefined && Number.isFinite(e.loss));
      const summary: LogEntry = {
        epoch,
        step: globalStep,
        train_runtime: runtime,
        train_steps_per_second: runStepsDone / Math.max(runtime, 1e-9),
        train_loss: total.length
          ? total.reduce((a, e) => a + (e.loss as number), 0) / total.length
          : NaN,
      };
      if (runStepsDone > 0) {
        logHistory.push(summary);
        await metrics.append(summary);
      }
      if (skippedSteps.length > 0) {
        warn(
          `${skippedSteps.length} step(s) had non-finite values and were skipped ` +
            `(nan_policy: skip): ${skippedSteps.slice(0, 10).join(", ")}${
              skippedSteps.length > 10 ? ", …" : ""
            }`,
        );
      }
      const tensors = await model.readParams();
      assertFiniteWeights(globalStep, "the final save", tensors);
      await writeFinal(o.outDir, stateNow(), tensors, o.files);
    }
  } finally {
    if (o.handleSigint) Deno.removeSignalListener("SIGINT", onSigint);
    progress?.end();
    metrics.close();
    // A step still in flight (a run stopped by an error) finishes before its buffers go.
    if (pendingStep) await pendingStep.values.catch(() => {});
    await gpu.device.queue.onSubmittedWorkDone();
    adam.destroy();
    gradNorm.destroy();
    lossBuf.destroy();
    evalBuf.destroy();
    stage.destroy();
  }
  return {
    globalStep,
    maxSteps,
    interrupted,
    checkpoint,
    logHistory,
    stepLosses,
    skippedSteps,
  };
}

/**
 * The output dir before a run: created; temporaries of a killed run removed;
 * for a fresh run, an earlier run's checkpoints refused, or with
 * `overwrite` (HF overwrite_output_dir) removed — each renamed aside before
 * it is deleted, so none is ever left half-deleted under its name.
 */
async function prepareOutDir(outDir: string, fresh: boolean, overwrite: boolean): Promise<void> {
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
