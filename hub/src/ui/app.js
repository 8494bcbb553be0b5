// The hub's status page. Everything comes from the /v1 API with the token the operator typed in (kept in
// this tab's sessionStorage only). Text from the API is only ever set as text (textContent), never parsed
// as markup. The fleet, queues, policy and job list are polled; a selected job's events arrive live over
// its server-sent event stream, read with fetch() because EventSource cannot send the Authorization header.
'use strict';

const REFRESH_MS = 3000;
const ARM_MS = 4000;
const TOKEN_KEY = 'ainern2d.hub.token';
const ACTIVE = ['queued', 'accepted', 'running', 'retrying'];
const TERMINAL = ['succeeded', 'failed', 'cancelled', 'dead_lettered'];

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  selected: null, // job id
  stream: null, // AbortController of the open event stream
  events: new Set(), // event ids shown for the selected job
  armed: null, // {key, until}: a destructive button waiting for its confirming click
  jobs: [],
};

const $ = (id) => document.getElementById(id);

// el('td', {class: 'num', title: 'x'}, 'text', childNode, ...)
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'onclick') node.addEventListener('click', v);
    else if (k === 'disabled') node.disabled = true;
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers() {
  return state.token ? { Authorization: 'Bearer ' + state.token } : {};
}

async function api(path, method) {
  const r = await fetch(path, { method: method || 'GET', headers: headers(), cache: 'no-store' });
  let body = null;
  try {
    body = await r.json();
  } catch (_) {
    body = null;
  }
  if (!r.ok) throw new ApiError(r.status, (body && body.error) || r.status + ' ' + r.statusText);
  return body;
}

// ---- formatting ----

// "5 s ago", or "5s" where space is short.
function age(iso, short) {
  if (!iso) return '—';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  const [n, unit] = s < 60 ? [s, 's'] : s < 3600 ? [Math.floor(s / 60), 'min'] : s < 86400 ? [Math.floor(s / 3600), 'h'] : [Math.floor(s / 86400), 'd'];
  return short ? n + (unit === 'min' ? 'm' : unit) : n + ' ' + unit + ' ago';
}

function clock(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
}

function bytes(n) {
  if (n === undefined || n === null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return (i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)) + ' ' + units[i];
}

function ms(n) {
  if (n === undefined || n === null) return '—';
  return n < 1000 ? Math.round(n) + ' ms' : (n / 1000).toFixed(n < 10000 ? 2 : 1) + ' s';
}

function badge(word) {
  return el('span', { class: 'badge s-' + String(word).replace(/[^a-z_]/g, '') }, String(word).replace('_', ' '));
}

function show(node, visible) {
  node.hidden = !visible;
}

function notice(text, bad) {
  const n = $('notice');
  n.textContent = text;
  n.className = bad ? 'notice bad' : 'notice';
  show(n, true);
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => show(n, false), bad ? 10000 : 5000);
}

function explain(e, what) {
  if (e.status === 401) return what + ' refused: ' + e.message + '. Enter the token above.';
  return what + ' failed: ' + e.message;
}

// ---- destructive buttons: a second click within ARM_MS confirms ----

function armedFor(key) {
  return state.armed && state.armed.key === key && Date.now() < state.armed.until;
}

// ---- sections ----

async function refreshHealth() {
  const h = $('health');
  try {
    const r = await fetch('/ready', { cache: 'no-store' });
    const body = await r.json();
    const c = body.components || {};
    h.replaceChildren(
      el('span', { class: 'dot ' + (c.broker === 'ok' ? 'ok' : 'down') }),
      'broker ',
      el('span', { class: 'dot ' + (c.database === 'ok' ? 'ok' : 'down') }),
      'database',
    );
    h.title = JSON.stringify(c);
  } catch (_) {
    h.replaceChildren(el('span', { class: 'dot down' }), 'hub unreachable');
  }
}

function slotChips(slots) {
  return Object.entries(slots || {}).map(([kind, s]) =>
    el('span', { class: 'chip' + (s.busy >= s.total && s.total > 0 ? ' full' : ''), title: kind + ': ' + s.busy + ' busy of ' + s.total },
      kind + ' ', el('b', null, s.busy + '/' + s.total)),
  );
}

