/**
 * A GPU model from a model directory: config.json, then the weights streamed
 * to the device one tensor at a time (each tensor's bytes are read from disk
 * when the model asks for it and dropped once uploaded), so a checkpoint is
 * never held in memory whole.
 */
import { getGpu, type Gpu, wantsWideCpuVectors } from "../gpu/device.ts";
import { type GlmConfig, loadGlmConfig } from "./config.ts";
import { createGlmModel, type GlmModel, type GlmModelOptions } from "./glm.ts";
import { openWeights } from "./weights.ts";

/** The process's GPU, with the CPU code width a model of this config wants. */
export function gpuForModel(config: Pick<GlmConfig, "hidden_size">): Promise<Gpu> {
  return getGpu({ wideCpuVectors: wantsWideCpuVectors(config.hidden_size) });
}

/** config.json + lazily streamed safetensors → a GlmModel on the device. */
export async function loadGlmModel(
  gpu: Gpu,
  modelDir: string,
  opts: GlmModelOptions,
): Promise<GlmModel> {
  const config = await loadGlmConfig(modelDir);
  return await createGlmModel(gpu, config, await openWeights(modelDir, config), opts);
}
