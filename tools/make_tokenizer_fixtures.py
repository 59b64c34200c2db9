"""Golden vectors for the SentencePiece / ChatGLM3 tokenizer and the mask stage.

Run with the tools virtualenv:  .venv-tools/bin/python tools/make_tokenizer_fixtures.py

Writes tests/fixtures/tokenizer/:
  glm_bpe.model    BPE + byte fallback + dummy prefix, identity normalizer, extra
                   whitespace kept (the normalizer settings of chatglm3-6b's tokenizer.model)
  nfkc_bpe.model.gz  BPE + byte fallback, nmt_nfkc precompiled charsmap, remove_extra_whitespaces,
                   user-defined symbols (exercises the charsmap trie and the prefix matcher)
  plain_bpe.model  BPE without byte fallback (unknown characters become <unk>)
  unigram.model    unigram (Viterbi) with byte fallback and user-defined symbols
  encode.json.gz   strings -> ids (sentencepiece `encode`), decode(ids) texts, decodes of
                   arbitrary id sequences, and seeds for long texts generated on both sides
  conversations.json.gz  conversations -> tokenized messages, masked train and eval records

Every expected value comes from the real `sentencepiece` library, and the ChatGLM3 rules
(finetune_demo's format_conversation / process_batch / process_batch_eval, the tokenizer's
build_single_message and decode) are restated here with Python's own json.dumps and repr.
"""

import gzip
import json
import os
import random
import shutil
import sys
import tempfile

import sentencepiece as spm

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tokenizer")

CN_WORDS = (
    "我们 你们 他们 今天 明天 昨天 天气 很好 学习 工作 时间 问题 发展 经济 社会 国家 人民 中国 北京 上海 "
    "大学 学生 老师 朋友 家庭 孩子 父母 生活 城市 公司 技术 科学 研究 数据 模型 训练 语言 文字 计算机 程序 "
    "系统 网络 信息 安全 服务 用户 产品 市场 价格 质量 设计 颜色 衣服 裤子 裙子 款式 风格 时尚 舒适 简约 "
    "可爱 优雅 休闲 运动 宽松 修身 显瘦 面料 棉质 材质 图案 印花 条纹 格子 纯色 领口 袖子 口袋 拉链 纽扣 "
    "春天 夏天 秋天 冬天 早上 晚上 中午 吃饭 喝水 睡觉 跑步 游泳 音乐 电影 书籍 历史 文化 艺术 旅游 美食 "
    "医生 医院 健康 身体 心情 快乐 幸福 成功 失败 努力 希望 梦想 未来 过去 现在 世界 地球 太阳 月亮 星星 "
    "山 水 火 风 雨 雪 花 草 树 鸟 鱼 猫 狗 马 牛 羊 人 大 小 多 少 好 坏 新 旧 高 低 长 短 "
    "的 了 是 在 有 和 不 这 那 就 也 都 而 及 与 着 或 一个 没有 可以 因为 所以 但是 如果 虽然 已经 "
    "请问 帮助 回答 查询 天气预报 温度 度 摄氏度 搜索 工具 调用 结果 参数 函数 返回 错误 成功地"
).split()

EN_WORDS = (
    "the of and to in is it that for you was with on as have be at this from by not are or "
    "what all were we when your can said there use an each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two "
    "more write go see number no way could people my than first water been call who oil its now "
    "find long down day did get come made may part model token train learning rate batch size "
    "weather today tomorrow search query result function tool call python json value error "
    "hello world assistant user system observation answer question please thanks Beijing Shanghai "
    "GPU CPU WebGPU LoRA adapter checkpoint loss gradient optimizer AdamW schedule warmup"
).split()

