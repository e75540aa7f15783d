// Dashboard: KPIs and hand-rolled SVG charts over /api/stats?bucket=… — calls and errors,
// latency p50/p95/p99, TTFT, tokens and cost over time and by model. Clicking a bucket opens the
// trace table filtered to that window.

import {
  html, setHtml, api, toQuery, fmtMs, fmtInt, fmtCost, errorBox, $,
} from './lib.js';

// [name, seconds, bucket seconds] — about 60–100 buckets each.
const RANGES = [
  ['15m', 900, 15], ['1h', 3600, 60], ['6h', 21600, 300], ['24h', 86400, 900],
  ['7d', 604800, 7200], ['30d', 2592000, 43200],
];
const PALETTE = ['#6366f1', '#0ea5e9', '#10b981', '#f59e0b', '#ec4899', '#8b5cf6', '#14b8a6', '#f97316', '#64748b', '#84cc16'];
const C = { ok: '#6366f1', err: '#e5484d', p50: '#0ea5e9', p95: '#f59e0b', p99: '#e5484d', tin: '#14b8a6', tout: '#8b5cf6', cost: '#10b981' };

export function mount(root, params) {
  const st = { range: pickRange(params.query.range), data: null, error: null, seq: 0, charts: [] };
  setHtml(root, html`<section class="page dash-page">
    <div class="page-head"><h1>Dashboard</h1><span class="muted" data-window></span><span class="spacer"></span>
      <div class="seg" role="group" aria-label="Time range" data-ranges>${RANGES.map(([r]) => html`<button type="button" data-range="${r}">${r}</button>`)}</div>
      <button type="button" class="btn" data-refresh>Refresh</button></div>
    <div data-body><div class="empty"><p class="muted">Loading…</p></div></div>
    <div class="chart-tip" data-tip hidden></div></section>`);
  const body = $('[data-body]', root);
  const tip = $('[data-tip]', root);

  function markRange() {
    for (const b of root.querySelectorAll('[data-range]')) b.classList.toggle('active', b.dataset.range === st.range[0]);
  }

  async function load() {
    const seq = ++st.seq;
    const [, secs, bucket] = st.range;
    const until = Date.now();
    const since = until - secs * 1000;
    try {
      const data = await api(`/api/stats${toQuery({ since, until, bucket, group_by: 'model' })}`);
      if (seq !== st.seq) return;
      st.data = data;
      st.error = null;
    } catch (e) {
      if (seq !== st.seq) return;
      st.error = e;
    }
    render();
  }

  function render() {
    markRange();
    if (st.error) { setHtml(body, errorBox(st.error, 'stats')); return; }
    const d = st.data;
    if (!d) return;
    const series = d.series || [];
    $('[data-window]', root).textContent = series.length ? `${fmtClock(series[0].start, d.bucket_seconds)} – ${fmtClock(series[series.length - 1].end, d.bucket_seconds)} · ${humanBucket(d.bucket_seconds)} buckets` : '';
    const errRate = d.calls ? (100 * d.errors) / d.calls : 0;
    const models = (d.groups || []).map((g) => g.model);
    const colorOf = new Map(models.map((m, i) => [m, PALETTE[i % PALETTE.length]]));
    colorOf.set('(other)', '#94a3b8');
    const empty = !d.calls;
    setHtml(body, html`
      <div class="kpis">
        ${kpi('Calls', fmtInt(d.calls))}
        ${kpi('Errors', fmtInt(d.errors), d.calls ? `${errRate.toFixed(errRate < 10 ? 1 : 0)}% of calls` : '', d.errors ? 'bad' : '')}
        ${kpi('Latency p50', fmtMs(d.latency_ms.p50), `p95 ${fmtMs(d.latency_ms.p95)} · p99 ${fmtMs(d.latency_ms.p99)}`)}
        ${kpi('TTFT p50', fmtMs(d.ttft_ms.p50), `p95 ${fmtMs(d.ttft_ms.p95)} (streamed calls)`)}
        ${kpi('Tokens', `${fmtInt(d.input_tokens)} / ${fmtInt(d.output_tokens)}`, 'in / out')}
        ${kpi('Cost', fmtCost(d.cost_usd))}
      </div>
      ${empty ? html`<div class="empty"><h2>No calls in this window</h2><p class="muted">Pick a longer range, or send some traffic through the proxy.</p></div>` : html`
      <div class="charts" data-charts>
        ${card('calls', 'Calls and errors', [['calls', C.ok], ['errors', C.err]])}
        ${card('latency', 'Latency', [['p50', C.p50], ['p95', C.p95], ['p99', C.p99]])}
        ${card('ttft', 'Time to first token', [['p50', C.p50], ['p95', C.p95]])}
        ${card('tokens', 'Tokens', [['in', C.tin], ['out', C.tout]])}
        ${card('cost', 'Cost', [['USD', C.cost]])}
        ${card('models', 'Calls by model', [...colorOf.entries()].filter(([m]) => models.includes(m)).slice(0, 8))}
      </div>
      <h2 class="sub-h">By model</h2>
      <div class="table-wrap"><table class="grid by-model" data-testid="by-model">
        <thead><tr><th>Model</th><th class="num">Calls</th><th class="c-bar"></th><th class="num">Errors</th><th class="num">Tokens in / out</th><th class="num">Cost</th>
          <th class="num">p50</th><th class="num">p95</th><th class="num">p99</th><th class="num">TTFT p50</th></tr></thead>
        <tbody>${(d.groups || []).map((g) => html`<tr>
          <td><i class="sw" style="background:${colorOf.get(g.model) || '#94a3b8'}"></i> <a href="#/traces${toQuery({ model: g.model === 'unknown' ? '' : g.model })}">${g.model}</a></td>
          <td class="num">${fmtInt(g.calls)}</td>
          <td class="c-bar"><span class="hbar" style="width:${d.calls ? (100 * g.calls) / d.calls : 0}%;background:${colorOf.get(g.model) || '#94a3b8'}"></span></td>
          <td class="num ${g.errors ? 'err-text' : ''}">${g.errors}</td>
          <td class="num">${fmtInt(g.input_tokens)} / ${fmtInt(g.output_tokens)}</td>
          <td class="num">${fmtCost(g.cost_usd)}</td>
          <td class="num">${fmtMs(g.latency_ms.p50)}</td><td class="num">${fmtMs(g.latency_ms.p95)}</td><td class="num">${fmtMs(g.latency_ms.p99)}</td>
          <td class="num">${fmtMs(g.ttft_ms.p50)}</td></tr>`)}</tbody></table></div>`}`);
    if (!empty) drawCharts(series, d.bucket_seconds, colorOf, models);
  }

  function drawCharts(series, bucket, colorOf, models) {
    const modelKeys = [...models.slice(0, 8)];
    if (series.some((r) => (r.models || []).some((m) => !modelKeys.includes(m.model)))) modelKeys.push('(other)');
    const perModel = (r, m) => {
      if (m !== '(other)') return (r.models || []).find((x) => x.model === m)?.calls || 0;
      return (r.models || []).filter((x) => !models.slice(0, 8).includes(x.model)).reduce((a, x) => a + x.calls, 0);
    };
    const defs = {
      calls: { type: 'bars', int: true, fmt: fmtInt, stacks: [
        { label: 'ok', color: C.ok, get: (r) => r.calls - r.errors },
        { label: 'errors', color: C.err, get: (r) => r.errors }] },
      latency: { type: 'lines', fmt: fmtMs, lines: [
        { label: 'p50', color: C.p50, get: (r) => r.latency_ms.p50 },
        { label: 'p95', color: C.p95, get: (r) => r.latency_ms.p95 },
        { label: 'p99', color: C.p99, get: (r) => r.latency_ms.p99 }] },
      ttft: { type: 'lines', fmt: fmtMs, lines: [
        { label: 'p50', color: C.p50, get: (r) => r.ttft_ms.p50 },
        { label: 'p95', color: C.p95, get: (r) => r.ttft_ms.p95 }] },
      tokens: { type: 'bars', int: true, fmt: fmtInt, stacks: [
        { label: 'in', color: C.tin, get: (r) => r.input_tokens },
        { label: 'out', color: C.tout, get: (r) => r.output_tokens }] },
      cost: { type: 'bars', fmt: fmtCost, stacks: [{ label: 'cost', color: C.cost, get: (r) => r.cost_usd || 0 }] },
      models: { type: 'bars', int: true, fmt: fmtInt, stacks: modelKeys.map((m) => ({ label: m, color: colorOf.get(m) || '#94a3b8', get: (r) => perModel(r, m) })) },
    };
    st.charts = [];
    for (const el of root.querySelectorAll('[data-chart]')) {
      const def = defs[el.dataset.chart];
      const w = Math.max(240, el.clientWidth);
      st.charts.push({ el, def });
      setHtml(el, chartSvg(series, bucket, def, w, 150, el.dataset.chart));
    }
  }

  // Tooltip + click-through.
  root.addEventListener('mousemove', (e) => {
    const hit = e.target.closest && e.target.closest('[data-bucket]');
    if (!hit || !st.data) { tip.hidden = true; return; }
    const chart = hit.closest('[data-chart]');
    const c = st.charts.find((x) => x.el === chart);
    const r = st.data.series[Number(hit.dataset.bucket)];
    if (!c || !r) return;
    const items = c.def.type === 'bars' ? c.def.stacks : c.def.lines;
    setHtml(tip, html`<div class="tip-h">${fmtClock(r.start, st.data.bucket_seconds)} – ${fmtClock(r.end, st.data.bucket_seconds)}</div>
      ${items.map((it) => html`<div><i class="sw" style="background:${it.color}"></i>${it.label} <b>${c.def.fmt(it.get(r))}</b></div>`)}
      <div class="muted">${r.calls} call${r.calls === 1 ? '' : 's'} · click to see the traces</div>`);
    tip.hidden = false;
    const pad = 14;
    const x = Math.min(window.innerWidth - tip.offsetWidth - 8, e.clientX + pad);
    tip.style.left = `${Math.max(8, x)}px`;
    tip.style.top = `${e.clientY + pad}px`;
  });
  root.addEventListener('mouseleave', () => { tip.hidden = true; });
  root.addEventListener('click', (e) => {
    const b = e.target.closest('[data-range]');
    if (b) {
      st.range = pickRange(b.dataset.range);
      history.replaceState(null, '', `#/dashboard?range=${st.range[0]}`);
      load();
      return;
    }
    if (e.target.closest('[data-refresh]')) { load(); return; }
    const hit = e.target.closest('[data-bucket]');
    if (hit && st.data) {
      const r = st.data.series[Number(hit.dataset.bucket)];
      location.hash = `#/traces${toQuery({ since: new Date(r.start).getTime(), until: new Date(r.end).getTime() })}`;
    }
  });
  // Charts are drawn at the container's width: redraw when the width (not the height) changes.
  let lastW = 0;
  const ro = new ResizeObserver((entries) => {
    const w = Math.round(entries[0].contentRect.width);
    if (w === lastW) return;
    lastW = w;
    if (st.data && !st.error) requestAnimationFrame(render);
  });
  ro.observe(body);
  load();
  return {
    update(p) { const r = pickRange(p.query.range); if (r[0] !== st.range[0]) { st.range = r; load(); } },
    refresh: load,
    unmount() { st.seq++; ro.disconnect(); tip.hidden = true; },
  };
}

