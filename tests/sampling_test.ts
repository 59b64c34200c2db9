import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { getGpu } from "../lib/gpu/device.ts";
import { createBuffer, readBuffer, upload } from "../lib/gpu/runtime.ts";
import { encodeArgmax, encodeSample, sampleRef } from "../lib/gpu/kernels/sampling.ts";
import { rand, runPass } from "./test_util.ts";

Deno.test("argmax and temperature/top-k/top-p sampling match the host reference", async () => {
  const gpu = await getGpu();
  const rows = 5, V = 1001;
  const logits = rand(rows * V, 12).map((v) => v * 5);
  logits[3 * V + 17] = 50;
  const ids = createBuffer(gpu, rows * 4);
  await runPass((gpu, pass) =>
    encodeArgmax(gpu, pass, { logits: upload(gpu, logits), rows, V, ids })
  );
  const got = Array.from(new Uint32Array(await readBuffer(gpu, ids, rows * 4)));
  const want = Array.from({ length: rows }, (_, r) => {
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[r * V + i] > logits[r * V + best]) best = i;
    return best;
  });
  assertEquals(got, want);
  for (
    const opts of [
      { temperature: 0.8, topK: 0, topP: 1, seed: 1, stream: 0 },
      { temperature: 1, topK: 5, topP: 1, seed: 2, stream: 3 },
      { temperature: 0.7, topK: 50, topP: 0.8, seed: 3, stream: 9 },
      { temperature: 1.3, topK: 0, topP: 0.3, seed: 4, stream: 1 },
    ]
  ) {
    const draws = createBuffer(gpu, rows * 4);
    await runPass((gpu, pass) =>
      encodeSample(gpu, pass, {
        logits: upload(gpu, logits),
        rows,
        V,
        ids: draws,
        state: createBuffer(gpu, 24 * rows),
      }, opts)
    );
    const g = Array.from(new Uint32Array(await readBuffer(gpu, draws, rows * 4)));
    const w = Array.from(
      { length: rows },
      (_, r) => sampleRef(gpu, logits.subarray(r * V, (r + 1) * V), r, opts),
    );
    assertEquals(g, w);
    if (opts.topK > 0) {
      for (let r = 0; r < rows; r++) {
        const row = logits.subarray(r * V, (r + 1) * V);
        const rank = row.filter((v) => v > row[g[r]]).length;
        assert(rank < opts.topK, `draw outside the top-${opts.topK}`);
      }
    }
  }
});

Deno.test("argmax and sampling over chatglm3-6b's vocabulary and beyond the CPU drivers' loop limit", async () => {
  // A row per invocation walked 65,024 logits (34 times to sample): past
  // llvmpipe's loop limit (lib/gpu/loop_budget.ts). The best logit sits past
  // the limit, twice (the lower index wins the tie).
  const gpu = await getGpu();
  for (const V of [65024, 70001]) {
    const rows = 3;
    const logits = rand(rows * V, 21).map((v) => v * 6);
    logits[V - 3] = logits[V - 1] = 40;
    logits[V + V - 10] = 40;
    logits[2 * V + 7] = 40;
    const ids = createBuffer(gpu, rows * 4);
    const bl = upload(gpu, logits);
    await runPass((gpu, pass) => encodeArgmax(gpu, pass, { logits: bl, rows, V, ids }));
    const got = Array.from(new Uint32Array(await readBuffer(gpu, ids, rows * 4)));
    assertEquals(got, [V - 3, V - 10, 7]);
    const opts = { temperature: 1, topK: 40, topP: 0.9, seed: 7, stream: 2 };
    await runPass((gpu, pass) =>
      encodeSample(
        gpu,
        pass,
        { logits: bl, rows, V, ids, state: createBuffer(gpu, 24 * rows) },
        opts,
      )
    );
    const drawn = Array.from(new Uint32Array(await readBuffer(gpu, ids, rows * 4)));
    const want = [0, 1, 2].map((r) => sampleRef(gpu, logits.subarray(r * V, (r + 1) * V), r, opts));
    assertEquals(drawn, want);
  }
});
