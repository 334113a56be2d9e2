// Builds the dashboard's assets into ../src/dashboard/assets/, which are committed so
// that `cargo build` needs no Node.js: the page sources from src/ as they are, and
// uPlot's prebuilt browser bundle from node_modules (the version package-lock.json pins).
//   npm ci && npm run build     # rebuild after editing src/ or bumping uplot
//   npm run check               # exit 1 if the committed assets are stale
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '..', 'src', 'dashboard', 'assets');
const files = {
  'index.html': join(here, 'src', 'index.html'),
  'dashboard.js': join(here, 'src', 'dashboard.js'),
  'dashboard.css': join(here, 'src', 'dashboard.css'),
  'uPlot.iife.min.js': join(here, 'node_modules', 'uplot', 'dist', 'uPlot.iife.min.js'),
  'uPlot.min.css': join(here, 'node_modules', 'uplot', 'dist', 'uPlot.min.css'),
};

const check = process.argv.includes('--check');
let stale = 0;
mkdirSync(out, { recursive: true });
for (const [name, from] of Object.entries(files)) {
  const bytes = readFileSync(from);
  const target = join(out, name);
  if (check) {
    let current = null;
    try { current = readFileSync(target); } catch { /* missing counts as stale */ }
    if (!current || !current.equals(bytes)) {
      console.error(`stale: src/dashboard/assets/${name} (from ${from})`);
      stale += 1;
    }
  } else {
    writeFileSync(target, bytes);
    console.log(`wrote src/dashboard/assets/${name} (${bytes.length} bytes)`);
  }
}
if (stale) {
  console.error('run `npm ci && npm run build` in web/');
  process.exit(1);
}
