import { ok as assert } from "node:assert";
import { getGpu } from "../lib/gpu/device.ts";
import { createBuffer, readF32, upload } from "../lib/gpu/runtime.ts";
import {
  crossEntropyScratchBytes,
  encodeCrossEntropy,
  encodeSum,
} from "../lib/gpu/kernels/cross_entropy.ts";
import { crossEntropy } from "../lib/model/cpu/ops.ts";
import { rand, relErr, runPass } from "./test_util.ts";

Deno.test("cross-entropy with ignore_index fuses the loss and dlogits in place", async () => {
  const gpu = await getGpu();
  const rows = 19, V = 301, gradScale = 0.37;
  const logits = rand(rows * V, 8).map((v) => v * 6);
  const targets = Int32Array.from({ length: rows }, (_, r) => (r % 4 === 1 ? -100 : (r * 37) % V));
  const ref = crossEntropy(logits, targets, rows, V, gradScale);
  const bl = upload(gpu, logits), bt = upload(gpu, targets), rl = createBuffer(gpu, rows * 4);
  const loss = upload(gpu, new Float32Array([5, 7, 9]));
  const partials = createBuffer(gpu, crossEntropyScratchBytes(rows, V));
  await runPass((gpu, pass) => {
    // Two chunks of rows, as the model runs the output layer.
    encodeCrossEntropy(gpu, pass, {
      logits: bl,
      rows: 8,
      V,
      targets: bt,
      rowLoss: rl,
      partials,
      gradScale,
    });
    encodeCrossEntropy(gpu, pass, {
      logits: bl,
      logitOff: 8 * V,
      rows: rows - 8,
      V,
      targets: bt,
      targetOff: 8,
      rowLoss: rl,
      lossOff: 8,
      partials,
      gradScale,
    });
    encodeSum(gpu, pass, rl, rows, loss, 1);
    encodeSum(gpu, pass, rl, rows, loss, 2, { accumulate: true });
  });
  const l = await readF32(gpu, loss);
  const e1 = Math.abs(l[1] - ref.lossSum) / ref.lossSum;
  const e2 = relErr(await readF32(gpu, bl), ref.dlogits);
  console.log(`cross-entropy rel err: loss ${e1.toExponential(1)}, dlogits ${e2.toExponential(1)}`);
  assert(e1 < 1e-5 && e2 < 1e-5);
  assert(l[0] === 5 && Math.abs(l[2] - 9 - ref.lossSum) / ref.lossSum < 1e-5);
});

Deno.test("cross-entropy over chatglm3-6b's vocabulary and beyond the CPU drivers' loop limit", async () => {
  // One invocation walking a 65,024-column row three times was cut off by
  // llvmpipe's loop limit (lib/gpu/loop_budget.ts); rows are walked in chunks.
  const gpu = await getGpu();
  for (const V of [40960, 65024, 70001]) {
    const rows = 4, gradScale = 0.5;
    const logits = rand(rows * V, V).map((v) => v * 8);
    const targets = Int32Array.from([V - 2, -100, 5, 40000]);
    const ref = crossEntropy(logits, targets, rows, V, gradScale);
    const bl = upload(gpu, logits), bt = upload(gpu, targets), rl = createBuffer(gpu, rows * 4);
    const partials = createBuffer(gpu, crossEntropyScratchBytes(rows, V));
    const loss = createBuffer(gpu, 4);
    await runPass((gpu, pass) => {
      encodeCrossEntropy(gpu, pass, {
        logits: bl,
        rows,
        V,
        targets: bt,
        rowLoss: rl,
        partials,
        gradScale,
      });
      encodeSum(gpu, pass, rl, rows, loss, 0);
    });
    const e1 = Math.abs((await readF32(gpu, loss))[0] - ref.lossSum) / ref.lossSum;
    const e2 = relErr(await readF32(gpu, bl), ref.dlogits);
    assert(e1 < 1e-5 && e2 < 1e-5, `V ${V}: loss ${e1}, dlogits ${e2}`);
  }
});
