/**
 * Device acquisition. One GPUDevice per process, requested with the adapter's
 * own limits (buffer sizes matter for a 6B model). The device class decides
 * the kernel profile: what is fastest on a CPU fallback adapter (llvmpipe:
 * big register tiles, tiny workgroups) is wrong on a real GPU, and vice versa.
 */
import { UserError } from "../errors.ts";
import { ensureRuntimeDir } from "./runtime_dir.ts";

export type DeviceClass = "cpu" | "gpu";

export interface Gpu {
  device: GPUDevice;
  adapterInfo: GPUAdapterInfo;
  /** "cpu" for a fallback adapter such as Mesa llvmpipe, else "gpu"; override with GLM_DEVICE_CLASS. */
  deviceClass: DeviceClass;
  /** `shader-f16` was granted: kernels may read f16 operands as vec4<f16> (see `features`). */
  hasF16: boolean;
  /** `subgroups` was granted: row and norm reductions may use subgroup operations (see `features`). */
  hasSubgroups: boolean;
  hasTimestamps: boolean;
  limits: GPUSupportedLimits;
  /**
   * SIMD lanes of a CPU adapter (llvmpipe reports "N bits": N/32 lanes; 8 when
   * it does not say): the workgroup of the cpu matmul profile's large tiles, one SIMD row.
   */
  cpuLanes: number;
}

export interface GpuOptions {
  /**
   * On a CPU with AVX-512, ask llvmpipe for 512-bit code (see
   * `preferWideCpuVectors`): for models whose matmuls dominate (hidden size
   * 512 and up, `wantsWideCpuVectors`). Only the first call decides.
   */
  wideCpuVectors?: boolean;
}

let cached: Promise<Gpu> | undefined;

/** The process-wide GPU context; a clear UserError when WebGPU has no adapter. */
export function getGpu(opts: GpuOptions = {}): Promise<Gpu> {
  cached ??= acquire(opts);
  return cached;
}

/**
 * Whether a model of this hidden size is worth 512-bit CPU code: the bench
 * model (512) ran its matmuls 1.3× faster and its steps 7–12 % faster with
 * it, the demo model (128), whose small row kernels and products then run in
 * half-empty 16-lane rows, trained at 630 tokens/s against 870 (docs/engine.md).
 */
export function wantsWideCpuVectors(hiddenSize: number): boolean {
  return hiddenSize >= 512;
}

/**
 * llvmpipe builds 256-bit code unless told otherwise, even on a CPU with
 * AVX-512. Its 512-bit code (16 lanes) ran the texture matmul 1.3× faster on
 * such a CPU (docs/engine.md); this asks for it there, before the adapter
 * exists (Mesa reads the variable once, when it starts). A value the user set
 * wins: `LP_NATIVE_VECTOR_WIDTH=256` keeps 8 lanes, `=512` forces 16.
 */
function preferWideCpuVectors(): void {
  try {
    if (Deno.env.get("LP_NATIVE_VECTOR_WIDTH")) return;
    const flags = Deno.readTextFileSync("/proc/cpuinfo").match(/^flags\s*:(.*)$/m)?.[1] ?? "";
    if (/\bavx512f\b/.test(flags)) Deno.env.set("LP_NATIVE_VECTOR_WIDTH", "512");
  } catch {
    // No /proc (not Linux) or no permission: llvmpipe's default.
  }
}

async function acquire(opts: GpuOptions): Promise<Gpu> {
  ensureRuntimeDir(); // before the drivers load: no libwayland "XDG_RUNTIME_DIR" line
  if (!("gpu" in navigator) || !navigator.gpu) {
    throw new UserError("WebGPU is not available in this Deno build (navigator.gpu is missing)");
  }
  if (opts.wideCpuVectors) preferWideCpuVectors();
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) {
    throw new UserError(
      "no WebGPU adapter found: install a GPU driver, or Mesa (llvmpipe via GL, or `apt-get install mesa-vulkan-drivers` for lavapipe) to run on the CPU",
    );
  }
  const wanted: GPUFeatureName[] = [];
  const hasF16 = adapter.features.has("shader-f16");
  const hasTimestamps = adapter.features.has("timestamp-query");
  if (hasF16) wanted.push("shader-f16");
  if (hasTimestamps) wanted.push("timestamp-query");
  const l = adapter.limits;
  const limits = {
    maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
    maxBufferSize: l.maxBufferSize,
    maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
    maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
    maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
    maxComputeWorkgroupSizeY: l.maxComputeWorkgroupSizeY,
    maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
    maxTextureDimension2D: l.maxTextureDimension2D,
  };
  // Deno grants `subgroups` when asked for by name although adapter.features
  // does not list it (wgpu counts it as native); where the backend has none
  // (Mesa's GL driver) the request fails, and the device is made without it.
  let device: GPUDevice;
  let hasSubgroups = true;
  try {
    device = await adapter.requestDevice({
      requiredFeatures: [...wanted, "subgroups" as GPUFeatureName],
      requiredLimits: limits,
    });
  } catch {
    hasSubgroups = false;
    device = await adapter.requestDevice({ requiredFeatures: wanted, requiredLimits: limits });
  }
  device.addEventListener("uncapturederror", (e) => {
    console.error(`WebGPU error: ${(e as GPUUncapturedErrorEvent).error.message}`);
  });
  const info = adapter.info;
  const override = Deno.env.get("GLM_DEVICE_CLASS");
  const deviceClass: DeviceClass = override === "cpu" || override === "gpu"
    ? override
    : info.isFallbackAdapter || /llvmpipe|lavapipe|swiftshader/i.test(info.description)
    ? "cpu"
    : "gpu";
  const bits = Number(/\b(\d+) bits\b/.exec(info.description)?.[1] ?? 256);
  const cpuLanes = Math.max(4, Math.min(16, Math.floor(bits / 32)));
  return {
    device,
    adapterInfo: info,
    deviceClass,
    hasF16,
    hasSubgroups,
    hasTimestamps,
    limits: device.limits,
    cpuLanes,
  };
}

/** One line for logs: adapter name and class. */
export function describeGpu(g: Gpu): string {
  const name = g.adapterInfo.description || g.adapterInfo.vendor || "unknown adapter";
  return `${name} (${g.deviceClass === "cpu" ? "CPU fallback adapter" : "GPU"})`;
}