function gpuCells(gpus) {
  if (!gpus || gpus.length === 0) return el('span', { class: 'muted' }, 'none reported');
  return gpus.map((g) => {
    const fill = el('span', { class: 'fill' + (g.utilization_pct > 90 ? ' hot' : '') });
    fill.style.width = Math.min(100, g.utilization_pct) + '%';
    const mem = g.memory_total_bytes ? bytes(g.memory_used_bytes) + ' / ' + bytes(g.memory_total_bytes) : '';
    const extra = [g.temperature_c != null ? g.temperature_c + ' °C' : null, g.power_w != null ? Math.round(g.power_w) + ' W' : null]
      .filter(Boolean)
      .join(' · ');
    return el('div', { class: 'gpu', title: (g.uuid || '') + (g.source ? ' (source: ' + g.source + ')' : '') },
      el('span', { class: 'gpu-name' }, '#' + g.index + ' ' + g.name),
      el('span', { class: 'meter' }, fill),
      el('span', { class: 'gpu-num' }, g.utilization_pct + '%'),
      el('span', { class: 'muted' }, [mem, extra].filter(Boolean).join(' · ')));
  });
}

function workerActions(w) {
  const id = w.worker_id;
  const act = (action) => () => workerAction(id, action);
  const drainKey = 'drain:' + id;
  const drain = el('button', { type: 'button', class: armedFor(drainKey) ? 'danger armed' : 'danger', 'data-action': 'drain',
    disabled: w.state === 'draining' || w.state === 'drained', title: 'Finish the jobs in flight, take no more; click twice' },
  armedFor(drainKey) ? 'Confirm drain' : 'Drain');
  drain.addEventListener('click', () => {
    if (armedFor(drainKey)) {
      state.armed = null;
      workerAction(id, 'drain');
    } else {
      state.armed = { key: drainKey, until: Date.now() + ARM_MS };
      drain.textContent = 'Confirm drain';
      drain.classList.add('armed');
      setTimeout(() => { if (!armedFor(drainKey)) { drain.textContent = 'Drain'; drain.classList.remove('armed'); } }, ARM_MS + 50);
    }
  });
  return el('td', { class: 'actions' },
    el('button', { type: 'button', 'data-action': 'cordon', disabled: w.state === 'cordoned', onclick: act('cordon'),
      title: 'Take no new jobs; jobs in flight continue' }, 'Cordon'),
    el('button', { type: 'button', 'data-action': 'uncordon', disabled: w.state === 'ready', onclick: act('uncordon'),
      title: 'Take jobs again' }, 'Uncordon'),
    drain);
}

async function workerAction(id, action) {
  try {
    await api('/v1/workers/' + encodeURIComponent(id) + '/' + action, 'POST');
    notice(action + ' sent to ' + id);
    setTimeout(refreshWorkers, 700);
  } catch (e) {
    notice(explain(e, action + ' of ' + id), true);
  }
}

async function refreshWorkers() {
  const body = await api('/v1/workers');
  const workers = body.workers || [];
  const live = workers.filter((w) => !w.lost).length;
  $('workers-count').textContent = live + ' live' + (workers.length > live ? ', ' + (workers.length - live) + ' lost' : '');
  $('workers').tBodies[0].replaceChildren(...workers.map((w) => {
    const stateCell = el('td', { class: 'state' }, badge(w.lost ? 'lost' : w.state));
    return el('tr', { 'data-worker': w.worker_id, class: w.lost ? 'lost' : '' },
      el('td', null, el('div', { class: 'mono strong' }, w.worker_id), el('div', { class: 'muted' }, w.host + ' · v' + w.version)),
      stateCell,
      el('td', { title: w.last_heartbeat_at }, age(w.last_heartbeat_at)),
      el('td', null, slotChips(w.slots)),
      el('td', { class: 'gpus' }, gpuCells(w.gpus)),
      el('td', { class: 'models' }, (w.models_loaded || []).length
        ? w.models_loaded.map((m) => el('span', { class: 'chip mono' }, m))
        : el('span', { class: 'muted' }, '—')),
      el('td', null, w.downgrade ? badge('downgraded') : el('span', { class: 'muted' }, '—'), w.downgrade ? ' ' + w.downgrade : null),
      workerActions(w));
  }));
  show($('workers-empty'), workers.length === 0);
}

