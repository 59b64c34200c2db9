/**
 * ChatGLM3 `{tools?, conversations}` — the canonical shape itself, plus the
 * model's native chat-history form, where a tool call is an assistant message
 * whose `metadata` names the tool and whose content is
 * ```` ```python\ntool_call(...)\n``` ````, and its result is the
 * `{"role": "observation"}` message that follows. Such a pair becomes one
 * `tool` message, which the finetune_demo renders back into exactly that
 * assistant + observation pair. An observation message may also follow a
 * `tool` message that has no `observation` field of its own.
 */
import { isObject, MESSAGE_KEYS, type Problem } from "../schema.ts";
import { parseToolCall } from "../pyliteral.ts";
import { type Converted, type InputFormat, notAnObject } from "./types.ts";

export const chatglm3: InputFormat = {
  name: "chatglm3",
  detect(v) {
    if (!("conversations" in v)) return false;
    const c = v.conversations;
    if (!Array.isArray(c) || c.length === 0 || !isObject(c[0])) return true;
    return !("from" in c[0]) && !("value" in c[0]);
  },
  convert(value: unknown): Converted[] {
    if (!isObject(value)) return notAnObject(value);
    const problems: Problem[] = [];
    const add = (field: string, message: string) => problems.push({ field, message });
    const record: { tools?: unknown; conversations: unknown } = {
      conversations: value.conversations,
    };
    // A null stands for an absent key: files exported through HF `datasets` fill every message
    // with every field of any message (tools, loss, name, parameters, observation) as null.
    if ("tools" in value && value.tools !== null) record.tools = value.tools;
    // Other top-level keys (ids, sources) are dropped, as upstream's loader ignores them.
    const conv = value.conversations;
    if (!Array.isArray(conv)) return [{ at: "", record, problems, container: "conversations" }];
    const out: unknown[] = [];
    const sources: string[] = [];
    // The message an observation may complete, and how.
    let pending: { index: number; kind: "tool" | "call"; name: string; from: string } | undefined;
    conv.forEach((m, i) => {
      const at = `conversations[${i}]`;
      if (!isObject(m)) {
        out.push(m);
        sources.push(at);
        pending = undefined;
        return;
      }
      const msg: Record<string, unknown> = { ...m };
      if ("metadata" in msg && (msg.metadata === "" || msg.metadata === null)) delete msg.metadata;
      const keys = typeof msg.role === "string" && Object.hasOwn(MESSAGE_KEYS, msg.role)
        ? MESSAGE_KEYS[msg.role]
        : ["role", "content"];
      for (const [k, v] of Object.entries(msg)) {
        if (v === null && (k === "loss" || !keys.includes(k))) delete msg[k];
      }
      // ... and a tool message's null observation, when an observation message gives it.
      const next = conv[i + 1];
      if (
        msg.role === "tool" && msg.observation === null && isObject(next) &&
        next.role === "observation"
      ) delete msg.observation;
      if (msg.role === "observation") {
        for (const k of Object.keys(msg)) {
          if (k !== "role" && k !== "content") {
            add(`${at}.${k}`, `unknown key for an observation message; allowed: role, content`);
          }
        }
        if (!("content" in msg)) add(`${at}.content`, "missing; expected the tool's result");
        if (!pending) {
          add(
            `${at}.role`,
            `an observation must follow a tool call: a "tool" message without "observation", ` +
              `or an assistant message whose "metadata" names the tool`,
          );
          return;
        }
        const target = out[pending.index] as Record<string, unknown>;
        const observation = msg.content;
        if (pending.kind === "tool") {
          target.observation = observation;
        } else {
          let parameters: Record<string, unknown> = {};
          try {
            const c = target.content;
            parameters = parseToolCall(typeof c === "string" ? c : JSON.stringify(c ?? ""));
          } catch (e) {
            add(
              `${pending.from}.content`,
              `a tool call (metadata "${pending.name}") must be tool_call(key=value, ...) ` +
                `in a python code block: ${(e as Error).message}`,
            );
          }
          const tool: Record<string, unknown> = {
            role: "tool",
            name: pending.name,
            parameters,
            observation,
          };
          if ("loss" in target) tool.loss = target.loss;
          out[pending.index] = tool;
        }
        pending = undefined;
        return;
      }
      if (pending?.kind === "call") {
        add(
          `${pending.from}.metadata`,
          `an assistant message with metadata "${pending.name}" is a tool call and must be ` +
            `followed by an observation message`,
        );
        delete (out[pending.index] as Record<string, unknown>).metadata;
      }
      pending = undefined;
      if (
        msg.role === "assistant" && typeof msg.metadata === "string" && msg.metadata.trim() !== ""
      ) {
        pending = { index: out.length, kind: "call", name: msg.metadata.trim(), from: at };
      } else if (msg.role === "tool" && !("observation" in msg)) {
        pending = {
          index: out.length,
          kind: "tool",
          name: typeof msg.name === "string" ? msg.name : JSON.stringify(msg.name),
          from: at,
        };
      }
      out.push(msg);
      sources.push(at);
    });
    if (pending?.kind === "call") {
      add(
        `${pending.from}.metadata`,
        `an assistant message with metadata "${pending.name}" is a tool call and must be ` +
          `followed by an observation message`,
      );
      delete (out[pending.index] as Record<string, unknown>).metadata;
    }
    record.conversations = out;
    return [{ at: "", record, problems, sources, container: "conversations" }];
  },
};
