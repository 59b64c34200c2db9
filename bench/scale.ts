/**
 * chatglm3-6b at its real size: the shaped checkpoint (./shaped_checkpoint.ts,
 * random weights in the real layout) loaded from disk as a user's model dir
 * is, then with upstream's LoRA settings (r 8, alpha 32, query_key_value) and
 * gradient checkpointing one optimizer step on 1 record × 128 tokens and 4
 * greedy tokens from a 32-token prompt, and one P-Tuning v2 step
 * (pre_seq_len 128) on the same record. Prints load and step times, the
 * losses, the tokens, the process's peak RSS, and the device buffers actually
 * allocated by kind beside the `train --dry-run` plan for the same job.
 *
 *   deno task bench scale [--layers N] [--quant 4 [--quant-type nf4|fp4] [--no-double-quant]] [--json FILE]
 *
 * With --quant 4 the base's layer linears are held 4-bit (QLoRA; NF4 with
 * double quantization by default, LLaMA-Factory's quantization_bit: 4),
 * quantized as they load: the LoRA job only (the QLoRA step), with the
 * quantization's host time beside the load time.
 *
 * Not in the default `deno task bench`: at 28 layers it writes a 12.5 GB
 * checkpoint (once, under runs/shaped/) and runs for minutes on a CPU.
 */
import { parseFlags, positiveIntFlag } from "../lib/args.ts";
import { UsageError } from "../lib/errors.ts";
import { writeJsonAtomic } from "../lib/atomic.ts";
import { describeGpu } from "../lib/gpu/device.ts";
import { loadGlmConfig } from "../lib/model/config.ts";
import { gpuForModel, loadGlmModel } from "../lib/model/load.ts";
import { type MemoryPlan, memoryPlan, type PlanQuantization } from "../lib/model/memory_plan.ts";
import { DeviceMemory, type MemoryKind } from "./device_memory.ts";
import {
  peakRss,
  planDevice,
  seededIds,
  trainSteps,
  UPSTREAM_LORA,
  UPSTREAM_PTUNING,
} from "./jobs.ts";
import { makeShapedCheckpoint, shapedDir } from "./shaped_checkpoint.ts";

const SEQ = 128;
const PROMPT = 32;
const NEW_TOKENS = 4;

const GiB = 2 ** 30, MiB = 2 ** 20;
const secs = (t0: number) => (performance.now() - t0) / 1000;

interface KindRow {
  kind: MemoryKind;
  allocated: number;
  planned: number;
}

/** The planned bytes of each kind (the trainer's moments included). */
function plannedByKind(p: MemoryPlan): Record<MemoryKind, number> {
  return {
    frozen: p.frozenWeights,
    trainable: p.trainableWeights + p.gradients,
    optimizer: p.optimizerMoments,
    activations: p.activations + p.logits,
    scratch: p.scratch,
  };
}

function kindRows(mem: DeviceMemory, plan: MemoryPlan): KindRow[] {
  const planned = plannedByKind(plan);
  return mem.peakByKind().map(([kind, allocated]) => ({ kind, allocated, planned: planned[kind] }));
}

function printRows(rows: KindRow[]): void {
  for (const r of rows) {
    const dev = r.planned ? ((r.allocated - r.planned) / r.planned * 100).toFixed(1) + " %" : "";
    console.log(
      `    ${r.kind.padEnd(12)}${(r.allocated / MiB).toFixed(1).padStart(11)} MiB allocated` +
        `${(r.planned / MiB).toFixed(1).padStart(11)} MiB planned  ${dev}`,
    );
  }
}

