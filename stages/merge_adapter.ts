/**
 * merge-adapter: a LoRA adapter merged into its base model, written as a full
 * HF model dir (see lib/model/merge.ts).
 *
 *   deno task stage merge-adapter --model MODEL_DIR --adapter ADAPTER_DIR --out OUT_DIR [--shard-size 2GB] [--force]
 */
import { count } from "../lib/plural.ts";
import { type CommandSpec, missingFlag, parseCommand } from "../lib/args.ts";
import { mergeAdapter } from "../lib/model/merge.ts";
import { StatusLine } from "../lib/progress.ts";

export const COMMAND: CommandSpec = {
  name: "deno task stage merge-adapter",
  summary: "a LoRA adapter merged into its base model, written as a full HF model dir",
  usage: [
    "deno task stage merge-adapter --model MODEL_DIR --adapter ADAPTER_DIR --out OUT_DIR [--shard-size 2GB] [--force]",
  ],
  flags: {
    model: { type: "string", arg: "DIR", required: true, help: "the base model dir" },
    adapter: {
      type: "string",
      arg: "DIR",
      required: true,
      help: "the LoRA adapter dir (PEFT: adapter_config.json, adapter_model.safetensors)",
    },
    out: {
      type: "string",
      arg: "DIR",
      required: true,
      help: "the merged model dir (config.json, tokenizer, safetensors shards), replaced whole",
    },
    "shard-size": {
      type: "string",
      arg: "SIZE",
      default: "2GB",
      help: "the largest weights file; bigger models are split into shards with an index",
    },
    force: {
      type: "boolean",
      help:
        "replace --out even when it is not an earlier merge-adapter output (never when it is, or contains, an input dir)",
    },
  },
};

export async function main(args: string[]): Promise<number> {
  const { values, help } = parseCommand(args, COMMAND);
  if (help) return 0;
  for (const k of ["model", "adapter", "out"] as const) {
    if (!values[k]) throw missingFlag(k, COMMAND);
  }
  const status = new StatusLine();
  try {
    const r = await mergeAdapter({
      modelDir: values.model as string,
      adapterDir: values.adapter as string,
      outDir: values.out as string,
      shardSize: values["shard-size"] as string,
      force: !!values.force,
      onTensor: (done, total, name) => status.update(`merge-adapter ${done}/${total}  ${name}`),
    });
    status.end();
    console.error(
      `merge-adapter: ${r.merged.length} of ${
        count(r.tensors, "tensor")
      } updated → ${values.out} (${r.files.join(", ")})`,
    );
  } finally {
    status.end();
  }
  return 0;
}
