/**
 * The embedded demo data set: AdvertiseGen-style records
 * `{"content": "类型#裙*版型#显瘦*风格#文艺", "summary": "..."}`, one JSON object
 * per line in `train.json` and `dev.json`, as upstream AdvertiseGen ships them.
 *
 * The summary is a learnable function of the attributes: every attribute value
 * has one fixed phrase, the phrases appear in the attribute order of the
 * content, framed by an opening that depends on the garment type and a closing
 * that depends on the style (one of two, picked at random: the only variety).
 * A tiny model trained for a few hundred steps picks this up, so ROUGE and
 * BLEU after training are far above their values before it.
 *
 *   deno run -A data/make_demo.ts [--out data/demo] [--seed 42] [--train 2000] [--dev 100]
 *        [--pretrain]
 *
 * --pretrain writes the demo base model's pretraining corpus instead
 * (`makePretrain`; `data/make_demo_model.ts` uses it).
 *
 * Output depends only on the flags: the same seed writes the same bytes.
 */
import { writeFileAtomic } from "../lib/atomic.ts";
import { runCli, UserError } from "../lib/errors.ts";

export interface DemoRecord {
  content: string;
  summary: string;
}

/** Attribute → value → phrase. Order here is the order in content and summary. */
const PHRASES: Record<string, Record<string, string>> = {
  版型: {
    显瘦: "显瘦的版型修饰身形",
    宽松: "宽松的版型不挑身材",
    修身: "修身的剪裁勾勒曲线",
    直筒: "直筒廓形利落大方",
    A字: "A字版型遮住小肚腩",
  },
  材质: {
    棉: "纯棉面料亲肤透气",
    牛仔布: "牛仔布挺括耐穿",
    雪纺: "雪纺面料轻盈飘逸",
    针织: "针织面料柔软舒适",
    羊毛: "羊毛材质温暖厚实",
    真丝: "真丝面料光泽柔和",
    皮革: "皮革材质质感高级",
    网布: "网布材质轻便透气",
  },
  颜色: {
    白色: "白色清爽干净",
    黑色: "黑色经典百搭",
    红色: "红色热情亮眼",
    蓝色: "蓝色沉静优雅",
    粉色: "粉色少女感十足",
    绿色: "绿色清新自然",
    灰色: "灰色低调耐看",
    卡其色: "卡其色温柔复古",
  },
  风格: {
    文艺: "文艺气息浓郁",
    简约: "简约风格大方",
    街头: "街头感满满",
    复古: "复古韵味十足",
    清新: "清新风格减龄",
    甜美: "甜美风格可爱",
    通勤: "通勤风格干练",
    休闲: "休闲风格随性",
  },
  图案: {
    印花: "精致印花点缀其间",
    条纹: "经典条纹富有层次",
    格子: "格子图案尽显学院风",
    纯色: "纯色设计百搭耐看",
    刺绣: "细腻刺绣彰显质感",
    波点: "俏皮波点活泼灵动",
  },
  领型: {
    圆领: "圆领修饰脸型",
    V领: "V领拉长颈部线条",
    翻领: "翻领干练有型",
    立领: "立领精神挺拔",
    娃娃领: "娃娃领乖巧减龄",
  },
  袖长: {
    短袖: "短袖清凉舒适",
    长袖: "长袖保暖贴心",
    七分袖: "七分袖露出纤细手腕",
    无袖: "无袖设计清爽利落",
  },
  裙长: {
    短裙: "短款裙摆显腿长",
    中长裙: "中长裙摆优雅知性",
    长裙: "长裙飘逸有仙气",
  },
  裤长: {
    九分裤: "九分裤长露出脚踝",
    长裤: "长裤包裹双腿",
    短裤: "短裤清凉活力",
  },
  裤型: {
    阔腿裤: "阔腿裤型遮肉显高",
    直筒裤: "直筒裤型修饰腿型",
    小脚裤: "小脚裤型利落精神",
  },
  衣长: {
    短款: "短款设计提高腰线",
    中长款: "中长款遮臀显瘦",
    长款: "长款设计气场全开",
  },
  鞋跟: {
    平跟: "平跟走路不累脚",
    高跟: "高跟拉长腿部比例",
    坡跟: "坡跟稳当又增高",
  },
};

