/**
 * Shared by the tests: deterministic random data, error measures, safetensors
 * files as f32 maps, and a one-pass kernel runner.
 */
import { getGpu, type Gpu } from "../lib/gpu/device.ts";
import type { AdapterSpec } from "../lib/model/adapter.ts";
import { uniforms } from "../lib/gpu/runtime.ts";
import { readSafetensorsF32 } from "../lib/safetensors/read.ts";

/**
 * The GPU context with some limits replaced (a smaller binding, fewer
 * workgroups per dimension) to exercise splitting paths; every other limit
 * reads through to the real adapter's.
 */
export function withLimits(gpu: Gpu, overrides: Partial<GPUSupportedLimits>): Gpu {
  const limits = new Proxy(gpu.limits, {
    get: (t, k) =>
      k in overrides
        ? overrides[k as keyof GPUSupportedLimits]
        : (t as unknown as Record<string | symbol, unknown>)[k],
  });
  return { ...gpu, limits };
}

/** Deterministic uniform values in [-scale, scale) (xorshift32 from `seed`). */
export function rand(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = (((s >>> 0) / 2 ** 32) * 2 - 1) * scale;
  }
  return out;
}

/** Largest magnitude. */
export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/**
 * Max absolute error over the max magnitude of the expected values (values
 * near 0 would make a per-element relative error meaningless).
 */
export function relErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let e = 0;
  for (let i = 0; i < want.length; i++) e = Math.max(e, Math.abs(got[i] - want[i]));
  return e / Math.max(maxAbs(want), 1e-30);
}

/** name → f32 values of every tensor of a (small) safetensors file. */
export async function readTensors(path: string | URL): Promise<Map<string, Float32Array>> {
  const file = await readSafetensorsF32(path instanceof URL ? path.pathname : path);
  return new Map([...file].map(([name, t]) => [name, t.data]));
}

/** Encode `f` in one compute pass, submit, and fail on any validation error. */
export async function runPass(f: (gpu: Gpu, pass: GPUComputePassEncoder) => void): Promise<Gpu> {
  const gpu = await getGpu();
  gpu.device.pushErrorScope("validation");
  const enc = gpu.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  f(gpu, pass);
  pass.end();
  gpu.device.queue.submit([enc.finish()]);
  uniforms(gpu).reset();
  const err = await gpu.device.popErrorScope();
  if (err) throw new Error(err.message);
  return gpu;
}

/** The command-line entry point, for tests that run the CLI as a user would. */
export const CLI = new URL("../cli.ts", import.meta.url).pathname;

/** `deno run -A cli.ts ...args` with `stdin` (text) or none: its exit code, stdout and stderr. */
export async function runCli(
  args: string[],
  stdin?: string,
): Promise<{ code: number; out: string; err: string }> {
  const p = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = p.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const o = await p.output();
  const d = new TextDecoder();
  return { code: o.code, out: d.decode(o.stdout), err: d.decode(o.stderr) };
}

/** Run `fn` with a fresh temporary directory, removed afterwards whatever happens. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir();
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** One padded batch of tests/fixtures/tiny-expected/forward.json with PyTorch's results. */
export interface TinyCase {
  name: string;
  batch: number;
  seq: number;
  /** Each record's length before right padding. */
  lengths: number[];
  input_ids: number[][];
  labels: number[][];
  loss: number;
  max_abs: number;
  rows: { head: number[]; sum: number; sumsq: number }[];
  logits_f32_b64?: string;
}

/** A trainable kind of the gradient fixtures: its loss, tensors and adapter settings. */
export interface TinyGradKind {
  loss: number;
  params: string[];
  r?: number;
  alpha?: number;
  target_modules?: string[];
  pre_seq_len?: number;
  prefix_projection?: boolean;
}

/** tests/fixtures/tiny-expected/forward.json, written by tools/make_tiny_model.py. */
export interface TinyForward {
  /** The tiny tokenizer's special token ids by name. */
  special: Record<string, number>;
  cases: TinyCase[];
  rope_case: TinyCase & { rope_ratio: number };
  greedy: { prompt: number[]; tokens: number[] }[];
  glm_crosscheck: { max_abs_diff: number; max_abs_diff_rope_ratio_4: number };
  grads: { input_ids: number[][]; labels: number[][]; kinds: Record<string, TinyGradKind> };
}

export async function readTinyForward(): Promise<TinyForward> {
  const path = new URL("./fixtures/tiny-expected/forward.json", import.meta.url);
  return JSON.parse(await Deno.readTextFile(path));
}

/**
 * The adapter a fixture kind (`lora_qkv`, `prefix_proj`, `full`; or a training
 * trajectory's `lora`, `prefix`, `full`) was made with, dropout off; LoRA's
 * alpha as `alpha` or PEFT's `lora_alpha`.
 */
export function tinyAdapter(
  kind: string,
  meta: Omit<TinyGradKind, "loss" | "params"> & { lora_alpha?: number },
): AdapterSpec {
  if (kind.startsWith("lora")) {
    return {
      kind: "lora",
      r: meta.r!,
      alpha: (meta.alpha ?? meta.lora_alpha)!,
      dropout: 0,
      targetModules: meta.target_modules!,
    };
  }
  if (kind.startsWith("prefix")) {
    return {
      kind: "prefix",
      preSeqLen: meta.pre_seq_len!,
      prefixProjection: meta.prefix_projection!,
      dropout: 0,
    };
  }
  return { kind: "full" };
}

/** Rows of token ids as one flat Int32Array. */
export const flat = (rows: number[][]): Int32Array => Int32Array.from(rows.flat());
