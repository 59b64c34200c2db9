/**
 * A GPU model from a model directory: config.json, then the weights streamed
 * to the device one tensor at a time (each tensor's bytes are read from disk
 * when the model asks for it and dropped once uploaded), so a checkpoint is
 * never held in memory whole.
 */
import type { Gpu } from "../gpu/device.ts";
import { loadGlmConfig } from "./config.ts";
import { createGlmModel, type GlmModel, type GlmModelOptions } from "./glm.ts";
import { openWeights } from "./weights.ts";

/** config.json + lazily streamed safetensors → a GlmModel on the device. */
export async function loadGlmModel(
  gpu: Gpu,
  modelDir: string,
  opts: GlmModelOptions,
): Promise<GlmModel> {
  const config = await loadGlmConfig(modelDir);
  return await createGlmModel(gpu, config, await openWeights(modelDir, config), opts);
}
