// The dashboard in a real browser (Debian's chromium through playwright-core), against the real
// daemon and demo workers: login, live points, agent tabs, the Human Replay filter, replaying an
// episode, run control, and refusal without the token. Screenshots go to $WEB_ARTIFACTS.
// Run by scripts/test.sh with node's test runner.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdirSync, writeFileSync } from 'node:fs';
import { startDaemon, startWorker, startFrameWorker, launch, artifacts, gt, waitGt, need, cleanup } from './lib.mjs';

let daemon, ctx, shots;
before(async () => {
  shots = artifacts();
  daemon = await startDaemon();
  // Finished human episodes for Human Replay, then a live two-agent run.
  await startWorker(daemon, ['--run-id', 'human-run', '--agents', '1', '--episodes', '4', '--control-mode', 'human', '--seed', '3'], { wait: true });
  startWorker(daemon, ['--run-id', 'multi-run', '--agents', '2', '--episodes', '100000', '--step-delay-ms', '5']);
  // Frames (issue 18): a live run capturing every step at ~50 steps/s (the Video tab shows at
  // most 10 Hz of it), and a finished episode whose odd steps name frames never stored.
  startFrameWorker(daemon, ['video-run', 'agent-0', '100000', '40', '20', '1']);
  await startFrameWorker(daemon, ['gap-run', 'agent-0', '1', '6', '1', '2', '1'], { wait: true });
  // Policies (issue 19): a predecessor q_table/v1 file and a corrupt one in the inventory.
  const pol = join(daemon.varDir, 'policies', 'FrozenLake-v1');
  mkdirSync(pol, { recursive: true });
  const rows = Array.from({ length: 16 }, (_, i) => [i, 0.5, 0.25, 0]);
  writeFileSync(join(pol, 'bdi.json'), JSON.stringify({ format: 'q_table/v1', metadata: { run_id: 'human-run', env_id: 'FrozenLake-v1', agent_id: 'bdi', episodes: 300 }, q_table: rows }, null, 2));
  writeFileSync(join(pol, 'broken.json'), '{"format": "q_table/v1", "q_ta');
  ctx = await launch();
});
after(async () => {
  if (ctx) await ctx.close();
  if (daemon) daemon.child.kill('SIGTERM');
  cleanup();
});

test('a missing or wrong token gets 401 and no data', async () => {
  const page = await ctx.newPage();
  const r = await page.goto(daemon.base);
  assert.equal(r.status(), 401);
  assert.match(await page.textContent('#login-message'), /Not logged in/);
  const api = await page.evaluate(async () => { const r = await fetch('/api/runs'); return { status: r.status, body: await r.text() }; });
  assert.equal(api.status, 401);
  assert.doesNotMatch(api.body, /multi-run|human-run/);
  const wrong = await page.goto(daemon.base + '?token=not-the-token');
  assert.equal(wrong.status(), 401);
  const cookies = await ctx.cookies();
  assert.equal(cookies.length, 0, 'no session cookie without the right token');
  await page.screenshot({ path: join(shots, 'refused.png') });
  await page.close();
});

let page;
test('login with the token URL, then the runs table updates live, steps/s shown from the first table', async () => {
  page = await ctx.newPage();
  // The Runs page is pushed by the daemon (/api/runs/live), never polled.
  let polls = 0;
  const onRequest = (r) => { if (new URL(r.url()).pathname === '/api/runs') polls++; };
  page.on('request', onRequest);
  await page.goto(daemon.login);
  assert.ok(!page.url().includes('token'), `the token left the address bar: ${page.url()}`);
  const [cookie] = await ctx.cookies();
  assert.equal(cookie.name, 'gt_session');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
  await waitGt(page, () => window.__gt.runRows >= 2);
  const steps0 = await page.evaluate(() => Number(document.querySelector('tr[data-run="multi-run"] td:nth-child(5)').textContent));
  await page.waitForFunction((s0) => Number(document.querySelector('tr[data-run="multi-run"] td:nth-child(5)').textContent) > s0, steps0, { timeout: 30000 });
  // The first table the page got already had the running run's rate (from the store), not 0.
  const first = await gt(page, () => window.__gt.runsFirst);
  assert.equal(first['multi-run'].state, 'running');
  assert.ok(first['multi-run'].steps_per_sec > 0, `first steps/s: ${JSON.stringify(first['multi-run'])}`);
  assert.equal(first['human-run'].steps_per_sec, 0, 'a finished run steps at 0/s');
  assert.ok((await gt(page, () => window.__gt.runsEvents)) >= 2, 'later tables came pushed');
  assert.ok(Number(await page.textContent('tr[data-run="multi-run"] td:nth-child(6)')) > 0, 'steps/s shown');
  assert.equal(polls, 0, 'the Runs page did not poll /api/runs');
  page.off('request', onRequest);
  await page.selectOption('#filter-mode', 'human');
  await waitGt(page, () => window.__gt.runRows === 1 && document.querySelector('tr[data-run="human-run"]') !== null);
  await page.selectOption('#filter-mode', '');
  await waitGt(page, () => window.__gt.runRows >= 2);
  await page.screenshot({ path: join(shots, 'runs.png') });
});

