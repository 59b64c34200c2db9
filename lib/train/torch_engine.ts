/**
 * The train stage's `--engine torch`: the same inputs as the WebGPU engine,
 * checked the same way here, then handed to the project's PyTorch trainer
 * (engines/torch/train.py) under torchrun (engines/torch/launch.py, which is
 * torch.distributed.run with quiet failures). The trainer writes the same
 * outputs as the WebGPU engine (engines/torch/checkpoint.py), so every later
 * stage reads them unchanged.
 *
 * What is decided here, before any Python starts: the config (validated, with
 * overrides), the masked data (every line checked, token ids against the
 * model's vocabulary), the initial adapter (read and checked as the WebGPU
 * engine reads it), the output dir (an earlier run's checkpoints are an error
 * unless resuming or overwrite_output_dir), the checkpoint to resume and
 * whether its data and batching match, and the DeepSpeed config file. The
 * Python side gets all of it in one JSON job file.
 *
 * The Python environment is GLM_TORCH_PYTHON (an interpreter) if set, else the
 * virtual environment `deno task setup-torch` makes in .venv-torch/. Nothing
 * is downloaded at train time (HF_HUB_OFFLINE).
 */
import { dirname, isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import {
  finetuneMode,
  loadConfig,
  refuseQuantization,
  reportNotApplicable,
} from "../config/mod.ts";
import type { FinetuneConfig } from "../config/config.ts";
import { TORCH_HONOURS, TRAINING_ARGS } from "../config/schema.ts";
import { UserError } from "../errors.ts";
import { loadGlmConfig } from "../model/config.ts";
import { formatTorchMemoryPlan, type Sharding, torchMemoryPlan } from "../model/memory_plan.ts";
import { writeSafetensorsF32 } from "../safetensors/write.ts";
import {
  checkResumable,
  findCheckpoint,
  type LogEntry,
  lossTotalOf,
  prepareOutDir,
  resumeData,
  setAsideNewer,
} from "./checkpoint.ts";
import { RecordsDigest, runRecords } from "./data.ts";
import { claimOutputDir, markOutputDir } from "../outdir.ts";
import type { TrainingArgs } from "../config/config.ts";
import { followMetrics } from "./follow_metrics.ts";
import { tensorBoardLog } from "./tensorboard_log.ts";
import { adapterSpec, readInitAdapter, type RunOptions, TRAIN_OUTPUT } from "./run.ts";

/** The engine's Python files; named here so the pipeline's code hash of the train stage covers them. */
export const TORCH_ENGINE_FILES = [
  new URL("../../engines/torch/launch.py", import.meta.url),
  new URL("../../engines/torch/train.py", import.meta.url),
  new URL("../../engines/torch/chatglm.py", import.meta.url),
  new URL("../../engines/torch/data.py", import.meta.url),
  new URL("../../engines/torch/checkpoint.py", import.meta.url),
  new URL("../../engines/torch/requirements.txt", import.meta.url),
];
const LAUNCH = fileURLToPath(TORCH_ENGINE_FILES[0]);
const TRAIN = fileURLToPath(TORCH_ENGINE_FILES[1]);
// (Directories are derived from a file: the pipeline's code hash reads every `new URL` asset as a file.)
const REPO = resolve(dirname(LAUNCH), "..", "..");
/**
 * Why the torch engine refuses a 4-bit base: PyTorch's QLoRA is bitsandbytes'
 * (transformers' BitsAndBytesConfig), which the environment `deno task
 * setup-torch` builds from the package mirror cannot install, so a QLoRA path
 * there could never be run or tested (docs/qlora.md).
 */
const TORCH_QLORA = "PyTorch's QLoRA needs bitsandbytes, which its environment " +
  "(deno task setup-torch) cannot install; train the 4-bit base with --engine webgpu (the default)";

/** Where `deno task setup-torch` puts its virtual environment by default. */
export const DEFAULT_VENV = join(REPO, ".venv-torch");
/** The shipped configs (ds_zero_2.json / ds_zero_3.json), the last place a relative deepspeed path is looked for. */
const CONFIGS_DIR = join(REPO, "configs");

export const SETUP_HINT =
  "run `deno task setup-torch` (or set GLM_TORCH_PYTHON to a Python that has torch, transformers, peft and accelerate)";

/** train.py's exit codes: it printed (or wrote) why; interrupted with a checkpoint saved. */
const EXPLAINED = 3;
export const INTERRUPTED = 130;

/** torchrun's flags, passed through. */
export interface TorchLaunch {
  nprocPerNode?: number;
  nnodes?: number;
  nodeRank?: number;
  rdzvEndpoint?: string;
  rdzvBackend?: string;
  rdzvId?: string;
}

export interface TorchRunOptions extends RunOptions {
  launch?: TorchLaunch;
}

export interface TorchRunResult {
  /** 0 done; 130 interrupted (a checkpoint was saved and the way to resume printed). */
  exitCode: number;
  /** Steps done in all, when the run completed. */
  globalStep?: number;
}

/** The Python that runs the engine: GLM_TORCH_PYTHON, else the setup task's venv; a UserError if neither exists. */
export async function torchPython(): Promise<string> {
  const named = Deno.env.get("GLM_TORCH_PYTHON");
  const python = named || join(DEFAULT_VENV, "bin", "python");
  try {
    await Deno.stat(python);
  } catch {
    throw new UserError(
      named
        ? `GLM_TORCH_PYTHON=${named}: no such file; point it at a Python interpreter, or unset it and ${SETUP_HINT}`
        : `the torch engine needs its Python environment (${DEFAULT_VENV} does not exist): ${SETUP_HINT}`,
    );
  }
  return python;
}

/**
 * A config's deepspeed file: an absolute path, else relative to the config's
 * directory, the working directory, or the shipped configs/ (where upstream's
 * ds_zero_2.json / ds_zero_3.json are), first found; checked to be DeepSpeed JSON.
 */
export async function resolveDeepspeed(value: string, configPath: string): Promise<string> {
  const places = isAbsolute(value)
    ? [value]
    : [resolve(dirname(configPath), value), resolve(value), join(CONFIGS_DIR, value)];
  for (const p of places) {
    let text: string;
    try {
      text = await Deno.readTextFile(p);
    } catch {
      continue;
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw new UserError(`training_args.deepspeed: ${p} is not valid JSON`);
    }
    if (typeof json !== "object" || json === null || Array.isArray(json)) {
      throw new UserError(
        `training_args.deepspeed: ${p} is not a DeepSpeed config (a JSON object)`,
      );
    }
    return p;
  }
  throw new UserError(
    `training_args.deepspeed: ${value} not found (looked in ${places.join(", ")})`,
  );
}

/** Keys of training_args that are the train stage's business, never TrainingArguments'. */
const STAGE_KEYS = new Set([
  "output_dir",
  "overwrite_output_dir",
  "evaluation_strategy",
  "predict_with_generate",
  "generation_config",
  "generation_max_length",
  "generation_num_beams",
  "save_safetensors",
  "do_predict",
  "do_train",
]);

/**
 * The training_args handed to HF TrainingArguments: every key the toolkit
 * applies (defaults filled in), and the torch-only keys the file sets.
 */
export function torchTrainingArgs(cfg: FinetuneConfig): Record<string, unknown> {
  const present = new Set(cfg.notApplicable.map((n) => n.key));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(cfg.training_args)) {
    if (STAGE_KEYS.has(k)) continue;
    const na = TRAINING_ARGS[k]?.na !== undefined;
    if (na && !(TORCH_HONOURS.has(k) && present.has(`training_args.${k}`))) continue;
    out[k] = v;
  }
  return out;
}