/** Garment type → its opening and the attributes it can carry. */
const TYPES: Record<string, { opening: string; attrs: string[] }> = {
  裙: {
    opening: "这款连衣裙",
    attrs: ["版型", "材质", "颜色", "风格", "图案", "领型", "袖长", "裙长"],
  },
  上衣: {
    opening: "这款上衣",
    attrs: ["版型", "材质", "颜色", "风格", "图案", "领型", "袖长", "衣长"],
  },
  裤: { opening: "这条裤子", attrs: ["版型", "材质", "颜色", "风格", "图案", "裤长", "裤型"] },
  外套: { opening: "这件外套", attrs: ["版型", "材质", "颜色", "风格", "图案", "领型", "衣长"] },
  鞋: { opening: "这双鞋子", attrs: ["材质", "颜色", "风格", "图案", "鞋跟"] },
};

/** Style → two closings (the controlled variety); no style → the generic pair. */
const CLOSINGS: Record<string, [string, string]> = {
  文艺: ["尽显文艺女孩的气质", "文艺范儿满分"],
  简约: ["简单又耐看", "日常百搭不出错"],
  街头: ["轻松穿出潮流感", "酷感十足"],
  复古: ["穿出复古港风", "充满年代感"],
  清新: ["清爽又减龄", "夏日必备单品"],
  甜美: ["甜美又俏皮", "约会穿刚刚好"],
  通勤: ["上班穿很得体", "职场女性必备"],
  休闲: ["周末出游很合适", "轻松又舒适"],
  "": ["上身效果很好", "值得入手"],
};

/** mulberry32: small, fast, and the same on every platform. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)];
}

/** One record: a type, 3–5 of its attributes (in canonical order) and the summary they imply. */
export function makeRecord(r: () => number): DemoRecord {
  const type = pick(r, Object.keys(TYPES));
  const { attrs } = TYPES[type];
  const count = 3 + Math.floor(r() * 3);
  const chosen = new Set<string>();
  while (chosen.size < Math.min(count, attrs.length)) chosen.add(pick(r, attrs));
  const ordered = attrs.filter((a) => chosen.has(a));
  const values = ordered.map((a) => pick(r, Object.keys(PHRASES[a])));
  const content = ["类型#" + type, ...ordered.map((a, i) => `${a}#${values[i]}`)].join("*");
  return { content, summary: summaryFor(content, r() < 0.5 ? 0 : 1) };
}

/**
 * The summary a content implies, given which of the style's two closings is
 * used: the whole of the data set's "knowledge", and what a trained model
 * should reproduce.
 */
export function summaryFor(content: string, variant: 0 | 1): string {
  const pairs = content.split("*").map((kv) => kv.split("#"));
  const [[typeKey, type], ...rest] = pairs;
  if (typeKey !== "类型" || !(type in TYPES)) throw new Error(`not a demo content: ${content}`);
  const phrases = rest.map(([a, v]) => {
    const phrase = PHRASES[a]?.[v];
    if (phrase === undefined) throw new Error(`not a demo attribute: ${a}#${v}`);
    return phrase;
  });
  const style = rest.find(([a]) => a === "风格")?.[1] ?? "";
  return `${TYPES[type].opening}${phrases.join("，")}，${CLOSINGS[style][variant]}。`;
}

/**
 * The demo base model's pretraining text: the same contents and the same
 * attribute phrases, written another way. The opening names the type as the
 * content does ("这款" + type), the phrases come in a random order, and the
 * closing is drawn from all styles' closings. A model trained on it knows the
 * words and phrases but not the demo's templates (type openings, content
 * order, style closings), which is what the demo fine-tune then has to teach.
 */
