// Builds the web app into collab/static (or --outdir DIR): index.html and content-hashed
// bundles under assets/ (--dev: unminified, with source maps). Run `npm ci --prefix web` first; setup.py runs both for
// `pip install .` when Node and npm are there.
import { readFile, rm, mkdir, writeFile, rename } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    outdir: { type: "string" },
    // for debugging the app: readable bundles with source maps
    dev: { type: "boolean" },
  },
});
const outdir = path.resolve(values.outdir ?? path.join(here, "..", "collab", "static"));
const assets = path.join(outdir, "assets");

// The provider (clients/js) imports yjs, y-protocols and lib0 by name from outside web/:
// resolve them from web/node_modules too, so the bundle holds one copy of each (two
// copies of yjs break its type checks, and it warns when imported twice).
const shared = /^(yjs|y-protocols|lib0|socket\.io-client)(\/.*)?$/;
const onePackageCopy = {
  name: "one-package-copy",
  setup(build) {
    build.onResolve({ filter: shared }, async (args) => {
      if (args.pluginData?.fromWeb) return undefined;
      const result = await build.resolve(args.path, {
        kind: args.kind, resolveDir: here, pluginData: { fromWeb: true },
      });
      return result.errors.length ? { errors: result.errors } : result;
    });
  },
};

await rm(assets, { recursive: true, force: true });
await mkdir(assets, { recursive: true });
const result = await esbuild.build({
  entryPoints: { main: path.join(here, "src", "main.js"), style: path.join(here, "src", "style.css") },
  bundle: true,
  format: "esm",
  target: ["es2020"],
  minify: !values.dev,
  sourcemap: values.dev ? "linked" : false,
  entryNames: "[name]-[hash]",
  outdir: assets,
  metafile: true,
  legalComments: "linked",
  plugins: [onePackageCopy],
  logLevel: "warning",
});

const built = {};
for (const [file, meta] of Object.entries(result.metafile.outputs)) {
  if (!meta.entryPoint) continue;
  const name = path.basename(meta.entryPoint).replace(/\.[^.]+$/, "");
  built[name] = "assets/" + path.basename(file);
}
const template = await readFile(path.join(here, "src", "index.html"), "utf8");
const page = template
  .replace("{{style}}", built.style)
  .replace("{{script}}", built.main);
// index.html last, and whole: a page served meanwhile names bundles that exist
await writeFile(path.join(outdir, "index.html.tmp"), page);
await rename(path.join(outdir, "index.html.tmp"), path.join(outdir, "index.html"));
console.log(`built the web app into ${outdir} (${built.main}, ${built.style})`);