/**
 * Check every record of a masked JSONL file as the WebGPU engine does, holding one at a time:
 * their count and digest.
 */
async function checkRecords(
  file: string,
  model: { padded_vocab_size: number; seq_length: number },
): Promise<{ n: number; digest: string }> {
  let n = 0;
  const d = new RecordsDigest();
  for await (const r of runRecords(file, model.padded_vocab_size, model.seq_length)) {
    n++;
    d.add(r);
  }
  return { n, digest: d.hex() };
}

/** The adapter as the Python side builds it. */
function adapterJob(cfg: FinetuneConfig): Record<string, unknown> {
  const spec = adapterSpec(cfg);
  switch (spec.kind) {
    case "lora": {
      return {
        kind: "lora",
        r: spec.r,
        alpha: spec.alpha,
        dropout: spec.dropout,
        target_modules: spec.targetModules,
        use_rslora: spec.useRslora ?? false,
      };
    }
    case "prefix":
      return {
        kind: "prefix",
        pre_seq_len: spec.preSeqLen,
        prefix_projection: spec.prefixProjection,
        dropout: spec.dropout,
        ...(spec.prefixHiddenSize ? { hidden_size: spec.prefixHiddenSize } : {}),
      };
    default:
      return { kind: "full" };
  }
}

function positive(v: number | undefined, flag: string): number {
  if (v === undefined) return 1;
  if (!Number.isInteger(v) || v < 1) throw new UserError(`${flag}: expected a positive integer`);
  return v;
}

