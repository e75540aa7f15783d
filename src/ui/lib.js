// Shared helpers: safe HTML templating, formatting, the API client and the "API unreachable"
// banner. Every view builds markup with `html` so that everything interpolated is escaped:
// prompts, outputs, names and metadata are untrusted.

/** Markup that is already safe (built by `html` or escaped). */
export class Safe {
  constructor(s) { this.s = s; }
  toString() { return this.s; }
}

const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;', '`': '&#96;' };
export const esc = (v) => String(v ?? '').replace(/[&<>"'`]/g, (c) => ESC[c]);

function render(v) {
  if (v === null || v === undefined || v === false) return '';
  if (v instanceof Safe) return v.s;
  if (Array.isArray(v)) return v.map(render).join('');
  return esc(v);
}

/** Tagged template: html`<b>${untrusted}</b>` escapes every value (arrays are joined). */
export function html(strings, ...values) {
  let out = strings[0];
  for (let i = 0; i < values.length; i++) out += render(values[i]) + strings[i + 1];
  return new Safe(out);
}

/** Sets an element's markup from an `html` result (the only place innerHTML is assigned). */
export function setHtml(el, safe) {
  el.innerHTML = render(safe);
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

// --- formatting ---

export function fmtMs(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '—';
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 10_000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const m = Math.floor(ms / 60_000);
  if (m < 60) return `${m}m ${Math.round((ms % 60_000) / 1000)}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}

export function fmtInt(n) {
  if (n === null || n === undefined) return '—';
  if (n < 1000) return String(n);
  if (n < 1e6) return `${(n / 1e3).toFixed(n < 1e4 ? 1 : 0)}k`;
  if (n < 1e9) return `${(n / 1e6).toFixed(n < 1e7 ? 1 : 0)}M`;
  return `${(n / 1e9).toFixed(1)}B`;
}

export function fmtCost(usd) {
  if (usd === null || usd === undefined || !Number.isFinite(usd)) return '—';
  if (usd === 0) return '$0';
  if (usd >= 100) return `$${usd.toFixed(0)}`;
  if (usd >= 1) return `$${usd.toFixed(2)}`;
  if (usd >= 0.01) return `$${usd.toFixed(3)}`;
  // Two significant digits, never exponent notation: $0.00012, $0.0000071.
  const digits = Math.min(12, 1 - Math.floor(Math.log10(usd)));
  return `$${usd.toFixed(digits).replace(/0+$/, '')}`;
}

export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

const pad = (n) => String(n).padStart(2, '0');

/** Local wall-clock time: "14:03:07" today, "Nov 27 14:03" otherwise. */
export function fmtTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '—';
  const now = new Date();
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === now.toDateString()) return hms;
  const mon = d.toLocaleString('en', { month: 'short' });
  return `${mon} ${d.getDate()} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** Full local date and time with milliseconds (for titles). */
export function fmtFull(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso ?? '');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, '0')}`;
}

export function fmtAgo(iso) {
  const s = (Date.now() - new Date(iso).getTime()) / 1000;
  if (!Number.isFinite(s)) return '';
  if (s < 5) return 'just now';
  if (s < 60) return `${Math.floor(s)}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

/** Microseconds since the epoch from an RFC 3339 string with up to 6 fractional digits. */
export function micros(iso) {
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$/.exec(iso || '');
  if (!m) return new Date(iso).getTime() * 1000;
  const base = new Date(m[1] + m[3]).getTime();
  const frac = (m[2] || '').padEnd(6, '0').slice(0, 6);
  return base * 1000 + Number(frac);
}

export const KINDS = ['llm', 'chain', 'agent', 'tool', 'retriever', 'embedding', 'http'];

export function statusPill(status, title) {
  return html`<span class="pill st-${status}" title="${title || ''}">${status}</span>`;
}

export function kindBadge(kind) {
  return html`<span class="kind k-${kind}">${kind}</span>`;
}

