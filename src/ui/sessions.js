// Sessions: traces grouped by session_id. The list is ordered by latest activity, with totals;
// one session shows its traces in order (oldest first), as a conversation.

import {
  html, setHtml, api, enc, toQuery, fmtMs, fmtInt, fmtCost, fmtTime, fmtFull, fmtAgo,
  statusPill, errorBox, debounce, $,
} from './lib.js';

export function mount(root, params) {
  return params.sessionId ? mountOne(root, params.sessionId) : mountList(root, params.query);
}

function mountList(root, query) {
  const st = { q: query.q || '', rows: [], cursor: null, loading: false, error: null, seq: 0 };
  setHtml(root, html`<section class="page sessions-page">
    <div class="page-head"><h1>Sessions</h1><span class="muted count" data-count></span><span class="spacer"></span>
      <button type="button" class="btn" data-refresh>Refresh</button></div>
    <form class="filters" data-filters autocomplete="off">
      <input type="search" name="q" data-search placeholder="Search session or user id…  ( / )" aria-label="Search sessions" value="${st.q}">
    </form>
    <div class="table-wrap" data-table></div>
    <div class="table-foot" data-foot></div></section>`);
  const table = $('[data-table]', root);
  const foot = $('[data-foot]', root);

  async function load(reset) {
    const seq = ++st.seq;
    st.loading = true;
    renderFoot();
    try {
      const page = await api(`/api/sessions${toQuery({ limit: 50, q: st.q, cursor: reset ? null : st.cursor })}`);
      if (seq !== st.seq) return;
      st.rows = reset ? page.sessions : st.rows.concat(page.sessions);
      st.cursor = page.next_cursor;
      st.error = null;
    } catch (e) {
      if (seq !== st.seq) return;
      st.error = e;
    } finally {
      if (seq === st.seq) st.loading = false;
    }
    render();
    renderFoot();
  }

  function render() {
    $('[data-count]', root).textContent = st.rows.length ? `${st.rows.length}${st.cursor ? '+' : ''} shown` : '';
    if (st.error && !st.rows.length) { setHtml(table, errorBox(st.error, 'sessions')); return; }
    if (!st.rows.length) {
      setHtml(table, st.loading ? html`<div class="empty"><p class="muted">Loading sessions…</p></div>`
        : html`<div class="empty"><h2>${st.q ? 'No sessions match' : 'No sessions yet'}</h2>
          <p class="muted">Traces are grouped into a session by the <code>x-tracer-session-id</code> header (or a span's <code>session_id</code>).</p></div>`);
      return;
    }
    setHtml(table, html`<table class="grid sessions">
      <thead><tr><th>Session</th><th>Last activity</th><th class="num">Traces</th><th>Status</th><th class="num">Span</th>
        <th class="num">LLM</th><th class="num" title="Tokens in / out">Tokens</th><th class="num">Cost</th><th>Users</th><th class="c-prev">First input</th><th class="c-prev c-out">Last output</th></tr></thead>
      <tbody>${st.rows.map((s) => html`<tr data-testid="session-row" data-session-id="${s.session_id}" tabindex="0" class="${s.errors ? 'is-error' : ''}">
        <td class="c-name"><a href="#/sessions/${enc(s.session_id)}">${s.session_id}</a></td>
        <td class="mono" title="${fmtFull(s.end_time)}">${fmtTime(s.end_time)} <span class="muted">${fmtAgo(s.end_time)}</span></td>
        <td class="num">${s.trace_count}${s.complete ? '' : '+'}</td>
        <td>${statusPill(s.status)}${s.errors ? html` <span class="err-text">${s.errors} failed</span>` : ''}</td>
        <td class="num" title="first trace start → last trace end">${fmtMs(s.duration_ms)}</td>
        <td class="num">${s.llm_calls}</td>
        <td class="num">${fmtInt(s.input_tokens)} <span class="muted">/</span> ${fmtInt(s.output_tokens)}</td>
        <td class="num">${fmtCost(s.cost_usd)}</td>
        <td>${s.user_ids.slice(0, 3).join(', ')}</td>
        <td class="c-prev" title="${s.first_input_preview || ''}">${s.first_input_preview || ''}</td>
        <td class="c-prev c-out" title="${s.last_output_preview || ''}">${s.last_output_preview || ''}</td></tr>`)}</tbody></table>`);
  }

  function renderFoot() {
    setHtml(foot, html`${st.cursor ? html`<button type="button" class="btn" data-more-rows ${st.loading ? 'disabled' : ''}>${st.loading ? 'Loading…' : 'Load more'}</button>` : st.rows.length ? html`<span class="muted">End of list</span>` : ''}
      ${st.error && st.rows.length ? html`<span class="err-text">${st.error.message}</span>` : ''}`);
  }

  const form = $('[data-filters]', root);
  form.addEventListener('submit', (e) => e.preventDefault());
  form.addEventListener('input', debounce(() => {
    st.q = form.elements.q.value.trim();
    history.replaceState(null, '', `#/sessions${toQuery({ q: st.q })}`);
    load(true);
  }, 300));
  root.addEventListener('click', (e) => {
    if (e.target.closest('[data-refresh]')) { load(true); return; }
    if (e.target.closest('[data-more-rows]')) { load(false); return; }
    const tr = e.target.closest('tr[data-testid="session-row"]');
    if (tr && !e.target.closest('a')) location.hash = `#/sessions/${enc(tr.dataset.sessionId)}`;
  });
  root.addEventListener('keydown', (e) => {
    const tr = e.target.closest && e.target.closest('tr[data-testid="session-row"]');
    if (!tr) return;
    if (e.key === 'Enter') location.hash = `#/sessions/${enc(tr.dataset.sessionId)}`;
    if (e.key === 'ArrowDown' && tr.nextElementSibling) { e.preventDefault(); tr.nextElementSibling.focus(); }
    if (e.key === 'ArrowUp' && tr.previousElementSibling) { e.preventDefault(); tr.previousElementSibling.focus(); }
  });
  load(true);
  return {
    update(p) { if ((p.query.q || '') !== st.q) { st.q = p.query.q || ''; form.elements.q.value = st.q; load(true); } },
    refresh() { load(true); },
    unmount() { st.seq++; },
  };
}

