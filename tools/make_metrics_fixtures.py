"""Golden vectors for lib/metrics: jieba segmentations, ROUGE and BLEU-4.

Run from the repository root:

    .venv-tools/bin/python tools/make_metrics_fixtures.py

Segmentation is the real Python jieba 0.42.1 (Debian's python3-jieba, found on
/usr/lib/python3/dist-packages), BLEU the real NLTK `sentence_bleu` with
`SmoothingFunction().method3`. `rouge_chinese` is not in the local package
mirror, so ROUGE comes from `rouge_chinese_scores` below, a re-statement of
rouge_chinese 1.0.3's `Rouge().get_scores` (rouge_chinese/rouge.py and
rouge_score.py), checked at start-up against the package's own test data.

Writes tests/fixtures/metrics/pairs.json and segments.json.
"""

import json
import math
import os
import random
import re
import sys

sys.path.append("/usr/lib/python3/dist-packages")  # Debian's jieba; venv packages keep priority

import jieba  # noqa: E402
import nltk  # noqa: E402
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu  # noqa: E402

jieba.setLogLevel(60)
OUT = os.path.join("tests", "fixtures", "metrics")
SEED = 20240611


# --- rouge_chinese 1.0.3, restated -------------------------------------------------------

def cut_sent(para):
    # The package's four splitting rules, applied in order, then rstrip and split on newlines.
    para = re.sub("([。！？\\?])([^”’])", r"\1\n\2", para)
    para = re.sub("(\\.{6})([^”’])", r"\1\n\2", para)
    para = re.sub("(\\…{2})([^”’])", r"\1\n\2", para)
    para = re.sub("([。！？\\?][”’])([^，。！？\\?])", r"\1\n\2", para)
    return para.rstrip().split("\n")


def sentences_of(text):
    # The length filter runs on the raw sentence, before whitespace is collapsed.
    return [" ".join(s.split()) for s in cut_sent(text) if len(s) > 0]


def words_of(sentences):
    out = []
    for s in sentences:
        out.extend(s.split(" "))
    return out


def distinct_ngrams(words, n):
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def f_p_r(evaluated, reference, overlap):
    p = 0.0 if evaluated == 0 else overlap / evaluated
    r = 0.0 if reference == 0 else overlap / reference
    return {"f": 2.0 * ((p * r) / (p + r + 1e-8)), "p": p, "r": r}


def lcs_len(x, y):
    prev = [0] * (len(y) + 1)
    for i in range(1, len(x) + 1):
        cur = [0] * (len(y) + 1)
        for j in range(1, len(y) + 1):
            cur[j] = prev[j - 1] + 1 if x[i - 1] == y[j - 1] else max(prev[j], cur[j - 1])
        prev = cur
    return prev[len(y)]


def rouge_chinese_scores(hyp, ref):
    """Rouge().get_scores(hyp, ref)[0], or None where the package raises ValueError."""
    hs, rs = sentences_of(hyp), sentences_of(ref)
    if not hs or not rs:
        return None
    hw, rw = words_of(hs), words_of(rs)
    out = {}
    for n in (1, 2):
        he, re_ = distinct_ngrams(hw, n), distinct_ngrams(rw, n)
        out["rouge-%d" % n] = f_p_r(len(he), len(re_), len(he & re_))
    llcs = lcs_len(rw, hw)
    r, p = llcs / len(rw), llcs / len(hw)
    out["rouge-l"] = {"f": 2.0 * ((p * r) / (p + r + 1e-8)), "p": p, "r": r}
    return out


def self_check():
    # Entry 2 of rouge_chinese's tests/data.json (ROUGE-1/2 unchanged since pltrdy's rouge).
    hyp = ("a u.s. citizen was killed in a a shootout in mississippi in #### he was shot in the "
           "head and died in a batht ub in omaha , louisiana authorities are investigating the death")
    ref = ("the fugitive who killed the marshal was \" extremely dangerous , \" u.s. marshals "
           "service director says deputy u.s. marshal josie wells , ## , died after trying to "
           "arrest jamie croom \" before he 'd go back to jail , he said , he 'd rather be dead, "
           "\" croom 's sister says")
    s = rouge_chinese_scores(hyp, ref)
    assert s["rouge-1"] == {"f": 0.2258064468678461, "p": 0.2916666666666667, "r": 0.18421052631578946}, s
    assert s["rouge-2"] == {"f": 0.0, "p": 0.0, "r": 0.0}, s


# --- the demo's compute_metrics, per example ------------------------------------------------

def score(prediction, label):
    pred_txt, label_txt = prediction.strip(), label.strip()
    pred_tokens = list(jieba.cut(pred_txt))
    label_tokens = list(jieba.cut(label_txt))
    rouge = None
    if pred_tokens and label_tokens:
        rouge = rouge_chinese_scores(" ".join(pred_tokens), " ".join(label_tokens))
    if rouge is None:
        # Upstream raises here; lib/metrics scores the example 0.
        scores = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}
    else:
        scores = {k: round(v["f"] * 100, 4) for k, v in rouge.items()}
        scores["bleu-4"] = float(sentence_bleu(
            [label_tokens], pred_tokens, smoothing_function=SmoothingFunction().method3))
    return {
        "prediction": prediction,
        "label": label,
        "pred_tokens": pred_tokens,
        "label_tokens": label_tokens,
        "rouge": rouge,
        "scores": scores,
    }


