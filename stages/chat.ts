/**
 * chat: talk to a model dir or an adapter dir (whose config names its base
 * model), as the ChatGLM3 finetune demo's inference_hf.py does. With
 * --prompt, one answer; otherwise an interactive session on stdin.
 */
import { type CommandSpec, numberFlag, parseCommand, usageOf } from "../lib/args.ts";
import { UsageError, UserError } from "../lib/errors.ts";
import { readLines } from "../lib/jsonl.ts";
import { type ChatOptions, ChatSession, formatReply } from "../lib/eval/chat.ts";
import { adapterTensorsFor, resolveModelOrAdapter } from "../lib/model/adapter_dir.ts";
import { loadGlmConfig } from "../lib/model/config.ts";
import { gpuForModel, loadGlmModel } from "../lib/model/load.ts";
import { ChatGLMTokenizer } from "../lib/tokenizer/chatglm.ts";
import {
  isQuantizationKey,
  parseOverride,
  QUANTIZATION_KEYS,
  quantizationFromOverrides,
} from "../lib/config/mod.ts";

export const COMMAND: CommandSpec = {
  name: "deno task chat",
  summary:
    "talk to a model dir or an adapter dir (whose config names its base model), as inference_hf.py does",
  usage: [
    "deno task chat MODEL_OR_ADAPTER_DIR [--prompt TEXT] [--system TEXT] [--model BASE_DIR]",
    "  [--max-new-tokens N] [--do-sample --temperature T --top-p P --top-k K] [--seed N]",
    "  [--set quantization_bit=4]",
  ],
  positionals: [[
    "MODEL_OR_ADAPTER_DIR",
    "a model dir (config.json, tokenizer.model, safetensors), or a LoRA / P-Tuning v2 adapter dir",
  ]],
  flags: {
    prompt: {
      type: "string",
      arg: "TEXT",
      help: "answer this one message and exit (default: an interactive session on stdin)",
    },
    system: { type: "string", arg: "TEXT", help: "a system prompt before the conversation" },
    model: {
      type: "string",
      arg: "DIR",
      defaultText: "the adapter's base_model_name_or_path",
      help: "the base model for an adapter dir",
    },
    "max-new-tokens": {
      type: "string",
      arg: "N",
      defaultText: "512, at most half the context",
      help: "the longest answer in tokens",
    },
    "do-sample": {
      type: "boolean",
      help:
        "sample instead of greedy decoding (implied by --temperature, --top-p or --top-k; default: greedy)",
    },
    temperature: {
      type: "string",
      arg: "T",
      defaultText: "0.8 when sampling, as upstream's chat",
      help: "sampling temperature",
    },
    "top-p": {
      type: "string",
      arg: "P",
      defaultText: "0.8 when sampling",
      help: "nucleus sampling: the smallest set of tokens with this much probability",
    },
    "top-k": {
      type: "string",
      arg: "K",
      defaultText: "0, no limit",
      help: "sample among the K most likely tokens",
    },
    seed: { type: "string", arg: "N", defaultText: "42", help: "the sampling seed" },
    set: {
      type: "string",
      arg: "KEY=VALUE",
      multiple: true,
      help: "QLoRA: hold the base's linear weights 4-bit (quantization_bit=4, quantization_type, " +
        "double_quantization, or transformers' quantization_config.*), as the adapter was trained",
    },
  },
  notes: `In a session: a line is a message; /reset clears the history, /system TEXT sets
the system prompt (and clears the history), /observation TEXT answers a tool
call, /exit leaves (as does end of input).`,
};

/** Largest context the session keeps; older turns are dropped to fit. */
const MAX_CONTEXT = 2048;

