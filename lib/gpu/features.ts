/**
 * The optional paths kernels take where the device allows: subgroup
 * reductions (row kernels: RMSNorm, softmax, cross-entropy, the gradient
 * norm) and f16 operand loads (frozen f16 weights read as vec4<f16> instead
 * of unpacking two halves from each u32). Every kernel keeps its plain path
 * for devices without them (Mesa's GL driver has neither; lavapipe, Mesa's
 * Vulkan driver, has both and runs the tests of both paths).
 *
 * `GLM_KERNEL_FEATURES=subgroups=0,f16=0` turns them off; tests force a path
 * with `setKernelFeatures`.
 */
import type { Gpu } from "./device.ts";

export interface KernelFeatures {
  subgroups: boolean;
  f16: boolean;
}

let forced: Partial<KernelFeatures> | undefined;

/** Force paths for this process (tests); undefined goes back to what the device grants. */
export function setKernelFeatures(f: Partial<KernelFeatures> | undefined): void {
  forced = f;
}

function envOff(name: keyof KernelFeatures): boolean {
  const env = Deno.env.get("GLM_KERNEL_FEATURES") ?? "";
  return env.split(",").some((p) => p.trim() === `${name}=0`);
}

/** The paths in force on this device: granted, not turned off, or forced (never beyond what is granted). */
export function kernelFeatures(gpu: Gpu): KernelFeatures {
  return {
    subgroups: gpu.hasSubgroups && (forced?.subgroups ?? !envOff("subgroups")),
    f16: gpu.hasF16 && (forced?.f16 ?? !envOff("f16")),
  };
}
