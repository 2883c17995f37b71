// The edgepush dashboard: live tiles over the binary WebSocket protocol. The
// connection (reconnect with backoff and full jitter, resume, staleness) is the
// client package's Follower, served by the gateway at /client/. Labels, units,
// thresholds, groups and controls come from the config's [dashboard]
// (/dashboard.json); /access says what /ws would decide, which a browser is
// never told when an upgrade is refused.
import { Follower } from '/client/follower.mjs';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get('token');
const SPARK_POINTS = 60, PING_EVERY_MS = 5000;

const st = {
  filter: params.get('filter') || localStorage.getItem('edgepush.filter') || '#',
  tiles: new Map(), groups: new Map(), rtt: null, noticeUntil: 0,
  cfg: { title: 'edgepush', groups: [], rules: [] }, publish: [], block: null, hello: false,
};
// The follower, once /access says the page may connect.
let f = null;

// What the page says when /access refuses ({r}: the server's reason, {n}: seconds to the retry).
const SAY = {
  'token-required': 'This gateway needs an access token: open the page with ?token=…',
  'token-invalid': 'The access token was refused ({r}): open the page with a valid ?token=…',
  'token-expired': 'The access token has expired: open the page with a new ?token=…',
  'origin-not-allowed': 'This origin is not allowed: the gateway accepts pages from the origins in its [auth] allowed-origins',
  full: 'The gateway is full, retrying in {n} s',
  'shutting-down': 'The gateway is restarting, retrying in {n} s',
  'rate-limited': 'Too many connections from here ({r}), retrying in {n} s',
  unreachable: 'Cannot reach the gateway, retrying in {n} s',
};

// A gateway URL, with the page's token as a bearer header for fetch.
const gw = (path) => fetch(new URL(path, location.href), { cache: 'no-store', headers: token == null ? {} : { Authorization: `Bearer ${token}` } });

async function access() {
  try {
    return await (await gw(`/access?origin=${encodeURIComponent(location.origin)}`)).json();
  } catch {
    return { access: 'unreachable', retry_after_s: 5 };
  }
}

function blocked(a, retryAt) {
  st.block = { text: (SAY[a.access] ?? SAY.unreachable).replace('{r}', a.reason), retryAt };
  render();
}

// Asks /access first; connects once it says ok, retries when it says when, else says why.
async function start() {
  const a = await access();
  if (a.access !== 'ok') {
    const s = a.retry_after_s;
    blocked(a, s ? Date.now() + s * 1000 : 0);
    if (s) setTimeout(start, s * 1000);
    return;
  }
  st.block = null;
  st.publish = a.publish;
  try {
    const r = await gw('/dashboard.json');
    if (r.ok) st.cfg = await r.json();
  } catch { /* the defaults */ }
  document.title = $('title').textContent = st.cfg.title;
  // A control on a topic that has no value yet still shows.
  pin();
  connect();
}

