/**
 * `deno task stage train --model MODEL_DIR --config CFG --train masked_train.jsonl
 *    [--eval masked_eval.jsonl] --out OUT_DIR [--resume yes|N] [--init-adapter DIR]
 *    [--no-shuffle] [--set key.path=value ...] [--engine webgpu|torch [torchrun flags]]`
 * or, to print the memory plan without weights or a device,
 * `deno task stage train --model MODEL_DIR --config CFG --dry-run`,
 * or the finetune_demo's positional form
 * `deno task stage train DATA_DIR MODEL_DIR CONFIG [yes|N]`, where the config's
 * data_config.train_file / val_file, inside DATA_DIR, are masked JSONL and the
 * output goes to training_args.output_dir.
 */
import { join } from "node:path";
import { loadConfig } from "../lib/config/mod.ts";
import { numberFlag, parseFlags, positiveIntFlag } from "../lib/args.ts";
import { UsageError, UserError } from "../lib/errors.ts";
import { dryRunPlan, runTraining } from "../lib/train/run.ts";
import {
  INTERRUPTED,
  runTorchTraining,
  torchDryRunPlan,
  type TorchLaunch,
} from "../lib/train/torch_engine.ts";

export { dryRunPlan, runTraining } from "../lib/train/run.ts";
export { train } from "../lib/train/trainer.ts";

const USAGE =
  `usage: deno task stage train --model MODEL_DIR --config CFG --train masked_train.jsonl
         [--eval masked_eval.jsonl] --out OUT_DIR [--resume yes|N] [--init-adapter DIR]
         [--no-shuffle] [--rows-per-pass N] [--force] [--set key.path=value ...]
         [--engine webgpu|torch] [--nproc-per-node N] [--nnodes N --node-rank R
         --rdzv-endpoint HOST:PORT [--rdzv-id ID] [--rdzv-backend c10d]]
   or: deno task stage train --model MODEL_DIR --config CFG [--set ...] [--rows-per-pass N] --dry-run
   or: deno task stage train DATA_DIR MODEL_DIR CONFIG [yes|N]

  --dry-run   print the device memory the run needs, by kind of buffer (reads the
              model's config.json only: no weights, no GPU), and exit
  --rows-per-pass N
              feed each micro-batch to the model N records at a time; the passes'
              gradients add up to the same result, and activation memory is sized
              for N records (default: the whole per_device_train_batch_size)
  --force     train into --out even when it is a non-empty directory that train did
              not write (its checkpoints are still only replaced with
              training_args.overwrite_output_dir)
  --engine    webgpu (default): this toolkit's engine, one device; torch: the PyTorch
              trainer under torchrun (DDP, DeepSpeed ZeRO, FSDP; deno task setup-torch once)
  --nproc-per-node, --nnodes, --node-rank, --rdzv-endpoint, --rdzv-id, --rdzv-backend
              torchrun's flags, for --engine torch (docs/scale-out.md)`;

function parseResume(v: string | undefined): "yes" | number | undefined {
  if (v === undefined || v === "no") return undefined;
  if (v === "yes") return "yes";
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) {
    throw new UserError(`--resume: expected "yes" or a checkpoint step number, found "${v}"`);
  }
  return n;
}

