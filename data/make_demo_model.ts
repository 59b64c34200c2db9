/**
 * Makes the demo base model's weights, `data/demo-model/model.safetensors`,
 * from scratch with the project's own trainer:
 *
 *   1. the pretraining corpus (`makePretrain` in make_demo.ts: the demo's
 *      contents and phrases, written without the demo's templates) → WORK/corpus/;
 *   2. a deterministic random start (seeded) of the model in
 *      data/demo-model/config.json → WORK/init/;
 *   3. `pipelines/demo-base.yaml` (convert → validate → tokenize → mask → full
 *      SFT → evaluate) on them → WORK/train/;
 *   4. the trained weights stored as f16 in data/demo-model/model.safetensors
 *      (config.json's torch_dtype becomes float16).
 *
 *   deno run -A data/make_demo_model.ts [--work runs/demo-base] [--out data/demo-model]
 *        [--seed 1234] [--train 6000] [--set key=value ...]
 *
 * `--set` is passed to the pipeline (`--set training_args.max_steps=50`).
 * The pipeline skips unchanged steps, so a rerun after an interruption only
 * redoes what is missing.
 */
import { join } from "node:path";
import { writeFileAtomic, writeJsonAtomic } from "../lib/atomic.ts";
import { runCli, UserError } from "../lib/errors.ts";
import { runPipeline } from "../lib/pipeline/runner.ts";
import { type DType, writeSafetensors } from "../lib/safetensors/mod.ts";
import { type F32Tensor as Tensor, readSafetensorsF32 } from "../lib/safetensors/mod.ts";
import { type GlmConfig, parseGlmConfig } from "../lib/model/config.ts";
import { glmWeightShapes } from "../lib/model/weights.ts";
import { makePretrain, rng, toJsonLines } from "./make_demo.ts";

/**
 * A random start as tools/make_demo_tokenizer.py's learnability check makes
 * it (matrices N(0, 0.02), RMSNorm weights 1), with zero biases; a function
 * of the seed only.
 */
export function initWeights(c: GlmConfig, seed: number): Map<string, Tensor> {
  const u = rng(seed);
  let spare: number | undefined;
  const normal = (): number => {
    if (spare !== undefined) {
      const s = spare;
      spare = undefined;
      return s;
    }
    // Box–Muller; 1 - u() keeps the logarithm finite.
    const r = Math.sqrt(-2 * Math.log(1 - u()));
    const t = 2 * Math.PI * u();
    spare = r * Math.sin(t);
    return r * Math.cos(t);
  };
  const out = new Map<string, Tensor>();
  for (const [name, shape] of glmWeightShapes(c)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith("layernorm.weight")) data.fill(1);
    else if (!name.endsWith(".bias")) {
      for (let i = 0; i < data.length; i++) data[i] = 0.02 * normal();
    }
    out.set(name, { shape, data });
  }
  return out;
}

/** Tensors as a safetensors file of `dtype`, names sorted (as torch's save_file writes them). */
export function writeWeights(
  path: string,
  tensors: ReadonlyMap<string, Tensor>,
  dtype: DType,
): Promise<void> {
  return writeSafetensors(
    path,
    [...tensors.keys()].sort().map((name) => ({ name, dtype, ...tensors.get(name)! })),
  );
}

interface Options {
  work: string;
  out: string;
  seed: number;
  train: number;
  sets: string[];
}

function parseArgs(args: string[]): Options {
  const o: Options = {
    work: "runs/demo-base",
    out: "data/demo-model",
    seed: 1234,
    train: 6000,
    sets: [],
  };
  for (let i = 0; i < args.length; i++) {
    const flag = args[i];
    const value = args[++i];
    if (value === undefined) throw new UserError(`${flag} needs a value`);
    switch (flag) {
      case "--work":
        o.work = value;
        break;
      case "--out":
        o.out = value;
        break;
      case "--set":
        o.sets.push(value);
        break;
      case "--seed":
      case "--train": {
        const n = Number(value);
        if (!Number.isInteger(n) || n <= 0) {
          throw new UserError(`${flag}: expected a positive integer, got ${value}`);
        }
        o[flag === "--seed" ? "seed" : "train"] = n;
        break;
      }
      default:
        throw new UserError(
          `unknown flag ${flag}; expected --work DIR, --out DIR, --seed N, --train N, --set K=V`,
        );
    }
  }
  return o;
}

/** Write `bytes` unless the file already holds exactly them (keeps the pipeline's hashes stable). */
async function writeIfChanged(path: string, bytes: Uint8Array): Promise<void> {
  try {
    const old = await Deno.readFile(path);
    if (old.length === bytes.length && old.every((b, i) => b === bytes[i])) return;
  } catch { /* absent */ }
  await writeFileAtomic(path, bytes);
}

export async function main(args: string[]): Promise<void> {
  const o = parseArgs(args);
  const cfgPath = join(o.out, "config.json");
  const config = JSON.parse(await Deno.readTextFile(cfgPath));
  const glm = parseGlmConfig(config, cfgPath);
  const enc = new TextEncoder();

  const corpus = join(o.work, "corpus");
  await Deno.mkdir(corpus, { recursive: true });
  const { train, dev } = makePretrain(o.seed, o.train, 100);
  await writeIfChanged(join(corpus, "train.json"), enc.encode(toJsonLines(train)));
  await writeIfChanged(join(corpus, "dev.json"), enc.encode(toJsonLines(dev)));

  const init = join(o.work, "init");
  await Deno.mkdir(init, { recursive: true });
  await writeIfChanged(
    join(init, "config.json"),
    enc.encode(JSON.stringify({ ...config, torch_dtype: "float32" }, null, 2) + "\n"),
  );
  await writeIfChanged(
    join(init, "tokenizer.model"),
    await Deno.readFile(join(o.out, "tokenizer.model")),
  );
  // the same seed writes the same bytes, so the pipeline's input hashes stay put
  await writeWeights(join(init, "model.safetensors"), initWeights(glm, o.seed), "F32");
  console.log(
    `random start (seed ${o.seed}) in ${init}; pretraining corpus of ${train.length} records in ${corpus}`,
  );

  const run = await runPipeline("pipelines/demo-base.yaml", {
    sets: [`model=${init}`, `data=${corpus}`, ...o.sets],
    out: o.work,
  });
  const trained = join(run.runDir, "train", "model.safetensors");
  const weights = await readSafetensorsF32(trained);
  const expected = glmWeightShapes(glm);
  for (const [name, shape] of expected) {
    const t = weights.get(name);
    if (!t || t.shape.join() !== shape.join()) {
      throw new UserError(`${trained}: ${name} missing or of another shape than [${shape}]`);
    }
  }
  const kept = new Map([...expected.keys()].map((n) => [n, weights.get(n)!]));
  await writeWeights(join(o.out, "model.safetensors"), kept, "F16");
  await writeJsonAtomic(cfgPath, { ...config, torch_dtype: "float16" });
  console.log(`wrote ${join(o.out, "model.safetensors")} (f16) from ${trained}`);
}

if (import.meta.main) runCli(() => main(Deno.args));
