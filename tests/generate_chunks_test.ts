/**
 * Generation reads tokens back in chunks (lib/model/generate.ts): whatever
 * the chunk size and however many chunks run ahead of the read, the tokens,
 * the stop ids and onToken's order are those of a token-by-token loop, and
 * the ring of tokens wraps around correctly.
 */
import assert from "node:assert";
import { getGpu } from "../lib/gpu/device.ts";
import { loadGlmModel } from "../lib/model/load.ts";
import { readTinyForward } from "./test_util.ts";

const TINY = new URL("./fixtures/tiny", import.meta.url).pathname;

Deno.test("generate: chunk sizes and chunks in flight do not change the tokens", async () => {
  const gpu = await getGpu();
  const forward = await readTinyForward();
  const prompts = [forward.greedy[0].prompt, forward.cases[0].input_ids[0].slice(0, 11)];
  const m = await loadGlmModel(gpu, TINY, {
    adapter: { kind: "none" },
    maxBatch: 2,
    maxSeq: 32,
    seed: 1,
  });
  try {
    const n = 23;
    const want = await m.generate(prompts, { maxNewTokens: n, stopIds: [], tokensPerRead: 1 });
    assert(want.every((r) => r.length === n));
    // A stop id from the middle of row 1 ends only that row.
    const stop = want[1][9];
    const wantStopped = want.map((r) => r.slice(0, r.indexOf(stop) < 0 ? n : r.indexOf(stop)));
    for (const tokensPerRead of [1, 3, 5, 16, 64]) {
      for (const inFlight of [1, 2, 3]) {
        const o = { maxNewTokens: n, tokensPerRead, inFlight };
        const seen: Array<[number, number]> = [];
        const got = await m.generate(prompts, {
          ...o,
          stopIds: [],
          onToken: (row, id) => seen.push([row, id]),
        });
        assert.deepEqual(got, want, `tokensPerRead ${tokensPerRead}, inFlight ${inFlight}`);
        // onToken: token by token, the rows of each step in order.
        const order = Array.from({ length: n }, (_, t) => [[0, want[0][t]], [1, want[1][t]]])
          .flat();
        assert.deepEqual(seen, order);
        const stopped = await m.generate(prompts, { ...o, stopIds: [stop] });
        assert.deepEqual(stopped, wantStopped);
      }
    }
  } finally {
    m.destroy();
  }
});
