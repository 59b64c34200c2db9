import { ok as assert } from "node:assert";
import { getGpu } from "../lib/gpu/device.ts";
import { readF32, upload } from "../lib/gpu/runtime.ts";
import { dropoutKeepRef, encodeDropout } from "../lib/gpu/kernels/dropout.ts";
import { rand, relErr, runPass } from "./test_util.ts";

Deno.test("dropout mask is a pure function of (seed, stream, index) and matches the host reference", async () => {
  const gpu = await getGpu();
  const n = 5000, p = 0.1;
  const x = rand(n, 3), prev = rand(n, 4);
  const bx = upload(gpu, x), by = upload(gpu, prev), by2 = upload(gpu, prev);
  await runPass((gpu, pass) => {
    encodeDropout(gpu, pass, { x: bx, y: by, n, p, seed: 42, stream: 7 });
    encodeDropout(gpu, pass, { x: bx, y: by2, n, p, seed: 42, stream: 7, beta: 1 });
  });
  const want = new Float32Array(n);
  let kept = 0;
  for (let i = 0; i < n; i++) {
    if (dropoutKeepRef(42, 7, i, p)) (want[i] = x[i] / (1 - p), kept++);
  }
  const e1 = relErr(await readF32(gpu, by), want);
  const e2 = relErr(await readF32(gpu, by2), want.map((v, i) => v + prev[i]));
  const frac = kept / n;
  console.log(
    `dropout: kept ${frac.toFixed(3)} (p=${p}), rel err ${e1.toExponential(1)} / ${
      e2.toExponential(1)
    }`,
  );
  assert(e1 < 1e-6 && e2 < 1e-6);
  assert(Math.abs(frac - (1 - p)) < 0.02);
  let differ = 0;
  for (let i = 0; i < 1000; i++) {
    if (dropoutKeepRef(42, 8, i, 0.5) !== dropoutKeepRef(42, 7, i, 0.5)) differ++;
  }
  assert(differ > 400, "streams must give independent masks");
});
