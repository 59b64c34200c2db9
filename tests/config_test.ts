import { deepStrictEqual as assertEquals, match as assertMatch, ok as assert } from "node:assert";
import {
  finetuneMode,
  formatNotApplicable,
  hfTrainingDefaults,
  intervalSteps,
  loadConfig,
  loraDefaults,
  parseConfig,
  quantizationFromOverrides,
  renderConfig,
  reportNotApplicable,
  trainingSteps,
  warmupSteps,
} from "../lib/config/mod.ts";
import { UserError } from "../lib/errors.ts";
import { adapterSpec } from "../lib/train/run.ts";

function assertThrows(fn: () => unknown, cls: typeof UserError, includes?: string): Error {
  try {
    fn();
  } catch (e) {
    assert(e instanceof cls, `expected ${cls.name}, got ${e}`);
    if (includes) assert(e.message.includes(includes), `"${e.message}" lacks "${includes}"`);
    return e;
  }
  throw new Error("expected an error");
}

async function assertRejects(
  fn: () => Promise<unknown>,
  cls: typeof UserError,
  includes?: string,
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    assert(e instanceof cls, `expected ${cls.name}, got ${e}`);
    if (includes) assert(e.message.includes(includes), `"${e.message}" lacks "${includes}"`);
    return e;
  }
  throw new Error("expected an error");
}

const UP = "tests/fixtures/config/upstream";

Deno.test("upstream lora.yaml loads unchanged with its values and HF/PEFT defaults", async () => {
  const cfg = await loadConfig(`${UP}/lora.yaml`);
  assertEquals(cfg.data_config, {
    train_file: "train.json",
    val_file: "dev.json",
    test_file: "dev.json",
    num_proc: 16,
  });
  assertEquals(cfg.max_input_length, 256);
  assertEquals(cfg.max_output_length, 512);
  const a = cfg.training_args;
  assertEquals(a.output_dir, "./output");
  assertEquals(a.max_steps, 3000);
  assertEquals(a.learning_rate, 5e-5);
  assertEquals(a.per_device_train_batch_size, 4);
  assertEquals(a.per_device_eval_batch_size, 16);
  assertEquals(a.save_strategy, "steps");
  assertEquals(a.save_steps, 500);
  assertEquals(a.logging_steps, 10);
  assertEquals(a.eval_strategy, "steps");
  assertEquals(a.eval_steps, 500);
  assertEquals(a.do_eval, true);
  assertEquals(a.predict_with_generate, true);
  assertEquals(a.generation_config.max_new_tokens, 512);
  assertEquals(a.generation_config.do_sample, false);
  // HF defaults for what the file leaves out
  assertEquals(a.adam_beta1, 0.9);
  assertEquals(a.adam_beta2, 0.999);
  assertEquals(a.adam_epsilon, 1e-8);
  assertEquals(a.weight_decay, 0);
  assertEquals(a.max_grad_norm, 1.0);
  assertEquals(a.lr_scheduler_type, "linear");
  assertEquals(a.warmup_steps, 0);
  assertEquals(a.warmup_ratio, 0);
  assertEquals(a.seed, 42);
  assertEquals(a.gradient_accumulation_steps, 1);
  assertEquals(a.gradient_checkpointing, false);
  assert(!("evaluation_strategy" in a));
  assertEquals(cfg.peft_config, {
    ...loraDefaults(),
    peft_type: "LORA",
    task_type: "CAUSAL_LM",
    r: 8,
    lora_alpha: 32,
    lora_dropout: 0.1,
    target_modules: ["query_key_value"],
  });
  assertEquals(finetuneMode(cfg), "lora");
  assertEquals(cfg.notApplicable.map((n) => [n.key, n.line]), [
    ["data_config.num_proc", 5],
    ["training_args.dataloader_num_workers", 16],
    ["training_args.remove_unused_columns", 17],
    ["training_args.log_level", 22],
    ["training_args.predict_with_generate", 33],
    ["training_args.use_cpu", 40],
  ]);
});

