/**
 * A canonical conversation (DESIGN §3) as ChatGLM3 messages, following the
 * finetune_demo's format_conversation: `tools` become a first system message,
 * a `tool` turn becomes the assistant's call (metadata = tool name, content a
 * Python `tool_call(...)` block) followed by an observation message.
 */
import type { Conversation } from "../data/record.ts";
import type { ChatGLMTokenizer, ChatRole } from "./chatglm.ts";
import { pythonJsonDumps, renderToolCall } from "./pyformat.ts";

export const TOOL_DEFINITION_PREFIX =
  "Answer the following questions as best as you can. You have access to the following tools:\n";

export interface ChatMessage {
  role: ChatRole;
  metadata: string;
  content: string;
  loss: boolean;
}

export interface TokenizedMessage {
  role: ChatRole;
  /** The whole message: role token, metadata line, content. */
  ids: number[];
  loss: boolean;
}

/** The text messages of a conversation, before tokenization. */
export function conversationMessages(conv: Conversation): ChatMessage[] {
  const out: ChatMessage[] = [];
  if (conv.tools !== undefined) {
    out.push({
      role: "system",
      metadata: "",
      content: TOOL_DEFINITION_PREFIX + pythonJsonDumps(conv.tools, 4),
      loss: false,
    });
  }
  for (const m of conv.conversations) {
    if (m.role === "tool") {
      out.push({
        role: "assistant",
        metadata: m.name,
        content: renderToolCall(m.parameters),
        loss: m.loss ?? true,
      });
      const obs = typeof m.observation === "string"
        ? m.observation
        : pythonJsonDumps(m.observation === undefined ? null : m.observation);
      out.push({ role: "observation", metadata: "", content: obs, loss: false });
    } else {
      const loss = m.role === "system" || m.role === "user" ? false : m.loss ?? true;
      out.push({ role: m.role, metadata: "", content: m.content, loss });
    }
  }
  return out;
}

export function tokenizeConversation(
  tok: ChatGLMTokenizer,
  conv: Conversation,
): TokenizedMessage[] {
  return conversationMessages(conv).map((m) => ({
    role: m.role,
    ids: tok.buildSingleMessage(m.role, m.metadata, m.content),
    loss: m.loss,
  }));
}
