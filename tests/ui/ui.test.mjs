// Browser tests of the web UI: the real binary (`llm-tracer demo`, port 0, temp data dir),
// headless Debian chromium driven by playwright-core, node's built-in test runner.
//
//   cd tests/ui && npm ci && node --test --test-concurrency=1
//
// Env: LLM_TRACER_BIN (default target/debug/llm-tracer), CHROMIUM (default /usr/bin/chromium).
// Screenshots of every view go to test-artifacts/ui/. Timeouts below are hang guards only.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = process.env.LLM_TRACER_BIN || join(ROOT, 'target/debug/llm-tracer');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ART = join(ROOT, 'test-artifacts/ui');
const HANG = 30_000; // hang guard for waits, not a performance threshold

if (!existsSync(CHROMIUM)) {
  throw new Error(`chromium is not installed at ${CHROMIUM}. Install it with \`apt-get install -y chromium\` (.ci/run does), or set CHROMIUM.`);
}
if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`cargo build\` first`);
mkdirSync(ART, { recursive: true });

let server; // { admin, proc, dir }
let browser;
let page;
const consoleErrors = [];

function startServer() {
  const dir = mkdtempSync(join(tmpdir(), 'llm-tracer-ui-'));
  const proc = spawn(BIN, ['demo', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--data-dir', dir], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: 'warn' },
  });
  let out = '';
  let err = '';
  proc.stderr.on('data', (d) => { err += d; });
  return new Promise((res, rej) => {
    const guard = setTimeout(() => rej(new Error(`demo did not start; stdout:\n${out}\nstderr:\n${err}`)), 60_000);
    proc.on('exit', (code) => rej(new Error(`demo exited with ${code}; stderr:\n${err}`)));
    proc.stdout.on('data', (d) => {
      out += d;
      const admin = /admin listening on (http:\/\/\S+)/.exec(out);
      const sent = /demo: sent (\d+) sample calls/.exec(out);
      if (admin && sent) {
        clearTimeout(guard);
        res({ admin: admin[1], proc, dir, calls: Number(sent[1]) });
      }
    });
  });
}

