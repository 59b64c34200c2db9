/**
 * `deno task bench`: every benchmark, each printing its figures and the ratio
 * against a peer (numpy / PyTorch CPU) measured in the same run. Pass names to
 * run a subset: `deno task bench matmul train`.
 */
const BENCHES = ["tokenizer", "matmul", "forward", "train", "generate", "convert_memory"];

const wanted = Deno.args.length ? Deno.args : BENCHES;
for (const name of wanted) {
  const url = new URL(`./${name}.ts`, import.meta.url);
  try {
    await Deno.stat(url);
  } catch {
    console.log(`\n## ${name}: not available yet`);
    continue;
  }
  console.log(`\n## ${name}`);
  const mod = await import(url.href) as { run(): Promise<void> };
  await mod.run();
}
