/**
 * What a benchmark's device actually allocates, by kind: every buffer and
 * texture created through the device while this is installed is counted
 * until destroyed, under a kind read off its label (weights by their HF
 * names, `.grad`, `.exp_avg`/`.exp_avg_sq`, the matmul's textures and
 * repack buffers, uniforms (recorded steps' too), readback staging;
 * anything else the model's activations), and the peak of each kind is kept.
 */
import type { Gpu } from "../lib/gpu/device.ts";
import { DYNAMIC_MAP_LABEL } from "../lib/model/quant/device.ts";

export type MemoryKind = "frozen" | "trainable" | "optimizer" | "activations" | "scratch";
const KINDS: MemoryKind[] = ["frozen", "trainable", "optimizer", "activations", "scratch"];

/** The kind of a buffer or texture, by its label and usage. */
function memoryKind(label: string, usage: number): MemoryKind {
  if (/\.exp_avg(_sq)?$/.test(label)) return "optimizer";
  if (/\.grad$/.test(label) || /lora_[AB]|prefix_encoder/.test(label)) return "trainable";
  // Base weights by their HF names (4-bit ones as NAME.packed / .scales / .absmax2), and the
  // 8-bit code book of double quantization.
  if (/^transformer\./.test(label) || label === DYNAMIC_MAP_LABEL) return "frozen";
  if (
    /^(matmul-|uniforms|recorded-uniforms|grad-norm|bench-)/.test(label) ||
    usage & GPUBufferUsage.MAP_READ
  ) {
    return "scratch";
  }
  return "activations";
}

const TEXEL_BYTES: Record<string, number> = { rgba32float: 16, rgba16float: 8, r32float: 4 };

export class DeviceMemory {
  private live = new Map<MemoryKind, number>();
  private peak = new Map<MemoryKind, number>();
  private readonly createBuffer: GPUDevice["createBuffer"];
  private readonly createTexture: GPUDevice["createTexture"];

  constructor(private gpu: Gpu) {
    const device = gpu.device;
    this.createBuffer = device.createBuffer;
    this.createTexture = device.createTexture;
    device.createBuffer = (d: GPUBufferDescriptor) => {
      const b = this.createBuffer.call(device, d);
      this.track(b, memoryKind(d.label ?? "", d.usage), d.size);
      return b;
    };
    device.createTexture = (d: GPUTextureDescriptor) => {
      const t = this.createTexture.call(device, d);
      const [w, h, layers] = d.size as number[];
      const bytes = w * (h ?? 1) * (layers ?? 1) * (TEXEL_BYTES[d.format] ?? 16);
      this.track(t, "scratch", bytes);
      return t;
    };
  }

  private add(kind: MemoryKind, bytes: number): void {
    const v = (this.live.get(kind) ?? 0) + bytes;
    this.live.set(kind, v);
    this.peak.set(kind, Math.max(this.peak.get(kind) ?? 0, v));
  }

  private track(x: { destroy(): void }, kind: MemoryKind, bytes: number): void {
    this.add(kind, bytes);
    const destroy = x.destroy.bind(x);
    let gone = false;
    x.destroy = () => {
      if (!gone) this.add(kind, -bytes);
      gone = true;
      destroy();
    };
  }

  /** Start the peaks again from what is live now. */
  reset(): void {
    for (const k of KINDS) this.peak.set(k, this.live.get(k) ?? 0);
  }

  /** Each kind's peak since the last reset. */
  peakByKind(): [MemoryKind, number][] {
    return KINDS.map((k) => [k, this.peak.get(k) ?? 0]);
  }

  /** Put the device's own methods back. */
  restore(): void {
    this.gpu.device.createBuffer = this.createBuffer;
    this.gpu.device.createTexture = this.createTexture;
  }
}
