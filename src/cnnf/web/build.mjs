// Bundles the UI into the Console's static files (src/cnnf/console/static/).
// Run by scripts/bootstrap.sh (npm ci && npm run build); no bundle is committed.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "console", "static");
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(here, "src", "main.js")],
  bundle: true,
  minify: !process.env.CNNF_WEB_DEBUG,
  sourcemap: true,
  format: "iife",
  target: ["es2020"],
  outfile: join(out, "app.js"),
  logLevel: "warning",
});
copyFileSync(join(here, "index.html"), join(out, "index.html"));
copyFileSync(join(here, "src", "style.css"), join(out, "style.css"));
console.log(`built the web UI into ${out}`);
