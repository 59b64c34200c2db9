/**
 * `deno task stage train --model MODEL_DIR --config CFG --train masked_train.jsonl
 *    [--eval masked_eval.jsonl] --out OUT_DIR [--resume yes|N] [--init-adapter DIR]
 *    [--no-shuffle] [--set key.path=value ...]`
 * or, to print the memory plan without weights or a device,
 * `deno task stage train --model MODEL_DIR --config CFG --dry-run`,
 * or the finetune_demo's positional form
 * `deno task stage train DATA_DIR MODEL_DIR CONFIG [yes|N]`, where the config's
 * data_config.train_file / val_file, inside DATA_DIR, are masked JSONL and the
 * output goes to training_args.output_dir.
 */
import { count } from "../lib/plural.ts";
import { join } from "node:path";
import { loadConfig } from "../lib/config/mod.ts";
import {
  type CommandSpec,
  missingFlag,
  numberFlag,
  parseCommand,
  positiveIntFlag,
  usageOf,
} from "../lib/args.ts";
import { UsageError, UserError } from "../lib/errors.ts";
import { dryRunPlan, runTraining } from "../lib/train/run.ts";
import { checkNotInput } from "../lib/outdir.ts";
import {
  INTERRUPTED,
  runTorchTraining,
  torchDryRunPlan,
  type TorchLaunch,
} from "../lib/train/torch_engine.ts";
import { pipelineStep } from "../lib/invocation.ts";

export { dryRunPlan, runTraining } from "../lib/train/run.ts";
export { train } from "../lib/train/trainer.ts";

