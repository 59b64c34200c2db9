/**
 * ZhipuAI / OpenAI chat fine-tuning records: `{messages: [...], tools?}`.
 *
 * An assistant turn's `tool_calls` (or legacy `function_call`) become canonical
 * `tool` messages — `function.arguments`, a JSON string, becomes the
 * `parameters` object — each completed by its result message (`role: "tool"`,
 * matched by `tool_call_id`, else in call order; or legacy `role: "function"`,
 * matched by name). A result whose content is a JSON object or array is parsed,
 * so it is rendered as JSON again; other text stays as it is. Text the
 * assistant says alongside its calls becomes an assistant message before them.
 * `tools` (top level, or on the system message as ZhipuAI writes it) in the
 * OpenAI `{type: "function", function: {...}}` form is unwrapped to the
 * function descriptions ChatGLM3's tool prompt lists. An assistant `weight` of
 * 0 (OpenAI fine-tuning) becomes `"loss": false`.
 */
import { article, isObject, type Problem, typeName } from "../schema.ts";
import { type Converted, type InputFormat, notAnObject, observationFromText } from "./types.ts";
import { numberValue, parseKeepingNumbers } from "../pynumber.ts";

const KEYS: Record<string, string[]> = {
  system: ["role", "content", "name", "tools"],
  user: ["role", "content", "name"],
  assistant: [
    "role",
    "content",
    "name",
    "tool_calls",
    "function_call",
    "weight",
    "refusal",
    "loss",
  ],
  tool: ["role", "content", "tool_call_id", "name"],
  function: ["role", "content", "name"],
};

function unwrapTool(t: unknown): unknown {
  if (isObject(t) && t.type === "function" && isObject(t.function)) return t.function;
  return t;
}

