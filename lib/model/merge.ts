/**
 * Merging a LoRA adapter into its base model, as PEFT's `merge_and_unload`
 * followed by `save_pretrained` does: each target weight becomes
 * W' = W + (alpha/r)·B·A, computed in f32 and cast once to the base dtype;
 * every other tensor is copied byte for byte. Tensors are read, merged and
 * written one at a time (the model is never in memory whole), into a full
 * HF model dir: config.json and the tokenizer and other files of the base
 * dir, and safetensors sharded at `shardSize` (one model.safetensors when it
 * fits). The dir is built under a temporary name and renamed when complete.
 *
 * `outDir` may be new, empty, or an earlier merge-adapter output (its marker,
 * lib/outdir.ts); anything else needs `force`. It may never be, or contain,
 * the model or adapter dir. Weights that are not finite (a diverged adapter,
 * or a merge that overflows) are refused, naming the tensor.
 */
import { basename, join } from "node:path";
import { syncFile, writeDirAtomic } from "../atomic.ts";
import { UserError } from "../errors.ts";
import { assertFiniteTensor } from "../finite.ts";
import { checkNotInput, claimOutputDir, markOutputDir, OUTPUT_MARKER } from "../outdir.ts";
import { isDType } from "../safetensors/dtype.ts";
import { parseSize, type TensorToWrite, writeShardedSafetensors } from "../safetensors/write.ts";
import {
  layerPrefix,
  LINEAR_PATH,
  LORA_TARGETS,
  loraName,
  loraScale,
  type LoraTarget,
} from "./adapter.ts";
import { adapterTensorsFor, readAdapterDir } from "./adapter_dir.ts";
import { loadGlmConfig } from "./config.ts";
import { openWeights } from "./weights.ts";

export interface MergeOptions {
  modelDir: string;
  adapterDir: string;
  outDir: string;
  /** Largest shard, as transformers' max_shard_size ("2GB", "500MB", bytes). Default 2GB. */
  shardSize?: string | number;
  /** Called after each tensor is written. */
  onTensor?: (done: number, total: number, name: string) => void;
  /** Replace `outDir` even when it is not an earlier merge-adapter output. */
  force?: boolean;
}

export interface MergeResult {
  /** Files written to the out dir. */
  files: string[];
  /** Weights that received a LoRA update. */
  merged: string[];
  tensors: number;
}

/** The smallest magnitude float16 rounds to infinity (65504 plus half its last step). */
const F16_OVERFLOW = 65520;

/** Weight files of a model dir: not copied, the merged safetensors replace them. */
const WEIGHT_FILE = /^(model.*\.safetensors(\.index\.json)?|pytorch_model.*\.bin(\.index\.json)?)$/;

/**
 * W += scale · B·A in place, with W [out, in], A [r, in], B [out, r]. Each
 * row of B·A is summed in f64 and rounded to f32 before scaling, as an f32
 * matmul followed by an f32 multiply gives it (PEFT's get_delta_weight).
 */
export function addLoraDelta(
  W: Float32Array,
  A: Float32Array,
  B: Float32Array,
  out: number,
  inDim: number,
  r: number,
  scale: number,
): void {
  const row = new Float64Array(inDim);
  const f = Math.fround;
  const s = f(scale);
  for (let o = 0; o < out; o++) {
    row.fill(0);
    for (let k = 0; k < r; k++) {
      const b = B[o * r + k];
      if (b === 0) continue;
      const a = k * inDim;
      for (let j = 0; j < inDim; j++) row[j] += b * A[a + j];
    }
    const w = o * inDim;
    for (let j = 0; j < inDim; j++) W[w + j] = f(W[w + j] + f(f(row[j]) * s));
  }
}

/**
 * What a training run writes beside its weights (both engines, and HF Trainer): a full fine-tuning
 * output used as the base holds them, and they describe that run, not the merged model.
 */
const RUN_FILES = new Set([
  "trainer_state.json",
  "training_args.json",
  "training_args.bin",
  "metrics.jsonl",
  "all_results.json",
  "train_results.json",
  "eval_results.json",
]);

/** The base model dir's files a merge copies beside its weights (config, tokenizer, code). */
async function copiedFiles(modelDir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(modelDir)) {
    if (
      e.isFile && !WEIGHT_FILE.test(e.name) && !e.name.startsWith(".") && !RUN_FILES.has(e.name)
    ) out.push(e.name);
  }
  return out;
}

/**
 * Refuse an earlier merge's dir that also holds what a merge does not write
 * (its weights, the copied files, the marker), naming those entries.
 */
