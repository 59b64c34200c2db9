import { ok as assert } from "node:assert";
import { getGpu } from "../lib/gpu/device.ts";
import { readF32, uniforms, upload } from "../lib/gpu/runtime.ts";
import { GradNorm } from "../lib/gpu/kernels/grad_norm.ts";
import { gradNormRef } from "../lib/train/adamw.ts";
import { rand } from "./test_util.ts";

async function run(grads: Float32Array[], maxNorm: number | null): Promise<Float32Array> {
  const gpu = await getGpu();
  const gn = new GradNorm(gpu, grads.map((g) => ({ grad: upload(gpu, g), size: g.length })));
  const enc = gpu.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  gn.encode(pass, maxNorm);
  pass.end();
  gpu.device.queue.submit([enc.finish()]);
  uniforms(gpu).reset();
  return await readF32(gpu, gn.result);
}

Deno.test("grad norm and clip match clip_grad_norm_ semantics", async () => {
  const grads = [rand(3, 1, 1), rand(5000, 2, 0.1), rand(70000, 3, 0.01)];
  const ref = gradNormRef(grads, 1.0);
  const [norm, clip] = await run(grads, 1.0);
  assert(Math.abs(norm - ref.norm) / ref.norm < 1e-5, `${norm} vs ${ref.norm}`);
  assert(Math.abs(clip - ref.clip) < 1e-6 && ref.clip < 1, `${clip} vs ${ref.clip}`);
  // Below the threshold the coefficient is exactly 1; with no max_norm too.
  assert((await run(grads, 100))[1] === 1);
  assert((await run(grads, null))[1] === 1);
  const [n3] = await run([new Float32Array([3, 4])], 1);
  assert(Math.abs(n3 - 5) < 1e-6);
});
