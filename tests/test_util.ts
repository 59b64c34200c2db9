/**
 * Shared by the tests: deterministic random data, error measures, safetensors
 * files as f32 maps, and a one-pass kernel runner.
 */
import { getGpu, type Gpu } from "../lib/gpu/device.ts";
import { uniforms } from "../lib/gpu/runtime.ts";
import { readSafetensorsF32 } from "../lib/safetensors/read.ts";

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
