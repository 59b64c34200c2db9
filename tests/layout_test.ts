/** The code's shape (tools/check_layout.ts): short model files, no import cycle in lib/. */
import assert from "node:assert";
import { importCycles, longModelFiles, MAX_MODEL_LINES } from "../tools/check_layout.ts";

Deno.test(`layout: no file in lib/model/ over ${MAX_MODEL_LINES} lines`, async () => {
  assert.deepEqual(await longModelFiles(), []);
});

Deno.test("layout: no import cycle in lib/ (type-only imports included)", async () => {
  assert.deepEqual(await importCycles(), []);
});