async function api(path, opts = {}) {
  const r = await fetch(server.admin + path, opts);
  const text = await r.text();
  assert.ok(r.ok, `${opts.method || 'GET'} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function postSpans(spans) {
  for (let i = 0; i < spans.length; i += 1000) {
    await api('/api/spans', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(spans.slice(i, i + 1000)) });
  }
}

async function until(fn, what) {
  const deadline = Date.now() + HANG;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const shot = (name) => page.screenshot({ path: join(ART, `${name}.png`), fullPage: true });
const go = async (hash) => {
  await page.goto(`${server.admin}/${hash}`);
};
const iso = (ms) => new Date(ms).toISOString();
const sid = (n) => n.toString(16).padStart(16, '0');

before(async () => {
  server = await startServer();
  // Every demo call is stored (the writer batches asynchronously).
  await until(async () => (await api('/api/stats')).calls >= server.calls, 'the demo calls to be stored');
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(HANG);
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) consoleErrors.push(m.text());
  });
  page.on('pageerror', (e) => consoleErrors.push(`pageerror: ${e.message}`));
});

after(async () => {
  if (browser) await browser.close();
  if (server && server.proc.exitCode === null) server.proc.kill('SIGKILL');
  if (server) rmSync(server.dir, { recursive: true, force: true });
});

// Facts from the API that the UI must show.
async function agentTrace() {
  const { traces } = await api('/api/traces?limit=100');
  const ours = /^(big-|xss-|live-)/; // traces these tests ingest
  const best = traces.filter((t) => t.span_count > 1 && !ours.test(t.trace_id)).sort((a, b) => b.span_count - a.span_count)[0];
  assert.ok(best, 'the demo has a multi-span agent trace');
  return api(`/api/traces/${encodeURIComponent(best.trace_id)}`);
}

test('the trace table lists every trace, errors in red with the message on hover', async () => {
  const { traces } = await api('/api/traces?limit=100');
  await go('#/traces');
  await page.waitForSelector('[data-testid=trace-row]');
  const ids = await page.$$eval('[data-testid=trace-row]', (rows) => rows.map((r) => r.dataset.traceId));
  assert.deepEqual(ids, traces.map((t) => t.trace_id), 'one row per trace, newest first');
  const failed = traces.find((t) => t.status === 'error');
  assert.ok(failed, 'the demo has a failing trace');
  const pill = page.locator(`[data-testid=trace-row][data-trace-id="${failed.trace_id}"] .pill`);
  assert.equal(await pill.textContent(), 'error');
  assert.equal(await pill.getAttribute('title'), failed.error, 'the error message is on hover');
  const color = await pill.evaluate((el) => getComputedStyle(el).color);
  const [r, g, b] = color.match(/\d+/g).map(Number);
  assert.ok(r > 150 && g < 100 && b < 100, `the error status is red: ${color}`);
  const row = page.locator(`[data-testid=trace-row][data-trace-id="${traces[0].trace_id}"]`);
  assert.match(await row.textContent(), new RegExp(escapeRe(traces[0].name)), 'the row shows the name');
  await shot('01-trace-table');
});

test('filters narrow the table and live in the URL', async () => {
  const { traces } = await api('/api/traces?status=error');
  await go('#/traces');
  await page.waitForSelector('[data-testid=trace-row]');
  await page.selectOption('select[name=status]', 'error');
  await until(async () => (await page.$$('[data-testid=trace-row]')).length === traces.length
    && (await page.$$eval('[data-testid=trace-row]', (rs) => rs.every((r) => r.classList.contains('is-error')))), 'the error filter');
  assert.match(page.url(), /status=error/);
  await page.reload();
  await page.waitForSelector('[data-testid=trace-row]');
  assert.equal((await page.$$('[data-testid=trace-row]')).length, traces.length, 'a reload keeps the filter');
  assert.equal(await page.inputValue('select[name=status]'), 'error');
  await page.fill('[data-search]', 'zzz-no-such-text');
  await page.waitForSelector('[data-testid=no-traces]');
});

test('keyboard: arrows move through the rows, Enter opens the trace', async () => {
  const { traces } = await api('/api/traces?limit=100');
  await go('#/traces');
  await page.waitForSelector('[data-testid=trace-row]');
  await page.locator('body').click({ position: { x: 5, y: 300 } });
  await page.keyboard.press('ArrowDown');
  await page.keyboard.press('ArrowDown');
  const active = await page.getAttribute('[data-testid=trace-row].active', 'data-trace-id');
  assert.equal(active, traces[1].trace_id, 'two presses select the second row');
  await page.keyboard.press('Enter');
  await page.waitForSelector('[data-testid=timeline-bar]');
  assert.ok(page.url().endsWith(`#/traces/${encodeURIComponent(traces[1].trace_id)}`), page.url());
});

test('clicking the agent trace opens one timeline bar per span with its kind', async () => {
  const { trace, spans } = await agentTrace();
  await go('#/traces');
  await page.click(`[data-testid=trace-row][data-trace-id="${trace.trace_id}"]`);
  await page.waitForSelector('[data-testid=timeline-bar]');
  const bars = await page.$$eval('[data-testid=timeline-bar]', (bs) => bs.map((b) => ({ id: b.dataset.spanId, kind: b.dataset.kind, status: b.dataset.status })));
  assert.equal(bars.length, spans.length, 'one bar per span');
  const want = Object.fromEntries(spans.map((s) => [s.span_id, { kind: s.kind, status: s.status }]));
  for (const b of bars) assert.deepEqual({ kind: b.kind, status: b.status }, want[b.id], `bar ${b.id}`);
  for (const k of ['chain', 'llm', 'tool']) assert.ok(bars.some((b) => b.kind === k), `the agent trace has a ${k} bar`);
  // Tree order: the root first, children indented below it.
  const root = spans.find((s) => !s.parent_span_id);
  assert.equal(bars[0].id, root.span_id, 'the root span is the first row');
  const indents = await page.$$eval('.tl-name', (els) => els.map((e) => parseFloat(e.style.paddingLeft)));
  assert.ok(indents.slice(1).every((x) => x > indents[0]), `children are indented: ${indents}`);
  // Bars are placed by start and duration on one time axis.
  const geo = await page.$$eval('[data-testid=timeline-bar]', (bs) => bs.map((b) => ({ id: b.dataset.spanId, left: parseFloat(b.style.left), width: parseFloat(b.style.width) })));
  const t0 = Math.min(...spans.map((s) => micros(s.start_time)));
  const t1 = Math.max(...spans.map((s) => micros(s.end_time)));
  for (const g of geo) {
    const s = spans.find((x) => x.span_id === g.id);
    const left = ((micros(s.start_time) - t0) / (t1 - t0)) * 100;
    const width = ((micros(s.end_time) - micros(s.start_time)) / (t1 - t0)) * 100;
    assert.ok(Math.abs(g.left - left) < 0.01 && Math.abs(g.width - width) < 0.01, `${s.name}: ${JSON.stringify(g)} vs ${left}/${width}`);
  }
  const legend = await page.textContent('.legend');
  for (const k of ['chain', 'llm', 'tool', 'error']) assert.ok(legend.includes(k), `the legend names ${k}`);
  await shot('02-timeline');
});