/** torchrun's arguments for a launch: single node without a rendezvous endpoint is `--standalone`. */
export function torchrunArgs(l: TorchLaunch): string[] {
  const nproc = positive(l.nprocPerNode, "--nproc-per-node");
  const nnodes = positive(l.nnodes, "--nnodes");
  const args = ["--nproc-per-node", String(nproc), "--nnodes", String(nnodes)];
  if (nnodes > 1 && !l.rdzvEndpoint) {
    throw new UserError(
      "--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node; see docs/scale-out.md)",
    );
  }
  if (l.rdzvEndpoint) {
    args.push("--rdzv-endpoint", l.rdzvEndpoint, "--rdzv-backend", l.rdzvBackend ?? "c10d");
    if (l.rdzvId) args.push("--rdzv-id", l.rdzvId);
    if (l.nodeRank !== undefined) args.push("--node-rank", String(l.nodeRank));
  } else {
    args.push("--standalone");
  }
  return args;
}

export async function runTorchTraining(o: TorchRunOptions): Promise<TorchRunResult> {
  const cfg = await loadConfig(o.configPath, o.overrides ?? []);
  reportNotApplicable(cfg, undefined, "torch");
  refuseQuantization(cfg, "the torch engine", TORCH_QLORA);
  // As the WebGPU engine: a new, empty or earlier train output dir (lib/outdir.ts).
  await claimOutputDir(o.outDir, "train", {
    force: o.force,
    legacy: (names) => names.some((n) => TRAIN_OUTPUT.test(n)),
  });
  const launch = o.launch ?? {};
  const world = positive(launch.nprocPerNode, "--nproc-per-node") *
    positive(launch.nnodes, "--nnodes");
  const torchrun = torchrunArgs(launch);
  const python = await torchPython();
  const t = cfg.training_args;
  if (t.save_strategy === "best") {
    throw new UserError(
      `training_args.save_strategy: "best" needs metric_for_best_model, which this trainer does not track; use "steps", "epoch" or "no"`,
    );
  }

  const model = await loadGlmConfig(o.modelDir);
  const records = await checkRecords(o.trainFile, model);
  let evalFile = o.evalFile;
  if (evalFile) await checkRecords(evalFile, model);
  if (!evalFile && t.eval_strategy !== "no") {
    console.error(
      `note: training_args.eval_strategy is "${t.eval_strategy}" but no eval file was given; not evaluating`,
    );
  }
  if (t.eval_strategy === "no") evalFile = undefined;

  const dataInfo = resumeData({
    records: records.n,
    digest: records.digest,
    batch: t.per_device_train_batch_size * world,
    accumulation: t.gradient_accumulation_steps,
    seed: t.data_seed ?? t.seed,
    shuffle: o.shuffle ?? true,
    dropLast: t.dataloader_drop_last,
  });

  await Deno.mkdir(o.outDir, { recursive: true });
  await markOutputDir(o.outDir, "train");
  await prepareOutDir(o.outDir, o.resume === undefined, t.overwrite_output_dir);
  let resumeDir: string | undefined;
  let resumeWindow: unknown;
  let resumeLossTotal: unknown;
  /** The step the run starts from: 0, or the resumed checkpoint's. */
  let startStep = 0;
  if (o.resume !== undefined) {
    resumeDir = await findCheckpoint(o.outDir, o.resume);
    const rs = await checkResumable(resumeDir, {
      kind: adapterSpec(cfg).kind,
      engine: "torch",
      data: dataInfo,
      schedule: { lr_scheduler_type: t.lr_scheduler_type, learning_rate: t.learning_rate },
    });
    resumeWindow = rs.logging_window;
    const ts = await readJsonFile(join(resumeDir, "trainer_state.json"));
    resumeLossTotal = lossTotalOf(rs, (ts.log_history ?? []) as LogEntry[]);
    startStep = Number(/checkpoint-(\d+)$/.exec(resumeDir)?.[1] ?? 0);
    await setAsideNewer(o.outDir, startStep);
  }

  const spec = adapterSpec(cfg);
  const tmp = await Deno.makeTempDir({ prefix: "glm-torch-" });
  try {
    let initFile: string | undefined;
    if (o.initAdapter && o.resume === undefined) {
      const tensors = await readInitAdapter(o.initAdapter, spec);
      initFile = join(tmp, "init.safetensors");
      await writeSafetensorsF32(
        initFile,
        new Map([...tensors].map(([k, v]) => [k, { shape: [v.length], data: v }])),
      );
    }
    const trainingArgs = torchTrainingArgs(cfg);
    if (typeof t.deepspeed === "string" && t.deepspeed) {
      trainingArgs.deepspeed = await resolveDeepspeed(t.deepspeed, o.configPath);
    }
    const job = {
      model_dir: resolve(o.modelDir),
      // what adapters record as base_model_name_or_path: the path as given, as the WebGPU engine writes it
      base_model: o.modelDir,
      train_file: resolve(o.trainFile),
      eval_file: evalFile ? resolve(evalFile) : null,
      out_dir: resolve(o.outDir),
      mode: finetuneMode(cfg),
      adapter: adapterJob(cfg),
      init_file: initFile ?? null,
      init_source: o.initAdapter ?? null,
      resume_dir: resumeDir ? resolve(resumeDir) : null,
      resume_window: resumeWindow ?? null,
      resume_loss_total: resumeLossTotal ?? null,
      training_args: trainingArgs,
      // the torch-only keys the config sets: a transformers version without one of them says so
      torch_keys: Object.keys(trainingArgs).filter((k) => TORCH_HONOURS.has(k)),
      data_info: dataInfo,
      config_echo: {
        config_file: o.configPath,
        overrides: o.overrides ?? [],
        model_dir: o.modelDir,
        train_file: o.trainFile,
        eval_file: evalFile ?? null,
        mode: finetuneMode(cfg),
        engine: "torch",
        world_size: world,
      },
    };
    // TensorBoard logs come from this side, as the WebGPU engine writes them (lib/train/
    // tensorboard_log.ts), fed from metrics.jsonl as the workers append to it: the same
    // files whatever the engine, and no tensorboard package needed in the torch environment.
    trainingArgs.report_to = "none";
    const tensorboard = (launch.nodeRank ?? 0) === 0
      ? tensorBoardLog(t as TrainingArgs, o.outDir)
      : undefined;
    const jobFile = join(tmp, "job.json");
    await Deno.writeTextFile(jobFile, JSON.stringify(job));
    const errorFile = join(tmp, "error.txt");
    if (tensorboard) console.error(`train: TensorBoard event files in ${tensorboard.dir}`);
    const follow = tensorboard
      ? await followMetrics(join(o.outDir, "metrics.jsonl"), startStep, tensorboard)
      : undefined;
    let code: number;
    try {
      code = await launch_(python, [LAUNCH, ...torchrun, TRAIN, jobFile], errorFile);
    } finally {
      await follow?.stop();
    }
    if (code === INTERRUPTED) return { exitCode: code };
    if (code === 0) {
      const st = await readJsonFile(join(o.outDir, "trainer_state.json"));
      return { exitCode: 0, globalStep: st.global_step as number };
    }
    const why = await Deno.readTextFile(errorFile).catch(() => "");
    const lines = [...new Set(why.split("\n").filter((l) => l.trim()))];
    if (code === EXPLAINED && lines.length > 0) throw new UserError(lines.join("\n"));
    throw new UserError(
      `the torch engine failed (exit code ${code})${
        lines.length ? `: ${lines.join("; ")}` : "; its output is above"
      }`,
    );
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

async function readJsonFile(path: string): Promise<Record<string, unknown>> {
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`${path}: missing`);
    if (e instanceof SyntaxError) throw new UserError(`${path}: not valid JSON`);
    throw e;
  }
}

