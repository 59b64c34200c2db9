/**
 * ShareGPT `{conversations: [{from, value}], system?, tools?}`: `human`/`user`
 * → user, `gpt`/`assistant`/`chatgpt` → assistant, `system` → system;
 * `function_call` turns (a JSON `{name, arguments}` or a list of them, as
 * LLaMA-Factory writes them) become tool messages completed by the following
 * `observation` turns, in order. `tools` may be a JSON string (LLaMA-Factory)
 * or an array.
 */
import { isObject, type Problem, typeName } from "../schema.ts";
import { type Converted, type InputFormat, notAnObject, observationFromText } from "./types.ts";
import { numberValue, parseKeepingNumbers } from "../pynumber.ts";

const ROLE_OF: Record<string, string> = {
  human: "user",
  user: "user",
  gpt: "assistant",
  assistant: "assistant",
  chatgpt: "assistant",
  system: "system",
  function_call: "function_call",
  observation: "observation",
};

export const sharegpt: InputFormat = {
  name: "sharegpt",
  detect(v) {
    const c = v.conversations;
    return Array.isArray(c) && isObject(c[0]) && ("from" in c[0] || "value" in c[0]);
  },
  convert(value: unknown): Converted[] {
    if (!isObject(value)) return notAnObject(value);
    const problems: Problem[] = [];
    const add = (field: string, message: string) => problems.push({ field, message });
    const conv = value.conversations;
    if (!Array.isArray(conv)) {
      add("conversations", `must be an array of {from, value} turns, found ${typeName(conv)}`);
      return [{ at: "", problems }];
    }
    const out: Record<string, unknown>[] = [];
    const sources: string[] = [];
    let tools: unknown;
    if ("tools" in value && value.tools !== null && value.tools !== "") {
      tools = value.tools;
      if (typeof tools === "string") {
        try {
          tools = parseKeepingNumbers(tools);
        } catch (e) {
          add("tools", `is a string but not valid JSON: ${(e as Error).message}`);
          tools = undefined;
        }
      }
      if (tools !== undefined && !Array.isArray(tools)) {
        add("tools", `must be an array of tools, found ${typeName(tools)}`);
        tools = undefined;
      }
    }
    if ("system" in value && value.system !== null && value.system !== "") {
      if (typeof value.system !== "string") {
        add("system", `must be a string, found ${typeName(value.system)}`);
      } else {
        out.push({ role: "system", content: value.system });
        sources.push("system");
      }
    }
    const pending: { tool: Record<string, unknown>; from: string }[] = [];
    conv.forEach((turn, i) => {
      const at = `conversations[${i}]`;
      if (!isObject(turn)) {
        add(at, `a turn must be an object {from, value}, found ${typeName(turn)}`);
        return;
      }
      for (const k of Object.keys(turn)) {
        if (!["from", "value", "loss", "weight"].includes(k)) {
          add(`${at}.${k}`, `unknown key for a turn; allowed: from, value, loss, weight`);
        }
      }
      const role = typeof turn.from === "string" && Object.hasOwn(ROLE_OF, turn.from)
        ? ROLE_OF[turn.from]
        : undefined;
      if (!role) {
        const found = typeof turn.from === "string" ? `"${turn.from}"` : typeName(turn.from);
        add(
          `${at}.from`,
          `unknown speaker ${found}; expected one of ${Object.keys(ROLE_OF).join(", ")}`,
        );
        return;
      }
      if (typeof turn.value !== "string") {
        add(`${at}.value`, `must be a string, found ${typeName(turn.value)}`);
        return;
      }
      let loss: boolean | undefined;
      if ("loss" in turn) {
        if (typeof turn.loss === "boolean") loss = turn.loss;
        else add(`${at}.loss`, `must be true or false, found ${typeName(turn.loss)}`);
      }
      if ("weight" in turn) {
        const w = numberValue(turn.weight);
        if (w === 0) loss = false;
        else if (w !== 1) {
          add(`${at}.weight`, `must be 0 or 1, found ${JSON.stringify(turn.weight)}`);
        }
      }
      if (role === "observation") {
        const p = pending.shift();
        if (!p) {
          add(
            `${at}.from`,
            `an observation with no function_call turn before it waiting for a result`,
          );
          return;
        }
        p.tool.observation = observationFromText(turn.value);
        return;
      }
      if (role === "function_call") {
        let calls: unknown;
        try {
          calls = parseKeepingNumbers(turn.value);
        } catch (e) {
          add(
            `${at}.value`,
            `a function_call must be JSON {"name", "arguments"}: ${(e as Error).message}`,
          );
          return;
        }
        const list = Array.isArray(calls) ? calls : [calls];
        list.forEach((c, j) => {
          const where = Array.isArray(calls) ? `${at}.value[${j}]` : `${at}.value`;
          if (!isObject(c) || typeof c.name !== "string" || c.name === "") {
            add(where, `a function call must be {"name": string, "arguments": object}`);
            return;
          }
          let args: unknown = c.arguments ?? c.parameters ?? {};
          if (typeof args === "string") {
            try {
              args = parseKeepingNumbers(args);
            } catch (e) {
              add(`${where}.arguments`, `is not valid JSON: ${(e as Error).message}`);
              args = {};
            }
          }
          if (!isObject(args)) {
            add(`${where}.arguments`, `must be an object, found ${typeName(args)}`);
            args = {};
          }
          const tool: Record<string, unknown> = { role: "tool", name: c.name, parameters: args };
          if (loss !== undefined) tool.loss = loss;
          out.push(tool);
          sources.push(at);
          pending.push({ tool, from: at });
        });
        return;
      }
      const msg: Record<string, unknown> = { role, content: turn.value };
      if (loss !== undefined) msg.loss = loss;
      out.push(msg);
      sources.push(at);
    });
    for (const p of pending) {
      add(p.from, `the call to "${p.tool.name}" has no observation turn after it`);
      p.tool.observation = null;
    }
    const record: { tools?: unknown; conversations: unknown } = { conversations: out };
    if (tools !== undefined) record.tools = tools;
    return [{ at: "", record, problems, sources, container: "conversations" }];
  },
};