test('the streamed LLM span shows TTFT in its bar and its reassembled text in the detail', async () => {
  const { trace, spans } = await agentTrace();
  const streamed = spans.find((s) => s.llm && s.llm.stream);
  assert.ok(streamed, 'the agent trace has a streamed call');
  const text = streamed.output.choices[0].message.content;
  assert.ok(text.length > 0);
  await go(`#/traces/${encodeURIComponent(trace.trace_id)}`);
  const bar = page.locator(`[data-testid=timeline-bar][data-span-id="${streamed.span_id}"]`);
  assert.equal(await bar.locator('[data-testid=ttft]').count(), 1, 'the TTFT marker is inside the bar');
  await bar.click();
  const detail = page.locator('[data-testid=span-detail]');
  await detail.waitFor();
  assert.equal(await detail.getAttribute('data-span-id'), streamed.span_id);
  assert.ok((await detail.locator('[data-testid=span-output]').textContent()).includes(text), 'the streamed text is shown');
  assert.ok((await detail.locator('[data-testid=ttft-value]').textContent()).includes('ms'), 'TTFT is shown');
  const roles = await detail.locator('[data-testid=span-input] .bubble .role').allTextContents();
  assert.deepEqual(roles.map((r) => r.split(' · ')[0].toLowerCase()), streamed.input.messages.map((m) => m.role), 'one role-labelled bubble per message');
  assert.ok(page.url().endsWith(`/spans/${streamed.span_id}`), 'selecting a bar deep-links the span');
  await shot('03-span-detail-streamed');
  // Tool definitions and tool calls of the planning call.
  const planner = spans.find((s) => s.llm && s.llm.params && s.llm.params.tools);
  if (planner) {
    await page.click(`[data-testid=timeline-bar][data-span-id="${planner.span_id}"]`);
    await page.waitForSelector(`[data-testid=span-detail][data-span-id="${planner.span_id}"]`);
    const name = planner.llm.params.tools[0].function.name;
    assert.ok((await page.textContent('[data-testid=span-tools]')).includes(name), 'tool definitions are listed');
    if (planner.output.choices[0].message.tool_calls) {
      assert.ok((await page.textContent('[data-testid=span-output] [data-testid=tool-call]')).includes(name), 'tool calls are shown');
    }
  }
});

test('the failing span is outlined in red and its detail shows the error message', async () => {
  const { traces } = await api('/api/traces?status=error');
  const { spans } = await api(`/api/traces/${encodeURIComponent(traces[0].trace_id)}`);
  const bad = spans.find((s) => s.status === 'error');
  await go(`#/traces/${encodeURIComponent(traces[0].trace_id)}`);
  const bar = page.locator(`[data-testid=timeline-bar][data-span-id="${bad.span_id}"]`);
  assert.equal(await bar.getAttribute('data-status'), 'error');
  const outline = await bar.evaluate((el) => {
    const cs = getComputedStyle(el);
    return { color: cs.outlineColor, style: cs.outlineStyle, width: parseFloat(cs.outlineWidth) };
  });
  const [r, g, b] = outline.color.match(/\d+/g).map(Number);
  assert.ok(r >= 200 && g <= 100 && b <= 100, `the outline is red: ${outline.color}`);
  assert.equal(outline.style, 'solid');
  assert.ok(outline.width >= 1, `the outline is visible: ${outline.width}px`);
  const okBar = await page.$('[data-testid=timeline-bar][data-status=ok]');
  if (okBar) assert.equal(await okBar.evaluate((el) => getComputedStyle(el).outlineStyle), 'none', 'ok bars are not outlined');
  await bar.click();
  const err = page.locator('[data-testid=span-detail] [data-testid=span-error]');
  await err.waitFor();
  assert.ok((await err.textContent()).includes(bad.error.message), 'the error message is shown');
  await shot('04-error-span');
});