# --- inputs -----------------------------------------------------------------------------------

ZH = [
    "这款连衣裙采用印花设计，显瘦又文艺。",
    "简约的圆领设计，修饰脸型，穿着舒适透气。",
    "宽松的版型不挑身材，搭配牛仔裤就很好看！",
    "我来到北京清华大学",
    "他来到了网易杭研大厦",
    "小明硕士毕业于中国科学院计算所，后在日本京都大学深造",
    "今天天气真不错，阳光明媚，万里无云。",
    "结婚的和尚未结婚的",
    "工信处女干事每月经过下属科室都要亲口交代24口交换机等技术性器件的安装工作",
    "永和服装饰品有限公司",
    "我们中出了一个叛徒",
    "南京市长江大桥",
    "吴国忠臣伍子胥",
    "这件外套是羊毛材质的，保暖性很好，适合秋冬季节穿着。",
    "撞色的条纹图案增添了几分活力，让你在人群中脱颖而出？",
    "他说：“明天见。”然后就走了。",
    "真的吗？？真的！！",
    "等一下......好的……我知道了。",
    "蕾丝拼接的袖口，精致又优雅；下摆的荷叶边更显灵动。",
    "这条裤子的面料是棉麻的，透气性好，夏天穿着很凉快",
    "韩版的小香风外套，搭配一条半身裙，气质满满",
    "鞋面采用网布材质，轻便透气，鞋底防滑耐磨。",
    "李小福是创新办主任也是云计算方面的专家",
    "八一双鹿更名为八一南昌篮球队！",
    "江州市长江大桥参加了长江大桥的通车仪式",
    "中国的首都是北京，上海是中国最大的城市之一。",
    "人工智能正在改变我们的生活方式",
    "请问去火车站怎么走",
    "这部电影讲述了一个关于友谊和成长的故事",
    "价格实惠，性价比高，值得购买。",
]
EN = [
    "the cat is on the mat",
    "there is a cat on the mat",
    "It is a guide to action which ensures that the military always obeys the commands of the party",
    "It is a guide to action that ensures that the military will forever heed Party commands",
    "Hello world! This is a test.",
    "the the the the the the the",
    "A simple sentence, with punctuation; and more?",
    "GPU-v2 runs at 3.14 GHz and 100% load",
    "Mr. Smith went to Washington... and stayed there.",
    "fine-tuning ChatGLM3-6B with LoRA and P-Tuning v2",
]
MIXED = [
    "这款T恤采用100%纯棉面料，size M和L都有货",
    "我用iPhone 15拍了一张照片，效果很好！",
    "ChatGLM3是一个中英双语的对话模型，支持tool calling。",
    "GPU显存24GB，batch size设为4",
    "买了2件XL码的外套，价格是299元",
    "今天学习了Python和JavaScript，感觉不错",
    "版型#显瘦*风格#文艺",
    "温度是36.5℃，湿度80%",
    "Email: test@example.com 电话：010-12345678",
    "🙂好开心😀 emoji测试",
]
SPECIAL = [
    "第一行\n第二行\n\n第三行",
    "制表符\t分隔\t的\t文本",
    "全角　空格　分隔",
    "  前后有空格  ",
    "Windows换行\r\n第二行",
    "单引号’后面和双引号”后面",
    "？开头是问号",
    "。",
    "好",
    "a",
    "......",
    "……",
    "叕犇骉麤",
    "㐀㐁 扩展A区汉字",
    "鿕鿖鿗鿿 新增汉字",
    "ＡＢＣ全角字母１２３",
    "x\u200by 零宽空格",
    "\u3000开头全角空格",
]
LATIN = [
    "版本v1.2.3发布了，3.14%的用户升级",
    "a-1%的概率，x-1-2-3的序列",
    "C++和C#都是编程语言，AT&T公司",
    "打5.5折，100%纯棉，iPhone15Pro-Max",
    "--++##&&__%%..",
    "abc_def和ABC-123以及7-11便利店",
    "型号GT-2000，编号No.5",
    "价格￥199-299元",
]


def demo_records(n=40):
    # The embedded demo's dev set: what the demo pipelines actually score.
    with open(os.path.join("data", "demo", "dev.json"), encoding="utf-8") as f:
        return [json.loads(line) for line in f][:n]


def segment_sentences():
    # Sentences whose segmentation is compared token by token.
    demo = [r["summary"] for r in demo_records()] + [r["content"] for r in demo_records(10)]
    return ZH + EN + MIXED + SPECIAL + LATIN + demo + [
        "不挑身材的宽松版型，让你穿出随性自在的感觉，时尚又百搭。",
        "小个子女生也能轻松驾驭的高腰设计，拉长腿部线条。",
        "黑色的经典配色，低调而不失格调，适合各种场合。",
        "这是一个用于测试分词结果的很长很长的句子，包括很多不同类型的词语，比如名词、动词、形容词和副词等等。",
    ]