export const messages: InputFormat = {
  name: "messages",
  detect: (v) => "messages" in v,
  convert(value: unknown): Converted[] {
    if (!isObject(value)) return notAnObject(value);
    const problems: Problem[] = [];
    const add = (field: string, message: string) => problems.push({ field, message });
    let tools: unknown[] | undefined;
    const addTools = (t: unknown, field: string) => {
      if (t === null || t === undefined) return;
      if (!Array.isArray(t)) add(field, `must be an array of tools, found ${typeName(t)}`);
      else {
        t.forEach((x, i) => {
          if (isObject(x) && x.type === "function" && !isObject(x.function)) {
            add(`${field}[${i}].function`, "missing or not an object");
          }
        });
        (tools ??= []).push(...t.map(unwrapTool));
      }
    };
    addTools(value.tools, "tools");
    const msgs = value.messages;
    if (!Array.isArray(msgs)) {
      add("messages", `must be an array of messages, found ${typeName(msgs)}`);
      return [{ at: "", problems }];
    }
    const out: Record<string, unknown>[] = [];
    const sources: string[] = [];
    interface Pending {
      tool: Record<string, unknown>;
      id?: string;
      name: string;
      from: string;
    }
    const pending: Pending[] = [];
    const text = (
      m: Record<string, unknown>,
      at: string,
      required: boolean,
    ): string | undefined => {
      const c = m.content;
      if (c === undefined || c === null) {
        if (required) add(`${at}.content`, "missing; expected a string");
        return undefined;
      }
      if (typeof c === "string") return c;
      if (Array.isArray(c)) {
        // OpenAI content parts: only text can be trained on.
        let s = "";
        c.forEach((part, k) => {
          if (isObject(part) && part.type === "text" && typeof part.text === "string") {
            s += part.text;
          } else {
            add(`${at}.content[${k}]`, `only {"type": "text", "text": ...} parts are supported`);
          }
        });
        return s;
      }
      add(`${at}.content`, `must be a string, found ${typeName(c)}`);
      return undefined;
    };
    msgs.forEach((m, i) => {
      const at = `messages[${i}]`;
      if (!isObject(m)) {
        add(at, `a message must be an object, found ${typeName(m)}`);
        return;
      }
      const role = m.role;
      if (typeof role !== "string" || !Object.hasOwn(KEYS, role)) {
        const found = typeof role === "string" ? `"${role}"` : typeName(role);
        add(`${at}.role`, `unknown role ${found}; expected one of ${Object.keys(KEYS).join(", ")}`);
        return;
      }
      for (const k of Object.keys(m)) {
        if (!KEYS[role].includes(k)) {
          add(
            `${at}.${k}`,
            `unknown key for ${article(role)} message; allowed: ${KEYS[role].join(", ")}`,
          );
        }
      }
      if (role === "system" || role === "user") {
        // A ZhipuAI system message may be there only to carry the tools: no empty system turn then.
        const carriesTools = role === "system" && m.tools !== undefined && m.tools !== null;
        if (role === "system") addTools(m.tools, `${at}.tools`);
        const content = text(m, at, !carriesTools);
        if (carriesTools && (content === undefined || content === "")) return;
        out.push({ role, content: content ?? "" });
        sources.push(at);
        return;
      }
      if (role === "assistant") {
        let loss: boolean | undefined;
        if ("weight" in m) {
          const w = numberValue(m.weight);
          if (w === 0) loss = false;
          else if (w !== 1) {
            add(`${at}.weight`, `must be 0 or 1, found ${JSON.stringify(m.weight)}`);
          }
        }
        if ("loss" in m) {
          if (typeof m.loss === "boolean") loss = m.loss;
          else add(`${at}.loss`, `must be true or false, found ${typeName(m.loss)}`);
        }
        const calls: { call: unknown; at: string; fnAt: string }[] = [];
        if (m.tool_calls !== undefined && m.tool_calls !== null) {
          if (!Array.isArray(m.tool_calls)) {
            add(`${at}.tool_calls`, `must be an array, found ${typeName(m.tool_calls)}`);
          } else {
            m.tool_calls.forEach((c, j) =>
              calls.push({
                call: c,
                at: `${at}.tool_calls[${j}]`,
                fnAt: `${at}.tool_calls[${j}].function`,
              })
            );
          }
        }
        if (m.function_call !== undefined && m.function_call !== null) {
          const fnAt = `${at}.function_call`;
          calls.push({ call: { function: m.function_call }, at: fnAt, fnAt });
        }
        const content = text(m, at, calls.length === 0);
        if (calls.length === 0 || (content !== undefined && content.trim() !== "")) {
          const msg: Record<string, unknown> = { role: "assistant", content: content ?? "" };
          if (loss !== undefined) msg.loss = loss;
          out.push(msg);
          sources.push(at);
        }
        for (const { call, at: cat, fnAt } of calls) {
          if (!isObject(call)) {
            add(cat, `a tool call must be an object, found ${typeName(call)}`);
            continue;
          }
          const fn = call.function;
          if (!isObject(fn)) {
            add(fnAt, `missing or not an object; expected {"name", "arguments"}`);
            continue;
          }
          if (typeof fn.name !== "string" || fn.name === "") {
            add(`${fnAt}.name`, `must be the tool's name, found ${typeName(fn.name)}`);
          }
          let parameters: unknown = {};
          const args = fn.arguments;
          if (typeof args === "string") {
            if (args.trim() !== "") {
              try {
                parameters = parseKeepingNumbers(args);
              } catch (e) {
                add(`${fnAt}.arguments`, `is not valid JSON: ${(e as Error).message}`);
              }
            }
          } else if (args !== undefined && args !== null) parameters = args;
          if (!isObject(parameters)) {
            add(
              `${fnAt}.arguments`,
              `must be a JSON object of arguments, found ${typeName(parameters)}`,
            );
            parameters = {};
          }
          const tool: Record<string, unknown> = {
            role: "tool",
            name: typeof fn.name === "string" ? fn.name : "",
            parameters,
          };
          if (loss !== undefined) tool.loss = loss;
          out.push(tool);
          sources.push(cat);
          pending.push({
            tool,
            id: typeof call.id === "string" ? call.id : undefined,
            name: tool.name as string,
            from: cat,
          });
        }
        return;
      }
      // A tool result ("tool", or legacy "function").
      let k = -1;
      if (role === "tool" && typeof m.tool_call_id === "string") {
        k = pending.findIndex((p) => p.id === m.tool_call_id);
        if (k < 0) {
          add(
            `${at}.tool_call_id`,
            `no earlier tool call has the id ${JSON.stringify(m.tool_call_id)}`,
          );
          return;
        }
      } else if (typeof m.name === "string") {
        k = pending.findIndex((p) => p.name === m.name);
        if (k < 0) {
          add(
            `${at}.name`,
            `no earlier tool call to ${JSON.stringify(m.name)} is waiting for a result`,
          );
          return;
        }
      } else if (pending.length > 0) k = 0;
      else {
        add(`${at}.role`, `a ${role} result with no tool call before it waiting for a result`);
        return;
      }
      const p = pending.splice(k, 1)[0];
      const content = m.content;
      p.tool.observation = typeof content === "string"
        ? observationFromText(content)
        : (text(m, at, true) ?? "");
    });
    for (const p of pending) {
      add(p.from, `the call to "${p.name}" has no result message (role "tool") after it`);
      p.tool.observation = null;
    }
    const record: { tools?: unknown; conversations: unknown } = { conversations: out };
    if (tools) record.tools = tools;
    return [{ at: "", record, problems, sources, container: "messages" }];
  },
};
