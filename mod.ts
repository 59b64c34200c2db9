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
export {
  buildSummary,
  collectReport,
  lossChart,
  renderReport,
  writeReport,
} from "./lib/pipeline/report.ts";
export type { ReportData, ReportOptions, Summary } from "./lib/pipeline/report.ts";
export { lineChart } from "./lib/pipeline/svg.ts";
export { renderReportHtml, reportPageData } from "./lib/pipeline/report_html.ts";
export type { ReportPageData } from "./lib/pipeline/report_html.ts";
export { diffText } from "./lib/pipeline/text_diff.ts";
export { lockRunDir } from "./lib/pipeline/lock.ts";
export { checkExternalInputs } from "./lib/pipeline/preflight.ts";
export {
  decodeEvent,
  encodeEvent,
  EventFileWriter,
  readEvents,
  scalarEvent,
  textEvent,
} from "./lib/tensorboard/events.ts";
export type { TbEvent } from "./lib/tensorboard/events.ts";
export { frameRecord, readRecords } from "./lib/tensorboard/tfrecord.ts";
export { crc32c, maskedCrc32c } from "./lib/tensorboard/crc32c.ts";
export { defaultLoggingDir, TensorBoardLog } from "./lib/train/tensorboard_log.ts";
export { SentencePieceModel } from "./lib/tokenizer/sentencepiece.ts";
export { ChatGLMTokenizer, SPECIAL_TOKENS } from "./lib/tokenizer/chatglm.ts";
export type { ChatRole, HistoryItem, SpecialToken } from "./lib/tokenizer/chatglm.ts";
export {
  conversationMessages,
  tokenizeConversation,
  TOOL_DEFINITION_PREFIX,
} from "./lib/tokenizer/conversation.ts";
export type { ChatMessage, TokenizedMessage } from "./lib/tokenizer/conversation.ts";
export { tokenizeRecord, tokenizeRecords } from "./lib/tokenizer/records.ts";
export { pythonJsonDumps, pythonRepr, renderToolCall } from "./lib/tokenizer/pyformat.ts";
export {
  evalRecords,
  IGNORE_INDEX,
  maskRecords,
  MaskStats,
  trainRecord,
} from "./lib/data/masks.ts";
export type {
  EvalRecord,
  Limits,
  MaskOptions,
  TokenizedRecord,
  TrainRecord,
} from "./lib/data/masks.ts";
export { train } from "./lib/train/trainer.ts";
export type { TrainerModel, TrainOptions, TrainResult } from "./lib/train/trainer.ts";
export { adapterSpec, readInitAdapter, runTraining } from "./lib/train/run.ts";
export type { RunOptions as TrainRunOptions } from "./lib/train/run.ts";
export { DEFAULT_TRAIN_ARGS, trainArgsFromConfig } from "./lib/train/args.ts";
export type { TrainArgs } from "./lib/train/args.ts";
export { makeSchedule } from "./lib/train/schedule.ts";
export { adamwRef, gradNormRef } from "./lib/train/adamw.ts";
export { DataPlan, maskedRecords, readMaskedJsonl } from "./lib/train/data.ts";
export { runTorchTraining, torchDryRunPlan } from "./lib/train/torch_engine.ts";
export type { TorchLaunch, TorchRunOptions } from "./lib/train/torch_engine.ts";
export { setupTorch } from "./lib/train/torch_setup.ts";
export { findCheckpoint, fullFiles, loraFiles, prefixFiles } from "./lib/train/checkpoint.ts";
export type { LogEntry, ModelFiles } from "./lib/train/checkpoint.ts";
export { evaluate, evaluateRecords } from "./lib/eval/evaluate.ts";
export type {
  EvaluateOptions,
  EvaluateResult,
  GenerationSettings,
  Predictor,
} from "./lib/eval/evaluate.ts";
export { ChatSession, formatReply, parseReply } from "./lib/eval/chat.ts";
export type { ChatOptions, Reply } from "./lib/eval/chat.ts";
export { loadGlmModel } from "./lib/model/load.ts";
export {
  adapterTensorsFor,
  readAdapterDir,
  resolveModelOrAdapter,
} from "./lib/model/adapter_dir.ts";
export type { AdapterDir, ResolvedModel } from "./lib/model/adapter_dir.ts";
export { addLoraDelta, mergeAdapter } from "./lib/model/merge.ts";
export type { MergeOptions, MergeResult } from "./lib/model/merge.ts";
export {
  Checkpoint,
  parseSize,
  readSafetensorsF32,
  SafetensorsFile,
  writeSafetensors,
  writeSafetensorsF32,
  writeShardedSafetensors,
} from "./lib/safetensors/mod.ts";
export type { DType, F32Tensor, TensorInfo, TensorToWrite } from "./lib/safetensors/mod.ts";
export {
  glmGroups,
  glmParameterCount,
  glmQkvWidth,
  loadGlmConfig,
  parseGlmConfig,
} from "./lib/model/config.ts";
export type { GlmConfig } from "./lib/model/config.ts";
export { glmWeightShapes, openWeights } from "./lib/model/weights.ts";
export type { GlmWeights } from "./lib/model/weights.ts";
export { encodeMatmul, f32ToF16Packed, matmulRef } from "./lib/gpu/kernels/matmul.ts";
export type { MatmulArgs } from "./lib/gpu/kernels/matmul.ts";
