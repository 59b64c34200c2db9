/**
 * Superseded by lib/safetensors (readSafetensorsF32, writeSafetensorsF32,
 * F32Tensor); kept as a re-export only while data/make_demo_model.ts still
 * imports it from here.
 */
export {
  type F32Tensor as Tensor,
  readSafetensorsF32,
  writeSafetensorsF32,
} from "../safetensors/mod.ts";