PUNCT = list("，。！？；：、“”‘’（）《》【】…—·,.!?;:'\"()[]{}<>-_/\\|@#$%^&*+=~`")
EMOJI = ["😀", "😂", "👍", "🎉", "❤️", "🔥", "🚀", "🌟", "👍🏽", "👨‍👩‍👧", "🇨🇳", "🤖", "☀️", "🌧️"]
CODE = [
    "def f(x):\n    return x + 1\n",
    "for i in range(10):\n\tprint(i)\n",
    "const a = [1, 2, 3];\nconsole.log(a.map((x) => x * 2));",
    "if (x > 0) {\n  y = x;\n} else {\n  y = -x;\n}",
    "SELECT name, age FROM users WHERE age >= 18;",
    "{\"key\": \"value\", \"n\": 42}",
    "import numpy as np\narr = np.zeros((3, 4))\n",
]


def number(rng):
    r = rng.random()
    if r < 0.3:
        return str(rng.randint(0, 9999))
    if r < 0.5:
        return f"{rng.randint(1990, 2030)}年{rng.randint(1, 12)}月{rng.randint(1, 28)}日"
    if r < 0.7:
        return f"{rng.uniform(0, 1000):.2f}"
    if r < 0.85:
        return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
    return f"{rng.randint(1, 100)}%"


def cn_sentence(rng):
    parts = []
    for _ in range(rng.randint(3, 14)):
        r = rng.random()
        if r < 0.8:
            parts.append(rng.choice(CN_WORDS))
        elif r < 0.9:
            parts.append(rng.choice("，、；"))
        else:
            parts.append(number(rng))
    return "".join(parts) + rng.choice("。！？…")


def en_sentence(rng):
    words = [rng.choice(EN_WORDS) for _ in range(rng.randint(3, 14))]
    if rng.random() < 0.3:
        words.insert(rng.randint(0, len(words)), number(rng))
    s = " ".join(words)
    s = s[0].upper() + s[1:]
    return s + rng.choice([".", "!", "?", ",", ":"])


def mixed_sentence(rng, max_parts=8):
    parts = []
    for _ in range(rng.randint(2, max_parts)):
        r = rng.random()
        if r < 0.4:
            parts.append(cn_sentence(rng))
        elif r < 0.75:
            parts.append(" " + en_sentence(rng) + " ")
        elif r < 0.85:
            parts.append(rng.choice(EMOJI))
        elif r < 0.95:
            parts.append(rng.choice(PUNCT))
        else:
            parts.append(number(rng))
    return "".join(parts).strip()


def corpus(rng, n):
    lines = []
    for _ in range(n):
        r = rng.random()
        if r < 0.35:
            lines.append(cn_sentence(rng))
        elif r < 0.7:
            lines.append(en_sentence(rng))
        elif r < 0.92:
            lines.append(mixed_sentence(rng))
        else:
            lines.append(rng.choice(CODE).replace("\n", " "))
    return lines


