// One trace: the timeline (a virtualised waterfall: only the rows in view are in the DOM, so
// 5,000 spans stay responsive), the model-architecture view (spans folded by kind and name
// along the parent path) and the span detail panel.

import {
  html, setHtml, api, enc, fmtMs, fmtInt, fmtCost, fmtFull, fmtAgo, micros, statusPill,
  kindBadge, KINDS, errorBox, resetLongTexts, wireLongTexts, spanModel, $,
} from './lib.js';
import { renderDetail, callParams } from './detail.js';

const ROW_H = 28;
const OVERSCAN = 8;
const MAX_ARCH_NODES = 500;

export function mount(root, params) {
  const st = {
    id: params.traceId,
    tab: params.tab,
    spanId: params.spanId,
    node: params.node,
    data: null,
    error: null,
    order: [], // every span in tree order: { s, depth, kids, start, end }
    visible: [], // `order` minus collapsed subtrees
    collapsed: new Set(),
    highlight: null, // Set of span ids (an architecture node's spans)
    arch: null,
    t0: 0,
    total: 1,
    range: [-1, -1],
    seq: 0,
  };

  setHtml(root, html`<section class="page trace-page" data-trace-page>
    <div class="empty"><p class="muted">Loading trace…</p></div></section>`);
  const page = $('[data-trace-page]', root);
  wireLongTexts(page);

  async function load() {
    const seq = ++st.seq;
    try {
      const data = await api(`/api/traces/${enc(st.id)}`);
      if (seq !== st.seq) return;
      st.data = data;
      st.error = null;
      build();
    } catch (e) {
      if (seq !== st.seq) return;
      st.error = e;
    }
    renderAll();
  }

  function build() {
    const spans = st.data.spans;
    const byId = new Map(spans.map((s) => [s.span_id, s]));
    const kids = new Map();
    const roots = [];
    for (const s of spans) {
      const p = s.parent_span_id;
      if (p && p !== s.span_id && byId.has(p)) {
        if (!kids.has(p)) kids.set(p, []);
        kids.get(p).push(s);
      } else roots.push(s);
    }
    const order = [];
    const seen = new Set();
    const walk = (top) => {
      const stack = [[top, 0]];
      while (stack.length) {
        const [s, d] = stack.pop();
        if (seen.has(s.span_id)) continue;
        seen.add(s.span_id);
        const ch = kids.get(s.span_id) || [];
        order.push({ s, depth: d, kids: ch.length, start: micros(s.start_time), end: micros(s.end_time) });
        for (let i = ch.length - 1; i >= 0; i--) stack.push([ch[i], d + 1]);
      }
    };
    roots.forEach(walk);
    spans.forEach((s) => { if (!seen.has(s.span_id)) walk(s); }); // parent cycles
    st.order = order;
    let t0 = Infinity;
    let t1 = -Infinity;
    for (const o of order) { t0 = Math.min(t0, o.start); t1 = Math.max(t1, o.end, o.start); }
    st.t0 = Number.isFinite(t0) ? t0 : 0;
    st.total = Math.max(1, t1 - t0);
    st.arch = null;
    computeVisible();
    applyNode();
    if (st.spanId) expandTo(st.spanId);
  }

  /** An architecture node selects its spans: they are highlighted in the timeline. */
  function applyNode() {
    if (st.node === null || st.node === undefined) return;
    if (!st.arch) buildArch();
    const n = st.arch.nodes.find((x) => x.id === st.node);
    st.highlight = n ? new Set(n.spans.map((s) => s.span_id)) : null;
  }

  function computeVisible() {
    const vis = [];
    let skip = Infinity;
    for (const o of st.order) {
      if (o.depth > skip) continue;
      skip = st.collapsed.has(o.s.span_id) ? o.depth : Infinity;
      vis.push(o);
    }
    st.visible = vis;
    st.range = [-1, -1];
  }

  function expandTo(spanId) {
    const byId = new Map(st.order.map((o) => [o.s.span_id, o.s]));
    let s = byId.get(spanId);
    let changed = false;
    const guard = new Set();
    while (s && s.parent_span_id && !guard.has(s.span_id)) {
      guard.add(s.span_id);
      if (st.collapsed.delete(s.parent_span_id)) changed = true;
      s = byId.get(s.parent_span_id);
    }
    if (changed) computeVisible();
  }

  // --- rendering ---

  function renderAll() {
    if (st.error) {
      const missing = st.error.status === 404;
      setHtml(page, missing
        ? html`<div class="empty" data-testid="trace-missing"><h2>Trace not found</h2>
            <p>There is no trace with ID <code>${st.id}</code>. It may have been deleted, or its spans have not been stored yet.</p>
            <p><a class="btn" href="#/traces">Back to traces</a> <button type="button" class="btn ghost" data-reload>Try again</button></p></div>`
        : errorBox(st.error, 'this trace'));
      return;
    }
    if (!st.data) return;
    const t = st.data.trace;
    const kindsHere = KINDS.filter((k) => st.order.some((o) => o.s.kind === k));
    setHtml(page, html`
      <div class="trace-head">
        <div class="crumbs"><a href="#/traces">Traces</a> <span class="muted">/</span> <span class="mono">${t.trace_id}</span></div>
        <div class="title-row">
          <h1>${t.name || t.trace_id}</h1> ${statusPill(t.status, t.error || '')}
          <span class="spacer"></span>
          <button type="button" class="btn ghost small" data-reload title="Reload this trace">Reload</button>
        </div>
        <dl class="facts">
          <div><dt>Started</dt><dd title="${fmtFull(t.start_time)}">${fmtFull(t.start_time)} <span class="muted">${fmtAgo(t.start_time)}</span></dd></div>
          <div><dt>Duration</dt><dd>${fmtMs(t.duration_ms)}</dd></div>
          <div><dt>Spans</dt><dd>${t.span_count}</dd></div>
          <div><dt>LLM calls</dt><dd>${t.llm_calls}</dd></div>
          <div><dt>Tokens in / out</dt><dd>${fmtInt(t.input_tokens)} / ${fmtInt(t.output_tokens)}</dd></div>
          <div><dt>Cost</dt><dd>${fmtCost(t.cost_usd)}</dd></div>
          ${t.session_id ? html`<div><dt>Session</dt><dd><a href="#/sessions/${enc(t.session_id)}">${t.session_id}</a></dd></div>` : ''}
          ${t.user_id ? html`<div><dt>User</dt><dd>${t.user_id}</dd></div>` : ''}
          ${t.models && t.models.length ? html`<div><dt>Models</dt><dd>${t.models.map((m) => html`<span class="tag model">${m}</span>`)}</dd></div>` : ''}
          ${t.tags && t.tags.length ? html`<div><dt>Tags</dt><dd>${t.tags.map((g) => html`<span class="tag">${g}</span>`)}</dd></div>` : ''}
        </dl>
        ${t.error ? html`<div class="err-line" title="${t.error}"><b>Error</b> ${t.error}</div>` : ''}
      </div>
      <div class="tabs" role="tablist">
        <a role="tab" href="#/traces/${enc(st.id)}${st.spanId ? `/spans/${enc(st.spanId)}` : ''}" class="${st.tab === 'timeline' ? 'active' : ''}" data-testid="tab-timeline">Timeline</a>
        <a role="tab" href="#/traces/${enc(st.id)}/architecture" class="${st.tab === 'architecture' ? 'active' : ''}" data-testid="tab-architecture">Architecture</a>
        <span class="spacer"></span>
        <span class="legend" aria-label="Legend">${kindsHere.map((k) => html`<span class="lg"><i class="sw k-${k}"></i>${k}</span>`)}<span class="lg"><i class="sw sw-error"></i>error</span></span>
      </div>
      <div class="split">
        <div class="main-pane" data-main></div>
        <aside class="detail-pane" data-detail aria-label="Details"></aside>
      </div>`);
    renderMain();
    renderDetailPane();
  }

  function renderMain() {
    const main = $('[data-main]', page);
    if (!main) return;
    if (st.tab === 'architecture') {
      renderArch(main);
      return;
    }
    setHtml(main, html`<div class="tl" data-tl>
      <div class="tl-scroll" data-scroll tabindex="0" aria-label="Timeline: ↑/↓ select, ←/→ collapse/expand">
        <div class="tl-axis-row"><div class="tl-namehead">${st.order.length} spans</div><div class="tl-axis" data-axis>${axisTicks()}</div></div>
        <div class="tl-body" data-body style="height:${st.visible.length * ROW_H}px">
          <div class="tl-grid">${ticks().map((x) => html`<i style="left:${x.pct}%"></i>`)}</div>
          <div data-rows></div>
        </div>
      </div></div>`);
    const scroll = $('[data-scroll]', main);
    scroll.addEventListener('scroll', () => requestAnimationFrame(renderRows), { passive: true });
    scroll.addEventListener('keydown', onTimelineKey);
    st.range = [-1, -1];
    renderRows();
    if (st.spanId) revealSelected();
  }

  function ticks() {
    const totalMs = st.total / 1000;
    const main = $('[data-main]', page);
    const trackW = main && main.clientWidth ? main.clientWidth * 0.6 : 600;
    const raw = totalMs / Math.max(2, Math.min(7, Math.floor(trackW / 85)));
    const mag = 10 ** Math.floor(Math.log10(raw || 1));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || mag * 10;
    const out = [];
    for (let v = 0; v <= totalMs * 1.0001 && out.length < 20; v += step) out.push({ v, pct: (v / totalMs) * 100 });
    return out;
  }

  function axisTicks() {
    return ticks().map((x) => html`<span class="tick${x.pct > 94 ? ' end' : ''}" style="left:${x.pct}%">${x.v === 0 ? '0' : fmtMs(x.v)}</span>`);
  }

  function renderRows(force) {
    const main = $('[data-main]', page);
    const scroll = main && $('[data-scroll]', main);
    const layer = scroll && $('[data-rows]', scroll);
    if (!layer) return;
    const head = 26;
    const top = Math.max(0, scroll.scrollTop - head);
    const h = scroll.clientHeight || 600;
    const from = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const to = Math.min(st.visible.length, Math.ceil((top + h) / ROW_H) + OVERSCAN);
    if (!force && from === st.range[0] && to === st.range[1]) return;
    st.range = [from, to];
    const rows = [];
    for (let i = from; i < to; i++) rows.push(rowHtml(st.visible[i], i));
    setHtml(layer, html`${rows}`);
  }

  function rowHtml(o, i) {
    const s = o.s;
    const left = ((o.start - st.t0) / st.total) * 100;
    const width = Math.max(0, ((Math.max(o.end, o.start) - o.start) / st.total) * 100);
    const ttft = s.llm && s.llm.stream && Number.isFinite(s.llm.ttft_ms) ? s.llm.ttft_ms : null;
    const dur = s.duration_ms;
    const ttftPct = ttft !== null && dur > 0 ? Math.min(100, (ttft / dur) * 100) : null;
    const sel = s.span_id === st.spanId;
    const hl = st.highlight && st.highlight.has(s.span_id);
    const collapsed = st.collapsed.has(s.span_id);
    const end = left + width;
    const place = end <= 72 ? 'after' : left >= 28 ? 'before' : 'inside';
    const label = html`${fmtMs(dur)}${ttft !== null ? html` · <b>TTFT ${fmtMs(ttft)}</b>` : ''}${s.status === 'error' && s.error ? html` · <span class="err-text">${s.error.message || s.error.type}</span>` : ''}`;
    const model = spanModel(s);
    const title = `${s.name} (${s.kind}${model ? `, ${model}` : ''}) — ${fmtMs(dur)}${ttft !== null ? `, TTFT ${fmtMs(ttft)}` : ''}${s.status !== 'ok' ? ` — ${s.status}${s.error ? `: ${s.error.message}` : ''}` : ''}`;
    return html`<div class="tl-row${sel ? ' sel' : ''}${hl ? ' hl' : ''}${s.status === 'error' ? ' is-error' : ''}" style="top:${i * ROW_H}px" data-span="${s.span_id}" data-row="${i}">
      <div class="tl-name" style="padding-left:${6 + Math.min(o.depth, 30) * 14}px" title="${s.name}">
        ${o.kids ? html`<button type="button" class="caret${collapsed ? ' closed' : ''}" data-toggle="${s.span_id}" aria-label="${collapsed ? 'Expand' : 'Collapse'}" tabindex="-1">▾</button>` : html`<span class="caret-gap"></span>`}
        <i class="dot k-${s.kind}"></i><span class="nm">${s.name}</span>${model && s.kind === 'llm' ? html`<span class="sub">${model}</span>` : ''}
        ${collapsed ? html`<span class="count-badge">+${o.kids}</span>` : ''}
      </div>
      <div class="tl-track">
        <div class="bar k-${s.kind} s-${s.status}" data-testid="timeline-bar" data-span-id="${s.span_id}" data-kind="${s.kind}" data-status="${s.status}" style="left:${left}%;width:${width}%" title="${title}">${ttftPct !== null ? html`<span class="ttft" data-testid="ttft" style="width:${ttftPct}%" title="time to first token: ${fmtMs(ttft)}"></span>` : ''}</div>
        <span class="bar-label ${place}" style="${place === 'after' ? `left:calc(${end}% + 6px)` : place === 'before' ? `right:calc(${100 - left}% + 6px)` : `right:calc(${100 - end}% + 6px)`}">${label}</span>
      </div></div>`;
  }

  function revealSelected() {
    const main = $('[data-main]', page);
    const scroll = main && $('[data-scroll]', main);
    if (!scroll) return;
    const i = st.visible.findIndex((o) => o.s.span_id === st.spanId);
    if (i < 0) return;
    const y = i * ROW_H;
    const head = 26;
    if (y < scroll.scrollTop || y + ROW_H + head > scroll.scrollTop + scroll.clientHeight) {
      scroll.scrollTop = Math.max(0, y - scroll.clientHeight / 3);
    }
    renderRows(true);
  }

  function select(spanId, how = 'push') {
    const url = `#/traces/${enc(st.id)}/spans/${enc(spanId)}`;
    if (how === 'push') location.hash = url; // router → update()
    else {
      history.replaceState(null, '', url);
      st.spanId = spanId;
      renderRows(true);
      revealSelected();
      renderDetailPane();
    }
  }

  function onTimelineKey(e) {
    const i = st.visible.findIndex((o) => o.s.span_id === st.spanId);
    let next = null;
    if (e.key === 'ArrowDown' || e.key === 'j') next = Math.min(st.visible.length - 1, i + 1);
    else if (e.key === 'ArrowUp' || e.key === 'k') next = Math.max(0, i < 0 ? 0 : i - 1);
    else if ((e.key === 'ArrowLeft' || e.key === 'ArrowRight') && i >= 0) {
      const o = st.visible[i];
      if (o.kids) {
        if (e.key === 'ArrowLeft') st.collapsed.add(o.s.span_id); else st.collapsed.delete(o.s.span_id);
        computeVisible();
        renderMain();
        $('[data-scroll]', page)?.focus();
      }
      e.preventDefault();
      return;
    } else if (e.key === 'Escape') {
      history.replaceState(null, '', `#/traces/${enc(st.id)}`);
      st.spanId = null;
      renderRows(true);
      renderDetailPane();
      return;
    }
    if (next !== null && st.visible[next]) {
      e.preventDefault();
      select(st.visible[next].s.span_id, 'replace');
    }
  }

  // --- architecture ---

  function buildArch() {
    const nodes = [];
    const byKey = new Map();
    const nodeOf = new Map();
    for (const o of st.order) {
      const s = o.s;
      const parent = s.parent_span_id ? nodeOf.get(s.parent_span_id) : null;
      const key = `${parent ? parent.key : ''}/${s.kind}:${s.name}`;
      let n = byKey.get(key);
      if (!n) {
        n = { key, id: String(nodes.length), kind: s.kind, name: s.name, depth: parent ? parent.depth + 1 : 0, parent, children: [], spans: [], errors: 0, dur: 0, params: new Map() };
        byKey.set(key, n);
        nodes.push(n);
        if (parent) parent.children.push(n);
      }
      n.spans.push(s);
      n.errors += s.status === 'error' ? 1 : 0;
      n.dur += s.duration_ms || 0;
      nodeOf.set(s.span_id, n);
      for (const [k, v] of callParams(s)) {
        if (!n.params.has(k)) n.params.set(k, new Map());
        const vals = n.params.get(k);
        vals.set(v, (vals.get(v) || 0) + 1);
      }
    }
    st.arch = { nodes, roots: nodes.filter((n) => !n.parent) };
  }

  function renderArch(main) {
    if (!st.arch) buildArch();
    const out = [];
    const stack = st.arch.roots.slice().reverse();
    while (stack.length && out.length < MAX_ARCH_NODES) {
      const n = stack.pop();
      out.push(nodeHtml(n));
      for (let i = n.children.length - 1; i >= 0; i--) stack.push(n.children[i]);
    }
    const more = st.arch.nodes.length - out.length;
    setHtml(main, html`<div class="arch" data-arch>
      <p class="muted arch-intro">The trace's components: spans folded by kind and name along their parent path, with the parameters each was called with. Click a component to select its spans.</p>
      <div class="arch-tree">${out}</div>
      ${more > 0 ? html`<p class="muted">${more} more components not shown.</p>` : ''}</div>`);
  }

  function nodeHtml(n) {
    const sel = st.node === n.id;
    const params = [...n.params.entries()];
    return html`<div class="arch-node k-${n.kind}${sel ? ' sel' : ''}${n.errors ? ' has-error' : ''}" data-testid="architecture-node" data-node="${n.id}" data-kind="${n.kind}" data-name="${n.name}" style="margin-left:${Math.min(n.depth, 20) * 22}px" tabindex="0" role="button">
      <div class="an-head">${kindBadge(n.kind)}<span class="an-name">${n.name}</span>
        <span class="an-runs" title="how often it ran">×${n.spans.length}</span>
        ${n.errors ? html`<span class="pill st-error">${n.errors} error${n.errors > 1 ? 's' : ''}</span>` : ''}
        <span class="spacer"></span><span class="muted">${fmtMs(n.dur / n.spans.length)} avg</span></div>
      ${params.length ? html`<dl class="an-params">${params.map(([k, vals]) => html`<div class="ap ap-${k.replace(/[^a-z_]/g, '')}"><dt>${k}</dt><dd>${[...vals.entries()].slice(0, 6).map(([v, c]) => html`<span class="pv${k === 'system prompt' ? ' quote' : ''}">${v}${vals.size > 1 || (c > 1 && c !== n.spans.length) ? html`<small>×${c}</small>` : ''}</span>`)}${vals.size > 6 ? html`<span class="muted">+${vals.size - 6}</span>` : ''}</dd></div>`)}</dl>` : ''}
    </div>`;
  }

  // --- detail pane ---

  function renderDetailPane() {
    const pane = $('[data-detail]', page);
    if (!pane) return;
    resetLongTexts();
    if (st.tab === 'architecture' && st.node !== null && st.arch) {
      const n = st.arch.nodes.find((x) => x.id === st.node);
      if (n) {
        setHtml(pane, html`<section class="panel node-panel" data-testid="node-detail">
          <div class="panel-head">${kindBadge(n.kind)}<h2>${n.name}</h2><span class="spacer"></span><span class="muted">${n.spans.length} span${n.spans.length > 1 ? 's' : ''}</span></div>
          <p class="muted">Ran ${n.spans.length}× · ${fmtMs(n.dur)} in total${n.errors ? html` · <span class="err-text">${n.errors} failed</span>` : ''}. Its spans are highlighted in the timeline.</p>
          <p><a class="btn small" href="#/traces/${enc(st.id)}/spans/${enc(n.spans[0].span_id)}" data-testid="show-in-timeline">Show in timeline</a></p>
          <ol class="span-list">${n.spans.slice(0, 200).map((s) => html`<li><a href="#/traces/${enc(st.id)}/spans/${enc(s.span_id)}" class="${s.status === 'error' ? 'err-text' : ''}">
            <span class="mono">+${fmtMs((micros(s.start_time) - st.t0) / 1000)}</span> ${s.name} <span class="muted">${fmtMs(s.duration_ms)}</span> ${statusPill(s.status)}</a></li>`)}</ol>
          ${n.spans.length > 200 ? html`<p class="muted">and ${n.spans.length - 200} more</p>` : ''}
        </section>`);
        return;
      }
    }
    if (!st.spanId) {
      const t = st.data.trace;
      const root = st.order[0] && st.order[0].s;
      setHtml(pane, html`<section class="panel overview">
        <div class="panel-head"><h2>Overview</h2></div>
        <p class="muted">Select a span in the ${st.tab === 'architecture' ? 'architecture or the timeline' : 'timeline'} to see its inputs, outputs and metadata. <kbd>↑</kbd><kbd>↓</kbd> move through spans.</p>
        ${t.input_preview ? html`<h3>Input</h3><div class="bubble role-user"><div class="role">input</div><div class="content">${t.input_preview}</div></div>` : ''}
        ${t.output_preview ? html`<h3>Output</h3><div class="bubble role-assistant"><div class="role">output</div><div class="content">${t.output_preview}</div></div>` : ''}
        ${t.error ? html`<div class="error-box"><b>Error</b> ${t.error}</div>` : ''}
        ${root && root.metadata && Object.keys(root.metadata).length ? html`<h3>Metadata</h3><dl class="kv">${Object.entries(root.metadata).map(([k, v]) => html`<div><dt>${k}</dt><dd>${typeof v === 'string' ? v : JSON.stringify(v)}</dd></div>`)}</dl>` : ''}
      </section>`);
      return;
    }
    const o = st.order.find((x) => x.s.span_id === st.spanId);
    if (!o) {
      setHtml(pane, html`<section class="panel" data-testid="span-detail"><div class="empty"><h2>Span not in this trace</h2><p>No span <code>${st.spanId}</code> in trace <code>${st.id}</code>.</p></div></section>`);
      return;
    }
    const parent = o.s.parent_span_id && st.order.find((x) => x.s.span_id === o.s.parent_span_id);
    setHtml(pane, renderDetail(o.s, { offsetMs: (o.start - st.t0) / 1000, traceId: st.id, parent: parent ? parent.s : null }));
    pane.scrollTop = 0;
  }

  // --- events ---

  page.addEventListener('click', (e) => {
    if (e.target.closest('[data-reload]')) { load(); return; }
    const tog = e.target.closest('[data-toggle]');
    if (tog) {
      const id = tog.dataset.toggle;
      if (st.collapsed.has(id)) st.collapsed.delete(id); else st.collapsed.add(id);
      computeVisible();
      const scroll = $('[data-scroll]', page);
      const top = scroll ? scroll.scrollTop : 0;
      renderMain();
      const again = $('[data-scroll]', page);
      if (again) { again.scrollTop = top; renderRows(true); }
      return;
    }
    const row = e.target.closest('.tl-row');
    if (row) { select(row.dataset.span); return; }
    const node = e.target.closest('[data-testid="architecture-node"]');
    if (node) { location.hash = `#/traces/${enc(st.id)}/architecture?node=${node.dataset.node}`; return; }
    if (e.target.closest('[data-close-detail]')) {
      location.hash = st.tab === 'architecture' ? `#/traces/${enc(st.id)}/architecture` : `#/traces/${enc(st.id)}`;
    }
  });
  page.addEventListener('keydown', (e) => {
    const node = e.target.closest && e.target.closest('[data-testid="architecture-node"]');
    if (node && (e.key === 'Enter' || e.key === ' ')) {
      e.preventDefault();
      location.hash = `#/traces/${enc(st.id)}/architecture?node=${node.dataset.node}`;
    }
  });
  const onResize = () => renderRows(true);
  window.addEventListener('resize', onResize);

  load();

  return {
    update(p) {
      const tabChanged = p.tab !== st.tab;
      st.tab = p.tab;
      st.spanId = p.spanId;
      st.node = p.node;
      if (!st.data) return;
      if (st.tab === 'architecture') applyNode();
      if (st.spanId) expandTo(st.spanId);
      if (tabChanged) {
        renderAll();
        return;
      }
      if (st.tab === 'architecture') {
        for (const el of page.querySelectorAll('[data-testid="architecture-node"]')) el.classList.toggle('sel', el.dataset.node === st.node);
      } else {
        renderRows(true);
        revealSelected();
      }
      renderDetailPane();
    },
    refresh() { load(); },
    unmount() {
      st.seq++;
      window.removeEventListener('resize', onResize);
    },
  };
}
