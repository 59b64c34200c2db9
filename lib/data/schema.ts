/**
 * The rules of the canonical conversation record (DESIGN §3). `checkConversation`
 * returns every problem of a record, each with the path of the offending field,
 * so a data file can be fixed in one pass instead of one error at a time.
 */
import type { Conversation } from "./record.ts";
import { checkJsonValue } from "./limits.ts";
import type { Problem } from "./problem.ts";
import { isKeptNumber } from "./pynumber.ts";

export type { Problem } from "./problem.ts";

export const ROLES = ["system", "user", "assistant", "tool"] as const;

/** Keys a message may carry, per role. Anything else is rejected: a typo must not silently vanish. */
export const MESSAGE_KEYS: Record<string, readonly string[]> = {
  system: ["role", "content", "loss"],
  user: ["role", "content", "loss"],
  assistant: ["role", "content", "loss"],
  tool: ["role", "name", "parameters", "observation", "loss"],
};

const RECORD_KEYS = ["tools", "conversations"];

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !isKeptNumber(v);
}

/** A short description of a JSON value's type, for "expected X, found Y" messages. */
export function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (isKeptNumber(v)) return "a number";
  switch (typeof v) {
    case "string":
      return "a string";
    case "number":
      return "a number";
    case "boolean":
      return "a boolean";
    case "object":
      return "an object";
    default:
      return typeof v;
  }
}

/** "an assistant", "a user": by the sound, so a "u" read as "you" takes "a". */
export function article(word: string): string {
  return /^([aeio]|u(?!s|ni|ti))/i.test(word) ? `an ${word}` : `a ${word}`;
}

/** Check a value against the canonical record rules; an empty list means it is valid. */
export function checkConversation(value: unknown): Problem[] {
  // Depth, number range and Unicode first (lib/data/limits.ts); the checks below never recurse.
  const problems: Problem[] = checkJsonValue(value);
  const add = (field: string, message: string) => problems.push({ field, message });
  if (!isObject(value)) {
    add("", `a record must be a JSON object, found ${typeName(value)}`);
    return problems;
  }
  for (const k of Object.keys(value)) {
    if (!RECORD_KEYS.includes(k)) {
      add(k, `unknown key; a record has "conversations" and optionally "tools"`);
    }
  }
  if ("tools" in value && !Array.isArray(value.tools)) {
    add("tools", `must be an array, found ${typeName(value.tools)}`);
  }
  if (value.conversations === undefined) {
    add("conversations", "missing; expected an array of messages");
    return problems;
  }
  const conv = value.conversations;
  if (!Array.isArray(conv)) {
    add("conversations", `must be an array of messages, found ${typeName(conv)}`);
    return problems;
  }
  if (conv.length === 0) {
    add("conversations", "is empty; expected at least one user or system message and a reply");
    return problems;
  }
  let systemAt = -1;
  let firstUserAt = -1;
  let learnable = 0;
  let replies = 0;
  let unreadable = 0;
  conv.forEach((m, i) => {
    const at = `conversations[${i}]`;
    if (!isObject(m)) {
      add(at, `a message must be an object, found ${typeName(m)}`);
      unreadable++;
      return;
    }
    const role = m.role;
    if (!("role" in m)) {
      add(`${at}.role`, `missing; expected one of ${ROLES.join(", ")}`);
      unreadable++;
      return;
    }
    unreadable++;
    if (typeof role !== "string") {
      add(`${at}.role`, `must be a string (${ROLES.join(", ")}), found ${typeName(role)}`);
      return;
    }
    if (!(ROLES as readonly string[]).includes(role)) {
      const hint = role === "observation"
        ? ` ("observation" comes from a tool message's "observation" field)`
        : "";
      add(`${at}.role`, `unknown role "${role}"; expected one of ${ROLES.join(", ")}${hint}`);
      return;
    }
    unreadable--;
    const allowed = MESSAGE_KEYS[role];
    for (const k of Object.keys(m)) {
      if (!allowed.includes(k)) {
        add(
          `${at}.${k}`,
          `unknown key for ${article(role)} message; allowed: ${allowed.join(", ")}`,
        );
      }
    }
    if ("loss" in m && typeof m.loss !== "boolean") {
      add(`${at}.loss`, `must be true or false, found ${typeName(m.loss)}`);
    }
    if (role === "tool") {
      if (!("name" in m)) add(`${at}.name`, "missing; a tool message needs the tool's name");
      else if (typeof m.name !== "string") {
        add(`${at}.name`, `must be a string, found ${typeName(m.name)}`);
      } else if (m.name === "") add(`${at}.name`, "is empty; expected the tool's name");
      if (!("parameters" in m)) {
        add(`${at}.parameters`, "missing; a tool message needs an object of call arguments");
      } else if (!isObject(m.parameters)) {
        add(`${at}.parameters`, `must be an object, found ${typeName(m.parameters)}`);
      }
      if (!("observation" in m)) {
        add(`${at}.observation`, "missing; a tool message needs the tool's result (any JSON)");
      }
    } else {
      if (!("content" in m)) add(`${at}.content`, "missing; expected a string");
      else if (typeof m.content !== "string") {
        add(`${at}.content`, `must be a string, found ${typeName(m.content)}`);
      }
    }
    if (role === "system") {
      if (systemAt >= 0) {
        add(`${at}.role`, `a second system message (the first is conversations[${systemAt}])`);
      } else {
        systemAt = i;
        if (firstUserAt >= 0) {
          add(
            `${at}.role`,
            `system message after a user message (conversations[${firstUserAt}]); it must come first`,
          );
        }
      }
    } else if (role === "user") {
      if (firstUserAt < 0) firstUserAt = i;
    } else {
      replies++;
      if (m.loss !== false) learnable++;
    }
  });
  // A message whose role could not be read may have been the reply; don't guess.
  if (unreadable > 0) return problems;
  if (replies === 0) {
    add("conversations", "has no assistant or tool message to learn from");
  } else if (learnable === 0) {
    add("conversations", `every assistant and tool message has "loss": false; nothing to learn`);
  }
  return problems;
}

/** Narrowing helper for code that has just checked a value. */
export function isConversation(value: unknown): value is Conversation {
  return checkConversation(value).length === 0;
}
