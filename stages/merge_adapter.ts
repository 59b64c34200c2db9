/**
 * merge-adapter: a LoRA adapter merged into its base model, written as a full
 * HF model dir (see lib/model/merge.ts).
 *
 *   deno task stage merge-adapter --model MODEL_DIR --adapter ADAPTER_DIR --out OUT_DIR [--shard-size 2GB] [--force]
 */
import { parseFlags } from "../lib/args.ts";
import { UsageError } from "../lib/errors.ts";
import { mergeAdapter } from "../lib/model/merge.ts";
import { StatusLine } from "../lib/progress.ts";

const USAGE =
  `usage: deno task stage merge-adapter --model MODEL_DIR --adapter ADAPTER_DIR --out OUT_DIR [--shard-size 2GB] [--force]

  --force   replace --out even when it is not an earlier merge-adapter output
            (it may never be, or contain, the model or adapter dir)`;

export async function main(args: string[]): Promise<number> {
  const { values } = parseFlags(args, {
    model: { type: "string" },
    adapter: { type: "string" },
    out: { type: "string" },
    "shard-size": { type: "string" },
    force: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  }, USAGE);
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  for (const k of ["model", "adapter", "out"] as const) {
    if (!values[k]) throw new UsageError(`merge-adapter: --${k} is required\n${USAGE}`);
  }
  const status = new StatusLine();
  try {
    const r = await mergeAdapter({
      modelDir: values.model as string,
      adapterDir: values.adapter as string,
      outDir: values.out as string,
      shardSize: (values["shard-size"] as string | undefined) ?? "2GB",
      force: !!values.force,
      onTensor: (done, total, name) => status.update(`merge-adapter ${done}/${total}  ${name}`),
    });
    status.end();
    console.error(
      `merge-adapter: ${r.merged.length} of ${r.tensors} tensors updated → ${values.out} (${
        r.files.join(", ")
      })`,
    );
  } finally {
    status.end();
  }
  return 0;
}
