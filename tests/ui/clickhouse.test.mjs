// The web UI on the ClickHouse backend: `llm-tracer demo --store-backend clickhouse` against a
// private clickhouse-server (free loopback ports, temp data dir, as tests/common/clickhouse.rs),
// headless Debian chromium via playwright-core. The full UI suite (ui.test.mjs) runs on sled; this
// checks that the same views render the same API answers when ClickHouse serves them.
//
//   cd tests/ui && npm ci && node --test --test-concurrency=1 clickhouse.test.mjs

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = process.env.LLM_TRACER_BIN || join(ROOT, 'target/debug/llm-tracer');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ART = join(ROOT, 'test-artifacts/ui');
const HANG = 60_000; // hang guard for waits, not a performance threshold
const CH_BIN = ['/usr/sbin/clickhouse-server', '/usr/bin/clickhouse-server'].find(existsSync);

if (!existsSync(CHROMIUM)) throw new Error(`chromium is not installed at ${CHROMIUM} (apt-get install -y chromium)`);
if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`cargo build\` first`);
if (!CH_BIN) throw new Error('clickhouse-server is not installed (apt-get install -y clickhouse-server; .ci/run does)');
mkdirSync(ART, { recursive: true });

let ch; // { proc, dir, url }
let server; // { admin, proc, dir, calls }
let browser;
let page;

const freePort = () => new Promise((res, rej) => {
  const s = createServer();
  s.once('error', rej);
  s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => res(port)); });
});

async function until(fn, what) {
  const deadline = Date.now() + HANG;
  for (;;) {
    const v = await fn().catch(() => null);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// clickhouse-server's first start on a fresh machine can take a while (as in common/clickhouse.rs).
const CH_START_WAIT = 120_000; // hang guard, not a performance threshold

async function startClickHouse() {
  // Another process may take a port between `freePort` and the server binding it; the server
  // then exits at once, and we try again on other ports (as common/clickhouse.rs does). A server
  // that stays up but never answers is not retried.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startClickHouseOnce();
    } catch (e) {
      if (attempt >= 3 || !e.exited) throw e;
      console.error(`clickhouse-server did not start (${e.message}); retrying on other ports`);
    }
  }
}

async function startClickHouseOnce() {
  const dir = mkdtempSync(join(tmpdir(), 'llm-tracer-ui-ch-'));
  for (const sub of ['data', 'tmp', 'user_files']) mkdirSync(join(dir, sub));
  const http = await freePort();
  const tcp = await freePort();
  writeFileSync(join(dir, 'config.xml'), `<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>${dir}/server.log</log><errorlog>${dir}/server.err.log</errorlog></logger>
  <http_port>${http}</http_port><tcp_port>${tcp}</tcp_port><listen_host>127.0.0.1</listen_host>
  <path>${dir}/data/</path><tmp_path>${dir}/tmp/</tmp_path><user_files_path>${dir}/user_files/</user_files_path>
  <users_config>${dir}/users.xml</users_config>
  <default_profile>default</default_profile><default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
`);
  writeFileSync(join(dir, 'users.xml'), `<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
`);
  const proc = spawn(CH_BIN, [`--config-file=${dir}/config.xml`], { cwd: dir, stdio: 'ignore' });
  let exited = null;
  proc.on('exit', (code, signal) => { exited = signal ?? code; });
  const url = `http://127.0.0.1:${http}`;
  const errLog = () => {
    try { return readFileSync(join(dir, 'server.err.log'), 'utf8').split('\n').slice(-20).join('\n'); } catch { return '(no error log)'; }
  };
  const deadline = Date.now() + CH_START_WAIT;
  for (;;) {
    const ok = await fetch(`${url}/?query=SELECT%201`, { signal: AbortSignal.timeout(5000) })
      .then((r) => r.ok).catch(() => false);
    if (ok) return { proc, dir, url };
    if (exited !== null || Date.now() > deadline) {
      const why = exited !== null ? `exited (${exited})` : `did not answer within ${CH_START_WAIT / 1000} s`;
      const log = errLog();
      proc.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
      throw Object.assign(new Error(`clickhouse-server ${why}; its error log ends:\n${log}`), { exited: exited !== null });
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

function startServer(chUrl) {
  const dir = mkdtempSync(join(tmpdir(), 'llm-tracer-ui-'));
  const proc = spawn(BIN, ['demo', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--data-dir', dir,
    '--store-backend', 'clickhouse', '--clickhouse-url', chUrl, '--clickhouse-database', 'ui'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: 'warn' },
  });
  let out = '';
  let err = '';
  proc.stderr.on('data', (d) => { err += d; });
  return new Promise((res, rej) => {
    const guard = setTimeout(() => rej(new Error(`demo did not start; stdout:\n${out}\nstderr:\n${err}`)), HANG);
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

async function api(path) {
  const r = await fetch(server.admin + path);
  const text = await r.text();
  assert.ok(r.ok, `GET ${path}: ${r.status} ${text}`);
  return JSON.parse(text);
}

before(async () => {
  ch = await startClickHouse();
  server = await startServer(ch.url);
  await until(async () => (await api('/api/stats')).calls >= server.calls, 'the demo calls to be stored');
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(HANG);
});

after(async () => {
  if (browser) await browser.close();
  if (server && server.proc.exitCode === null) server.proc.kill('SIGKILL');
  if (ch) ch.proc.kill('SIGKILL');
  for (const d of [server?.dir, ch?.dir]) if (d) rmSync(d, { recursive: true, force: true });
});

test('on ClickHouse the trace table, a trace timeline and the sessions view show the API answers', async () => {
  const health = await api('/healthz');
  assert.equal(health.store.backend, 'clickhouse', JSON.stringify(health));
  const { traces } = await api('/api/traces?limit=100');
  assert.ok(traces.length > 1, 'the demo traffic is stored in ClickHouse');
  await page.goto(`${server.admin}/#/traces`);
  await page.waitForSelector('[data-testid=trace-row]');
  const ids = await page.$$eval('[data-testid=trace-row]', (rows) => rows.map((r) => r.dataset.traceId));
  assert.deepEqual(ids, traces.map((t) => t.trace_id), 'one row per trace, newest first');

  const best = [...traces].sort((a, b) => b.span_count - a.span_count)[0];
  const { spans } = await api(`/api/traces/${encodeURIComponent(best.trace_id)}`);
  await page.click(`[data-testid=trace-row][data-trace-id="${best.trace_id}"]`);
  await page.waitForSelector('[data-testid=timeline-bar]');
  const bars = await page.$$eval('[data-testid=timeline-bar]', (bs) => bs.map((b) => b.dataset.spanId));
  assert.deepEqual([...bars].sort(), spans.map((s) => s.span_id).sort(), 'one timeline bar per span');
  await page.screenshot({ path: join(ART, 'clickhouse-timeline.png'), fullPage: true });

  const { sessions } = await api('/api/sessions');
  assert.ok(sessions.length > 0, 'the demo has sessions');
  await page.goto(`${server.admin}/#/sessions`);
  await page.waitForSelector('[data-testid=session-row]');
  const rows = await page.$$eval('[data-testid=session-row]', (rs) => rs.map((r) => r.dataset.sessionId));
  assert.deepEqual(rows, sessions.map((s) => s.session_id), 'sessions by latest activity');
});