test('a run: agent tabs appear with their records, live steps, raw, episodes and charts', async () => {
  await page.goto(daemon.base + '#/run/multi-run');
  await waitGt(page, () => window.__gt.agents.length === 2 && window.__gt.steps > 0);
  const s0 = await gt(page, () => window.__gt.steps);
  await waitGt(page, (s) => window.__gt.steps > s + 20, s0);
  assert.equal(await page.locator('#pane-grid pre.grid').count(), 1, 'the grid is drawn');
  await page.screenshot({ path: join(shots, 'run-grid.png') });
  await page.click('button[data-agent="agent-1"]');
  assert.equal(await gt(page, () => window.__gt.activeAgent), 'agent-1');
  await page.click('button[data-subtab="raw"]');
  await waitGt(page, () => window.__gt.rawShown > 0);
  const raw = JSON.parse(await page.textContent('#raw-steps'));
  assert.ok(raw.length > 0 && raw.length <= 100);
  assert.ok(raw.every((s) => s.agent_id === 'agent-1'), 'the raw view shows the selected agent only');
  await page.click('button[data-subtab="episodes"]');
  await page.waitForSelector('#pane-episodes table.episodes tbody tr', { timeout: 30000 });
  const seed = await page.textContent('#pane-episodes tbody tr td:nth-child(2)');
  assert.equal(seed.trim(), '8', 'agent-1 plays with seed 7 + 1');
  await page.click('button[data-subtab="charts"]');
  await waitGt(page, () => window.__gt.charts.drawn > 0 && window.__gt.livePoints > 0);
  assert.ok(await page.locator('.section[data-section="episodes"] .chart-panel').count() >= 1, 'episode returns are a curve');
  // Smoothing re-draws; the x-axis switch rebuilds the panels.
  const d0 = await gt(page, () => window.__gt.charts.drawn);
  await page.locator('#smoothing').fill('0.9');
  await page.selectOption('#xaxis', 'rel');
  await waitGt(page, (d) => window.__gt.charts.drawn > d, d0);
  await page.screenshot({ path: join(shots, 'run-charts.png'), fullPage: true });
  const lagShown = await page.locator('#lag-banner').isVisible();
  const lagged = await gt(page, () => window.__gt.sse.lagged);
  assert.equal(lagShown, lagged > 0, 'drops are shown exactly when there were some');
});

test('a live curve is bounded: past MAX_CURVE its older half is thinned 2:1, a spike survives, the drops are counted', async () => {
  const r = await page.evaluate(() => {
    const n = window.GT.MAX_CURVE + 1;
    const c = { step: [], rel: [], wall: [], ys: [] };
    for (let i = 0; i < n; i++) { c.step.push(i); c.rel.push(i / 10); c.wall.push(1e9 + i / 10); c.ys.push(i === 301 ? 1000 : Math.sin(i / 50)); }
    const before = window.__gt.charts.thinned;
    const dropped = window.GT.thin(c);
    const sorted = c.step.every((s, i) => i === 0 || s > c.step[i - 1]);
    return { n, len: c.ys.length, dropped, counted: window.__gt.charts.thinned - before, spike: c.ys.includes(1000), last: c.step[c.step.length - 1], sorted, aligned: c.rel.length === c.ys.length && c.wall.length === c.ys.length };
  });
  const half = r.n >> 1;
  assert.equal(r.dropped, half - Math.ceil(half / 2));
  assert.equal(r.len, r.n - r.dropped);
  assert.ok(r.len < r.n, `${r.len} points kept of ${r.n}`);
  assert.equal(r.counted, r.dropped, 'every thinned point is counted');
  assert.ok(r.spike, 'the spike (odd index, older half) was kept');
  assert.equal(r.last, r.n - 1, 'the newest points are untouched');
  assert.ok(r.sorted && r.aligned);
});
test('multi-agent page: every agent side by side', async () => {
  await page.goto(daemon.base + '#/run/multi-run/agents');
  await waitGt(page, () => window.__gt.agentTables === 2 && window.__gt.charts.drawn > 0);
  await page.screenshot({ path: join(shots, 'multi-agent.png'), fullPage: true });
});