export async function main(args: string[]): Promise<number> {
  const { values, positionals, help } = parseCommand(args, COMMAND);
  if (help) return 0;
  if (positionals.length !== 1) {
    throw new UsageError(`chat: expected one MODEL_OR_ADAPTER_DIR\n${usageOf(COMMAND)}`);
  }
  const temperature = numberFlag(values.temperature, "--temperature", { integer: false, min: 0 });
  const topP = numberFlag(values["top-p"], "--top-p", { integer: false, min: 0, max: 1 });
  const topK = numberFlag(values["top-k"], "--top-k", { integer: true, min: 0 });
  // Sampling settings imply sampling; upstream's chat samples with 0.8 / 0.8.
  const doSample = !!values["do-sample"] || temperature !== undefined || topP !== undefined ||
    topK !== undefined;
  const opts: ChatOptions = {
    maxNewTokens:
      numberFlag(values["max-new-tokens"], "--max-new-tokens", { integer: true, min: 1 }) ?? 0,
    doSample,
    temperature: temperature ?? 0.8,
    topP: topP ?? 0.8,
    topK: topK ?? 0,
    seed: numberFlag(values.seed, "--seed", { integer: true, min: 0 }) ?? 42,
  };

  // Only the base's quantization may be set here (generation has its own flags).
  const sets = (values.set as string[] | undefined) ?? [];
  for (const text of sets) {
    if (!isQuantizationKey(parseOverride(text).path[0])) {
      throw new UserError(
        `--set ${text}: chat takes only the quantization keys (${QUANTIZATION_KEYS.join(", ")})`,
      );
    }
  }
  const quantization = quantizationFromOverrides(sets, "chat --set");

  const { modelDir, adapter } = await resolveModelOrAdapter(
    positionals[0],
    values.model as string | undefined,
  );
  const tokenizer = await ChatGLMTokenizer.load(modelDir);
  const config = await loadGlmConfig(modelDir);
  tokenizer.assertFits(config.padded_vocab_size, modelDir);
  const context = Math.min(config.seq_length ?? MAX_CONTEXT, MAX_CONTEXT);
  // Unset: up to 512 new tokens, at most half the context.
  if (!opts.maxNewTokens) opts.maxNewTokens = Math.min(512, Math.floor(context / 2));
  if (opts.maxNewTokens >= context) {
    throw new UserError(
      `--max-new-tokens ${opts.maxNewTokens} leaves no room for a prompt in a context of ${context} tokens`,
    );
  }
  const model = await loadGlmModel(await gpuForModel(config), modelDir, {
    adapter: adapter?.spec ?? { kind: "none" },
    maxBatch: 1,
    maxSeq: context,
    seed: opts.seed,
    gradientCheckpointing: true,
    ...(quantization ? { quantization } : {}),
  });
  const enc = new TextEncoder();
  const print = (s: string) => Deno.stdout.writeSync(enc.encode(s));
  try {
    if (adapter) model.setParams(adapterTensorsFor(model.params, adapter));
    const session = new ChatSession(model, tokenizer, opts, values.system as string | undefined);

    const fit = (message: string, role: "user" | "observation") => {
      // Drop the oldest exchanges (never the system prompt) until prompt + reply fit; a message
      // that cannot fit even alone leaves the history as it was.
      const kept = [...session.history];
      while (session.promptFor(message, role).length + opts.maxNewTokens > context) {
        const first = session.history.findIndex((h) => h.role !== "system");
        if (first < 0) {
          const tokens = session.promptFor(message, role).length;
          session.history = kept;
          throw new UserError(
            `the ${
              message ? "message" : "system prompt"
            } makes a prompt of ${tokens} tokens; with --max-new-tokens ${opts.maxNewTokens} it exceeds the context of ${context}`,
          );
        }
        const next = session.history.findIndex((h, i) => i > first && h.role === "user");
        session.history.splice(first, next < 0 ? session.history.length - first : next - first);
      }
    };
    const answer = async (message: string, role: "user" | "observation") => {
      fit(message, role);
      let streamed = false;
      const reply = await session.ask(message, (t) => {
        streamed = true;
        print(t);
      }, role);
      if (!streamed || reply.kind !== "text") print(formatReply(reply));
      print("\n");
    };

    if (values.prompt !== undefined) {
      await answer(values.prompt as string, "user");
      return 0;
    }

    const interactive = Deno.stdin.isTerminal();
    if (interactive) {
      console.error(
        `chat with ${positionals[0]}${
          adapter ? ` (base ${modelDir})` : ""
        }; /reset, /system TEXT, /observation TEXT, /exit`,
      );
    }
    if (interactive) print("user> ");
    for await (const l of readLines(Deno.stdin.readable)) {
      if (l.error !== undefined) {
        console.error(`(line ${l.line}: ${l.error}; ignored)`);
        continue;
      }
      const line = l.text!;
      const cmd = line.trim();
      if (cmd === "/exit" || cmd === "/quit") break;
      // A line that cannot be answered is reported; the session and its history go on.
      try {
        if (cmd === "/reset") {
          session.reset();
          console.error("(history cleared)");
        } else if (cmd === "/system" || cmd.startsWith("/system ")) {
          const text = cmd.slice("/system".length).trim();
          const before = { history: session.history, system: session.systemPrompt };
          session.setSystem(text);
          try {
            fit("", "user");
          } catch (e) {
            session.setSystem(before.system ?? "");
            session.history = before.history;
            throw e;
          }
          console.error("(system prompt set, history cleared)");
        } else if (cmd === "/observation" || cmd.startsWith("/observation ")) {
          const text = cmd.slice("/observation".length).trim();
          if (!text) throw new UserError("/observation needs the tool's result: /observation TEXT");
          await answer(text, "observation");
        } else if (cmd.startsWith("/")) {
          console.error(
            `unknown command ${cmd.split(" ")[0]}; /reset, /system TEXT, /observation TEXT, /exit`,
          );
        } else if (cmd) {
          await answer(line, "user");
        }
      } catch (e) {
        if (!(e instanceof UserError)) throw e;
        console.error(`error: ${e.message}; not sent, the session goes on`);
      }
      if (interactive) print("user> ");
    }
    return 0;
  } finally {
    model.destroy();
  }
}
