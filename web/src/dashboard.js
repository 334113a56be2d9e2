// odl dashboard page: polls the dashboard process's GET /api/state (which polls the
// services), keeps the charts' history client side, and redraws every panel.
// Every panel degrades on its own: a service that is down or an endpoint that does not
// answer marks that panel "down"/"unavailable" with the reason; the rest keeps drawing.
// Stable hooks for tests: data-testid on panels, charts, readouts (data-value holds
// the latest numbers as JSON) and table rows.
'use strict';

const PALETTE = ['#4c78a8', '#f58518', '#54a24b', '#e45756', '#72b7b2', '#b279a2', '#ff9da6', '#9d755d', '#eeca3b', '#bab0ac'];
const STREAMS = ['exposure', 'click', 'detail_click', 'feature'];
const DELAY_BUCKETS = [['le_1s', '≤ 1 s'], ['le_60s', '≤ 1 min'], ['le_600s', '≤ 10 min'], ['in_window', 'in window'], ['past_window', 'too late']];
const MAX_VERSION_ROWS = 50; // the table scrolls; /v1/versions has them all

const store = new Map(); // service name -> {t: [], series: {name: []}}
const charts = new Map(); // data-testid -> {plot, key}
let sinceMs = 0;
let pollMs = 2000;
let historySecs = 3600;

const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ''));
  return e;
};
const pct = (x) => (x === null || x === undefined || Number.isNaN(x) ? '–' : `${(100 * x).toFixed(1)}%`);
const num = (x, digits = 0) => (x === null || x === undefined ? '–' : Number(x).toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits }));
const bytes = (b) => {
  if (b === null || b === undefined) return '–';
  const u = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i += 1; }
  return `${b.toFixed(i ? 1 : 0)} ${u[i]}`;
};
const time = (s) => (s ? new Date(s).toLocaleTimeString('en-GB') : '–');

// ---- polling -------------------------------------------------------------------

async function tick() {
  try {
    const r = await fetch(`/api/state?since=${sinceMs}`, { cache: 'no-store' });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const state = await r.json();
    pollMs = state.poll_interval_ms || pollMs;
    historySecs = state.history_secs || historySecs;
    ingest(state);
    render(state);
    setConnection('ok', `live · polling every ${(pollMs / 1000).toFixed(1)} s`);
    byTestId('updated').textContent = `updated ${new Date(state.now_ms).toLocaleTimeString()}`;
  } catch (e) {
    // The dashboard process itself is unreachable: keep the last view, say so.
    setConnection('error', `dashboard unreachable (${e.message}); showing the last state`);
  }
  setTimeout(tick, pollMs);
}

function setConnection(state, text) {
  const c = byTestId('connection');
  c.dataset.state = state;
  c.textContent = text;
}

/** Appends each service's new history points and forgets those older than the window. */
function ingest(state) {
  for (const svc of state.services) {
    let h = store.get(svc.name);
    if (!h) { h = { t: [], series: {} }; store.set(svc.name, h); }
    const slice = svc.history;
    const n = slice.t.length;
    if (!n) continue;
    const before = h.t.length;
    h.t.push(...slice.t);
    for (const [name, col] of Object.entries(slice.series)) {
      if (!h.series[name]) h.series[name] = new Array(before).fill(null);
      h.series[name].push(...col);
    }
    for (const col of Object.values(h.series)) while (col.length < h.t.length) col.push(null);
    sinceMs = Math.max(sinceMs, slice.t[n - 1]);
  }
  const oldest = state.now_ms - historySecs * 1000;
  for (const h of store.values()) {
    let drop = 0;
    while (drop < h.t.length && h.t[drop] < oldest) drop += 1;
    if (!drop) continue;
    h.t.splice(0, drop);
    for (const col of Object.values(h.series)) col.splice(0, drop);
  }
}

// ---- helpers over the state ------------------------------------------------------

/** {ok, body, why} for one endpoint of one service. */
function endpoint(svc, path) {
  if (svc.health === 'pending') return { ok: false, why: `${svc.name}: waiting for the first poll`, state: 'unavailable' };
  if (svc.health === 'down') return { ok: false, why: `${svc.name} is down: ${svc.error || 'no answer'}`, state: 'down' };
  const f = svc.endpoints[path];
  if (!f) return { ok: false, why: `${svc.name}: ${path} not polled`, state: 'unavailable' };
  if (f.error !== undefined) return { ok: false, why: `${svc.name}: ${path} failed: ${f.error}`, state: 'unavailable' };
  if (f.status < 200 || f.status > 299) {
    const detail = typeof f.body === 'string' ? f.body : JSON.stringify(f.body);
    return { ok: false, why: `${svc.name}: ${path} unavailable (HTTP ${f.status}${detail ? `: ${detail.slice(0, 120)}` : ''})`, state: 'unavailable' };
  }
  return { ok: true, body: f.body };
}