test('Human Replay lists only human episodes; the filter off lists the others too; an episode replays', async () => {
  await page.goto(daemon.base + '#/replay?mode=human');
  await waitGt(page, () => window.__gt.route === 'replay' && window.__gt.replay.listed > 0);
  assert.deepEqual(await gt(page, () => window.__gt.replay.listedModes), ['human']);
  const human = await gt(page, () => window.__gt.replay.listed);
  assert.equal(human, 4);
  await page.click('#human-only');
  await waitGt(page, (h) => window.__gt.replay.listed > h && window.__gt.replay.listedModes.includes('multi_agent'), human);
  await page.screenshot({ path: join(shots, 'replay-all.png') });
  await page.click('#human-only');
  await waitGt(page, () => window.__gt.replay.listed === 4);
  await page.click('#replay-list tbody tr:first-child');
  await waitGt(page, () => window.__gt.route === 'player' && window.__gt.replay.frames > 0);
  const frames = await gt(page, () => window.__gt.replay.frames);
  assert.equal(await gt(page, () => window.__gt.replay.frame), 0);
  await page.click('#next');
  assert.equal(await gt(page, () => window.__gt.replay.frame), 1);
  await page.click('#prev');
  assert.equal(await gt(page, () => window.__gt.replay.frame), 0);
  await page.click('#play');
  await waitGt(page, () => window.__gt.replay.frame >= 2);
  await page.click('#play');
  assert.equal(await gt(page, () => window.__gt.replay.playing), false);
  await page.locator('#scrub').fill(String(frames - 1));
  assert.equal(await gt(page, () => window.__gt.replay.frame), frames - 1);
  assert.equal(await page.locator('#replay-frame pre.grid').count(), 1);
  await page.screenshot({ path: join(shots, 'replay-player.png') });
});

test('run control: submit a run from the form; its run_completed closes the live views', async () => {
  await page.goto(daemon.base + '#/submit');
  await page.fill('textarea[name=argv]', [need('GYM_TELEMETRY_DEMO_BIN'), 'worker', '--agents', '1', '--episodes', '3'].join('\n'));
  await page.fill('input[name=run_id]', 'submitted-run');
  await page.selectOption('select[name=control_mode]', 'agent');
  await page.click('#submit-form button[type=submit]');
  await waitGt(page, () => window.__gt.submitted === 'submitted-run' && window.__gt.route === 'run');
  await waitGt(page, () => window.__gt.completed !== null, undefined, 90000);
  assert.equal(await gt(page, () => window.__gt.completed), 'succeeded');
  await page.waitForSelector('#completed-banner');
  assert.equal(await gt(page, () => window.__gt.streams), 0, 'live views closed');
  await page.screenshot({ path: join(shots, 'run-completed.png') });
  // Cancel: a long run, cancelled from the run page.
  await page.goto(daemon.base + '#/submit');
  await page.fill('textarea[name=argv]', [need('GYM_TELEMETRY_DEMO_BIN'), 'worker', '--agents', '1', '--episodes', '100000', '--step-delay-ms', '20'].join('\n'));
  await page.fill('input[name=run_id]', 'cancelled-run');
  await page.click('#submit-form button[type=submit]');
  await waitGt(page, () => window.__gt.submitted === 'cancelled-run' && window.__gt.steps > 0);
  await page.click('#cancel-run');
  await waitGt(page, () => window.__gt.completed !== null, undefined, 60000);
  assert.equal(await gt(page, () => window.__gt.completed), 'cancelled');
  const errors = await gt(page, () => window.__gt.errors);
  assert.deepEqual(errors, []);
});

test('Video tab: live frames at no more than the chosen rate, the rate and the frames dropped shown; export clip', async () => {
  await page.goto(daemon.base + '#/run/video-run');
  await waitGt(page, () => window.__gt.agents.includes('agent-0') && window.__gt.steps > 0);
  await page.click('button[data-subtab="video"]');
  await waitGt(page, () => window.__gt.video.frames >= 5);
  const v = await gt(page, () => window.__gt.video);
  assert.equal(v.hz, 10, 'the default rate is 10 Hz');
  assert.equal(v.width, 160);
  assert.equal(v.height, 120);
  assert.match(v.lastRef, /^video-run\/\d+\/\d+\/agent-0$/);
  const natural = await page.evaluate(() => document.getElementById('video-frame').naturalWidth);
  assert.equal(natural, 160, 'the frame is decoded pixels');
  // The worker stores ~50 frames/s; at most 10 Hz are shown, the rest are counted as dropped.
  await waitGt(page, () => window.__gt.video.dropped > 0);
  const ref0 = await gt(page, () => window.__gt.video.lastRef);
  await waitGt(page, (r) => window.__gt.video.lastRef !== r, ref0);
  assert.match(await page.textContent('#video-stats'), /frames\/s shown .* dropped/);
  await page.screenshot({ path: join(shots, 'video-tab.png') });
  // A slower rate is honoured by the daemon.
  await page.selectOption('#video-hz', '2');
  await waitGt(page, () => window.__gt.video.hz === 2 && window.__gt.video.frames >= 2);
  // Export clip: episode 0 (40 frames) is long finished.
  await page.fill('#export-episode', '0');
  await page.click('#export-clip');
  await waitGt(page, () => window.__gt.exported !== null, undefined, 90000);
  const ex = await gt(page, () => window.__gt.exported);
  assert.equal(ex.frames, 40);
  assert.ok(['mp4', 'gif'].includes(ex.format));
  await page.screenshot({ path: join(shots, 'video-exported.png') });
});