/**
 * Run the launcher with the terminal's stdio. SIGINT (Ctrl-C, or sent to this
 * process alone) goes to the launcher, which passes it to the workers: they
 * finish their step, save a checkpoint and exit 130; this process waits.
 */
async function launch_(python: string, args: string[], errorFile: string): Promise<number> {
  const child = new Deno.Command(python, {
    args,
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
    env: {
      PYTHONUNBUFFERED: "1",
      HF_HUB_OFFLINE: "1",
      TRANSFORMERS_NO_ADVISORY_WARNINGS: "1",
      GLM_TORCH_ERROR_FILE: errorFile,
      GLM_PROGRESS_TTY: Deno.stderr.isTerminal() ? "1" : "0",
    },
  }).spawn();
  const pass = () => {
    try {
      child.kill("SIGINT");
    } catch { /* already exited */ }
  };
  Deno.addSignalListener("SIGINT", pass);
  try {
    return (await child.status).code;
  } finally {
    Deno.removeSignalListener("SIGINT", pass);
  }
}

/**
 * `--dry-run --engine torch`: the memory one GPU holds (lib/model/memory_plan.ts
 * torchMemoryPlan) for the config's adapter, batch, precision and sharding
 * (training_args.deepspeed's ZeRO stage, or fsdp) across --nproc-per-node ×
 * --nnodes GPUs; the model's config.json alone is read.
 */