async function refreshQueues() {
  const body = await api('/v1/queues');
  const dash = (v) => (v === null || v === undefined ? '—' : v);
  $('queues').tBodies[0].replaceChildren(...(body.queues || []).map((q) => {
    const scaling = q.desired_replicas != null && q.desired_replicas > q.replicas;
    return el('tr', { 'data-kind': q.kind, class: scaling ? 'scaling' : '' },
      el('td', { title: q.queue }, q.kind),
      el('td', { class: 'num' }, dash(q.ready)),
      el('td', { class: 'num' + (q.ready > 0 && q.consumers === 0 ? ' warn' : '') }, dash(q.consumers)),
      el('td', { class: 'num' }, q.in_flight),
      el('td', { class: 'num strong' }, dash(q.backlog)),
      el('td', { class: 'num' }, q.replicas),
      el('td', { class: 'num' + (scaling ? ' warn' : '') }, dash(q.desired_replicas)));
  }));
  const notes = [];
  if (!body.broker_connected) notes.push('broker away: ready unknown');
  if (body.outbox_pending) notes.push(body.outbox_pending + ' unpublished in the outbox');
  $('queues-note').textContent = notes.join(' · ');
}

function ruleText(cfg) {
  if (!cfg) return [];
  const g = cfg.gpu || {}, b = cfg.backlog || {}, s = cfg.success || {}, l = cfg.latency || {};
  return [
    ['GPU', '> ' + g.high_pct + '% for ' + Math.round(g.sustain_s / 60) + ' min → ' + g.profile + '; clear < ' + g.clear_pct + '%'],
    ['Backlog', '> ' + b.threshold + ' for ' + Math.round(b.sustain_s / 60) + ' min → scale out (' + b.per_replica + ' per replica)'],
    ['Success', '< ' + Math.round(s.min_rate * 1000) / 10 + '% over ' + Math.round(s.window_s / 60) + ' min → alert'],
    ['Latency', 'P95 > ' + l.p95_max_s + ' s over ' + Math.round(l.window_s / 60) + ' min → alert'],
  ];
}

async function refreshPolicy() {
  const body = await api('/v1/policy');
  $('policy-config').replaceChildren(...ruleText(body.config).flatMap(([k, v]) => [el('dt', null, k), el('dd', null, v)]));
  const down = body.downgraded_workers || [];
  $('policy-downgraded').textContent = down.length ? down.length + ' downgraded: ' + down.join(', ') : 'no worker downgraded';
  const decisions = body.recent_decisions || [];
  $('decisions').tBodies[0].replaceChildren(...decisions.slice(0, 12).map((d) =>
    el('tr', null,
      el('td', { title: d.decided_at }, age(d.decided_at)),
      el('td', { class: 'mono' }, d.subject),
      el('td', null, badge((d.decision && d.decision.decision) || 'decision')),
      el('td', { class: 'reason' }, d.reason))));
  show($('decisions-empty'), decisions.length === 0);
}

// The unfinished jobs (by status, so none is crowded out by finished ones) and the 100 most recently
// changed; any other job opens by its id.
async function refreshJobs() {
  const lists = await Promise.all([
    ...ACTIVE.map((s) => api('/v1/jobs?order=recent&status=' + s + '&limit=200')),
    api('/v1/jobs?order=recent&limit=100'),
  ]);
  const byId = new Map();
  for (const l of lists) for (const j of l.jobs || []) byId.set(j.job_id, j);
  const jobs = [...byId.values()].sort((a, b) => {
    const active = Number(ACTIVE.includes(b.status)) - Number(ACTIVE.includes(a.status));
    return active || Date.parse(b.updated_at || 0) - Date.parse(a.updated_at || 0);
  });
  state.jobs = jobs;
  const active = jobs.filter((j) => ACTIVE.includes(j.status)).length;
  $('jobs-count').textContent = active + ' unfinished · ' + jobs.length + ' shown';
  $('jobs').tBodies[0].replaceChildren(...jobs.slice(0, 60).map((j) =>
    el('tr', { 'data-job': j.job_id, class: j.job_id === state.selected ? 'selected' : '' },
      el('td', null, el('button', { type: 'button', class: 'link mono', onclick: () => select(j.job_id) }, j.job_id)),
      el('td', null, j.kind || '—'),
      el('td', { class: 'status' }, badge(j.status)),
      el('td', { class: 'num', title: 'updated ' + j.updated_at }, age(j.updated_at, true)))));
  show($('jobs-empty'), jobs.length === 0);
}

// ---- the selected job ----

