#!/usr/bin/env node
// End-to-end checks of the dashboard in real headless Chromium against the real
// engine with real data. Builds nothing: expects `viz/dist` (npm run build) and
// ENGINE_BIN (the engine binary). Starts the engine on a random port with a temp
// data dir, imports generated data with `engine import`, runs the browser checks,
// prints `N passed, N failed, N skipped` and exits non-zero on any failure.
//
// Env: ENGINE_BIN (required), CHROMIUM (default /usr/bin/chromium),
// FIRST_CHART_BUDGET_MS (default 1000), E2E_OUT (screenshots, default e2e/out),
// ENGINE_LOG_DIR (where the engine's log goes, for scripts/test's scan for secrets).
//
// Auth is on, as for a user: the engine's first start prints a one-time sign-in
// link, which the browser follows; requests made from here carry the admin token
// of DATA_DIR/auth/admin-token.

import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { chromium } from 'playwright-core';

const VIZ = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DIST = join(VIZ, 'dist');
const OUT = resolve(process.env.E2E_OUT ?? join(VIZ, 'e2e', 'out'));
const ENGINE_BIN = process.env.ENGINE_BIN;
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const FIRST_CHART_BUDGET_MS = Number(process.env.FIRST_CHART_BUDGET_MS ?? 1000);
const BUNDLE_BUDGET_KB = 300;
const ZONE = 'Europe/Berlin';
// The test virtualenv's Python (pyarrow), made by scripts/python-test-env.
const PYTHON = process.env.E2E_PYTHON ?? resolve(VIZ, '..', '.venv-test', 'bin', 'python');

// ---------------------------------------------------------------- test data

const T0 = Date.UTC(2026, 0, 1); // 2026-01-01T00:00:00Z
const SMALL = 'Kessel Ü1/Temperatur'; // slash, space, non-ASCII: must be encoded everywhere
const BIG = 'plant/big'; // past Excel's 1,048,576 rows, for the 1M-point timing
const BIG_N = 1_100_000;
const LIVE = 'live/feed';
// Two more sensors for the multi-sensor checks, on other scales.
const PRESSURE = 'line-1/pressure';
const FLOW = 'line-1/flow';
const PRESSURE_POINTS = SMALL_POINTS_OF((i) => [T0 + i * 2000 + 500, Math.round((1000 + 50 * Math.cos(i / 50)) * 100) / 100, 192], 1800);
const FLOW_POINTS = SMALL_POINTS_OF((i) => [T0 + i * 1000, Math.round(Math.sin(i / 100) * 1e4) / 1e4, i % 50 === 0 ? 0 : 192], 3600);
function SMALL_POINTS_OF(f, n) {
  return Array.from({ length: n }, (_, i) => f(i));
}
const UNKNOWN = 'no such sensor'; // asked for on purpose: the only requests that may answer 404

/** Deterministic points: 1 s apart, some uncertain and bad, one spike. */
function smallPoints() {
  const pts = [];
  let seed = 42;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  for (let i = 0; i < 3600; i++) {
    let v = Math.round((20 + 5 * Math.sin(i / 300) + rnd() * 0.5) * 1000) / 1000;
    if (i === 2000) v = 80.5;
    const q = i >= 1800 && i < 1815 ? 0 : i % 97 === 0 ? 64 : 192;
    pts.push([T0 + i * 1000, v, q]);
  }
  return pts;
}
const SMALL_POINTS = smallPoints();

function bigCsv() {
  const lines = ['timestamp_ms,value,quality'];
  for (let i = 0; i < BIG_N; i++) {
    const v = Math.round(Math.sin(i / 5000) * 10000) / 1000 + (i === 550_000 ? 50 : 0);
    lines.push(`${T0 + i * 1000},${v},192`);
  }
  return lines.join('\n') + '\n';
}

const csvOf = (pts) => ['timestamp_ms,value,quality', ...pts.map((p) => p.join(','))].join('\n') + '\n';

// ---------------------------------------------------------------- engine

