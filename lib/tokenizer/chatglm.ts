/**
 * The ChatGLM3 tokenizer (chatglm3-6b tokenization_chatglm.py): SentencePiece
 * ids, then nine special tokens numbered after the SentencePiece vocabulary,
 * and the message layout `[<|role|>] + encode(metadata + "\n") + encode(content)`.
 * Content is always encoded as text, so a `<|user|>` typed inside a message is
 * never the role token.
 */
import { join } from "node:path";
import { UserError } from "../errors.ts";
import { pythonJsonDumps } from "./pyformat.ts";
import { SentencePieceModel } from "./sentencepiece.ts";

export const SPECIAL_TOKENS = [
  "[MASK]",
  "[gMASK]",
  "[sMASK]",
  "sop",
  "eop",
  "<|system|>",
  "<|user|>",
  "<|assistant|>",
  "<|observation|>",
] as const;

export type SpecialToken = typeof SPECIAL_TOKENS[number];
export type ChatRole = "system" | "user" | "assistant" | "observation";
export const CHAT_ROLES: readonly ChatRole[] = ["system", "user", "assistant", "observation"];

export interface HistoryItem {
  role: ChatRole;
  content: string;
  metadata?: string;
  /** On a system item: tool definitions, appended to the content as indented JSON. */
  tools?: unknown;
}

export class ChatGLMTokenizer {
  /** SentencePiece vocabulary size; special ids start here. */
  readonly n: number;
  readonly eosId: number;
  readonly padId: number;
  private readonly specialIds: Record<SpecialToken, number>;
  private readonly specialById = new Map<number, SpecialToken>();

  constructor(readonly sp: SentencePieceModel) {
    this.n = sp.vocabSize;
    const ids = {} as Record<SpecialToken, number>;
    SPECIAL_TOKENS.forEach((t, i) => {
      ids[t] = this.n + i;
      this.specialById.set(this.n + i, t);
    });
    this.specialIds = ids;
    this.eosId = sp.eosId;
    // The pad token is <unk>, as in chatglm3-6b.
    this.padId = sp.unkId;
  }

  /** Load `tokenizer.model` from a model directory. */
  static async load(modelDir: string): Promise<ChatGLMTokenizer> {
    const path = join(modelDir, "tokenizer.model");
    try {
      const st = await Deno.stat(modelDir);
      if (!st.isDirectory) {
        throw new UserError(`${modelDir}: expected a model directory holding tokenizer.model`);
      }
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new UserError(`${modelDir}: no such model directory`);
      }
      throw e;
    }
    try {
      await Deno.stat(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new UserError(
          `${path}: missing; a ChatGLM3 model directory holds its SentencePiece tokenizer.model`,
        );
      }
      throw e;
    }
    return new ChatGLMTokenizer(await SentencePieceModel.load(path));
  }

  /** Size of the whole vocabulary: SentencePiece pieces plus the special tokens. */
  get vocabSize(): number {
    return this.n + SPECIAL_TOKENS.length;
  }

  /** A model whose embedding has `padded` rows (config.json) must hold every id this makes. */
  assertFits(padded: number, modelDir: string): void {
    if (this.vocabSize > padded) {
      throw new UserError(
        `${join(modelDir, "tokenizer.model")} makes ids up to ${this.vocabSize - 1}, but ${
          join(modelDir, "config.json")
        } has padded_vocab_size ${padded}: they are not of the same model`,
      );
    }
  }

  special(token: SpecialToken): number {
    return this.specialIds[token];
  }

  /** The special token of an id, if it is one. */
  specialName(id: number): SpecialToken | undefined {
    return this.specialById.get(id);
  }

  roleId(role: ChatRole): number {
    return this.specialIds[`<|${role}|>`];
  }

  /** Generation stops at eos, `<|user|>` or `<|observation|>`. */
  get stopIds(): number[] {
    return [this.eosId, this.special("<|user|>"), this.special("<|observation|>")];
  }

  encode(text: string): number[] {
    return this.sp.encode(text);
  }

  /**
   * The text of `ids` as the HF tokenizer's `decode` gives it: each id becomes
   * its token (special tokens by name; eos, bos, pad and ids past the
   * vocabulary become nothing) and the tokens are joined by SentencePiece's
   * piece decoder, which copies names it does not know through verbatim.
   */
  decode(ids: readonly number[]): string {
    return this.sp.decodePieces(ids.map((id) => this.idToToken(id)));
  }

  /** `convert_id_to_token` of chatglm3-6b. */
  idToToken(id: number): string {
    const special = this.specialById.get(id);
    if (special !== undefined) return special;
    if (id === this.eosId || id === this.sp.bosId || id === this.padId || id < 0 || id >= this.n) {
      return "";
    }
    return this.sp.idToPiece(id);
  }

  buildSingleMessage(role: ChatRole, metadata: string, content: string): number[] {
    if (!CHAT_ROLES.includes(role)) throw new Error(`unknown role ${role}`);
    const out = [this.roleId(role)];
    for (const id of this.sp.encode(metadata + "\n")) out.push(id);
    for (const id of this.sp.encode(content)) out.push(id);
    return out;
  }

  /** `[gMASK] sop` + history + the query message + `<|assistant|>`: the prompt for generation. */
  buildChatInput(
    history: readonly HistoryItem[],
    query: string,
    role: ChatRole = "user",
  ): number[] {
    const ids = [this.special("[gMASK]"), this.special("sop")];
    for (const h of history) {
      const content = h.role === "system" && h.tools !== undefined
        ? h.content + "\n" + pythonJsonDumps(h.tools, 4)
        : h.content;
      ids.push(...this.buildSingleMessage(h.role, h.metadata ?? "", content));
    }
    ids.push(...this.buildSingleMessage(role, "", query));
    ids.push(this.special("<|assistant|>"));
    return ids;
  }
}