/** Marks a panel ok / unavailable / down from the endpoint results it depends on. */
function panelState(id, results, noServices) {
  const panel = byTestId(id);
  const status = panel.querySelector('.status');
  if (!results.length) {
    panel.dataset.state = 'unavailable';
    status.textContent = noServices;
    return;
  }
  const bad = results.filter((r) => !r.ok);
  const anyOk = bad.length < results.length;
  panel.dataset.state = anyOk ? 'ok' : (bad.every((r) => r.state === 'down') ? 'down' : 'unavailable');
  status.textContent = bad.map((r) => r.why).join('\n');
}

function latest(name, series) {
  const col = store.get(name)?.series[series];
  if (!col) return null;
  for (let i = col.length - 1; i >= 0; i -= 1) if (col[i] !== null) return col[i];
  return null;
}

function line(service, series, label, extra = {}) {
  const h = store.get(service);
  return { label, t: h ? h.t : [], v: h?.series[series] || [], ...extra };
}

/** Lines on one time axis (services polled together share their times). */
function aligned(lines) {
  const ts = [...new Set(lines.flatMap((l) => l.t))].sort((a, b) => a - b);
  const at = new Map(ts.map((t, i) => [t, i]));
  const cols = lines.map((l) => {
    const col = new Array(ts.length).fill(null);
    l.t.forEach((t, i) => { col[at.get(t)] = l.v[i] ?? null; });
    return col;
  });
  return [ts.map((t) => t / 1000), ...cols];
}

function readout(id, value, text) {
  const out = byTestId(id);
  out.dataset.value = JSON.stringify(value);
  out.textContent = text;
}

// ---- charts (uPlot) ---------------------------------------------------------------

function chartWidth(host) {
  return Math.max(280, host.clientWidth || host.parentElement.clientWidth - 24);
}

function drawLines(id, lines, { fmt = (v) => num(v, 2), y = {} } = {}) {
  const host = byTestId(id);
  const withData = lines.filter((l) => l.v.some((v) => v !== null));
  host.dataset.series = withData.length;
  if (!withData.length) {
    charts.get(id)?.plot.destroy();
    charts.delete(id);
    host.replaceChildren(el('div', { class: 'empty' }, 'no data yet'));
    host.dataset.points = 0;
    return;
  }
  const data = aligned(withData);
  host.dataset.points = data[0].length;
  const key = withData.map((l) => l.label).join('|');
  const c = charts.get(id);
  if (c && c.key === key) { c.plot.setData(data); return; }
  c?.plot.destroy();
  host.replaceChildren();
  const plot = new uPlot({
    width: chartWidth(host),
    height: 200,
    scales: { x: { time: true }, y },
    series: [{}, ...withData.map((l, i) => ({
      label: l.label,
      stroke: l.color || PALETTE[i % PALETTE.length],
      width: l.width || 1.5,
      dash: l.dash,
      spanGaps: true,
      points: { show: false },
      value: (u, v) => (v === null || v === undefined ? '–' : fmt(v)),
    }))],
    axes: [{}, { values: (u, vals) => vals.map(fmt), size: 60 }],
    legend: { live: true },
  }, data, host);
  charts.set(id, { plot, key });
}

