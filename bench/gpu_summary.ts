/**
 * bench/gpu.sh's last step: the project's jobs (ours.json, bench/gpu_jobs.ts)
 * beside PyTorch + PEFT's (peer.jsonl, tools/peers/gpu_peer.py) and the GPU
 * memory nvidia-smi saw during each (*-smi.txt, MiB per sample): a table and
 * gpu-summary.json in the same folder.
 *
 *   deno run -A bench/gpu_summary.ts DIR
 */
import { join } from "node:path";
import { writeJsonAtomic } from "../lib/atomic.ts";
import { runCli, UserError } from "../lib/errors.ts";

interface Ours {
  samples_per_s: number;
  tokens_per_s: number;
  device_peak_mib: number;
  rows_per_pass: number;
  layers: number;
  batch: number;
  seq: number;
}
interface Peer {
  job: string;
  samples_per_s: number;
  tokens_per_s: number;
  peak_mib: number;
  device: string;
  dtype: string;
}

async function smiPeak(path: string): Promise<number | null> {
  try {
    const v = (await Deno.readTextFile(path)).split("\n").map(Number).filter((x) => x > 0);
    return v.length ? Math.max(...v) : null;
  } catch {
    return null;
  }
}

/** A file bench/gpu.sh writes, or a clear error naming it. */
async function written(path: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError(`${path}: missing (bench/gpu.sh writes it before this step)`);
    }
    throw e;
  }
}

/** The table and gpu-summary.json of the run in `dir`. */
async function report(dir: string): Promise<void> {
  const ours = JSON.parse(await written(join(dir, "ours.json")));
  const peers: Peer[] = (await written(join(dir, "peer.jsonl"))).trim().split("\n")
    .filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
  const smi = {
    ours: await smiPeak(join(dir, "ours-smi.txt")),
    peer: await smiPeak(join(dir, "peer-smi.txt")),
  };
  const rows: Record<string, unknown>[] = [];
  const f = (x: number | null | undefined, d = 1) => (x == null ? "—" : x.toFixed(d));
  console.log(`\nWebGPU: ${ours.device}; PyTorch: ${peers[0]?.device} ${peers[0]?.dtype}`);
  console.log(
    "job       shape                  ours samples/s  tokens/s  MiB     | PyTorch samples/s  tokens/s  MiB     | ratio",
  );
  for (const job of ["lora", "ptuning", "sft"]) {
    const o = ours[job] as Ours | undefined, p = peers.find((x) => x.job === job);
    if (!o) continue;
    const ratio = p ? o.tokens_per_s / p.tokens_per_s : null;
    const shape = `${o.layers}L, ${o.batch}×${o.seq} /${o.rows_per_pass}`;
    console.log(
      `${job.padEnd(9)} ${shape.padEnd(22)} ${f(o.samples_per_s, 3).padStart(14)} ${
        f(o.tokens_per_s, 0).padStart(9)
      } ${f(o.device_peak_mib, 0).padStart(7)} | ${f(p?.samples_per_s, 3).padStart(17)} ${
        f(p?.tokens_per_s, 0).padStart(9)
      } ${f(p?.peak_mib, 0).padStart(7)} | ${f(ratio, 2)}`,
    );
    rows.push({ job, ours: o, pytorch: p ?? null, ratio_tokens_per_s: ratio });
  }
  console.log(
    `GPU memory in use at peak (nvidia-smi, whole device): WebGPU jobs ${
      f(smi.ours, 0)
    } MiB, PyTorch jobs ${f(smi.peer, 0)} MiB`,
  );
  await writeJsonAtomic(join(dir, "gpu-summary.json"), {
    device: ours.device,
    jobs: rows,
    nvidia_smi_peak_mib: smi,
    peak_rss_mib: ours.peak_rss_mib,
  });
  console.log(`summary: ${join(dir, "gpu-summary.json")}`);
}

await runCli(() => report(Deno.args[0] ?? "runs/gpu"));
