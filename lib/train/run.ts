/**
 * A whole training run from paths, as the train stage and the library API
 * start it: config → arguments, masked data, the GLM model on the device with
 * its adapter, an optional initial adapter, then the trainer.
 */
import { count } from "../plural.ts";
import {
  describeQuantization,
  type FinetuneConfig,
  finetuneMode,
  loadConfig,
  reportNotApplicable,
} from "../config/mod.ts";
import { osError, UserError } from "../errors.ts";
import { claimOutputDir, markOutputDir } from "../outdir.ts";
import { describeGpu } from "../gpu/device.ts";
import type { AdapterSpec } from "../model/adapter.ts";
import type { GlmModel } from "../model/glm.ts";
import { glmGroups, loadGlmConfig } from "../model/config.ts";
import { gpuForModel, loadGlmModel } from "../model/load.ts";
import { formatMemoryPlan, memoryPlan } from "../model/memory_plan.ts";
import { PEFT_CONFIG, PEFT_WEIGHTS, PREFIX_WEIGHTS, readAdapterDir } from "../model/adapter_dir.ts";
import { loraScale, PREFIX_EMBEDDING } from "../model/adapter.ts";
import { trainArgsFromConfig } from "./args.ts";
import {
  checkResumable,
  findCheckpoint,
  fullFiles,
  loraFiles,
  type ModelFiles,
  prefixFiles,
} from "./checkpoint.ts";
import { maxLength, runRecords } from "./data.ts";
import { runDataInfo, train, type TrainResult } from "./trainer.ts";
import { tensorBoardLog } from "./tensorboard_log.ts";

export interface RunOptions {
  modelDir: string;
  configPath: string;
  overrides?: string[];
  trainFile: string;
  evalFile?: string;
  outDir: string;
  resume?: "yes" | number;
  initAdapter?: string;
  shuffle?: boolean;
  /** Records per forward/backward pass (see TrainOptions.rowsPerPass). */
  rowsPerPass?: number;
  /** CLI: SIGINT saves and stops */
  handleSigint?: boolean;
  /** Train into `outDir` even when it is a non-empty directory that train did not write. */
  force?: boolean;
}

/**
 * What train writes into its output dir: how a dir written before output
 * markers existed (lib/outdir.ts) is recognised as an earlier run's.
 */
export const TRAIN_OUTPUT = /^(checkpoint-\d+|trainer_state\.json|metrics\.jsonl)$/;

/** The adapter a config asks for (PEFT names → model options). */
export function adapterSpec(cfg: FinetuneConfig): AdapterSpec {
  const p = cfg.peft_config;
  if (!p) return { kind: "full" };
  if (p.peft_type === "LORA") {
    const t = p.target_modules;
    return {
      kind: "lora",
      r: p.r,
      alpha: p.lora_alpha,
      dropout: p.lora_dropout,
      targetModules: typeof t === "string" ? [t] : [...t],
      ...(p.use_rslora ? { useRslora: true } : {}),
    };
  }
  return {
    kind: "prefix",
    preSeqLen: p.num_virtual_tokens,
    prefixProjection: p.prefix_projection,
    dropout: p.prefix_dropout,
    ...(p.encoder_hidden_size ? { prefixHiddenSize: p.encoder_hidden_size } : {}),
  };
}

/** How a model's trainable tensors are saved, by adapter kind. */
export function modelFilesFor(model: GlmModel, spec: AdapterSpec, modelDir: string): ModelFiles {
  const shapes = new Map(model.params.map((p) => [p.name, p.shape]));
  const c = model.config;
  switch (spec.kind) {
    case "lora":
      return loraFiles({
        shapes,
        r: spec.r,
        alpha: spec.alpha,
        dropout: spec.dropout,
        targetModules: spec.targetModules,
        useRslora: spec.useRslora,
        baseModel: modelDir,
      });
    case "prefix":
      return prefixFiles({
        shapes,
        preSeqLen: spec.preSeqLen,
        prefixProjection: spec.prefixProjection,
        baseModel: modelDir,
        numLayers: c.num_layers,
        kvChannels: c.kv_channels,
        groups: glmGroups(c),
      });
    case "full":
      return fullFiles({ shapes, baseModelDir: modelDir });
    default:
      throw new UserError("nothing to train: the adapter kind is none");
  }
}

/**
 * Tensors of an initial adapter dir (any layout readAdapterDir reads; a LoRA
 * dir may lack adapter_config.json, the training config then gives r, alpha
 * and the targets), checked against the adapter the config trains.
 */