function drawBars(id, labels, bars) {
  const host = byTestId(id);
  const key = `bars:${bars.map((b) => b.label).join('|')}`;
  const data = [labels.map((_, i) => i), ...bars.map((b) => b.values)];
  host.dataset.points = labels.length;
  const c = charts.get(id);
  if (c && c.key === key) { c.plot.setData(data); return; }
  c?.plot.destroy();
  host.replaceChildren();
  const n = bars.length;
  const plot = new uPlot({
    width: chartWidth(host),
    height: 200,
    scales: { x: { time: false, range: [-0.5, labels.length - 0.5] }, y: { range: (u, lo, hi) => [0, Math.max(1, hi) * 1.1] } },
    series: [{ value: (u, v) => labels[v] ?? '' }, ...bars.map((b, i) => ({
      label: b.label,
      fill: `${PALETTE[i % PALETTE.length]}cc`,
      stroke: PALETTE[i % PALETTE.length],
      // Two kinds side by side (left of the tick, right of it); more would overlap.
      paths: uPlot.paths.bars({ size: [n > 1 ? 0.4 : 0.6, 80], align: n === 2 ? (i === 0 ? 1 : -1) : 0 }),
      points: { show: false },
      value: (u, v) => num(v),
    }))],
    axes: [{ values: (u, vals) => vals.map((v) => labels[v] ?? ''), splits: () => labels.map((_, i) => i), size: 40 }, { size: 60 }],
  }, data, host);
  charts.set(id, { plot, key });
}

// ---- panels -------------------------------------------------------------------------

function render(state) {
  const services = state.services;
  const of = (kind) => services.filter((s) => s.kind === kind);
  renderServices(services);
  renderJoining(of('joiner'));
  renderQuality(of('joiner'));
  renderModel(of('ps'), of('worker'));
  renderVersions(of('ps'));
  renderServing(of('serving'));
}

function renderServices(services) {
  const rows = services.map((s) => {
    const ready = s.endpoints['/readyz'];
    let readyText = '–';
    let readyClass = '';
    if (ready && ready.status === 404) {
      readyText = 'no /readyz';
    } else if (ready && ready.status !== undefined) {
      const ok = ready.status >= 200 && ready.status < 300;
      readyText = ok ? 'ready' : `not ready (${ready.status})`;
      readyClass = ok ? 'ready' : 'not-ready';
    }
    const detail = s.health === 'down'
      ? el('span', { class: 'error', 'data-testid': 'service-error' }, s.error || 'no answer')
      : (readyClass === 'not-ready' ? el('span', { class: 'error' }, JSON.stringify(ready.body)) : '');
    return el('tr', { 'data-testid': 'service-row', 'data-service': s.name, 'data-health': s.health, 'data-polled-at': s.polled_at_ms ?? '' },
      el('td', {}, s.name), el('td', {}, s.kind), el('td', {}, s.url),
      el('td', {}, el('span', { class: `badge ${s.health}` }, s.health)),
      el('td', {}, el('span', { class: `badge ${readyClass}` }, readyText)),
      el('td', {}, detail));
  });
  document.getElementById('services').replaceChildren(...rows);
}