Deno.test("upstream ptuning_v2.yaml and sft.yaml load unchanged", async () => {
  const pt = await loadConfig(`${UP}/ptuning_v2.yaml`);
  assertEquals(finetuneMode(pt), "ptuning");
  assert(pt.peft_config?.peft_type === "PREFIX_TUNING");
  assertEquals(pt.peft_config.num_virtual_tokens, 128);
  assertEquals(pt.peft_config.prefix_projection, false);
  assertEquals(pt.peft_config.task_type, "CAUSAL_LM");
  assertEquals(pt.training_args.max_steps, 3000);

  const sft = await loadConfig(`${UP}/sft.yaml`);
  assertEquals(sft.peft_config, null);
  assertEquals(finetuneMode(sft), "sft");
  assertEquals(sft.training_args.learning_rate, 5e-5);
  const na = sft.notApplicable.map((n) => n.key);
  assert(na.includes("training_args.deepspeed"), na.join());
  assert(!na.includes("training_args.use_cpu"));
  const line = formatNotApplicable(sft);
  assertMatch(line, /sft\.yaml: not applicable here, ignored: .*training_args\.deepspeed/);
  assertEquals(line.split("\n").length, 1);
  const printed: string[] = [];
  reportNotApplicable(sft, (l) => printed.push(l));
  reportNotApplicable(await loadConfig(`${UP}/sft.yaml`), (l) => printed.push(l));
  assertEquals(printed, [line]);
});

Deno.test("our configs load, in the upstream schema, sized for the demo", async () => {
  for (const [file, mode] of [["lora", "lora"], ["ptuning_v2", "ptuning"], ["sft", "sft"]]) {
    const cfg = await loadConfig(`configs/${file}.yaml`);
    assertEquals(finetuneMode(cfg), mode);
    assertEquals(cfg.notApplicable, [], file);
    assertEquals(cfg.max_input_length, 64);
    assertEquals(cfg.max_output_length, 64);
    assertEquals(cfg.training_args.logging_steps, 10);
    assert(cfg.training_args.max_steps > 0 && cfg.training_args.max_steps <= 600);
    assertEquals(cfg.data_config.train_file, "train.json");
    assertEquals(cfg.data_config.val_file, "dev.json");
    // upstream's files have exactly the same top-level sections
    const up = await loadConfig(`${UP}/${file}.yaml`);
    assertEquals(Object.keys(cfg), Object.keys(up));
  }
});

Deno.test("a misspelled key names the key, the file and its line", () => {
  const text = "data_config:\n  train_file: t.json\nmax_input_length: 8\nmax_output_length: 8\n" +
    "training_args:\n  max_steps: 5\n  learing_rate: 1e-4\n";
  const e = assertThrows(() => parseConfig(text, "my.yaml"), UserError);
  assertMatch(e.message, /^my\.yaml:7: training_args\.learing_rate: unknown key/);
  assertMatch(e.message, /did you mean learning_rate\?/);

  const top = assertThrows(
    () => parseConfig("max_input_lenght: 8\n", "top.yaml"),
    UserError,
  );
  assertMatch(
    top.message,
    /top\.yaml:1: max_input_lenght: unknown key \(did you mean max_input_length\?\)/,
  );
});

