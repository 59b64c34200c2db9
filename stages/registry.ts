/**
 * The stages by CLI name, with what each does (`deno task stage --help`
 * lists them). Each module exports `main(args)`, the command-line entry, and
 * `COMMAND`, its flags (lib/args.ts), beside its library functions. A stage
 * whose module does not exist yet gives a clear error instead of a crash.
 */
import { UserError } from "../lib/errors.ts";

export interface StageEntry {
  /** the module, relative to this file */
  file: string;
  /** one line: what the stage does */
  does: string;
  /** whether a pipeline step may run it (chat reads a terminal, so it may not) */
  step: boolean;
}

export const STAGES: Record<string, StageEntry> = {
  validate: {
    file: "./validate.ts",
    does: "check raw data files: FILE:LINE: field: message for every bad record; writes nothing",
    step: true,
  },
  convert: {
    file: "./convert.ts",
    does:
      "raw data (ChatGLM3, messages, AdvertiseGen, Alpaca, ShareGPT, ToolAlpaca) → canonical conversation records",
    step: true,
  },
  tokenize: {
    file: "./tokenize.ts",
    does: "conversation records → ChatGLM3 token ids per message, with roles and loss flags",
    step: true,
  },
  mask: {
    file: "./mask.ts",
    does:
      "token ids → the finetune_demo's train records {input_ids, labels} or eval records {input_ids, output_ids}",
    step: true,
  },
  train: {
    file: "./train.ts",
    does: "LoRA, P-Tuning v2 or full fine-tuning with HF Trainer's semantics; checkpoints, resume",
    step: true,
  },
  evaluate: {
    file: "./evaluate.ts",
    does: "generate and score ROUGE-1/2/L and BLEU-4, or teacher-forced loss, over masked records",
    step: true,
  },
  "merge-adapter": {
    file: "./merge_adapter.ts",
    does: "a LoRA adapter merged into its base model, written as a full HF model dir",
    step: true,
  },
  report: {
    file: "./report.ts",
    does: "summary.json, report.md and report.html of a pipeline run",
    step: true,
  },
  chat: {
    file: "./chat.ts",
    does: "talk to a model or adapter dir, one --prompt or an interactive session",
    step: false,
  },
};

export interface StageModule {
  main(args: string[]): Promise<number | void>;
}

/** The file that holds a stage's code (used for code hashes by the pipeline runner). */
export function stageFile(name: string): URL {
  const entry = Object.hasOwn(STAGES, name) ? STAGES[name] : undefined;
  if (!entry) {
    throw new UserError(
      `unknown stage "${name}"; stages are: ${
        Object.keys(STAGES).join(", ")
      } (deno task stage --help says what each does)`,
    );
  }
  return new URL(entry.file, import.meta.url);
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

/** `deno task stage --help`: every stage and what it does. */
export function stageList(): string {
  const width = Math.max(...Object.keys(STAGES).map((n) => n.length));
  return Object.entries(STAGES).map(([n, e]) => `  ${n.padEnd(width)}  ${e.does}`).join("\n");
}
