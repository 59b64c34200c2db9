/**
 * What every kernel needs: compiled pipelines cached by shader source (the
 * first dispatch of a new pipeline costs ~16–20 ms of JIT on llvmpipe, so each
 * is built once), buffers, uploads/readbacks, and a uniform arena so one
 * compiled pipeline serves many shapes within one command encoder.
 */
import type { Gpu } from "./device.ts";

const STORAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

const pipelines = new WeakMap<GPUDevice, Map<string, GPUComputePipeline>>();

/** A compute pipeline for `code`, compiled once per device, its bind group layout inferred from the shader. */
export function getPipeline(gpu: Gpu, code: string, entryPoint = "main"): GPUComputePipeline {
  let cache = pipelines.get(gpu.device);
  if (!cache) pipelines.set(gpu.device, cache = new Map());
  const key = entryPoint + "\u0000" + code;
  let p = cache.get(key);
  if (!p) {
    const module = gpu.device.createShaderModule({ code });
    p = gpu.device.createComputePipeline({ layout: "auto", compute: { module, entryPoint } });
    cache.set(key, p);
  }
  return p;
}

/** A storage buffer of `bytes` (rounded up to 4), zero-filled by WebGPU. */
export function createBuffer(gpu: Gpu, bytes: number, label?: string): GPUBuffer {
  const size = Math.max(4, Math.ceil(bytes / 4) * 4);
  if (size > gpu.limits.maxBufferSize) {
    throw new Error(
      `buffer ${
        label ?? ""
      } of ${size} bytes exceeds the adapter's maxBufferSize ${gpu.limits.maxBufferSize}; split it`,
    );
  }
  return gpu.device.createBuffer({ size, usage: STORAGE, label });
}

/** A storage buffer holding `data`. */
export function upload(gpu: Gpu, data: ArrayBufferView, label?: string): GPUBuffer {
  const buf = createBuffer(gpu, data.byteLength, label);
  writeBuffer(gpu, buf, 0, data);
  return buf;
}

/**
 * Bytes written with writeBuffer since the device's last submit: the
 * implementation keeps a staging copy of each write until a submit has run,
 * so uploading a 12.5 GB model without one would hold it twice in host memory.
 */
const unsubmitted = new WeakMap<GPUDevice, number>();

/**
 * Submit and wait when more than `above` bytes of writes are held in staging:
 * a loader calls it between tensors. One wait (~11 ms on llvmpipe) per
 * `above` bytes.
 */
export async function settleWrites(gpu: Gpu, above = 256 * 2 ** 20): Promise<void> {
  if ((unsubmitted.get(gpu.device) ?? 0) <= above) return;
  gpu.device.queue.submit([]);
  await gpu.device.queue.onSubmittedWorkDone();
  unsubmitted.set(gpu.device, 0);
}

/** queue.writeBuffer for any view, padding to 4 bytes as WebGPU requires. */
export function writeBuffer(
  gpu: Gpu,
  buffer: GPUBuffer,
  byteOffset: number,
  data: ArrayBufferView,
): void {
  const bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
  // Deno 2.9 panics on an empty write; there is nothing to do anyway.
  if (bytes.byteLength === 0) return;
  unsubmitted.set(gpu.device, (unsubmitted.get(gpu.device) ?? 0) + bytes.byteLength);
  if (bytes.byteLength % 4 === 0) {
    gpu.device.queue.writeBuffer(buffer, byteOffset, bytes);
  } else {
    const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
    padded.set(bytes);
    gpu.device.queue.writeBuffer(buffer, byteOffset, padded);
  }
}

