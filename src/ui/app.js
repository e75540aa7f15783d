// The shell: hash router, navigation, global keys and the error fallbacks that keep the page
// from ever going blank.
//
// Routes (all deep-linkable; back/forward work because every navigation is a hash change):
//   #/traces?status&model&session_id&user_id&tag&q&range&since&until   trace table
//   #/traces/{id}                     timeline          #/traces/{id}/spans/{span}   + span detail
//   #/traces/{id}/architecture        architecture      #/traces/{id}/architecture?node=N
//   #/sessions?q                      sessions          #/sessions/{id}   one session's traces
//   #/dashboard?range=24h             charts

import { html, setHtml, parseQuery, onBackOnline, ApiError, $ } from './lib.js';
import * as traces from './traces.js';
import * as trace from './trace.js';
import * as sessions from './sessions.js';
import * as dashboard from './dashboard.js';

const root = document.getElementById('view');
let current = null; // { key, view, instance }

function parseRoute() {
  const raw = location.hash.replace(/^#/, '') || '/traces';
  const [path, qs] = raw.split('?');
  const seg = path.split('/').filter(Boolean).map((s) => {
    try { return decodeURIComponent(s); } catch { return s; }
  });
  const query = parseQuery(qs);
  if (seg[0] === 'traces' && seg.length >= 2) {
    const params = { traceId: seg[1], tab: 'timeline', spanId: null, node: query.node ?? null };
    if (seg[2] === 'spans' && seg[3]) params.spanId = seg[3];
    else if (seg[2] === 'architecture') params.tab = 'architecture';
    return { name: 'trace', key: `trace:${seg[1]}`, view: trace, params };
  }
  if (seg[0] === 'sessions') {
    const id = seg[1] ?? null;
    return { name: 'sessions', key: `sessions:${id ?? ''}`, view: sessions, params: { sessionId: id, query } };
  }
  if (seg[0] === 'dashboard') return { name: 'dashboard', key: 'dashboard', view: dashboard, params: { query } };
  if (seg[0] === 'traces' || seg.length === 0) return { name: 'traces', key: 'traces', view: traces, params: { query } };
  return { name: 'notfound', key: `nf:${raw}`, view: null, params: { raw } };
}

function markNav(name) {
  for (const a of document.querySelectorAll('nav.main a')) {
    a.classList.toggle('active', a.dataset.nav === (name === 'trace' ? 'traces' : name));
  }
}

function route() {
  const r = parseRoute();
  markNav(r.name);
  if (current && current.key === r.key && current.instance && current.instance.update) {
    current.instance.update(r.params);
    return;
  }
  if (current && current.instance && current.instance.unmount) current.instance.unmount();
  current = { key: r.key, instance: null };
  root.replaceChildren();
  window.scrollTo(0, 0);
  if (!r.view) {
    setHtml(root, html`<div class="empty"><h2>Page not found</h2><p class="muted">No view at <code>#${r.params.raw}</code>.</p><p><a href="#/traces">Go to traces</a></p></div>`);
    return;
  }
  try {
    current.instance = r.view.mount(root, r.params);
  } catch (e) {
    showFatal(e);
  }
}

function showFatal(e) {
  const b = document.getElementById('banner');
  setHtml(b, html`<strong>The UI hit an error:</strong> ${e && e.message ? e.message : String(e)} <a href="#/traces">Back to traces</a>`);
  b.className = 'banner banner-error';
  b.hidden = false;
  if (!root.firstChild) setHtml(root, html`<div class="empty"><h2>Something went wrong</h2><p class="muted">Reload the page, or go back to <a href="#/traces">the traces</a>.</p></div>`);
  // eslint-disable-next-line no-console
  console.error(e);
}

window.addEventListener('error', (e) => {
  if (String(e.message || '').includes('ResizeObserver')) return; // benign layout notice
  showFatal(e.error || e.message);
});
window.addEventListener('unhandledrejection', (e) => {
  if (e.reason instanceof ApiError) return;
  showFatal(e.reason);
});
window.addEventListener('hashchange', route);

// When the API comes back, re-render what is on screen.
onBackOnline(() => {
  if (current && current.instance && current.instance.refresh) current.instance.refresh();
  else { current = null; route(); }
});

// Global keys: "/" focuses the search box; g t / g s / g d switch views.
let pendingG = false;
document.addEventListener('keydown', (e) => {
  const t = e.target;
  const typing = t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable);
  if (typing || e.metaKey || e.ctrlKey || e.altKey) return;
  if (e.key === '/') {
    const q = $('[data-search]');
    if (q) { e.preventDefault(); q.focus(); q.select(); }
    return;
  }
  if (pendingG) {
    pendingG = false;
    const to = { t: '#/traces', s: '#/sessions', d: '#/dashboard' }[e.key];
    if (to) { e.preventDefault(); location.hash = to; }
    return;
  }
  if (e.key === 'g') { pendingG = true; setTimeout(() => { pendingG = false; }, 800); }
});

// Health dot in the header (store state), refreshed now and then.
async function health() {
  const dot = document.getElementById('health');
  if (!dot) return;
  try {
    const r = await fetch('/healthz', { cache: 'no-store' });
    const h = await r.json();
    dot.className = `health ${h.status === 'ok' ? 'ok' : 'warn'}`;
    dot.title = `store ${h.status}${h.capture ? '' : ' · capture off'} · queue ${h.queue.length}/${h.queue.capacity}`;
    setHtml(dot, html`<i></i>${h.status === 'ok' ? 'healthy' : 'degraded'}`);
  } catch {
    dot.className = 'health down';
    dot.title = 'the API is unreachable';
    setHtml(dot, html`<i></i>offline`);
  }
}
setInterval(() => { if (document.visibilityState === 'visible') health(); }, 15000);
health();

route();