def long_text(rng, n):
    return "".join(rng.choice(ZH) for _ in range(n))


def make_pairs():
    rng = random.Random(SEED)
    pool = ZH + EN + MIXED
    pairs = []
    # Every sentence against itself: perfect scores.
    for s in ZH[:10] + EN[:4] + MIXED[:4]:
        pairs.append((s, s))
    # Random pairs within each language.
    for lst, k in ((ZH, 50), (EN, 15), (MIXED, 15)):
        for _ in range(k):
            pairs.append((rng.choice(lst), rng.choice(lst)))
    # Perturbed predictions: drop, duplicate or swap tokens of the label.
    for _ in range(50):
        label = rng.choice(pool)
        toks = list(jieba.cut(label))
        op = rng.randrange(4)
        if op == 0 and len(toks) > 1:
            del toks[rng.randrange(len(toks))]
        elif op == 1:
            i = rng.randrange(len(toks))
            toks.insert(i, toks[i])
        elif op == 2 and len(toks) > 1:
            i, j = rng.randrange(len(toks)), rng.randrange(len(toks))
            toks[i], toks[j] = toks[j], toks[i]
        else:
            toks = toks[: max(1, len(toks) // 2)]
        pairs.append(("".join(toks), label))
    # Empty and blank predictions and labels.
    for s in ZH[:4] + EN[:2]:
        pairs.append(("", s))
        pairs.append(("   \n ", s))
        pairs.append((s, ""))
    pairs.append(("", ""))
    # One-token predictions.
    for s in ZH[:6] + EN[:3]:
        pairs.append((list(jieba.cut(s))[0], s))
        pairs.append(("好", s))
        pairs.append(("。", s))
    # Repeats.
    for s in ["好的", "the", "非常", "裙"]:
        for n in (2, 5, 12):
            pairs.append((s * n if s != "the" else " ".join([s] * n), rng.choice(pool)))
    pairs.append(("好好好好好好", "好好"))
    pairs.append(("the the the the the the the", "the cat is on the mat"))
    # Long texts.
    for _ in range(8):
        a, b = long_text(rng, rng.randrange(4, 9)), long_text(rng, rng.randrange(4, 9))
        pairs.append((a, b))
    pairs.append((long_text(rng, 6), long_text(rng, 1)))
    # Whitespace, newlines and sentence-splitter edge cases.
    for s in SPECIAL:
        pairs.append((s, rng.choice(SPECIAL)))
        pairs.append((rng.choice(pool), s))
    pairs.append(("第一行\n \n第二行", "第一行\n第二行"))
    pairs.append(("他说：“好。”我说：“不好！”", "他说：“好。”"))
    pairs.append(("什么？！真的？", "什么？真的？"))
    for s in LATIN:
        pairs.append((s, rng.choice(LATIN)))
    # Demo summaries against each other: a half-trained model's typical output.
    demo = [r["summary"] for r in demo_records()]
    for i in range(0, 20, 2):
        pairs.append((demo[i], demo[i + 1]))
    return pairs


def write_listing(path, head, key, items):
    # One item per line: small, and diffs show which case changed.
    dumps = lambda v: json.dumps(v, ensure_ascii=False)
    with open(path, "w", encoding="utf-8") as f:
        f.write("{" + ", ".join("%s: %s" % (dumps(k), dumps(v)) for k, v in head.items()))
        f.write(", %s: [\n" % dumps(key))
        f.write(",\n".join(dumps(i) for i in items))
        f.write("\n]}\n")


def main():
    self_check()
    pairs = [score(p, l) for p, l in make_pairs()]
    n = len(pairs)
    means = {k: sum(p["scores"][k] for p in pairs) / n for k in ("rouge-1", "rouge-2", "rouge-l", "bleu-4")}
    segments = [{"text": s, "tokens": list(jieba.cut(s))} for s in segment_sentences()]
    for p in pairs:
        for key in ("prediction", "label"):
            segments.append({"text": p[key].strip(), "tokens": p["pred_tokens" if key == "prediction" else "label_tokens"]})
    seen, uniq = set(), []
    for s in segments:
        if s["text"] not in seen:
            seen.add(s["text"])
            uniq.append(s)
    meta = {
        "generator": "tools/make_metrics_fixtures.py",
        "jieba": jieba.__version__,
        "nltk": nltk.__version__,
        "rouge": "rouge_chinese 1.0.3 algorithm, restated in the generator",
    }
    os.makedirs(OUT, exist_ok=True)
    write_listing(os.path.join(OUT, "pairs.json"), {"meta": meta, "count": n, "means": means}, "pairs", pairs)
    write_listing(os.path.join(OUT, "segments.json"), {"meta": meta}, "segments", uniq)
    print(json.dumps({"pairs": n, "segments": len(uniq), "means": means}))


if __name__ == "__main__":
    main()
