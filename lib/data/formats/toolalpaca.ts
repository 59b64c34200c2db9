/**
 * ToolAlpaca (tangqiaoyu/ToolAlpaca `train_data.json`): one record per API,
 * `{Name, Description, NLDocumentation, Function_Description, ..., Instances}`,
 * each instance a LangChain agent run
 * `{input, output, "Final Thought", intermediate_steps: [[[action, action_input, log], observation], ...]}`.
 * As ChatGLM3's `format_tool_alpaca.py` does, every instance becomes its own
 * conversation: tools = [NLDocumentation]; the user turn is `input`; each step
 * is the thought (the log before "Action:") as an assistant message, then a
 * tool message (name = action, parameters = the JSON action input, observation
 * = the step's result); the last reply is the final thought and the output on
 * the next line. Unlike the upstream script, an empty thought produces no empty
 * assistant message, and a missing final thought leaves the output alone.
 */
import { isObject, type Problem, typeName } from "../schema.ts";
import { type Converted, fieldPath, type InputFormat, notAnObject } from "./types.ts";
import { parseKeepingNumbers } from "../pynumber.ts";

function convertInstance(inst: unknown, at: string, tools: unknown[] | undefined): Converted {
  const problems: Problem[] = [];
  const add = (field: string, message: string) => problems.push({ field, message });
  if (!isObject(inst)) {
    add(
      at,
      `an instance must be an object {input, output, intermediate_steps}, found ${typeName(inst)}`,
    );
    return { at, problems };
  }
  const str = (k: string, required: boolean): string | undefined => {
    if (!(k in inst) || inst[k] === null) {
      if (required) add(fieldPath(at, k), "missing; expected a string");
      return undefined;
    }
    if (typeof inst[k] !== "string") {
      add(
        `${at}.${k.includes(" ") ? JSON.stringify(k) : k}`,
        `must be a string, found ${typeName(inst[k])}`,
      );
      return undefined;
    }
    return inst[k] as string;
  };
  const input = str("input", true);
  const output = str("output", true);
  const finalThought = str("Final Thought", false);
  const conversations: Record<string, unknown>[] = [{ role: "user", content: input ?? "" }];
  const sources = [`${at}.input`];
  const steps = inst.intermediate_steps ?? [];
  if (!Array.isArray(steps)) {
    add(`${at}.intermediate_steps`, `must be an array of steps, found ${typeName(steps)}`);
  } else {
    steps.forEach((step, j) => {
      const sat = `${at}.intermediate_steps[${j}]`;
      if (
        !Array.isArray(step) || step.length !== 2 || !Array.isArray(step[0]) || step[0].length < 3
      ) {
        add(sat, `a step must be [[action, action_input, log], observation]`);
        return;
      }
      const [action, actionInput, log] = step[0];
      if (typeof action !== "string" || action === "") {
        add(`${sat}[0][0]`, `the action must be the tool's name, found ${typeName(action)}`);
      }
      let parameters: unknown = actionInput;
      if (typeof actionInput === "string") {
        try {
          parameters = actionInput.trim() === "" ? {} : parseKeepingNumbers(actionInput);
        } catch (e) {
          add(`${sat}[0][1]`, `the action input is not valid JSON: ${(e as Error).message}`);
          parameters = {};
        }
      }
      if (!isObject(parameters)) {
        add(
          `${sat}[0][1]`,
          `the action input must be a JSON object, found ${typeName(parameters)}`,
        );
        parameters = {};
      }
      if (typeof log !== "string") {
        add(`${sat}[0][2]`, `the log must be a string, found ${typeName(log)}`);
      } else {
        const thought = log.split("Action:")[0].trim();
        if (thought !== "") {
          conversations.push({ role: "assistant", content: thought });
          sources.push(`${sat}[0][2]`);
        }
      }
      conversations.push({
        role: "tool",
        name: typeof action === "string" ? action : "",
        parameters,
        observation: step[1],
      });
      sources.push(sat);
    });
  }
  conversations.push({
    role: "assistant",
    content: finalThought !== undefined ? `${finalThought}\n${output ?? ""}` : output ?? "",
  });
  sources.push(`${at}.output`);
  const record: { tools?: unknown; conversations: unknown } = { conversations };
  if (tools) record.tools = tools;
  return { at, record, problems, sources, container: "" };
}

export const toolalpaca: InputFormat = {
  name: "toolalpaca",
  detect: (v) => "Instances" in v || "NLDocumentation" in v || "Function_Description" in v,
  convert(value: unknown): Converted[] {
    if (!isObject(value)) return notAnObject(value);
    let tools: unknown[] | undefined;
    if (typeof value.NLDocumentation === "string") tools = [value.NLDocumentation];
    else if (typeof value.Functions === "string") tools = [value.Functions];
    const inst = value.Instances;
    if (!Array.isArray(inst)) {
      const message = inst === undefined
        ? "missing; expected the API's list of instances"
        : `must be an array of instances, found ${typeName(inst)}`;
      return [{ at: "", problems: [{ field: "Instances", message }] }];
    }
    return inst.map((x, i) => convertInstance(x, `Instances[${i}]`, tools));
  },
};