def train(workdir, name, lines, model_type="bpe", **kw):
    path = os.path.join(workdir, name + ".txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    prefix = os.path.join(workdir, name)
    spm.SentencePieceTrainer.train(
        input=path,
        model_prefix=prefix,
        model_type=model_type,
        num_threads=2,
        minloglevel=2,
        shuffle_input_sentence=False,
        **kw,
    )
    return prefix + ".model"


# --- Long texts, generated identically here and in the tests (mulberry32 over a shared alphabet).


def mulberry32(seed):
    state = seed & 0xFFFFFFFF

    def nxt():
        nonlocal state
        state = (state + 0x6D2B79F5) & 0xFFFFFFFF
        t = state
        t = ((t ^ (t >> 15)) * (t | 1)) & 0xFFFFFFFF
        t ^= (t + (((t ^ (t >> 7)) * (t | 61)) & 0xFFFFFFFF)) & 0xFFFFFFFF
        return ((t ^ (t >> 14)) & 0xFFFFFFFF)

    return nxt


def long_text(seed, n_chars, units):
    """Concatenate units picked by the generator until the text reaches n_chars code points."""
    nxt = mulberry32(seed)
    out = []
    length = 0
    while length < n_chars:
        u = units[nxt() % len(units)]
        out.append(u)
        length += len(u)
    return "".join(out)


def special_strings(rng):
    s = [
        "", " ", "  ", "   ", "\t", "\n", "\r\n", " \n ", "\n\n\n", "\t\t  \t", "a", "A", "中", "▁", "▁▁",
        " leading", "trailing ", "  both  ", "multiple   spaces   here", "tab\there", "new\nline",
        "\tindent\n\t\tdeeper", "   \n   ", "x  ", "  x", "a b  c   d    e",
        "<|user|>", "<|assistant|>", "[gMASK]", "sop", "<s>", "</s>", "<unk>", "<pad>", "<0x41>", "<0x0A>",
        "hello<|user|>world", "[MASK][gMASK][sMASK]", "eop sop", "▁hello", "hello▁world", "▁ ▁ ▁",
        "\x00", "\x01\x02\x03", "\x1b[31mred\x1b[0m", "\x7f", "a\x00b", "\x0b\x0c", "\u200b", "\ufeff",
        "\u00a0", "a\u00a0b", "\u3000", "全角\u3000空格", "ＡＢＣ１２３", "①②③", "ﬁ ligature", "㍿",
        "é", "e\u0301", "Å", "Ω", "½", "x²", "™", "…", "〜", "～", "ｶﾀｶﾅ", "한국어", "Привет мир",
        "مرحبا", "שלום", "नमस्ते", "สวัสดี", "Ελληνικά", "日本語のテキスト", "𝕏𝕐𝕑", "𠀀𠀁𠀂", "𝄞",
        "😀", "👍🏽", "👨‍👩‍👧", "🇨🇳", "a😀b", "😀😀😀", "❤️", "\U0010fffd", "\ue000", "\ufffd",
        "12345678901234567890", "3.14159", "-42", "1e-5", "0x1F", "2024年1月1日", "100%",
        "@@", "a@@b", "[SEP]", "x[SEP]y", "@@ @@", "  @@  ", "<br>", "line<br>break", "<br><br>",
    ]
    # Whitespace runs of every kind and length.
    for n in range(1, 9):
        s.append(" " * n)
        s.append("a" + " " * n + "b")
        s.append(" " * n + "中文" + " " * n)
        s.append("\t" * n + "x")
        s.append("\n" * n)
    # Every ASCII control character alone and inside text.
    for c in range(0, 32):
        s.append(chr(c))
        s.append("ab" + chr(c) + "cd")
    return s


def random_unicode(rng):
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x4E00, 0x9FFF),
              (0x3040, 0x30FF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF),
              (0xFF00, 0xFFEF), (0x2000, 0x206F), (0x0, 0x1F)]
    out = []
    for _ in range(rng.randint(1, 30)):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def test_strings(rng, n_generated):
    strings = special_strings(rng)
    for _ in range(n_generated):
        r = rng.random()
        if r < 0.25:
            strings.append(cn_sentence(rng))
        elif r < 0.45:
            strings.append(en_sentence(rng))
        elif r < 0.7:
            strings.append(mixed_sentence(rng, 3))
        elif r < 0.8:
            strings.append(rng.choice(CODE))
        elif r < 0.9:
            strings.append(random_unicode(rng))
        else:
            # Sentences glued with whitespace runs, leading/trailing blanks and newlines.
            pieces = [rng.choice([cn_sentence, en_sentence])(rng) for _ in range(rng.randint(1, 3))]
            seps = [" ", "  ", "\n", "\n\n", "\t", " \n", "   "]
            text = rng.choice(["", " ", "  ", "\n"]) + rng.choice(seps).join(pieces) + rng.choice(["", " ", "\n", "  "])
            strings.append(text)
    return strings


def encode_cases(sp, strings):
    return [[s, sp.encode(s)] for s in strings]


