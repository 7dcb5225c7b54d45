// Shared by the browser test and the browser benchmarks: start the daemon and workers, launch
// Debian's chromium through playwright-core, and clean up.
import { spawn } from 'node:child_process';
import { mkdtempSync, chmodSync, rmSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

export function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

const children = new Set();
const dirs = new Set();
export function cleanup() {
  for (const c of children) { try { c.kill('SIGTERM'); } catch (_) {} }
  for (const d of dirs) { try { rmSync(d, { recursive: true, force: true }); } catch (_) {} }
}
process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { cleanup(); process.exit(130); });

export function privateDir(prefix) {
  const d = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(d, 0o700);
  dirs.add(d);
  return d;
}

// Starts `gym-telemetry-daemon serve`; resolves with its endpoint and the login URL it printed.
export async function startDaemon(extraArgs = []) {
  const bin = need('GYM_TELEMETRY_DAEMON_BIN');
  const varDir = privateDir('gt-web-var-');
  const grpc = await freePort();
  const web = await freePort();
  const args = ['serve', '--var-dir', varDir, '--listen', `127.0.0.1:${grpc}`, '--metrics-listen', 'off', '--web-listen', `127.0.0.1:${web}`, ...extraArgs];
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, GYM_TELEMETRY_LOG: 'warn' } });
  children.add(child);
  let out = '';
  let err = '';
  child.stderr.on('data', (d) => { err += d; if (err.length > 100000) err = err.slice(-50000); });
  const login = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('daemon did not print its web URL in 60 s: ' + err)), 60000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/web dashboard: (\S+)/);
      if (m) { clearTimeout(t); resolve(m[1]); }
    });
    child.once('exit', (code) => { clearTimeout(t); reject(new Error(`daemon exited ${code}: ${err}`)); });
  });
  return { child, varDir, endpoint: `http://127.0.0.1:${grpc}`, login, base: `http://127.0.0.1:${web}/`, stderr: () => err };
}

// Runs the demo worker against the daemon (its token found through the var dir, as any client
// of the same user finds it). Resolves when it exits when `wait` is set.
export function startWorker(daemon, args, { wait = false } = {}) {
  const bin = need('GYM_TELEMETRY_DEMO_BIN');
  const child = spawn(bin, ['worker', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, GYM_TELEMETRY_ENDPOINT: daemon.endpoint, GYM_TELEMETRY_VAR_DIR: daemon.varDir, GYM_TELEMETRY_QUEUE_DIR: privateDir('gt-web-q-'), GYM_TELEMETRY_LOG: 'warn' },
  });
  children.add(child);
  let err = '';
  child.stderr.on('data', (d) => { err += d; if (err.length > 100000) err = err.slice(-50000); });
  const done = new Promise((resolve, reject) => child.once('exit', (code) => { children.delete(child); code === 0 ? resolve() : reject(new Error(`worker ${args.join(' ')} exited ${code}: ${err}`)); }));
  if (wait) return done;
  done.catch(() => {}); // killed at the end of a test: not a failure
  return { child, done };
}

// Runs telemetry-web's frame_worker example (frames through the shim's FrameSender) against
// the daemon: `frame_worker RUN AGENT EPISODES STEPS DELAY_MS EVERY [REFS_WITHOUT_FRAMES]`.
export function startFrameWorker(daemon, args, { wait = false } = {}) {
  const bin = need('FRAME_WORKER_BIN');
  const child = spawn(bin, args, {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, GYM_TELEMETRY_ENDPOINT: daemon.endpoint, GYM_TELEMETRY_VAR_DIR: daemon.varDir, GYM_TELEMETRY_QUEUE_DIR: privateDir('gt-web-fq-'), GYM_TELEMETRY_LOG: 'warn' },
  });
  children.add(child);
  let err = '';
  child.stderr.on('data', (d) => { err += d; if (err.length > 100000) err = err.slice(-50000); });
  const done = new Promise((resolve, reject) => child.once('exit', (code) => { children.delete(child); code === 0 ? resolve() : reject(new Error(`frame_worker ${args.join(' ')} exited ${code}: ${err}`)); }));
  if (wait) return done;
  done.catch(() => {});
  return { child, done };
}

export async function launch() {
  const profile = privateDir('gt-web-chromium-');
  // A fresh profile each time (playwright passes it as --user-data-dir).
  return chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--enable-precise-memory-info'],
  });
}

export function artifacts() {
  const d = process.env.WEB_ARTIFACTS || join(process.cwd(), 'artifacts');
  mkdirSync(d, { recursive: true });
  return d;
}

export const gt = (page, f) => page.evaluate(f);
export async function waitGt(page, fn, arg, timeout = 60000) {
  await page.waitForFunction(fn, arg, { timeout, polling: 100 });
}
