import { ok as assert } from "node:assert";
import { getGpu } from "../lib/gpu/device.ts";
import { createBuffer, readF32, upload } from "../lib/gpu/runtime.ts";
import { encodeSwiglu, encodeSwigluBackward } from "../lib/gpu/kernels/swiglu.ts";
import { swiglu, swigluBackward } from "../lib/model/cpu/ops.ts";
import { rand, relErr, runPass } from "./test_util.ts";

Deno.test("swiglu forward and backward match the reference", async () => {
  const gpu = await getGpu();
  for (const [rows, F] of [[1, 3], [17, 45]]) {
    const x = rand(rows * 2 * F, rows).map((v) => v * 4), dy = rand(rows * F, 3);
    const bx = upload(gpu, x), by = createBuffer(gpu, rows * F * 4), bdy = upload(gpu, dy);
    const bdx = createBuffer(gpu, x.byteLength);
    await runPass((gpu, pass) => {
      encodeSwiglu(gpu, pass, bx, by, rows, F);
      encodeSwigluBackward(gpu, pass, bx, bdy, bdx, rows, F);
    });
    const e1 = relErr(await readF32(gpu, by), swiglu(x, rows, F));
    const e2 = relErr(await readF32(gpu, bdx), swigluBackward(x, dy, rows, F));
    console.log(`swiglu ${rows}x${F}: rel err y ${e1.toExponential(1)} dx ${e2.toExponential(1)}`);
    assert(e1 < 1e-5 && e2 < 1e-5);
  }
});