function pickRange(name) {
  return RANGES.find(([r]) => r === name) || RANGES[3];
}

function kpi(label, value, sub, cls) {
  return html`<div class="kpi ${cls || ''}" data-testid="kpi"><div class="kpi-l">${label}</div><div class="kpi-v">${value}</div><div class="kpi-s">${sub || ''}</div></div>`;
}

function card(id, title, legend) {
  const items = legend.map(([l, c]) => html`<span class="lg"><i class="sw" style="background:${c}"></i>${l}</span>`);
  const below = legend.length > 3; // a long legend goes under the chart
  return html`<div class="chart-card"><div class="chart-h"><h3>${title}</h3><span class="spacer"></span>${below ? '' : items}</div>
    <div class="chart" data-chart="${id}" data-testid="chart-${id}"></div>
    ${below ? html`<div class="chart-legend">${items}</div>` : ''}</div>`;
}

/** A round step for about four gridlines up to `v`. */
function niceStep(v) {
  if (!(v > 0)) return 0.25;
  const raw = v / 4;
  const mag = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}

const pad2 = (n) => String(n).padStart(2, '0');
function fmtClock(iso, bucket) {
  const d = new Date(iso);
  const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  if (bucket >= 86400) return `${d.toLocaleString('en', { month: 'short' })} ${d.getDate()}`;
  if (bucket >= 3600) return `${d.toLocaleString('en', { month: 'short' })} ${d.getDate()} ${hm}`;
  if (bucket < 60) return `${hm}:${pad2(d.getSeconds())}`;
  return hm;
}