test('the architecture view lists each component with its model and temperature', async () => {
  const { trace, spans } = await agentTrace();
  await go(`#/traces/${encodeURIComponent(trace.trace_id)}`);
  await page.click('[data-testid=tab-architecture]');
  await page.waitForSelector('[data-testid=architecture-node]');
  const nodes = await page.$$eval('[data-testid=architecture-node]', (ns) => ns.map((n) => ({ id: n.dataset.node, kind: n.dataset.kind, name: n.dataset.name, text: n.textContent })));
  // Components: spans folded by kind and name along the parent path.
  const byId = new Map(spans.map((s) => [s.span_id, s]));
  const path = (s, seen = new Set()) => {
    const p = s.parent_span_id && byId.get(s.parent_span_id);
    const here = `${s.kind}:${s.name}`;
    return p && !seen.has(p.span_id) ? `${path(p, seen.add(s.span_id))}/${here}` : here;
  };
  const components = new Set(spans.map((s) => path(s)));
  assert.equal(nodes.length, components.size, 'one node per component');
  for (const s of spans.filter((x) => x.llm && x.llm.params && x.llm.params.temperature !== undefined)) {
    const node = nodes.find((n) => n.kind === s.kind && n.name === s.name);
    assert.ok(node, `a node for ${s.name}`);
    const model = s.llm.response_model || s.llm.request_model;
    assert.match(node.text, /model/);
    assert.ok(node.text.includes(model), `${s.name} lists its model ${model}: ${node.text}`);
    assert.match(node.text, /temperature/);
    assert.ok(node.text.includes(String(s.llm.params.temperature)), `${s.name} lists temperature ${s.llm.params.temperature}`);
    const runs = spans.filter((x) => path(x) === path(s)).length;
    assert.ok(node.text.includes(`×${runs}`), `how often ${s.name} ran: ${runs}`);
  }
  const llmNode = nodes.find((n) => n.kind === 'llm');
  await page.click(`[data-testid=architecture-node][data-node="${llmNode.id}"]`);
  const panel = page.locator('[data-testid=node-detail]');
  await panel.waitFor();
  assert.match(page.url(), /architecture\?node=/);
  const nodeSpans = spans.filter((s) => s.kind === llmNode.kind && s.name === llmNode.name);
  assert.equal(await panel.locator('.span-list li').count(), nodeSpans.length, 'the node selects its spans');
  await shot('05-architecture');
  await panel.locator('[data-testid=show-in-timeline]').click();
  await page.waitForSelector(`[data-testid=span-detail][data-span-id="${nodeSpans[0].span_id}"]`);
  assert.equal(await page.locator('.tl-row.hl').count(), nodeSpans.length, 'its spans are highlighted in the timeline');
});

test('a deep link to a span survives a reload; back and forward walk the history', async () => {
  const { trace, spans } = await agentTrace();
  const span = spans[spans.length - 1];
  const id = encodeURIComponent(trace.trace_id);
  await go(`#/traces/${id}/spans/${span.span_id}`);
  await page.waitForSelector(`[data-testid=span-detail][data-span-id="${span.span_id}"]`);
  await page.reload();
  await page.waitForSelector(`[data-testid=span-detail][data-span-id="${span.span_id}"]`);
  assert.equal(await page.locator(`.tl-row.sel [data-testid=timeline-bar]`).getAttribute('data-span-id'), span.span_id, 'the span is selected');

  await go('#/traces');
  await page.waitForSelector('[data-testid=trace-row]');
  await page.click(`[data-testid=trace-row][data-trace-id="${trace.trace_id}"]`);
  await page.waitForSelector('[data-testid=timeline-bar]');
  await page.click(`[data-testid=timeline-bar][data-span-id="${spans[0].span_id}"]`);
  await page.waitForSelector('[data-testid=span-detail]');
  await page.goBack();
  await until(async () => !(await page.$('[data-testid=span-detail]')) && page.url().endsWith(`#/traces/${id}`), 'back to the trace without a span');
  await page.goBack();
  await page.waitForSelector('[data-testid=trace-row]');
  assert.ok(page.url().endsWith('#/traces'), page.url());
  await page.goForward();
  await page.waitForSelector('[data-testid=timeline-bar]');
  await page.goForward();
  await page.waitForSelector(`[data-testid=span-detail][data-span-id="${spans[0].span_id}"]`);
});

