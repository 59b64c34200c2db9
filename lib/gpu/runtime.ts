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
 * A uniform field of a recorded sequence (./recording.ts) that takes a new
 * value each time the sequence is replayed: a dropout seed, a gradient scale,
 * a loss slot. Kernels pack it like a number; the arena remembers where it
 * went, and a replay writes the current `value` there.
 */
export class Knob {
  constructor(public value: number) {}
}

/** A field of packUniforms: a number, or a Knob read at each replay. */
export type UniformValue = number | Knob;

/** Where packUniforms put a Knob: word index and how the word is written. */
type KnobSite = { word: number; knob: Knob; as: "u" | "i" | "f" };

/** Packed uniform words, with the Knobs among them. */
export type UniformWords = Uint32Array & { knobs?: KnobSite[] };

/** Write `v` into word `k` of `dv` as u32, i32 or f32. */
function setWord(dv: DataView, k: number, as: "u" | "i" | "f", v: number): void {
  if (as === "u") dv.setUint32(k * 4, v >>> 0, true);
  else if (as === "i") dv.setInt32(k * 4, v, true);
  else dv.setFloat32(k * 4, v, true);
}

/**
 * Uniform slots for a batch of work: each dispatch gets its own 256-byte slot
 * (the minimum uniform offset alignment), so many dispatches with different
 * shapes can sit in one command encoder.
 *
 * The arena keeps a host copy of what its buffers hold. A slot whose words
 * are already there is not written again (a repeated step of one shape
 * writes nothing); the others are written at once, or, inside `deferred`,
 * gathered and written with one writeBuffer per chunk at `flush` — a step's
 * uniforms in one call instead of one per dispatch. Call `reset()` after
 * submitting: queue order guarantees later writes land after the submitted
 * work has read the old values.
 */
export class UniformArena {
  static readonly SLOT = 256;
  private chunks: Array<{ buffer: GPUBuffer; held: Uint32Array; lo: number; hi: number }> = [];
  private next = 0;
  private defer = 0;
  /** Knobs packed into this arena's slots, by absolute word index (recordings use them). */
  readonly knobs: Array<{ chunk: number; word: number; site: KnobSite }> = [];
  constructor(private gpu: Gpu, private slotsPerChunk = 4096, private label = "uniforms") {}

  /** A binding holding `words` (u32/i32/f32 values as raw 32-bit words, at most 64). */
  alloc(words: ArrayBufferView): GPUBufferBinding {
    const chunkIdx = Math.floor(this.next / this.slotsPerChunk);
    const slot = this.next % this.slotsPerChunk;
    this.next++;
    if (chunkIdx === this.chunks.length) {
      const bytes = UniformArena.SLOT * this.slotsPerChunk;
      this.chunks.push({
        buffer: this.gpu.device.createBuffer({
          size: bytes,
          usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
          label: `${this.label}-${chunkIdx}`,
        }),
        held: new Uint32Array(bytes / 4),
        lo: Infinity,
        hi: 0,
      });
    }
    const c = this.chunks[chunkIdx];
    const at = (slot * UniformArena.SLOT) / 4;
    const w = new Uint32Array(words.buffer, words.byteOffset, Math.ceil(words.byteLength / 4));
    let same = true;
    for (let k = 0; k < w.length; k++) {
      if (c.held[at + k] !== w[k]) {
        same = false;
        break;
      }
    }
    if (!same) {
      c.held.set(w, at);
      c.lo = Math.min(c.lo, at);
      c.hi = Math.max(c.hi, at + w.length);
      if (this.defer === 0) this.flush();
    }
    for (const site of (words as UniformWords).knobs ?? []) {
      this.knobs.push({ chunk: chunkIdx, word: at + site.word, site });
    }
    return {
      buffer: c.buffer,
      offset: slot * UniformArena.SLOT,
      size: Math.max(16, Math.ceil(words.byteLength / 16) * 16),
    };
  }

  /** Write every changed slot: one writeBuffer per chunk that has any. */
  flush(): void {
    for (const c of this.chunks) {
      if (c.hi <= c.lo) continue;
      writeBuffer(this.gpu, c.buffer, c.lo * 4, c.held.subarray(c.lo, c.hi));
      c.lo = Infinity;
      c.hi = 0;
    }
  }

  /** Run `fill` with writes gathered, then flush them: its uniforms go in one call per chunk. */
  deferred<T>(fill: () => T): T {
    this.defer++;
    try {
      return fill();
    } finally {
      this.defer--;
      if (this.defer === 0) this.flush();
    }
  }

  /** Give each Knob packed here its current value (a recording's replay); then flush. */
  updateKnobs(): void {
    for (const { chunk, word, site } of this.knobs) {
      const c = this.chunks[chunk];
      const dv = new DataView(c.held.buffer);
      const before = c.held[word];
      setWord(dv, word, site.as, site.knob.value);
      if (c.held[word] !== before) {
        c.lo = Math.min(c.lo, word);
        c.hi = Math.max(c.hi, word + 1);
      }
    }
    this.flush();
  }