function run(cmd, args, input) {
  return new Promise((res, rej) => {
    const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('error', rej);
    p.on('close', (code) => (code === 0 ? res(out) : rej(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${out.slice(-2000)}`))));
    p.stdin.end(input ?? '');
  });
}

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

const LINK = /https?:\/\/\S+\/signin\?code=stsi_[0-9a-f]{64}/;

/**
 * `engine serve` with auth on (its default) on a free port. Resolves once it
 * answers /healthz and has printed its one-time sign-in link (standard output);
 * the log (standard error) goes to ENGINE_LOG_DIR when set.
 */
async function startEngine(dataDir) {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const proc = spawn(ENGINE_BIN, ['serve', '--data-dir', dataDir, '--http-addr', `127.0.0.1:${port}`, '--web-dir', DIST], {
    stdio: ['ignore', 'pipe', 'pipe'],
    // gRPC on a free port too, so a developer's running engine does not collide; no NATS.
    env: Object.fromEntries(Object.entries({ ...process.env, ENGINE_GRPC_ADDR: '127.0.0.1:0', RUST_LOG: 'info' }).filter(([k]) => k !== 'ENGINE_NATS_URL')),
  });
  let log = '';
  let stdout = '';
  const file = process.env.ENGINE_LOG_DIR ? join(process.env.ENGINE_LOG_DIR, 'viz-e2e-engine.log') : null;
  if (file) mkdirSync(process.env.ENGINE_LOG_DIR, { recursive: true });
  const sink = file ? createWriteStream(file) : null;
  proc.stdout.on('data', (d) => (stdout += d));
  proc.stderr.on('data', (d) => {
    log += d;
    sink?.write(d);
  });
  proc.once('exit', () => sink?.end());
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`engine serve exited ${proc.exitCode}: ${log.slice(-2000)}`);
    try {
      const r = await fetch(`${base}/healthz`);
      const link = stdout.match(LINK)?.[0];
      if (r.ok && link) return { proc, base, link, log: () => log, stdout: () => stdout };
    } catch {
      /* not up yet */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  proc.kill();
  throw new Error(`engine serve did not answer /healthz and print a sign-in link in 30 s: ${log.slice(-2000)}`);
}

// ---------------------------------------------------------------- harness

const results = [];
async function test(name, fn) {
  const t = Date.now();
  try {
    const r = await fn();
    if (r === 'skip') {
      results.push({ name, status: 'skipped' });
      console.log(`- skip ${name}`);
    } else {
      results.push({ name, status: 'passed' });
      console.log(`✓ ${name} (${Date.now() - t} ms)`);
    }
  } catch (e) {
    results.push({ name, status: 'failed' });
    console.log(`✗ ${name}\n    ${String(e?.stack ?? e).split('\n').slice(0, 6).join('\n    ')}`);
  }
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}
function eq(actual, expected, msg) {
  if (actual !== expected) throw new Error(`${msg}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}

// ---------------------------------------------------------------- page helpers

const link = (sensor, from, to, extra = '') =>
  `/?sensor=${encodeURIComponent(sensor)}&from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}${extra}`;

async function waitForChart(page, timeout = 10_000) {
  await page.waitForFunction(() => Number(document.querySelector('.uplot')?.dataset.points ?? 0) > 0, null, { timeout });
}

function urlRange(page) {
  const u = new URL(page.url());
  return { sensor: u.searchParams.get('sensor'), from: u.searchParams.get('from'), to: u.searchParams.get('to') };
}

async function download(page, click) {
  const [dl] = await Promise.all([page.waitForEvent('download', { timeout: 15_000 }), click()]);
  const path = await dl.path();
  return { name: dl.suggestedFilename(), text: readFileSync(path, 'utf8') };
}

/** The CSV's rows must be exactly the generated points of [from, to). */
function checkRows(text, points, from, to) {
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/).filter((l) => l !== '');
  eq(lines[0], 'timestamp_ms,value,quality', 'CSV header');
  const want = points.filter(([t]) => t >= from && t < to);
  eq(lines.length - 1, want.length, `rows in [${from}, ${to})`);
  for (let i = 0; i < want.length; i++) {
    const [t, v, q] = lines[i + 1].split(',');
    if (Number(t) !== want[i][0] || Number(v) !== want[i][1] || Number(q) !== want[i][2]) {
      throw new Error(`row ${i + 1}: got ${lines[i + 1]}, want ${want[i].join(',')}`);
    }
  }
  return want.length;
}

function bundleKb() {
  const assets = join(DIST, 'assets');
  let js = 0;
  let css = 0;
  for (const f of readdirSync(assets)) {
    const gz = gzipSync(readFileSync(join(assets, f)), { level: 9 }).length;
    if (f.endsWith('.js')) js += gz;
    else if (f.endsWith('.css')) css += gz;
  }
  return { js: js / 1024, css: css / 1024 };
}

// ---------------------------------------------------------------- main

async function main() {
  if (!ENGINE_BIN || !existsSync(ENGINE_BIN)) {
    console.error('ENGINE_BIN must point to the engine binary (cargo build --release: target/release/engine).');
    console.log('0 passed, 1 failed');
    process.exit(2);
  }
  if (!existsSync(join(DIST, 'index.html'))) {
    console.error('viz/dist is missing: run `npm run build` first.');
    console.log('0 passed, 1 failed');
    process.exit(2);
  }
  mkdirSync(OUT, { recursive: true });

  const bundle = bundleKb();
  console.log(`bundle: ${bundle.js.toFixed(1)} KB JS + ${bundle.css.toFixed(1)} KB CSS gzipped (budget ${BUNDLE_BUDGET_KB} KB JS)`);
  await test('JS bundle at most 300 KB gzipped', async () => assert(bundle.js <= BUNDLE_BUDGET_KB, `${bundle.js.toFixed(1)} KB`));

  const dataDir = mkdtempSync(join(tmpdir(), 'viz-e2e-'));
  let engine;
  let browser;
  try {
    const t = Date.now();
    await run(ENGINE_BIN, ['import', '--data-dir', dataDir, '--sensor', SMALL], csvOf(SMALL_POINTS));
    await run(ENGINE_BIN, ['import', '--data-dir', dataDir, '--sensor', BIG], bigCsv());
    await run(ENGINE_BIN, ['import', '--data-dir', dataDir, '--sensor', LIVE], csvOf([[Date.now() - 60_000, 1, 192]]));
    await run(ENGINE_BIN, ['import', '--data-dir', dataDir, '--sensor', PRESSURE], csvOf(PRESSURE_POINTS));
    await run(ENGINE_BIN, ['import', '--data-dir', dataDir, '--sensor', FLOW], csvOf(FLOW_POINTS));
    console.log(`imported ${SMALL_POINTS.length + BIG_N + 1} points in ${Date.now() - t} ms`);
    engine = await startEngine(dataDir);
    console.log(`engine at ${engine.base}`);
    const admin = readFileSync(join(dataDir, 'auth', 'admin-token'), 'utf8').trim();
    const bearer = { Authorization: `Bearer ${admin}` };
    assert(!engine.log().includes(admin), 'the admin secret is in the engine log');
    const api = await fetch(`${engine.base}/api/v1/sensors`, { headers: bearer });
    if (!api.ok || !(api.headers.get('content-type') ?? '').includes('json')) {
      throw new Error(`${ENGINE_BIN} answers /api/v1/sensors with HTTP ${api.status}: was it built from a branch without the HTTP API?`);
    }
    const index = await fetch(`${engine.base}/?sensor=x`);
    if (!index.ok) throw new Error(`the engine does not serve the dashboard from ${DIST} (HTTP ${index.status} for /)`);

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    const context = await browser.newContext({
      baseURL: engine.base,
      acceptDownloads: true,
      viewport: { width: 1440, height: 860 },
      timezoneId: ZONE,
      locale: 'en-GB',
    });
    const page = await context.newPage();
    const consoleErrors = [];
    page.on('console', (m) => m.type() === 'error' && consoleErrors.push({ text: m.text(), url: m.location()?.url ?? '' }));
    page.on('pageerror', (e) => consoleErrors.push({ text: String(e), url: '' }));

    const from = T0 + 10 * 60_000;
    const to = T0 + 50 * 60_000;
    const exportPath = `/api/v1/export?sensor_id=${encodeURIComponent(SMALL)}&start_ts=${from}&end_ts=${to}`;

    await test('the one-time link signs in, leaves nothing reusable in the URL, and fails the second time', async () => {
      const link = new URL(engine.link);
      eq(link.origin, engine.base, 'the printed link names the listener');
      const before = await page.request.get(exportPath);
      eq(before.status(), 401, 'export before signing in');
      await page.goto(engine.link);
      eq(page.url(), `${engine.base}/`, 'redirected to the dashboard, no code in the address bar');
      eq(await page.evaluate(() => history.length), 2, 'history: the blank page and the dashboard only');
      eq((await page.getByTestId('signed-in-as').textContent()), 'admin (first start)', 'who is signed in');
      const cookies = await context.cookies();
      eq(cookies.length, 1, 'one cookie');
      const [cookie] = cookies;
      assert(cookie.httpOnly && cookie.sameSite === 'Strict' && cookie.expires > Date.now() / 1000, `session cookie flags: ${JSON.stringify({ ...cookie, value: '…' })}`);
      assert(!cookie.value.includes(link.searchParams.get('code')) && !cookie.value.startsWith('stse_'), 'the cookie is neither the code nor a token');
      await page.screenshot({ path: join(OUT, 'signed-in.png') });
      // A second use, in a browser without the session: the sign-in page, no cookie.
      const other = await browser.newContext({ baseURL: engine.base });
      const again = await other.newPage();
      await again.goto(engine.link);
      await again.getByLabel('Token').waitFor();
      assert(/already used, has expired/.test(await again.getByRole('status').first().textContent()), 'says the link is spent');
      eq(new URL(again.url()).search, '', 'the note leaves the address bar too');
      eq((await other.cookies()).length, 0, 'no cookie for a used link');
      await again.screenshot({ path: join(OUT, 'link-used.png') });
      eq((await again.request.get(exportPath)).status(), 401, 'export without a session');
      await other.close();
      assert(!engine.log().includes(link.searchParams.get('code')), 'the code is in the engine log');
    });

    await test('a link /?sensor=&from=&to= shows exactly that sensor and range', async () => {
      await page.goto(link(SMALL, from, to));
      await waitForChart(page);
      eq(await page.getByRole('combobox', { name: 'Sensor' }).inputValue(), SMALL, 'sensor in the picker');
      eq(await page.getByTestId('raw-count').textContent(), '2,400', 'raw count of the range');
      eq(JSON.stringify(urlRange(page)), JSON.stringify({ sensor: SMALL, from: String(from), to: String(to) }), 'URL kept');
      const rangeLabel = await page.getByRole('button', { name: /^Time range:/ }).textContent();
      assert(rangeLabel.includes('2026-01-01 01:10:00 → 2026-01-01 01:50:00') && rangeLabel.includes(ZONE), `range shown in ${ZONE}: ${rangeLabel}`);
      assert(await page.getByText(/uncertain/).first().isVisible(), 'quality legend visible');
      await page.screenshot({ path: join(OUT, 'dashboard.png') });
    });

    await test('"Export CSV" downloads exactly the rows of the range on screen', async () => {
      const { name, text } = await download(page, () => page.getByRole('button', { name: 'Export CSV' }).click());
      assert(name.endsWith('_20260101T001000Z_20260101T005000Z.csv') && name.startsWith('Kessel'), `file name ${name}`);
      const n = checkRows(text, SMALL_POINTS, from, to);
      eq(n, 2400, 'rows');
      await page.getByRole('status').filter({ hasText: 'Download started' }).waitFor();
    });

    await test('drag-select zooms in: the URL changes, and so does the exported range', async () => {
      const over = await page.locator('.u-over').boundingBox();
      const y = over.y + over.height / 2;
      await page.mouse.move(over.x + over.width * 0.25, y);
      await page.mouse.down();
      await page.mouse.move(over.x + over.width * 0.6, y, { steps: 8 });
      await page.mouse.up();
      await page.waitForFunction((f) => new URL(location.href).searchParams.get('from') !== f, String(from));
      const r = urlRange(page);
      const zf = Number(r.from);
      const zt = Number(r.to);
      assert(zf > from && zt < to && zt > zf, `zoomed range ${zf}..${zt} inside ${from}..${to}`);
      const expected = SMALL_POINTS.filter(([t]) => t >= zf && t < zt).length;
      await page.waitForFunction((n) => document.querySelector('[data-testid="raw-count"]')?.textContent === n.toLocaleString('en-US'), expected);
      await waitForChart(page);
      await page.screenshot({ path: join(OUT, 'dashboard-zoomed.png') });
      const { text } = await download(page, () => page.getByRole('button', { name: 'Export CSV' }).click());
      checkRows(text, SMALL_POINTS, zf, zt);
      // Back returns to the range before the zoom.
      await page.goBack();
      await page.waitForFunction((f) => new URL(location.href).searchParams.get('from') === f, String(from));
      await page.waitForFunction(() => document.querySelector('[data-testid="raw-count"]')?.textContent === '2,400');
    });

    await test('a reload restores the view', async () => {
      await page.reload();
      await waitForChart(page);
      eq(JSON.stringify(urlRange(page)), JSON.stringify({ sensor: SMALL, from: String(from), to: String(to) }), 'URL');
      eq(await page.getByTestId('raw-count').textContent(), '2,400', 'raw count');
    });

    await test('an unknown sensor: a "not found" message and no download', async () => {
      await page.goto(link(UNKNOWN, from, to));
      await page.getByRole('button', { name: 'Export CSV' }).waitFor();
      const dl = page.waitForEvent('download', { timeout: 2500 }).then(() => true, () => false);
      await page.getByRole('button', { name: 'Export CSV' }).click();
      const alert = page.getByRole('alert').filter({ hasText: 'Export failed' });
      await alert.waitFor({ timeout: 5000 });
      assert(/not found/.test(await alert.textContent()), 'message says "not found"');
      assert(!(await dl), 'no download started');
      await page.screenshot({ path: join(OUT, 'unknown-sensor.png') });
    });

    await test('sensor picker: search, pick with the keyboard, count and span shown', async () => {
      await page.goto('/');
      const box = page.getByRole('combobox', { name: 'Sensor' });
      await box.click();
      await box.fill('kessel');
      await page.getByRole('option', { name: /Kessel Ü1\/Temperatur/ }).waitFor();
      assert((await page.getByRole('option').count()) === 1, 'one match');
      await page.screenshot({ path: join(OUT, 'picker.png') });
      await box.press('Enter');
      await waitForChart(page);
      const r = urlRange(page);
      eq(r.sensor, SMALL, 'sensor in URL');
      eq(r.from, String(T0), 'whole span from');
      eq(r.to, String(T0 + 3_599_001), 'whole span to (exclusive)');
      assert(await page.getByText('3,600 points · 2026-01-01 01:00:00 → 2026-01-01 01:59:59').isVisible(), 'count and span');
    });

    await test('quick range with no data shows the empty state; "Show all data" returns', async () => {
      await page.getByRole('button', { name: /^Time range:/ }).click();
      await page.getByRole('button', { name: 'Last 24 hours' }).click();
      await page.waitForFunction(() => new URL(location.href).searchParams.get('from') === 'now-24h');
      await page.getByText('No data in this range.').waitFor();
      await page.getByRole('button', { name: 'Show all data of this sensor' }).click();
      await waitForChart(page);
      eq(urlRange(page).from, String(T0), 'back to the whole span');
    });

    await test('relative ranges in the URL: from=now-6h&to=now', async () => {
      await page.goto(link(SMALL, 'now-6h', 'now'));
      await page.getByText('No data in this range.').waitFor();
      assert((await page.getByRole('button', { name: 'Time range: Last 6 hours' }).count()) === 1, 'named as a quick range');
    });

    let firstChart = NaN;
    await test(`first chart of a ${BIG_N.toLocaleString('en-US')}-point range within ${FIRST_CHART_BUDGET_MS} ms of navigation`, async () => {
      const big = await context.newPage();
      const url = link(BIG, T0, T0 + BIG_N * 1000);
      // The first load is cold (a new page, the engine's first scan of this range).
      const times = [];
      for (let i = 0; i < 4; i++) {
        if (i > 0) await big.goto('about:blank');
        await big.goto(url);
        await waitForChart(big, 30_000);
        times.push(await big.evaluate(() => performance.getEntriesByName('first-chart')[0]?.startTime ?? NaN));
      }
      firstChart = Math.max(...times);
      const sorted = times.slice(1).sort((a, b) => a - b);
      console.log(`first chart after navigation: cold ${times[0].toFixed(0)} ms, warm ${times.slice(1).map((t) => t.toFixed(0)).join(', ')} ms (median ${sorted[1].toFixed(0)} ms)`);
      eq(await big.getByTestId('raw-count').textContent(), BIG_N.toLocaleString('en-US'), 'raw count');
      assert(await big.getByText(/drawn \(min\/max kept per pixel\)/).isVisible(), 'downsampled');
      await big.screenshot({ path: join(OUT, 'big.png') });
      assert(firstChart <= FIRST_CHART_BUDGET_MS, `first chart after ${firstChart.toFixed(0)} ms`);
      await big.close();
    });

    await test("past Excel's 1,048,576 rows: warned before any download, Export Excel offered", async () => {
      const big = await context.newPage();
      await big.goto(link(BIG, T0, T0 + BIG_N * 1000));
      await waitForChart(big, 30_000);
      const dl = big.waitForEvent('download', { timeout: 1500 }).then(() => true, () => false);
      await big.getByRole('button', { name: 'Export CSV' }).click();
      const warn = big.getByRole('alert').filter({ hasText: '1,048,576' });
      await warn.waitFor();
      assert((await warn.textContent()).includes('1,100,000 rows'), 'names the row count');
      assert(!(await dl), 'no download before the choice');
      await big.screenshot({ path: join(OUT, 'excel-warning.png') });
      const [d] = await Promise.all([big.waitForEvent('download', { timeout: 15_000 }), big.getByRole('button', { name: 'Export Excel' }).click()]);
      assert(d.suggestedFilename().endsWith('.xlsx'), `xlsx file name: ${d.suggestedFilename()}`);
      await d.cancel();
      await big.close();
    });

    await test('keyboard: the time range opens, applies an absolute range and closes with Escape', async () => {
      await page.goto(link(SMALL, from, to));
      await waitForChart(page);
      await page.getByRole('button', { name: /^Time range:/ }).focus();
      await page.keyboard.press('Enter');
      const fromBox = page.getByLabel('From', { exact: true });
      await fromBox.fill('2026-01-01 01:20');
      await page.getByLabel('To', { exact: true }).fill('2026-01-01 01:30');
      await page.keyboard.press('Enter');
      await page.waitForFunction(() => new URL(location.href).searchParams.get('from') === String(Date.UTC(2026, 0, 1, 0, 20)));
      eq(urlRange(page).to, String(T0 + 30 * 60_000), 'to in URL');
      await page.waitForFunction(() => document.querySelector('[data-testid="raw-count"]')?.textContent === '600');
      await page.getByRole('button', { name: /^Time range:/ }).press('Enter');
      await page.keyboard.press('Escape');
      eq(await page.getByRole('dialog').count(), 0, 'panel closed');
    });

    await test('Live: pushed points appear within a second, without refetching the range', async () => {
      const probe = await fetch(`${engine.base}/api/v1/live?sensor_id=${encodeURIComponent(LIVE)}`, { headers: bearer, signal: AbortSignal.timeout(3000) }).catch(() => null);
      const isStream = probe?.ok && probe.headers.get('content-type')?.startsWith('text/event-stream');
      await probe?.body?.cancel().catch(() => {});
      assert(isStream, `GET /api/v1/live is not an event stream: ${probe ? `HTTP ${probe.status}, ${probe.headers.get('content-type')}` : 'no answer in 3 s'}`);
      const live = await context.newPage();
      let seriesCalls = 0;
      live.on('request', (r) => r.url().includes('/api/v1/series') && seriesCalls++);
      await live.goto(link(LIVE, 'now-5m', 'now', '&live=1'));
      await live.getByText('live: connected').waitFor({ timeout: 10_000 });
      await waitForChart(live);
      const before = await live.evaluate(() => Number(document.querySelector('.uplot')?.dataset.points));
      const callsBefore = seriesCalls;
      const t = Date.now();
      const res = await fetch(`${engine.base}/api/v1/import?sensor_id=${encodeURIComponent(LIVE)}`, {
        method: 'POST',
        headers: { 'Content-Type': 'text/csv', ...bearer },
        body: csvOf([[Date.now(), 42, 192]]),
      });
      assert(res.ok, `import answered ${res.status}`);
      await live.waitForFunction((n) => Number(document.querySelector('.uplot')?.dataset.points) > n, before, { timeout: 5000 });
      const took = Date.now() - t;
      console.log(`live point drawn ${took} ms after it was written`);
      assert(took <= 1000, `took ${took} ms`);
      eq(seriesCalls, callsBefore, 'no refetch of the range');
      await live.screenshot({ path: join(OUT, 'live.png') });
      await live.close();
    });

    await test('three sensors: picked, drawn with their own axes, kept in the URL; Parquet from "Export..." reads back in pyarrow', async () => {
      await page.goto(link(SMALL, from, to));
      await waitForChart(page);
      for (const id of [PRESSURE, FLOW]) {
        const add = page.getByRole('combobox', { name: 'Compare with' });
        await add.click();
        await add.fill(id);
        await page.getByRole('option', { name: new RegExp(id.replace('/', '\\/')) }).click();
        await page.getByRole('listitem').filter({ hasText: id }).waitFor();
      }
      const u = new URL(page.url());
      eq(JSON.stringify(u.searchParams.getAll('sensor')), JSON.stringify([SMALL, PRESSURE, FLOW]), 'sensors in the URL');
      // Each sensor has a legend entry (uPlot's legend toggles a line on click).
      await page.waitForFunction(() => document.querySelectorAll('.u-legend .u-series').length >= 6);
      const legend = await page.locator('.u-legend').textContent();
      assert(legend.includes(PRESSURE) && legend.includes(FLOW), `legend names the sensors: ${legend}`);
      const axes = await page.locator('.u-axis').count();
      assert(axes >= 4, `x, main y and own y axes for pressure and flow: ${axes}`);
      await page.locator('.u-legend .u-series').filter({ hasText: FLOW }).click();
      assert(await page.locator('.u-legend .u-series.u-off').filter({ hasText: FLOW }).count() === 1, 'legend click hides flow');
      await page.locator('.u-legend .u-series').filter({ hasText: FLOW }).click();
      await page.screenshot({ path: join(OUT, 'three-sensors.png') });

      await page.getByRole('button', { name: 'Export…' }).click();
      const dialog = page.getByRole('dialog', { name: 'Export' });
      await dialog.waitFor();
      await dialog.getByLabel('Format').selectOption('parquet');
      await dialog.getByRole('radio', { name: /Wide/ }).check();
      const want = [SMALL_POINTS, PRESSURE_POINTS, FLOW_POINTS].map((pts) => pts.filter(([t]) => t >= from && t < to));
      const distinct = new Set(want.flat().map(([t]) => t)).size;
      const total = want.reduce((n, p) => n + p.length, 0);
      await page.waitForFunction((n) => document.querySelector('[data-testid="export-rows"]')?.textContent === n, total.toLocaleString('en-US'));
      const shareLink = await dialog.getByLabel('Link').inputValue();
      assert(shareLink.includes('format=parquet') && shareLink.includes('layout=wide'), `link: ${shareLink}`);
      await page.screenshot({ path: join(OUT, 'export-dialog.png') });
      const [dl] = await Promise.all([page.waitForEvent('download', { timeout: 15_000 }), dialog.getByRole('button', { name: 'Download' }).click()]);
      assert(dl.suggestedFilename().endsWith('.parquet'), `file name ${dl.suggestedFilename()}`);
      const file = await dl.path();
      const read = JSON.parse(
        await run(PYTHON, ['-c', [
          'import json, sys, pyarrow.parquet as pq',
          't = pq.read_table(sys.argv[1])',
          'cols = [t.column(0).cast("int64").to_pylist()] + [c.to_pylist() for c in t.columns[1:]]',
          'print(json.dumps({"columns": t.column_names, "types": [str(f.type) for f in t.schema], "rows": [list(r) for r in zip(*cols)]}))',
        ].join('\n'), file]),
      );
      eq(JSON.stringify(read.columns), JSON.stringify(['timestamp_ms', SMALL, `${SMALL} quality`, PRESSURE, `${PRESSURE} quality`, FLOW, `${FLOW} quality`]), 'Parquet columns');
      eq(read.types[0], 'timestamp[ms, tz=UTC]', 'timestamp type');
      eq(read.rows.length, distinct, 'a row per distinct timestamp');
      const bySensor = want.map((pts) => new Map(pts.map(([t, v, q]) => [t, [v, q]])));
      for (const row of read.rows) {
        bySensor.forEach((m, s) => {
          const cell = m.get(row[0]) ?? [null, null];
          if (row[1 + 2 * s] !== cell[0] || row[2 + 2 * s] !== cell[1]) {
            throw new Error(`t=${row[0]} sensor ${s}: got ${row[1 + 2 * s]}/${row[2 + 2 * s]}, want ${cell.join('/')}`);
          }
        });
      }
      // The one-click export still takes the shown sensors' raw points.
      const { text } = await download(page, () => page.getByRole('button', { name: 'Export CSV' }).click());
      eq(text.split('\n')[0], 'sensor_id,timestamp_ms,value,quality', 'one-click CSV of three sensors is long');
      eq(text.split('\n').filter((l) => l !== '').length - 1, total, 'one-click CSV rows');
    });

    await test('no errors in the browser console', async () => {
      // The unknown-sensor check asks for UNKNOWN on purpose, and the engine answers those
      // requests (and only those) 404; any other error, any other 404, is a bug.
      const unknownSensorRequest = (url) => {
        const u = URL.canParse(url) ? new URL(url) : null;
        return (
          u?.pathname === `/api/v1/sensors/${encodeURIComponent(UNKNOWN)}` ||
          (['/api/v1/series', '/api/v1/export'].includes(u?.pathname) && u.searchParams.get('sensor_id') === UNKNOWN)
        );
      };
      const expected = (e) => /status of 404 \(Not Found\)/.test(e.text) && unknownSensorRequest(e.url);
      const unexpected = consoleErrors.filter((e) => !expected(e));
      assert(unexpected.length === 0, unexpected.map((e) => `${e.text} (${e.url || 'no URL'})`).join('\n'));
    });

    await test('a read-only token (engine token create --scope read:**) sees the chart but cannot export', async () => {
      const created = await run(ENGINE_BIN, ['token', 'create', '--data-dir', dataDir, '--name', 'viewer', '--scope', 'read:**']);
      // run() mixes standard output and error: the secret is the one token-shaped word.
      const secret = created.match(/stse_[0-9a-f]{64}_[0-9a-f]{8}/)?.[0];
      assert(secret, 'token create printed a secret');
      const viewer = await browser.newContext({ baseURL: engine.base, acceptDownloads: true, timezoneId: ZONE, locale: 'en-GB', viewport: { width: 1440, height: 860 } });
      const p = await viewer.newPage();
      await p.goto(link(SMALL, from, to));
      await p.getByLabel('Token').fill(secret);
      await p.getByRole('button', { name: 'Sign in' }).click();
      eq(await p.getByTestId('signed-in-as').textContent(), 'viewer', 'signed in as');
      await waitForChart(p);
      eq(await p.getByTestId('raw-count').textContent(), '2,400', 'the chart of the range');
      const exportButton = p.getByRole('button', { name: 'Export CSV' });
      assert(await exportButton.isDisabled(), '"Export CSV" disabled');
      assert(await p.getByRole('button', { name: 'Export…' }).isDisabled(), '"Export…" disabled');
      const reason = await p.getByTestId('export-blocked').textContent();
      assert(reason.includes('“viewer” may not export'), `the reason is shown: ${reason}`);
      await p.screenshot({ path: join(OUT, 'read-only.png') });
      eq((await p.request.get(exportPath)).status(), 403, 'the export URL with its session');
      await viewer.close();
    });

    await test('after sign-out the export URL answers 401', async () => {
      await page.goto(link(SMALL, from, to));
      await waitForChart(page);
      eq((await page.request.get(exportPath)).status(), 200, 'the export URL with the cookie alone');
      await page.getByRole('button', { name: 'Sign out' }).click();
      await page.getByLabel('Token').waitFor();
      eq((await context.cookies()).length, 0, 'cookie cleared');
      eq((await page.request.get(exportPath)).status(), 401, 'export after sign-out');
      await page.screenshot({ path: join(OUT, 'signed-out.png') });
    });

    console.log(`measured: bundle ${bundle.js.toFixed(1)} KB JS gzipped; first chart at worst ${Number.isNaN(firstChart) ? 'n/a' : firstChart.toFixed(0) + ' ms'} after navigation (${BIG_N.toLocaleString('en-US')}-point range)`);
    console.log(`screenshots in ${OUT}`);
  } catch (e) {
    results.push({ name: 'setup', status: 'failed' });
    console.log(`✗ setup: ${e?.stack ?? e}`);
  } finally {
    await browser?.close().catch(() => {});
    if (engine) {
      engine.proc.kill('SIGTERM');
      await new Promise((r) => (engine.proc.exitCode !== null ? r() : engine.proc.once('exit', r)));
    }
    rmSync(dataDir, { recursive: true, force: true });
  }

  const n = (s) => results.filter((r) => r.status === s).length;
  const failed = n('failed');
  console.log(`${n('passed')} passed, ${failed} failed, ${n('skipped')} skipped`);
  process.exit(failed ? 1 : 0);
}

main();
