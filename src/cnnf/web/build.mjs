// Bundles the UI into the Console's static files (src/cnnf/console/static/).
// Run by scripts/bootstrap.sh (npm ci && npm run build); no bundle is committed.
//
// static/index.html          the page (served with Cache-Control: no-cache), the
//                             boot script in its head (no request of its own)
// static/assets/NAME-HASH.EXT the bundle, the style sheet and Swagger UI's assets
//                             (from the swagger-ui-dist package), named by their
//                             content, each with .gz and .br beside it: served
//                             compressed and cached for a year
// static/manifest.json       logical name -> assets/NAME-HASH.EXT (the Console
//                             reads it for the API docs page)
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, extname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "console", "static");
const assets = join(out, "assets");
const debug = !!process.env.CNNF_WEB_DEBUG;
rmSync(out, { recursive: true, force: true });
mkdirSync(assets, { recursive: true });

const manifest = {};

function compressed(path, bytes) {
  writeFileSync(`${path}.gz`, gzipSync(bytes, { level: 9 }));
  writeFileSync(`${path}.br`, brotliCompressSync(bytes, {
    params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: bytes.length },
  }));
}

// Copy a file under a content-hashed name; record it in the manifest.
function hashed(logical, source) {
  const bytes = readFileSync(source);
  const hash = createHash("sha256").update(bytes).digest("hex").slice(0, 16);
  const ext = extname(logical);
  const name = `${basename(logical, ext)}-${hash}${ext}`;
  writeFileSync(join(assets, name), bytes);
  if (ext !== ".png") compressed(join(assets, name), bytes);
  manifest[logical] = `assets/${name}`;
  return name;
}

const result = await build({
  // boot: a few hundred bytes in the page's head that start Radar's first
  // request while app (the UI, Cytoscape.js) downloads and compiles.
  entryPoints: { app: join(here, "src", "main.js"), boot: join(here, "src", "boot.js") },
  bundle: true,
  minify: !debug,
  sourcemap: "linked",
  format: "iife",
  target: ["es2020"],
  outdir: assets,
  entryNames: "[name]-[hash]",
  metafile: true,
  legalComments: "linked",
  logLevel: "warning",
});
// The boot script goes into the page itself: as a file of its own it was one
// more request in front of everything, parser-blocking in the head, answered
// in 50-150 ms by a loaded Console before Radar's request could start.
let boot = "";
for (const [path, info] of Object.entries(result.metafile.outputs)) {
  const name = basename(path);
  if (info.entryPoint && basename(info.entryPoint) === "boot.js") {
    boot = readFileSync(join(assets, name), "utf8").replace(/\n\/\/# sourceMappingURL=\S+\s*$/, "\n").trim();
    if (boot.includes("</")) throw new Error("boot.js: cannot be inlined (contains '</')");
    rmSync(join(assets, name));
    rmSync(join(assets, `${name}.map`), { force: true });
    continue;
  }
  if (info.entryPoint) manifest["app.js"] = `assets/${name}`;
  if (name.endsWith(".js") || name.endsWith(".txt")) {
    compressed(join(assets, name), readFileSync(join(assets, name)));
  }
}
if (!boot) throw new Error("boot.js: not built");
hashed("style.css", join(here, "src", "style.css"));

// Swagger UI for /api/v1/docs, served by the Console itself (no CDN).
const swagger = join(here, "node_modules", "swagger-ui-dist");
hashed("swagger-ui-bundle.js", join(swagger, "swagger-ui-bundle.js"));
hashed("swagger-ui.css", join(swagger, "swagger-ui.css"));
hashed("swagger-favicon.png", join(swagger, "favicon-32x32.png"));

const page = readFileSync(join(here, "index.html"), "utf8")
  .replace('href="style.css"', `href="${manifest["style.css"]}"`)
  .replace('src="app.js"', `src="${manifest["app.js"]}"`)
  .replace('<script src="boot.js"></script>', () => `<script>${boot}</script>`);
if (['"app.js"', '"style.css"', '"boot.js"'].some((ref) => page.includes(ref))) throw new Error("index.html: asset references not replaced");
writeFileSync(join(out, "index.html"), page);
writeFileSync(join(out, "manifest.json"), `${JSON.stringify(manifest, null, 2)}\n`);
// The licence of Swagger UI travels with its files.
copyFileSync(join(swagger, "LICENSE"), join(assets, "swagger-ui-LICENSE.txt"));
console.log(`built the web UI into ${out}: ${manifest["app.js"]}`);