def decode_cases(sp, rng, n):
    """Arbitrary id sequences (byte pieces that do not form UTF-8, controls, <unk>) and their decodes."""
    size = sp.get_piece_size()
    byte_ids = [i for i in range(size) if sp.is_byte(i)]
    cases = []
    for _ in range(n):
        ids = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.4 and byte_ids:
                ids.append(rng.choice(byte_ids))
            elif r < 0.5:
                ids.append(rng.randint(0, 3))
            else:
                ids.append(rng.randint(0, size - 1))
        cases.append([ids, sp.decode(ids)])
    return cases


def write_gz(name, data):
    """gzip with a zero timestamp, so that unchanged content gives identical files."""
    with open(os.path.join(OUT, name), "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9,
                                                                   mtime=0, filename="") as f:
        f.write(data)


def fnv1a(text):
    """32-bit FNV-1a of the UTF-8 bytes: a long decode is compared by hash, not stored."""
    h = 0x811C9DC5
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def model_cases(name, sp, strings, rng, long_seeds, units):
    ids = [sp.encode(t) for t in strings]
    decoded = {}
    for i, (t, x) in enumerate(zip(strings, ids)):
        d = sp.decode(x)
        if d != t:
            decoded[str(i)] = d
    longs = []
    for seed, n in long_seeds:
        text = long_text(seed, n, units)
        x = sp.encode(text)
        d = sp.decode(x)
        longs.append({"seed": seed, "chars": n, "ids": x, "decoded_fnv1a": fnv1a(d)})
    return {
        "model": name,
        "vocab_size": sp.get_piece_size(),
        "ids": ids,
        "decoded": decoded,
        "id_decodes": decode_cases(sp, rng, 120),
        "long": longs,
    }


# --- ChatGLM3 rules, restated from finetune_demo and tokenization_chatglm.py.

TOOL_DEFINITION_PREFIX = "Answer the following questions as best as you can. You have access to the following tools:\n"
SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]


class GLM:
    def __init__(self, sp):
        self.sp = sp
        self.n = sp.vocab_size()
        self.special = {t: self.n + i for i, t in enumerate(SPECIALS)}
        self.index_special = {v: k for k, v in self.special.items()}
        self.eos = sp.eos_id()

    def build_single_message(self, role, metadata, message):
        return [self.special[f"<|{role}|>"]] + self.sp.encode(f"{metadata}\n") + self.sp.encode(message)

    def convert_id_to_token(self, index):
        if index in self.index_special:
            return self.index_special[index]
        if index in (self.eos, self.sp.bos_id(), self.sp.unk_id()) or index < 0 or index > self.sp.vocab_size():
            return ""
        return self.sp.id_to_piece(index)

    def decode(self, ids):
        # PreTrainedTokenizer.decode -> convert_ids_to_tokens -> convert_tokens_to_string (DecodePieces).
        return self.sp.decode_pieces([self.convert_id_to_token(i) for i in ids])


def tool_call(parameters):
    args = ", ".join(f"{k}={v!r}" for k, v in parameters.items())
    return f"```python\ntool_call({args})\n```"


def messages_of(glm, conv):
    """format_conversation: (role, ids, loss) per message."""
    out = []
    if "tools" in conv:
        content = TOOL_DEFINITION_PREFIX + json.dumps(conv["tools"], indent=4, ensure_ascii=False)
        out.append(("system", glm.build_single_message("system", "", content), False))
    for m in conv["conversations"]:
        role = m["role"]
        if role == "tool":
            out.append(("assistant", glm.build_single_message("assistant", m["name"], tool_call(m["parameters"])),
                        m.get("loss", True)))
            obs = m.get("observation")
            if not isinstance(obs, str):
                obs = json.dumps(obs, ensure_ascii=False)
            out.append(("observation", glm.build_single_message("observation", "", obs), False))
        else:
            loss = False if role in ("system", "user") else m.get("loss", True)
            out.append((role, glm.build_single_message(role, "", m["content"]), loss))
    return out


