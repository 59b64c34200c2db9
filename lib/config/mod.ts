/** Training configs in the ChatGLM3 finetune_demo schema. */
export * from "./config.ts";
export * from "./overrides.ts";
export { CHATGLM_LORA_TARGETS, LR_SCHEDULERS } from "./schema.ts";
export {
  describeQuantization,
  QUANT_TYPES,
  type QuantizationConfig,
  refuseQuantization,
} from "./quantization.ts";
