/**
 * TensorBoard event files (lib/tensorboard/, lib/train/tensorboard_log.ts):
 * CRC-32C against RFC 3720's vectors and tensorboard's own masked CRCs;
 * the event files the trainer wrote for tests/fixtures/tensorboard/, read back
 * by the real `tensorboard` package (tools/read_tensorboard.py, recorded in
 * read_back.json), hold the tags, steps and values of trainer_state.json's
 * log_history; today's encoder writes those records byte for byte; and a
 * training run writes its events where HF would.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { join } from "node:path";
import { parseConfig } from "../lib/config/config.ts";
import { UserError } from "../lib/errors.ts";
import { crc32c, maskedCrc32c } from "../lib/tensorboard/crc32c.ts";
import { decodeEvent, encodeEvent, readEvents, type TbEvent } from "../lib/tensorboard/events.ts";
import { frameRecord, readRecords } from "../lib/tensorboard/tfrecord.ts";
import type { LogEntry } from "../lib/train/checkpoint.ts";
import {
  defaultLoggingDir,
  reportsToTensorBoard,
  tagOf,
  TensorBoardLog,
} from "../lib/train/tensorboard_log.ts";
import { runTraining } from "../lib/train/run.ts";
import { withTempDir } from "./test_util.ts";

const FIX = new URL("./fixtures/tensorboard/", import.meta.url).pathname;
const hex = (h: string) => new Uint8Array(h.match(/../g)?.map((b) => parseInt(b, 16)) ?? []);

interface ReadBack {
  file_version: number;
  scalars: Record<string, { step: number; value: number; wall_time: number }[]>;
  texts: Record<string, { step: number; text: string[] }[]>;
  masked_crc32c: Record<string, number>;
}
const readBack: ReadBack = JSON.parse(await Deno.readTextFile(join(FIX, "read_back.json")));
const state = JSON.parse(await Deno.readTextFile(join(FIX, "trainer_state.json")));

Deno.test("crc32c: RFC 3720 vectors; masked as tensorboard masks them", () => {
  assertEquals(crc32c(new TextEncoder().encode("123456789")), 0xe3069283);
  assertEquals(crc32c(new Uint8Array(32)), 0x8a9136aa);
  assertEquals(crc32c(new Uint8Array(32).fill(0xff)), 0x62a8ab43);
  assertEquals(crc32c(Uint8Array.from({ length: 32 }, (_, i) => i)), 0x46dd794e);
  assertEquals(crc32c(Uint8Array.from({ length: 32 }, (_, i) => 31 - i)), 0x113fdb5c);
  const vectors = Object.entries(readBack.masked_crc32c);
  assert(vectors.length >= 8);
  for (const [h, want] of vectors) assertEquals(maskedCrc32c(hex(h)), want, h);
});

/** tag → [step, value] pairs of events, in file order. */
function scalarsOf(events: TbEvent[]): Record<string, [number, number][]> {
  const out: Record<string, [number, number][]> = {};
  for (const e of events) {
    for (const v of e.summary?.value ?? []) {
      if (v.simple_value === undefined) continue;
      (out[v.tag] ??= []).push([e.step ?? 0, v.simple_value]);
    }
  }
  return out;
}

/** What TensorBoard should show for a log history: every number but `step`, HF's tags, as float32. */
function expectedScalars(history: LogEntry[]): Record<string, [number, number][]> {
  const out: Record<string, [number, number][]> = {};
  for (const e of history) {
    for (const [k, v] of Object.entries(e)) {
      if (k !== "step" && typeof v === "number") {
        (out[tagOf(k)] ??= []).push([e.step, Math.fround(v)]);
      }
    }
  }
  return out;
}

Deno.test("tensorboard read back the trainer's event files with trainer_state.json's values", () => {
  const fromTb = Object.fromEntries(
    Object.entries(readBack.scalars).map(([tag, es]) => [tag, es.map((e) => [e.step, e.value])]),
  );
  const tokens = fromTb["train/tokens_per_second"];
  delete fromTb["train/tokens_per_second"];
  // The resumed run's history: the first run's events from step 4 on were dropped by
  // TensorBoard (the second file's SessionLog START), so each step appears once.
  assertEquals(fromTb, expectedScalars(state.log_history));
  assertEquals(
    Object.keys(fromTb).sort(),
    [
      "eval/loss",
      "train/epoch",
      "train/grad_norm",
      "train/learning_rate",
      "train/loss",
      "train/train_loss",
      "train/train_runtime",
      "train/train_steps_per_second",
    ],
  );
  assertEquals(tokens.map(([s]) => s), [2, 4, 6]);
  assert(tokens.every(([, v]) => v > 0));
  for (const es of Object.values(readBack.scalars)) {
    assert(es.every((e) => e.wall_time > 1.7e9), "wall times are seconds since 1970");
  }
  assertEquals(readBack.file_version, 2);
  const args = readBack.texts["args/text_summary"];
  assertEquals(args.map((a) => a.step), [0, 3]);
  const parsed = JSON.parse(args[0].text[0]);
  assertEquals([parsed.max_steps, parsed.logging_steps, parsed.report_to], [6, 2, "all"]);
});