export async function torchDryRunPlan(
  o: Pick<RunOptions, "modelDir" | "configPath" | "overrides"> & { launch?: TorchLaunch },
): Promise<string> {
  const cfg = await loadConfig(o.configPath, o.overrides ?? []);
  refuseQuantization(cfg, "the torch engine", TORCH_QLORA);
  const config = await loadGlmConfig(o.modelDir);
  const t = cfg.training_args;
  const gpus = positive(o.launch?.nprocPerNode, "--nproc-per-node") *
    positive(o.launch?.nnodes, "--nnodes");
  let sharding: Sharding = "ddp";
  let offload = false;
  let how = gpus > 1 ? "DDP" : "one process";
  let half = Boolean(t.bf16 || t.fp16);
  if (typeof t.deepspeed === "string" && t.deepspeed) {
    const path = await resolveDeepspeed(t.deepspeed, o.configPath);
    const ds = JSON.parse(await Deno.readTextFile(path));
    const stage = Number(ds.zero_optimization?.stage ?? 0);
    sharding = stage >= 3 ? "zero3" : stage === 2 ? "zero2" : "ddp";
    offload = stage >= 3 &&
      ["offload_param", "offload_optimizer"].some((k) =>
        ["cpu", "nvme"].includes(ds.zero_optimization?.[k]?.device)
      );
    half ||= ds.bf16?.enabled === true || ds.fp16?.enabled === true;
    how = `ZeRO-${stage} (${t.deepspeed})${offload ? " with CPU offload" : ""}`;
  } else if (t.fsdp) {
    const opts = String(t.fsdp);
    const fc = (t.fsdp_config ?? {}) as Record<string, unknown>;
    const gradOp = /shard_grad_op/i.test(opts) || fc.reshard_after_forward === false;
    sharding = gradOp ? "zero2" : "zero3";
    offload = /offload/.test(opts) || fc.cpu_offload === true;
    how = `FSDP ${gradOp ? "SHARD_GRAD_OP" : "FULL_SHARD"}${offload ? " with CPU offload" : ""}`;
  }
  const adapter = adapterSpec(cfg);
  // A GPU run holds a LoRA / P-Tuning v2 base in the checkpoint's dtype (chatglm3-6b: float16).
  const frozenHalf = half || (adapter.kind !== "full" && /^b?float16$/.test(config.torch_dtype));
  const batch = t.per_device_train_batch_size;
  const seq = cfg.max_input_length + cfg.max_output_length + 1;
  const plan = torchMemoryPlan(config, {
    adapter,
    batch,
    seq,
    gradientCheckpointing: t.gradient_checkpointing,
    gpus,
    sharding,
    half,
    frozenHalf,
    offload,
  });
  return formatTorchMemoryPlan(
    plan,
    `engine torch, ${finetuneMode(cfg)}, ${gpus} GPU${
      gpus > 1 ? "s" : ""
    }, ${how}, batch ${batch} × ${seq} tokens, ${
      t.bf16 ? "bf16" : t.fp16 ? "fp16" : half ? "half precision" : "f32"
    }${frozenHalf && !half ? " (frozen base f16)" : ""}, gradient checkpointing ${
      t.gradient_checkpointing ? "on" : "off"
    }`,
  );
}
