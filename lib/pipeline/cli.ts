/**
 * `deno task pipeline NAME|FILE [--set key=value ...] [--from STEP] [--only STEP]
 * [--dry-run] [--out DIR]`: NAME is `pipelines/NAME.yaml`.
 */
import { parseFlags } from "../args.ts";
import { UsageError } from "../errors.ts";
import { pipelinePath, runPipeline } from "./runner.ts";

export const USAGE =
  `usage: deno task pipeline NAME|FILE [--set key=value ...] [--from STEP] [--only STEP] [--dry-run] [--out DIR] [--force]

  NAME             pipelines/NAME.yaml (e.g. lora, ptuning, sft)
  --set K=V        a param (K or params.K), a step flag (steps.STEP.args.FLAG) or a
                   training-config value (training_args.max_steps=5); repeatable
  --from STEP      rerun STEP and every step after it, changed or not
  --only STEP      run just STEP (its inputs must exist)
  --dry-run        print each step's plan (run or skip, and why; inputs, outputs, argv)
  --out DIR        the run directory (default runs/<pipeline name>)
  --force          run in --out even when it is a non-empty directory that is not an
                   earlier run folder (steps still write only their outputs in it)`;

export async function main(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags(
    args,
    {
      set: { type: "string", multiple: true },
      from: { type: "string" },
      only: { type: "string" },
      out: { type: "string" },
      "dry-run": { type: "boolean" },
      force: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
    USAGE,
    true,
  );
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals.length > 1) {
    throw new UsageError(
      `one pipeline at a time (got ${positionals.slice(0, 2).join(" and ")})\n${USAGE}`,
    );
  }
  const target = positionals[0];
  if (target === undefined) throw new UsageError(`which pipeline?\n${USAGE}`);
  await runPipeline(await pipelinePath(target), {
    sets: (values.set as string[] | undefined) ?? [],
    from: values.from as string | undefined,
    only: values.only as string | undefined,
    out: values.out as string | undefined,
    dryRun: !!values["dry-run"],
    force: !!values.force,
  });
  return 0;
}
