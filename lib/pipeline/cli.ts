/**
 * `deno task pipeline NAME|FILE [--set key=value ...] [--from STEP] [--only STEP]
 * [--dry-run] [--out DIR] [--force] [--resume]`: NAME is `pipelines/NAME.yaml`.
 */
import { type CommandSpec, parseCommand, usageOf } from "../args.ts";
import { UsageError } from "../errors.ts";
import { pipelinePath, runPipeline } from "./runner.ts";

export const COMMAND: CommandSpec = {
  name: "deno task pipeline",
  summary:
    "run a pipeline's steps in order, skipping each step whose inputs, flags and code are unchanged",
  usage: [
    "deno task pipeline NAME|FILE [--set key=value ...] [--from STEP] [--only STEP] [--dry-run]",
    "  [--out DIR] [--force] [--resume]",
  ],
  positionals: [[
    "NAME|FILE",
    "pipelines/NAME.yaml (lora, ptuning, sft), or the path of a pipeline file",
  ]],
  flags: {
    set: {
      type: "string",
      arg: "K=V",
      multiple: true,
      help:
        "a param (model=DIR, or params.K), a step flag (steps.STEP.args.FLAG) or a training-config value (training_args.max_steps=5)",
    },
    from: {
      type: "string",
      arg: "STEP",
      help: "rerun STEP and every step after it, changed or not",
    },
    only: { type: "string", arg: "STEP", help: "run just STEP (its inputs must exist)" },
    "dry-run": {
      type: "boolean",
      help: "print each step's plan (run or skip, and why; inputs, outputs, argv); run nothing",
    },
    out: {
      type: "string",
      arg: "DIR",
      defaultText: "runs/<pipeline name>",
      help: "the run folder",
    },
    force: {
      type: "boolean",
      help:
        "run in --out even when it is a non-empty directory that is not an earlier run folder (steps still write only their outputs)",
    },
    resume: {
      type: "boolean",
      help:
        "continue an interrupted train step from its newest checkpoint (the steps that finished are skipped as usual)",
    },
  },
};

export async function main(args: string[]): Promise<number> {
  const { values, positionals, help } = parseCommand(args, COMMAND);
  if (help) return 0;
  if (positionals.length > 1) {
    throw new UsageError(
      `one pipeline at a time (got ${positionals.slice(0, 2).join(" and ")})\n${usageOf(COMMAND)}`,
    );
  }
  const target = positionals[0];
  if (target === undefined) throw new UsageError(`which pipeline?\n${usageOf(COMMAND)}`);
  const sets = (values.set as string[] | undefined) ?? [];
  // The command that resumes this run: the same pipeline, params and folder. --from is
  // left out (it would force finished steps to run again); --resume is added when needed.
  const command = [
    "deno",
    "task",
    "pipeline",
    target,
    ...sets.flatMap((s) => ["--set", s]),
    ...(values.out !== undefined ? ["--out", values.out as string] : []),
    ...(values.only !== undefined ? ["--only", values.only as string] : []),
    ...(values.resume ? ["--resume"] : []),
  ];
  await runPipeline(await pipelinePath(target), {
    sets,
    from: values.from as string | undefined,
    only: values.only as string | undefined,
    out: values.out as string | undefined,
    dryRun: !!values["dry-run"],
    force: !!values.force,
    resume: !!values.resume,
    command,
    handleSigint: true,
  });
  return 0;
}
