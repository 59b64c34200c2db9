/** Shared by the kernel tests: deterministic random data, error measure, one-pass runner. */
import { getGpu, type Gpu } from "../lib/gpu/device.ts";
import { uniforms } from "../lib/gpu/runtime.ts";

export function rand(n: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = ((s >>> 0) / 2 ** 32) * 2 - 1;
  }
  return out;
}

/** Max absolute error over the max magnitude of the expected values. */
export function relErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let e = 0, m = 0;
  for (let i = 0; i < want.length; i++) {
    e = Math.max(e, Math.abs(got[i] - want[i]));
    m = Math.max(m, Math.abs(want[i]));
  }
  return e / Math.max(m, 1e-30);
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