/** The model of a span: the one that answered, else the one asked for. */
export function spanModel(s) {
  const l = s.llm || {};
  return l.response_model || l.request_model || (s.input && typeof s.input === 'object' ? s.input.model : null) || null;
}

// --- the hash route's query string ---

export function parseQuery(qs) {
  const out = {};
  for (const [k, v] of new URLSearchParams(qs || '')) out[k] = v;
  return out;
}

export function toQuery(obj) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(obj)) if (v !== undefined && v !== null && v !== '') p.set(k, v);
  const s = p.toString();
  return s ? `?${s}` : '';
}

export const enc = encodeURIComponent;

// --- API client + "unreachable" banner ---

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let offline = false;
let retryTimer = null;
const onlineListeners = new Set();

/** Called (once) when the API answers again after being unreachable. */
export function onBackOnline(fn) {
  onlineListeners.add(fn);
  return () => onlineListeners.delete(fn);
}

function banner() { return document.getElementById('banner'); }

function healthDot(down) {
  const dot = document.getElementById('health');
  if (!dot) return;
  if (down) {
    dot.className = 'health down';
    dot.title = 'the API is unreachable';
    setHtml(dot, html`<i></i>offline`);
  } else if (dot.classList.contains('down')) {
    dot.className = 'health ok';
    dot.title = 'the API answers again';
    setHtml(dot, html`<i></i>healthy`);
  }
}

function setOffline(down, detail) {
  healthDot(down);
  const b = banner();
  if (down) {
    if (b) {
      setHtml(b, html`<strong>Cannot reach the llm-tracer API</strong> at ${location.origin}
        <span class="muted">(${detail || 'network error'}) — is the server running? Retrying every 3 s…</span>
        <button type="button" class="btn small" data-retry>Retry now</button>`);
      b.hidden = false;
      b.className = 'banner banner-error';
    }
    if (!offline) {
      offline = true;
      scheduleRetry();
    }
  } else if (offline) {
    offline = false;
    clearTimeout(retryTimer);
    if (b) b.hidden = true;
    for (const fn of [...onlineListeners]) fn();
  }
}

function scheduleRetry() {
  clearTimeout(retryTimer);
  retryTimer = setTimeout(async () => {
    try {
      const r = await fetch('/healthz', { cache: 'no-store' });
      if (r.ok) { setOffline(false); return; }
    } catch { /* still down */ }
    if (offline) scheduleRetry();
  }, 3000);
}

document.addEventListener('click', (e) => {
  if (e.target.closest && e.target.closest('[data-retry]')) {
    clearTimeout(retryTimer);
    fetch('/healthz', { cache: 'no-store' }).then((r) => { if (r.ok) setOffline(false); else scheduleRetry(); }, () => scheduleRetry());
  }
});

export const isOffline = () => offline;

// Admin token (when the server sets `admin_token`): asked for once, on the first 401, and kept
// in sessionStorage (this tab only; gone when it closes). Never put in the URL.
const TOKEN_KEY = 'llm-tracer-admin-token';
const savedToken = () => { try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; } };
let tokenPrompt = null;

/** Asks for the admin token once at a time (concurrent 401s share one prompt). */
function askToken(wrong) {
  if (!tokenPrompt) {
    tokenPrompt = Promise.resolve().then(() => {
      const t = window.prompt(wrong ? 'That admin token was refused. Admin token:' : 'This llm-tracer needs its admin token:');
      try { if (t) sessionStorage.setItem(TOKEN_KEY, t.trim()); else sessionStorage.removeItem(TOKEN_KEY); } catch { /* storage off */ }
      return Boolean(t);
    }).finally(() => { tokenPrompt = null; });
  }
  return tokenPrompt;
}

async function send(path, opts) {
  const token = savedToken();
  const auth = token ? { authorization: `Bearer ${token}` } : {};
  return fetch(path, { cache: 'no-store', ...opts, headers: { accept: 'application/json', ...auth, ...(opts.headers || {}) } });
}

