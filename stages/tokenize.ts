/**
 * `deno task stage tokenize --model MODEL_DIR --in conv.jsonl --out tok.jsonl`
 *
 * Canonical conversation records → per-message ChatGLM3 token ids with role
 * and loss flag, streamed and written atomically.
 */
import { parseFlags } from "../lib/args.ts";
import { UsageError } from "../lib/errors.ts";
import { readJsonlStrict, writeJsonl } from "../lib/jsonl.ts";
import { checkNotInput } from "../lib/outdir.ts";
import { ChatGLMTokenizer } from "../lib/tokenizer/chatglm.ts";
import { tokenizeRecords } from "../lib/tokenizer/records.ts";

export { tokenizeRecord, tokenizeRecords } from "../lib/tokenizer/records.ts";

const USAGE =
  "usage: deno task stage tokenize --model MODEL_DIR --in conv.jsonl|- --out tok.jsonl|-";

export async function main(args: string[]): Promise<number> {
  const { values } = parseFlags(args, {
    model: { type: "string" },
    in: { type: "string" },
    out: { type: "string" },
    help: { type: "boolean", short: "h" },
  }, USAGE);
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  for (const f of ["model", "in", "out"]) {
    if (!values[f]) throw new UsageError(`--${f} is required\n${USAGE}`);
  }
  await checkNotInput(values.out as string, "--out", [["--in", values.in as string]]);
  const tok = await ChatGLMTokenizer.load(values.model as string);
  const input = values.in as string;
  const name = input === "-" ? "<stdin>" : input;
  const started = performance.now();
  let tokens = 0;
  const n = await writeJsonl(
    values.out as string,
    (async function* () {
      for await (const r of tokenizeRecords(tok, readJsonlStrict(input), name)) {
        for (const m of r.messages) tokens += m.ids.length;
        yield r;
      }
    })(),
  );
  const secs = (performance.now() - started) / 1000;
  console.error(`tokenized ${n} conversations, ${tokens} tokens (${secs.toFixed(1)} s)`);
  return 0;
}
