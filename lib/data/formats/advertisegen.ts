/** AdvertiseGen `{content, summary}`: the keywords are the user turn, the ad copy the reply. */
import { isObject, type Problem, typeName } from "../schema.ts";
import { type Converted, type InputFormat, notAnObject } from "./types.ts";

export const advertisegen: InputFormat = {
  name: "advertisegen",
  detect: (v) => "content" in v && "summary" in v,
  convert(value: unknown): Converted[] {
    const problems: Problem[] = [];
    if (!isObject(value)) return notAnObject(value);
    for (const k of ["content", "summary"]) {
      if (!(k in value)) problems.push({ field: k, message: "missing; expected a string" });
      else if (typeof value[k] !== "string") {
        problems.push({ field: k, message: `must be a string, found ${typeName(value[k])}` });
      }
    }
    if (problems.length) return [{ at: "", problems }];
    return [{
      at: "",
      record: {
        conversations: [
          { role: "user", content: value.content },
          { role: "assistant", content: value.summary },
        ],
      },
      problems,
      sources: ["content", "summary"],
      container: "",
    }];
  },
};
