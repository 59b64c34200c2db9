/**
 * glm-finetune's public API: the stages as library functions and the lib
 * modules they are built from.
 */
export * from "./lib/errors.ts";
export * from "./lib/jsonl.ts";
export * from "./lib/atomic.ts";
export type * from "./lib/data/record.ts";
export { checkConversation } from "./lib/data/schema.ts";
export type { Problem } from "./lib/data/schema.ts";
export {
  convertFile,
  convertRecords,
  parseSplit,
  splitPart,
  validateFile,
} from "./lib/data/convert.ts";
export type {
  ConvertFileOptions,
  ConvertFileReport,
  ConvertOptions,
  ConvertResult,
  FileReport,
  SplitSpec,
} from "./lib/data/convert.ts";
export { detectFormat, FORMAT_NAMES, FORMATS } from "./lib/data/formats/mod.ts";
export type { FormatName } from "./lib/data/formats/mod.ts";
export type * from "./lib/model/types.ts";
export { describeGpu, getGpu } from "./lib/gpu/device.ts";
export {
  finetuneMode,
  formatNotApplicable,
  hfTrainingDefaults,
  intervalSteps,
  loadConfig,
  loraDefaults,
  parseConfig,
  prefixTuningDefaults,
  renderConfig,
  reportNotApplicable,
  trainingSteps,
  warmupSteps,
} from "./lib/config/config.ts";
export type {
  DataConfig,
  FinetuneConfig,
  GenerationConfig,
  LoraConfig,
  PeftConfig,
  PrefixTuningConfig,
  TrainingArgs,
} from "./lib/config/config.ts";
export { runPipeline } from "./lib/pipeline/runner.ts";
export type { RunOptions, RunResult, StageResolver } from "./lib/pipeline/runner.ts";
