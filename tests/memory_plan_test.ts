/** The memory plan: parameter counts of the real chatglm3-6b, and the LoRA job PyTorch runs in 14,082 MiB. */
import assert from "node:assert";
import type { AdapterSpec } from "../lib/model/adapter.ts";
import { glmParameterCount, parseGlmConfig } from "../lib/model/config.ts";
import { trainableShapes } from "../lib/model/cpu/glm.ts";
import {
  formatMemoryPlan,
  largestRowsPerPass,
  memoryPlan,
  type PlanQuantization,
} from "../lib/model/memory_plan.ts";
import { glmWeightShapes } from "../lib/model/weights.ts";

const fixture = (p: string) => new URL(`./fixtures/${p}`, import.meta.url);
const readConfig = async (p: string) =>
  parseGlmConfig(JSON.parse(await Deno.readTextFile(fixture(p))), p);
const glm6b = await readConfig("chatglm3-6b-config.json");
const tiny = await readConfig("tiny/config.json");
const MiB = 2 ** 20;
/** What ChatGLM3's finetune_demo reports for LoRA r=8 with its lora.yaml (batch 4, 256+512 tokens). */
const PYTORCH_LORA_MIB = 14082;

const lora8: AdapterSpec = {
  kind: "lora",
  r: 8,
  alpha: 32,
  dropout: 0.1,
  targetModules: ["query_key_value"],
};
const job = { adapter: lora8, batch: 4, seq: 768, frozenF16: true, gradientCheckpointing: true };

Deno.test("chatglm3-6b: 6,243,584,000 base parameters, 1,949,696 LoRA r=8 parameters", () => {
  const none = memoryPlan(glm6b, { ...job, adapter: { kind: "none" } });
  const full = memoryPlan(glm6b, { ...job, adapter: { kind: "full" } });
  assert.equal(full.trainableWeights / 4, 6_243_584_000);
  // f16 matrices, f32 norm weights and qkv biases.
  assert.equal(none.frozenWeights, 2 * (6_243_584_000 - 362_496) + 4 * 362_496);
  assert.equal(memoryPlan(glm6b, job).trainableWeights / 4, 1_949_696); // as PEFT prints for chatglm3-6b
});

Deno.test("chatglm3-6b LoRA r=8, batch 4 × 768, f16 base: below PyTorch's 14,082 MiB", () => {
  const budget = PYTORCH_LORA_MIB * MiB;
  const onePass = memoryPlan(glm6b, job);
  console.log(formatMemoryPlan(onePass, "chatglm3-6b LoRA r=8 qkv, batch 4 in one pass"));
  const rows = largestRowsPerPass(glm6b, job, budget);
  assert(rows >= 1, "even one record per pass does not fit");
  const plan = memoryPlan(glm6b, { ...job, rowsPerPass: rows });
  console.log(formatMemoryPlan(plan, `chatglm3-6b LoRA r=8 qkv, batch 4 in passes of ${rows}`));
  assert(plan.total < budget, `${plan.total / MiB} MiB`);
  // The pieces add up, and halving the rows per pass halves every token-sized buffer.
  const sum = plan.frozenWeights + plan.trainableWeights + plan.gradients + plan.optimizerMoments +
    plan.activations + plan.logits + plan.scratch;
  assert.equal(plan.total, sum);
  const one = memoryPlan(glm6b, { ...job, rowsPerPass: 1 });
  const two = memoryPlan(glm6b, { ...job, rowsPerPass: 2 });
  const tokenSized = (p: typeof one) => p.activations - p.activationParts["rotary table"];
  assert(Math.abs(tokenSized(two) - 2 * tokenSized(one)) < 64, "activations scale with tokens");
  assert.equal(two.logits, 2 * one.logits);
  // Attention's score block and its gradient (rows × heads × seq² f32 each) fit 256 MiB for
  // passes of 1 and 2 and are counted; for one pass of 4 it does not, and the per-row kernels run.
  const block = "attention score block and its gradient";
  assert.equal(one.activationParts[block], 2 * 32 * 768 * 768 * 4);
  assert.equal(two.activationParts[block], 2 * 2 * 32 * 768 * 768 * 4);
  assert.equal(onePass.activationParts[block], 0);
});

