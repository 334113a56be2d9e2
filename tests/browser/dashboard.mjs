// Drives Debian's chromium headless (playwright-core, no bundled browser) against a
// running `odl dashboard` and checks what the page shows. Run by tests/dashboard.rs:
//
//   node tests/browser/dashboard.mjs live --url http://127.0.0.1:PORT/ \
//        --joiner http://127.0.0.1:J --ps http://127.0.0.1:P --screenshot target/dashboard.png
//     waits until the join-ratio chart, the AUC chart and the versions table show live
//     numbers, then checks them against GET /stats, /v1/progress and /v1/versions read
//     just before and just after the page's numbers (the pipeline keeps moving: the
//     page's counters must lie between the two reads, its versions match one of them).
//
//   node tests/browser/dashboard.mjs down --url ... --down NAME --up NAME \
//        --expect-stats FILE --screenshot target/dashboard-down.png
//     checks that service NAME shows as down with its error while the rest of the page
//     renders, and that the up joiner's join ratios are exactly those of FILE.
//
// Exit 0 when every check passed; 1 with the reason on stderr otherwise; 2 for usage.
import { chromium } from 'playwright-core';
import { mkdtempSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

const STREAMS = ['exposure', 'click', 'detail_click', 'feature'];

function parseArgs(argv) {
  const [mode, ...rest] = argv;
  const opts = { mode, timeoutSecs: 180, chromium: process.env.ODL_CHROMIUM || '/usr/bin/chromium' };
  for (let i = 0; i < rest.length; i += 2) {
    const key = rest[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    opts[key] = rest[i + 1];
  }
  if (!['live', 'down'].includes(mode) || !opts.url || !opts.screenshot) {
    console.error('usage: dashboard.mjs live|down --url URL --screenshot PNG [...]');
    process.exit(2);
  }
  return opts;
}

class CheckFailed extends Error {}
const check = (cond, msg) => { if (!cond) throw new CheckFailed(msg); };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function getJson(url) {
  const r = await fetch(url, { cache: 'no-store' });
  if (!r.ok) throw new CheckFailed(`GET ${url}: HTTP ${r.status}`);
  return r.json();
}

/** Polls `probe` (which returns a truthy value when done) until the deadline. */
async function until(what, deadline, probe) {
  let last;
  while (Date.now() < deadline) {
    try {
      last = await probe();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    await sleep(250);
  }
  throw new CheckFailed(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

const readoutValue = (page, id) => page.evaluate((id) => {
  const v = document.querySelector(`[data-testid="${id}"]`)?.dataset.value;
  return v ? JSON.parse(v) : null;
}, id);

const polledAt = (page, service) => page.evaluate((name) => {
  const row = document.querySelector(`[data-testid="service-row"][data-service="${name}"]`);
  return row ? Number(row.dataset.polledAt || 0) : 0;
}, service);

/** The service row's health, and that a chart has been drawn with at least n points. */
const chartPoints = (page, id) => page.evaluate((id) => {
  const c = document.querySelector(`[data-testid="${id}"]`);
  return c && c.querySelector('canvas') ? Number(c.dataset.points || 0) : 0;
}, id);

const versionRows = (page) => page.evaluate(() => [...document.querySelectorAll('[data-testid="version-row"]')].map((tr) => {
  const f = (name) => tr.querySelector(`[data-field="${name}"]`)?.textContent ?? null;
  return { version: Number(tr.dataset.version), status: tr.dataset.status, kind: f('kind'), base: f('base'), rows: f('rows') };
}));

/** Reads `read(page)` only from a render of a poll that started after `after` (ms). */
async function pageAfter(page, service, after, deadline, read) {
  await until(`a dashboard poll of ${service} after ${after}`, deadline, async () => (await polledAt(page, service)) > after);
  return read(page);
}

async function checkLive(page, o, deadline) {
  const joinerName = o.joinerName || 'joiner';
  const psName = o.psName || 'ps-0';
  // 1. Live numbers on the page.
  await until('join ratios on the page', deadline, async () => {
    const v = (await readoutValue(page, 'join-ratio-value'))?.[joinerName];
    return v && v.exposure.joined > 0 && v.click.joined > 0 && (await chartPoints(page, 'join-ratio-chart')) >= 2;
  });
  await until('AUC on the page', deadline, async () => {
    const v = (await readoutValue(page, 'auc-value'))?.[psName];
    return v && Object.keys(v.tasks).length > 0 && (await chartPoints(page, 'auc-chart')) >= 2;
  });
  await until('rows in the versions table', deadline, async () => (await versionRows(page)).length > 0);

  // 2. Join ratios: the page's counters lie between two reads of GET /stats.
  const s1 = await getJson(`${o.joiner}/stats`);
  const shown = await pageAfter(page, joinerName, Date.now(), deadline, (p) => readoutValue(p, 'join-ratio-value'));
  const text = await page.locator('[data-testid="join-ratio-value"]').textContent();
  const s2 = await getJson(`${o.joiner}/stats`);
  for (const st of STREAMS) {
    const v = shown[joinerName][st];
    for (const k of ['joined', 'received']) {
      check(s1[st][k] <= v[k] && v[k] <= s2[st][k], `${st}.${k}: page ${v[k]} not within /stats ${s1[st][k]}..${s2[st][k]}`);
    }
    if (v.received > 0) {
      check(Math.abs(v.ratio - v.joined / v.received) < 1e-12, `${st}: ratio ${v.ratio} is not ${v.joined}/${v.received}`);
      check(text.includes(`${st} ${(100 * v.ratio).toFixed(1)}%`), `${st}: readout text ${JSON.stringify(text)} lacks ${(100 * v.ratio).toFixed(1)}%`);
    }
  }
  const ratios = Object.fromEntries(STREAMS.map((st) => [st, shown[joinerName][st].ratio]));

  // 3. AUC: the page's evaluated samples lie between two reads of GET /v1/progress.
  const p1 = await getJson(`${o.ps}/v1/progress`);
  const auc = await pageAfter(page, psName, Date.now(), deadline, (p) => readoutValue(p, 'auc-value'));
  const p2 = await getJson(`${o.ps}/v1/progress`);
  const a = auc[psName];
  check(p1.samples <= a.samples && a.samples <= p2.samples, `AUC samples: page ${a.samples} not within /v1/progress ${p1.samples}..${p2.samples}`);
  for (const [task, v] of Object.entries(a.tasks)) {
    check(v.global > 0 && v.global < 1 && v.current > 0 && v.current < 1, `AUC of ${task} out of (0, 1): ${JSON.stringify(v)}`);
    check(p2.tasks.some((t) => t.task === task), `task ${task} on the page but not in /v1/progress`);
  }
  check(JSON.stringify(a.gates) === JSON.stringify(p2.gates), `gates: page ${JSON.stringify(a.gates)} vs /v1/progress ${JSON.stringify(p2.gates)}`);

  // 4. Versions: each row equals that version in one of two bracketing reads.
  const v1 = await getJson(`${o.ps}/v1/versions`);
  const rows = await pageAfter(page, psName, Date.now(), deadline, versionRows);
  const v2 = await getJson(`${o.ps}/v1/versions`);
  const byNumber = (list) => new Map(list.map((v) => [v.version, v]));
  const [m1, m2] = [byNumber(v1), byNumber(v2)];
  for (const r of rows) {
    const want = m2.get(r.version);
    check(want, `version ${r.version} on the page is not in /v1/versions`);
    check(r.kind === want.kind, `version ${r.version}: kind ${r.kind} vs ${want.kind}`);
    check(r.base === (want.base === null ? '–' : String(want.base)), `version ${r.version}: base ${r.base} vs ${want.base}`);
    const statuses = [m1.get(r.version)?.status, want.status];
    check(statuses.includes(r.status), `version ${r.version}: status ${r.status}, /v1/versions said ${statuses.join(' then ')}`);
  }
  const pageNumbers = new Set(rows.map((r) => r.version));
  for (const v of v1.slice(0, rows.length)) check(pageNumbers.has(v.version), `version ${v.version} (in /v1/versions before) missing on the page`);
  check(rows.length >= Math.min(50, v1.length) && rows.length <= Math.min(50, v2.length), `page shows ${rows.length} versions, /v1/versions had ${v1.length} then ${v2.length}`);
  for (let i = 1; i < rows.length; i += 1) check(rows[i - 1].version > rows[i].version, 'versions are not newest first');

  return { ratios, auc: a, versions: rows.length, newest: rows[0] };
}

async function checkDown(page, o, deadline) {
  const row = (name) => page.evaluate((name) => {
    const tr = document.querySelector(`[data-testid="service-row"][data-service="${name}"]`);
    return tr ? { health: tr.dataset.health, error: tr.querySelector('[data-testid="service-error"]')?.textContent ?? '' } : null;
  }, name);
  const down = await until(`${o.down} shown as down`, deadline, async () => {
    const r = await row(o.down);
    return r && r.health === 'down' && r.error ? r : null;
  });
  const up = await until(`${o.up} shown as up`, deadline, async () => {
    const r = await row(o.up);
    return r && r.health === 'up' ? r : null;
  });
  // The rest of the page still renders: the up joiner's exact numbers.
  const stats = JSON.parse(readFileSync(o.expectStats, 'utf8'));
  const shown = await until('the up joiner\'s join ratios', deadline, async () => (await readoutValue(page, 'join-ratio-value'))?.[o.up]);
  for (const st of STREAMS) {
    const want = stats[st].received ? stats[st].joined / stats[st].received : null;
    check(shown[st].ratio === want, `${st}: page ratio ${shown[st].ratio}, expected ${want}`);
  }
  await until('the join-ratio chart drawn', deadline, async () => (await chartPoints(page, 'join-ratio-chart')) >= 1);
  const panels = await page.evaluate(() => Object.fromEntries([...document.querySelectorAll('.panel')].map((p) => [p.dataset.testid, p.dataset.state])));
  check(panels['join-ratio-panel'] === 'ok', `join-ratio panel is ${panels['join-ratio-panel']}`);
  check(panels['versions-panel'] === 'down', `versions panel of a down PS is ${panels['versions-panel']}, not down`);
  const status = await page.locator('[data-testid="versions-panel"] .status').textContent();
  check(status.includes(o.down) && status.includes('down'), `versions panel does not say why: ${JSON.stringify(status)}`);
  const conn = await page.locator('[data-testid="connection"]').getAttribute('data-state');
  check(conn === 'ok', `page connection state ${conn}`);
  return { down, up, panels };
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const deadline = Date.now() + Number(o.timeoutSecs) * 1000;
  const profile = mkdtempSync(join(tmpdir(), 'odl-chromium-'));
  // A fresh profile per run (playwright passes it as --user-data-dir).
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: o.chromium,
    headless: true,
    viewport: { width: 1400, height: 1000 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  let page;
  const errors = [];
  try {
    page = context.pages()[0] || await context.newPage();
    page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
    await page.goto(o.url, { waitUntil: 'load' });
    await until('the page to reach the dashboard', deadline, async () => (await page.locator('[data-testid="connection"]').getAttribute('data-state')) === 'ok');
    const result = o.mode === 'live' ? await checkLive(page, o, deadline) : await checkDown(page, o, deadline);
    check(!errors.length, `the page logged errors: ${errors.join('; ')}`);
    await sleep(300); // let the last render's canvases paint
    mkdirSync(dirname(o.screenshot), { recursive: true });
    await page.screenshot({ path: o.screenshot, fullPage: true });
    console.log(JSON.stringify({ ok: true, mode: o.mode, screenshot: o.screenshot, ...result }));
  } catch (e) {
    if (page && o.screenshot) {
      const failed = o.screenshot.replace(/\.png$/, '-failed.png');
      await page.screenshot({ path: failed, fullPage: true }).catch(() => {});
      console.error(`screenshot of the failure: ${failed}`);
    }
    if (errors.length) console.error(errors.join('\n'));
    console.error(e instanceof CheckFailed ? `check failed: ${e.message}` : e.stack || String(e));
    process.exitCode = 1;
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

main();