function renderJoining(joiners) {
  const stats = joiners.map((j) => [j, endpoint(j, '/stats')]);
  const none = 'no joiner in the dashboard config';
  for (const id of ['join-ratio-panel', 'late-dup-panel', 'sample-rate-panel']) panelState(id, stats.map(([, r]) => r), none);

  const many = joiners.length > 1;
  const name = (j, what) => (many ? `${j.name} ${what}` : what);
  drawLines('join-ratio-chart', joiners.flatMap((j) => STREAMS.map((s) => line(j.name, `join_ratio.${s}`, name(j, s)))), { fmt: pct, y: { range: [0, 1] } });
  drawLines('late-dup-chart', joiners.flatMap((j) => [
    ...STREAMS.map((s) => line(j.name, `late_share.${s}`, name(j, `late ${s}`))),
    line(j.name, 'duplicate_share.exposure', name(j, 'duplicate exposure'), { dash: [4, 3] }),
  ]), { fmt: pct });
  drawLines('sample-rate-chart', joiners.flatMap((j) => [
    line(j.name, 'sample_rate', name(j, 'samples/s')),
    line(j.name, 'audit_rate', name(j, 'audited/s'), { dash: [4, 3] }),
  ]), { fmt: (v) => num(v, 1) });

  const ratios = {};
  const shares = {};
  const rates = {};
  const texts = [];
  for (const [j, r] of stats) {
    if (!r.ok) continue;
    const s = r.body;
    ratios[j.name] = {};
    shares[j.name] = {};
    for (const st of STREAMS) {
      const c = s[st] || {};
      const ratio = c.received ? c.joined / c.received : null;
      ratios[j.name][st] = { ratio, joined: c.joined, received: c.received };
      shares[j.name][st] = { late: c.received ? c.late / c.received : null, duplicate: c.duplicate !== undefined && c.received ? c.duplicate / c.received : null };
    }
    rates[j.name] = { sample_rate: latest(j.name, 'sample_rate'), audit_rate: latest(j.name, 'audit_rate'), emitted: s.samples?.emitted, audited: s.samples?.audited, audit_share: s.samples?.emitted ? s.samples.audited / s.samples.emitted : null };
    texts.push(`${many ? `${j.name}: ` : ''}${STREAMS.map((st) => `${st} ${pct(ratios[j.name][st].ratio)}`).join(' · ')}`);
  }
  readout('join-ratio-value', ratios, texts.join('\n'));
  readout('late-dup-value', shares, Object.entries(shares).map(([n, v]) => `${many ? `${n}: ` : ''}late ${STREAMS.map((s) => `${s} ${pct(v[s].late)}`).join(' · ')} · duplicate exposures ${pct(v.exposure.duplicate)}`).join('\n'));
  readout('sample-rate-value', rates, Object.entries(rates).map(([n, v]) => `${many ? `${n}: ` : ''}${num(v.sample_rate, 1)} samples/s · ${num(v.audit_rate, 1)} audited/s · audit share ${pct(v.audit_share)} · ${num(v.emitted)} samples emitted`).join('\n'));

  const quality = joiners.map((j) => [j, endpoint(j, '/v1/quality')]);
  panelState('label-delay-panel', quality.map(([, r]) => r), none);
  const okq = quality.filter(([, r]) => r.ok);
  const bars = [];
  const delays = {};
  for (const [j, r] of okq) {
    for (const [kind, counts] of Object.entries(r.body.label_delay || {})) {
      bars.push({ label: name(j, kind), values: DELAY_BUCKETS.map(([b]) => counts[b] ?? 0) });
      delays[`${j.name}.${kind}`] = counts;
    }
  }
  if (bars.length) drawBars('label-delay-chart', DELAY_BUCKETS.map(([, l]) => l), bars);
  else drawLines('label-delay-chart', []);
  readout('label-delay-value', delays, Object.entries(delays).map(([k, c]) => {
    const total = DELAY_BUCKETS.reduce((a, [b]) => a + (c[b] || 0), 0);
    return `${k}: ${DELAY_BUCKETS.map(([b, l]) => `${l} ${pct(total ? (c[b] || 0) / total : null)}`).join(' · ')}`;
  }).join('\n'));
}

function renderQuality(joiners) {
  const quality = joiners.map((j) => [j, endpoint(j, '/v1/quality')]);
  const none = 'no joiner in the dashboard config';
  for (const id of ['sample-delay-panel', 'consumer-lag-panel', 'positive-rate-panel', 'feature-coverage-panel']) panelState(id, quality.map(([, r]) => r), none);
  const many = joiners.length > 1;
  const name = (j, what) => (many ? `${j.name} ${what}` : what);
  const seriesWith = (j, prefix) => Object.keys(store.get(j.name)?.series || {}).filter((k) => k.startsWith(prefix)).sort();

  drawLines('sample-delay-chart', joiners.flatMap((j) => ['p50', 'p90', 'p99'].map((p) => line(j.name, `sample_delay.${p}`, name(j, p)))), { fmt: (v) => `${num(v, 1)} s` });
  drawLines('consumer-lag-chart', joiners.flatMap((j) => seriesWith(j, 'consumer_lag.').map((k) => line(j.name, k, name(j, k.slice('consumer_lag.'.length))))), { fmt: (v) => num(v) });
  drawLines('positive-rate-chart', joiners.flatMap((j) => seriesWith(j, 'positive_rate.').map((k) => line(j.name, k, name(j, k.slice('positive_rate.'.length))))), { fmt: pct });

  const delay = {};
  const lag = {};
  const pos = {};
  const rows = [];
  for (const [j, r] of quality) {
    if (!r.ok) continue;
    const q = r.body;
    delay[j.name] = q.sample_delay_seconds;
    lag[j.name] = q.consumer_lag;
    pos[j.name] = q.positive_rate;
    for (const f of q.feature_coverage || []) {
      const top = (f.top || []).map((t) => `${t.value} (${num(t.count)})`).join(', ');
      rows.push(el('tr', { 'data-testid': 'feature-row', 'data-field': f.field, 'data-share': f.share },
        el('td', {}, many ? `${j.name}: ${f.field}` : f.field),
        el('td', { class: 'num' }, el('span', { class: 'bar', style: `width:${Math.round(60 * (f.share || 0))}px` }), pct(f.share)),
        el('td', {}, top)));
    }
  }
  byTestId('feature-coverage-table').replaceChildren(...rows);
  readout('sample-delay-value', delay, Object.entries(delay).map(([n, d]) => `${many ? `${n}: ` : ''}p50 ${num(d?.p50, 1)} s · p90 ${num(d?.p90, 1)} s · p99 ${num(d?.p99, 1)} s over ${num(d?.count)} samples`).join('\n'));
  readout('consumer-lag-value', lag, Object.entries(lag).map(([n, l]) => {
    const topics = Object.entries(l || {});
    return `${many ? `${n}: ` : ''}${topics.length ? topics.map(([t, v]) => `${t} ${num(v)}`).join(' · ') : 'no topics (reading files or in-process channels)'}`;
  }).join('\n'));
  readout('positive-rate-value', pos, Object.entries(pos).map(([n, p]) => `${many ? `${n}: ` : ''}${Object.entries(p || {}).map(([t, v]) => `${t} ${pct(v)}`).join(' · ')}`).join('\n'));
}