Deno.test("gradient checkpointing keeps one layer's activations instead of every layer's", () => {
  const kept = memoryPlan(glm6b, { ...job, gradientCheckpointing: false, rowsPerPass: 1 });
  const ckpt = memoryPlan(glm6b, { ...job, rowsPerPass: 1 });
  const layer = kept.activationParts["per-layer activations × 28"];
  assert.equal(layer, 28 * ckpt.activationParts["per-layer activations × 1"]);
  assert(kept.total > ckpt.total);
  console.log(
    formatMemoryPlan(kept, "chatglm3-6b LoRA r=8 qkv, 1 × 768 per pass, no checkpointing"),
  );
  for (
    const adapter of [{ kind: "prefix", preSeqLen: 128, prefixProjection: false }, {
      kind: "full",
    }] as const
  ) {
    const p = memoryPlan(glm6b, { ...job, adapter, rowsPerPass: 1 });
    console.log(formatMemoryPlan(p, `chatglm3-6b ${adapter.kind}, 1 × 768 per pass`));
  }
});

Deno.test("trainable sizes agree with the model's own tensor lists", () => {
  const adapters: AdapterSpec[] = [
    {
      kind: "lora",
      r: 4,
      alpha: 8,
      dropout: 0,
      targetModules: ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    },
    { kind: "prefix", preSeqLen: 4, prefixProjection: true },
    { kind: "prefix", preSeqLen: 4, prefixProjection: false, prefixHiddenSize: 32 },
    { kind: "full" },
  ];
  const count = (m: Map<string, number[]>) =>
    [...m.values()].reduce((s, sh) => s + sh.reduce((a, b) => a * b, 1), 0);
  for (const cfg of [tiny, glm6b]) {
    for (const adapter of adapters) {
      const p = memoryPlan(cfg, { adapter, batch: 2, seq: 16, gradientCheckpointing: false });
      assert.equal(p.trainableWeights / 4, count(trainableShapes(cfg, adapter)), adapter.kind);
      assert.equal(p.gradients, p.trainableWeights);
      assert.equal(p.optimizerMoments, 2 * p.trainableWeights);
    }
    const none = memoryPlan(cfg, {
      adapter: { kind: "none" },
      batch: 1,
      seq: 8,
      frozenF16: false,
      gradientCheckpointing: false,
    });
    assert.equal(none.frozenWeights / 4, count(glmWeightShapes(cfg)));
    assert.equal(none.frozenWeights / 4, glmParameterCount(cfg));
    assert.equal(none.gradients + none.optimizerMoments, 0);
  }
});

Deno.test("the KV cache line: layers × (k, v) × batch × length × groups × kv_channels f32", () => {
  const p = memoryPlan(glm6b, { ...job, generateLength: 1024 });
  assert.equal(p.kvCache, 28 * 2 * 4 * 1024 * 2 * 128 * 4);
});

