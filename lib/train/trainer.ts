/**
 * The training loop, with HF Trainer's semantics on a WebGPU model.
 *
 * Per optimizer step: zero the gradients; for each of its micro-batches run
 * forward + backward with dLoss/dlogit seeded by 1/(valid tokens · micro-
 * batches in the step) — HF takes each micro-batch's mean loss and divides it
 * by the number of micro-batches in the accumulation window; then the global
 * grad norm, clip coefficient and AdamW update are encoded in one pass and
 * submitted. Nothing is read back except when a step is logged, evaluated or
 * saved; otherwise the host waits only for the previous step to finish, so at
 * most one step is queued ahead of the device.
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
import { UserError } from "../errors.ts";
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
import { MetricsLog, Progress } from "./progress.ts";

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
  /** Called after each optimizer step is submitted, with the new global step. */
  onStep?: (globalStep: number) => void;
}

export interface TrainResult {
  globalStep: number;
  maxSteps: number;
  interrupted: boolean;
  /** checkpoint written on interruption */
  checkpoint?: string;
  logHistory: LogEntry[];
  /** per-step losses of this process's steps (step → mean micro-batch loss), read lazily at logs */
  stepLosses: Map<number, number>;
}

/** Loss-sum slots in the loss buffer before a flush is forced. */
const LOSS_SLOTS = 1024;

interface PendingLoss {
  step: number;
  slot: number;
  valid: number;
  /** 1 / micro-batches in the step */
  weight: number;
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

  await Deno.mkdir(o.outDir, { recursive: true });
  await removeStaleTemps(o.outDir);
  if (o.resume === undefined) {
    const old = await listCheckpoints(o.outDir);
    if (old.length > 0 && !o.overwrite) {
      throw new UserError(
        `${o.outDir} already holds checkpoints of an earlier run (${
          old.map((c) => `checkpoint-${c.step}`).join(", ")
        }); continue it with --resume yes, choose another output dir, or set training_args.overwrite_output_dir=true to delete them`,
      );
    }
    for (const c of old) await Deno.remove(c.dir, { recursive: true });
  }

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

  const metrics = await MetricsLog.open(o.outDir, logHistory);
  const progress = o.progress === undefined ? new Progress(maxSteps) : o.progress;
  const stop = o.stop ?? { requested: false };
  const onSigint = () => {
    if (stop.requested) return;
    stop.requested = true;
    progress?.note("interrupt: finishing the current step, then saving a checkpoint");
  };
  if (o.handleSigint) Deno.addSignalListener("SIGINT", onSigint);

  const pending: PendingLoss[] = [];
  const stepLoss = new Map<number, { sum: number; parts: number; expected: number }>();
  const stepLosses = new Map<number, number>();
  let nextSlot = 0;
  let inflight: Promise<undefined> | undefined;
  let lastGradNorm = NaN;
  let lastLr = 0;
  let windowTokens = 0;
  let windowStart = performance.now();
  const runStart = performance.now();
  let runStepsDone = 0;

  /** Read back pending loss sums (one wait) and fold finished steps into the window. */
  const flush = async (withNorm: boolean) => {
    const n = nextSlot;
    const [losses, norm] = await Promise.all([
      n > 0 ? readF32(gpu, lossBuf, n) : Promise.resolve(new Float32Array(0)),
      withNorm ? readF32(gpu, gradNorm.result, 1) : Promise.resolve(undefined),
    ]);
    if (norm) lastGradNorm = norm[0];
    for (const p of pending) {
      let s = stepLoss.get(p.step);
      if (!s) stepLoss.set(p.step, s = { sum: 0, parts: 0, expected: 0 });
      if (p.valid > 0) s.sum += (losses[p.slot] / p.valid) * p.weight;
      s.parts++;
    }
    pending.length = 0;
    nextSlot = 0;
    for (const [step, s] of stepLoss) {
      if (s.parts === s.expected) {
        window.lossSum += s.sum;
        window.steps++;
        stepLosses.set(step, s.sum);
        stepLoss.delete(step);
      }
    }
  };

  const evaluate = async (): Promise<number> => {
    await flushIfPending();
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

  const flushIfPending = async () => {
    if (pending.length > 0) await flush(false);
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
    await flushIfPending();
    const tensors = await model.readParams();
    const moments = params.map((p, k) => ({
      name: p.name,
      size: p.size,
      m: () => readF32(gpu, adam.m[k], p.size),
      v: () => readF32(gpu, adam.v[k], p.size),
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
      if (nextSlot + nPasses > LOSS_SLOTS) await flush(false);
      if (inflight) await inflight;

      const zero = gpu.device.createCommandEncoder();
      model.zeroGrads(zero);
      gpu.device.queue.submit([zero.finish()]);
      stepLoss.set(globalStep, { sum: 0, parts: 0, expected: nPasses });
      batches.forEach((b, i) => {
        if (b.validTokens === 0) window.skipped++;
        passes[i].forEach((p, k) => {
          const slot = nextSlot++;
          pending.push({ step: globalStep, slot, valid: b.validTokens, weight: 1 / nMicro });
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
      adam.encode(
        pass,
        adamwScalars({
          lr: lastLr,
          beta1: args.beta1,
          beta2: args.beta2,
          eps: args.eps,
          weightDecay: args.weightDecay,
        }, globalStep + 1),
        gradNorm.result,
        1,
      );
      pass.end();
      gpu.device.queue.submit([enc.finish()]);
      uniforms(gpu).reset();
      inflight = gpu.device.queue.onSubmittedWorkDone();

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

      if (shouldLog) {
        await flush(true);
        const now = performance.now();
        const entry: LogEntry = {
          loss: window.steps > 0 ? window.lossSum / window.steps : NaN,
          grad_norm: lastGradNorm,
          learning_rate: lastLr,
          epoch,
          step: globalStep,
        };
        logHistory.push(entry);
        await metrics.append(entry);
        const secs = (now - windowStart) / 1000;
        progress?.log({
          step: globalStep,
          loss: entry.loss as number,
          lr: lastLr,
          gradNorm: lastGradNorm,
          tokensPerSec: windowTokens / Math.max(secs, 1e-9),
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
    await flushIfPending();
    if (!interrupted) {
      const runtime = (performance.now() - runStart) / 1000;
      const total = logHistory.filter((e) => e.loss !== undefined);
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
      const tensors = await model.readParams();
      await writeFinal(o.outDir, stateNow(), tensors, o.files);
    }
  } finally {
    if (o.handleSigint) Deno.removeSignalListener("SIGINT", onSigint);
    progress?.end();
    metrics.close();
    if (inflight) await inflight;
    adam.destroy();
    gradNorm.destroy();
    lossBuf.destroy();
    evalBuf.destroy();
  }
  return { globalStep, maxSteps, interrupted, checkpoint, logHistory, stepLosses };
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
