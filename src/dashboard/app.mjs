// The edgepush dashboard: live tiles over the binary WebSocket protocol. The
// connection (reconnect with backoff and full jitter, resume, staleness) is the
// client package's Follower, served by the gateway at /client/.
import { Follower } from '/client/follower.mjs';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const SPARK_POINTS = 60, PING_EVERY_MS = 5000;

const st = {
  filter: params.get('filter') || localStorage.getItem('edgepush.filter') || '#',
  tiles: new Map(), rtt: null, noticeUntil: 0,
};
const wsUrl = new URL('/ws', location.href);
const f = new Follower(wsUrl.href, { filters: [st.filter], token: params.get('token') });
// Exposed for tests and the curious: the follower (ws, lastSeq, epoch, state, ...).
window.edgepush = f;

f.on('connected', (h) => { $('server').textContent = h.server; ping(); });
f.on('event', update);
// After a snapshot, tiles the answer did not cover are gone or outside the filter.
f.on('snapshot', ({ topics }) => {
  const keep = new Set(topics);
  for (const [name, t] of st.tiles) if (!keep.has(name)) { t.el.remove(); st.tiles.delete(name); }
});
f.on('synced', (m) => m.mode === 'Snapshot' && fillHistory());
f.on('lagged', (m) => notice(`This screen fell behind: ${m.skipped} updates skipped; showing the latest values.`));
f.on('error', (e) => {
  if (e.kind === 'server' && st.history && e.code === 429) return;
  if (e.kind === 'server') notice(`Server refused request ${e.req}: ${e.code} ${e.message}`);
  else console.error('edgepush:', e.message);
});
for (const t of ['connected', 'event', 'synced', 'broker', 'stale', 'disconnected']) f.addEventListener(t, () => render());

function notice(text) {
  $('notice').textContent = text;
  $('notice').hidden = false;
  st.noticeUntil = performance.now() + 8000;
}

function tile(name) {
  let t = st.tiles.get(name);
  if (t) return t;
  const el = document.createElement('section');
  el.className = 'tile';
  el.dataset.topic = name;
  el.innerHTML = '<div class="name"></div><div class="value"></div><div class="fields"></div><canvas width="240" height="40"></canvas><div class="age"></div>';
  el.querySelector('.name').textContent = name;
  // Keep tiles in name order.
  const after = [...st.tiles.keys()].sort().find((n) => n > name);
  $('tiles').insertBefore(el, after ? st.tiles.get(after).el : null);
  t = { el, points: [], at: [], ts: 0, seen: 0 };
  st.tiles.set(name, t);
  $('empty').hidden = true;
  return t;
}

function fmt(x) {
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  return a !== 0 && (a >= 1e6 || a < 1e-3) ? x.toExponential(3) : String(Math.round(x * 1000) / 1000);
}

function update(m) {
  const t = tile(m.topic), v = m.value;
  const valueEl = t.el.querySelector('.value'), fieldsEl = t.el.querySelector('.fields');
  let num = null;
  valueEl.textContent = '';
  fieldsEl.textContent = '';
  if (v.kind === 'Number') { valueEl.textContent = fmt(v.value); num = v.value; }
  else if (v.kind === 'Fields') {
    for (const [k, x] of v.fields) {
      const a = document.createElement('span'), b = document.createElement('span');
      a.textContent = k; b.textContent = fmt(x);
      fieldsEl.append(a, b);
    }
    if (v.fields.length) num = v.fields[0][1];
  } else if (v.kind === 'Text') valueEl.textContent = v.text;
  else valueEl.textContent = `${v.bytes.length} bytes`;
  valueEl.hidden = v.kind === 'Fields';
  t.ts = Number(m.ts_ms);
  t.seen = performance.now();
  if (num !== null) {
    t.points.push(num);
    t.at.push([Number(m.ts_ms), Number(m.seq)]);
    if (t.points.length > SPARK_POINTS) { t.points.shift(); t.at.shift(); }
    spark(t);
  }
}

