/**
 * Encoding a step once: a sequence of dispatches recorded the first time it
 * is encoded and replayed after that.
 *
 * A WebGPU command buffer runs once, and compute passes have no bundles, so
 * the fewest calls a repeated sequence can take is, per dispatch,
 * setPipeline (skipped when it does not change), setBindGroup and
 * dispatchWorkgroups: no bind group made, no uniform written, none of the
 * kernels' host logic (tile choice, splitting, shader lookup) run again. On a
 * GPU that host work was most of a small step (docs/engine.md, "On a GPU").
 *
 * A recording owns the uniforms of its dispatches (an arena of its own, so
 * later work cannot overwrite them) and the bind groups made while it was
 * encoded. What changes from one replay to the next must live in buffers the
 * caller writes (token ids, positions), or be a `Knob` packed into a uniform:
 * a replay writes the Knobs' current values with one writeBuffer, and only
 * when one changed. The buffers a recording binds must outlive it; a model
 * drops its recordings when it replaces one (the rotary table grows).
 *
 * `submitPass` is the plain path: one encoder, one pass, the uniforms of the
 * whole pass written in one call, one submit, no wait.
 */
import type { Gpu } from "./device.ts";
import {
  type ComputePass,
  encodeStats,
  type InterruptiblePass,
  SplittablePass,
  UniformArena,
  uniforms,
  withUniforms,
} from "./runtime.ts";

type Command =
  | { pipeline: GPUComputePipeline; group: GPUBindGroup; x: number; y: number; z: number }
  | { between: (encoder: GPUCommandEncoder) => void };

/** A pass that forwards every call to `inner` and keeps the commands in `out`. */
class RecordingPass implements InterruptiblePass {
  #pipeline?: GPUComputePipeline;
  #group?: GPUBindGroup;
  constructor(private inner: ComputePass, private out: Command[]) {}
  setPipeline(p: GPUComputePipeline): undefined {
    this.#pipeline = p;
    this.inner.setPipeline(p);
  }
  setBindGroup(index: number, group: GPUBindGroup | null): undefined {
    if (index !== 0 || !group) throw new Error("recording: only bind group 0 is recorded");
    this.#group = group;
    this.inner.setBindGroup(index, group);
  }
  dispatchWorkgroups(x: number, y = 1, z = 1): undefined {
    this.out.push({ pipeline: this.#pipeline!, group: this.#group!, x, y, z });
    this.inner.dispatchWorkgroups(x, y, z);
  }
  interrupt(record: (encoder: GPUCommandEncoder) => void): void {
    const inner = this.inner as Partial<InterruptiblePass>;
    if (typeof inner.interrupt !== "function") {
      throw new Error("recording: a kernel interrupted a pass that cannot be interrupted");
    }
    this.out.push({ between: record });
    inner.interrupt(record);
  }
}

export class Recording {
  private readonly commands: Command[] = [];
  private readonly arena: UniformArena;

  private constructor(private gpu: Gpu) {
    this.arena = new UniformArena(gpu, 1024, "recorded-uniforms");
  }

  /**
   * Encode `fill` into `pass` (it runs now, as part of that pass) and keep
   * its commands for `replay`. Kernels allocate their uniforms from the
   * recording's arena meanwhile, written in one call at the end.
   */
  static record(gpu: Gpu, pass: ComputePass, fill: (pass: InterruptiblePass) => void): Recording {
    const r = new Recording(gpu);
    const rec = new RecordingPass(pass, r.commands);
    withUniforms(gpu, r.arena, () => r.arena.deferred(() => fill(rec)));
    return r;
  }

  /** Dispatches one replay encodes. */
  get dispatches(): number {
    return this.commands.filter((c) => "pipeline" in c).length;
  }

  /**
   * Encode the recorded commands again into `pass`, after writing the
   * Knobs' current values (one writeBuffer, none when nothing changed).
   */
  replay(pass: ComputePass): void {
    this.arena.updateKnobs();
    let last: GPUComputePipeline | undefined;
    for (const c of this.commands) {
      if ("between" in c) {
        const p = pass as Partial<InterruptiblePass>;
        if (typeof p.interrupt !== "function") {
          throw new Error("recording: replaying copies needs an interruptible pass");
        }
        p.interrupt(c.between);
        // The pass goes on as a new pass, with no pipeline set.
        last = undefined;
        continue;
      }
      if (c.pipeline !== last) pass.setPipeline(last = c.pipeline);
      pass.setBindGroup(0, c.group);
      pass.dispatchWorkgroups(c.x, c.y, c.z);
      encodeStats.dispatches++;
      encodeStats.replayed++;
    }
  }

  destroy(): void {
    this.arena.destroy();
  }
}

/**
 * One command encoder and one compute pass filled by `fill`, its uniforms
 * written in one call, submitted without waiting. `finish` may add commands
 * after the pass (copies for a readback).
 */
export function submitPass(
  gpu: Gpu,
  fill: (pass: SplittablePass) => void,
  finish?: (encoder: GPUCommandEncoder) => void,
): void {
  const t0 = performance.now();
  const arena = uniforms(gpu);
  const encoder = gpu.device.createCommandEncoder();
  const pass = new SplittablePass(encoder);
  arena.deferred(() => fill(pass));
  pass.end();
  finish?.(encoder);
  const commands = encoder.finish();
  encodeStats.encodeMs += performance.now() - t0;
  gpu.device.queue.submit([commands]);
  arena.reset();
}
