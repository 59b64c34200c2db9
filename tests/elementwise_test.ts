import { ok as assert } from "node:assert";
import { getGpu } from "../lib/gpu/device.ts";
import { createBuffer, readF32, upload } from "../lib/gpu/runtime.ts";
import {
  encodeAdd,
  encodeColSum,
  encodeCopy2d,
  encodeFill,
  encodeScale,
} from "../lib/gpu/kernels/elementwise.ts";
import { add } from "../lib/model/cpu/ops.ts";
import { rand, relErr, runPass } from "./test_util.ts";

Deno.test("elementwise: fill, strided copy/accumulate, add, scale, column sums", async () => {
  const gpu = await getGpu();
  const n = 1003;
  const a = rand(n, 1), b = rand(n, 2);
  const ba = upload(gpu, a), bb = upload(gpu, b), y = createBuffer(gpu, n * 4);
  const f = createBuffer(gpu, n * 4), s = upload(gpu, a);
  const rows = 7, width = 5, srcStride = 9, dstStride = 11;
  const dst = upload(gpu, b), colDst = upload(gpu, new Float32Array(width + 2).fill(1));
  await runPass((gpu, pass) => {
    encodeAdd(gpu, pass, ba, bb, y, n);
    encodeFill(gpu, pass, f, 10, 2.5, 3);
    encodeScale(gpu, pass, s, n - 1, -2, 1);
    encodeCopy2d(gpu, pass, {
      rows,
      width,
      src: ba,
      srcOff: 4,
      srcStride,
      dst,
      dstOff: 2,
      dstStride,
      alpha: 3,
      beta: 1,
    });
    encodeColSum(gpu, pass, {
      rows,
      cols: width,
      src: ba,
      srcOff: 1,
      srcStride,
      dst: colDst,
      dstOff: 2,
      beta: 1,
    });
  });
  const e1 = relErr(await readF32(gpu, y), add(a, b));
  const fv = await readF32(gpu, f);
  const e2 = relErr(fv, Float32Array.from({ length: n }, (_, i) => (i >= 3 && i < 13 ? 2.5 : 0)));
  const e3 = relErr(await readF32(gpu, s), a.map((v, i) => (i === 0 ? v : -2 * v)));
  const wantDst = b.slice();
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < width; c++) wantDst[2 + r * dstStride + c] += 3 * a[4 + r * srcStride + c];
  }
  const e4 = relErr(await readF32(gpu, dst), wantDst);
  const wantCol = new Float32Array(width + 2).fill(1);
  for (let c = 0; c < width; c++) {
    for (let r = 0; r < rows; r++) wantCol[2 + c] += a[1 + r * srcStride + c];
  }
  const e5 = relErr(await readF32(gpu, colDst), wantCol);
  console.log(
    `elementwise rel err: add ${e1} fill ${e2} scale ${e3} copy ${e4} colsum ${
      e5.toExponential(1)
    }`,
  );
  assert(e1 < 1e-6 && e2 === 0 && e3 === 0 && e4 < 1e-6 && e5 < 1e-6);
});
