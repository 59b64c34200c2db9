/**
 * `deno task pipeline NAME|FILE [--set key=value ...] [--from STEP] [--only STEP]
 * [--dry-run] [--out DIR]`: NAME is `pipelines/NAME.yaml`.
 */
import { UserError } from "../errors.ts";
import { pipelinePath, runPipeline } from "./runner.ts";

export const USAGE =
  `usage: deno task pipeline NAME|FILE [--set key=value ...] [--from STEP] [--only STEP] [--dry-run] [--out DIR]

  NAME             pipelines/NAME.yaml (e.g. lora, ptuning, sft)
  --set K=V        a param (K or params.K), a step flag (steps.STEP.args.FLAG) or a
                   training-config value (training_args.max_steps=5); repeatable
  --from STEP      rerun STEP and every step after it, changed or not
  --only STEP      run just STEP (its inputs must exist)
  --dry-run        print each step's plan (run or skip, and why; inputs, outputs, argv)
  --out DIR        the run directory (default runs/<pipeline name>)`;

export async function main(args: string[]): Promise<number> {
  const sets: string[] = [];
  let target: string | undefined;
  let from: string | undefined;
  let only: string | undefined;
  let out: string | undefined;
  let dryRun = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    const eq = a.startsWith("--") ? a.indexOf("=") : -1;
    const flag = eq > 0 ? a.slice(0, eq) : a;
    const value = (): string => {
      if (eq > 0) return a.slice(eq + 1);
      const v = args[++i];
      if (v === undefined) throw new UserError(`${flag} needs a value\n${USAGE}`);
      return v;
    };
    switch (flag) {
      case "--set":
        sets.push(value());
        break;
      case "--from":
        from = value();
        break;
      case "--only":
        only = value();
        break;
      case "--out":
        out = value();
        break;
      case "--dry-run":
        dryRun = true;
        break;
      case "-h":
      case "--help":
        console.log(USAGE);
        return 0;
      default:
        if (a.startsWith("-")) throw new UserError(`unknown flag ${a}\n${USAGE}`);
        if (target !== undefined) {
          throw new UserError(`one pipeline at a time (got ${target} and ${a})\n${USAGE}`);
        }
        target = a;
    }
  }
  if (target === undefined) throw new UserError(`which pipeline?\n${USAGE}`);
  await runPipeline(await pipelinePath(target), { sets, from, only, out, dryRun });
  return 0;
}
