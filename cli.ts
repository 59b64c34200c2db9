/**
 * The command line: `stage NAME ...`, `pipeline ...`, `validate ...`, `chat ...`.
 * Every failure the user can fix prints a message, never a stack trace.
 */
import { runCli, UsageError } from "./lib/errors.ts";
import { loadStage, STAGES } from "./stages/registry.ts";

const USAGE = `usage:
  deno task stage <${Object.keys(STAGES).join("|")}> [flags]
  deno task pipeline NAME|FILE [--set key=value ...] [--from STEP] [--only STEP] [--dry-run]
  deno task validate FILE... [--format text|github|json]
  deno task chat MODEL_OR_ADAPTER_DIR [--prompt TEXT]`;

async function main(): Promise<number | void> {
  const [cmd, ...rest] = Deno.args;
  switch (cmd) {
    case "stage": {
      const [name, ...args] = rest;
      if (!name || name === "--help" || name === "-h") {
        console.log(USAGE);
        return name ? 0 : 2;
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
    case "--help":
    case "-h":
      console.log(USAGE);
      return cmd ? 0 : 2;
    default:
      throw new UsageError(`unknown command "${cmd}"\n${USAGE}`);
  }
}

if (import.meta.main) await runCli(main);