/** GET/POST JSON. Network failures raise the banner; API errors become `ApiError`. */
export async function api(path, opts = {}) {
  let rsp;
  try {
    rsp = await send(path, opts);
    if (rsp.status === 401 && await askToken(Boolean(savedToken()))) rsp = await send(path, opts);
  } catch (e) {
    setOffline(true, e && e.message);
    throw new ApiError(0, 'unreachable', 'The llm-tracer API is unreachable');
  }
  setOffline(false);
  if (!rsp.ok) {
    let body = null;
    try { body = await rsp.json(); } catch { /* not JSON */ }
    const err = body && body.error;
    throw new ApiError(rsp.status, err ? err.code : 'http', err ? err.message : `${rsp.status} ${rsp.statusText}`);
  }
  if (rsp.status === 204) return null;
  return rsp.json();
}

/** A view's error box (the banner covers "unreachable"). */
export function errorBox(err, what) {
  if (err && err.status === 0) {
    return html`<div class="empty"><h2>Waiting for the API…</h2><p class="muted">${what} will load when the server answers again.</p></div>`;
  }
  return html`<div class="empty error-box"><h2>Could not load ${what}</h2><p>${err ? err.message : 'unknown error'}</p></div>`;
}

// --- long text: truncated with "show more", never freezing the page ---

/** First chunk shown of a long text, then each "show more" adds this many characters. */
export const TEXT_HEAD = 4000;
export const TEXT_STEP = 100_000;
const longTexts = new Map();
let longTextId = 0;

/** Forget the texts registered by the previous render (call before re-rendering a panel). */
export function resetLongTexts() { longTexts.clear(); }

/** A `<pre>` with at most TEXT_HEAD characters of `text` and a "show more" button. */
export function longText(text, cls = '') {
  const s = String(text ?? '');
  if (s.length <= TEXT_HEAD) return html`<pre class="text ${cls}">${s}</pre>`;
  const id = String(++longTextId);
  longTexts.set(id, { text: s, shown: TEXT_HEAD });
  return html`<div class="long" data-long="${id}"><pre class="text ${cls}">${s.slice(0, TEXT_HEAD)}</pre>${moreBar(s.length, TEXT_HEAD)}</div>`;
}

function moreBar(total, shown) {
  if (shown >= total) return html`<div class="more-bar"><span class="muted">${fmtInt(total)} characters</span></div>`;
  return html`<div class="more-bar" data-testid="show-more-bar">
    <span class="muted">Showing ${fmtInt(shown)} of ${fmtInt(total)} characters (${fmtBytes(total - shown)} more)</span>
    <button type="button" class="btn small" data-more="step" data-testid="show-more">Show more</button>
    <button type="button" class="btn small ghost" data-more="all">Show all</button></div>`;
}

/** Handles clicks on "show more"/"show all" inside `root` (event delegation). */
export function wireLongTexts(root) {
  root.addEventListener('click', (e) => {
    const btn = e.target.closest('[data-more]');
    if (!btn) return;
    const box = btn.closest('[data-long]');
    const entry = box && longTexts.get(box.dataset.long);
    if (!entry) return;
    entry.shown = btn.dataset.more === 'all' ? entry.text.length : Math.min(entry.text.length, entry.shown + TEXT_STEP);
    box.querySelector('pre').textContent = entry.text.slice(0, entry.shown);
    const bar = box.querySelector('.more-bar');
    const tmp = document.createElement('div');
    setHtml(tmp, moreBar(entry.text.length, entry.shown));
    bar.replaceWith(tmp.firstElementChild);
  });
}

/** Pretty JSON, computed once; strings stay strings. */
export function pretty(v) {
  if (typeof v === 'string') return v;
  try { return JSON.stringify(v, null, 2); } catch { return String(v); }
}

export function debounce(fn, ms) {
  let t;
  return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
}
