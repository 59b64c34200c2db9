/**
 * `deno task bench`: every benchmark, each printing its figures and the ratio
 * against a peer (numpy / PyTorch CPU) measured in the same run. Pass names to
 * run a subset: `deno task bench matmul train`. `scale` (chatglm3-6b's real
 * shape, ./scale.ts) runs only when named. At the end, the goals of the
 * engine against this run's figures, and what a GPU run needs.
 */
import { results } from "./results.ts";
const BENCHES = [
  "tokenizer",
  "matmul",
  "matmul_4bit",
  "encoding",
  "forward",
  "train",
  "generate",
  "convert_memory",
];

// Names first, then flags for them: `deno task bench scale --layers 2`.
const flagAt = Deno.args.findIndex((a) => a.startsWith("--"));
const names = flagAt < 0 ? Deno.args : Deno.args.slice(0, flagAt);
const flags = flagAt < 0 ? [] : Deno.args.slice(flagAt);
const wanted = names.length ? names : BENCHES;
for (const name of wanted) {
  const url = new URL(`./${name}.ts`, import.meta.url);
  try {
    await Deno.stat(url);
  } catch {
    console.log(`\n## ${name}: not available yet`);
    continue;
  }
  console.log(`\n## ${name}`);
  const mod = await import(url.href) as { run(argv?: string[]): Promise<void> };
  await mod.run(flags);
}

/** The engine's goals, with this run's figures where it measured them. */
function goals(): void {
  const r = results;
  const out: string[] = [];
  const pct = (a: number, b: number) => `${(100 * a / b).toFixed(2)}%`;
  if (r.loraEncodeMs !== undefined && r.loraStepMs !== undefined) {
    const share = r.loraEncodeMs / r.loraStepMs;
    out.push(
      `encoding ${r.loraEncodeMs.toFixed(1)} ms of a ${r.loraStepMs.toFixed(0)} ms LoRA step: ` +
        `${pct(r.loraEncodeMs, r.loraStepMs)} (goal under 5%: ${share < 0.05 ? "met" : "NOT met"})`,
    );
  }
  if (r.forwardEncodeMs !== undefined && r.forwardMs !== undefined) {
    const share = r.forwardEncodeMs / r.forwardMs;
    out.push(
      `encoding ${r.forwardEncodeMs.toFixed(1)} ms of a ${r.forwardMs.toFixed(1)} ms forward: ` +
        `${pct(r.forwardEncodeMs, r.forwardMs)}` +
        (r.deviceClass === "gpu"
          ? ` (GPU goal under 20%: ${share < 0.2 ? "met" : "NOT met"})`
          : ""),
    );
  }
  const g = r.generate?.[1];
  if (g) {
    const ratio = g.peer ? g.ours / g.peer : undefined;
    out.push(
      `generation at batch 1: ${g.ours.toFixed(1)} tokens/s` +
        (ratio !== undefined
          ? `, ${ratio.toFixed(2)}× PyTorch (goal at least 0.5×: ${
            ratio >= 0.5 ? "met" : "NOT met"
          })`
          : " (no PyTorch figure)") +
        (r.deviceClass === "gpu"
          ? `; GPU goal 300 tokens/s: ${g.ours >= 300 ? "met" : "NOT met"}`
          : ""),
    );
  }
  if (out.length === 0) return;
  console.log(`\n## goals (${r.device ?? "this device"})`);
  for (const l of out) console.log(`  ${l}`);
  if (r.deviceClass !== "gpu") {
    console.log(
      "  GPU goals (H100/H200), not measurable here: the forward's encoding under 20% of its time,\n" +
        "  generation at batch 1 ≥ 300 tokens/s, matmul ≥ 25 TFLOP/s time-weighted on the bench shapes.\n" +
        "  A GPU run needs: Deno 2.9.6 and a Vulkan driver (the GPU is picked over llvmpipe), the\n" +
        "  PyTorch peers' venv (python3 -m venv .venv-tools && .venv-tools/bin/pip install torch\n" +
        "  transformers==5.18.0 peft safetensors numpy; or GLM_PEER_PYTHON=python3 where that has\n" +
        "  them), then\n" +
        "  `deno task bench matmul encoding forward train generate` (or bench/gpu.sh for the real\n" +
        '  shape); record the figures in docs/engine.md, "On a GPU".',
    );
  }
}

goals();