def train_record(glm, msgs, max_in, max_out):
    input_ids = [glm.special["[gMASK]"], glm.special["sop"]]
    masks = [False, False]
    for _, ids, loss in msgs:
        input_ids += ids
        masks += [loss] * len(ids)
    input_ids.append(glm.eos)
    masks = [False, *masks]
    labels = [i if m else -100 for i, m in zip(input_ids, masks)]
    max_length = max_in + max_out + 1
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}


def eval_records(glm, msgs, max_in, max_out):
    input_ids = [glm.special["[gMASK]"], glm.special["sop"]]
    out = []
    for role, ids, _ in msgs:
        if len(input_ids) >= max_in:
            break
        if role == "assistant":
            prompt, output = ids[:1], ids[1:] + [glm.eos]
            out.append({"input_ids": input_ids[:max_in] + prompt[:1], "output_ids": output[:max_out]})
        input_ids = input_ids + ids
    return out


def random_value(rng, depth=0):
    r = rng.random()
    if depth > 2 or r < 0.25:
        return rng.choice(["北京", "Shanghai", "it's", 'say "hi"', "both ' and \"", "tab\tnew\nline", "back\\slash",
                           "emoji 😀", "", "\x01ctrl", "é", "\u200b", "\u00a0nbsp", "ünï", "x" * 30])
    if r < 0.4:
        return rng.choice([0, 1, -7, 42, 10**12, 2**53 - 1])
    if r < 0.5:
        return rng.choice([0.5, -1.25, 3.14159, 1e-05, 2.5e-10, 1.5e+300, 0.1, 123456.789, 1.7976931348623157e308])
    if r < 0.6:
        return rng.choice([True, False, None])
    if r < 0.8:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["city", "温度", "unit", "query", "items", "nested", "a", "b_2", "key with space", "ключ"]
    return {rng.choice(keys) + str(i): random_value(rng, depth + 1) for i in range(rng.randint(0, 3))}


def make_conversations(rng):
    convs = []
    tools = [
        {"name": "get_weather", "description": "查询某个城市的天气",
         "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "城市名"}},
                        "required": ["city"]}},
        {"name": "search", "description": "Search the web.", "parameters": {"query": {"type": "string"},
                                                                          "limit": 10, "ratio": 0.75,
                                                                          "flags": [True, False, None], "empty": {},
                                                                          "list": []}},
    ]
    for i in range(60):
        conv = {"conversations": []}
        kind = i % 6
        if kind == 0 or rng.random() < 0.2:
            conv["conversations"].append({"role": "system", "content": rng.choice(
                ["You are a helpful assistant.", "你是一个乐于助人的助手。", "  Be brief.\n", "系统提示 <|user|> [gMASK]"])})
        turns = rng.randint(1, 4)
        if kind == 3:
            conv["tools"] = rng.choice([tools, tools[:1], [tools[1]], []])
        for t in range(turns):
            conv["conversations"].append({"role": "user", "content": rng.choice([cn_sentence, en_sentence, mixed_sentence])(rng)})
            if kind in (3, 4) and rng.random() < 0.7:
                params = {"city": rng.choice(["北京", "Paris"])} if rng.random() < 0.5 else \
                    {f"k{j}": random_value(rng) for j in range(rng.randint(0, 4))}
                msg = {"role": "tool", "name": rng.choice(["get_weather", "search", "calc"]), "parameters": params,
                       "observation": random_value(rng)}
                if rng.random() < 0.2:
                    msg["loss"] = False
                conv["conversations"].append(msg)
            content = rng.choice([cn_sentence, en_sentence, mixed_sentence])(rng)
            if kind == 5 and rng.random() < 0.3:
                content = " ".join(cn_sentence(rng) for _ in range(15))  # long answers for truncation
            msg = {"role": "assistant", "content": content}
            if kind == 2 and t < turns - 1:
                msg["loss"] = False
            if kind == 1 and rng.random() < 0.3:
                msg["loss"] = True
            conv["conversations"].append(msg)
        convs.append(conv)
    # Hand-written edge cases.
    convs.append({"conversations": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]})
    convs.append({"conversations": [{"role": "user", "content": "<|user|>hi<|assistant|>"},
                                    {"role": "assistant", "content": "[gMASK]sop<|observation|>"}]})
    convs.append({"tools": [{"name": "数学", "参数": {"x": 1.5}}],
                  "conversations": [{"role": "user", "content": "1+1?"},
                                    {"role": "tool", "name": "calc", "parameters": {},
                                     "observation": {"result": 2, "text": "二", "list": [1, [2, [3]]], "f": 2.5}},
                                    {"role": "tool", "name": "calc", "parameters": {"expr": "1+1", "quote": "it's \"x\""},
                                     "observation": "plain string observation"},
                                    {"role": "assistant", "content": "答案是 2。"}]})
    return convs