test('replay: each step shows its stored frame; a frame that is not stored is shown as missing', async () => {
  await page.goto(daemon.base + '#/replay/gap-run/agent-0/0');
  await waitGt(page, () => window.__gt.route === 'player' && window.__gt.replay.frames === 6 && window.__gt.frames.shown >= 1);
  assert.equal(await page.locator('#replay-image').count(), 1);
  await page.screenshot({ path: join(shots, 'replay-frame.png') });
  await page.click('#next');
  await waitGt(page, () => window.__gt.frames.missing >= 1);
  assert.equal(await gt(page, () => window.__gt.frames.lastMissingReason), 'not_found');
  assert.match(await page.textContent('#replay-frame-missing'), /frame missing/);
  assert.equal(await page.locator('.banner.bad').count(), 0, 'no error page');
  await page.screenshot({ path: join(shots, 'replay-frame-missing.png') });
});

test('Policies page: the inventory, an invalid file with its reason, filters, and evaluate', async () => {
  await page.goto(daemon.base + '#/policies');
  await waitGt(page, () => window.__gt.route === 'policies' && window.__gt.policies.listed === 1 && window.__gt.policies.invalid === 1);
  assert.deepEqual(await gt(page, () => window.__gt.policies.invalidReasons), ['not_json']);
  assert.equal((await page.textContent('#invalid-policies tbody tr td:first-child')).trim(), 'FrozenLake-v1/broken.json');
  assert.ok((await page.textContent('#invalid-policies td.reason')).trim().length > 0, 'the reason is shown');
  assert.equal((await page.textContent('#policies tbody tr td:nth-child(3)')).trim(), 'bdi');
  await page.screenshot({ path: join(shots, 'policies.png'), fullPage: true });
  await page.fill('#policy-filter-env', 'CartPole-v1');
  await page.press('#policy-filter-env', 'Enter');
  await waitGt(page, () => window.__gt.policies.listed === 0 && location.hash.includes('env=CartPole-v1'));
  // A finished training run offers to evaluate the policy it produced.
  await page.goto(daemon.base + '#/run/human-run');
  await page.waitForSelector('#evaluate-run[href*="policy="]', { timeout: 30000 });
  assert.match(await page.getAttribute('#evaluate-run', 'href'), /source_run=human-run&policy=FrozenLake-v1%2Fbdi\.json$/);
  // Evaluate this policy: its own run and page, with its results once it ends.
  await page.goto(daemon.base + '#/policies');
  await waitGt(page, () => window.__gt.policies.listed === 1);
  await page.click('#policies a.evaluate');
  await waitGt(page, () => window.__gt.route === 'evaluate');
  assert.equal(await page.inputValue('input[name=policy_id]'), 'FrozenLake-v1/bdi.json');
  await page.fill('input[name=episodes]', '2');
  await page.fill('textarea[name=argv]', '/bin/true');
  await page.fill('input[name=run_id]', 'eval-run');
  await page.click('#evaluate-form button[type=submit]');
  await waitGt(page, () => window.__gt.evaluateSubmitted === 'eval-run' && window.__gt.route === 'run');
  await waitGt(page, () => window.__gt.runInfo && window.__gt.runInfo.evaluation && window.__gt.runInfo.results, undefined, 60000);
  const info = await gt(page, () => window.__gt.runInfo);
  assert.equal(info.evaluation.policy_id, 'FrozenLake-v1/bdi.json');
  assert.equal(info.control_mode, 'replay');
  assert.equal(info.policy_bindings[0].agent_id, 'bdi');
  await page.waitForSelector('#evaluation-results td[data-k="success_rate"]');
  await page.screenshot({ path: join(shots, 'evaluation-run.png'), fullPage: true });
  // The policy's row links its evaluation runs.
  await page.goto(daemon.base + '#/policies');
  await page.waitForSelector('#policies td.evaluations a[href="#/run/eval-run"]', { timeout: 30000 });
  const errors = await gt(page, () => window.__gt.errors);
  assert.deepEqual(errors, []);
});
