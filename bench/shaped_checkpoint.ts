/**
 * A random-weight model with chatglm3-6b's exact shape, laid out as the
 * Hugging Face repository lays it out: its config.json (28 layers, hidden
 * 4096, ffn 13696, 32 heads of 128, 2 key/value groups, padded vocabulary
 * 65,024, f16), seven `model-0000i-of-00007.safetensors` shards of at most
 * 2 GB with `model.safetensors.index.json`, the same tensor names and shapes
 * (`transformer.rotary_pos_emb.inv_freq` included), and a tokenizer (the demo
 * model's: the benchmarks feed token ids). Values are seeded N(0, 0.02), norm
 * weights 1. Tensors are made and written one at a time, so the model is
 * never in memory (12.5 GB at 28 layers). `--layers N` keeps the widths with
 * fewer layers (2 layers: 0.93 B parameters, 1.9 GB).
 *
 *   deno run -A bench/shaped_checkpoint.ts [--out DIR] [--layers N] [--seed S]
 *
 * A dir that already holds this checkpoint (same layers and seed, per its
 * `shaped.json`) is reused.
 */
import { join } from "node:path";
import { writeDirAtomic, writeJsonAtomic } from "../lib/atomic.ts";
import { parseFlags, positiveIntFlag } from "../lib/args.ts";
import { runCli } from "../lib/errors.ts";
import type { GlmConfig } from "../lib/model/config.ts";
import { glmWeightShapes } from "../lib/model/weights.ts";
import { writeShardedSafetensors } from "../lib/safetensors/write.ts";

const ROOT = new URL("../", import.meta.url);
/** THUDM/chatglm3-6b's config.json, unchanged. */
const CONFIG = new URL("tests/fixtures/chatglm3-6b-config.json", ROOT);
const TOKENIZER = new URL("data/demo-model/tokenizer.model", ROOT);
const MARKER = "shaped.json";
const VERSION = 1;

export interface ShapedOptions {
  layers?: number;
  seed?: number;
  /** Called after each tensor is written. */
  onTensor?: (done: number, total: number, name: string) => void;
}

/** The default dir of a shaped checkpoint: runs/shaped/chatglm3-6b-L{layers}-s{seed}. */
export function shapedDir(layers = 28, seed = 1): string {
  return new URL(`runs/shaped/chatglm3-6b-L${layers}-s${seed}`, ROOT).pathname;
}

/** chatglm3-6b's config with `layers` layers. */
export async function shapedConfig(layers = 28): Promise<GlmConfig & Record<string, unknown>> {
  const c = JSON.parse(await Deno.readTextFile(CONFIG));
  return { ...c, num_layers: layers };
}

/** FNV-1a of a tensor name: each tensor gets its own stream of the seed. */
function nameHash(name: string): number {
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(name)) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h;
}