test('a missing trace shows a clear message', async () => {
  await go('#/traces/no-such-trace-42');
  const box = page.locator('[data-testid=trace-missing]');
  await box.waitFor();
  const text = await box.textContent();
  assert.match(text, /not found/i);
  assert.ok(text.includes('no-such-trace-42'), 'the message names the id');
  await shot('06-missing-trace');
});

test('sessions group traces with totals, in order', async () => {
  const { sessions } = await api('/api/sessions');
  assert.ok(sessions.length > 0);
  const multi = sessions.slice().sort((a, b) => b.trace_count - a.trace_count)[0];
  await go('#/sessions');
  await page.waitForSelector('[data-testid=session-row]');
  const ids = await page.$$eval('[data-testid=session-row]', (rs) => rs.map((r) => r.dataset.sessionId));
  assert.deepEqual(ids, sessions.map((s) => s.session_id), 'sessions by latest activity');
  await shot('07-sessions');
  await page.click(`[data-testid=session-row][data-session-id="${multi.session_id}"]`);
  await page.waitForSelector('[data-testid=session-trace]');
  const { traces } = await api(`/api/sessions/${encodeURIComponent(multi.session_id)}`);
  const order = await page.$$eval('[data-testid=session-trace]', (ts) => ts.map((t) => t.dataset.traceId));
  assert.deepEqual(order, traces.map((t) => t.trace_id), 'traces in order, oldest first');
  const starts = traces.map((t) => t.start_time);
  assert.deepEqual(starts, starts.slice().sort(), 'oldest first');
  assert.ok((await page.textContent('.facts')).includes(String(multi.trace_count)), 'totals are shown');
  await shot('08-session');
});

test('the dashboard charts the stats; clicking a bucket filters the table to its window', async () => {
  await go('#/dashboard?range=1h');
  await page.waitForSelector('[data-testid=chart-bucket]');
  const stats = await api('/api/stats');
  const kpi = await page.locator('[data-testid=kpi]').first().textContent();
  assert.ok(kpi.includes(String(stats.calls)), `the calls KPI shows ${stats.calls}: ${kpi}`);
  for (const c of ['calls', 'latency', 'ttft', 'tokens', 'cost', 'models']) {
    assert.equal(await page.locator(`[data-testid=chart-${c}] svg`).count(), 1, `the ${c} chart is drawn`);
  }
  assert.ok((await page.textContent('[data-testid=by-model]')).includes('gpt-4o'), 'the by-model table');
  await shot('09-dashboard');
  const bucket = page.locator('[data-testid=chart-calls] [data-testid=chart-bucket]:not([data-calls="0"])').last();
  await bucket.click();
  await page.waitForSelector('[data-testid=trace-row]');
  const url = new URL(page.url());
  const q = new URLSearchParams(url.hash.split('?')[1]);
  assert.ok(q.get('since') && q.get('until'), `the table is filtered to the bucket: ${url.hash}`);
  const { traces } = await api(`/api/traces?since=${q.get('since')}&until=${q.get('until')}&limit=1000`);
  assert.equal((await page.$$('[data-testid=trace-row]')).length, traces.length, 'the rows of that window');
  assert.ok(await page.isVisible('[data-clear-window]'), 'the window is shown and can be cleared');
});

test('live mode shows new traces, and pauses while the tab is hidden', async () => {
  await go('#/traces');
  await page.waitForSelector('[data-testid=trace-row]');
  assert.match(await page.textContent('[data-live]'), /^Live$/);
  const now = Date.now();
  const span = (trace) => ({ trace_id: trace, span_id: sid(now % 1e9), name: `live ${trace}`, kind: 'chain', start_time: iso(now), end_time: iso(now + 5) });
  await postSpans([span('live-trace-1')]);
  await page.waitForSelector('[data-testid=trace-row][data-trace-id="live-trace-1"]');

  // Hidden tab: no polling at all.
  await page.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  assert.match(await page.textContent('[data-live]'), /paused/);
  let polled = 0;
  const onReq = (r) => { if (r.url().includes('/api/traces')) polled++; };
  page.on('request', onReq);
  await postSpans([{ ...span('live-trace-2'), span_id: sid((now % 1e9) + 1) }]);
  await page.waitForTimeout(7000); // more than two poll intervals
  page.off('request', onReq);
  assert.equal(polled, 0, 'no polling while hidden');
  assert.equal(await page.$('[data-testid=trace-row][data-trace-id="live-trace-2"]'), null);
  await page.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'visible' });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await page.waitForSelector('[data-testid=trace-row][data-trace-id="live-trace-2"]');
});