Deno.test("wrong types and bad values are errors with file:line", () => {
  const base = "data_config:\n  train_file: t.json\nmax_input_length: 8\nmax_output_length: 8\n";
  const cases: [string, RegExp][] = [
    [
      "training_args:\n  learning_rate: abc\n",
      /c\.yaml:6: training_args\.learning_rate: expected a number, got "abc"/,
    ],
    [
      "training_args:\n  max_steps: 2.5\n",
      /c\.yaml:6: training_args\.max_steps: expected an integer/,
    ],
    [
      "training_args:\n  lr_scheduler_type: cosinus\n",
      /:6: training_args\.lr_scheduler_type: "cosinus" is not one of linear, cosine/,
    ],
    ["training_args:\n  adam_beta2: 1.0\n", /:6: training_args\.adam_beta2: must be < 1/],
    [
      "training_args:\n  label_smoothing_factor: 0.1\n",
      /:6: training_args\.label_smoothing_factor: 0\.1 is not supported \(only 0\)/,
    ],
    ["training_args:\n  optim: sgd\n", /:6: training_args\.optim: "sgd" is not one of adamw_torch/],
    [
      "peft_config:\n  peft_type: IA3\n",
      /:6: peft_config\.peft_type: "IA3" is not supported; expected LORA or PREFIX_TUNING/,
    ],
    ["peft_config:\n  peft_type: PREFIX_TUNING\n", /:5: peft_config\.num_virtual_tokens: required/],
    [
      "peft_config:\n  peft_type: LORA\n  bias: all\n",
      /:7: peft_config\.bias: "all" is not supported \(only "none"\)/,
    ],
    [
      "peft_config:\n  peft_type: LORA\n  init_lora_weights: gaussian\n",
      /:7: peft_config\.init_lora_weights: "gaussian" is not supported \(only true\)/,
    ],
    [
      "training_args:\n  generation_config:\n    max_new_tokns: 5\n",
      /:7: training_args\.generation_config\.max_new_tokns: unknown key/,
    ],
    // get_scheduler's functions refuse arguments they do not take
    [
      "training_args:\n  lr_scheduler_type: cosine\n  lr_scheduler_kwargs:\n    num_cycle: 2\n",
      /:8: training_args\.lr_scheduler_kwargs\.num_cycle: the cosine schedule takes num_cycles \(did you mean num_cycles\?\)/,
    ],
    [
      "training_args:\n  lr_scheduler_kwargs: {power: 2}\n",
      /:6: training_args\.lr_scheduler_kwargs\.power: the linear schedule takes no arguments/,
    ],
    [
      "training_args:\n  lr_scheduler_type: cosine_with_min_lr\n  lr_scheduler_kwargs: {min_lr_ratio: 0.1}\n",
      /lr_scheduler_kwargs\.min_lr_ratio: the cosine_with_min_lr schedule takes num_cycles, min_lr, min_lr_rate \(did you mean min_lr_rate\?\)/,
    ],
  ];
  for (const [extra, re] of cases) {
    const e = assertThrows(() => parseConfig(base + extra, "c.yaml"), UserError);
    assertMatch(e.message, re);
  }
  // what they do take (and last_epoch -1; constant and constant_with_warmup are called without
  // them), and HF's save_total_limit 0 (no rotation), load
  for (const t of ["constant", "constant_with_warmup"]) {
    const c = parseConfig(
      base + `training_args:\n  lr_scheduler_type: ${t}\n  lr_scheduler_kwargs: {num_cycles: 2}\n`,
      "c.yaml",
    );
    assertEquals(c.training_args.lr_scheduler_kwargs, { num_cycles: 2 });
  }
  parseConfig(base + "training_args:\n  lr_scheduler_kwargs: {last_epoch: -1}\n", "c.yaml");
  const ok = parseConfig(
    base + "training_args:\n  lr_scheduler_type: polynomial\n  lr_scheduler_kwargs: {power: 2, " +
      "lr_end: 0.0}\n  save_total_limit: 0\n",
    "c.yaml",
  );
  assertEquals(ok.training_args.lr_scheduler_kwargs, { power: 2, lr_end: 0 });
  assertEquals(ok.training_args.save_total_limit, 0);
  // several problems are all reported at once
  const many = assertThrows(
    () => parseConfig("max_input_length: x\nmax_output_length: -1\n", "m.yaml"),
    UserError,
  );
  assertMatch(many.message, /m\.yaml:1: max_input_length: expected an integer/);
  assertMatch(many.message, /m\.yaml:2: max_output_length: must be >= 1/);
  assertMatch(many.message, /m\.yaml: data_config: required/);
  // broken YAML and duplicate keys
  assertMatch(
    assertThrows(() => parseConfig("a: [1\n", "y.yaml"), UserError).message,
    /^y\.yaml:2: invalid YAML/,
  );
  assertMatch(
    assertThrows(() => parseConfig("a: 1\na: 2\n", "d.yaml"), UserError).message,
    /^d\.yaml:2: invalid YAML: Map keys must be unique/,
  );
});