export async function readInitAdapter(
  dir: string,
  spec: AdapterSpec,
): Promise<Map<string, Float32Array>> {
  if (spec.kind !== "lora" && spec.kind !== "prefix") {
    throw new UserError("--init-adapter applies to LoRA and P-Tuning v2 configs only");
  }
  try {
    if (!(await Deno.stat(dir)).isDirectory) {
      throw new UserError(`--init-adapter ${dir}: not a directory`);
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError(`--init-adapter ${dir}: no such directory`);
    }
    throw e;
  }
  const a = await readAdapterDir(dir, spec);
  const where = a.configPath ?? dir;
  if (a.spec.kind !== spec.kind) {
    throw new UserError(
      spec.kind === "prefix"
        ? `--init-adapter ${dir}: ${where} is a LoRA adapter, the config trains P-Tuning v2 ` +
          `(${PREFIX_WEIGHTS}, or a .safetensors file that holds ${PREFIX_EMBEDDING})`
        : `--init-adapter ${dir}: ${where} is a P-Tuning v2 adapter, the config trains LoRA ` +
          `(${PEFT_CONFIG} + ${PEFT_WEIGHTS})`,
    );
  }
  const had = a.spec;
  if (had.kind === "lora" && spec.kind === "lora") {
    if (had.r !== spec.r) {
      throw new UserError(`${where}: r is ${had.r}, the config's peft_config.r is ${spec.r}`);
    }
    // Other settings start the run from another function than the adapter's: said, not refused
    // (a new run may mean to change them).
    const [was, now] = [loraScale(had), loraScale(spec)];
    if (Math.abs(was - now) > 1e-12 * Math.abs(was)) {
      console.error(
        `note: --init-adapter ${dir} scales its LoRA by ${was} (${scaleText(had)}), this run by ` +
          `${now} (${scaleText(spec)}): it starts from another function than the adapter's`,
      );
    }
    const extra = had.targetModules.filter((t) => !spec.targetModules.includes(t));
    if (extra.length > 0) {
      throw new UserError(
        `${where}: has LoRA on ${
          extra.join(", ")
        }, which the config's peft_config.target_modules ` +
          `(${spec.targetModules.join(", ")}) does not train; add ${
            extra.length > 1 ? "them" : "it"
          } there to start from the whole adapter`,
      );
    }
    const fresh = spec.targetModules.filter((t) => !had.targetModules.includes(t));
    if (fresh.length > 0) {
      console.error(
        `note: --init-adapter ${dir} has no LoRA on ${fresh.join(", ")}; those start fresh (B = 0)`,
      );
    }
  }
  if (a.spec.kind === "prefix" && spec.kind === "prefix") {
    if (a.spec.preSeqLen !== spec.preSeqLen) {
      throw new UserError(
        `${where}: pre_seq_len is ${a.spec.preSeqLen}, the config's num_virtual_tokens is ${spec.preSeqLen}`,
      );
    }
    // With the projection the embedding is the MLP's input, without it the prefix itself.
    if (a.spec.prefixProjection !== spec.prefixProjection) {
      throw new UserError(
        `${where}: prefix_projection is ${a.spec.prefixProjection}, the config's ` +
          `peft_config.prefix_projection is ${spec.prefixProjection}; the prefix's tensors mean ` +
          `another thing in each, so one cannot start the other`,
      );
    }
  }
  return a.tensors;
}

function scaleText(s: AdapterSpec & { kind: "lora" }): string {
  return `lora_alpha ${s.alpha} / ${s.useRslora ? `√r, r ${s.r}, use_rslora` : `r ${s.r}`}`;
}

/**
 * `--dry-run`: the memory plan (lib/model/memory_plan.ts) of a run, from the
 * model's config.json and the training config alone — no weights, no device —
 * for the config's batch and max_input_length + max_output_length + 1 tokens.
 */
export async function dryRunPlan(
  o: Pick<RunOptions, "modelDir" | "configPath" | "overrides" | "rowsPerPass">,
): Promise<string> {
  const cfg = await loadConfig(o.configPath, o.overrides ?? []);
  const config = await loadGlmConfig(o.modelDir);
  const adapter = adapterSpec(cfg);
  const batch = cfg.training_args.per_device_train_batch_size;
  const seq = cfg.max_input_length + cfg.max_output_length + 1;
  const checkpointing = cfg.training_args.gradient_checkpointing;
  const rowsPerPass = Math.min(o.rowsPerPass ?? batch, batch);
  const q = cfg.quantization;
  const plan = memoryPlan(config, {
    adapter,
    batch,
    seq,
    gradientCheckpointing: checkpointing,
    rowsPerPass,
    ...(q
      ? {
        quantization: {
          quantType: q.quantType,
          doubleQuant: q.doubleQuant,
          blocksize: q.blocksize,
        },
      }
      : {}),
  });
  return formatMemoryPlan(
    plan,
    `${finetuneMode(cfg)}${
      q ? ` on a ${describeQuantization(q)} base (QLoRA)` : ""
    }, batch ${batch} × ${seq} tokens${
      rowsPerPass < batch ? ` in passes of ${rowsPerPass}` : ""
    }, gradient checkpointing ${checkpointing ? "on" : "off"}`,
  );
}