function facts(job) {
  const t = job.timings_ms || {};
  const rows = [
    ['Status', badge(job.status)],
    ['Kind', job.kind || '—'],
    ['Attempt', job.attempt],
    ['Worker', job.worker_id || '—'],
    ['Submitted', clock(job.submitted_at)],
    ['Finished', clock(job.finished_at)],
    ['Total', ms(t.total)],
    ['Downgrade', job.downgrade || '—'],
  ];
  const p = job.progress;
  if (p && !TERMINAL.includes(job.status)) rows.push(['Progress', Math.round((p.fraction || 0) * 100) + '% ' + (p.stage || '')]);
  const stages = Object.entries(t).filter(([k]) => k !== 'total');
  if (stages.length) rows.push(['Stages', stages.map(([k, v]) => k + ' ' + ms(v)).join(' · '), 'wide']);
  return rows.flatMap(([k, v, wide]) => [el('dt', null, k), el('dd', { class: wide }, v)]);
}

function renderJob(job) {
  $('job-facts').replaceChildren(...facts(job));
  const cancel = $('job-cancel');
  cancel.disabled = TERMINAL.includes(job.status);
  const err = $('job-error');
  if (job.error) {
    const e = job.error;
    err.replaceChildren(el('b', null, e.code || 'error'), ': ', e.message || JSON.stringify(e),
      e.retryable !== undefined ? el('span', { class: 'muted' }, e.retryable ? ' (retryable)' : ' (not retryable)') : null);
  }
  show(err, Boolean(job.error));
  const outputs = Array.isArray(job.outputs) ? job.outputs : [];
  $('job-outputs').tBodies[0].replaceChildren(...outputs.map((o) =>
    el('tr', null,
      el('td', null, o.name),
      el('td', { class: 'mono' }, o.presigned_url ? el('a', { href: o.presigned_url, rel: 'noreferrer', target: '_blank' }, o.key) : o.key),
      el('td', { class: 'num' }, bytes(o.size)),
      el('td', { class: 'muted' }, o.content_type))));
  show($('job-outputs-empty'), outputs.length === 0);
}

function eventItem(id, status, body) {
  const parts = [];
  const p = body.progress;
  if (p) {
    parts.push(Math.round((p.fraction || 0) * 100) + '%');
    if (p.stage) parts.push(p.stage);
    if (p.message) parts.push(p.message);
    if (p.tokens != null) parts.push(p.tokens + ' tokens' + (p.tokens_per_s != null ? ' @ ' + p.tokens_per_s.toFixed(1) + '/s' : ''));
  }
  if (body.error) parts.push(body.error.code + ': ' + body.error.message);
  if (body.outputs && body.outputs.length) parts.push(body.outputs.length + ' output' + (body.outputs.length > 1 ? 's' : ''));
  if (body.execution) parts.push([body.execution.backend, body.execution.model, body.execution.device].filter(Boolean).join(' / '));
  if (body.timings_ms && body.timings_ms.total != null) parts.push('total ' + ms(body.timings_ms.total));
  const what = parts.join(' · ');
  return el('li', { 'data-event': id, 'data-status': status },
    el('span', { class: 'when mono', title: body.emitted_at }, clock(body.emitted_at)),
    badge(status),
    el('span', { class: 'muted', title: body.worker_id ? 'on ' + body.worker_id : null }, (body.attempt > 1 ? 'try ' + body.attempt + ' ' : '') + '#' + body.seq),
    el('span', { class: 'what', title: what }, what));
}

function streamState(word) {
  const s = $('job-stream');
  s.textContent = word;
  s.className = 'stream ' + word.replace(/[^a-z]/g, '');
}

function parseBlock(block) {
  const ev = { id: null, event: 'message', data: [] };
  for (const line of block.split('\n')) {
    if (line === '' || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'id') ev.id = value;
    else if (field === 'event') ev.event = value;
    else if (field === 'data') ev.data.push(value);
  }
  return ev.data.length ? ev : null;
}

async function streamEvents(jobId, controller) {
  streamState('connecting');
  const r = await fetch('/v1/jobs/' + encodeURIComponent(jobId) + '/events', { headers: headers(), signal: controller.signal, cache: 'no-store' });
  if (!r.ok) {
    let msg = r.status + ' ' + r.statusText;
    try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, msg);
  }
  streamState('live');
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf = (buf + value).replace(/\r\n?/g, '\n');
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const ev = parseBlock(buf.slice(0, end));
      buf = buf.slice(end + 2);
      if (ev && state.selected === jobId) onEvent(jobId, ev);
    }
  }
}