function renderModel(shards, workers) {
  const progress = shards.map((s) => [s, endpoint(s, '/v1/progress')]);
  panelState('auc-panel', progress.map(([, r]) => r), 'no parameter-server shard in the dashboard config');
  const tasks = (name) => [...new Set(Object.keys(store.get(name)?.series || {}).filter((k) => k.startsWith('auc.')).map((k) => k.split('.')[1]))].sort();
  const many = shards.length > 1;
  const lines = [];
  let color = 0;
  for (const s of shards) {
    for (const task of tasks(s.name)) {
      const c = PALETTE[color % PALETTE.length];
      color += 1;
      const label = many ? `${s.name} ${task}` : task;
      lines.push(line(s.name, `auc.${task}.global`, `${label} global`, { color: c, width: 2 }));
      lines.push(line(s.name, `auc.${task}.current`, `${label} current`, { color: c, dash: [5, 4] }));
    }
  }
  const gated = shards.find((s) => store.get(s.name)?.series['gate.global']);
  if (gated) {
    lines.push(line(gated.name, 'gate.global', 'gate global', { color: '#888', dash: [2, 3], width: 1 }));
    lines.push(line(gated.name, 'gate.current', 'gate current', { color: '#bbb', dash: [8, 3], width: 1 }));
  }
  drawLines('auc-chart', lines, { fmt: (v) => num(v, 4) });
  const aucs = {};
  const texts = [];
  for (const [s, r] of progress) {
    if (!r.ok) continue;
    aucs[s.name] = { samples: r.body.samples, tasks: {}, gates: r.body.gates ?? null };
    for (const t of r.body.tasks || []) aucs[s.name].tasks[t.task] = { global: t.global_auc, current: t.current_auc, samples: t.samples };
    const g = r.body.gates;
    texts.push(`${many ? `${s.name}: ` : ''}${(r.body.tasks || []).map((t) => `${t.task} ${num(t.global_auc, 4)} / ${num(t.current_auc, 4)}`).join(' · ') || 'no task evaluated yet'}${g ? ` · gates ${num(g.global_auc_threshold, 2)} / ${num(g.current_auc_threshold, 2)}` : ''} · ${num(r.body.samples)} samples`);
  }
  readout('auc-value', aucs, texts.join('\n'));

  const wprog = workers.map((w) => [w, endpoint(w, '/v1/progress')]);
  panelState('throughput-panel', [...wprog.map(([, r]) => r), ...progress.map(([, r]) => r)], 'no trainer worker or shard in the dashboard config');
  drawLines('throughput-chart', [
    ...workers.map((w) => line(w.name, 'samples_per_sec', w.name)),
    ...shards.map((s) => line(s.name, 'samples_per_sec', `${s.name} (trained)`, { dash: [4, 3] })),
  ], { fmt: (v) => num(v, 0) });
  const tput = {};
  for (const s of [...workers, ...shards]) tput[s.name] = latest(s.name, 'samples_per_sec');
  readout('throughput-value', tput, Object.entries(tput).map(([n, v]) => `${n} ${num(v, 0)}/s`).join(' · '));

  const shard = shards.map((s) => [s, endpoint(s, '/v1/shard')]);
  panelState('ps-panel', shard.map(([, r]) => r), 'no parameter-server shard in the dashboard config');
  byTestId('ps-table').replaceChildren(...shard.map(([s, r]) => {
    const b = r.ok ? r.body : {};
    const rows = r.ok ? (b.tables || []).reduce((a, t) => a + (t.rows || 0), 0) : null;
    return el('tr', { 'data-testid': 'ps-row', 'data-service': s.name, 'data-health': s.health, 'data-rows': rows ?? '' },
      el('td', {}, r.ok ? `${s.name} (${b.shard}/${b.shards})` : s.name),
      el('td', {}, el('span', { class: `badge ${s.health}` }, s.health)),
      el('td', { class: 'num' }, num(rows)), el('td', { class: 'num' }, bytes(b.heap_bytes)),
      el('td', { class: 'num' }, num(b.samples_trained)), el('td', { class: 'num' }, num(b.workers)));
  }));
}