test('prompts are escaped, never executed (XSS)', async () => {
  const now = Date.now();
  const evil = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>';
  await postSpans([{
    trace_id: 'xss-trace', span_id: sid(0xbad), name: evil, kind: 'llm', start_time: iso(now), end_time: iso(now + 10),
    session_id: evil, tags: [evil], metadata: { [evil]: evil }, status: 'error', error: { type: evil, message: evil },
    llm: { request_model: evil, params: { temperature: evil, tools: [{ type: 'function', function: { name: evil, description: evil } }] } },
    input: { model: evil, messages: [{ role: evil, content: evil }, { role: 'system', content: evil }] },
    output: { choices: [{ message: { role: 'assistant', content: evil, tool_calls: [{ id: evil, function: { name: evil, arguments: evil } }] } }] },
  }]);
  await go('#/traces');
  await page.waitForSelector('[data-testid=trace-row][data-trace-id="xss-trace"]');
  await go(`#/traces/xss-trace/spans/${sid(0xbad)}`);
  await page.waitForSelector('[data-testid=span-detail]');
  assert.ok((await page.textContent('[data-testid=span-detail]')).includes(evil), 'the text is shown literally');
  await page.click('[data-testid=tab-architecture]');
  await page.waitForSelector('[data-testid=architecture-node]');
  await go(`#/sessions/${encodeURIComponent(evil)}`);
  await page.waitForSelector('[data-testid=session-trace]');
  assert.equal(await page.evaluate(() => window.__xss), undefined, 'no injected script ran');
  assert.equal(await page.$('img[src=x]'), null, 'no injected element');
});

test('a 1 MB payload is shown truncated with "show more"', async () => {
  const now = Date.now();
  const big = 'lorem ipsum dolor sit amet '.repeat(40_000).slice(0, 1_048_576);
  await postSpans([{
    trace_id: 'big-payload', span_id: sid(0xb16), name: 'huge prompt', kind: 'llm', start_time: iso(now), end_time: iso(now + 1000),
    llm: { request_model: 'gpt-4o', params: {} },
    input: { model: 'gpt-4o', messages: [{ role: 'user', content: big }] },
    output: { choices: [{ message: { role: 'assistant', content: big } }] },
  }]);
  await go(`#/traces/big-payload/spans/${sid(0xb16)}`);
  const input = page.locator('[data-testid=span-input]');
  await input.locator('[data-testid=show-more]').waitFor();
  const shown = () => input.locator('[data-long] pre').first().evaluate((el) => el.textContent.length);
  const first = await shown();
  assert.ok(first < 10_000, `only the head is rendered: ${first} chars`);
  assert.ok((await input.textContent()).includes('more'), 'it says how much more there is');
  await shot('10-large-payload');
  await input.locator('[data-testid=show-more]').click();
  assert.ok((await shown()) > first, 'show more reveals more');
  await input.locator('[data-more=all]').click();
  assert.equal(await shown(), big.length, 'show all reveals everything');
  assert.equal(await page.evaluate(() => 1 + 1), 2, 'the page still answers');
});