// A control on a topic that has no value yet still shows.
function pin() {
  for (const r of st.cfg.rules) if (r.control && !/[+#]/.test(r.filter) && matches(st.filter, r.filter) && may(r.publish_topic ?? r.filter)) tile(r.filter).pinned = true;
}

function connect() {
  f = new Follower(new URL('/ws', location.href).href, { filters: [st.filter], token });
  // Exposed for tests and the curious: the follower (ws, lastSeq, epoch, state, ...).
  window.edgepush = f;
  f.on('connected', (h) => { st.hello = true; st.block = null; $('server').textContent = h.server; ping(); });
  f.on('event', update);
  // After a snapshot, tiles the answer did not cover are gone or outside the filter.
  f.on('snapshot', ({ topics }) => {
    const keep = new Set(topics);
    for (const [name, t] of st.tiles) if (!keep.has(name) && !t.pinned) { t.el.remove(); st.tiles.delete(name); }
  });
  f.on('synced', (m) => m.mode === 'Snapshot' && fillHistory());
  f.on('lagged', (m) => notice(`This screen fell behind: ${m.skipped} updates skipped; showing the latest values.`));
  f.on('error', (e) => {
    if (e.kind === 'server' && st.history > 0 && e.code === 429) return;
    if (e.kind === 'server') notice(`Server refused request ${e.req}: ${e.code} ${e.message}`);
    else console.error('edgepush:', e.message);
  });
  // A connect that never reached Hello: ask /access why. Refused for good: stop and say so.
  f.on('disconnected', async () => {
    if (st.hello) return void (st.hello = false);
    const a = await access();
    if (a.access === 'ok' || a.access === 'unreachable') return void (st.block = null);
    if (a.retry_after_s) blocked(a, f.retryAt);
    else { f.close(); blocked(a, 0); }
  });
  for (const t of ['connected', 'event', 'synced', 'broker', 'stale', 'disconnected']) f.addEventListener(t, () => render());
}

function notice(text) {
  $('notice').textContent = text;
  $('notice').hidden = false;
  st.noticeUntil = performance.now() + 8000;
}

// Whether MQTT filter `f` matches topic `t` (wildcards at the start skip $ topics).
function matches(f, t) {
  if (t[0] === '$' && /^[+#]/.test(f)) return false;
  const a = f.split('/'), b = t.split('/');
  for (let i = 0; i < a.length; i++) {
    if (a[i] === '#') return true;
    if (i >= b.length || (a[i] !== '+' && a[i] !== b[i])) return false;
  }
  return a.length === b.length;
}

// Whether the token may publish to `topic` (its scopes, as /access said).
const may = (topic) => st.publish.some((p) => matches(p, topic));

// A topic's settings: every matching rule gives the keys it sets, the earlier rule first.
function settings(topic) {
  const s = { order: Infinity };
  st.cfg.rules.forEach((r, i) => {
    if (!matches(r.filter, topic)) return;
    s.order = Math.min(s.order, i);
    for (const k in r) if (!(k in s)) s[k] = r[k];
  });
  return s;
}

// The grid of a group, in the config's order; topics without one go to "Other".
function group(name) {
  const order = st.cfg.groups;
  if (!order.includes(name)) name = '';
  let g = st.groups.get(name);
  if (g) return g;
  const el = document.createElement('section');
  el.className = 'group';
  el.innerHTML = '<h2></h2><div class="grid"></div>';
  el.querySelector('h2').textContent = name || (order.length ? 'Other' : '');
  g = { el, grid: el.lastChild, rank: name ? order.indexOf(name) : order.length };
  st.groups.set(name, g);
  const after = [...st.groups.values()].sort((x, y) => x.rank - y.rank).find((x) => x.rank > g.rank);
  $('tiles').insertBefore(el, after ? after.el : null);
  return g;
}

function tile(name) {
  let t = st.tiles.get(name);
  if (t) return t;
  const s = settings(name), el = document.createElement('section');
  el.className = 'tile';
  el.dataset.topic = name;
  el.innerHTML = '<div class="name"></div><div class="reading"><span class="value"></span><span class="unit"></span></div><div class="fields"></div><div class="bar" hidden><i></i></div><canvas width="240" height="40"></canvas><div class="age"><span></span><span class="topic"></span></div>';
  el.querySelector('.name').textContent = s.label ?? name;
  el.querySelector('.topic').textContent = s.label ? name : '';
  t = { el, name, s, points: [], at: [], ts: 0, seen: 0, key: [s.order, name] };
  // Tiles in rule order, then by name.
  const g = group(s.group), k = (o) => o.key[0] - t.key[0] || (o.key[1] > name ? 1 : -1);
  g.grid.insertBefore(el, [...g.grid.children].find((e) => k(st.tiles.get(e.dataset.topic)) > 0) ?? null);
  g.el.style.setProperty('--n', g.grid.children.length);
  st.tiles.set(name, t);
  control(t);
  $('empty').hidden = true;
  return t;
}

// A switch or a number input, where the rule asks for one and the token may publish there.
function control(t) {
  const r = t.s, topic = r.publish_topic ?? t.name;
  if (!r.control || !may(topic)) return;
  const box = document.createElement('form');
  box.className = 'ctl';
  box.innerHTML = r.control === 'switch'
    ? '<label class="switch"><input type="checkbox"><span></span></label><output></output>'
    : '<input type="number"><button>Set</button><output></output>';
  const input = box.querySelector('input'), out = box.querySelector('output');
  const send = (payload) => {
    out.dataset.ack = 'pending';
    out.textContent = '…';
    f.publish(topic, payload).then(
      () => { out.dataset.ack = 'ok'; out.textContent = 'sent'; },
      (e) => { out.dataset.ack = 'error'; out.textContent = e.message; });
  };
  input.setAttribute('aria-label', `${r.label ?? t.name}: ${topic}`);
  if (r.control === 'switch') input.onchange = () => send(input.checked ? r.payload_on ?? '1' : r.payload_off ?? '0');
  else {
    if (r.min != null) input.min = r.min;
    if (r.max != null) input.max = r.max;
    input.step = r.decimals != null ? 10 ** -r.decimals : 'any';
  }
  box.onsubmit = (e) => { e.preventDefault(); if (input.value !== '' && input.type === 'number') send(input.value); };
  t.el.querySelector('canvas').before(box);
  t.ctl = input;
}

function fmt(x, decimals) {
  if (!Number.isFinite(x)) return String(x);
  if (decimals != null) return x.toFixed(decimals);
  const a = Math.abs(x);
  return a !== 0 && (a >= 1e6 || a < 1e-3) ? x.toExponential(3) : String(Math.round(x * 1000) / 1000);
}

// The level a number is at by the rule's thresholds: 'alarm', 'warning' or ''.
function level(s, x) {
  if (x > s.alarm_above || x < s.alarm_below) return 'alarm';
  return x > s.warning_above || x < s.warning_below ? 'warning' : '';
}

function update(m) {
  const t = tile(m.topic), v = m.value, s = t.s;
  const valueEl = t.el.querySelector('.value'), fieldsEl = t.el.querySelector('.fields');
  let num = null;
  valueEl.textContent = '';
  fieldsEl.textContent = '';
  if (v.kind === 'Number') { valueEl.textContent = fmt(v.value, s.decimals); num = v.value; }
  else if (v.kind === 'Fields') {
    for (const [k, x] of v.fields) {
      const a = document.createElement('span'), b = document.createElement('span');
      a.textContent = k; b.textContent = fmt(x, s.decimals);
      fieldsEl.append(a, b);
    }
    if (v.fields.length) num = v.fields[0][1];
  } else if (v.kind === 'Text') valueEl.textContent = v.text;
  else valueEl.textContent = `${v.bytes.length} bytes`;
  t.el.querySelector('.reading').hidden = v.kind === 'Fields';
  t.el.querySelector('.unit').textContent = num !== null && s.unit ? s.unit : '';
  const lv = num === null ? '' : level(s, num);
  t.el.classList.toggle('warning', lv === 'warning');
  t.el.classList.toggle('alarm', lv === 'alarm');
  const bar = t.el.querySelector('.bar');
  bar.hidden = num === null || s.min == null || s.max == null;
  if (!bar.hidden) bar.firstChild.style.width = `${Math.min(100, Math.max(0, (100 * (num - s.min)) / (s.max - s.min)))}%`;
  if (t.ctl?.type === 'checkbox') t.ctl.checked = num !== null ? num !== 0 : ['on', 'true', String(s.payload_on ?? '1').toLowerCase()].includes(String(v.text).trim().toLowerCase());
  else if (t.ctl && document.activeElement !== t.ctl && num !== null) t.ctl.value = num;
  t.ts = Number(m.ts_ms);
  t.seen = performance.now();
  if (num !== null) pushPoint(t, num, [Number(m.ts_ms), Number(m.seq)]);
}

// Pushes one value into a tile's sparkline (and draws it); `at` is its [ts, seq].
function pushPoint(t, num, at) {
  t.points.push(num);
  t.at.push(at);
  if (t.points.length > SPARK_POINTS) { t.points.shift(); t.at.shift(); }
  spark(t);
}

// History on first paint (PROTOCOL.md §6.13): after a snapshot, the last values of
// each topic from the server's ring, merged with the live ones by (ts, seq): seqs
// start again after a server restart, its clock does not.
async function fillHistory() {
  st.history = (st.history ?? 0) + 1;
  const answer = await f.history(f.filters, SPARK_POINTS).catch(() => null);
  st.history--;
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

// Connection state: refused for good (the banner says why), live, stale (silent
// past 2.5 heartbeats), connecting, reconnecting, offline.
function connState(now) {
  if (st.block && !st.block.retryAt) return ['refused', 'refused'];
  if (!f) return ['connecting', 'connecting'];
  if (!navigator.onLine && !f.ws) return ['offline', 'offline'];
  if (f.state === 'reconnecting') return ['reconnecting', `reconnecting in ${Math.max(0, Math.ceil((f.retryAt - now) / 1000))} s`];
  if (f.state === 'stale' || (f.ws && now - f.lastRx > 2.5 * f.heartbeatMs)) return ['stale', 'no data'];
  if (f.state !== 'live') return ['connecting', 'connecting'];
  return ['live', 'live'];
}

function render() {
  const now = performance.now(), wall = Date.now();
  const [state, label] = connState(wall);
  const conn = $('conn');
  conn.dataset.state = state;
  conn.textContent = label;
  const b = $('broker'), up = f?.broker ?? null;
  b.dataset.state = up === null ? 'unknown' : up ? 'up' : 'down';
  b.textContent = up === null ? 'broker ?' : up ? 'broker up' : 'broker down';
  $('banner').hidden = state === 'live';
  $('banner').textContent = st.block ? st.block.text.replace('{n}', Math.max(0, Math.ceil((st.block.retryAt - wall) / 1000)))
    : state === 'stale' ? 'Data is not live: nothing received from the gateway' : 'Data is not live: disconnected from the gateway';
  $('rtt').textContent = st.rtt === null ? '' : `rtt ${Math.round(st.rtt)} ms`;
  if (st.noticeUntil && now > st.noticeUntil) { $('notice').hidden = true; st.noticeUntil = 0; }
  for (const t of st.tiles.values()) {
    t.el.querySelector('.age span').textContent = t.ts ? age(wall - t.ts) : '';
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
  pin();
  f?.setFilters([v]);
});
// Round trip through the server's request queue, which WebSocket pings cannot show.
function ping() {
  if (f?.state === 'live') f.ping().then((ms) => { st.rtt = ms; }, () => {});
}
setInterval(ping, PING_EVERY_MS);
setInterval(render, 250);
addEventListener('online', () => f?.retryNow());
start();