Deno.test("the encoder writes the records tensorboard read, byte for byte; the reader checks CRCs", async () => {
  const files = [...Deno.readDirSync(join(FIX, "events"))].map((e) => e.name).sort();
  assertEquals(files.length, 2);
  for (const f of files) {
    const bytes = await Deno.readFile(join(FIX, "events", f));
    const records = readRecords(bytes);
    const again = records.map((r) => frameRecord(encodeEvent(decodeEvent(r))));
    assertEquals(
      new Uint8Array(again.flatMap((r) => [...r])),
      bytes,
      `${f}: re-encoded records differ`,
    );
    const events = readEvents(bytes);
    assertEquals(events[0].file_version, "brain.Event:2");
    const corrupt = bytes.slice();
    corrupt[40] ^= 1;
    assert(
      (() => {
        try {
          readRecords(corrupt);
          return false;
        } catch (e) {
          return /CRC mismatch/.test((e as Error).message);
        }
      })(),
      "a flipped bit is a CRC mismatch",
    );
  }
  const second = readEvents(await Deno.readFile(join(FIX, "events", files[1])));
  assertEquals(second[1].session_log, { status: 1 });
  assertEquals(second[1].step, 4);
});

Deno.test("a fresh writer gives the scalars tensorboard read from the fixture", async () => {
  await withTempDir(async (dir) => {
    const log = new TensorBoardLog(join(dir, "tb"), "{}");
    await log.open(0);
    for (const e of state.log_history as LogEntry[]) await log.append(e);
    log.close();
    const events = readEvents(await Deno.readFile(log.path!));
    const fromTb = Object.fromEntries(
      Object.entries(readBack.scalars).filter(([t]) => t !== "train/tokens_per_second")
        .map(([tag, es]) => [tag, es.map((e) => [e.step, e.value])]),
    );
    assertEquals(scalarsOf(events), fromTb);
  });
});

Deno.test("report_to and logging_dir: HF's default dir and tags; report_to is checked at load", async () => {
  const when = new Date(2025, 0, 5, 3, 4, 5);
  assertEquals(defaultLoggingDir("out", when, "box"), "out/runs/Jan05_03-04-05_box");
  for (
    const [v, want] of [[null, true], ["all", true], ["none", false], [["tensorboard"], true], [[
      "none",
    ], false], [[], false]] as const
  ) {
    assertEquals(reportsToTensorBoard(v), want, JSON.stringify(v));
  }
  assertEquals([tagOf("loss"), tagOf("eval_loss"), tagOf("train_runtime")], [
    "train/loss",
    "eval/loss",
    "train/train_runtime",
  ]);
  const cfg = (extra: string) =>
    parseConfig(
      `data_config: {train_file: t.json}\nmax_input_length: 8\nmax_output_length: 8\ntraining_args:\n  max_steps: 1\n${extra}`,
      "c.yaml",
    );
  assertEquals(cfg("").training_args.report_to, "all");
  assertEquals(cfg("  report_to: [TensorBoard]\n").training_args.report_to, ["tensorboard"]);
  try {
    cfg("  report_to: wandb\n");
    assert(false, "wandb is refused");
  } catch (e) {
    assert(e instanceof UserError);
    assert(
      /c\.yaml:6: training_args\.report_to: "wandb" is not one of all, none, tensorboard/.test(
        e.message,
      ),
      e.message,
    );
  }
  // A run writes OUT/runs/<date>_<host>/events.out.tfevents.*; report_to: none writes none.
  await withTempDir(async (dir) => {
    const base = {
      modelDir: "tests/fixtures/tiny",
      configPath: "tests/fixtures/config/upstream/lora.yaml",
      trainFile: "tests/fixtures/tiny-train/data.jsonl",
    };
    const quiet = console.error;
    console.error = () => {};
    try {
      await runTraining({
        ...base,
        outDir: join(dir, "a"),
        overrides: ["training_args.max_steps=2", "training_args.logging_steps=1"],
      });
      await runTraining({
        ...base,
        outDir: join(dir, "b"),
        overrides: ["training_args.max_steps=2", "training_args.report_to=none"],
      });
    } finally {
      console.error = quiet;
    }
    const runs = [...Deno.readDirSync(join(dir, "a", "runs"))];
    assertEquals(runs.length, 1);
    assert(/^[A-Z][a-z]{2}\d\d_\d\d-\d\d-\d\d_/.test(runs[0].name), runs[0].name);
    const files = [...Deno.readDirSync(join(dir, "a", "runs", runs[0].name))].map((e) => e.name);
    assertEquals(files.length, 1);
    assert(files[0].startsWith("events.out.tfevents."), files[0]);
    const events = readEvents(await Deno.readFile(join(dir, "a", "runs", runs[0].name, files[0])));
    assertEquals(scalarsOf(events)["train/loss"].map(([s]) => s), [1, 2]);
    await Deno.stat(join(dir, "b", "runs")).then(
      () => assert(false, "report_to none: no runs/"),
      () => {},
    );
  });
});