export async function runTraining(o: RunOptions): Promise<TrainResult> {
  const cfg = await loadConfig(o.configPath, o.overrides ?? []);
  reportNotApplicable(cfg);
  // The output dir must be new, empty or an earlier run's before anything is loaded.
  await claimOutputDir(o.outDir, "train", {
    force: o.force,
    legacy: (names) => names.some((n) => TRAIN_OUTPUT.test(n)),
  });
  const args = trainArgsFromConfig(cfg.training_args, {
    shuffle: o.shuffle ?? true,
    configPath: o.configPath,
  });
  const spec = adapterSpec(cfg);
  const mode = finetuneMode(cfg);
  const glmConfig = await loadGlmConfig(o.modelDir);
  const vocab = glmConfig.padded_vocab_size;
  const seqLength = glmConfig.seq_length;
  const trainRecs = await Array.fromAsync(runRecords(o.trainFile, vocab, seqLength));
  const evalRecs = o.evalFile
    ? await Array.fromAsync(runRecords(o.evalFile, vocab, seqLength))
    : undefined;
  if (!o.evalFile && args.evalStrategy !== "no") {
    console.error(
      `note: training_args.eval_strategy is "${args.evalStrategy}" but no eval file was given; not evaluating`,
    );
    args.evalStrategy = "no";
  }
  // A checkpoint the run cannot go on from is said before the model loads (minutes at 6B).
  const dataInfo = runDataInfo(args, trainRecs);
  if (o.resume !== undefined) {
    await checkResumable(await findCheckpoint(o.outDir, o.resume), {
      kind: spec.kind,
      engine: "webgpu",
      data: dataInfo,
      schedule: { lr_scheduler_type: args.lrSchedulerType, learning_rate: args.learningRate },
    });
  }
  const gpu = await gpuForModel(glmConfig);
  const maxSeq = Math.max(maxLength(trainRecs), evalRecs ? maxLength(evalRecs) : 1);
  const model = await loadGlmModel(gpu, o.modelDir, {
    adapter: spec,
    // a training pass's rows; evaluation runs in passes of at most as many (trainer.ts)
    maxBatch: Math.min(args.batchSize, o.rowsPerPass ?? Infinity),
    maxSeq,
    seed: cfg.training_args.seed,
    gradientCheckpointing: cfg.training_args.gradient_checkpointing,
    // QLoRA: the layers' linear weights quantized to 4 bits as they load.
    ...(cfg.quantization ? { quantization: cfg.quantization } : {}),
  });
  try {
    // A bad initial adapter is found before the output dir is made.
    if (o.initAdapter && o.resume === undefined) {
      model.setParams(await readInitAdapter(o.initAdapter, spec));
    }
    try {
      await Deno.mkdir(o.outDir, { recursive: true });
    } catch (e) {
      throw osError(e, o.outDir, "create the output dir");
    }
    await markOutputDir(o.outDir, "train");
    const tensorboard = tensorBoardLog(cfg.training_args, o.outDir);
    const trainable = model.params.reduce((a, p) => a + p.size, 0);
    const q = cfg.quantization;
    console.error(
      `train: ${mode}${q ? ` on a ${describeQuantization(q)} base (QLoRA)` : ""}, ${
        count(model.params.length, "trainable tensor")
      } (${count(trainable, "value")}), ${count(trainRecs.length, "record")}, on ${
        describeGpu(gpu)
      }`,
    );
    return await train({
      gpu,
      model,
      files: modelFilesFor(model, spec, o.modelDir),
      train: trainRecs,
      eval: evalRecs,
      args,
      outDir: o.outDir,
      resume: o.resume,
      overwrite: cfg.training_args.overwrite_output_dir,
      handleSigint: o.handleSigint,
      rowsPerPass: o.rowsPerPass,
      vocabSize: vocab,
      dataInfo,
      // Said once the trainer opens it, after the output dir and the resume are settled.
      logSinks: tensorboard
        ? [{
          open: async (step: number) => {
            await tensorboard.open(step);
            console.error(`train: TensorBoard event files in ${tensorboard.dir}`);
          },
          append: (e, extra) => tensorboard.append(e, extra),
          close: () => tensorboard.close(),
        }]
        : [],
      configEcho: {
        config_file: o.configPath,
        overrides: o.overrides ?? [],
        model_dir: o.modelDir,
        train_file: o.trainFile,
        eval_file: o.evalFile ?? null,
        mode,
        // How the base was held while the adapter trained (evaluate and chat take the same
        // --set to run on it; the adapter itself is a plain PEFT LoRA adapter).
        quantization: cfg.quantization
          ? {
            quant_type: cfg.quantization.quantType,
            double_quant: cfg.quantization.doubleQuant,
            blocksize: cfg.quantization.blocksize,
          }
          : null,
      },
    });
  } finally {
    model.destroy();
  }
}