test('a 5,000-span trace renders only the visible bars and stays interactive', async () => {
  const t0 = Date.now() - 60_000;
  const spans = [{ trace_id: 'big-trace', span_id: sid(1), name: 'pipeline', kind: 'chain', start_time: iso(t0), end_time: iso(t0 + 50_000) }];
  let n = 2;
  let last = null;
  for (let a = 0; a < 50 && spans.length < 5000; a++) {
    const agent = sid(n++);
    spans.push({ trace_id: 'big-trace', span_id: agent, parent_span_id: sid(1), name: `agent ${a}`, kind: 'agent', start_time: iso(t0 + a * 1000), end_time: iso(t0 + a * 1000 + 990) });
    for (let c = 0; c < 99 && spans.length < 5000; c++) {
      const id = sid(n++);
      const kind = c % 3 === 0 ? 'llm' : 'tool';
      spans.push({ trace_id: 'big-trace', span_id: id, parent_span_id: agent, name: `${kind} ${c}`, kind,
        status: c === 50 ? 'error' : 'ok', start_time: iso(t0 + a * 1000 + c * 10), end_time: iso(t0 + a * 1000 + c * 10 + 9) });
      last = id;
    }
  }
  assert.equal(spans.length, 5000);
  await postSpans(spans);
  await go('#/traces/big-trace');
  await page.waitForSelector('[data-testid=timeline-bar]');
  const inDom = await page.$$eval('[data-testid=timeline-bar]', (b) => b.length);
  assert.ok(inDom > 10 && inDom < 200, `only the visible rows are in the DOM: ${inDom}`);
  assert.equal(await page.$eval('[data-body]', (el) => parseFloat(el.style.height)), 5000 * 28, 'the scroll area holds all 5,000 rows');
  await shot('11-5000-spans');
  // Scroll to the end: the last span (tree order) is rendered, still a bounded number of bars.
  await page.$eval('[data-scroll]', (el) => { el.scrollTop = el.scrollHeight; });
  const lastBar = page.locator(`[data-testid=timeline-bar][data-span-id="${last}"]`);
  await lastBar.waitFor();
  assert.ok((await page.$$('[data-testid=timeline-bar]')).length < 200);
  await lastBar.click();
  await page.waitForSelector(`[data-testid=span-detail][data-span-id="${last}"]`);
  await page.keyboard.press('ArrowUp');
  await until(async () => (await page.getAttribute('[data-testid=span-detail]', 'data-span-id')) === sid(Number.parseInt(last, 16) - 1), 'ArrowUp to select the previous span');
  // Collapse an agent: its 99 children leave the scroll area.
  await page.$eval('[data-scroll]', (el) => { el.scrollTop = 0; });
  await page.click(`[data-toggle="${sid(2)}"]`);
  await until(async () => (await page.$eval('[data-body]', (el) => parseFloat(el.style.height))) === (5000 - 99) * 28, 'the collapsed subtree');
});

test('phone width: every view fits without horizontal overflow', async () => {
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  phone.setDefaultTimeout(HANG);
  try {
    const { trace, spans } = await agentTrace();
    const views = [
      ['12-phone-table', '#/traces', '[data-testid=trace-row]'],
      ['13-phone-timeline', `#/traces/${encodeURIComponent(trace.trace_id)}/spans/${spans[spans.length - 1].span_id}`, '[data-testid=span-detail]'],
      ['14-phone-architecture', `#/traces/${encodeURIComponent(trace.trace_id)}/architecture`, '[data-testid=architecture-node]'],
      ['15-phone-sessions', '#/sessions', '[data-testid=session-row]'],
      ['16-phone-dashboard', '#/dashboard?range=1h', '[data-testid=chart-bucket]'],
    ];
    for (const [name, hash, sel] of views) {
      await phone.goto(`${server.admin}/${hash}`);
      await phone.waitForSelector(sel);
      const { scroll, inner } = await phone.evaluate(() => ({ scroll: document.documentElement.scrollWidth, inner: window.innerWidth }));
      assert.ok(scroll <= inner, `${hash}: the page is ${scroll}px wide in a ${inner}px viewport`);
      await phone.screenshot({ path: join(ART, `${name}.png`), fullPage: true });
    }
  } finally {
    await phone.close();
  }
});

test('the UI raises no console errors (CSP included)', () => {
  assert.deepEqual(consoleErrors, []);
});

test('when the API is unreachable a banner says so, and the page is never blank', async () => {
  await go('#/traces');
  await page.waitForSelector('[data-testid=trace-row]');
  const exited = new Promise((r) => server.proc.once('exit', r));
  server.proc.kill('SIGTERM');
  await exited;
  await page.click('[data-refresh]');
  const banner = page.locator('[data-testid=api-banner]');
  await banner.waitFor({ state: 'visible' });
  assert.match(await banner.textContent(), /Cannot reach the llm-tracer API/);
  assert.ok((await page.$$('[data-testid=trace-row]')).length > 0, 'the rows already loaded stay');
  await page.evaluate(() => { location.hash = '#/traces/some-trace'; });
  await page.waitForSelector('text=Waiting for the API');
  assert.ok(await banner.isVisible(), 'the banner stays up');
  await shot('17-api-unreachable');
});

/** Microseconds since the epoch from the API's RFC 3339 (microsecond) timestamps. */
function micros(ts) {
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?Z$/.exec(ts);
  return new Date(`${m[1]}Z`).getTime() * 1000 + Number((m[2] || '').padEnd(6, '0').slice(0, 6));
}

function escapeRe(s) { return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'); }
