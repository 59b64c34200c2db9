/**
 * `deno task stage tokenize --model MODEL_DIR --in conv.jsonl --out tok.jsonl`
 *
 * Canonical conversation records → per-message ChatGLM3 token ids with role
 * and loss flag, streamed and written atomically.
 */
import { type CommandSpec, missingFlag, parseCommand } from "../lib/args.ts";
import { readJsonlStrict, writeJsonl } from "../lib/jsonl.ts";
import { parseKeepingNumbers } from "../lib/data/pynumber.ts";
import { join } from "node:path";
import { checkNotInput } from "../lib/outdir.ts";
import { ChatGLMTokenizer } from "../lib/tokenizer/chatglm.ts";
import { tokenizeRecords } from "../lib/tokenizer/records.ts";
import { count } from "../lib/plural.ts";

export { tokenizeRecord, tokenizeRecords } from "../lib/tokenizer/records.ts";

export const COMMAND: CommandSpec = {
  name: "deno task stage tokenize",
  summary:
    "canonical conversation records → ChatGLM3 token ids per message, with roles and loss flags",
  usage: ["deno task stage tokenize --model MODEL_DIR --in conv.jsonl|- --out tok.jsonl|-"],
  flags: {
    model: {
      type: "string",
      arg: "DIR",
      required: true,
      help: "the model dir whose tokenizer.model (SentencePiece) encodes the text",
    },
    in: {
      type: "string",
      arg: "FILE",
      required: true,
      help: "conversation records (convert's output); - reads stdin",
    },
    out: {
      type: "string",
      arg: "FILE",
      required: true,
      help: "the tokenized records, JSONL, written atomically; - for stdout",
    },
  },
};

export async function main(args: string[]): Promise<number> {
  const { values, help } = parseCommand(args, COMMAND);
  if (help) return 0;
  for (const f of ["model", "in", "out"]) {
    if (!values[f]) throw missingFlag(f, COMMAND);
  }
  const model = values.model as string;
  await checkNotInput(values.out as string, "--out", [
    ["--in", values.in as string],
    ["--model's tokenizer.model", join(model, "tokenizer.model")],
    ["--model's config.json", join(model, "config.json")],
  ]);
  const tok = await ChatGLMTokenizer.load(values.model as string);
  const input = values.in as string;
  const name = input === "-" ? "<stdin>" : input;
  const started = performance.now();
  let tokens = 0;
  const n = await writeJsonl(
    values.out as string,
    (async function* () {
      for await (
        const r of tokenizeRecords(tok, readJsonlStrict(input, parseKeepingNumbers), name)
      ) {
        for (const m of r.messages) tokens += m.ids.length;
        yield r;
      }
    })(),
  );
  const secs = (performance.now() - started) / 1000;
  console.error(
    `tokenized ${count(n, "conversation")}, ${count(tokens, "token")} (${secs.toFixed(1)} s)`,
  );
  return 0;
}
