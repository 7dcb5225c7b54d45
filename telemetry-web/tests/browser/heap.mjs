// Chromium heap snapshots over CDP (HeapProfiler), summarised and compared: what grows in an
// open dashboard tab. Used by bench.mjs (after web_tab_memory, the top growers are printed) and
// on its own:
//   node heap.mjs            (GYM_TELEMETRY_DAEMON_BIN, WEB_FEED_BIN; HEAP_SECS, default 180)
// opens a run page on the Charts tab under a 1000 steps/s feed, snapshots at HEAP_SECS/10 and at
// HEAP_SECS, and prints the groups that grew the most.
//
// A snapshot node is grouped by its type and name (constructor, closure name, "(object
// elements)", …) and by the edge that first retains it (`Owner.property`), so an array held as
// `curve.ys` and one held as `Panel.curves` land in different groups.

/** Takes a heap snapshot through a playwright CDP session; resolves with the parsed JSON. */
export async function takeSnapshot(cdp) {
  const chunks = [];
  const onChunk = (e) => chunks.push(e.chunk);
  cdp.on('HeapProfiler.addHeapSnapshotChunk', onChunk);
  await cdp.send('HeapProfiler.enable');
  await cdp.send('HeapProfiler.collectGarbage');
  await cdp.send('HeapProfiler.takeHeapSnapshot', { reportProgress: false, captureNumericValue: false });
  cdp.off('HeapProfiler.addHeapSnapshotChunk', onChunk);
  return JSON.parse(chunks.join(''));
}

/** Map "type name ← Owner.edge" → {count, size} over a snapshot's nodes. */
export function summarise(snap) {
  const m = snap.snapshot.meta;
  const nf = m.node_fields, ef = m.edge_fields;
  const NF = nf.length, EF = ef.length;
  const nType = nf.indexOf('type'), nName = nf.indexOf('name'), nSize = nf.indexOf('self_size'), nEdges = nf.indexOf('edge_count');
  const eType = ef.indexOf('type'), eName = ef.indexOf('name_or_index'), eTo = ef.indexOf('to_node');
  const nodeTypes = m.node_types[0], edgeTypes = m.edge_types[0];
  const { nodes, edges, strings } = snap;
  const n = nodes.length / NF;
  const owner = new Array(n);
  let e = 0;
  for (let i = 0; i < n; i++) {
    const from = i * NF;
    const fromName = nodeTypes[nodes[from + nType]] === 'object' || nodeTypes[nodes[from + nType]] === 'closure' ? strings[nodes[from + nName]] : '(' + nodeTypes[nodes[from + nType]] + ')';
    for (let k = 0; k < nodes[from + nEdges]; k++, e += EF) {
      const et = edgeTypes[edges[e + eType]];
      if (et === 'weak' || et === 'shortcut') continue;
      const to = edges[e + eTo] / NF;
      if (owner[to] !== undefined) continue;
      const label = et === 'element' || et === 'hidden' ? '[' + et + ']' : strings[edges[e + eName]];
      owner[to] = fromName.slice(0, 40) + '.' + String(label).slice(0, 30);
    }
  }
  const out = new Map();
  for (let i = 0; i < n; i++) {
    const b = i * NF;
    const type = nodeTypes[nodes[b + nType]];
    let name = strings[nodes[b + nName]];
    if (type === 'string' || type === 'concatenated string' || type === 'sliced string') name = '';
    const key = `${type} ${String(name).slice(0, 50)} ← ${owner[i] || '(root)'}`;
    let g = out.get(key);
    if (!g) out.set(key, (g = { count: 0, size: 0 }));
    g.count++;
    g.size += nodes[b + nSize];
  }
  return out;
}

/** The groups that grew most from `a` to `b` (summaries), biggest growth first. */
export function diff(a, b, top = 25) {
  const rows = [];
  for (const [k, g] of b) {
    const o = a.get(k) || { count: 0, size: 0 };
    if (g.size > o.size) rows.push({ key: k, dSize: g.size - o.size, dCount: g.count - o.count, size: g.size, count: g.count });
  }
  rows.sort((x, y) => y.dSize - x.dSize);
  return rows.slice(0, top);
}

export function total(s) { let t = 0; for (const g of s.values()) t += g.size; return t; }

export function printDiff(a, b, log = console.error, top = 25) {
  log(`heap snapshot: ${(total(a) / 1048576).toFixed(2)} MiB → ${(total(b) / 1048576).toFixed(2)} MiB; top growth:`);
  for (const r of diff(a, b, top)) log(`  +${(r.dSize / 1024).toFixed(1).padStart(8)} KiB  +${String(r.dCount).padStart(6)}  (now ${r.count})  ${r.key}`);
}

// Standalone: the same page as web_tab_memory, snapshotted twice.
if (import.meta.url === `file://${process.argv[1]}`) {
  const { spawn } = await import('node:child_process');
  const { startDaemon, launch, need, cleanup, waitGt } = await import('./lib.mjs');
  const T = Number(process.env.HEAP_SECS || 180);
  const daemon = await startDaemon();
  const ctx = await launch();
  try {
    const feed = spawn(need('WEB_FEED_BIN'), ['steps', 'web-heap', process.env.HEAP_RATE || '1000', String(T + 30)], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, GYM_TELEMETRY_ENDPOINT: daemon.endpoint, GYM_TELEMETRY_VAR_DIR: daemon.varDir, GYM_TELEMETRY_LOG: 'warn' } });
    const page = await ctx.newPage();
    if (process.env.HEAP_LIVE_ASSETS) {
      // Serve the front end from the working tree (no daemon rebuild while iterating on it).
      const { fileURLToPath } = await import('node:url');
      const dir = fileURLToPath(new URL('../../assets/', import.meta.url));
      for (const f of ['app.js', 'views.js']) await page.route('**/' + f, (r) => r.fulfill({ path: dir + f, contentType: 'text/javascript' }));
    }
    await page.goto(daemon.login);
    await page.goto(daemon.base + '#/run/web-heap');
    await waitGt(page, () => window.__gt.agents.length > 0);
    await page.click(`button[data-subtab="${process.env.HEAP_SUBTAB || 'charts'}"]`);
    const cdp = await ctx.newCDPSession(page);
    const t0 = Date.now();
    await page.waitForTimeout((T / 10) * 1000);
    const used = async () => { await cdp.send('HeapProfiler.collectGarbage'); await cdp.send('HeapProfiler.collectGarbage'); return page.evaluate(() => performance.memory.usedJSHeapSize); };
    const h1 = await used();
    const a = summarise(await takeSnapshot(cdp));
    console.error(`usedJSHeapSize ${(h1 / 1048576).toFixed(2)} MiB before the first snapshot, ${((await used()) / 1048576).toFixed(2)} MiB after it`);
    await page.waitForTimeout(Math.max(0, T * 1000 - (Date.now() - t0)));
    const h2 = await used();
    const b = summarise(await takeSnapshot(cdp));
    console.error(`usedJSHeapSize ${(h1 / 1048576).toFixed(2)} → ${(h2 / 1048576).toFixed(2)} MiB (${(h2 / h1).toFixed(3)}); page counts:`, JSON.stringify(await page.evaluate(() => ({ steps: window.__gt.steps, points: window.__gt.points, live: window.__gt.livePoints, sse: window.__gt.sse }))));
    printDiff(a, b, console.error, Number(process.env.HEAP_TOP || 30));
    feed.kill('SIGTERM');
  } finally {
    await ctx.close();
    daemon.child.kill('SIGTERM');
    cleanup();
  }
}
