// The dashboard's benchmarks in headless chromium (scripts/bench.sh). One line per figure:
//   BENCH <name> <value> <unit> ratio=<x>
// with the ratio against the goal (value ÷ goal: ≤ 1 meets it), as there is no other
// dashboard to measure in the same run.
//   web_first_chart_1m       navigation → first chart drawn, for a run of 1M scalar points (goal 1000 ms)
//   web_live_latency_p99_ms  record created (before the shim sends it, so ≥ ack) → handled by the
//                            page, at 10k steps/s (goal 250 ms)
//   web_tab_memory           JS heap after T ÷ after T/10 of live data, after a forced GC
//                            (goal 1.2; T = WEB_TAB_MEMORY_SECS, default 600 s; --quick: 120 s)
// Needs GYM_TELEMETRY_DAEMON_BIN and WEB_FEED_BIN (benches/src/bin/web_feed.rs).
import { spawn } from 'node:child_process';
import { startDaemon, launch, need, cleanup, waitGt } from './lib.mjs';
import { takeSnapshot, summarise, printDiff } from './heap.mjs';

const quick = process.argv.includes('--quick');
const log = (...a) => console.error('  ', ...a);

function feed(daemon, args) {
  return new Promise((resolve, reject) => {
    const c = spawn(need('WEB_FEED_BIN'), args, { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, GYM_TELEMETRY_ENDPOINT: daemon.endpoint, GYM_TELEMETRY_VAR_DIR: daemon.varDir, GYM_TELEMETRY_LOG: 'warn' } });
    c.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`web_feed ${args.join(' ')} exited ${code}`))));
  });
}

async function heap(page, cdp) {
  // Twice: the first full GC can leave what finalizers released for the next one.
  await cdp.send('HeapProfiler.collectGarbage');
  await cdp.send('HeapProfiler.collectGarbage');
  return page.evaluate(() => performance.memory.usedJSHeapSize);
}

const daemon = await startDaemon();
const ctx = await launch();
try {
  // -- web_first_chart_1m -------------------------------------------------------------------
  const N = 1_000_000;
  let t = Date.now();
  await feed(daemon, ['scalars', 'web-bench-1m', String(N)]);
  log(`stored ${N} scalars in ${((Date.now() - t) / 1000).toFixed(1)} s`);
  const page = await ctx.newPage();
  await page.goto(daemon.login);
  const runs = [];
  for (let i = 0; i < (quick ? 3 : 5); i++) {
    await page.goto('about:blank');
    await page.goto(daemon.base + '#/charts?runs=web-bench-1m');
    await waitGt(page, () => window.__gt.firstChartMs != null && window.__gt.charts.drawn > 0);
    const ms = await page.evaluate(() => window.__gt.firstChartMs);
    const pts = await page.evaluate(() => window.__gt.points);
    runs.push(ms);
    log(`first chart drawn after ${ms.toFixed(0)} ms (${pts} points on the page)`);
  }
  runs.sort((a, b) => a - b);
  const med = runs[runs.length >> 1];
  console.log(`BENCH web_first_chart_1m ${med.toFixed(0)} ms ratio=${(med / 1000).toFixed(2)}`);

  // -- web_live_latency_p99_ms --------------------------------------------------------------
  const secs = quick ? 10 : 30;
  const live = feed(daemon, ['steps', 'web-bench-live', '10000', String(secs)]);
  await page.goto(daemon.base + '#/run/web-bench-live');
  await waitGt(page, () => window.__gt.steps > 0);
  await page.waitForTimeout(2000);
  await page.evaluate(() => window.__gt.latencyHist.fill(0));
  const s0 = await page.evaluate(() => window.__gt.steps);
  await live;
  await page.waitForTimeout(1000);
  const [p50, p99, s1, lagged, dropped] = await page.evaluate(() => [window.__gt.latencyP(0.5), window.__gt.latencyP(0.99), window.__gt.steps, window.__gt.sse.lagged, window.__gt.sse.dropped]);
  log(`${s1 - s0} steps seen live; p50 ${p50} ms; lagged notices ${lagged} (${dropped} dropped)`);
  console.log(`BENCH web_live_latency_p99_ms ${p99} ms ratio=${(p99 / 250).toFixed(2)}`);

  // -- web_tab_memory -----------------------------------------------------------------------
  const T = Number(process.env.WEB_TAB_MEMORY_SECS || (quick ? 120 : 600));
  const feeding = feed(daemon, ['steps', 'web-bench-mem', '1000', String(T + 30)]);
  await page.goto(daemon.base + '#/run/web-bench-mem');
  await waitGt(page, () => window.__gt.agents.length > 0);
  await page.click('button[data-subtab="charts"]');
  const cdp = await ctx.newCDPSession(page);
  const t0 = Date.now();
  await page.waitForTimeout((T / 10) * 1000);
  const h1 = await heap(page, cdp);
  // What grows, if anything: two heap snapshots (taken after each reading), compared by
  // constructor and retaining property (WEB_HEAP_SNAPSHOTS=0 skips them).
  const snaps = process.env.WEB_HEAP_SNAPSHOTS !== '0';
  const snapA = snaps ? summarise(await takeSnapshot(cdp)) : null;
  await page.waitForTimeout(Math.max(0, T * 1000 - (Date.now() - t0)));
  const h2 = await heap(page, cdp);
  const [steps, charts] = await page.evaluate(() => [window.__gt.steps, window.__gt.charts]);
  log(`heap ${(h1 / 1048576).toFixed(2)} MiB after ${T / 10} s, ${(h2 / 1048576).toFixed(2)} MiB after ${T} s (${steps} live steps; longest curve ${charts.maxCurve} points, ${charts.thinned} thinned)`);
  if (snaps) printDiff(snapA, summarise(await takeSnapshot(cdp)), log, 12);
  console.log(`BENCH web_tab_memory ${(h2 / h1).toFixed(3)} heap_ratio_${T}s_over_${T / 10}s ratio=${(h2 / h1 / 1.2).toFixed(2)}`);
  await feeding.catch(() => {});
} finally {
  await ctx.close();
  daemon.child.kill('SIGTERM');
  cleanup();
}
