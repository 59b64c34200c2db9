import { ok as assert } from "node:assert";
import { getGpu } from "../lib/gpu/device.ts";
import { createBuffer, readF32, upload } from "../lib/gpu/runtime.ts";
import {
  embeddingBackwardPlan,
  encodeEmbedding,
  encodeEmbeddingBackward,
} from "../lib/gpu/kernels/embedding.ts";
import { f32ToF16Packed } from "../lib/safetensors/dtype.ts";
import { f16BitsToF32 } from "../lib/safetensors/dtype.ts";
import { embedding, embeddingBackward } from "../lib/model/cpu/ops.ts";
import { rand, relErr, runPass } from "./test_util.ts";

Deno.test("embedding gather (f32, f16, split table) and deterministic scatter-add backward", async () => {
  const gpu = await getGpu();
  const V = 37, dim = 13, T = 29;
  const table = rand(V * dim, 1);
  const ids = Int32Array.from({ length: T }, (_, t) => (t * 11 + (t % 3)) % V);
  const bids = upload(gpu, ids);
  const want = embedding(ids, table, dim);
  // f32, in two row slices of the table (rows [0,20) and [20,37)).
  const s0 = upload(gpu, table.subarray(0, 20 * dim)), s1 = upload(gpu, table.subarray(20 * dim));
  const y = createBuffer(gpu, T * dim * 4);
  const packed = f32ToF16Packed(table);
  const bf16 = upload(gpu, packed), y16 = createBuffer(gpu, T * dim * 4);
  await runPass((gpu, pass) => {
    encodeEmbedding(gpu, pass, {
      ids: bids,
      tokens: T,
      dim,
      table: s0,
      rowStart: 0,
      rowEnd: 20,
      y,
    });
    encodeEmbedding(gpu, pass, {
      ids: bids,
      tokens: T,
      dim,
      table: s1,
      rowStart: 20,
      rowEnd: V,
      y,
    });
    encodeEmbedding(gpu, pass, { ids: bids, tokens: T, dim, table: bf16, f16: true, y: y16 });
  });
  const e1 = relErr(await readF32(gpu, y), want);
  const halves = new Float32Array(V * dim);
  for (let i = 0; i < V * dim; i++) {
    halves[i] = f16BitsToF32((packed[i >> 1] >>> (16 * (i & 1))) & 0xffff);
  }
  const e2 = relErr(await readF32(gpu, y16), embedding(ids, halves, dim));
  // Backward into an existing gradient (accumulates).
  const dy = rand(T * dim, 5), prev = rand(V * dim, 6);
  const { plan, unique } = embeddingBackwardPlan(ids);
  const bplan = upload(gpu, plan), bdy = upload(gpu, dy), dt = upload(gpu, prev);
  await runPass((gpu, pass) => {
    encodeEmbeddingBackward(gpu, pass, {
      plan: bplan,
      unique,
      tokens: T,
      dim,
      dy: bdy,
      dtable: dt,
    });
  });
  const wantD = embeddingBackward(ids, dy, V, dim).map((v, i) => v + prev[i]);
  const e3 = relErr(await readF32(gpu, dt), wantD);
  console.log(
    `embedding rel err: f32 split ${e1.toExponential(1)}, f16 ${e2.toExponential(1)}, backward ${
      e3.toExponential(1)
    }`,
  );
  assert(e1 === 0 && e2 === 0 && e3 < 1e-6);
});