export async function run(argv: string[] = []): Promise<void> {
  const usage = "usage: deno task bench scale [--layers N] [--quant 4 [--quant-type nf4|fp4] " +
    "[--no-double-quant]] [--json FILE]";
  const { values } = parseFlags(argv, {
    layers: { type: "string" },
    quant: { type: "string" },
    "quant-type": { type: "string" },
    "no-double-quant": { type: "boolean" },
    json: { type: "string" },
  }, usage);
  const layers = positiveIntFlag(values.layers, "--layers") ?? 28;
  let quantization: PlanQuantization | undefined;
  if (values.quant !== undefined) {
    const type = (values["quant-type"] ?? "nf4") as string;
    if (values.quant !== "4" || (type !== "nf4" && type !== "fp4")) throw new UsageError(usage);
    quantization = { quantType: type, doubleQuant: !values["no-double-quant"] };
  }
  const dir = shapedDir(layers);
  let t0 = performance.now();
  const wrote = await makeShapedCheckpoint(dir, { layers });
  console.log(`  checkpoint: ${dir} (${wrote ? `written in ${secs(t0).toFixed(0)} s` : "reused"})`);
  const config = await loadGlmConfig(dir);
  const gpu = await gpuForModel(config);
  console.log(
    `  ${layers} layers, hidden ${config.hidden_size}, ffn ${config.ffn_hidden_size}, vocab ${config.padded_vocab_size}; on ${
      describeGpu(gpu)
    }`,
  );
  const mem = new DeviceMemory(gpu);
  const V = config.padded_vocab_size;
  const record = seededIds(SEQ, V, 7);
  const out: Record<string, unknown> = { layers, device: describeGpu(gpu), quantization };
  if (quantization) {
    console.log(
      `  QLoRA: layer linears ${quantization.quantType.toUpperCase()}${
        quantization.doubleQuant ? ", double quantization" : ""
      }, quantized as they load`,
    );
  }
  const jobs = quantization
    ? [["qlora", UPSTREAM_LORA] as const]
    : [["lora", UPSTREAM_LORA] as const, ["ptuning", UPSTREAM_PTUNING] as const];

  for (const [name, adapter] of jobs) {
    mem.reset();
    const opts = {
      adapter,
      batch: 1,
      seq: SEQ,
      gradientCheckpointing: true,
      ...(quantization ? { quantization } : {}),
    };
    t0 = performance.now();
    const model = await loadGlmModel(gpu, dir, {
      adapter,
      maxBatch: 1,
      maxSeq: SEQ,
      seed: 42,
      gradientCheckpointing: true,
      ...(quantization ? { quantization } : {}),
    });
    const loadS = secs(t0);
    const quantizeS = model.loadStats.quantizeSeconds;
    t0 = performance.now();
    const [loss] = (await trainSteps(gpu, model, {
      ids: record,
      batch: 1,
      seq: SEQ,
      rowsPerPass: 1,
      steps: 1,
    })).losses;
    const stepS = secs(t0);
    const res: Record<string, unknown> = { load_s: loadS, step_s: stepS, loss };
    if (quantization) res.quantize_s = quantizeS;
    console.log(
      `  ${name}: load ${loadS.toFixed(1)} s${
        quantization ? ` (quantizing ${quantizeS.toFixed(1)} s of it)` : ""
      }, step (1 × ${SEQ} tokens) ${stepS.toFixed(1)} s, loss ${loss.toFixed(4)} (ln V = ${
        Math.log(V).toFixed(4)
      })`,
    );
    const plan = memoryPlan(config, { ...opts, ...planDevice(gpu) });
    // The step's buffers, before generation adds its own.
    const rows = kindRows(mem, plan);
    printRows(rows);
    if (name !== "ptuning") {
      t0 = performance.now();
      const [tokens] = await model.generate([Array.from(record.subarray(0, PROMPT))], {
        maxNewTokens: NEW_TOKENS,
        stopIds: [],
      });
      const genS = secs(t0);
      res.generate_s = genS;
      res.tokens = tokens;
      console.log(
        `    greedy from ${PROMPT} tokens: [${tokens.join(", ")}] in ${genS.toFixed(1)} s`,
      );
    }
    res.device_bytes = Object.fromEntries(rows.map((r) => [r.kind, r]));
    model.destroy();
    out[name] = res;
  }
  const rss = peakRss();
  out.peak_rss_bytes = rss;
  console.log(`  peak RSS ${(rss / GiB).toFixed(2)} GiB`);
  mem.restore();
  if (values.json) await writeJsonAtomic(values.json as string, out);
}

if (import.meta.main) await run(Deno.args);
