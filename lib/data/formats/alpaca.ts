/**
 * Alpaca `{instruction, input, output, system?, history?}`: the user turn is
 * the instruction and the input, the non-empty ones joined by a new line (as
 * LLaMA-Factory's alpaca loader joins them; a record with an input may leave
 * the instruction out); `history` holds earlier `[user, assistant]` pairs.
 */
import { isObject, type Problem, typeName } from "../schema.ts";
import { type Converted, type InputFormat, notAnObject } from "./types.ts";

export const alpaca: InputFormat = {
  name: "alpaca",
  detect: (v) => "instruction" in v || ("input" in v && "output" in v),
  convert(value: unknown): Converted[] {
    const problems: Problem[] = [];
    const add = (field: string, message: string) => problems.push({ field, message });
    if (!isObject(value)) return notAnObject(value);
    const str = (k: string, required: boolean): string => {
      if (!(k in value) || (!required && value[k] === null)) {
        if (required) add(k, "missing; expected a string");
        return "";
      }
      if (typeof value[k] !== "string") {
        add(k, `must be a string, found ${typeName(value[k])}`);
        return "";
      }
      return value[k] as string;
    };
    const input = str("input", false);
    // the instruction may be left out only where an input takes its place
    const instruction = str("instruction", input === "");
    const output = str("output", true);
    const system = str("system", false);
    const conversations: unknown[] = [];
    const sources: string[] = [];
    if (system !== "") {
      conversations.push({ role: "system", content: system });
      sources.push("system");
    }
    if ("history" in value && value.history !== null) {
      const h = value.history;
      if (!Array.isArray(h)) {
        add("history", `must be an array of [user, assistant] pairs, found ${typeName(h)}`);
      } else {
        h.forEach((pair, i) => {
          if (!Array.isArray(pair) || pair.length !== 2) {
            add(
              `history[${i}]`,
              `must be a [user, assistant] pair of strings, found ${typeName(pair)}`,
            );
            return;
          }
          pair.forEach((text, j) => {
            if (typeof text !== "string") {
              add(`history[${i}][${j}]`, `must be a string, found ${typeName(text)}`);
            }
          });
          conversations.push({ role: "user", content: pair[0] }, {
            role: "assistant",
            content: pair[1],
          });
          sources.push(`history[${i}][0]`, `history[${i}][1]`);
        });
      }
    }
    conversations.push(
      { role: "user", content: [instruction, input].filter((t) => t !== "").join("\n") },
      { role: "assistant", content: output },
    );
    sources.push(instruction !== "" ? "instruction" : "input", "output");
    return [{ at: "", record: { conversations }, problems, sources, container: "" }];
  },
};