def conversation_cases(sp, rng):
    glm = GLM(sp)
    convs = make_conversations(rng)
    limits = [(1024, 1024), (64, 128), (20, 10), (3, 5)]
    cases = []
    for conv in convs:
        msgs = messages_of(glm, conv)
        case = {
            "conversation": conv,
            "messages": [{"role": r, "ids": ids, "loss": loss} for r, ids, loss in msgs],
            "train": {}, "eval": {},
        }
        for max_in, max_out in limits:
            key = f"{max_in},{max_out}"
            case["train"][key] = train_record(glm, msgs, max_in, max_out)
            case["eval"][key] = eval_records(glm, msgs, max_in, max_out)
        full = case["train"]["1024,1024"]["input_ids"]
        case["decoded"] = glm.decode(full)
        case["decoded_tokens"] = [glm.index_special[t] if t in glm.index_special else glm.decode([t]) for t in full[:40]]
        cases.append(case)
    # Decodes of id lists with special ids, out-of-range ids and pad/eos in odd places.
    n = glm.n
    odd = [[n + 7, 30, 31, 2, n + 6], [0, 0, n + 1, n + 3], [n + 9, n + 20, 5], [n + 5, 3, 4], [2], [],
           [n + 6] + sp.encode(" hello world") + [n + 7] + sp.encode("你好") + [2]]
    chat = {
        "history": [{"role": "system", "content": "Be nice.",
                     "tools": [{"name": "get_weather", "description": "天气", "parameters": {"city": "str"}}]},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "metadata": "get_weather", "content": tool_call({"city": "北京"})},
                    {"role": "observation", "content": json.dumps({"temp": 20.5}, ensure_ascii=False)},
                    {"role": "assistant", "content": "hello"}],
        "query": "天气如何？",
    }
    # build_chat_input of chatglm3-6b's tokenizer.
    chat_ids = [glm.special["[gMASK]"], glm.special["sop"]]
    for item in chat["history"]:
        content = item["content"]
        if item["role"] == "system" and "tools" in item:
            content = content + "\n" + json.dumps(item["tools"], indent=4, ensure_ascii=False)
        chat_ids += glm.build_single_message(item["role"], item.get("metadata", ""), content)
    chat_ids += glm.build_single_message("user", "", chat["query"]) + [glm.special["<|assistant|>"]]
    chat["ids"] = chat_ids
    values = [random_value(rng) for _ in range(150)] + [
        {"name": "f", "parameters": {"a": [1, {"b": None}], "c": {}}}, [], {}, "", "ü\u2028\x7f\x1f",
        0.0001, 1e-05, 1e16, 1.5e16, 123456789012345.6, -2.5, 5e-324, 1e22, [[[]]], {"k": [{}]},
        "\xa0\xad\u200b\u3000\ue000\U0001f600\U000e0001\u0378", "'", '"', "'\"", "\\",
    ]
    renderings = [[v, json.dumps(v, indent=4, ensure_ascii=False), json.dumps(v, ensure_ascii=False), repr(v)]
                  for v in values]
    return {
        "n": n,
        "limits": limits,
        "renderings": renderings,
        "cases": cases,
        "odd_decodes": [[ids, glm.decode(ids)] for ids in odd],
        "chat": chat,
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = random.Random(20240601)
    # A fixed work path: it is recorded in each model's trainer_spec, so reruns give identical files.
    work = os.path.join(tempfile.gettempdir(), "glm_finetune_tokenizer_fixtures")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    try:
        lines = corpus(rng, 12000)
        glm_model = train(
            work, "glm_bpe", lines, vocab_size=3000, character_coverage=0.995, byte_fallback=True,
            normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
            split_digits=True, allow_whitespace_only_pieces=True, max_sentencepiece_length=16,
        )
        nfkc_model = train(
            work, "nfkc_bpe", lines[:6000], vocab_size=1200, character_coverage=0.99, byte_fallback=True,
            normalization_rule_name="nmt_nfkc", add_dummy_prefix=True, remove_extra_whitespaces=True,
            user_defined_symbols=["@@", "[SEP]"],
        )
        plain_model = train(
            work, "plain_bpe", lines[:3000], vocab_size=600, character_coverage=0.98, byte_fallback=False,
            normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        )
        unigram_model = train(
            work, "unigram", lines[:5000], model_type="unigram", vocab_size=1500, character_coverage=0.995,
            byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=True,
            remove_extra_whitespaces=False, user_defined_symbols=["@@", "[SEP]", "<br>"],
        )
        for p in (glm_model, plain_model, unigram_model):
            shutil.copy(p, os.path.join(OUT, os.path.basename(p)))
        # The nmt_nfkc charsmap alone is ~240 KB; it is stored compressed.
        with open(nfkc_model, "rb") as src:
            write_gz("nfkc_bpe.model.gz", src.read())
    finally:
        shutil.rmtree(work)

    units = sorted(set(CN_WORDS + [w + " " for w in EN_WORDS] + PUNCT + EMOJI + [" ", "  ", "\n", "\t", "    "]
                       + [str(d) for d in range(10)] + ["é", "Ω", "𠀀", "\u00a0", "ｶ"]))
    long_seeds = [(1, 10000), (2, 10000), (3, 12000)]
    sp_glm = spm.SentencePieceProcessor(model_file=os.path.join(OUT, "glm_bpe.model"))
    with gzip.open(os.path.join(OUT, "nfkc_bpe.model.gz"), "rb") as f:
        sp_nfkc = spm.SentencePieceProcessor(model_proto=f.read())
    sp_plain = spm.SentencePieceProcessor(model_file=os.path.join(OUT, "plain_bpe.model"))
    sp_unigram = spm.SentencePieceProcessor(model_file=os.path.join(OUT, "unigram.model"))
    strings = test_strings(random.Random(1), 1900)
    encode = {
        "units": units,
        "strings": strings,
        "models": [
            model_cases("glm_bpe.model", sp_glm, strings, random.Random(2), long_seeds, units),
            model_cases("nfkc_bpe.model.gz", sp_nfkc, strings[:800], random.Random(3), long_seeds[:1], units),
            model_cases("plain_bpe.model", sp_plain, strings[:400], random.Random(4), long_seeds[:1], units),
            model_cases("unigram.model", sp_unigram, strings[:500], random.Random(5), long_seeds[:1], units),
        ],
    }
    dump = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    write_gz("encode.json.gz", dump(encode))
    write_gz("conversations.json.gz", dump(conversation_cases(sp_glm, random.Random(4))))
    n_strings = sum(len(m["ids"]) + len(m["long"]) for m in encode["models"])
    print(f"wrote {OUT}: {n_strings} encode cases", file=sys.stderr)


if __name__ == "__main__":
    main()