/** Φ⁻¹(p), the standard normal quantile (Acklam's rational approximation, relative error < 1.2e-9). */
function normalQuantile(p: number): number {
  const a = [
    -39.69683028665376,
    220.9460984245205,
    -275.9285104469687,
    138.357751867269,
    -30.66479806614716,
    2.506628277459239,
  ];
  const b = [
    -54.47609879822406,
    161.5858368580409,
    -155.6989798598866,
    66.80131188771972,
    -13.28068155288572,
  ];
  const c = [
    -0.007784894002430293,
    -0.3223964580411365,
    -2.400758277161838,
    -2.549732539343734,
    4.374664141464968,
    2.938163982698783,
  ];
  const d = [0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416];
  const tail = (q: number) =>
    (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
    ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  if (p < 0.02425) return tail(Math.sqrt(-2 * Math.log(p)));
  if (p > 1 - 0.02425) return -tail(Math.sqrt(-2 * Math.log(1 - p)));
  const q = p - 0.5, r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
    (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

/**
 * The normal's 65,536 quantiles at (k + ½)/65,536: a value drawn by 16
 * random bits is N(0, 1) to within f16's precision (tails cut at 4.3σ), at a
 * table load instead of a logarithm (20 ns a value: 2 minutes for the model).
 */
const QUANTILES = Float32Array.from({ length: 65536 }, (_, k) => normalQuantile((k + 0.5) / 65536));

/** n values N(0, std) from a xorshift32 stream, two per draw, as f16 bytes. */
function normalF16(n: number, seed: number, std: number): Uint8Array {
  // Made in f32 and converted in one call: element stores into a Float16Array cost ~10× more.
  const out = new Float32Array(n);
  let s = seed | 0 || 1;
  for (let i = 0; i < n; i += 2) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = std * QUANTILES[s & 0xffff];
    if (i + 1 < n) out[i + 1] = std * QUANTILES[s >>> 16];
  }
  return new Uint8Array(new Float16Array(out).buffer);
}

/** ChatGLM3's rotary inverse frequencies, as the checkpoint stores them (f16, [kv_channels/4]). */
function invFreq(kvChannels: number): Uint8Array {
  const dim = kvChannels / 2;
  const f = new Float16Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) f[i] = 1 / 10000 ** ((2 * i) / dim);
  return new Uint8Array(f.buffer);
}

/** Write (or reuse) the shaped checkpoint in `dir`; returns whether it was written now. */
export async function makeShapedCheckpoint(dir: string, o: ShapedOptions = {}): Promise<boolean> {
  const layers = o.layers ?? 28, seed = o.seed ?? 1;
  const want = { version: VERSION, layers, seed };
  try {
    const have = JSON.parse(await Deno.readTextFile(join(dir, MARKER)));
    if (JSON.stringify(have) === JSON.stringify(want)) return false;
  } catch {
    // absent or unreadable: write it
  }
  const config = await shapedConfig(layers);
  const shapes = [...glmWeightShapes(config)];
  // The HF checkpoint's order: the embedding, the rotary table, the layers, the head.
  const inv = "transformer.rotary_pos_emb.inv_freq";
  const tensors = shapes.map(([name, shape], i) => ({
    name,
    dtype: "F16" as const,
    shape,
    data: () => {
      const n = shape.reduce((a, b) => a * b, 1);
      const bytes = name.includes("norm")
        ? new Uint8Array(new Float16Array(n).fill(1).buffer)
        : normalF16(n, nameHash(name) ^ Math.imul(seed, 0x9e3779b9), 0.02);
      o.onTensor?.(i + 1, shapes.length, name);
      return bytes;
    },
  }));
  tensors.splice(1, 0, {
    name: inv,
    dtype: "F16",
    shape: [config.kv_channels / 4],
    data: () => invFreq(config.kv_channels),
  });
  await writeDirAtomic(dir, async (tmp) => {
    await Deno.writeTextFile(join(tmp, "config.json"), JSON.stringify(config, null, 2) + "\n");
    await Deno.copyFile(TOKENIZER, join(tmp, "tokenizer.model"));
    await writeShardedSafetensors(tmp, tensors, { shardSize: "2GB" });
    await writeJsonAtomic(join(tmp, MARKER), want);
  });
  return true;
}

if (import.meta.main) {
  await runCli(async () => {
    const usage =
      "usage: deno run -A bench/shaped_checkpoint.ts [--out DIR] [--layers N] [--seed S]";
    const { values } = parseFlags(Deno.args, {
      out: { type: "string" },
      layers: { type: "string" },
      seed: { type: "string" },
    }, usage);
    const layers = positiveIntFlag(values.layers, "--layers") ?? 28;
    const seed = positiveIntFlag(values.seed, "--seed") ?? 1;
    const dir = (values.out as string | undefined) ?? shapedDir(layers, seed);
    const t0 = performance.now();
    const wrote = await makeShapedCheckpoint(dir, {
      layers,
      seed,
      onTensor: (i, n, name) => console.error(`[${i}/${n}] ${name}`),
    });
    const s = ((performance.now() - t0) / 1000).toFixed(0);
    console.log(wrote ? `wrote ${dir} in ${s} s` : `${dir} already holds it`);
  });
}
