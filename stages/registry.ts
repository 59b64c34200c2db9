/**
 * The stages by CLI name. Each module exports `main(args)`, the command-line
 * entry, beside its library functions. A stage whose module does not exist yet
 * gives a clear error instead of a crash.
 */
import { UserError } from "../lib/errors.ts";

export const STAGES: Record<string, string> = {
  convert: "./convert.ts",
  tokenize: "./tokenize.ts",
  mask: "./mask.ts",
  train: "./train.ts",
  evaluate: "./evaluate.ts",
  "merge-adapter": "./merge_adapter.ts",
  report: "./report.ts",
};

export interface StageModule {
  main(args: string[]): Promise<number | void>;
}

/** The file that holds a stage's code (used for code hashes by the pipeline runner). */
export function stageFile(name: string): URL {
  const rel = STAGES[name];
  if (!rel) {
    throw new UserError(`unknown stage "${name}"; stages are: ${Object.keys(STAGES).join(", ")}`);
  }
  return new URL(rel, import.meta.url);
}

export async function loadStage(name: string): Promise<StageModule> {
  const url = stageFile(name);
  try {
    await Deno.stat(url);
  } catch {
    throw new UserError(`stage "${name}" is not implemented yet`);
  }
  return await import(url.href) as StageModule;
}
