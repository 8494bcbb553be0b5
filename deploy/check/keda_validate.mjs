// Validates ScaledObjects against KEDA's own CRD schema, as compiled into @kubernetes-models/keda.
// Usage: node keda_validate.mjs NPM_DIR < objects.json   (a JSON array of {where, object})
// Prints one line per invalid object and exits 1 if there is any.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const npmDir = process.argv[2];
const model = join(npmDir, "node_modules/@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js");
const { ScaledObject } = await import(pathToFileURL(model).href);
const items = JSON.parse(readFileSync(0, "utf8"));
let bad = 0;
for (const { where, object } of items) {
  try {
    new ScaledObject(object).validate();
  } catch (e) {
    bad++;
    console.log(`${where}: KEDA's ScaledObject schema: ${String(e.message).replace(/\s+/g, " ")}`);
  }
}
console.log(`checked ${items.length} ScaledObject(s) against KEDA's CRD schema`);
process.exit(bad ? 1 : 0);
