/**
 * `deno task stage mask --in tok.jsonl --out masked.jsonl --mode train|eval
 *  (--config CFG | --max-input-length N --max-output-length M) [--mask-history] [--sanity N] [--model DIR]`
 *
 * Tokenized conversations → training records `{input_ids, labels}` or
 * evaluation records `{input_ids, output_ids}` (DESIGN §4), streamed and
 * written atomically, with summary figures on stderr. `--sanity N` prints the
 * first N records token by token as the finetune demo does (`--model` lets it
 * show each token's text; special tokens are named without it).
 */
import { loadConfig } from "../lib/config/mod.ts";
import { type FlagValues, parseFlags, positiveIntFlag } from "../lib/args.ts";
import {
  type EvalRecord,
  IGNORE_INDEX,
  type Limits,
  maskRecords,
  MaskStats,
  sanityTable,
  type TrainRecord,
} from "../lib/data/masks.ts";
import { UsageError, UserError } from "../lib/errors.ts";
import { readJsonlStrict, writeJsonl } from "../lib/jsonl.ts";
import { checkNotInput } from "../lib/outdir.ts";
import { ChatGLMTokenizer, SPECIAL_TOKENS } from "../lib/tokenizer/chatglm.ts";

export { evalRecords, maskRecords, trainRecord } from "../lib/data/masks.ts";

const USAGE = `usage: deno task stage mask --in tok.jsonl|- --out masked.jsonl|- --mode train|eval
       (--config CFG [--set key=value ...] | --max-input-length N --max-output-length M)
       [--mask-history] [--sanity N [--model MODEL_DIR]]`;

/** max_input_length / max_output_length from the flags, else from the config file. */
async function limitsOf(values: FlagValues): Promise<Limits> {
  let maxIn = positiveIntFlag(values["max-input-length"], "--max-input-length");
  let maxOut = positiveIntFlag(values["max-output-length"], "--max-output-length");
  if ((maxIn === undefined || maxOut === undefined) && values.config) {
    const cfg = await loadConfig(
      values.config as string,
      (values.set as string[] | undefined) ?? [],
    );
    maxIn ??= cfg.max_input_length;
    maxOut ??= cfg.max_output_length;
  }
  if (maxIn === undefined || maxOut === undefined) {
    throw new UsageError(
      `the lengths are required: --config CFG, or --max-input-length N and --max-output-length M\n${USAGE}`,
    );
  }
  return { maxInputLength: maxIn, maxOutputLength: maxOut };
}

export async function main(args: string[]): Promise<number> {
  const { values } = parseFlags(args, {
    in: { type: "string" },
    out: { type: "string" },
    mode: { type: "string" },
    config: { type: "string" },
    set: { type: "string", multiple: true },
    "max-input-length": { type: "string" },
    "max-output-length": { type: "string" },
    "mask-history": { type: "boolean", default: false },
    sanity: { type: "string" },
    model: { type: "string" },
    help: { type: "boolean", short: "h" },
  }, USAGE);
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  for (const f of ["in", "out", "mode"]) {
    if (!values[f]) throw new UsageError(`--${f} is required\n${USAGE}`);
  }
  const mode = values.mode as string;
  if (mode !== "train" && mode !== "eval") {
    throw new UserError(`--mode: expected train or eval, found "${mode}"`);
  }
  await checkNotInput(values.out as string, "--out", [["--in", values.in as string]]);
  const limits = await limitsOf(values);
  const sanity = positiveIntFlag(values.sanity, "--sanity") ?? 0;
  const tok = values.model ? await ChatGLMTokenizer.load(values.model as string) : undefined;
  const input = values.in as string;
  const name = input === "-" ? "<stdin>" : input;
  const stats = new MaskStats();
  let shown = 0;
  const records = maskRecords(readJsonlStrict(input), name, {
    ...limits,
    mode,
    maskHistory: values["mask-history"] as boolean,
  }, stats);
  await writeJsonl(
    values.out as string,
    (async function* () {
      for await (const r of records) {
        if (shown < sanity) {
          shown++;
          // With the records on stdout, the table goes to stderr.
          printSanity(r, tok, values.out === "-" ? console.error : console.log);
        }
        yield r;
      }
    })(),
  );
  for (const line of stats.summary(mode)) console.error(line);
  if (mode === "train" && stats.noLoss > 0) {
    console.error(`warning: ${stats.noLoss} records have no learned token left after truncation`);
  }
  return 0;
}

/** Token text for the sanity table: special tokens by name, others decoded when a model is at hand. */
function tokenText(id: number, eos: number, gmask: number, tok?: ChatGLMTokenizer): string {
  // [gMASK] is n+1, so every special id is known from the record alone.
  const n = gmask - 1;
  if (id >= n && id < n + SPECIAL_TOKENS.length) return SPECIAL_TOKENS[id - n];
  if (tok) return tok.decode([id]);
  return id === eos ? "</s>" : `#${id}`;
}

function printSanity(
  r: TrainRecord | EvalRecord,
  tok: ChatGLMTokenizer | undefined,
  print: (line: string) => void,
): void {
  const gmask = r.input_ids[0];
  const eos = tok?.eosId ?? 2;
  const text = (id: number) => tokenText(id, eos, gmask, tok);
  print("--> Sanity check");
  if ("labels" in r) {
    for (const line of sanityTable(r.input_ids, r.labels, text)) print(line);
  } else {
    for (const line of sanityTable(r.input_ids, r.input_ids.map(() => IGNORE_INDEX), text)) {
      print(line);
    }
    print("--> output");
    for (const line of sanityTable(r.output_ids, r.output_ids, text)) print(line);
  }
}
