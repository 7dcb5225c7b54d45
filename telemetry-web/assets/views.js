// gym-telemetry dashboard: the frame and policy views (issues 18 and 19), plugged into app.js
// through GT.registerAgentTab / GT.registerPage / GT.addNav and its hooks.
//
// - Video tab (per agent): the agent's newest frames over SSE (/api/runs/R/video), at most the
//   chosen rate (the daemon caps it, default 10 Hz); shows the frame rate and the frames dropped.
//   "export clip" encodes a stored episode (the library behind `export-video`).
// - Replay: each step's frame_ref shown as pixels; a missing or evicted frame says so.
// - Policies page: the inventory with filters, invalid files with their reason, "evaluate".
// - A run page: the policy each agent ran with (bindings and what its records say), and for an
//   evaluation run its source, plan and results.
// window.__gt.video / .policies / .frames hold counts for the browser test.
'use strict';

(function () {
  const { el, api, onLeave, fmt, q } = GT;
  const __gt = window.__gt;
  Object.assign(__gt, {
    video: { frames: 0, dropped: 0, fps: 0, lastRef: null, width: 0, height: 0, errors: 0, hz: 0 },
    frames: { shown: 0, missing: 0, none: 0, lastMissingReason: null },
    policies: { listed: 0, invalid: 0, invalidReasons: [] },
    runInfo: null, exported: null, evaluateSubmitted: null,
  });
  const short = (h) => (h ? String(h).slice(0, 12) : '');
  const policyText = (id, digest) => (id ? `${id} @${short(digest)}` : '(none)');

  // ---- Video tab ------------------------------------------------------------------------
  function exportForm(run, agent, episode) {
    const ep = el('input', { type: 'number', min: 0, value: episode ?? 0, id: 'export-episode', style: 'width:6em' });
    const format = el('select', { id: 'export-format' }, ['mp4', 'webm', 'gif'].map((f) => el('option', { value: f }, f)));
    const out = el('span', { id: 'export-result', class: 'dim' });
    const btn = el('button', { id: 'export-clip', onclick: async () => {
      btn.disabled = true; out.textContent = 'encoding…';
      try {
        const r = await api(`/runs/${q(run)}/export`, { method: 'POST', body: JSON.stringify({ agent, episode: Number(ep.value), format: format.value }) });
        __gt.exported = r;
        out.textContent = `${r.format} · ${r.frames} frames ${r.width}×${r.height} at ${fmt(r.fps, 1)} fps → ${r.path}` + (r.fell_back_to_gif ? ' (ffmpeg absent: GIF)' : '');
      } catch (e) { out.textContent = 'export refused: ' + e.message; }
      btn.disabled = false;
    } }, 'export clip');
    return el('div', { class: 'filters', id: 'export-form' }, el('span', { text: 'episode' }), ep, format, btn, out);
  }

  GT.registerAgentTab('video', {
    title: 'Video',
    render(pane, v) {
      const rate = el('select', { id: 'video-hz' }, [1, 2, 5, 10].map((h) => el('option', { value: h }, h + ' Hz max')));
      rate.value = '10';
      const img = el('img', { id: 'video-frame', alt: 'live frame', class: 'frame' });
      const wait = el('p', { class: 'dim', id: 'video-wait', text: 'waiting for a frame (the worker captures frames with FrameCapture / FrameSender)…' });
      const info = el('span', { id: 'video-stats', class: 'dim' });
      const where = el('div', { class: 'dim', id: 'video-where' });
      pane.append(el('div', { class: 'filters' }, rate, info), wait, img, where, exportForm(v.run, v.agent, 0));
      img.hidden = true;
      let es = null;
      const arrivals = [];
      const open = () => {
        if (es) es.close();
        const hz = Number(rate.value);
        Object.assign(__gt.video, { frames: 0, dropped: 0, fps: 0, lastRef: null, hz });
        arrivals.length = 0;
        es = new EventSource(`/api/runs/${q(v.run)}/video?agent=${q(v.agent)}&hz=${hz}`);
        es.addEventListener('frame', (e) => {
          const d = JSON.parse(e.data);
          img.src = 'data:image/png;base64,' + d.png;
          img.hidden = false; wait.hidden = true;
          const now = performance.now();
          arrivals.push(now);
          while (arrivals.length && arrivals[0] < now - 2000) arrivals.shift();
          const fps = arrivals.length > 1 ? (arrivals.length - 1) / ((now - arrivals[0]) / 1000) : 0;
          Object.assign(__gt.video, { frames: __gt.video.frames + 1, dropped: d.dropped, fps, lastRef: d.frame_ref, width: d.width, height: d.height });
          info.textContent = `${fmt(fps, 1)} frames/s shown · ${d.sent} shown · ${d.dropped} dropped (newer frames came first)` + (d.too_large ? ` · ${d.too_large} too large` : '');
          where.textContent = `episode ${d.episode_index} · step ${d.step_index} · ${d.width}×${d.height}`;
        });
        es.addEventListener('error', () => { __gt.video.errors++; });
      };
      rate.onchange = open;
      open();
      onLeave(() => { if (es) es.close(); es = null; });
    },
  });

  // ---- Replay: the frame of each step ---------------------------------------------------
  const cache = new Map(); // frame_ref → data URL or {missing}; bounded
  function remember(ref, v) { cache.set(ref, v); while (cache.size > 300) cache.delete(cache.keys().next().value); }
  async function loadFrame(ref) {
    if (cache.has(ref)) return cache.get(ref);
    const r = await fetch('/api/frame?ref=' + q(ref));
    let v;
    if (r.ok) {
      const blob = await r.blob();
      v = await new Promise((res) => { const fr = new FileReader(); fr.onload = () => res(fr.result); fr.readAsDataURL(blob); });
    } else {
      const body = await r.json().catch(() => ({}));
      v = { missing: true, reason: body.reason || ('HTTP ' + r.status) };
    }
    remember(ref, v);
    return v;
  }
  GT.onReplayStep = (view, step) => {
    const box = el('div', { id: 'replay-image-box' });
    view.prepend(box);
    if (!step.frame_ref) { __gt.frames.none++; box.append(el('p', { class: 'dim', id: 'replay-no-frame', text: 'no frame captured for this step' })); return; }
    const ref = step.frame_ref;
    loadFrame(ref).then((v) => {
      if (!box.isConnected) return;
      if (typeof v === 'string') { __gt.frames.shown++; box.append(el('img', { id: 'replay-image', class: 'frame', src: v, alt: ref })); }
      else { __gt.frames.missing++; __gt.frames.lastMissingReason = v.reason; box.append(el('div', { class: 'frame-missing', id: 'replay-frame-missing', text: `frame missing (${v.reason.replace('_', ' ')})` })); }
    }).catch((e) => { __gt.frames.missing++; box.append(el('div', { class: 'frame-missing', id: 'replay-frame-missing', text: 'frame missing: ' + e.message })); });
  };
  GT.onReplayOpen = (main, r) => { main.append(exportForm(r.run, r.agent, r.episode)); };

  // ---- a run: its policies and, for an evaluation run, its results ----------------------
  GT.onRunOpen = (banners, run) => {
    const panel = el('div', { id: 'run-policies', class: 'policies-panel' });
    banners.append(panel);
    let timer = 0;
    onLeave(() => clearTimeout(timer));
    const load = async () => {
      let info, eps;
      try { [info, eps] = await Promise.all([api(`/runs/${q(run)}/info`), api(`/runs/${q(run)}/episodes?limit=5000`)]); } catch (_) { return; }
      __gt.runInfo = info;
      const fromRecords = new Map(); // agent → Set of "id @digest"
      for (const e of eps.episodes || []) if (e.policy_id) { const a = e.agent_id || ''; if (!fromRecords.has(a)) fromRecords.set(a, new Set()); fromRecords.get(a).add(policyText(e.policy_id, e.policy_digest)); }
      const agents = new Set([...info.policy_bindings.map((b) => b.agent_id), ...fromRecords.keys()]);
      const kids = [];
      if (info.evaluation) {
        const ev = info.evaluation, res = info.results;
        kids.push(el('div', { class: 'banner done', id: 'evaluation-banner' }, 'evaluation run of policy ',
          el('a', { href: '#/policies?id=' + q(ev.policy_id) }, ev.policy_id || '?'),
          ev.source_run_id ? el('span', {}, ' from run ', el('a', { href: '#/run/' + q(ev.source_run_id) }, ev.source_run_id)) : '',
          ev.plan && ev.plan.episodes ? ` · ${ev.plan.episodes} episodes planned` : ''));
        kids.push(el('table', { id: 'evaluation-results', class: 'compact' }, el('tbody', {},
          el('tr', {}, el('th', { text: 'episodes' }), el('td', { class: 'num', 'data-k': 'episodes', text: res ? fmt(res.episodes) : '…' })),
          el('tr', {}, el('th', { text: 'success rate' }), el('td', { class: 'num', 'data-k': 'success_rate', text: res ? fmt(res.success_rate) : '…' })),
          el('tr', {}, el('th', { text: 'mean return' }), el('td', { class: 'num', 'data-k': 'mean_return', text: res ? fmt(res.mean_return) : '…' })),
          el('tr', {}, el('th', { text: 'std return' }), el('td', { class: 'num', 'data-k': 'std_return', text: res ? fmt(res.std_return) : '…' })))));
      }
      if (agents.size) {
        kids.push(el('table', { id: 'agent-policies', class: 'compact' }, el('thead', {}, el('tr', {}, ['agent', 'equipped', 'records say'].map((h) => el('th', { text: h })))),
          el('tbody', {}, [...agents].map((a) => {
            const b = info.policy_bindings.find((x) => x.agent_id === a);
            return el('tr', { 'data-agent': a }, el('td', { text: a || '(no agent)' }), el('td', { text: b ? policyText(b.policy_id, b.policy_digest) : '' }), el('td', { text: [...(fromRecords.get(a) || [])].join(', ') }));
          }))));
      }
      const ended = ['succeeded', 'failed', 'cancelled', 'completed'].includes(info.state) || !info.known;
      let pid = info.evaluation ? info.evaluation.policy_id : (info.policy_bindings[0] || {}).policy_id;
      if (ended && !pid) {
        // A training run: the policy it produced (its manifest names this run as its source).
        try { const inv = await api('/policies'); pid = ((inv.policies || []).find((m) => m.source_run_id === run) || {}).policy_id; } catch (_) {}
      }
      if (ended) {
        kids.push(el('p', {}, el('a', { id: 'evaluate-run', href: `#/evaluate?source_run=${q(run)}` + (pid ? '&policy=' + q(pid) : '') }, 'evaluate this run\'s policy')));
      }
      panel.replaceChildren(...kids);
      // Results arrive when an evaluation run ends: look again until then.
      if (info.evaluation && !info.results) timer = setTimeout(load, 2000);
    };
    load();
  };

  // ---- Policies page ----------------------------------------------------------------------
  async function policiesPage(main, params) {
    main.append(el('h2', { text: 'Policies' }));
    const f = { env: params.get('env') || '', agent: params.get('agent') || '', format: params.get('format') || '' };
    const inputs = ['env', 'agent', 'format'].map((k) => el('input', { id: 'policy-filter-' + k, placeholder: k, value: f[k], onchange: (e) => { f[k] = e.target.value.trim(); go(); } }));
    const go = () => { location.hash = '#/policies?' + Object.entries(f).filter(([, v]) => v).map(([k, v]) => k + '=' + q(v)).join('&'); };
    main.append(el('div', { class: 'filters' }, el('span', { text: 'filter:' }), inputs));
    const [r, runs] = await Promise.all([api('/policies?' + Object.entries(f).map(([k, v]) => k + '=' + q(v)).join('&')), api('/runs').catch(() => ({ runs: [] }))]);
    const evals = new Map(); // policy → its evaluation runs
    for (const run of runs.runs || []) if (run.evaluation_policy_id) { if (!evals.has(run.evaluation_policy_id)) evals.set(run.evaluation_policy_id, []); evals.get(run.evaluation_policy_id).push(run.run_id); }
    const focus = params.get('id');
    const tbody = el('tbody');
    for (const m of r.policies) {
      tbody.append(el('tr', { 'data-policy': m.policy_id, class: m.policy_id === focus ? 'focus' : '' },
        el('td', { text: m.policy_id }), el('td', { text: m.env_id }), el('td', { text: m.agent_id }), el('td', { text: `${m.format}/v${m.payload_version}` }),
        el('td', { text: [m.observation_space, m.action_space].filter(Boolean).join(' → ') }), el('td', { text: m.control_mode }),
        el('td', {}, m.source_run_id ? el('a', { href: '#/run/' + q(m.source_run_id) }, m.source_run_id) : ''),
        el('td', { class: 'num', text: m.size_bytes }), el('td', { title: m.sha256, text: short(m.sha256) }), el('td', { text: m.created_ms ? new Date(m.created_ms).toISOString().replace('T', ' ').slice(0, 19) : '' }),
        el('td', { text: m.origin }),
        el('td', { class: 'evaluations' }, (evals.get(m.policy_id) || []).slice(-5).map((id) => el('a', { href: '#/run/' + q(id), style: 'margin-right:6px' }, id))),
        el('td', {}, el('a', { class: 'evaluate', href: '#/evaluate?policy=' + q(m.policy_id) + (m.source_run_id ? '&source_run=' + q(m.source_run_id) : '') }, 'evaluate'))));
    }
    main.append(el('table', { id: 'policies' }, el('thead', {}, el('tr', {}, ['policy', 'env', 'agent', 'format', 'spaces', 'control mode', 'source run', 'bytes', 'sha256', 'created', 'origin', 'evaluation runs', ''].map((h) => el('th', { text: h })))), tbody));
    if (!r.policies.length) main.append(el('p', { class: 'dim', text: 'no policies' + (f.env || f.agent || f.format ? ' match the filter' : ' under <var-dir>/policies/') }));
    if (r.truncated) main.append(el('div', { class: 'banner warn', text: 'the inventory scan stopped at its file limit; not every file is listed' }));
    const bad = el('tbody');
    for (const i of r.invalid) bad.append(el('tr', { 'data-path': i.path }, el('td', { text: i.path }), el('td', { text: i.kind }), el('td', { class: 'reason', text: i.reason })));
    main.append(el('h3', { text: `Invalid files (${r.invalid.length})` }));
    if (r.invalid.length) main.append(el('table', { id: 'invalid-policies' }, el('thead', {}, el('tr', {}, ['file', 'kind', 'reason'].map((h) => el('th', { text: h })))), bad));
    Object.assign(__gt.policies, { listed: r.policies.length, invalid: r.invalid.length, invalidReasons: r.invalid.map((i) => i.kind) });
  }

  // ---- Evaluate a policy ------------------------------------------------------------------
  function evaluatePage(main, params) {
    const last = localStorage.getItem('gt.evaluate.argv') || '';
    const f = el('form', { class: 'submit', id: 'evaluate-form' },
      el('label', { text: 'policy id' }), el('input', { name: 'policy_id', required: true, value: params.get('policy') || '' }),
      el('label', { text: 'episodes' }), el('input', { name: 'episodes', type: 'number', min: 1, value: 10, required: true }),
      el('label', { text: 'source run (empty: the policy\'s own)' }), el('input', { name: 'source_run_id', value: params.get('source_run') || '' }),
      el('label', { text: 'worker command (one argument per line; it loads tel.policy and plays without exploring)' }), el('textarea', { name: 'argv', rows: 4, required: true }, last),
      el('label', { text: 'environment (KEY=VALUE per line)' }), el('textarea', { name: 'env', rows: 2 }),
      el('label', { text: 'agent id (empty: the policy\'s agent)' }), el('input', { name: 'agent_id' }),
      el('label', { text: 'run id (empty: the daemon makes one)' }), el('input', { name: 'run_id' }),
      el('p', {}, el('button', { type: 'submit' }, 'evaluate')), el('p', { id: 'evaluate-result' }));
    f.onsubmit = async (e) => {
      e.preventDefault();
      const d = new FormData(f);
      const env = {};
      for (const line of String(d.get('env') || '').split('\n')) { const k = line.indexOf('='); if (k > 0) env[line.slice(0, k).trim()] = line.slice(k + 1); }
      const argv = String(d.get('argv')).split('\n').map((s) => s.trim()).filter(Boolean);
      const body = { policy_id: String(d.get('policy_id')).trim(), episodes: Number(d.get('episodes')), source_run_id: d.get('source_run_id') || '', argv, env, agent_id: d.get('agent_id') || '', run_id: d.get('run_id') || '' };
      try {
        const r = await api('/evaluate', { method: 'POST', body: JSON.stringify(body) });
        localStorage.setItem('gt.evaluate.argv', argv.join('\n'));
        __gt.evaluateSubmitted = r.run_id;
        location.hash = '#/run/' + q(r.run_id);
      } catch (err) { document.getElementById('evaluate-result').textContent = 'refused: ' + err.message; }
    };
    main.append(el('h2', { text: 'Evaluate a policy' }), el('p', { class: 'dim', text: 'An evaluation run is its own run (control mode replay, no exploration), linked to its source run and policy; its success rate and mean/std return are stored as eval/* scalars and shown on its page.' }), f);
  }

  GT.registerPage('policies', { match: (p) => p[0] === 'policies', render: (m, p, params) => policiesPage(m, params) });
  GT.registerPage('evaluate', { match: (p) => p[0] === 'evaluate', render: (m, p, params) => evaluatePage(m, params) });
  GT.addNav('Policies', '#/policies', 'policies');
})();