Deno.test("prefix_dropout: upstream's 0.1 unless set, range-checked with file:line", async () => {
  const base = "data_config:\n  train_file: t.json\nmax_input_length: 8\nmax_output_length: 8\n" +
    "peft_config:\n  peft_type: PREFIX_TUNING\n  num_virtual_tokens: 4\n";
  // absent: upstream's hard-coded rate; set: the file's value, passed on to the adapter
  for (const [extra, rate] of [["", 0.1], ["  prefix_dropout: 0\n", 0]] as const) {
    const cfg = parseConfig(base + extra, "p.yaml");
    assert(cfg.peft_config?.peft_type === "PREFIX_TUNING");
    assertEquals(cfg.peft_config.prefix_dropout, rate);
    assertEquals(adapterSpec(cfg), {
      kind: "prefix",
      preSeqLen: 4,
      prefixProjection: false,
      dropout: rate,
    });
  }

  const over = await loadConfig(`${UP}/ptuning_v2.yaml`, ["peft_config.prefix_dropout=0.25"]);
  assert(over.peft_config?.peft_type === "PREFIX_TUNING");
  assertEquals(over.peft_config.prefix_dropout, 0.25);

  for (
    const [value, re] of [
      ["1", /^p\.yaml:8: peft_config\.prefix_dropout: must be < 1/],
      ["-0.1", /^p\.yaml:8: peft_config\.prefix_dropout: must be >= 0/],
      ["high", /^p\.yaml:8: peft_config\.prefix_dropout: expected a number, got "high"/],
    ] as const
  ) {
    const e = assertThrows(
      () => parseConfig(base + `  prefix_dropout: ${value}\n`, "p.yaml"),
      UserError,
    );
    assertMatch(e.message, re);
  }
  // a LoRA config has lora_dropout, not this key
  const lora = assertThrows(
    () =>
      parseConfig(
        base.replace("PREFIX_TUNING\n  num_virtual_tokens: 4", "LORA") + "  prefix_dropout: 0\n",
        "l.yaml",
      ),
    UserError,
  );
  assertMatch(lora.message, /^l\.yaml:7: peft_config\.prefix_dropout: unknown key/);
});

Deno.test("a missing config file is a UserError", async () => {
  await assertRejects(
    () => loadConfig("no/such.yaml"),
    UserError,
    "no/such.yaml: no such config file",
  );
});