  reset(): void {
    this.next = 0;
    this.knobs.length = 0;
  }

  destroy(): void {
    for (const c of this.chunks) c.buffer.destroy();
    this.chunks.length = 0;
  }
}

const arenas = new WeakMap<GPUDevice, UniformArena>();
/** An arena standing in for the device's own while a sequence is recorded (./recording.ts). */
const current = new WeakMap<GPUDevice, UniformArena>();

/** The arena kernels allocate their uniforms from: the device's shared one, or a recording's. */
export function uniforms(gpu: Gpu): UniformArena {
  const r = current.get(gpu.device);
  if (r) return r;
  let a = arenas.get(gpu.device);
  if (!a) arenas.set(gpu.device, a = new UniformArena(gpu));
  return a;
}

/** Run `fill` with `arena` as the device's uniform arena (recordings own theirs). */
export function withUniforms<T>(gpu: Gpu, arena: UniformArena, fill: () => T): T {
  const before = current.get(gpu.device);
  current.set(gpu.device, arena);
  try {
    return fill();
  } finally {
    if (before) current.set(gpu.device, before);
    else current.delete(gpu.device);
  }
}

/** Pack mixed u32/i32/f32 uniform fields into 32-bit words, in order (Knobs at their current value). */
export function packUniforms(
  fields: Array<{ u: UniformValue } | { i: UniformValue } | { f: UniformValue }>,
): UniformWords {
  const buf = new ArrayBuffer(Math.max(16, Math.ceil(fields.length / 4) * 16));
  const dv = new DataView(buf);
  const out: UniformWords = new Uint32Array(buf);
  fields.forEach((x, k) => {
    const as = "u" in x ? "u" : "i" in x ? "i" : "f";
    const v = (x as Record<string, UniformValue>)[as];
    if (v instanceof Knob) {
      (out.knobs ??= []).push({ word: k, knob: v, as });
      setWord(dv, k, as, v.value);
    } else setWord(dv, k, as, v);
  });
  return out;
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

/** A small number per object, for cache keys (never reused). */
const ids = new WeakMap<object, number>();
let nextId = 1;
export function objectId(o: object): number {
  let i = ids.get(o);
  if (i === undefined) ids.set(o, i = nextId++);
  return i;
}

/**
 * Bind groups by pipeline and bindings. Creating one costs ~16 µs of CPU on a
 * GPU machine and more on llvmpipe, for every dispatch of every step; the
 * same kernel over the same buffers (and uniform slot) reuses the one made
 * first. Least recently used entries go past BIND_GROUPS.
 */
const bindGroups = new WeakMap<GPUDevice, Map<string, GPUBindGroup>>();
const BIND_GROUPS = 16384;

/**
 * What encoding has cost since the process started, for benchmarks:
 * dispatches encoded (by `dispatch` or replayed from a recording), of them
 * replayed, bind groups created and reused, and the host milliseconds spent
 * encoding passes through `submitPass` (../gpu/recording.ts; the submit
 * itself not counted: on llvmpipe it runs the work before it returns).
 */
export const encodeStats = {
  dispatches: 0,
  replayed: 0,
  bindGroups: 0,
  bindGroupsReused: 0,
  encodeMs: 0,
};

function bindGroupFor(gpu: Gpu, pipeline: GPUComputePipeline, bindings: Binding[]): GPUBindGroup {
  let cache = bindGroups.get(gpu.device);
  if (!cache) bindGroups.set(gpu.device, cache = new Map());
  let key = String(objectId(pipeline));
  for (const b of bindings) {
    if (b instanceof GPUBuffer) key += ` ${objectId(b)}`;
    else if (b instanceof GPUTextureView) key += ` v${objectId(b)}`;
    else key += ` ${objectId(b.buffer)}@${b.offset ?? 0}+${b.size ?? -1}`;
  }
  let group = cache.get(key);
  if (group) {
    encodeStats.bindGroupsReused++;
    // Refresh its place in the LRU order.
    cache.delete(key);
    cache.set(key, group);
    return group;
  }
  const entries: GPUBindGroupEntry[] = bindings.map((b, binding) => ({
    binding,
    resource: b instanceof GPUBuffer ? { buffer: b } : b,
  }));
  group = gpu.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
  encodeStats.bindGroups++;
  cache.set(key, group);
  if (cache.size > BIND_GROUPS) cache.delete(cache.keys().next().value!);
  return group;
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
  const [x, y = 1, z = 1] = workgroups;
  const max = gpu.limits.maxComputeWorkgroupsPerDimension;
  if (x > max || y > max || z > max) {
    throw new Error(`dispatch of ${x}×${y}×${z} workgroups exceeds the limit ${max} per dimension`);
  }
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bindGroupFor(gpu, pipeline, bindings));
  pass.dispatchWorkgroups(x, y, z);
  encodeStats.dispatches++;
}