function mountOne(root, id) {
  const st = { seq: 0 };
  setHtml(root, html`<section class="page session-page" data-page><div class="empty"><p class="muted">Loading session…</p></div></section>`);
  const page = $('[data-page]', root);

  async function load() {
    const seq = ++st.seq;
    let data;
    try {
      data = await api(`/api/sessions/${enc(id)}`);
    } catch (e) {
      if (seq !== st.seq) return;
      setHtml(page, e.status === 404
        ? html`<div class="empty" data-testid="session-missing"><h2>Session not found</h2><p>No trace carries session id <code>${id}</code>.</p><p><a class="btn" href="#/sessions">All sessions</a></p></div>`
        : errorBox(e, 'this session'));
      return;
    }
    if (seq !== st.seq) return;
    const s = data.session;
    setHtml(page, html`
      <div class="trace-head">
        <div class="crumbs"><a href="#/sessions">Sessions</a> <span class="muted">/</span> <span class="mono">${s.session_id}</span></div>
        <div class="title-row"><h1>${s.session_id}</h1> ${statusPill(s.status)}</div>
        <dl class="facts">
          <div><dt>Traces</dt><dd>${s.trace_count}${s.complete ? '' : html` <span class="muted">(newest ${s.trace_count} shown)</span>`}</dd></div>
          <div><dt>From</dt><dd>${fmtFull(s.start_time)}</dd></div>
          <div><dt>Span</dt><dd>${fmtMs(s.duration_ms)}</dd></div>
          <div><dt>Errors</dt><dd class="${s.errors ? 'err-text' : ''}">${s.errors}</dd></div>
          <div><dt>LLM calls</dt><dd>${s.llm_calls}</dd></div>
          <div><dt>Tokens in / out</dt><dd>${fmtInt(s.input_tokens)} / ${fmtInt(s.output_tokens)}</dd></div>
          <div><dt>Cost</dt><dd>${fmtCost(s.cost_usd)}</dd></div>
          ${s.user_ids.length ? html`<div><dt>Users</dt><dd>${s.user_ids.join(', ')}</dd></div>` : ''}
          ${s.models.length ? html`<div><dt>Models</dt><dd>${s.models.map((m) => html`<span class="tag model">${m}</span>`)}</dd></div>` : ''}
        </dl>
        <p><a href="#/traces${toQuery({ session_id: s.session_id })}">Open these traces in the table →</a></p>
      </div>
      <ol class="convo">${data.traces.map((t, i) => html`<li class="turn${t.status === 'error' ? ' is-error' : ''}" data-testid="session-trace" data-trace-id="${t.trace_id}">
        <a class="turn-link" href="#/traces/${enc(t.trace_id)}">
          <div class="turn-head"><span class="turn-n">${i + 1}</span><b>${t.name || t.trace_id}</b> ${statusPill(t.status, t.error || '')}
            <span class="spacer"></span><span class="muted mono" title="${fmtFull(t.start_time)}">${fmtTime(t.start_time)}</span>
            <span class="muted">${fmtMs(t.duration_ms)} · ${t.llm_calls} LLM · ${fmtInt(t.input_tokens)}/${fmtInt(t.output_tokens)} tok · ${fmtCost(t.cost_usd)}</span></div>
          ${t.input_preview ? html`<div class="bubble role-user"><div class="role">input</div><div class="content">${t.input_preview}</div></div>` : ''}
          ${t.output_preview ? html`<div class="bubble role-assistant"><div class="role">output</div><div class="content">${t.output_preview}</div></div>`
            : t.error ? html`<div class="error-box"><b>error</b> ${t.error}</div>` : ''}
        </a></li>`)}</ol>`);
  }
  load();
  return { refresh: load, unmount() { st.seq++; } };
}