Deno.test("the plan is what the WebGPU model allocates (tiny model, every adapter kind, 4-bit bases)", async () => {
  const { getGpu } = await import("../lib/gpu/device.ts");
  const { loadGlmModel } = await import("../lib/model/load.ts");
  const gpu = await getGpu();
  const device = gpu.device;
  const create = device.createBuffer;
  let allocated = 0;
  device.createBuffer = (d: GPUBufferDescriptor) => {
    allocated += d.size;
    return create.call(device, d);
  };
  const binding = Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize);
  const nf4 = { quantType: "nf4", doubleQuant: true } as const;
  const fp4 = { quantType: "fp4", doubleQuant: false } as const;
  const cases: [AdapterSpec, boolean, PlanQuantization?][] = [
    [{ kind: "lora", r: 4, alpha: 32, dropout: 0, targetModules: ["query_key_value"] }, true],
    [
      { kind: "lora", r: 2, alpha: 4, dropout: 0, targetModules: ["dense", "dense_4h_to_h"] },
      false,
    ],
    [{ kind: "prefix", preSeqLen: 4, prefixProjection: true }, true],
    [{ kind: "prefix", preSeqLen: 3, prefixProjection: false }, false],
    [{ kind: "full" }, true],
    [{ kind: "none" }, false],
    // QLoRA: the layers' linears as 4-bit codes and scales (double-quantized or f32 absmax).
    [{ kind: "lora", r: 4, alpha: 32, dropout: 0, targetModules: ["query_key_value"] }, true, nf4],
    [{ kind: "lora", r: 2, alpha: 4, dropout: 0.1, targetModules: ["dense"] }, false, fp4],
    [{ kind: "prefix", preSeqLen: 4, prefixProjection: false }, true, nf4],
    [{ kind: "none" }, false, nf4],
  ];
  try {
    for (const [adapter, gradientCheckpointing, quantization] of cases) {
      allocated = 0;
      const model = await loadGlmModel(gpu, fixture("tiny").pathname, {
        adapter,
        maxBatch: 2,
        maxSeq: 16,
        seed: 1,
        gradientCheckpointing,
        quantization,
      });
      model.destroy();
      const plan = memoryPlan(tiny, {
        adapter,
        batch: 2,
        seq: 16,
        gradientCheckpointing,
        maxBindingBytes: binding,
        quantization,
      });
      // The optimizer moments belong to the trainer, the kernel scratch to the device.
      const planned = plan.total - plan.optimizerMoments - plan.scratch;
      const what = `${adapter.kind}${quantization ? ` on ${quantization.quantType}` : ""}`;
      assert(
        Math.abs(allocated - planned) <= 64,
        `${what} (checkpointing ${gradientCheckpointing}): the model allocates ${allocated} bytes, the plan says ${planned}`,
      );
      if (quantization) {
        const f16 = memoryPlan(tiny, { adapter, batch: 2, seq: 16, gradientCheckpointing });
        assert(plan.frozenWeights < f16.frozenWeights, `${what}: 4-bit weights take less`);
      }
    }
  } finally {
    device.createBuffer = create;
  }
});

Deno.test("torch engine plan: ZeRO's 16 bytes per trained parameter, sharded by stage across GPUs", async () => {
  const { torchMemoryPlan } = await import("../lib/model/memory_plan.ts");
  const psi = 6_243_584_000;
  const state = (p: ReturnType<typeof torchMemoryPlan>) =>
    p.trainableWeights + p.gradients + p.optimizerStates;
  const full = { adapter: { kind: "full" } as const, batch: 4, seq: 769 };
  const at = (sharding: "ddp" | "zero2" | "zero3", gpus: number, half = true) =>
    torchMemoryPlan(glm6b, {
      ...full,
      gradientCheckpointing: true,
      gpus,
      sharding,
      half,
      frozenHalf: false,
    });
  for (const n of [1, 2, 4, 8]) {
    assert.equal(state(at("ddp", n)), 16 * psi);
    assert.equal(state(at("zero2", n)), 2 * psi + 14 * psi / n);
    assert.equal(state(at("zero3", n)), 16 * psi / n);
    assert.equal(state(at("zero2", n, false)), 4 * psi + 12 * psi / n);
  }
  // LoRA: the f16 base dominates; only ZeRO-3 shards it.
  const lora = (sharding: "ddp" | "zero3", gpus: number) =>
    torchMemoryPlan(glm6b, {
      ...job,
      batch: 4,
      seq: 769,
      gpus,
      sharding,
      half: true,
      frozenHalf: true,
    });
  assert.equal(lora("ddp", 4).frozenWeights, lora("ddp", 1).frozenWeights);
  assert.equal(lora("zero3", 4).frozenWeights * 4, lora("ddp", 1).frozenWeights);
  // Offload moves the sharded state to the host, out of the GPU's total.
  const off = torchMemoryPlan(glm6b, {
    ...full,
    gradientCheckpointing: true,
    gpus: 4,
    sharding: "zero3",
    half: false,
    frozenHalf: false,
    offload: true,
  });
  assert.equal(off.host, 16 * psi / 4);
  assert.equal(state(off), 0);
  // A plan for the tiny model is positive throughout and adds up.
  const t = torchMemoryPlan(tiny, {
    ...full,
    batch: 2,
    seq: 16,
    gradientCheckpointing: false,
    gpus: 2,
    sharding: "zero3",
    half: false,
    frozenHalf: false,
  });
  assert.equal(
    t.total,
    t.frozenWeights + t.trainableWeights + t.gradients + t.optimizerStates + t.gatheredWeights +
      t.activations + t.logits,
  );
});