function onEvent(jobId, ev) {
  const id = ev.id || String(state.events.size);
  if (state.events.has(id)) return;
  state.events.add(id);
  let body;
  try {
    body = JSON.parse(ev.data.join('\n'));
  } catch (_) {
    body = {};
  }
  // Newest first: what just happened is always in view.
  $('events').prepend(eventItem(id, ev.event, body));
  // The row follows the stream between polls.
  const row = document.querySelector('#jobs tr[data-job="' + CSS.escape(jobId) + '"] td.status');
  if (row) row.replaceChildren(badge(ev.event === 'progress' ? 'running' : ev.event));
  if (TERMINAL.includes(ev.event)) loadJob(jobId);
}

async function loadJob(jobId) {
  try {
    const job = await api('/v1/jobs/' + encodeURIComponent(jobId));
    if (state.selected === jobId) renderJob(job);
  } catch (e) {
    if (state.selected === jobId) notice(explain(e, 'reading job ' + jobId), true);
  }
}

async function select(jobId) {
  if (state.stream) state.stream.abort();
  state.selected = jobId;
  state.events = new Set();
  state.armed = null;
  $('job-title').textContent = jobId;
  $('events').replaceChildren();
  $('job-outputs').tBodies[0].replaceChildren();
  show($('job-none'), false);
  show($('job-detail'), true);
  $('job-cancel').textContent = 'Cancel job';
  for (const tr of document.querySelectorAll('#jobs tr[data-job]')) tr.classList.toggle('selected', tr.dataset.job === jobId);
  await loadJob(jobId);
  const controller = new AbortController();
  state.stream = controller;
  try {
    await streamEvents(jobId, controller);
    if (state.selected === jobId) {
      streamState('ended');
      loadJob(jobId);
    }
  } catch (e) {
    if (controller.signal.aborted) return;
    streamState('error');
    notice(explain(e, 'the event stream of ' + jobId), true);
  }
}

function onCancel() {
  const jobId = state.selected;
  if (!jobId) return;
  const key = 'cancel:' + jobId;
  const button = $('job-cancel');
  if (!armedFor(key)) {
    state.armed = { key, until: Date.now() + ARM_MS };
    button.textContent = 'Confirm cancel';
    button.classList.add('armed');
    setTimeout(() => { if (!armedFor(key)) { button.textContent = 'Cancel job'; button.classList.remove('armed'); } }, ARM_MS + 50);
    return;
  }
  state.armed = null;
  button.textContent = 'Cancel job';
  button.classList.remove('armed');
  api('/v1/jobs/' + encodeURIComponent(jobId) + '/cancel', 'POST')
    .then(() => notice('cancel of ' + jobId + ' requested'))
    .catch((e) => notice(explain(e, 'cancel of ' + jobId), true));
}

// ---- the loop ----

async function refresh() {
  refreshHealth();
  const sections = [['workers', refreshWorkers], ['queues', refreshQueues], ['policy', refreshPolicy], ['jobs', refreshJobs]];
  const results = await Promise.allSettled(sections.map(([, f]) => f()));
  const failed = results.map((r, i) => [sections[i][0], r]).filter(([, r]) => r.status === 'rejected');
  const banner = $('banner');
  if (failed.length === 0) {
    show(banner, false);
  } else {
    const unauthorized = failed.some(([, r]) => r.reason && r.reason.status === 401);
    banner.textContent = unauthorized
      ? 'This hub needs a token to read: enter its read or admin token above (kept in this tab only).'
      : 'Could not load ' + failed.map(([n, r]) => n + ' (' + ((r.reason && r.reason.message) || r.reason) + ')').join(', ');
    show(banner, true);
  }
  $('updated').textContent = 'updated ' + new Date().toLocaleTimeString([], { hour12: false });
  document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
}

function start() {
  $('token').value = state.token;
  $('auth').addEventListener('submit', (e) => {
    e.preventDefault();
    state.token = $('token').value.trim();
    if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
    else sessionStorage.removeItem(TOKEN_KEY);
    notice(state.token ? 'token set for this tab' : 'token cleared');
    refresh();
    if (state.selected) select(state.selected);
  });
  $('forget').addEventListener('click', () => {
    state.token = '';
    $('token').value = '';
    sessionStorage.removeItem(TOKEN_KEY);
    notice('token forgotten');
    refresh();
  });
  $('job-lookup').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = $('job-id').value.trim();
    if (id) select(id);
  });
  $('job-cancel').addEventListener('click', onCancel);
  refresh();
  setInterval(refresh, REFRESH_MS);
}

start();
