/**
 * A chat session as the ChatGLM3 demo runs one (inference_hf.py and the
 * model's `chat`): the prompt is `[gMASK] sop` + history + the new message +
 * `<|assistant|>`; generation stops at eos, `<|user|>` or `<|observation|>`;
 * the reply is `metadata\ncontent`, and a non-empty first line (metadata)
 * names a tool, the content then being a ```` ```python\ntool_call(...)\n``` ````
 * block (upstream's `process_response`).
 */
import { parseToolCall, PyLiteralError } from "../data/pyliteral.ts";
import type { GlmModel } from "../model/glm.ts";
import type { GenerationSettings } from "./evaluate.ts";
import type { ChatGLMTokenizer, ChatRole, HistoryItem } from "../tokenizer/chatglm.ts";
import { pyLstrip, pyRstrip, pyStrip } from "../metrics/pywhitespace.ts";

export type Reply =
  | { kind: "text"; content: string }
  | { kind: "tool_call"; name: string; parameters: Record<string, unknown> }
  /** A non-empty metadata line whose content is not a parsable tool call. */
  | { kind: "tagged"; name: string; content: string };

/** An assistant message of the history, as upstream's process_response stores it. */
export interface ReplyMessage {
  metadata: string;
  content: string;
}

/**
 * Interpret a raw reply as upstream's `process_response` does: the reply is
 * split at each `<|assistant|>` (a model may think aloud, then call a tool),
 * each part at its first line break into metadata and content, and each part
 * goes into the history with its metadata as generated; a part without
 * metadata is text, its content stripped (Python's `str.strip`). The reply is
 * the last part's.
 */
export function parseReply(raw: string): { reply: Reply; messages: ReplyMessage[] } {
  const messages: ReplyMessage[] = [];
  let reply: Reply = { kind: "text", content: "" };
  for (const part of raw.split(ASSISTANT)) {
    const nl = part.indexOf("\n");
    const metadata = nl >= 0 ? part.slice(0, nl) : "";
    const rest = nl >= 0 ? part.slice(nl + 1) : part;
    const name = pyStrip(metadata);
    if (!name) {
      const content = pyStrip(rest);
      messages.push({ metadata, content });
      reply = { kind: "text", content };
      continue;
    }
    messages.push({ metadata, content: rest });
    // Upstream evaluates the call only when the system prompt lists tools; a
    // fine-tuned model may call tools without one, so any parsable call counts.
    try {
      reply = { kind: "tool_call", name, parameters: parseToolCall(rest) };
    } catch (e) {
      if (!(e instanceof PyLiteralError)) throw e;
      reply = { kind: "tagged", name, content: rest };
    }
  }
  return { reply, messages };
}

const ASSISTANT = "<|assistant|>";

/** How a reply is shown: the text itself, or the JSON upstream's chat returns for a tool. */
export function formatReply(r: Reply): string {
  switch (r.kind) {
    case "text":
      return r.content;
    case "tool_call":
      return JSON.stringify({ name: r.name, parameters: r.parameters });
    case "tagged":
      return JSON.stringify({ name: r.name, content: r.content });
  }
}

/** A chat session generates with the same settings as evaluate's generation. */
export type ChatOptions = GenerationSettings;

export class ChatSession {
  history: HistoryItem[] = [];
  private turn = 0;
  constructor(
    private model: GlmModel,
    private tokenizer: ChatGLMTokenizer,
    private opts: ChatOptions,
    private system?: string,
  ) {
    this.reset();
  }

  reset(): void {
    this.history = this.system ? [{ role: "system", content: this.system }] : [];
  }

  /** The system prompt in force (undefined: none). */
  get systemPrompt(): string | undefined {
    return this.system;
  }

  setSystem(text: string): void {
    this.system = text || undefined;
    this.reset();
  }

  /** The prompt ids for `message` sent as `role` after the history. */
  promptFor(message: string, role: ChatRole = "user"): number[] {
    return this.tokenizer.buildChatInput(this.history, message, role);
  }

  /**
   * Reply to `message` (a user turn, or the observation of a tool call),
   * streaming the text of a plain reply through `onText` as tokens arrive.
   * A tool call is not streamed: its JSON is known only at the end.
   */
  async ask(
    message: string,
    onText?: (delta: string) => void,
    role: "user" | "observation" = "user",
  ): Promise<Reply> {
    const prompt = this.promptFor(message, role);
    const ids: number[] = [];
    let shown = 0;
    const stream = onText && ((_row: number, id: number) => {
      ids.push(id);
      // Decode the whole reply each time: byte pieces only form characters together.
      // Only the first part of a reply is streamed (a later one follows an <|assistant|>).
      const text = this.tokenizer.decode(ids).split(ASSISTANT)[0];
      const nl = text.indexOf("\n");
      if (nl < 0 || text.slice(0, nl).trim()) return;
      // The reply's text is stripped by Python's rules (parseReply): the stream holds back what
      // they would strip at the end, and a trailing replacement char (an incomplete UTF-8 sequence).
      const body = pyLstrip(text.slice(nl + 1));
      const ready = pyRstrip(body.replace(/\uFFFD$/, ""));
      if (ready.length > shown) {
        onText(ready.slice(shown));
        shown = ready.length;
      }
    });
    const [out] = await this.model.generate([prompt], {
      maxNewTokens: this.opts.maxNewTokens,
      stopIds: this.tokenizer.stopIds,
      doSample: this.opts.doSample,
      temperature: this.opts.temperature,
      topP: this.opts.topP,
      topK: this.opts.topK,
      seed: this.opts.seed + this.turn++,
      ...(stream ? { onToken: stream } : {}),
    });
    const raw = this.tokenizer.decode(out);
    const { reply, messages } = parseReply(raw);
    if (onText && reply.kind === "text") {
      // A later part (after an <|assistant|>) is the reply: shown on a line of its own.
      if (messages.length > 1) onText((shown > 0 ? "\n" : "") + reply.content);
      else if (reply.content.length > shown) onText(reply.content.slice(shown));
    }
    this.history.push({ role, content: message });
    for (const m of messages) this.history.push({ role: "assistant", ...m });
    return reply;
  }
}
