// The trace table: filters (kept in the URL), cursor pagination ("Load more"), live mode
// (polls while the tab is visible) and keyboard navigation (↑/↓ or j/k, Enter opens).

import {
  html, setHtml, api, enc, toQuery, fmtMs, fmtInt, fmtCost, fmtTime, fmtFull, fmtAgo,
  statusPill, errorBox, debounce, isOffline, $,
} from './lib.js';

const PAGE = 50;
const POLL_MS = 3000;
const RANGES = { '15m': 15 * 60e3, '1h': 3600e3, '6h': 6 * 3600e3, '24h': 86400e3, '7d': 7 * 86400e3, '30d': 30 * 86400e3 };
const FILTERS = ['q', 'status', 'model', 'session_id', 'user_id', 'tag', 'range', 'since', 'until'];
const LIVE_KEY = 'llm-tracer.live';

export function mount(root, params) {
  const st = {
    filters: pick(params.query),
    rows: [],
    cursor: null, // next_cursor of the last page loaded
    pages: 0,
    loading: false,
    error: null,
    active: -1,
    live: localStorage.getItem(LIVE_KEY) !== 'off',
    lastPoll: null,
    fresh: new Set(),
    models: new Set(),
    seq: 0,
  };

  setHtml(root, html`
  <section class="page traces-page">
    <div class="page-head">
      <h1>Traces</h1>
      <span class="muted count" data-count></span>
      <span class="spacer"></span>
      <button type="button" class="live-toggle" data-live aria-pressed="false" title="Live mode: show new traces as they arrive (pauses while the tab is hidden)"><i></i><span>Live</span></button>
      <button type="button" class="btn" data-refresh title="Reload">Refresh</button>
    </div>
    <form class="filters" data-filters autocomplete="off">
      <input type="search" name="q" data-search placeholder="Search name, input, output, id…  ( / )" aria-label="Free-text search">
      <select name="status" aria-label="Status">
        <option value="">Any status</option><option value="ok">ok</option><option value="error">error</option><option value="cancelled">cancelled</option>
      </select>
      <input name="model" list="models-list" placeholder="Model" aria-label="Model">
      <datalist id="models-list"></datalist>
      <input name="session_id" placeholder="Session" aria-label="Session id">
      <input name="user_id" placeholder="User" aria-label="User id">
      <input name="tag" placeholder="Tag" aria-label="Tag">
      <select name="range" aria-label="Time range">
        <option value="">All time</option><option value="15m">Last 15 min</option><option value="1h">Last hour</option>
        <option value="6h">Last 6 hours</option><option value="24h">Last 24 hours</option><option value="7d">Last 7 days</option>
        <option value="30d">Last 30 days</option><option value="custom" hidden>Custom window</option>
      </select>
      <button type="button" class="btn ghost" data-clear hidden>Clear</button>
    </form>
    <div class="chips" data-window></div>
    <div class="table-wrap" data-table tabindex="-1"></div>
    <div class="table-foot" data-foot></div>
  </section>`);

  const form = $('[data-filters]', root);
  const table = $('[data-table]', root);
  const foot = $('[data-foot]', root);
  const liveBtn = $('[data-live]', root);

  function fillForm() {
    for (const el of form.elements) {
      if (!el.name) continue;
      if (el.name === 'range') el.value = st.filters.since || st.filters.until ? 'custom' : (st.filters.range || '');
      else el.value = st.filters[el.name] || '';
    }
    const any = FILTERS.some((k) => st.filters[k]);
    $('[data-clear]', root).hidden = !any;
    const win = $('[data-window]', root);
    if (st.filters.since || st.filters.until) {
      const from = st.filters.since ? fmtFull(Number(st.filters.since)) : 'the beginning';
      const to = st.filters.until ? fmtFull(Number(st.filters.until)) : 'now';
      setHtml(win, html`<span class="chip">Window ${from} → ${to} <button type="button" data-clear-window aria-label="Clear time window">×</button></span>`);
    } else setHtml(win, html``);
  }

  function apiQuery(extra = {}) {
    const f = st.filters;
    const q = { limit: PAGE, q: f.q, status: f.status, model: f.model, session_id: f.session_id, user_id: f.user_id, tag: f.tag, ...extra };
    if (f.since || f.until) {
      q.since = f.since;
      q.until = f.until;
    } else if (RANGES[f.range]) {
      q.since = String(Date.now() - RANGES[f.range]);
    }
    return toQuery(q);
  }

  function writeUrl() {
    const q = toQuery(Object.fromEntries(FILTERS.map((k) => [k, st.filters[k]])));
    const target = `#/traces${q}`;
    if (location.hash !== target) history.replaceState(null, '', target);
  }

  async function load(reset = true) {
    const seq = ++st.seq;
    st.loading = true;
    renderFoot();
    try {
      const page = await api(`/api/traces${apiQuery(reset ? {} : { cursor: st.cursor })}`);
      if (seq !== st.seq) return;
      st.error = null;
      if (reset) {
        st.rows = page.traces;
        st.pages = 1;
        st.active = Math.min(st.active, st.rows.length - 1);
      } else {
        const seen = new Set(st.rows.map((r) => r.trace_id));
        st.rows = st.rows.concat(page.traces.filter((t) => !seen.has(t.trace_id)));
        st.pages += 1;
      }
      st.cursor = page.next_cursor;
      st.lastPoll = Date.now();
    } catch (e) {
      if (seq !== st.seq) return;
      st.error = e;
    } finally {
      if (seq === st.seq) st.loading = false;
    }
    renderRows();
    renderFoot();
  }

  async function poll() {
    if (!st.live || st.loading || document.visibilityState !== 'visible' || isOffline()) return;
    if (st.filters.until) return; // a closed window gets no new traces
    const seq = st.seq;
    let page;
    try {
      page = await api(`/api/traces${apiQuery()}`);
    } catch {
      return; // the banner reports it
    }
    if (seq !== st.seq) return;
    st.lastPoll = Date.now();
    const known = new Map(st.rows.map((r, i) => [r.trace_id, i]));
    const added = [];
    for (const t of page.traces) {
      if (known.has(t.trace_id)) st.rows[known.get(t.trace_id)] = t; // still running: counts change
      else added.push(t);
    }
    if (added.length) {
      const activeId = st.rows[st.active]?.trace_id;
      st.rows = added.concat(st.rows);
      if (st.pages <= 1) {
        st.rows = st.rows.slice(0, Math.max(PAGE, page.traces.length));
        st.cursor = page.next_cursor;
      }
      for (const t of added) st.fresh.add(t.trace_id);
      if (activeId) st.active = st.rows.findIndex((r) => r.trace_id === activeId);
    }
    renderRows();
    renderFoot();
    st.fresh.clear();
  }

  function renderRows() {
    for (const r of st.rows) for (const m of r.models || []) st.models.add(m);
    setHtml($('#models-list', root), html`${[...st.models].sort().map((m) => html`<option value="${m}">`)}`);
    const count = $('[data-count]', root);
    count.textContent = st.rows.length ? `${st.rows.length}${st.cursor ? '+' : ''} shown` : '';
    if (st.error && !st.rows.length) {
      setHtml(table, errorBox(st.error, 'traces'));
      return;
    }
    if (!st.rows.length) {
      if (st.loading) { setHtml(table, html`<div class="empty"><p class="muted">Loading traces…</p></div>`); return; }
      const filtered = FILTERS.some((k) => st.filters[k]);
      setHtml(table, filtered
        ? html`<div class="empty" data-testid="no-traces"><h2>No traces match these filters</h2><p><button type="button" class="btn" data-clear>Clear filters</button></p></div>`
        : html`<div class="empty" data-testid="no-traces"><h2>No traces yet</h2>
          <p class="muted">Point your app's OpenAI base URL at the proxy and every call shows up here:</p>
          <pre class="code">export OPENAI_BASE_URL=http://127.0.0.1:8080/v1</pre>
          <p class="muted">Or run <code>llm-tracer demo</code> for sample traffic.</p></div>`);
      return;
    }
    setHtml(table, html`<table class="grid traces">
      <thead><tr>
        <th class="c-time">Time</th><th class="c-name">Name</th><th class="c-status">Status</th>
        <th class="num c-dur">Duration</th><th class="num c-llm" title="LLM calls">LLM</th>
        <th class="num c-tok" title="Tokens in / out">Tokens</th><th class="num c-cost">Cost</th>
        <th class="c-models">Models</th><th class="c-prev">Input</th><th class="c-prev c-out">Output</th>
      </tr></thead>
      <tbody>${st.rows.map(row)}</tbody></table>`);
    markActive(false);
  }

  function row(t, i) {
    const cls = [t.status === 'error' ? 'is-error' : '', st.fresh.has(t.trace_id) ? 'fresh' : '', i === st.active ? 'active' : ''].join(' ');
    const output = t.status === 'error' && t.error
      ? html`<span class="err-text">${t.error}</span>`
      : t.output_preview ? html`${t.output_preview}` : html`<span class="muted">—</span>`;
    return html`<tr data-testid="trace-row" data-trace-id="${t.trace_id}" data-index="${i}" tabindex="-1" class="${cls}">
      <td class="c-time mono" title="${fmtFull(t.start_time)} (${fmtAgo(t.start_time)})">${fmtTime(t.start_time)}</td>
      <td class="c-name"><a href="#/traces/${enc(t.trace_id)}" tabindex="-1" title="${t.trace_id}">${t.name || t.trace_id}</a>${t.user_id ? html`<span class="sub">${t.user_id}</span>` : ''}</td>
      <td class="c-status">${statusPill(t.status, t.error || '')}</td>
      <td class="num c-dur">${fmtMs(t.duration_ms)}</td>
      <td class="num c-llm">${t.llm_calls}</td>
      <td class="num c-tok">${fmtInt(t.input_tokens)} <span class="muted">/</span> ${fmtInt(t.output_tokens)}</td>
      <td class="num c-cost">${fmtCost(t.cost_usd)}</td>
      <td class="c-models">${(t.models || []).slice(0, 3).map((m) => html`<span class="tag model">${m}</span>`)}${t.models && t.models.length > 3 ? html`<span class="muted">+${t.models.length - 3}</span>` : ''}</td>
      <td class="c-prev" title="${t.input_preview || ''}">${t.input_preview || html`<span class="muted">—</span>`}</td>
      <td class="c-prev c-out" title="${t.output_preview || t.error || ''}">${output}</td>
    </tr>`;
  }

  function renderFoot() {
    const live = st.live && !st.filters.until;
    liveBtn.setAttribute('aria-pressed', String(st.live));
    liveBtn.classList.toggle('on', live);
    liveBtn.classList.toggle('paused', live && document.visibilityState !== 'visible');
    liveBtn.querySelector('span').textContent = !st.live ? 'Live off' : st.filters.until ? 'Live (window closed)' : document.visibilityState !== 'visible' ? 'Live paused' : 'Live';
    setHtml(foot, html`
      ${st.cursor ? html`<button type="button" class="btn" data-more-rows ${st.loading ? 'disabled' : ''}>${st.loading ? 'Loading…' : 'Load more'}</button>` : st.rows.length ? html`<span class="muted">End of list</span>` : ''}
      ${st.error && st.rows.length ? html`<span class="err-text">${st.error.message}</span>` : ''}
      <span class="spacer"></span>
      <span class="muted keys"><kbd>↑</kbd><kbd>↓</kbd> move · <kbd>Enter</kbd> open · <kbd>/</kbd> search</span>`);
  }

  function markActive(focus) {
    const rows = table.querySelectorAll('tr[data-testid="trace-row"]');
    rows.forEach((r, i) => {
      r.classList.toggle('active', i === st.active);
      r.tabIndex = i === Math.max(0, st.active) ? 0 : -1;
    });
    const el = rows[st.active];
    if (el && focus) {
      el.focus({ preventScroll: true });
      el.scrollIntoView({ block: 'nearest' });
    }
  }

  function open(i) {
    const t = st.rows[i];
    if (t) location.hash = `#/traces/${enc(t.trace_id)}`;
  }

  // --- events ---

  const applyFilters = () => {
    const next = {};
    for (const el of form.elements) if (el.name && el.value.trim()) next[el.name] = el.value.trim();
    if (next.range === 'custom') {
      delete next.range;
      next.since = st.filters.since;
      next.until = st.filters.until;
    }
    st.filters = pick(next);
    st.active = -1;
    fillForm();
    writeUrl();
    load(true);
  };
  const typed = debounce(applyFilters, 300);
  form.addEventListener('submit', (e) => e.preventDefault());
  form.addEventListener('input', (e) => { if (e.target.tagName === 'INPUT') typed(); });
  form.addEventListener('change', (e) => { if (e.target.tagName === 'SELECT') applyFilters(); });
  form.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { e.preventDefault(); applyFilters(); }
    if (e.key === 'ArrowDown' && e.target.name === 'q') { e.preventDefault(); st.active = Math.max(0, st.active); markActive(true); }
    if (e.key === 'Escape') e.target.blur();
  });

  root.addEventListener('click', (e) => {
    if (e.target.closest('[data-clear]')) {
      st.filters = {};
      fillForm();
      writeUrl();
      load(true);
      return;
    }
    if (e.target.closest('[data-clear-window]')) {
      delete st.filters.since;
      delete st.filters.until;
      fillForm();
      writeUrl();
      load(true);
      return;
    }
    if (e.target.closest('[data-more-rows]')) { load(false); return; }
    if (e.target.closest('[data-refresh]')) { load(true); return; }
    if (e.target.closest('[data-live]')) {
      st.live = !st.live;
      localStorage.setItem(LIVE_KEY, st.live ? 'on' : 'off');
      renderFoot();
      if (st.live) poll();
      return;
    }
    const tr = e.target.closest('tr[data-testid="trace-row"]');
    if (tr && !e.target.closest('a')) {
      if (e.metaKey || e.ctrlKey) { window.open(`#/traces/${enc(tr.dataset.traceId)}`, '_blank'); return; }
      open(Number(tr.dataset.index));
    }
  });

  function onKey(e) {
    const t = e.target;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'SELECT' || t.tagName === 'TEXTAREA')) return;
    if (e.metaKey || e.ctrlKey || e.altKey) return;
    const n = st.rows.length;
    if (!n) return;
    let next = null;
    if (e.key === 'ArrowDown' || e.key === 'j') next = Math.min(n - 1, st.active + 1);
    else if (e.key === 'ArrowUp' || e.key === 'k') next = Math.max(0, st.active - 1);
    else if (e.key === 'Home') next = 0;
    else if (e.key === 'End') next = n - 1;
    else if ((e.key === 'Enter' || e.key === 'o') && st.active >= 0) { e.preventDefault(); open(st.active); return; }
    if (next !== null) {
      e.preventDefault();
      st.active = next;
      markActive(true);
    }
  }
  document.addEventListener('keydown', onKey);

  const onVisible = () => { renderFoot(); if (document.visibilityState === 'visible') poll(); };
  document.addEventListener('visibilitychange', onVisible);
  const timer = setInterval(poll, POLL_MS);
  const ago = setInterval(() => {
    const el = liveBtn;
    if (st.lastPoll) el.title = `Live mode: polls every ${POLL_MS / 1000} s while this tab is visible. Last update ${Math.round((Date.now() - st.lastPoll) / 1000)} s ago.`;
  }, 1000);

  fillForm();
  renderFoot();
  load(true);

  return {
    update(p) {
      const next = pick(p.query);
      if (JSON.stringify(next) !== JSON.stringify(st.filters)) {
        st.filters = next;
        st.active = -1;
        fillForm();
        load(true);
      }
    },
    refresh() { load(true); },
    unmount() {
      clearInterval(timer);
      clearInterval(ago);
      document.removeEventListener('keydown', onKey);
      document.removeEventListener('visibilitychange', onVisible);
      st.seq++;
    },
  };
}

function pick(q) {
  const out = {};
  for (const k of FILTERS) if (q && q[k]) out[k] = q[k];
  return out;
}
