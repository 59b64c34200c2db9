/**
 * The buffers a model owns and its trainable tensors, in the order they are
 * created (HF state-dict order for full SFT; the order PEFT saves adapters).
 */
import type { Gpu } from "../gpu/device.ts";
import { createBuffer, writeBuffer } from "../gpu/runtime.ts";
import { releaseKeptTextures } from "../gpu/kernels/matmul.ts";
import type { TrainableParam } from "./types.ts";

/** HF Trainer: no weight decay for biases and norm weights. */
function decays(name: string): boolean {
  return !/bias|layernorm|norm\.weight/.test(name);
}

export class DeviceStore {
  readonly params: TrainableParam[] = [];
  readonly byName = new Map<string, TrainableParam>();
  private readonly owned: GPUBuffer[] = [];

  constructor(readonly gpu: Gpu) {}

  /** A zeroed storage buffer the model owns. */
  buf(bytes: number, label: string): GPUBuffer {
    const b = createBuffer(this.gpu, bytes, label);
    this.owned.push(b);
    return b;
  }

  /** A buffer holding `data`. */
  up(data: Float32Array | Uint32Array, label: string): GPUBuffer {
    const b = this.buf(data.byteLength, label);
    if (data.byteLength > 0) writeBuffer(this.gpu, b, 0, data);
    return b;
  }

  /** A trainable f32 tensor (its weight given, or a new zeroed one) with a gradient buffer. */
  addParam(name: string, shape: number[], weight?: GPUBuffer): TrainableParam {
    const size = shape.reduce((a, b) => a * b, 1);
    const p: TrainableParam = {
      name,
      shape,
      size,
      weight: weight ?? this.buf(size * 4, name),
      grad: this.buf(size * 4, name + ".grad"),
      decay: decays(name),
    };
    this.params.push(p);
    this.byName.set(name, p);
    return p;
  }

  destroy(): void {
    releaseKeptTextures(this.gpu, this.owned);
    for (const b of this.owned) b.destroy();
    this.owned.length = 0;
  }
}
