/** bitsandbytes-style 4-bit quantization of frozen weights (QLoRA): codes, host quantizer, device layout. */
export * from "./codes.ts";
export * from "./quantize.ts";
export * from "./device.ts";
