/**
 * The command line: `stage NAME ...`, `pipeline ...`, `validate ...`, `chat ...`.
 * Every failure the user can fix prints a message, never a stack trace.
 */
import { runCli, UsageError } from "./lib/errors.ts";
import { loadStage, stageList, STAGES } from "./stages/registry.ts";

const USAGE = `usage:
  deno task stage NAME [flags]          run one stage (NAME --help for its flags)
  deno task pipeline NAME|FILE [flags]  run a pipeline (pipelines/NAME.yaml; --help for its flags)
  deno task validate FILE... [flags]    the same as deno task stage validate
  deno task chat DIR [flags]            the same as deno task stage chat`;

const STAGE_HELP = `usage: deno task stage NAME [flags]   (deno task stage NAME --help: its flags)

stages:
${stageList()}`;

async function main(): Promise<number | void> {
  const [cmd, ...rest] = Deno.args;
  switch (cmd) {
    case "stage": {
      const [name, ...args] = rest;
      if (!name || name === "--help" || name === "-h") {
        if (!name) throw new UsageError(`which stage?\n${STAGE_HELP}`);
        console.log(STAGE_HELP);
        return 0;
      }
      if (!Object.hasOwn(STAGES, name)) {
        throw new UsageError(`unknown stage "${name}"\n${STAGE_HELP}`);
      }
      return await (await loadStage(name)).main(args);
    }
    case "validate":
      return await (await import("./stages/validate.ts")).main(rest);
    case "pipeline":
      return await (await import("./lib/pipeline/cli.ts")).main(rest);
    case "chat":
      return await (await import("./stages/chat.ts")).main(rest);
    case undefined:
      throw new UsageError(`which command?\n${USAGE}`);
    case "--help":
    case "-h":
      console.log(`${USAGE}\n\nstages:\n${stageList()}`);
      return 0;
    default:
      throw new UsageError(`unknown command "${cmd}"\n${USAGE}`);
  }
}

if (import.meta.main) await runCli(main);