function humanBucket(s) {
  if (s % 86400 === 0) return `${s / 86400}d`;
  if (s % 3600 === 0) return `${s / 3600}h`;
  if (s % 60 === 0) return `${s / 60}m`;
  return `${s}s`;
}

/** One chart as SVG: stacked bars or lines, a y axis with 4 gridlines, time labels, and one
 *  full-height hit area per bucket (hover: tooltip, click: the traces of that window). */
function chartSvg(series, bucket, def, W, H, id) {
  const R = 8; const T = 8; const B = 20;
  let max = 0;
  if (def.type === 'bars') for (const r of series) max = Math.max(max, def.stacks.reduce((a, s) => a + (s.get(r) || 0), 0));
  else for (const r of series) for (const l of def.lines) { const v = l.get(r); if (Number.isFinite(v)) max = Math.max(max, v); }
  const step = def.int ? Math.max(1, Math.ceil(niceStep(max))) : niceStep(max);
  const ymax = Math.max(step, step * Math.ceil(max / step - 1e-9));
  const levels = [];
  for (let v = 0; v <= ymax + step / 2; v += step) levels.push(v);
  // The y labels decide the left margin.
  const ylabels = levels.map((v) => (v === 0 ? '0' : def.fmt(v)));
  const L = 12 + 6.2 * Math.max(...ylabels.map((t) => t.length));
  const pw = W - L - R; const ph = H - T - B;
  const n = series.length || 1;
  const band = pw / n;
  const y = (v) => T + ph - (v / ymax) * ph;
  const grid = levels.map((v, i) => html`<line class="gl" x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}"/>
    <text class="yl" x="${L - 6}" y="${y(v) + 3}" text-anchor="end">${ylabels[i]}</text>`);
  const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(pw / 70))));
  const xl = series.map((r, i) => (i % every === 0 ? html`<text class="xl" x="${L + i * band + band / 2}" y="${H - 5}" text-anchor="middle">${fmtClock(r.start, bucket)}</text>` : ''));
  let marks;
  if (def.type === 'bars') {
    const bw = Math.max(1, Math.min(band * 0.78, 28));
    marks = series.map((r, i) => {
      let acc = 0;
      return def.stacks.map((s) => {
        const v = s.get(r) || 0;
        if (v <= 0) return '';
        const y0 = y(acc); acc += v; const y1 = y(acc);
        return html`<rect x="${L + i * band + (band - bw) / 2}" y="${y1}" width="${bw}" height="${Math.max(0.5, y0 - y1)}" fill="${s.color}" rx="1"/>`;
      });
    });
  } else {
    marks = def.lines.map((l) => {
      const segs = [];
      let cur = [];
      series.forEach((r, i) => {
        const v = l.get(r);
        if (Number.isFinite(v)) cur.push([L + i * band + band / 2, y(v)]);
        else if (cur.length) { segs.push(cur); cur = []; }
      });
      if (cur.length) segs.push(cur);
      return segs.map((pts) => html`${pts.length > 1 ? html`<polyline fill="none" stroke="${l.color}" stroke-width="1.75" stroke-linejoin="round" points="${pts.map((p) => `${p[0].toFixed(1)},${p[1].toFixed(1)}`).join(' ')}"/>` : ''}
        ${pts.length <= 40 ? pts.map((p) => html`<circle cx="${p[0]}" cy="${p[1]}" r="2.5" fill="${l.color}"/>`) : ''}`);
    });
  }
  const hits = series.map((r, i) => html`<rect class="hit" data-bucket="${i}" data-testid="chart-bucket" data-calls="${r.calls}" x="${L + i * band}" y="${T}" width="${band}" height="${ph}"/>`);
  return html`<svg class="svg-chart" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${id} chart">${grid}${xl}${marks}${hits}</svg>`;
}
