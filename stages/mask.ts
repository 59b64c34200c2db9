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
import {
  type CommandSpec,
  type FlagValues,
  missingFlag,
  parseCommand,
  positiveIntFlag,
  usageOf,
} from "../lib/args.ts";
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

export const COMMAND: CommandSpec = {
  name: "deno task stage mask",
  summary:
    "tokenized conversations → the finetune_demo's train records {input_ids, labels} or eval records {input_ids, output_ids}",
  usage: [
    "deno task stage mask --in tok.jsonl|- --out masked.jsonl|- --mode train|eval",
    "  (--config CFG [--set key=value ...] | --max-input-length N --max-output-length M)",
    "  [--mask-history] [--sanity N [--model MODEL_DIR]] [--allow-empty]",
  ],
  flags: {
    in: {
      type: "string",
      arg: "FILE",
      required: true,
      help: "tokenized records (the tokenize stage's output); - reads stdin",
    },
    out: {
      type: "string",
      arg: "FILE",
      required: true,
      help: "the masked records, JSONL, written atomically; - for stdout",
    },
    mode: {
      type: "string",
      arg: "train|eval",
      required: true,
      help:
        "train: one record per conversation with labels (process_batch); eval: one prompt and output_ids per answer (process_batch_eval)",
    },
    config: {
      type: "string",
      arg: "CFG",
      help: "a training config to read max_input_length and max_output_length from",
    },
    set: {
      type: "string",
      arg: "KEY=VALUE",
      multiple: true,
      help: "override a value of --config (max_input_length=256)",
    },
    "max-input-length": {
      type: "string",
      arg: "N",
      defaultText: "the config's max_input_length",
      help: "tokens of prompt kept",
    },
    "max-output-length": {
      type: "string",
      arg: "N",
      defaultText: "the config's max_output_length",
      help: "tokens of answer kept; train records are cut to input + output + 1",
    },
    "mask-history": {
      type: "boolean",
      help:
        "train: learn only the last assistant message; earlier answers are context (default: learn every answer)",
    },
    sanity: {
      type: "string",
      arg: "N",
      help:
        "print the first N records token by token, with each token's label, as the finetune demo's sanity check",
    },
    model: {
      type: "string",
      arg: "DIR",
      help: "with --sanity: the model dir whose tokenizer shows each token's text",
    },
    "allow-empty": {
      type: "boolean",
      help:
        "write an output with no records (or, in train mode, none with a learned token) instead of failing",
    },
  },
};

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
      `the lengths are required: --config CFG, or --max-input-length N and --max-output-length M\n${
        usageOf(COMMAND)
      }`,
    );
  }
  return { maxInputLength: maxIn, maxOutputLength: maxOut };
}

export async function main(args: string[]): Promise<number> {
  const { values, help } = parseCommand(args, COMMAND);
  if (help) return 0;
  for (const f of ["in", "out", "mode"]) {
    if (!values[f]) throw missingFlag(f, COMMAND);
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
    maskHistory: !!values["mask-history"],
  }, stats);
  const allowEmpty = !!values["allow-empty"];
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
      // Nothing to train on or to predict: fail here, with the reason, before the
      // output is committed, rather than at a later step that reads an empty set.
      const useful = mode === "train" ? stats.records - stats.noLoss : stats.records;
      if (useful === 0 && !allowEmpty) {
        const why = stats.conversations === 0
          ? "the file holds no conversations"
          : stats.explain(mode, limits);
        throw new UserError(
          `${name}: nothing to ${mode === "train" ? "train on" : "evaluate"}: ${why} ` +
            "(--allow-empty writes the empty output anyway)",
        );
      }
    })(),
  );
  for (const line of stats.summary(mode)) console.error(line);
  const why = stats.explain(mode, limits);
  if (why) console.error(`warning: ${why}`);
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