export function pretrainSummaryFor(content: string, r: () => number): string {
  const pairs = content.split("*").map((kv) => kv.split("#"));
  const [[typeKey, type], ...rest] = pairs;
  if (typeKey !== "类型" || !(type in TYPES)) throw new Error(`not a demo content: ${content}`);
  const phrases = rest.map(([a, v]) => {
    const phrase = PHRASES[a]?.[v];
    if (phrase === undefined) throw new Error(`not a demo attribute: ${a}#${v}`);
    return phrase;
  });
  for (let i = phrases.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [phrases[i], phrases[j]] = [phrases[j], phrases[i]];
  }
  const closing = pick(r, Object.values(CLOSINGS).flat());
  return `这款${type}${phrases.join("，")}，${closing}。`;
}

/** Train and dev sets with no content in common. */
export function makeDemo(
  seed: number,
  nTrain: number,
  nDev: number,
): { train: DemoRecord[]; dev: DemoRecord[] } {
  const r = rng(seed);
  const seen = new Set<string>();
  const take = (n: number): DemoRecord[] => {
    const out: DemoRecord[] = [];
    let tries = 0;
    while (out.length < n) {
      if (++tries > n * 100) throw new UserError(`cannot draw ${n} distinct records`);
      const rec = makeRecord(r);
      if (seen.has(rec.content)) continue;
      seen.add(rec.content);
      out.push(rec);
    }
    return out;
  };
  const dev = take(nDev);
  const train = take(nTrain);
  return { train, dev };
}

/**
 * The pretraining corpus (see `pretrainSummaryFor`), drawn from its own seed:
 * contents may repeat those of the demo set, summaries never follow its templates.
 */
export function makePretrain(
  seed: number,
  nTrain: number,
  nDev: number,
): { train: DemoRecord[]; dev: DemoRecord[] } {
  const { train, dev } = makeDemo(seed, nTrain, nDev);
  const r = rng(seed ^ 0x5eed);
  const rewrite = (xs: DemoRecord[]) =>
    xs.map((x) => ({ content: x.content, summary: pretrainSummaryFor(x.content, r) }));
  return { train: rewrite(train), dev: rewrite(dev) };
}

/** JSON lines, as AdvertiseGen's train.json: one object per line, non-ASCII kept. */
export function toJsonLines(records: DemoRecord[]): string {
  return records.map((r) => JSON.stringify({ content: r.content, summary: r.summary }) + "\n").join(
    "",
  );
}

interface Options {
  out: string;
  seed: number;
  train: number;
  dev: number;
  pretrain: boolean;
}

function parseArgs(args: string[]): Options {
  const opts: Options = { out: "data/demo", seed: 42, train: 2000, dev: 100, pretrain: false };
  for (let i = 0; i < args.length; i++) {
    const flag = args[i];
    if (flag === "--pretrain") {
      opts.pretrain = true;
      continue;
    }
    const value = args[i + 1];
    if (!["--out", "--seed", "--train", "--dev"].includes(flag)) {
      throw new UserError(
        `unknown flag ${flag}; expected --out DIR, --seed N, --train N, --dev N, --pretrain`,
      );
    }
    if (value === undefined) throw new UserError(`${flag} needs a value`);
    i++;
    if (flag === "--out") {
      opts.out = value;
      continue;
    }
    const n = Number(value);
    if (!Number.isInteger(n) || n < 0) {
      throw new UserError(`${flag}: expected a non-negative integer, got ${value}`);
    }
    opts[flag.slice(2) as "seed" | "train" | "dev"] = n;
  }
  return opts;
}

export async function main(args: string[]): Promise<void> {
  const opts = parseArgs(args);
  const { train, dev } = (opts.pretrain ? makePretrain : makeDemo)(opts.seed, opts.train, opts.dev);
  await Deno.mkdir(opts.out, { recursive: true });
  await writeFileAtomic(`${opts.out}/train.json`, toJsonLines(train));
  await writeFileAtomic(`${opts.out}/dev.json`, toJsonLines(dev));
  console.log(`wrote ${train.length} train and ${dev.length} dev records to ${opts.out}`);
}

if (import.meta.main) runCli(() => main(Deno.args));