export async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseFlags(
    argv,
    {
      model: { type: "string" },
      config: { type: "string" },
      train: { type: "string" },
      eval: { type: "string" },
      out: { type: "string" },
      resume: { type: "string" },
      "init-adapter": { type: "string" },
      "no-shuffle": { type: "boolean" },
      "dry-run": { type: "boolean" },
      "rows-per-pass": { type: "string" },
      force: { type: "boolean" },
      set: { type: "string", multiple: true },
      engine: { type: "string" },
      "nproc-per-node": { type: "string" },
      nnodes: { type: "string" },
      "node-rank": { type: "string" },
      "rdzv-endpoint": { type: "string" },
      "rdzv-id": { type: "string" },
      "rdzv-backend": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    USAGE,
    true,
  );
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const sets = (values.set as string[] | undefined) ?? [];
  const rowsPerPass = positiveIntFlag(values["rows-per-pass"], "--rows-per-pass");
  const engine = (values.engine as string | undefined) ?? "webgpu";
  if (engine !== "webgpu" && engine !== "torch") {
    throw new UserError(`--engine: expected webgpu or torch, got "${engine}"`);
  }
  const launch: TorchLaunch = {
    nprocPerNode: positiveIntFlag(values["nproc-per-node"], "--nproc-per-node"),
    nnodes: positiveIntFlag(values.nnodes, "--nnodes"),
    nodeRank: numberFlag(values["node-rank"], "--node-rank", { integer: true, min: 0 }),
    rdzvEndpoint: values["rdzv-endpoint"] as string | undefined,
    rdzvId: values["rdzv-id"] as string | undefined,
    rdzvBackend: values["rdzv-backend"] as string | undefined,
  };
  const torchFlag = [
    "nproc-per-node",
    "nnodes",
    "node-rank",
    "rdzv-endpoint",
    "rdzv-id",
    "rdzv-backend",
  ]
    .find((f) => values[f] !== undefined);
  if (engine === "webgpu" && torchFlag) {
    throw new UserError(
      `--${torchFlag} applies to --engine torch (the WebGPU engine uses one device)`,
    );
  }
  if (engine === "torch" && values["rows-per-pass"] !== undefined && !values["dry-run"]) {
    throw new UserError(
      "--rows-per-pass applies to --engine webgpu (with torch, lower per_device_train_batch_size and raise gradient_accumulation_steps)",
    );
  }
  let modelDir = values.model as string | undefined;
  let configPath = values.config as string | undefined;
  let trainFile = values.train as string | undefined;
  let evalFile = values.eval as string | undefined;
  let outDir = values.out as string | undefined;
  let resume = values.resume as string | undefined;
  if (positionals.length > 0) {
    if (positionals.length < 3 || positionals.length > 4) {
      throw new UsageError(`expected DATA_DIR MODEL_DIR CONFIG [yes|N]\n${USAGE}`);
    }
    const [dataDir, m, c, r] = positionals;
    modelDir ??= m;
    configPath ??= c;
    resume ??= r;
    const cfg = await loadConfig(c, sets);
    trainFile ??= join(dataDir, cfg.data_config.train_file);
    if (
      evalFile === undefined && cfg.data_config.val_file && cfg.training_args.eval_strategy !== "no"
    ) {
      evalFile = join(dataDir, cfg.data_config.val_file);
    }
    outDir ??= cfg.training_args.output_dir;
  }
  if (values["dry-run"]) {
    for (const [flag, v] of [["--model", modelDir], ["--config", configPath]]) {
      if (!v) throw new UsageError(`${flag} is required\n${USAGE}`);
    }
    if (engine === "torch") {
      console.log(
        await torchDryRunPlan({
          modelDir: modelDir!,
          configPath: configPath!,
          overrides: sets,
          launch,
        }),
      );
      return 0;
    }
    console.log(
      await dryRunPlan({
        modelDir: modelDir!,
        configPath: configPath!,
        overrides: sets,
        rowsPerPass,
      }),
    );
    return 0;
  }
  for (
    const [flag, v] of [["--model", modelDir], ["--config", configPath], ["--train", trainFile], [
      "--out",
      outDir,
    ]]
  ) {
    if (!v) throw new UsageError(`${flag} is required\n${USAGE}`);
  }
  if (engine === "torch") {
    const { exitCode, globalStep } = await runTorchTraining({
      modelDir: modelDir!,
      configPath: configPath!,
      overrides: sets,
      trainFile: trainFile!,
      evalFile,
      outDir: outDir!,
      resume: parseResume(resume),
      initAdapter: values["init-adapter"] as string | undefined,
      shuffle: !values["no-shuffle"],
      force: !!values.force,
      launch,
    });
    if (exitCode === INTERRUPTED) return INTERRUPTED;
    console.error(`done: ${globalStep} steps; outputs in ${outDir}`);
    return 0;
  }
  const res = await runTraining({
    modelDir: modelDir!,
    configPath: configPath!,
    overrides: sets,
    trainFile: trainFile!,
    evalFile,
    outDir: outDir!,
    resume: parseResume(resume),
    initAdapter: values["init-adapter"] as string | undefined,
    shuffle: !values["no-shuffle"],
    rowsPerPass,
    handleSigint: true,
    force: !!values.force,
  });
  if (res.interrupted) {
    console.error(
      `interrupted after step ${res.globalStep}/${res.maxSteps}; checkpoint saved in ${res.checkpoint}\n` +
        `resume with the same command and --resume ${res.globalStep} (or --resume yes)`,
    );
    return 130;
  }
  console.error(`done: ${res.globalStep} steps; outputs in ${outDir}`);
  return 0;
}
