/**
 * `deno task bench`: every benchmark, each printing its figures and the ratio
 * against a peer (numpy / PyTorch CPU) measured in the same run. Pass names to
 * run a subset: `deno task bench matmul train`. `scale` (chatglm3-6b's real
 * shape, ./scale.ts) runs only when named.
 */
const BENCHES = [
  "tokenizer",
  "matmul",
  "matmul_4bit",
  "forward",
  "train",
  "generate",
  "convert_memory",
];

// Names first, then flags for them: `deno task bench scale --layers 2`.
const flagAt = Deno.args.findIndex((a) => a.startsWith("--"));
const names = flagAt < 0 ? Deno.args : Deno.args.slice(0, flagAt);
const flags = flagAt < 0 ? [] : Deno.args.slice(flagAt);
const wanted = names.length ? names : BENCHES;
for (const name of wanted) {
  const url = new URL(`./${name}.ts`, import.meta.url);
  try {
    await Deno.stat(url);
  } catch {
    console.log(`\n## ${name}: not available yet`);
    continue;
  }
  console.log(`\n## ${name}`);
  const mod = await import(url.href) as { run(argv?: string[]): Promise<void> };
  await mod.run(flags);
}
