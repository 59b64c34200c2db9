/**
 * Figures the benchmarks of one `deno task bench` run leave for the summary
 * bench/main.ts prints at the end (the goals are ratios between
 * figures of different benchmarks, measured in the same run).
 */
export const results: {
  /** Host ms encoding a replayed LoRA step, and the step's wall ms (bench/encoding.ts). */
  loraEncodeMs?: number;
  loraStepMs?: number;
  /** Host ms encoding a replayed forward, and its wall ms. */
  forwardEncodeMs?: number;
  forwardMs?: number;
  /** Generation tokens/s at batch 1 and 8, ours and PyTorch's (bench/generate.ts). */
  generate?: Record<number, { ours: number; peer?: number }>;
  /** The device, in words. */
  device?: string;
  deviceClass?: "cpu" | "gpu";
} = {};
