import { ok as assert } from "node:assert";
import { getGpu } from "../lib/gpu/device.ts";
import { readF32, uniforms, upload, writeBuffer } from "../lib/gpu/runtime.ts";
import { AdamWState, chunks } from "../lib/gpu/kernels/adamw.ts";
import { type AdamWHyper, adamwRef, adamwScalars } from "../lib/train/adamw.ts";
import { rand, relErr, withLimits } from "./test_util.ts";

Deno.test("adamw reference matches a hand-computed torch step", () => {
  // torch.optim.AdamW([p], lr=0.1, weight_decay=0.5) on p=1, grad=2, one step:
  // p = 1 - 0.1*0.5*1 = 0.95; m = 0.2, v = 0.004; m̂ = 2, v̂ = 4; p -= 0.1 * 2/(2+1e-8)
  const p = new Float32Array([1]);
  const m = new Float32Array(1);
  const v = new Float32Array(1);
  adamwRef(
    p,
    new Float32Array([2]),
    m,
    v,
    {
      lr: 0.1,
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-8,
      weightDecay: 0.5,
    },
    1,
    true,
  );
  assert(Math.abs(p[0] - 0.85) < 1e-6, `p=${p[0]}`);
  assert(Math.abs(m[0] - 0.2) < 1e-7 && Math.abs(v[0] - 0.004) < 1e-9);
});

Deno.test("adamw kernel equals the reference over several steps, with decay and clipping", async () => {
  const gpu = await getGpu();
  const h: AdamWHyper = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };
  const sizes = [1, 70, 1000];
  const decay = [false, true, true];
  const hostP = sizes.map((n, k) => rand(n, 11 + k));
  const hostM = sizes.map((n) => new Float32Array(n));
  const hostV = sizes.map((n) => new Float32Array(n));
  const params = sizes.map((n, k) => ({
    name: `p${k}`,
    size: n,
    weight: upload(gpu, hostP[k]),
    grad: upload(gpu, new Float32Array(n)),
    decay: decay[k],
  }));
  const state = new AdamWState(gpu, params);
  const clips = [1, 0.25, 0.7];
  const clipBuf = upload(gpu, new Float32Array([123, ...clips]));
  for (let step = 1; step <= 3; step++) {
    const grads = sizes.map((n, k) => rand(n, 100 * step + k, 0.5));
    params.forEach((p, k) => writeBuffer(gpu, p.grad, 0, grads[k]));
    const clip = clips[step - 1];
    const enc = gpu.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    state.encode(pass, adamwScalars(h, step), clipBuf, step);
    pass.end();
    gpu.device.queue.submit([enc.finish()]);
    uniforms(gpu).reset();
    sizes.forEach((_, k) =>
      adamwRef(hostP[k], grads[k], hostM[k], hostV[k], h, step, decay[k], clip)
    );
  }
  for (let k = 0; k < sizes.length; k++) {
    const p = await readF32(gpu, params[k].weight);
    const m = await readF32(gpu, state.m[k]);
    const v = await readF32(gpu, state.v[k]);
    assert(relErr(p, hostP[k]) < 1e-5, `param ${k}: ${relErr(p, hostP[k])}`);
    assert(relErr(m, hostM[k]) < 1e-5, `m ${k}`);
    assert(relErr(v, hostV[k]) < 1e-5, `v ${k}`);
  }
  // Weight decay made a difference where it applies (the test could fail).
  const noDecay = rand(1000, 13);
  adamwRef(noDecay, rand(1000, 999), new Float32Array(1000), new Float32Array(1000), h, 1, false);
  assert(relErr(noDecay, rand(1000, 13)) > 0);
});

Deno.test("chunks split tensors larger than a binding into aligned pieces", async () => {
  const gpu = await getGpu();
  const fake = withLimits(gpu, {
    maxStorageBufferBindingSize: 1000,
    minStorageBufferOffsetAlignment: 256,
  });
  const c = chunks(fake, 1000);
  // 1000 bytes allows 3·256 B = 192 floats per piece.
  assert(c.length === 6 && c[0].n === 192 && c[5].start === 960 && c[5].n === 40);
});