export const COMMAND: CommandSpec = {
  name: "deno task stage train",
  summary:
    "LoRA, P-Tuning v2 or full fine-tuning with HF Trainer's semantics: checkpoints, resume, PEFT files",
  usage: [
    "deno task stage train --model MODEL_DIR --config CFG --train masked_train.jsonl",
    "  [--eval masked_eval.jsonl] --out OUT_DIR [--resume yes|N] [--init-adapter DIR]",
    "  [--no-shuffle] [--rows-per-pass N] [--force] [--set key.path=value ...]",
    "  [--engine webgpu|torch] [--nproc-per-node N] [--nnodes N --node-rank R",
    "  --rdzv-endpoint HOST:PORT [--rdzv-id ID] [--rdzv-backend c10d]]",
    "deno task stage train --model MODEL_DIR --config CFG [--set ...] [--rows-per-pass N] --dry-run",
    "deno task stage train DATA_DIR MODEL_DIR CONFIG [yes|N]",
  ],
  positionals: [
    [
      "DATA_DIR MODEL_DIR CONFIG [yes|N]",
      "the finetune_demo's form: the config's data_config.train_file / val_file (masked JSONL) " +
      "inside DATA_DIR, the output in training_args.output_dir, and the optional resume argument",
    ],
  ],
  flags: {
    model: {
      type: "string",
      arg: "DIR",
      required: true,
      help: "the base model dir (config.json, tokenizer.model, safetensors weights)",
    },
    config: {
      type: "string",
      arg: "CFG",
      required: true,
      help: "the training config, in the ChatGLM3 finetune_demo schema (configs/lora.yaml)",
    },
    train: {
      type: "string",
      arg: "FILE",
      required: true,
      help: "masked train records {input_ids, labels} (mask --mode train)",
    },
    eval: {
      type: "string",
      arg: "FILE",
      help: "masked records for the eval loss at training_args.eval_steps (default: no evaluation)",
    },
    out: {
      type: "string",
      arg: "DIR",
      required: true,
      help:
        "the output dir: checkpoint-N/, the adapter or model, trainer_state.json, metrics.jsonl",
    },
    resume: {
      type: "string",
      arg: "yes|N",
      help: "continue from the newest complete checkpoint in --out (yes) or from checkpoint-N",
    },
    "init-adapter": {
      type: "string",
      arg: "DIR",
      help: "start LoRA or P-Tuning v2 from this adapter's weights instead of a fresh one",
    },
    "no-shuffle": {
      type: "boolean",
      help: "keep the records in file order (default: shuffled with the seed each epoch, as HF)",
    },
    "dry-run": {
      type: "boolean",
      help:
        "print the device memory the run needs, by kind of buffer (reads config.json only: no weights, no GPU), and exit",
    },
    "rows-per-pass": {
      type: "string",
      arg: "N",
      defaultText: "the whole per_device_train_batch_size",
      help:
        "feed each micro-batch N records at a time: the same gradients, activation memory for N records",
    },
    force: {
      type: "boolean",
      help:
        "train into a non-empty --out that train did not write (checkpoints are still replaced only with overwrite_output_dir)",
    },
    set: {
      type: "string",
      arg: "KEY=VALUE",
      multiple: true,
      help: "override a config value by its YAML path (training_args.max_steps=5)",
    },
    engine: {
      type: "string",
      arg: "webgpu|torch",
      defaultText: "webgpu",
      help:
        "webgpu: this toolkit's engine, one device; torch: the PyTorch trainer under torchrun (DDP, FSDP, DeepSpeed; deno task setup-torch once)",
    },
    "nproc-per-node": {
      type: "string",
      arg: "N",
      defaultText: "1",
      help: "torchrun: processes (GPUs) per node, for --engine torch",
    },
    nnodes: {
      type: "string",
      arg: "N",
      defaultText: "1",
      help: "torchrun: nodes taking part, for --engine torch",
    },
    "node-rank": {
      type: "string",
      arg: "R",
      defaultText: "0",
      help: "torchrun: this node's rank, for --engine torch",
    },
    "rdzv-endpoint": {
      type: "string",
      arg: "HOST:PORT",
      help: "torchrun: the rendezvous address of a multi-node run, for --engine torch",
    },
    "rdzv-id": {
      type: "string",
      arg: "ID",
      help: "torchrun: the rendezvous id shared by the nodes of one run, for --engine torch",
    },
    "rdzv-backend": {
      type: "string",
      arg: "NAME",
      defaultText: "c10d",
      help: "torchrun: the rendezvous backend, for --engine torch",
    },
  },
};

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
  const { values, positionals, help } = parseCommand(argv, COMMAND);
  if (help) return 0;
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
  ].find((f) => values[f] !== undefined);
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
  // --eval FILE is the run's val_file: upstream turns evaluation off for a config without one,
  // which would leave a given file unused (an explicit data_config.val_file on --set still wins).
  if (evalFile !== undefined) sets.unshift(`data_config.val_file=${JSON.stringify(evalFile)}`);
  let outDir = values.out as string | undefined;
  let resume = values.resume as string | undefined;
  if (positionals.length > 0) {
    if (positionals.length < 3 || positionals.length > 4) {
      throw new UsageError(`expected DATA_DIR MODEL_DIR CONFIG [yes|N]\n${usageOf(COMMAND)}`);
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
    for (const [flag, v] of Object.entries({ model: modelDir, config: configPath })) {
      if (!v) throw missingFlag(flag, COMMAND);
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
  const required = { model: modelDir, config: configPath, train: trainFile, out: outDir };
  for (const [flag, v] of Object.entries(required)) if (!v) throw missingFlag(flag, COMMAND);
  // What either engine takes.
  const job = {
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
  };
  // Even with --force: an output dir that is (or holds) an input would replace it.
  await checkNotInput(job.outDir, "--out", [
    ["--model", job.modelDir],
    ["--config", job.configPath],
    ["--train", job.trainFile],
    ["--eval", job.evalFile],
    ["--init-adapter", job.initAdapter],
  ], { dir: true });
  if (engine === "torch") {
    const { exitCode, globalStep } = await runTorchTraining({ ...job, launch });
    if (exitCode === INTERRUPTED) return INTERRUPTED;
    console.error(`done: ${count(globalStep ?? 0, "step")}; outputs in ${outDir}`);
    return 0;
  }
  const res = await runTraining({ ...job, rowsPerPass, handleSigint: true });
  if (res.interrupted) {
    console.error(
      `interrupted after step ${res.globalStep}/${res.maxSteps}; checkpoint saved in ${res.checkpoint}` +
        // In a pipeline the runner says how to resume the pipeline.
        (pipelineStep()
          ? ""
          : `\nresume with the same command and --resume ${res.globalStep} (or --resume yes)`),
    );
    return 130;
  }
  console.error(`done: ${count(res.globalStep, "step")}; outputs in ${outDir}`);
  return 0;
}