Deno.test("--set overrides are typed, applied before validation, and checked", async () => {
  const cfg = await loadConfig(`${UP}/lora.yaml`, [
    "training_args.max_steps=5",
    "training_args.learning_rate=1e-3",
    "peft_config.lora_dropout=0",
    "peft_config.target_modules=[query_key_value, dense]",
    "training_args.predict_with_generate=false",
    "training_args.output_dir=out dir",
    "training_args.generation_config.max_new_tokens=16",
  ]);
  assertEquals(cfg.training_args.max_steps, 5);
  assertEquals(cfg.training_args.learning_rate, 1e-3);
  assertEquals(cfg.training_args.predict_with_generate, false);
  assertEquals(cfg.training_args.output_dir, "out dir");
  assertEquals(cfg.training_args.generation_config.max_new_tokens, 16);
  assert(cfg.peft_config?.peft_type === "LORA");
  assertEquals(cfg.peft_config.lora_dropout, 0);
  assertEquals(cfg.peft_config.target_modules, ["query_key_value", "dense"]);
  // eval_strategy set over a file that spells it evaluation_strategy (and the reverse) replaces it
  for (const key of ["eval_strategy", "evaluation_strategy"]) {
    const ours = new URL("../configs/lora.yaml", import.meta.url).pathname;
    const off = await loadConfig(ours, [`training_args.${key}=no`]);
    assertEquals(off.training_args.eval_strategy, "no");
  }

  // a key the schema does not know is an error naming it
  const e = await assertRejects(
    () => loadConfig(`${UP}/lora.yaml`, ["training_args.learing_rate=1"]),
    UserError,
  );
  assertMatch(
    e.message,
    /lora\.yaml: training_args\.learing_rate: unknown key \(did you mean learning_rate\?\) \(from --set training_args\.learing_rate=1\)/,
  );
  // a wrong type names the override
  const t = await assertRejects(
    () => loadConfig(`${UP}/lora.yaml`, ["training_args.max_steps=many"]),
    UserError,
  );
  assertMatch(t.message, /training_args\.max_steps: expected an integer, got "many" \(from --set/);
  await assertRejects(
    () => loadConfig(`${UP}/lora.yaml`, ["training_args"]),
    UserError,
    "expected key.path=value",
  );
  await assertRejects(
    () => loadConfig(`${UP}/lora.yaml`, ["max_input_length.x=1"]),
    UserError,
    "max_input_length is not a mapping",
  );
  // removing peft_config switches to full fine-tuning
  assertEquals((await loadConfig(`${UP}/lora.yaml`, ["peft_config=null"])).peft_config, null);
});

Deno.test("renderConfig writes overrides into the YAML, keeping comments", async () => {
  const text = await Deno.readTextFile(`${UP}/lora.yaml`);
  const out = renderConfig(text, "lora.yaml", ["training_args.max_steps=7"]);
  assertMatch(out, /# see `transformers\.Seq2SeqTrainingArguments`/);
  assertEquals(parseConfig(out, "x.yaml").training_args.max_steps, 7);
  assertThrows(() => renderConfig(text, "lora.yaml", ["training_args.bogus=1"]), UserError);
});

Deno.test("HF defaults and derived step counts", () => {
  const d = hfTrainingDefaults();
  assertEquals(d.learning_rate, 5e-5);
  assertEquals(d.num_train_epochs, 3);
  assertEquals(d.max_steps, -1);
  assertEquals(d.per_device_train_batch_size, 8);
  assertEquals(d.logging_steps, 500);
  assertEquals(d.save_steps, 500);
  assertEquals(d.generation_config.max_length, 20);
  assert(!("evaluation_strategy" in d));
  // 100 records, batch 8 -> 13 batches/epoch; accumulation 2 -> 7 updates/epoch (the last one
  // takes the odd batch, as transformers 5.x and the trainer count them)
  const args = { ...d, gradient_accumulation_steps: 2 };
  assertEquals(trainingSteps(args, 100), { maxSteps: 21, updatesPerEpoch: 7, numEpochs: 3 });
  // drop_last: 12 full batches -> 6 updates/epoch
  assertEquals(trainingSteps({ ...args, dataloader_drop_last: true }, 100).updatesPerEpoch, 6);
  assertEquals(trainingSteps({ ...args, max_steps: 10 }, 100), {
    maxSteps: 10,
    updatesPerEpoch: 7,
    numEpochs: 2,
  });
  assertEquals(trainingSteps({ ...d, num_train_epochs: 0.5 }, 80).maxSteps, 5);
  assertEquals(warmupSteps({ ...d, warmup_ratio: 0.1 }, 25), 3);
  assertEquals(warmupSteps({ ...d, warmup_steps: 4, warmup_ratio: 0.1 }, 25), 4);
  // transformers 5: a warmup_steps in (0, 1) is a share of the run; at or past 1, its integer part
  assertEquals(warmupSteps({ ...d, warmup_steps: 0.1 }, 25), 3);
  assertEquals(warmupSteps({ ...d, warmup_steps: 2.5 }, 25), 2);
  assertEquals(intervalSteps(0.25, 18), 5);
  assertEquals(intervalSteps(10, 18), 10);
});

Deno.test("evaluation follows HF and finetune_hf.py rules", () => {
  const base = "data_config:\n  train_file: t.json\nmax_input_length: 8\nmax_output_length: 8\n";
  // eval_steps falls back to logging_steps
  const a = parseConfig(
    base.replace("t.json", "t.json\n  val_file: d.json") +
      "training_args:\n  eval_strategy: steps\n  logging_steps: 7\n",
    "e.yaml",
  ).training_args;
  assertEquals([a.do_eval, a.eval_strategy, a.eval_steps], [true, "steps", 7]);
  // no val_file: evaluation is off
  const b = parseConfig(base + "training_args:\n  evaluation_strategy: steps\n", "e.yaml")
    .training_args;
  assertEquals([b.do_eval, b.eval_strategy], [false, "no"]);
  // the old and new names must agree
  assertThrows(
    () =>
      parseConfig(
        base + "training_args:\n  evaluation_strategy: steps\n  eval_strategy: epoch\n",
        "e.yaml",
      ),
    UserError,
    "conflicts with eval_strategy",
  );
});

Deno.test("quantization: BitsAndBytesConfig keys and LLaMA-Factory's quantization_bit, with their defaults", () => {
  const base = "data_config:\n  train_file: t.json\nmax_input_length: 8\nmax_output_length: 8\n" +
    "peft_config:\n  peft_type: LORA\n";
  assertEquals(parseConfig(base, "c.yaml").quantization, null);
  // transformers' defaults: FP4, no double quantization.
  const hf = parseConfig(base + "quantization_config:\n  load_in_4bit: true\n", "c.yaml");
  assertEquals(hf.quantization, {
    bits: 4,
    quantType: "fp4",
    doubleQuant: false,
    blocksize: 64,
    key: "quantization_config",
  });
  const nf4 = parseConfig(
    base + "quantization_config:\n  load_in_4bit: true\n  bnb_4bit_quant_type: nf4\n" +
      "  bnb_4bit_use_double_quant: true\n  bnb_4bit_compute_dtype: bfloat16\n" +
      "  quant_method: bitsandbytes\n  llm_int8_threshold: 6.0\n",
    "c.yaml",
  );
  assertEquals(nf4.quantization?.quantType, "nf4");
  assertEquals(nf4.quantization?.doubleQuant, true);
  // The compute dtype is the engine's (f32); said once, with the other inert keys.
  assertMatch(formatNotApplicable(nf4), /quantization_config\.bnb_4bit_compute_dtype/);
  // load_in_4bit false: no quantization (the section alone asks for nothing).
  assertEquals(
    parseConfig(base + "quantization_config:\n  load_in_4bit: false\n", "c.yaml")
      .quantization,
    null,
  );
  // LLaMA-Factory: quantization_bit 4 is NF4 with double quantization unless told otherwise.
  const lf = parseConfig(base + "quantization_bit: 4\n", "c.yaml");
  assertEquals(lf.quantization, {
    bits: 4,
    quantType: "nf4",
    doubleQuant: true,
    blocksize: 64,
    key: "quantization_bit",
  });
  const lf2 = parseConfig(
    base + "quantization_bit: 4\nquantization_type: fp4\ndouble_quantization: false\n" +
      "quantization_method: bnb\n",
    "c.yaml",
  );
  assertEquals([lf2.quantization?.quantType, lf2.quantization?.doubleQuant], ["fp4", false]);
  // --set reaches both forms.
  assertEquals(
    parseConfig(base, "c.yaml", ["quantization_bit=4"]).quantization?.key,
    "quantization_bit",
  );
  assertEquals(
    parseConfig(base, "c.yaml", [
      "quantization_config.load_in_4bit=true",
      "quantization_config.bnb_4bit_quant_type=nf4",
    ]).quantization?.quantType,
    "nf4",
  );
  // P-Tuning v2 on a 4-bit base is allowed (the base is frozen there too).
  const pt = "data_config:\n  train_file: t.json\nmax_input_length: 8\nmax_output_length: 8\n" +
    "peft_config:\n  peft_type: PREFIX_TUNING\n  num_virtual_tokens: 4\nquantization_bit: 4\n";
  assertEquals(parseConfig(pt, "c.yaml").quantization?.bits, 4);
  // The same base as --set overrides for evaluate and chat, read back to the same settings.
  assertEquals(parseConfig(base, "c.yaml").quantization_overrides, []);
  assertEquals(hf.quantization_overrides, [
    "quantization_bit=4",
    "quantization_type=fp4",
    "double_quantization=false",
  ]);
  for (const c of [hf, nf4, lf, lf2]) {
    const back = quantizationFromOverrides(c.quantization_overrides, "evaluate --set");
    assertEquals(
      [back?.quantType, back?.doubleQuant],
      [c.quantization?.quantType, c.quantization?.doubleQuant],
    );
  }
  assertEquals(quantizationFromOverrides([], "evaluate --set"), null);
  assertThrows(
    () => quantizationFromOverrides(["quantization_bit=8"], "evaluate --set"),
    UserError,
    "evaluate --set: quantization_bit: 8-bit (LLM.int8) weights are not supported",
  );
});

Deno.test("quantization: what cannot be honoured is an error with file:line", () => {
  const base = "data_config:\n  train_file: t.json\nmax_input_length: 8\nmax_output_length: 8\n";
  const lora = "peft_config:\n  peft_type: LORA\n";
  const cases: [string, RegExp][] = [
    [
      lora + "quantization_bit: 8\n",
      /c\.yaml:7: quantization_bit: 8-bit \(LLM\.int8\) weights are not supported/,
    ],
    [lora + "quantization_bit: 3\n", /c\.yaml:7: quantization_bit: must be 4/],
    [
      lora + "quantization_bit: 4\nquantization_config:\n  load_in_4bit: true\n",
      /c\.yaml:7: quantization_bit: give either quantization_bit .* or quantization_config/,
    ],
    [
      lora + "quantization_config:\n  load_in_8bit: true\n",
      /c\.yaml:8: quantization_config\.load_in_8bit: 8-bit \(LLM\.int8\) weights are not supported/,
    ],
    [
      lora + "quantization_config:\n  load_in_4bit: true\n  bnb_4bit_quant_type: int4\n",
      /c\.yaml:9: quantization_config\.bnb_4bit_quant_type: "int4" is not one of nf4, fp4/,
    ],
    [
      lora + "quantization_config:\n  load_in_4bit: true\n  llm_int8_skip_modules: [dense]\n",
      /c\.yaml:9: quantization_config\.llm_int8_skip_modules: .* is not supported \(only null\)/,
    ],
    [
      lora + "quantization_config:\n  load_in_4bit: true\n  bnb_4bit_quant_typ: nf4\n",
      /c\.yaml:9: quantization_config\.bnb_4bit_quant_typ: unknown key \(did you mean bnb_4bit_quant_type\?\)/,
    ],
    [
      lora + "quantization_type: nf4\n",
      /c\.yaml:7: quantization_type: applies with quantization_bit: 4/,
    ],
    [
      "quantization_bit: 4\n",
      /c\.yaml:5: quantization_bit: a 4-bit base is frozen: .*not full fine-tuning/,
    ],
  ];
  for (const [extra, re] of cases) {
    const e = assertThrows(() => parseConfig(base + extra, "c.yaml"), UserError);
    assertMatch(e.message, re);
  }
});
