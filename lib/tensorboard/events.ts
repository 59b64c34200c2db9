/**
 * TensorBoard event files: `Event` records (tensorflow/core/util/event.proto,
 * tensorboard/compat/proto/summary.proto — the fields written here) encoded
 * by protobufjs from the schema below, framed as TFRecords
 * (./tfrecord.ts), appended to `events.out.tfevents.<time>.<host>.<pid>.<n>`
 * as the writer of torch.utils.tensorboard (which HF Trainer uses) names
 * them. Scalars are `simple_value`s (float32), as that writer's add_scalar
 * stores them; text is the text plugin's string tensor, as add_text does.
 */
import { hostname } from "node:os";
import { join } from "node:path";
import protobuf from "protobufjs";
import { osError } from "../errors.ts";
import { frameRecord, readRecords } from "./tfrecord.ts";

const SCHEMA = `
syntax = "proto3";
package tensorboard;
message Event {
  double wall_time = 1;
  int64 step = 2;
  oneof what {
    string file_version = 3;
    Summary summary = 5;
    SessionLog session_log = 7;
  }
}
message SessionLog {
  enum SessionStatus { STATUS_UNSPECIFIED = 0; START = 1; STOP = 2; CHECKPOINT = 3; }
  SessionStatus status = 1;
  string checkpoint_path = 2;
  string msg = 3;
}
enum DataClass {
  DATA_CLASS_UNKNOWN = 0; DATA_CLASS_SCALAR = 1; DATA_CLASS_TENSOR = 2; DATA_CLASS_BLOB_SEQUENCE = 3;
}
message SummaryMetadata {
  message PluginData { string plugin_name = 1; bytes content = 2; }
  PluginData plugin_data = 1;
  string display_name = 2;
  string summary_description = 3;
  DataClass data_class = 4;
}
enum DataType { DT_INVALID = 0; DT_FLOAT = 1; DT_DOUBLE = 2; DT_STRING = 7; }
message TensorShapeProto {
  message Dim { int64 size = 1; string name = 2; }
  repeated Dim dim = 2;
  bool unknown_rank = 3;
}
message TensorProto {
  DataType dtype = 1;
  TensorShapeProto tensor_shape = 2;
  int32 version_number = 3;
  bytes tensor_content = 4;
  repeated bytes string_val = 8;
}
message Summary {
  message Value {
    string node_name = 7;
    string tag = 1;
    SummaryMetadata metadata = 9;
    oneof value {
      float simple_value = 2;
      TensorProto tensor = 8;
    }
  }
  repeated Value value = 1;
}`;

const EVENT = protobuf.parse(SCHEMA, { keepCase: true }).root.lookupType("tensorboard.Event");

/** An event as plain data (protobufjs's object form; `step` a number). */
export interface TbEvent {
  wall_time: number;
  step?: number;
  file_version?: string;
  summary?: {
    value: {
      tag: string;
      simple_value?: number;
      metadata?: { plugin_data?: { plugin_name: string; content?: Uint8Array } };
      tensor?: {
        dtype: number;
        tensor_shape?: { dim: { size: number }[] };
        string_val?: Uint8Array[];
      };
    }[];
  };
  session_log?: { status: number };
}

/** The version string every event file starts with. */
export const FILE_VERSION = "brain.Event:2";

export const SESSION_START = 1;
const DT_STRING = 7;

export function encodeEvent(e: TbEvent): Uint8Array {
  return EVENT.encode(EVENT.fromObject(e)).finish();
}

export function decodeEvent(bytes: Uint8Array): TbEvent {
  return EVENT.toObject(EVENT.decode(bytes), { longs: Number, enums: Number }) as TbEvent;
}

/** The events of an event file's bytes (CRCs checked). */
export function readEvents(bytes: Uint8Array): TbEvent[] {
  return readRecords(bytes).map(decodeEvent);
}

export function scalarEvent(tag: string, value: number, step: number, wallTime: number): TbEvent {
  return { wall_time: wallTime, step, summary: { value: [{ tag, simple_value: value }] } };
}

/** Text as add_text writes it: tag `TAG/text_summary`, the text plugin, a 1-element string tensor. */
export function textEvent(tag: string, text: string, step: number, wallTime: number): TbEvent {
  return {
    wall_time: wallTime,
    step,
    summary: {
      value: [{
        tag: `${tag}/text_summary`,
        metadata: { plugin_data: { plugin_name: "text" } },
        tensor: {
          dtype: DT_STRING,
          tensor_shape: { dim: [{ size: 1 }] },
          string_val: [new TextEncoder().encode(text)],
        },
      }],
    },
  };
}

/**
 * A restart at `step`: TensorBoard drops the events of this run folder at
 * `step` and after that an earlier (interrupted) process wrote, so a resumed
 * run's curves do not double back.
 */
export function sessionStartEvent(step: number, wallTime: number): TbEvent {
  return { wall_time: wallTime, step, session_log: { status: SESSION_START } };
}

let fileCounter = 0;

/** Appends events to a new event file in a directory. Not atomic, by design: a log, read while written. */
export class EventFileWriter {
  private constructor(private file: Deno.FsFile, readonly path: string) {}

  /** A new event file in `dir` (created), starting with the file_version event. */
  static async create(dir: string, wallTime = Date.now() / 1000): Promise<EventFileWriter> {
    const name = `events.out.tfevents.${
      String(Math.floor(wallTime)).padStart(10, "0")
    }.${hostname()}.${Deno.pid}.${fileCounter++}`;
    const path = join(dir, name);
    let file: Deno.FsFile;
    try {
      await Deno.mkdir(dir, { recursive: true });
      file = await Deno.open(path, { write: true, createNew: true });
    } catch (e) {
      throw osError(e, path, "create the TensorBoard event file");
    }
    const w = new EventFileWriter(file, path);
    await w.write([{ wall_time: wallTime, file_version: FILE_VERSION }]);
    return w;
  }

  /** Append `events` in one write (each record framed), so a reader sees whole records. */
  async write(events: TbEvent[]): Promise<void> {
    const frames = events.map((e) => frameRecord(encodeEvent(e)));
    const bytes = new Uint8Array(frames.reduce((a, f) => a + f.length, 0));
    let off = 0;
    for (const f of frames) {
      bytes.set(f, off);
      off += f.length;
    }
    try {
      for (let done = 0; done < bytes.length;) done += await this.file.write(bytes.subarray(done));
    } catch (e) {
      throw osError(e, this.path, "write");
    }
  }

  close(): void {
    try {
      this.file.close();
    } catch { /* already closed */ }
  }
}
