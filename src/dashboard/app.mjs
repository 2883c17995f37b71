// The edgepush dashboard: live tiles over the binary WebSocket protocol, with
// reconnect (exponential backoff, full jitter), resume and staleness warnings.
import { decodeAll, encodeClient } from '/postcard.mjs';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get('token');
const BASE_MS = 500, CAP_MS = 30000, SPARK_POINTS = 60, PING_EVERY_MS = 5000;

const st = {
  ws: null, epoch: null, lastSeq: 0, heartbeatMs: 15000, lastRx: 0, attempt: 0, retryAt: 0, timer: null,
  subId: 0, filter: params.get('filter') || localStorage.getItem('edgepush.filter') || '#',
  names: new Map(), tiles: new Map(), touched: null, nonce: 0, pingSent: new Map(), rtt: null, broker: null,
  noticeUntil: 0,
};
// Exposed for tests and the curious.
window.edgepush = st;

function wsUrl() {
  const u = new URL('/ws', location.href);
  u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  if (token) u.searchParams.set('token', token);
  return u.href;
}

function send(msg) {
  if (st.ws && st.ws.readyState === WebSocket.OPEN) st.ws.send(encodeClient(msg));
}

function subscribe(resume) {
  st.subId += 1;
  st.touched = new Set();
  send({ type: 'Subscribe', id: st.subId, filters: [st.filter], resume });
}

function connect() {
  clearTimeout(st.timer);
  const ws = new WebSocket(wsUrl(), ['edgepush.v1']);
  ws.binaryType = 'arraybuffer';
  st.ws = ws;
  ws.onmessage = (e) => {
    st.lastRx = performance.now();
    let msgs;
    try { msgs = decodeAll(new Uint8Array(e.data)); } catch (err) { console.error('bad frame', err); ws.close(); return; }
    for (const m of msgs) handle(m);
  };
  ws.onclose = () => {
    if (st.ws !== ws) return;
    st.ws = null;
    // Full jitter: a random delay up to the capped exponential.
    const delay = Math.random() * Math.min(CAP_MS, BASE_MS * 2 ** st.attempt);
    st.attempt += 1;
    st.retryAt = performance.now() + delay;
    st.timer = setTimeout(connect, delay);
    render();
  };
}

function handle(m) {
  switch (m.type) {
    case 'Hello': {
      const sameEpoch = st.epoch !== null && String(st.epoch) === String(m.epoch);
      const resume = st.epoch !== null ? { epoch: st.epoch, last_seq: st.lastSeq } : null;
      if (!sameEpoch) st.lastSeq = 0;
      st.epoch = m.epoch;
      st.heartbeatMs = m.heartbeat_ms;
      st.broker = m.broker_up;
      st.attempt = 0;
      st.names.clear();
      $('server').textContent = m.server;
      subscribe(resume);
      ping();
      break;
    }
    case 'Topic': st.names.set(m.id, m.name); break;
    case 'Event': {
      const name = st.names.get(m.topic);
      if (name === undefined) break;
      if (Number(m.seq) > Number(st.lastSeq)) st.lastSeq = m.seq;
      if (st.touched) st.touched.add(name);
      update(name, m);
      break;
    }
    case 'Synced':
      if (m.id !== st.subId) break;
      if (Number(m.seq) > Number(st.lastSeq)) st.lastSeq = m.seq;
      // After a snapshot, tiles the answer did not cover are gone or outside the filter.
      if (m.mode === 'Snapshot' && st.touched) {
        for (const [name, t] of st.tiles) if (!st.touched.has(name)) { t.el.remove(); st.tiles.delete(name); }
      }
      st.touched = null;
      break;
    case 'Broker': st.broker = m.up; break;
    case 'Pong': {
      const sent = st.pingSent.get(m.nonce);
      if (sent !== undefined) { st.rtt = performance.now() - sent; st.pingSent.delete(m.nonce); }
      break;
    }
    case 'Lagged':
      notice(`This screen fell behind: ${m.skipped} updates skipped; showing the latest values.`);
      break;
    case 'Error': notice(`Server refused request ${m.req}: ${m.code} ${m.message}`); break;
  }
  render();
}

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
  t = { el, points: [], ts: 0, seen: 0 };
  st.tiles.set(name, t);
  $('empty').hidden = true;
  return t;
}

function fmt(x) {
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  return a !== 0 && (a >= 1e6 || a < 1e-3) ? x.toExponential(3) : String(Math.round(x * 1000) / 1000);
}

function update(name, m) {
  const t = tile(name), v = m.value;
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
    if (t.points.length > SPARK_POINTS) t.points.shift();
    spark(t);
  }
}

function spark(t) {
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

// Connection state: live, stale (open but silent past 2.5 heartbeats), reconnecting, offline.
function connState(now) {
  if (!navigator.onLine && !st.ws) return ['offline', 'offline'];
  if (!st.ws) return ['reconnecting', `reconnecting in ${Math.max(0, Math.ceil((st.retryAt - now) / 1000))} s`];
  if (st.ws.readyState !== WebSocket.OPEN || st.epoch === null) return ['connecting', 'connecting'];
  if (now - st.lastRx > 2.5 * st.heartbeatMs) return ['stale', 'no data'];
  return ['live', 'live'];
}

function render() {
  const now = performance.now();
  const [state, label] = connState(now);
  const conn = $('conn');
  conn.dataset.state = state;
  conn.textContent = label;
  const b = $('broker');
  b.dataset.state = st.broker === null ? 'unknown' : st.broker ? 'up' : 'down';
  b.textContent = st.broker === null ? 'broker ?' : st.broker ? 'broker up' : 'broker down';
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
  const f = $('filter').value.trim();
  if (!f) return;
  st.filter = f;
  localStorage.setItem('edgepush.filter', f);
  send({ type: 'Unsubscribe', id: st.subId });
  for (const t of st.tiles.values()) t.el.remove();
  st.tiles.clear();
  $('empty').hidden = false;
  subscribe(null);
});
// Round trip through the server's request queue, which WebSocket pings cannot show.
function ping() {
  if (!st.ws || st.ws.readyState !== WebSocket.OPEN) return;
  st.nonce = (st.nonce + 1) >>> 0;
  st.pingSent.clear();
  st.pingSent.set(st.nonce, performance.now());
  send({ type: 'Ping', nonce: st.nonce });
}
setInterval(ping, PING_EVERY_MS);
setInterval(render, 250);
addEventListener('online', () => { if (!st.ws) connect(); });
connect();
