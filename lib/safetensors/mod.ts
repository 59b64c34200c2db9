/** Safetensors: lazy reading, atomic (sharded) writing, dtype conversions. */
export * from "./dtype.ts";
export * from "./read.ts";
export * from "./write.ts";
export * from "./checkpoint.ts";
