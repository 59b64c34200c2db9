/**
 * The tokenize step as a stream: canonical conversation records in, one
 * tokenized record out per conversation, `{messages: [{role, ids, loss}],
 * prefix: [gMASK, sop], eos}` — the prefix and eos travel with the data so
 * the mask step needs no tokenizer.
 */
import { checkConversation } from "../data/schema.ts";
import type { Conversation } from "../data/record.ts";
import type { TokenizedRecord } from "../data/masks.ts";
import { located, UserError } from "../errors.ts";
import type { ChatGLMTokenizer } from "./chatglm.ts";
import { tokenizeConversation } from "./conversation.ts";

export function tokenizeRecord(tok: ChatGLMTokenizer, conv: Conversation): TokenizedRecord {
  return {
    messages: tokenizeConversation(tok, conv),
    prefix: [tok.special("[gMASK]"), tok.special("sop")],
    eos: tok.eosId,
  };
}

/** Tokenize a stream of `{line, value}` records from `file`, failing on the first bad one. */
export async function* tokenizeRecords(
  tok: ChatGLMTokenizer,
  records: AsyncIterable<{ line: number; value: unknown }>,
  file: string,
): AsyncGenerator<TokenizedRecord> {
  for await (const { line, value } of records) {
    const problems = checkConversation(value);
    if (problems.length) {
      const lines = problems.map((p) => located(file, line, p.field || undefined, p.message));
      throw new UserError(lines.join("\n"));
    }
    yield tokenizeRecord(tok, value as Conversation);
  }
}