// History on first paint (PROTOCOL.md §6.13): after a snapshot, the last values of
// each topic from the server's ring, merged with the live ones by (ts, seq): seqs
// start again after a server restart, its clock does not.
async function fillHistory() {
  st.history = true;
  const answer = await f.history(f.filters, SPARK_POINTS).catch(() => null);
  st.history = false;
  for (const { topic, points } of answer?.topics ?? []) {
    const t = st.tiles.get(topic);
    if (!t) continue;
    const by = new Map(t.at.map((a, i) => [a.join(), [a, t.points[i]]]));
    for (const p of points) {
      const v = p.value, n = v.kind === 'Number' ? v.value : v.kind === 'Fields' && v.fields.length ? v.fields[0][1] : null;
      const a = [Number(p.ts_ms), Number(p.seq)];
      if (n !== null) by.set(a.join(), [a, n]);
    }
    const all = [...by.values()].sort(([a], [b]) => a[0] - b[0] || a[1] - b[1]).slice(-SPARK_POINTS);
    t.at = all.map(([a]) => a);
    t.points = all.map(([, n]) => n);
    if (t.points.length) spark(t);
  }
}

function spark(t) {
  t.el.dataset.points = t.points.length;
  const c = t.el.querySelector('canvas'), g = c.getContext('2d');
  g.clearRect(0, 0, c.width, c.height);
  if (t.points.length < 2) return;
  const lo = Math.min(...t.points), hi = Math.max(...t.points), span = hi - lo || 1;
  g.strokeStyle = '#5aa9e6';
  g.lineWidth = 2;
  g.beginPath();
  t.points.forEach((p, i) => {
    const x = (i / (t.points.length - 1)) * c.width, y = c.height - 3 - ((p - lo) / span) * (c.height - 6);
    i ? g.lineTo(x, y) : g.moveTo(x, y);
  });
  g.stroke();
}

function age(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  return s < 60 ? `${s} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}

// Connection state: live, stale (silent past 2.5 heartbeats), connecting, reconnecting, offline.
function connState(now) {
  if (!navigator.onLine && !f.ws) return ['offline', 'offline'];
  if (f.state === 'reconnecting') return ['reconnecting', `reconnecting in ${Math.max(0, Math.ceil((f.retryAt - now) / 1000))} s`];
  if (f.state === 'stale' || (f.ws && now - f.lastRx > 2.5 * f.heartbeatMs)) return ['stale', 'no data'];
  if (f.state !== 'live') return ['connecting', 'connecting'];
  return ['live', 'live'];
}

function render() {
  const now = performance.now();
  const [state, label] = connState(Date.now());
  const conn = $('conn');
  conn.dataset.state = state;
  conn.textContent = label;
  const b = $('broker');
  b.dataset.state = f.broker === null ? 'unknown' : f.broker ? 'up' : 'down';
  b.textContent = f.broker === null ? 'broker ?' : f.broker ? 'broker up' : 'broker down';
  $('banner').hidden = state === 'live';
  $('banner').textContent = state === 'stale' ? 'Data is not live: nothing received from the gateway' : 'Data is not live: disconnected from the gateway';
  $('rtt').textContent = st.rtt === null ? '' : `rtt ${Math.round(st.rtt)} ms`;
  if (st.noticeUntil && now > st.noticeUntil) { $('notice').hidden = true; st.noticeUntil = 0; }
  const wall = Date.now();
  for (const t of st.tiles.values()) {
    t.el.querySelector('.age').textContent = age(wall - t.ts);
    t.el.classList.toggle('fresh', now - t.seen < 1000);
  }
}

$('filter').value = st.filter;
$('filter-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const v = $('filter').value.trim();
  if (!v) return;
  st.filter = v;
  localStorage.setItem('edgepush.filter', v);
  for (const t of st.tiles.values()) t.el.remove();
  st.tiles.clear();
  $('empty').hidden = false;
  f.setFilters([v]);
});
// Round trip through the server's request queue, which WebSocket pings cannot show.
function ping() {
  if (f.state === 'live') f.ping().then((ms) => { st.rtt = ms; }, () => {});
}
setInterval(ping, PING_EVERY_MS);
setInterval(render, 250);
addEventListener('online', () => f.retryNow());
