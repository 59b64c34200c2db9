import { ok as assert } from "node:assert";
import { getGpu } from "../lib/gpu/device.ts";
import { createBuffer, readF32, uniforms, upload } from "../lib/gpu/runtime.ts";
import { encodeRmsnorm, encodeRmsnormBackward } from "../lib/gpu/kernels/rmsnorm.ts";
import { rmsnorm, rmsnormBackward } from "../lib/model/cpu/ops.ts";
import { rand, relErr } from "./test_util.ts";

Deno.test("rmsnorm forward and backward match the reference", async () => {
  const gpu = await getGpu();
  for (const [rows, dim] of [[1, 8], [13, 37], [70, 130]]) {
    const x = rand(rows * dim, rows + dim), w = rand(dim, 7), dy = rand(rows * dim, 99);
    const prev = rand(rows * dim, 5), prevW = rand(dim, 6);
    const ref = rmsnorm(x, w, rows, dim, 1e-5);
    const bref = rmsnormBackward(x, w, ref.rstd, dy, rows, dim);
    const bx = upload(gpu, x), bw = upload(gpu, w), by = createBuffer(gpu, x.byteLength);
    const br = createBuffer(gpu, rows * 4), bdy = upload(gpu, dy), bdx = upload(gpu, prev);
    const bdw = upload(gpu, prevW);
    const enc = gpu.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    encodeRmsnorm(gpu, pass, { x: bx, w: bw, y: by, rstd: br, rows, dim, eps: 1e-5 });
    encodeRmsnormBackward(gpu, pass, {
      x: bx,
      w: bw,
      rstd: br,
      dy: bdy,
      dx: bdx,
      rows,
      dim,
      beta: 1,
      dw: bdw,
    });
    pass.end();
    gpu.device.queue.submit([enc.finish()]);
    uniforms(gpu).reset();
    const y = await readF32(gpu, by), rstd = await readF32(gpu, br);
    const dx = await readF32(gpu, bdx), dw = await readF32(gpu, bdw);
    const wantDx = bref.dx.map((v, i) => v + prev[i]);
    const wantDw = bref.dw.map((v, i) => v + prevW[i]);
    const errs = [relErr(y, ref.y), relErr(rstd, ref.rstd), relErr(dx, wantDx), relErr(dw, wantDw)];
    console.log(
      `rmsnorm ${rows}x${dim}: rel err y/rstd/dx/dw ${
        errs.map((e) => e.toExponential(1)).join(" ")
      }`,
    );
    for (const e of errs) assert(e < 1e-5, `error ${e}`);
  }
});
