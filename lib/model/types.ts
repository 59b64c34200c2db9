/**
 * The contract between the model (lib/model) and the trainer (lib/train).
 * The model owns weights, activations and gradients on the device; the trainer
 * owns the optimizer and schedule, and touches the model only through this.
 */

/** A micro-batch of masked training records, right-padded. */
export interface TrainBatch {
  batch: number;
  seq: number;
  /** [batch*seq] token ids, padded with the pad id (0). */
  inputIds: Int32Array;
  /** [batch*seq] labels as in the masked record (not yet shifted), -100 where ignored and on padding. */
  labels: Int32Array;
}

/** A trainable tensor living on the device, f32, with its gradient buffer. */
export interface TrainableParam {
  /** The name it is saved under: the PEFT key for adapters, the HF name for full weights. */
  name: string;
  shape: number[];
  /** Number of f32 elements. */
  size: number;
  weight: GPUBuffer;
  grad: GPUBuffer;
  /** Whether weight decay applies (HF Trainer: not to biases and norm weights). */
  decay: boolean;
}

export interface ForwardBackwardOptions {
  /** dLoss/dLogit seed per valid token: 1 / (valid tokens of the micro-batch · gradient_accumulation_steps). */
  gradScale: number;
  /** f32 buffer; the micro-batch's summed cross-entropy over valid tokens is written to element `lossSlot`. */
  lossBuffer: GPUBuffer;
  lossSlot: number;
  /** Dropout is active (LoRA dropout, prefix dropout) with this seed; false for evaluation. */
  training: boolean;
  dropoutSeed: number;
}

export interface TrainableModel {
  readonly params: TrainableParam[];
  /** Encode zeroing of every param.grad. */
  zeroGrads(encoder: GPUCommandEncoder): void;
  /**
   * Upload the batch and encode + submit forward and backward (no wait): gradients
   * are ADDED into param.grad, the loss sum lands in lossBuffer[lossSlot].
   */
  forwardBackward(batch: TrainBatch, opts: ForwardBackwardOptions): void;
  /** Encode + submit forward only, writing the loss sum to lossBuffer[lossSlot] (eval loss). */
  forwardLoss(batch: TrainBatch, lossBuffer: GPUBuffer, lossSlot: number): void;
}