function renderVersions(shards) {
  const results = shards.map((s) => [s, endpoint(s, '/v1/versions')]);
  panelState('versions-panel', results.map(([, r]) => r), 'no parameter-server shard in the dashboard config');
  // Versions are cut by the publishing shard: show the first shard that has any.
  const pick = results.find(([, r]) => r.ok && Array.isArray(r.body) && r.body.length) || results.find(([, r]) => r.ok);
  const versions = pick ? pick[1].body : [];
  document.getElementById('versions-source').textContent = pick ? `from ${pick[0].name}, newest first (${versions.length} in all)` : '';
  const tbody = document.getElementById('versions');
  tbody.dataset.count = versions.length;
  const auc = (a) => (a ? `${num(a.global, 4)} / ${num(a.current, 4)}` : '–');
  tbody.replaceChildren(...versions.slice(0, MAX_VERSION_ROWS).map((v) => el('tr', { 'data-testid': 'version-row', 'data-version': v.version, 'data-status': v.status },
    el('td', { class: 'num', 'data-field': 'version' }, String(v.version)),
    el('td', { 'data-field': 'kind' }, v.kind),
    el('td', { class: 'num', 'data-field': 'base' }, v.base === null || v.base === undefined ? '–' : String(v.base)),
    el('td', { 'data-field': 'status' }, el('span', { class: `badge ${v.status}` }, v.status)),
    el('td', { 'data-field': 'reason' }, v.reason || ''),
    el('td', { 'data-field': 'created_at', title: v.created_at }, time(v.created_at)),
    el('td', { 'data-field': 'effective_at', title: v.effective_at || '' }, time(v.effective_at)),
    el('td', { class: 'num', 'data-field': 'rows' }, num(v.rows)),
    el('td', { class: 'num', 'data-field': 'auc' }, auc(v.auc)))));
}

function renderServing(nodes) {
  const results = nodes.map((n) => [n, endpoint(n, '/v1/node')]);
  const none = 'no serving node in the dashboard config';
  panelState('serving-panel', results.map(([, r]) => r), none);
  panelState('serving-lag-panel', results.map(([, r]) => r), none);
  byTestId('serving-table').replaceChildren(...results.map(([n, r]) => {
    const b = r.ok ? r.body : {};
    return el('tr', { 'data-testid': 'serving-row', 'data-service': n.name, 'data-health': n.health, 'data-version': b.version ?? '' },
      el('td', {}, r.ok && b.node_id ? `${n.name} (${b.node_id})` : n.name),
      el('td', {}, el('span', { class: `badge ${n.health}` }, n.health)),
      el('td', {}, b.model ?? '–'), el('td', { class: 'num' }, num(b.version)),
      el('td', { class: 'num' }, num(b.lag?.versions)), el('td', { class: 'num' }, num(b.lag?.seconds, 1)),
      el('td', { class: 'num' }, num(b.predictions)), el('td', { class: 'num' }, num(b.errors)));
  }));
  drawLines('serving-lag-chart', nodes.map((n) => line(n.name, 'lag.seconds', n.name)), { fmt: (v) => `${num(v, 1)} s` });
  const lag = {};
  for (const [n, r] of results) if (r.ok) lag[n.name] = { version: r.body.version, lag_seconds: r.body.lag?.seconds, lag_versions: r.body.lag?.versions };
  readout('serving-lag-value', lag, Object.entries(lag).map(([n, l]) => `${n}: version ${num(l.version)}, ${num(l.lag_versions)} behind, ${num(l.lag_seconds, 1)} s`).join(' · '));
}

window.addEventListener('resize', () => {
  for (const [id, c] of charts) c.plot.setSize({ width: chartWidth(byTestId(id)), height: 200 });
});

tick();
