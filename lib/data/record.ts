/** The canonical conversation record (DESIGN §3): what convert writes and tokenize reads. */

export type Role = "system" | "user" | "assistant" | "tool";

export interface TextMessage {
  role: "system" | "user" | "assistant";
  content: string;
  /** Whether the model learns this message; defaults: false for system/user, true for assistant. */
  loss?: boolean;
}

export interface ToolMessage {
  role: "tool";
  name: string;
  parameters: Record<string, unknown>;
  /** Any JSON; rendered as JSON text unless it is a string. */
  observation: unknown;
  loss?: boolean;
}

export type Message = TextMessage | ToolMessage;

export interface Conversation {
  tools?: unknown[];
  conversations: Message[];
}