/** Copy `bytes` of `buffer` from `byteOffset` to the host. This waits for the GPU: do it at most once per step. */
export async function readBuffer(
  gpu: Gpu,
  buffer: GPUBuffer,
  bytes = buffer.size,
  byteOffset = 0,
): Promise<ArrayBuffer> {
  const size = Math.ceil(bytes / 4) * 4;
  const staging = gpu.device.createBuffer({
    size,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const enc = gpu.device.createCommandEncoder();
  enc.copyBufferToBuffer(buffer, byteOffset, staging, 0, size);
  gpu.device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const out = staging.getMappedRange().slice(0, bytes);
  staging.unmap();
  staging.destroy();
  return out;
}

export async function readF32(
  gpu: Gpu,
  buffer: GPUBuffer,
  count?: number,
  offset = 0,
): Promise<Float32Array> {
  const n = count ?? buffer.size / 4 - offset;
  return new Float32Array(await readBuffer(gpu, buffer, n * 4, offset * 4));
}

/**
 * Uniform slots for one batch of work: each dispatch gets its own 256-byte
 * slot (the minimum uniform offset alignment), written with writeBuffer, so
 * many dispatches with different shapes can sit in one command encoder.
 * Call `reset()` after submitting: queue order guarantees later writes land
 * after the submitted work has read the old values.
 */
export class UniformArena {
  private static readonly SLOT = 256;
  private static readonly SLOTS_PER_CHUNK = 4096;
  private chunks: GPUBuffer[] = [];
  private next = 0;
  constructor(private gpu: Gpu) {}

  /** A binding holding `words` (u32/i32/f32 values as raw 32-bit words, at most 64). */
  alloc(words: ArrayBufferView): GPUBufferBinding {
    const chunkIdx = Math.floor(this.next / UniformArena.SLOTS_PER_CHUNK);
    const slot = this.next % UniformArena.SLOTS_PER_CHUNK;
    this.next++;
    if (chunkIdx === this.chunks.length) {
      this.chunks.push(this.gpu.device.createBuffer({
        size: UniformArena.SLOT * UniformArena.SLOTS_PER_CHUNK,
        usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
        label: `uniforms-${chunkIdx}`,
      }));
    }
    const buffer = this.chunks[chunkIdx];
    const offset = slot * UniformArena.SLOT;
    writeBuffer(this.gpu, buffer, offset, words);
    return { buffer, offset, size: Math.max(16, Math.ceil(words.byteLength / 16) * 16) };
  }

  reset(): void {
    this.next = 0;
  }
}

const arenas = new WeakMap<GPUDevice, UniformArena>();

/** The device's shared uniform arena. */
export function uniforms(gpu: Gpu): UniformArena {
  let a = arenas.get(gpu.device);
  if (!a) arenas.set(gpu.device, a = new UniformArena(gpu));
  return a;
}

/** Pack mixed u32/i32/f32 uniform fields into 32-bit words, in order. */
export function packUniforms(
  fields: Array<{ u: number } | { i: number } | { f: number }>,
): Uint32Array {
  const buf = new ArrayBuffer(Math.max(16, Math.ceil(fields.length / 4) * 16));
  const dv = new DataView(buf);
  fields.forEach((x, k) => {
    if ("u" in x) dv.setUint32(k * 4, x.u >>> 0, true);
    else if ("i" in x) dv.setInt32(k * 4, x.i, true);
    else dv.setFloat32(k * 4, x.f, true);
  });
  return new Uint32Array(buf);
}

export type Binding = GPUBuffer | GPUBufferBinding | GPUTextureView;

/** What kernels encode into: a compute pass, or an `InterruptiblePass` such as a `SplittablePass`. */
export type ComputePass = Pick<
  GPUComputePassEncoder,
  "setPipeline" | "setBindGroup" | "dispatchWorkgroups"
>;

/** A pass a kernel can interrupt to record commands outside it (copies into textures). */
export interface InterruptiblePass extends ComputePass {
  /** End the pass, let `record` add commands to the encoder, go on in a new pass. */
  interrupt(record: (encoder: GPUCommandEncoder) => void): void;
}

export function canInterrupt(pass: ComputePass): pass is InterruptiblePass {
  return typeof (pass as Partial<InterruptiblePass>).interrupt === "function";
}

/**
 * A compute pass that a kernel can interrupt to record copies on its command
 * encoder (the CPU adapter's matmul copies its operands into textures): the
 * current pass ends, the copies are recorded, a new pass begins, and the code
 * holding this object goes on encoding into it. Commands keep their order.
 */
export class SplittablePass implements InterruptiblePass {
  #pass: GPUComputePassEncoder;
  constructor(readonly encoder: GPUCommandEncoder) {
    this.#pass = encoder.beginComputePass();
  }
  setPipeline(pipeline: GPUComputePipeline): undefined {
    this.#pass.setPipeline(pipeline);
  }
  setBindGroup(index: number, group: GPUBindGroup | null): undefined {
    this.#pass.setBindGroup(index, group);
  }
  dispatchWorkgroups(x: number, y?: number, z?: number): undefined {
    this.#pass.dispatchWorkgroups(x, y, z);
  }
  interrupt(record: (encoder: GPUCommandEncoder) => void): void {
    this.#pass.end();
    record(this.encoder);
    this.#pass = this.encoder.beginComputePass();
  }
  end(): void {
    this.#pass.end();
  }
}

/**
 * Encode one dispatch: bind group 0 gets `bindings` at 0..n-1 (storage buffers,
 * a uniform binding from the arena, texture views), in the order the
 * shader declares them.
 */
export function dispatch(
  gpu: Gpu,
  pass: ComputePass,
  pipeline: GPUComputePipeline,
  bindings: Binding[],
  workgroups: [number, number?, number?],
): void {
  const entries: GPUBindGroupEntry[] = bindings.map((b, binding) => ({
    binding,
    resource: b instanceof GPUBuffer ? { buffer: b } : b,
  }));
  const group = gpu.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, group);
  const [x, y = 1, z = 1] = workgroups;
  const max = gpu.limits.maxComputeWorkgroupsPerDimension;
  if (x > max || y > max || z > max) {
    throw new Error(`dispatch of ${x}×${y}×${z} workgroups exceeds the limit ${max} per dimension`);
  }
  pass.dispatchWorkgroups(x, y, z);
}
