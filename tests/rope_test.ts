import { ok as assert } from "node:assert";
import { getGpu } from "../lib/gpu/device.ts";
import { readF32, upload } from "../lib/gpu/runtime.ts";
import { encodeRope, ropeTable } from "../lib/gpu/kernels/rope.ts";
import { rope } from "../lib/model/cpu/ops.ts";
import { rand, relErr, runPass } from "./test_util.ts";

Deno.test("rope rotates q and k heads of fused rows, and the inverse undoes it", async () => {
  const gpu = await getGpu();
  const H = 3, G = 2, D = 12, rows = 11, seq = 11;
  const W = (H + 2 * G) * D + 5;
  const x = rand(rows * W, 4);
  const base = 10000 * 1.5;
  const expected = (positions: ArrayLike<number>) => {
    const heads = new Float32Array(rows * (H + G) * D);
    for (let r = 0; r < rows; r++) {
      heads.set(x.subarray(r * W, r * W + (H + G) * D), r * (H + G) * D);
    }
    const want = rope(heads, rows, H + G, D, positions, base);
    const out = x.slice();
    for (let r = 0; r < rows; r++) {
      out.set(want.subarray(r * (H + G) * D, (r + 1) * (H + G) * D), r * W);
    }
    return out;
  };
  const positions = Int32Array.from({ length: rows }, (_, i) => (i * 7) % 40);
  const bx = upload(gpu, x), bt = upload(gpu, ropeTable(64, D, base)), bp = upload(gpu, positions);
  const common = { rows, rowStride: W, colOff: 0, heads: H + G, headDim: D, table: bt };
  await runPass((gpu, pass) => encodeRope(gpu, pass, { ...common, x: bx, positions: bp }));
  const e1 = relErr(await readF32(gpu, bx), expected(positions));
  const bx2 = upload(gpu, x);
  await runPass((gpu, pass) => encodeRope(gpu, pass, { ...common, x: bx2, seq, posOffset: 3 }));
  const e2 = relErr(
    await readF32(gpu, bx2),
    expected(Int32Array.from({ length: rows }, (_, r) => (r % seq) + 3)),
  );
  await runPass((gpu, pass) =>
    encodeRope(gpu, pass, { ...common, x: bx, positions: bp, inverse: true })
  );
  const e3 = relErr(await readF32(gpu, bx), x);
  console.log(
    `rope rel err: positions ${e1.toExponential(1)}, offset ${e2.toExponential(1)}, inverse ${
      e3.toExponential(1)
    }`,
  );
  assert(e1 < 1e-5 && e2 < 1e-5 && e3 < 1e-5);
});
