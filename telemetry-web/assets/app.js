// gym-telemetry web dashboard. Plain JS (no build step), served embedded by the daemon.
//
// Pages are registered in GT.pages and agent tabs in GT.agentTabs, so later views (a Video tab,
// a Policies page) plug in with GT.registerPage / GT.registerAgentTab without touching the rest.
// window.__gt holds counts for tests and benchmarks (what the page shows, as numbers).
'use strict';

(function () {
  const __gt = {
    route: '', runs: 0, runRows: 0, streams: 0,
    sse: { events: 0, records: 0, lagged: 0, dropped: 0, gaps: 0, reconnects: 0, errors: 0 },
    steps: 0, episodes: 0, points: 0, livePoints: 0,
    agents: [], activeAgent: null, activeSubtab: null,
    charts: { panels: 0, drawn: 0, series: 0, thinned: 0, maxCurve: 0 }, firstChartMs: null,
    replay: { listed: 0, frames: 0, frame: -1, playing: false, episode: null },
    completed: null, submitted: null, errors: [],
    // Record creation → handled by the page, in ms: a bounded histogram (1 ms buckets, the last
    // one is "10 s or more"), for the latency benchmark.
    latencyHist: new Uint32Array(10001),
    latencyP: (p) => { const h = __gt.latencyHist; let n = 0; for (const c of h) n += c; let k = 0; for (let i = 0; i < h.length; i++) { k += h[i]; if (k >= n * p) return i; } return null; },
  };
  window.__gt = __gt;
  // Client-side bounds (a tab left open for days stays the same size; every drop is counted in
  // __gt and shown on the page):
  // - MAX_CURVE points per curve: past it, the older half of the curve is thinned 2:1 (of each
  //   pair the point that moves more is kept, so spikes survive), counted in
  //   __gt.charts.thinned and shown under the chart controls. The store keeps every point; a
  //   zoom re-reads the visible range from it.
  // - MAX_EPISODE_ROWS episodes per agent (the Episodes table's rows and what seeds it).
  // - STEP_TAIL steps per agent (the Grid and Raw views).
  const MAX_CURVE = 2000;
  const MAX_EPISODE_ROWS = 1000;
  const STEP_TAIL = 100;
  function gtError(e) { if (__gt.errors.length < 100) __gt.errors.push(e); }
  function latency(ms) { __gt.latencyHist[Math.max(0, Math.min(10000, Math.round(ms)))]++; }

  // ---- small helpers -------------------------------------------------------------------
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const k of kids.flat()) {
      if (k == null) continue;
      e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return e;
  }
  async function api(path, opts) {
    const r = await fetch('/api' + path, Object.assign({ headers: { 'content-type': 'application/json' } }, opts || {}));
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      const msg = body.error || r.statusText;
      gtError(r.status + ' ' + msg);
      if (r.status === 401) setConn('not logged in', true);
      throw new Error(msg);
    }
    return body;
  }
  function setConn(text, bad) {
    const c = document.getElementById('conn');
    c.textContent = text;
    c.style.color = bad ? '#fca5a5' : '';
  }
  const q = (s) => encodeURIComponent(s);
  const fmt = (v, d = 3) => (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(d)) : v == null ? '' : String(v));
  const num = (v) => (typeof v === 'number' ? v : v === 'NaN' ? NaN : v === 'Infinity' ? Infinity : v === '-Infinity' ? -Infinity : Number(v));
  function parseJSON(text) { if (!text) return null; try { return JSON.parse(text); } catch (_) { return text; } }
  function tsMs(rec) { return rec.ts_unix_ns ? rec.ts_unix_ns / 1e6 : null; }
  const prefixOf = (tag) => (tag.includes('/') ? tag.slice(0, tag.indexOf('/')) : '(no prefix)');

  // ---- page lifecycle: everything a page opens is closed when the route changes ------------
  let cleanups = [];
  function onLeave(f) { cleanups.push(f); }
  function leave() { for (const f of cleanups.splice(0)) { try { f(); } catch (_) {} } }

  // ---- live streams (SSE) ---------------------------------------------------------------
  // The browser's EventSource reconnects by itself and sends Last-Event-ID (the seq of the last
  // record it got), so the daemon resumes with no gap and no duplicate.
  function stream(run, kind, params, h) {
    const qs = Object.entries(params || {}).filter(([, v]) => v != null && v !== '').map(([k, v]) => k + '=' + q(v)).join('&');
    const es = new EventSource('/api/runs/' + q(run) + '/events/' + kind + (qs ? '?' + qs : ''));
    __gt.streams++;
    let opened = false;
    es.addEventListener('open', () => { if (opened) __gt.sse.reconnects++; opened = true; setConn('live'); });
    es.addEventListener('records', (e) => {
      __gt.sse.events++;
      const recs = JSON.parse(e.data);
      __gt.sse.records += recs.length;
      h.records && h.records(recs, Number(e.lastEventId));
    });
    es.addEventListener('lagged', (e) => {
      const d = JSON.parse(e.data);
      __gt.sse.lagged++;
      __gt.sse.dropped += d.dropped_steps + d.dropped_episodes + d.dropped_scalars + d.dropped_lifecycle;
      h.lagged && h.lagged(d);
    });
    es.addEventListener('gap', (e) => { __gt.sse.gaps++; h.gap && h.gap(JSON.parse(e.data)); });
    es.addEventListener('caught_up', (e) => h.caughtUp && h.caughtUp(JSON.parse(e.data)));
    es.addEventListener('completed', (e) => { es.close(); __gt.streams--; h.completed && h.completed(JSON.parse(e.data)); });
    es.addEventListener('closed', () => { es.close(); __gt.streams--; });
    es.addEventListener('error', () => { __gt.sse.errors++; setConn('reconnecting…', true); });
    const close = () => { if (es.readyState !== 2) { es.close(); __gt.streams--; } };
    onLeave(close);
    return { close };
  }

  // ---- ANSI render hints, drawn as the terminal viewer draws them ------------------------
  const ANSI16 = ['#000000', '#cd3131', '#0dbc79', '#e5e510', '#2472c8', '#bc3fbc', '#11a8cd', '#e5e5e5',
    '#666666', '#f14c4c', '#23d18b', '#f5f543', '#3b8eea', '#d670d6', '#29b8db', '#ffffff'];
  function ansi256(n) {
    if (n < 16) return ANSI16[n];
    if (n >= 232) { const g = 8 + (n - 232) * 10; return `rgb(${g},${g},${g})`; }
    n -= 16; const c = (x) => (x ? 55 + x * 40 : 0);
    return `rgb(${c(Math.floor(n / 36))},${c(Math.floor(n / 6) % 6)},${c(n % 6)})`;
  }
  // SGR colour escapes to styled spans; every other escape and control character is dropped
  // (untrusted worker text: only textContent, never HTML).
  function ansiToPre(text) {
    const pre = el('pre', { class: 'grid' });
    let st = { fg: null, bg: null, bold: false, rev: false };
    const push = (s) => {
      if (!s) return;
      const span = document.createElement('span');
      span.textContent = s;
      let fg = st.fg, bg = st.bg;
      if (st.rev) [fg, bg] = [bg || '#0b0f19', fg || '#e5e7eb'];
      if (fg) span.style.color = fg;
      if (bg) span.style.background = bg;
      if (st.bold) span.style.fontWeight = 'bold';
      pre.append(span);
    };
    const re = /\x1b\[([0-9;]*)([A-Za-z])/g;
    let last = 0, m;
    const clean = (s) => s.replace(/[\x00-\x08\x0b-\x1f\x7f]/g, '');
    while ((m = re.exec(text))) {
      push(clean(text.slice(last, m.index)));
      last = re.lastIndex;
      if (m[2] !== 'm') continue;
      const p = m[1] === '' ? [0] : m[1].split(';').map(Number);
      for (let i = 0; i < p.length; i++) {
        const c = p[i];
        if (c === 0) st = { fg: null, bg: null, bold: false, rev: false };
        else if (c === 1) st.bold = true;
        else if (c === 22) st.bold = false;
        else if (c === 7) st.rev = true;
        else if (c === 27) st.rev = false;
        else if (c >= 30 && c <= 37) st.fg = ANSI16[c - 30];
        else if (c >= 90 && c <= 97) st.fg = ANSI16[c - 90 + 8];
        else if (c >= 40 && c <= 47) st.bg = ANSI16[c - 40];
        else if (c >= 100 && c <= 107) st.bg = ANSI16[c - 100 + 8];
        else if (c === 39) st.fg = null;
        else if (c === 49) st.bg = null;
        else if ((c === 38 || c === 48) && p[i + 1] === 5) { const col = ansi256(p[i + 2] | 0); if (c === 38) st.fg = col; else st.bg = col; i += 2; }
        else if ((c === 38 || c === 48) && p[i + 1] === 2) { const col = `rgb(${p[i + 2] | 0},${p[i + 3] | 0},${p[i + 4] | 0})`; if (c === 38) st.fg = col; else st.bg = col; i += 4; }
      }
    }
    push(clean(text.slice(last)));
    return pre;
  }
  // The step's ANSI hint, else its observation: a 2-D array of scalars as rows, else pretty JSON.
  function frameOf(step) {
    const hint = parseJSON(step.render_hint_json);
    if (hint && typeof hint === 'object' && typeof hint.ansi === 'string') return ansiToPre(hint.ansi.slice(0, 65536));
    const obs = parseJSON(step.observation_json);
    let text;
    if (obs == null) text = '(no observation)';
    else if (Array.isArray(obs) && obs.length && obs.every((r) => Array.isArray(r) && r.every((c) => typeof c !== 'object'))) text = obs.map((r) => r.map((c) => (typeof c === 'boolean' ? +c : c)).join(' ')).join('\n');
    else text = typeof obs === 'string' ? obs : JSON.stringify(obs, null, 2);
    const pre = el('pre', { class: 'grid' });
    pre.textContent = text;
    return pre;
  }
  function stepSummary(s) {
    return el('div', { class: 'dim' }, `episode ${s.episode_index} · step ${s.step_index || 0} · reward ${fmt(num(s.reward || 0))}` +
      (s.terminated ? ' · terminated' : '') + (s.truncated ? ' · truncated' : '') + (s.control_mode ? ' · ' + s.control_mode : ''));
  }

  // ---- smoothing: TensorBoard's de-biased EMA ---------------------------------------------
  function smooth(ys, w) {
    if (!(w > 0)) return ys;
    const out = new Array(ys.length);
    let last = 0, n = 0;
    for (let i = 0; i < ys.length; i++) {
      const y = ys[i];
      if (y == null || !Number.isFinite(y)) { out[i] = y; continue; }
      last = last * w + (1 - w) * y; n++;
      out[i] = last / (1 - Math.pow(w, n));
    }
    return out;
  }
  GT_smooth = smooth; // exposed for tests

  // ---- charts -----------------------------------------------------------------------------
  const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#db2777', '#65a30d', '#4b5563', '#ca8a04'];
  // One panel: several curves (run × agent), each {key,label,xs:{step,rel,wall}, ys}.
  class Panel {
    constructor(parent, title, opts) {
      this.opts = opts; this.curves = new Map(); this.plot = null; this.dirty = true; this.zoom = null;
      this.box = el('div', { class: 'chart-panel', 'data-tag': title }, el('div', { class: 'title', text: title }));
      this.target = el('div');
      this.box.append(this.target);
      parent.append(this.box);
      __gt.charts.panels++;
    }
    curve(key, label) {
      let c = this.curves.get(key);
      if (!c) { c = { key, label, step: [], rel: [], wall: [], ys: [] }; this.curves.set(key, c); this.plot && (this.plot.destroy(), this.plot = null); __gt.charts.series++; }
      return c;
    }
    // Rebuilds the aligned data uPlot wants (one shared x column; null where a curve has no point).
    data() {
      const axis = this.opts.axis();
      const w = this.opts.smoothing();
      if (this.curves.size === 1) {
        // One curve (the usual panel): its own columns, no alignment and no nulls, so uPlot gets
        // flat arrays of doubles (8 bytes a point, no boxed numbers).
        const c = this.curves.values().next().value;
        const x = c[axis];
        let sorted = true;
        for (let i = 1; i < x.length && sorted; i++) sorted = x[i] >= x[i - 1];
        if (sorted) return [Float64Array.from(x), smooth(c.ys, w)];
      }
      const xsSet = new Set();
      for (const c of this.curves.values()) for (const x of c[axis]) xsSet.add(x);
      const xs = Float64Array.from(xsSet).sort();
      const idx = new Map(); xs.forEach((x, i) => idx.set(x, i));
      const cols = [xs];
      for (const c of this.curves.values()) {
        const col = new Array(xs.length).fill(null);
        const ys = smooth(c.ys, w);
        c[axis].forEach((x, i) => { col[idx.get(x)] = ys[i]; });
        cols.push(col);
      }
      return cols;
    }
    draw() {
      if (!this.dirty) return;
      this.dirty = false;
      const data = this.data();
      for (const c of this.curves.values()) __gt.charts.maxCurve = Math.max(__gt.charts.maxCurve, c.ys.length);
      if (!this.plot) {
        const self = this;
        const axis = this.opts.axis();
        const series = [{ label: axis }].concat([...this.curves.values()].map((c, i) => ({ label: c.label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true, points: { show: false } })));
        this.plot = new uPlot({
          width: this.opts.width || 440, height: 220, series,
          scales: { x: { time: axis === 'wall' } },
          axes: [{ label: axis === 'step' ? (this.tag === 'episodes/return' ? 'episode' : 'step') : axis === 'rel' ? 'seconds since start' : '' }, {}],
          cursor: { drag: { x: true, y: false } },
          hooks: {
            draw: [() => { __gt.charts.drawn++; if (__gt.firstChartMs == null) __gt.firstChartMs = performance.now(); }],
            setScale: [(u, key) => { if (key === 'x' && self.opts.onZoom) self.opts.onZoom(self, u.scales.x.min, u.scales.x.max); }],
          },
        }, data, this.target);
      } else {
        this.plot.setData(data, this.zoom == null);
      }
    }
    reset() { this.plot && (this.plot.destroy(), this.plot = null); this.dirty = true; }
  }

  // Thins the older half of a curve 2:1 (MAX_CURVE): of each pair, the point that moves more
  // from the last kept one stays, so a spike is not thinned away. Returns the points dropped.
  function thin(c) {
    const half = c.ys.length >> 1;
    const keep = [];
    let prev = null;
    for (let i = 0; i < half; i += 2) {
      let k = i;
      if (i + 1 < half && prev != null && Math.abs(c.ys[i + 1] - prev) > Math.abs(c.ys[i] - prev)) k = i + 1;
      keep.push(k); prev = c.ys[k];
    }
    for (let i = half; i < c.ys.length; i++) keep.push(i);
    const dropped = c.ys.length - keep.length;
    for (const key of ['step', 'rel', 'wall', 'ys']) { const a = c[key]; c[key] = keep.map((i) => a[i]); }
    __gt.charts.thinned += dropped;
    return dropped;
  }

  // A charts view over sources [{run, agent (null: every agent), label}]: a section per tag
  // prefix, a panel per tag, episode returns as curves, smoothing, x-axis, zoom refinement, live.
  function chartsView(container, sources, opts) {
    opts = opts || {};
    const state = { axis: 'step', smoothing: 0.6 };
    const panels = new Map();
    const sections = new Map();
    const startMs = new Map();
    const ctl = el('div', { class: 'filters' },
      el('label', {}, 'smoothing ', el('input', { type: 'range', min: 0, max: 0.99, step: 0.01, value: state.smoothing, id: 'smoothing', oninput: (e) => { state.smoothing = +e.target.value; sv.textContent = e.target.value; redrawAll(); } })),
      null,
      el('label', {}, 'x-axis ', el('select', { id: 'xaxis', onchange: (e) => { state.axis = e.target.value; for (const p of panels.values()) p.reset(); redrawAll(); } },
        el('option', { value: 'step' }, 'step'), el('option', { value: 'rel' }, 'relative time'), el('option', { value: 'wall' }, 'wall time'))));
    const sv = el('span', { class: 'dim', text: String(state.smoothing) });
    ctl.children[0].append(' ', sv);
    // Live points thinned on this page (MAX_CURVE), shown, never hidden.
    let thinned = 0;
    const thinNote = el('span', { class: 'dim', id: 'chart-thinned', hidden: true });
    ctl.append(thinNote);
    const thinCurve = (c) => {
      thinned += thin(c);
      thinNote.hidden = false;
      thinNote.textContent = `${thinned} older live points thinned (at most ${MAX_CURVE} per curve here; the store keeps every point, zoom re-reads them)`;
    };
    const body = el('div');
    container.append(ctl, body);
    const popts = { axis: () => state.axis, smoothing: () => state.smoothing, onZoom: refine, width: opts.width };
    function section(name) {
      let s = sections.get(name);
      if (!s) {
        s = { root: el('div', { class: 'section', 'data-section': name }, el('h3', { text: name })), panels: el('div', { class: 'panels' }) };
        s.root.append(s.panels);
        const keys = [...sections.keys(), name].sort((a, b) => (a === 'episodes' ? -1 : b === 'episodes' ? 1 : a.localeCompare(b)));
        sections.set(name, s);
        const after = keys.indexOf(name) + 1 < keys.length ? sections.get(keys[keys.indexOf(name) + 1]) : null;
        if (after && after.root.parentNode === body) body.insertBefore(s.root, after.root); else body.append(s.root);
      }
      return s;
    }
    function panel(tag) {
      let p = panels.get(tag);
      if (!p) { p = new Panel(section(tag === 'episodes/return' ? 'episodes' : prefixOf(tag)).panels, tag, popts); p.tag = tag; panels.set(tag, p); }
      return p;
    }
    let raf = 0;
    function redrawAll() { for (const p of panels.values()) p.dirty = true; schedule(); }
    function schedule() { if (!raf) raf = requestAnimationFrame(() => { raf = 0; for (const p of panels.values()) p.draw(); }); }
    onLeave(() => { cancelAnimationFrame(raf); for (const p of panels.values()) p.plot && p.plot.destroy(); });
    const label = (src, agent) => (sources.length > 1 && opts.overlayRuns ? src.run + (agent ? ' · ' + agent : '') : agent || src.run);
    const keep = (src, agentId) => src.agent == null || agentId === '' || agentId === src.agent;
    // Time of a stored bucket: its last point's wall time (ReadScalars' last_time_ns). Only a
    // point stored without a time is placed between the run's first record and the tag's last
    // one, by step.
    function timeOf(src, tagInfo, step, timeMs) {
      if (timeMs != null) return timeMs;
      const t0 = startMs.get(src.run) || tagInfo.last_ts_ms || 0, t1 = tagInfo.last_ts_ms || t0;
      const span = tagInfo.last_step - tagInfo.first_step;
      return span > 0 ? t0 + (t1 - t0) * (step - tagInfo.first_step) / span : t1;
    }
    function fill(c, src, tagInfo, s) {
      c.step = []; c.rel = []; c.wall = []; c.ys = [];
      const t0 = startMs.get(src.run) || 0;
      for (let i = 0; i < s.step.length; i++) {
        const t = timeOf(src, tagInfo, s.step[i], s.time_ms ? s.time_ms[i] : null);
        c.step.push(s.step[i]); c.wall.push(t / 1000); c.rel.push((t - t0) / 1000); c.ys.push(num(s.last[i]));
      }
      __gt.points += s.step.length;
    }
    const tagInfos = new Map();
    async function load(src, tagInfo, range) {
      const r = await api(`/runs/${q(src.run)}/scalars?tag=${q(tagInfo.tag)}&max_points=1000` + (range ? `&min_step=${Math.floor(range[0])}&max_step=${Math.ceil(range[1])}` : ''));
      const p = panel(tagInfo.tag);
      for (const s of r.series) {
        if (!keep(src, s.agent_id)) continue;
        fill(p.curve(src.run + '|' + s.agent_id, label(src, s.agent_id)), src, tagInfos.get(src.run + '|' + s.agent_id + '|' + s.tag) || tagInfo, s);
      }
      p.dirty = true; schedule();
    }
    // Zoom in step mode: read the visible step range again, at full resolution for that range.
    let zoomTimer = 0;
    function refine(p, lo, hi) {
      if (state.axis !== 'step' || p.tag === 'episodes/return' || lo == null) return;
      clearTimeout(zoomTimer);
      zoomTimer = setTimeout(() => {
        p.zoom = [lo, hi];
        for (const src of sources) {
          const info = [...tagInfos.values()].find((t) => t.run === src.run && t.tag === p.tag);
          if (info) load(src, info, [lo, hi]).then(() => { __gt.charts.refined = (__gt.charts.refined || 0) + 1; });
        }
      }, 150);
    }
    onLeave(() => clearTimeout(zoomTimer));
    (async () => {
      const runsP = api('/runs');
      await Promise.all(sources.map(async (src) => {
        // The tags and the run list at once; then every tag's downsampled read at once.
        const [runs, t] = await Promise.all([runsP, api(`/runs/${q(src.run)}/tags`)]);
        const run = runs.runs.find((r) => r.run_id === src.run);
        if (run && run.first_ts_ms) startMs.set(src.run, run.first_ts_ms);
        const seen = new Set();
        const loads = [];
        for (const info of t.tags) {
          info.run = src.run;
          tagInfos.set(src.run + '|' + info.agent_id + '|' + info.tag, info);
          if (!keep(src, info.agent_id) || seen.has(info.tag)) continue;
          seen.add(info.tag);
          loads.push(load(src, info));
        }
        // Episode returns, per agent.
        const epsP = api(`/runs/${q(src.run)}/episodes` + (src.agent ? `?agent=${q(src.agent)}` : ''));
        await Promise.all(loads);
        const eps = await epsP;
        addEpisodes(src, eps.episodes);
        // Live points: from now on (history came from ReadScalars above; overlap is cut by step).
        stream(src.run, 'scalars', {}, { records: (recs) => addScalars(src, recs) });
        stream(src.run, 'episodes', { since: eps.episodes.length ? eps.episodes[eps.episodes.length - 1].seq_id : 0, agent: src.agent }, { records: (recs) => addEpisodes(src, recs) });
      }));
    })().catch((e) => gtError(String(e)));
    function addScalars(src, recs) {
      const now = Date.now();
      for (const r of recs) {
        const agent = r.agent_id || '';
        if (!keep(src, agent)) continue;
        const p = panel(r.tag);
        const c = p.curve(src.run + '|' + agent, label(src, agent));
        const step = r.step || 0;
        if (c.step.length && step <= c.step[c.step.length - 1]) continue;
        const t = tsMs(r) || now, t0 = startMs.get(src.run) || t;
        c.step.push(step); c.wall.push(t / 1000); c.rel.push((t - t0) / 1000); c.ys.push(num(r.value));
        __gt.points++; __gt.livePoints++;
        if (r.ts_unix_ns) latency(now - t);
        if (c.ys.length > MAX_CURVE) thinCurve(c);
        p.dirty = true;
      }
      schedule();
    }
    function addEpisodes(src, recs) {
      if (!recs.length) return;
      const p = panel('episodes/return');
      for (const e of recs) {
        const agent = e.agent_id || '';
        if (src.agent != null && agent !== src.agent) continue;
        const c = p.curve(src.run + '|' + agent, label(src, agent));
        const x = e.episode_index || 0;
        if (c.step.length && x <= c.step[c.step.length - 1]) continue;
        const t = tsMs(e) || 0, t0 = startMs.get(src.run) || t;
        c.step.push(x); c.wall.push(t / 1000); c.rel.push((t - t0) / 1000); c.ys.push(num(e.total_reward || 0));
        if (c.ys.length > MAX_CURVE) thinCurve(c);
        __gt.points++;
      }
      p.dirty = true; schedule();
    }
    return { panels };
  }

  // ---- Runs page -------------------------------------------------------------------------
  function runsPage(main, params) {
    const status = el('select', { id: 'filter-status' }, ['', 'pending', 'running', 'completed', 'failed', 'cancelled', 'unspecified'].map((s) => el('option', { value: s }, s || 'any status')));
    const mode = el('select', { id: 'filter-mode' }, ['', 'human', 'agent', 'multi_agent', 'hybrid', 'replay', 'unknown'].map((s) => el('option', { value: s }, s || 'any control mode')));
    status.value = params.get('status') || ''; mode.value = params.get('mode') || '';
    const tbody = el('tbody');
    main.append(el('h2', { text: 'Runs' }), el('div', { class: 'filters' }, status, mode, el('span', { class: 'dim', id: 'runs-count' })),
      el('table', { id: 'runs' }, el('thead', {}, el('tr', {}, ['run', 'state', 'control mode', 'agents', 'steps', 'steps/s', 'episodes', 'dropped', 'lag', 'game', ''].map((h) => el('th', { text: h })))), tbody));
    // Live: the daemon pushes the table (`runs` events of /api/runs/live) each second while it
    // changes and at once when a run starts or ends, steps/s included (measured by the daemon,
    // so the first table already has it). No polling.
    function render(r) {
      tbody.replaceChildren(...r.runs.sort((a, b) => (b.last_ts_ms || 0) - (a.last_ts_ms || 0)).map((run) => {
        const rate = run.steps_per_sec || 0;
        const lag = run.state === 'running' && run.last_ts_ms ? Math.max(0, (r.now_ms - run.last_ts_ms) / 1000) : null;
        return el('tr', { class: 'clickable', 'data-run': run.run_id, onclick: () => { location.hash = '#/run/' + q(run.run_id); } },
          el('td', { text: run.run_id }), el('td', { class: 'state-' + run.state, text: run.state }), el('td', { text: run.control_modes.join(', ') }),
          el('td', { text: run.agent_ids.join(', ') }), el('td', { class: 'num', text: run.step_count }), el('td', { class: 'num', text: rate.toFixed(1) }),
          el('td', { class: 'num', text: run.episode_count }), el('td', { class: 'num', text: run.dropped_steps + run.dropped_episodes }),
          el('td', { class: 'num', text: lag == null ? '' : lag.toFixed(1) + ' s' }), el('td', { text: run.game_id }),
          el('td', {}, run.state === 'running' || run.state === 'pending' ? el('button', { onclick: (e) => { e.stopPropagation(); cancelRun(run.run_id); } }, 'cancel') : null));
      }));
      __gt.runs = r.runs.length; __gt.runRows = tbody.children.length;
      document.getElementById('runs-count').textContent = r.runs.length + ' runs';
    }
    let es = null;
    function open() {
      if (es) { es.close(); __gt.streams--; }
      const qs = [status.value && 'status=' + q(status.value), mode.value && 'mode=' + q(mode.value)].filter(Boolean).join('&');
      es = new EventSource('/api/runs/live' + (qs ? '?' + qs : ''));
      __gt.streams++;
      __gt.runsEvents = 0; __gt.runsFirst = null;
      es.addEventListener('runs', (e) => {
        const r = JSON.parse(e.data);
        if (r.error) { gtError(r.error); return; }
        __gt.runsEvents++;
        if (!__gt.runsFirst) __gt.runsFirst = Object.fromEntries(r.runs.map((x) => [x.run_id, { state: x.state, steps_per_sec: x.steps_per_sec }]));
        render(r);
        setConn('live');
      });
      es.addEventListener('error', () => { __gt.sse.errors++; setConn('reconnecting…', true); });
    }
    status.onchange = mode.onchange = open;
    open();
    onLeave(() => { if (es) { es.close(); __gt.streams--; es = null; } });
  }
  async function cancelRun(run) {
    await api('/runs/' + q(run) + '/cancel', { method: 'POST', body: '{}' }).catch((e) => alert(e.message));
  }

  // ---- a run: per-agent tab sets ---------------------------------------------------------
  function episodesTable(eps) {
    const tbody = el('tbody');
    const table = el('table', { class: 'episodes' }, el('thead', {}, el('tr', {}, ['episode', 'seed', 'game', 'return', 'length', 'mode', ''].map((h) => el('th', { text: h })))), tbody);
    const add = (e, run) => {
      const md = parseJSON(e.metadata_json) || {};
      tbody.prepend(el('tr', { 'data-episode': e.episode_index || 0 }, el('td', { class: 'num', text: e.episode_index || 0 }), el('td', { text: md.seed ?? '' }), el('td', { text: md.game_id ?? '' }),
        el('td', { class: 'num', text: fmt(num(e.total_reward || 0)) }), el('td', { class: 'num', text: e.steps || 0 }), el('td', { text: e.control_mode || md.control_mode || '' }),
        el('td', {}, el('a', { href: `#/replay/${q(run || e.run_id)}/${q(e.agent_id || '')}/${e.episode_index || 0}` }, 'replay'))));
      while (tbody.children.length > MAX_EPISODE_ROWS) tbody.lastChild.remove();
    };
    for (const e of eps || []) add(e);
    return { table, add };
  }

  function runPage(main, run) {
    Object.assign(__gt, { completed: null, steps: 0, episodes: 0, agents: [], activeAgent: null, rawShown: 0 });
    const agents = new Map(); // agent → {steps:[], tabBtn, body, episodes, charts}
    const head = el('div', { class: 'filters' }, el('h2', { text: run }), el('span', { id: 'run-state', class: 'dim' }),
      el('a', { href: '#/run/' + q(run) + '/agents' }, 'all agents side by side'), el('a', { href: '#/charts?runs=' + q(run) }, 'overlay with other runs'),
      el('button', { id: 'cancel-run', onclick: () => cancelRun(run) }, 'cancel run'));
    const banners = el('div');
    const lag = el('div', { class: 'banner warn', id: 'lag-banner', hidden: true });
    const tabs = el('div', { class: 'tabs', id: 'agent-tabs' });
    const body = el('div', { class: 'panel-body', id: 'agent-body' }, el('p', { class: 'dim', text: 'waiting for the first record…' }));
    main.append(head, banners, lag, tabs, body);
    GT.onRunOpen && GT.onRunOpen(banners, run);
    let active = null;
    let dropped = 0, gaps = 0;
    const showLag = () => { lag.hidden = false; lag.textContent = `live view fell behind: ${dropped} records dropped (still in the store)` + (gaps ? `, ${gaps} gaps` : ''); };
    function agent(id) {
      let a = agents.get(id);
      if (a) return a;
      a = { id, steps: [], sub: 'grid', panes: {} };
      a.btn = el('button', { 'data-agent': id, onclick: () => select(id) }, id || '(no agent)');
      tabs.append(a.btn);
      agents.set(id, a);
      __gt.agents = [...agents.keys()];
      if (active == null) select(id);
      return a;
    }
    function select(id) {
      active = id; __gt.activeAgent = id;
      for (const [k, a] of agents) a.btn.classList.toggle('active', k === id);
      renderAgent();
    }
    function subtabs(a) {
      const names = Object.keys(GT.agentTabs);
      return el('div', { class: 'tabs subtabs', id: 'subtabs' }, names.map((n) => el('button', { 'data-subtab': n, class: a.sub === n ? 'active' : '', onclick: () => { a.sub = n; renderAgent(); } }, GT.agentTabs[n].title)));
    }
    let paneCleanup = [];
    function renderAgent() {
      for (const f of paneCleanup.splice(0)) f();
      const a = agents.get(active);
      if (!a) return;
      __gt.activeSubtab = a.sub;
      const pane = el('div', { id: 'pane-' + a.sub });
      body.replaceChildren(subtabs(a), pane);
      const saved = cleanups; cleanups = [];
      GT.agentTabs[a.sub].render(pane, { run, agent: a.id, steps: a.steps, episodes: a.episodes || [], ctx: a });
      paneCleanup = cleanups; cleanups = saved;
      a.repaint = () => GT.agentTabs[a.sub].update && GT.agentTabs[a.sub].update(pane, { run, agent: a.id, steps: a.steps, episodes: a.episodes || [], ctx: a });
    }
    onLeave(() => { for (const f of paneCleanup.splice(0)) f(); });
    let raf = 0;
    const repaint = () => { if (!raf) raf = requestAnimationFrame(() => { raf = 0; const a = agents.get(active); a && a.repaint && a.repaint(); }); };
    onLeave(() => cancelAnimationFrame(raf));
    let streams = [];
    const completed = (rc) => {
      __gt.completed = rc.status || 'completed';
      for (const s of streams) s.close();
      banners.append(el('div', { class: 'banner ' + (rc.status === 'failed' ? 'bad' : 'done'), id: 'completed-banner' }, `run completed: ${rc.status || ''}` + (rc.error ? ' — ' + rc.error : '') + '; live views closed'));
      document.getElementById('cancel-run').disabled = true;
    };
    const onLag = (d) => { dropped += d.dropped_steps + d.dropped_episodes + d.dropped_scalars; showLag(); };
    const onGap = () => { gaps++; showLag(); };
    streams.push(stream(run, 'steps', {}, {
      records: (recs) => {
        const now = Date.now();
        for (const s of recs) {
          const a = agent(s.agent_id || '');
          a.steps.push(s);
          if (a.steps.length > STEP_TAIL) a.steps.splice(0, a.steps.length - STEP_TAIL);
          if (s.ts_unix_ns) latency(now - tsMs(s));
        }
        __gt.steps += recs.length;
        repaint();
      }, lagged: onLag, gap: onGap, completed,
    }));
    streams.push(stream(run, 'episodes', { since: 0 }, {
      records: (recs) => {
        for (const e of recs) {
          const a = agent(e.agent_id || '');
          (a.episodes = a.episodes || []).push(e);
          if (a.episodes.length > MAX_EPISODE_ROWS) a.episodes.splice(0, a.episodes.length - MAX_EPISODE_ROWS);
          a.onEpisode && a.onEpisode(e);
        }
        __gt.episodes += recs.length;
        repaint();
      }, lagged: onLag, gap: onGap, completed,
    }));
    api('/runs').then((r) => {
      const info = r.runs.find((x) => x.run_id === run);
      if (info) { document.getElementById('run-state').textContent = `${info.state} · ${info.control_modes.join(', ')} · ${info.game_id}`; }
    }).catch(() => {});
  }

  // The agent tabs (a Video tab registers here the same way).
  const GT = {
    pages: {}, agentTabs: {},
    registerPage(name, page) { this.pages[name] = page; },
    registerAgentTab(name, tab) { this.agentTabs[name] = tab; },
    // A link in the top bar for a registered page (a Policies page: addNav('Policies', '#/policies', 'policies')).
    addNav(label, href, page) { document.getElementById('nav').append(el('a', { href, 'data-page': page }, label)); },
    el, api, stream, chartsView, frameOf, onLeave, parseJSON, fmt, q,
    // The curve bound's thinning, for tests: thin({step, rel, wall, ys}) → points dropped.
    thin, MAX_CURVE,
    // Hooks a later view fills: onRunOpen(banners, run), onReplayOpen(main, {run, agent,
    // episode, steps}), onReplayStep(view, step).
    onRunOpen: null, onReplayOpen: null, onReplayStep: null,
  };
  window.GT = GT;
  GT.registerAgentTab('grid', {
    title: 'Grid',
    render(pane, v) { pane.append(el('div', { class: 'grid-holder' })); this.update(pane, v); },
    update(pane, v) {
      const s = v.steps[v.steps.length - 1];
      const holder = pane.querySelector('.grid-holder');
      if (!s) { holder.replaceChildren(el('p', { class: 'dim', text: 'no steps yet' })); return; }
      holder.replaceChildren(frameOf(s), stepSummary(s));
    },
  });
  GT.registerAgentTab('raw', {
    title: 'Raw',
    render(pane, v) { pane.append(el('pre', { class: 'raw', id: 'raw-steps' })); this.update(pane, v); },
    update(pane, v) {
      const shown = v.steps.slice(-100).map((s) => Object.assign({}, s, { action_json: parseJSON(s.action_json), observation_json: parseJSON(s.observation_json), render_hint_json: parseJSON(s.render_hint_json), info_json: parseJSON(s.info_json) }));
      pane.querySelector('#raw-steps').textContent = JSON.stringify(shown.reverse(), null, 2);
      __gt.rawShown = shown.length;
    },
  });
  GT.registerAgentTab('episodes', {
    title: 'Episodes',
    render(pane, v) {
      const t = episodesTable(v.episodes, v.run);
      pane.append(el('div', { class: 'scroll' }, t.table));
      v.ctx.onEpisode = (e) => t.add(e, v.run);
      onLeave(() => { v.ctx.onEpisode = null; });
    },
  });
  GT.registerAgentTab('charts', {
    title: 'Charts',
    render(pane, v) { chartsView(pane, [{ run: v.run, agent: v.agent }]); },
  });

  // ---- multi-agent: every agent's curves and episode tables side by side -------------------
  async function agentsPage(main, run) {
    main.append(el('h2', {}, el('a', { href: '#/run/' + q(run) }, run), ' · all agents'));
    const charts = el('div'); const side = el('div', { class: 'side', id: 'agent-tables' });
    main.append(charts, el('h3', { text: 'Episodes per agent' }), side);
    chartsView(charts, [{ run, agent: null }]);
    const tables = new Map();
    const table = (a) => {
      let t = tables.get(a);
      if (!t) { t = episodesTable([], run); tables.set(a, t); side.append(el('div', { 'data-agent': a }, el('h4', { text: a || '(no agent)' }), el('div', { class: 'scroll' }, t.table))); }
      return t;
    };
    stream(run, 'episodes', { since: 0 }, { records: (recs) => { for (const e of recs) table(e.agent_id || '').add(e, run); __gt.agentTables = tables.size; } });
  }

  // ---- charts page: overlay runs ----------------------------------------------------------
  async function chartsPage(main, params) {
    const chosen = new Set((params.get('runs') || '').split(',').filter(Boolean));
    main.append(el('h2', { text: 'Charts' }));
    const picker = el('div', { class: 'filters', id: 'run-picker' });
    const holder = el('div');
    main.append(picker, holder);
    const r = await api('/runs');
    for (const run of r.runs) {
      picker.append(el('label', {}, el('input', { type: 'checkbox', value: run.run_id, checked: chosen.has(run.run_id), onchange: (e) => {
        if (e.target.checked) chosen.add(run.run_id); else chosen.delete(run.run_id);
        location.hash = '#/charts?runs=' + [...chosen].map(q).join(',');
      } }), ' ' + run.run_id));
    }
    if (!chosen.size) { holder.append(el('p', { class: 'dim', text: 'pick runs to overlay' })); return; }
    chartsView(holder, [...chosen].map((run) => ({ run, agent: null })), { overlayRuns: true });
  }

  // ---- replay: Human Replay (control_mode = human) and agent replay (any stored episode) ----
  async function replayList(main, params) {
    const human = params.get('mode') === 'human';
    main.append(el('h2', { text: human ? 'Human Replay' : 'Agent replay' }),
      el('div', { class: 'filters' }, el('label', {}, el('input', { type: 'checkbox', id: 'human-only', checked: human, onchange: (e) => { location.hash = e.target.checked ? '#/replay?mode=human' : '#/replay'; } }), ' human episodes only (control_mode = human)')));
    const r = await api('/replays' + (human ? '?mode=human' : ''));
    const tbody = el('tbody');
    for (const e of r.episodes.slice().reverse()) {
      const md = parseJSON(e.metadata_json) || {};
      const href = `#/replay/${q(e.run_id)}/${q(e.agent_id || '')}/${e.episode_index || 0}`;
      tbody.append(el('tr', { class: 'clickable', 'data-mode': e.control_mode || '', onclick: () => { location.hash = href; } },
        el('td', { text: e.run_id }), el('td', { text: e.agent_id || '' }), el('td', { class: 'num', text: e.episode_index || 0 }), el('td', { text: md.seed ?? '' }),
        el('td', { text: md.game_id ?? '' }), el('td', { class: 'num', text: fmt(num(e.total_reward || 0)) }), el('td', { class: 'num', text: e.steps || 0 }), el('td', { text: e.control_mode || '' })));
    }
    __gt.replay.listed = tbody.children.length;
    __gt.replay.listedModes = [...new Set(r.episodes.map((e) => e.control_mode || ''))];
    main.append(el('table', { id: 'replay-list' }, el('thead', {}, el('tr', {}, ['run', 'agent', 'episode', 'seed', 'game', 'return', 'length', 'mode'].map((h) => el('th', { text: h })))), tbody));
  }
  async function replayPlayer(main, run, agent, episode) {
    main.append(el('h2', {}, el('a', { href: '#/replay' }, 'Replay'), ` · ${run} · ${agent || '(no agent)'} · episode ${episode}`));
    const r = await api(`/runs/${q(run)}/replay?episode=${episode}` + (agent ? `&agent=${q(agent)}` : ''));
    const steps = r.steps;
    Object.assign(__gt.replay, { frames: steps.length, frame: -1, playing: false, episode: { run, agent, episode } });
    if (!r.complete) main.append(el('div', { class: 'banner warn', text: 'episode read cut short (bounded scan); showing what was found' }));
    if (!steps.length) { main.append(el('p', { text: 'no stored steps for this episode' })); return; }
    let i = 0, timer = 0;
    const scrub = el('input', { type: 'range', min: 0, max: steps.length - 1, value: 0, id: 'scrub', oninput: (e) => show(+e.target.value) });
    const pos = el('span', { id: 'replay-pos' });
    const play = el('button', { id: 'play', onclick: () => (timer ? pause() : start()) }, 'play');
    const speed = el('select', { id: 'speed' }, [1, 2, 5, 10, 30].map((x) => el('option', { value: x }, x + ' steps/s')));
    speed.value = '10';
    const view = el('div', { id: 'replay-frame' });
    main.append(el('div', { class: 'player' }, el('button', { id: 'prev', onclick: () => show(i - 1) }, '◀ step'), play, el('button', { id: 'next', onclick: () => show(i + 1) }, 'step ▶'), scrub, pos, speed), view);
    GT.onReplayOpen && GT.onReplayOpen(main, { run, agent, episode, steps });
    function show(n) {
      i = Math.max(0, Math.min(steps.length - 1, n));
      scrub.value = i; pos.textContent = `${i + 1} / ${steps.length}`;
      view.replaceChildren(frameOf(steps[i]), stepSummary(steps[i]));
      __gt.replay.frame = i;
      GT.onReplayStep && GT.onReplayStep(view, steps[i]);
      if (i === steps.length - 1) pause();
    }
    function start() { if (i >= steps.length - 1) show(0); play.textContent = 'pause'; __gt.replay.playing = true; timer = setInterval(() => show(i + 1), 1000 / +speed.value); }
    function pause() { clearInterval(timer); timer = 0; play.textContent = 'play'; __gt.replay.playing = false; }
    speed.onchange = () => { if (timer) { pause(); start(); } };
    onLeave(pause);
    show(0);
  }

  // ---- run control: submit a run ---------------------------------------------------------
  function submitPage(main) {
    const f = el('form', { class: 'submit', id: 'submit-form' },
      el('label', { text: 'command (one argument per line)' }), el('textarea', { name: 'argv', rows: 4, required: true }),
      el('label', { text: 'environment (KEY=VALUE per line)' }), el('textarea', { name: 'env', rows: 3 }),
      el('label', { text: 'run id (empty: the daemon makes one)' }), el('input', { name: 'run_id' }),
      el('label', { text: 'agent id' }), el('input', { name: 'agent_id' }),
      el('label', { text: 'control mode' }), el('select', { name: 'control_mode' }, ['', 'agent', 'human', 'multi_agent', 'hybrid', 'replay'].map((m) => el('option', { value: m }, m || '(unset)'))),
      el('label', { text: 'game id' }), el('input', { name: 'game_id' }),
      el('label', { text: 'seed' }), el('input', { name: 'seed', type: 'number', min: 0 }),
      el('label', {}, el('input', { type: 'checkbox', name: 'legacy_jsonl', style: 'width:auto' }), ' legacy JSONL worker (run under the proxy)'),
      el('p', {}, el('button', { type: 'submit' }, 'submit run')), el('p', { id: 'submit-result' }));
    f.onsubmit = async (e) => {
      e.preventDefault();
      const d = new FormData(f);
      const env = {};
      for (const line of String(d.get('env') || '').split('\n')) { const k = line.indexOf('='); if (k > 0) env[line.slice(0, k).trim()] = line.slice(k + 1); }
      const body = { argv: String(d.get('argv')).split('\n').map((s) => s.trim()).filter(Boolean), env, run_id: d.get('run_id') || '', agent_id: d.get('agent_id') || '', control_mode: d.get('control_mode') || '', game_id: d.get('game_id') || '', legacy_jsonl: !!d.get('legacy_jsonl') };
      if (d.get('seed')) body.seed = Number(d.get('seed'));
      try {
        const r = await api('/runs', { method: 'POST', body: JSON.stringify(body) });
        __gt.submitted = r.run_id;
        location.hash = '#/run/' + q(r.run_id);
      } catch (err) { document.getElementById('submit-result').textContent = 'refused: ' + err.message; }
    };
    main.append(el('h2', { text: 'Submit a run' }), f);
  }

  GT.registerPage('runs', { match: (p) => p[0] === '' || p[0] === 'runs', render: (m, p, params) => runsPage(m, params) });
  GT.registerPage('run', { match: (p) => p[0] === 'run' && p.length === 2, render: (m, p) => runPage(m, decodeURIComponent(p[1])) });
  GT.registerPage('agents', { match: (p) => p[0] === 'run' && p[2] === 'agents', render: (m, p) => agentsPage(m, decodeURIComponent(p[1])) });
  GT.registerPage('charts', { match: (p) => p[0] === 'charts', render: (m, p, params) => chartsPage(m, params) });
  GT.registerPage('replay', { match: (p) => p[0] === 'replay' && p.length === 1, render: (m, p, params) => replayList(m, params) });
  GT.registerPage('player', { match: (p) => p[0] === 'replay' && p.length === 4, render: (m, p) => replayPlayer(m, decodeURIComponent(p[1]), decodeURIComponent(p[2]), Number(p[3])) });
  GT.registerPage('submit', { match: (p) => p[0] === 'submit', render: (m) => submitPage(m) });

  function route() {
    leave();
    const h = location.hash.replace(/^#\/?/, '');
    const [path, query] = h.split('?');
    const parts = path.split('/');
    const params = new URLSearchParams(query || '');
    const main = document.getElementById('main');
    main.replaceChildren();
    for (const [name, page] of Object.entries(GT.pages)) {
      if (page.match(parts)) {
        __gt.route = name;
        for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === name || (name === 'player' && a.dataset.page === 'replay'));
        Promise.resolve(page.render(main, parts, params)).catch((e) => { gtError(String(e)); main.append(el('div', { class: 'banner bad', text: String(e.message || e) })); });
        return;
      }
    }
    main.append(el('p', { text: 'no such page' }));
  }
  window.addEventListener('hashchange', route);
  // After every script of the page ran (views.js registers more pages).
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', route); else route();
})();
var GT_smooth;