async function refuseAdded(outDir: string, modelDir: string): Promise<void> {
  const copied = new Set(await copiedFiles(modelDir));
  // RUN_FILES too: an earlier merge from a full fine-tuning output copied them
  const ours = (name: string) =>
    WEIGHT_FILE.test(name) || name === OUTPUT_MARKER || copied.has(name) || RUN_FILES.has(name);
  const added: string[] = [];
  try {
    for await (const e of Deno.readDir(outDir)) if (!ours(e.name)) added.push(e.name);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    throw e;
  }
  if (added.length === 0) return;
  added.sort();
  throw new UserError(
    `--out ${outDir}: an earlier merge's directory, which a merge replaces whole, now also holds ` +
      `${added.slice(0, 3).join(", ")}${added.length > 3 ? ", …" : ""} (not written by ` +
      `merge-adapter); move them out, choose another --out, or pass --force to replace it anyway`,
  );
}

export async function mergeAdapter(o: MergeOptions): Promise<MergeResult> {
  const shardSize = (() => {
    try {
      return parseSize(o.shardSize ?? "2GB");
    } catch (e) {
      throw new UserError(`--shard-size: ${(e as Error).message}`);
    }
  })();
  if (!(shardSize > 0)) throw new UserError(`--shard-size: must be positive`);
  await checkNotInput(o.outDir, "--out", [["--model", o.modelDir], ["--adapter", o.adapterDir]], {
    dir: true,
  });
  await claimOutputDir(o.outDir, "merge-adapter", { force: o.force, forceDoes: "replace it" });
  const config = await loadGlmConfig(o.modelDir);
  // An earlier merge's dir is replaced whole: files added to it since (a README, an evaluation)
  // would go with it, so without --force they are named and the merge stops.
  if (!o.force) await refuseAdded(o.outDir, o.modelDir);

  const adapter = await readAdapterDir(o.adapterDir);
  if (adapter.spec.kind === "prefix") {
    throw new UserError(
      `${o.adapterDir} is a P-Tuning v2 prefix, which cannot be merged into the weights: it adds ` +
        `${adapter.spec.preSeqLen} virtual key/value positions to every layer rather than changing ` +
        `a weight. Use the adapter as it is: deno task stage evaluate --model ${o.modelDir} ` +
        `--adapter ${o.adapterDir} ..., or deno task chat ${o.adapterDir} --model ${o.modelDir}`,
    );
  }
  const spec = adapter.spec;
  const weights = await openWeights(o.modelDir, config);

  // Every target of every layer needs its factors, shaped by the base weight they update.
  const targets = new Map<string, { A: string; B: string; out: number; in: number }>();
  const params: { name: string; shape: number[] }[] = [];
  for (let i = 0; i < config.num_layers; i++) {
    for (const t of spec.targetModules as LoraTarget[]) {
      if (!(LORA_TARGETS as readonly string[]).includes(t)) continue;
      const w = `${layerPrefix(i)}${LINEAR_PATH[t]}.weight`;
      const [out, inDim] = weights.shape(w);
      const A = loraName(i, t, "A"), B = loraName(i, t, "B");
      params.push({ name: A, shape: [spec.r, inDim] }, { name: B, shape: [out, spec.r] });
      targets.set(w, { A, B, out, in: inDim });
    }
  }
  const factors = adapterTensorsFor(params, adapter);
  const scale = loraScale(spec);

  const names = weights.names();
  const merged: string[] = [];
  let done = 0;
  const tensors: TensorToWrite[] = names.map((name) => {
    const dtype = weights.dtype(name);
    if (!isDType(dtype)) throw new UserError(`${weights.source}: ${name} has dtype ${dtype}`);
    const t = targets.get(name);
    const finish = <T>(x: T): T => {
      o.onTensor?.(++done, names.length, name);
      return x;
    };
    if (!t) {
      return {
        name,
        dtype,
        shape: weights.shape(name),
        data: async () => finish(await weights.raw(name)),
      };
    }
    merged.push(name);
    return {
      name,
      dtype,
      shape: weights.shape(name),
      data: async () => {
        const W = await weights.f32(name);
        addLoraDelta(W, factors.get(t.A)!, factors.get(t.B)!, t.out, t.in, spec.r, scale);
        const what = `merge-adapter (${o.adapterDir} into ${o.modelDir})`;
        assertFiniteTensor(what, name, W);
        // Written back in the base's dtype: past f16's range a value would become ±Inf.
        if (dtype === "F16") {
          const i = W.findIndex((v) => Math.abs(v) >= F16_OVERFLOW);
          if (i >= 0) {
            throw new UserError(
              `${what}: ${name}: the merged value ${W[i]} at element ${i} is beyond float16's ` +
                `range (±65504), the base's dtype; nothing was written`,
            );
          }
        }
        return finish(W);
      },
    };
  });

  let files: string[] = [];
  await writeDirAtomic(o.outDir, async (tmp) => {
    files = await writeShardedSafetensors(tmp, tensors, { shardSize });
    for (const name of await copiedFiles(o.modelDir)) {
      await Deno.copyFile(join(o.modelDir, name), join(tmp, name));
      await syncFile(join(tmp, name));
      files.push(name);
    }
    await markOutputDir(tmp, "merge-adapter");
  });
  return { files: files.map((f) => basename(f)).sort(), merged, tensors: names.length };
}