Deno.test("QLoRA: 4-bit linears (half a byte a value + block scales), f16 tables, the rest unchanged", () => {
  const L = 28, h = 4096, F = 13696, W = 4608, A = 4096, V = 65024;
  const perLayer = W * h + h * A + 2 * F * h + h * F; // every per-layer linear weight
  const f16 = memoryPlan(glm6b, { ...job, rowsPerPass: 1 });
  for (const doubleQuant of [false, true]) {
    const p = memoryPlan(glm6b, {
      ...job,
      rowsPerPass: 1,
      quantization: { quantType: "nf4", doubleQuant },
    });
    const parts = Object.values(p.frozenParts);
    assert.equal(parts[0], L * perLayer / 2); // the codes
    // Each tensor's blocks of 64 (all four are multiples of 64 here).
    const blocks = [W * h, h * A, 2 * F * h, h * F].map((n) => n / 64);
    const scales = doubleQuant
      ? L * blocks.reduce((s, b) => s + Math.ceil(b / 4) * 4 + 4 * Math.ceil(b / 256), 0) +
        256 * 4 // the 8-bit code book, shared
      : L * blocks.reduce((s, b) => s + 4 * b, 0);
    assert.equal(parts[1], scales);
    assert.equal(parts[2], 2 * V * h * 2); // embedding and output layer, f16
    assert.equal(p.frozenWeights, parts.reduce((a, b) => a + b, 0));
    // Only the frozen weights change.
    assert.equal(p.total - p.frozenWeights, f16.total - f16.frozenWeights);
    assert.equal(f16.frozenWeights - p.frozenWeights, L * perLayer * 2 - parts[0] - parts[1]);
  }
  const q = memoryPlan(glm6b, {
    ...job,
    rowsPerPass: 1,
    quantization: { quantType: "nf4", doubleQuant: true },
  });
  console.log(formatMemoryPlan(q, "chatglm3-6b QLoRA r=8 qkv (NF4, double quantization), 1 × 769"));
  assert(q.total < 5 * 2 ** 30, `${q.total / MiB} MiB`);
  // FP4 takes the same room as NF4.
  const fp4 = memoryPlan(glm6b, {
    ...job,
    rowsPerPass: 1,
    quantization: { quantType: "fp4", doubleQuant: true },
  });
  assert.equal(fp4.total, q.total);
  // On a CPU adapter the 4-bit kernel reads the weights from their buffers: no texture copies.
  const cpu = (quantization?: { quantType: "nf4"; doubleQuant: boolean }) =>
    memoryPlan(glm6b, { ...job, rowsPerPass: 1, deviceClass: "cpu", quantization }).scratch;
  assert(cpu({ quantType: "nf4", doubleQuant: true }) < cpu());
  assert.throws(
    () =>
      memoryPlan(glm6b, {
        ...job,
        adapter: { kind: "full" },
        quantization: { quantType: "nf4", doubleQuant: false },
      }),
    /cannot be fully fine-tuned/,
  );
});
