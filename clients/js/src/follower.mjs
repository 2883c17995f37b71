// A subscription to an edgepush server that survives reconnects (docs/PROTOCOL.md §9),
// a port of the Rust client's Follower: exponential backoff with full jitter, resume
// from (epoch, last seq), staleness at 2.5 heartbeat intervals. An EventTarget: see
// the package README for its events.
import { decodeAll, encodeClient, DecodeError } from './codec.mjs';

export const SUBPROTOCOL = 'edgepush.v1';
// Seqs of this epoch already delivered, kept to recognize an answer's repeats (§9.5).
const SEEN_MAX = 16384;

// The delay before reconnect attempt `attempt`: uniform in [0, min(cap, base * 2^attempt)].
export function backoffDelay(attempt, base = 500, cap = 30000, random = Math.random) {
  return random() * Math.min(cap, base * 2 ** Math.min(attempt, 30));
}

// `url` with `?token=` (percent-encoded) in place of any token it had.
export function withToken(url, token) {
  if (token == null) return url;
  const u = new URL(url);
  u.searchParams.delete('token');
  u.search = (u.search ? u.search + '&' : '?') + 'token=' + encodeURIComponent(token);
  return u.href;
}

const cmp = (a, b) => (BigInt(a) > BigInt(b) ? 1 : BigInt(a) < BigInt(b) ? -1 : 0);

export class Follower extends EventTarget {
  // url: ws:// or wss:// (http(s):// is turned into ws(s)://). options: filters (default
  // ['#']), token, base and cap (backoff, ms; 500 and 30000), WebSocket (a constructor).
  constructor(url, options = {}) {
    super();
    const u = new URL(url);
    if (u.protocol === 'http:' || u.protocol === 'https:') u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    this.url = withToken(u.href, options.token);
    this.filters = [...(options.filters ?? ['#'])];
    this.base = options.base ?? 500;
    this.cap = options.cap ?? 30000;
    this.random = options.random ?? Math.random;
    this.WebSocket = options.WebSocket ?? null;
    this.ws = null;
    this.epoch = null;
    // The resume point: the seq of the last Synced or of a live event, never of an
    // event inside a Subscribe answer (an answer cut off half-way is asked for again).
    this.lastSeq = 0;
    this.answering = false;
    this.subId = 0;
    this.heartbeatMs = 15000;
    this.server = null;
    this.broker = null;
    this.lastRx = 0;
    this.attempt = 0;
    this.retryAt = 0;
    this.state = 'connecting';
    this.names = new Map();
    this.stats = { connects: 0, replays: 0, snapshots: 0, lagged: 0, losses: 0, resent: 0 };
    this._req = 0;
    this._seen = new Set();
    this._touched = null;
    this._pending = new Map();
    // Past values of the History answer in progress (an answer is contiguous, §6.13).
    this._past = [];
    this._timer = null;
    this._watch = null;
    this._closed = false;
    this._connecting = false;
    this._connect();
  }

  // Calls fn(detail) for every event of `type`; returns a function that stops it.
  on(type, fn) {
    const h = (e) => fn(e.detail);
    this.addEventListener(type, h);
    return () => this.removeEventListener(type, h);
  }

  _emit(type, detail) {
    const e = typeof CustomEvent === 'function' ? new CustomEvent(type, { detail }) : Object.assign(new Event(type), { detail });
    this.dispatchEvent(e);
  }

  async _ctor() {
    if (this.WebSocket) return this.WebSocket;
    if (typeof globalThis.WebSocket === 'function') return globalThis.WebSocket;
    try {
      const ws = 'ws';
      return (this.WebSocket = (await import(ws)).default);
    } catch {
      throw new Error('no WebSocket: install the `ws` package or pass options.WebSocket');
    }
  }

  async _connect() {
    clearTimeout(this._timer);
    this._timer = null;
    if (this._closed || this._connecting) return;
    let WS;
    this._connecting = true;
    try {
      WS = await this._ctor();
    } catch (err) {
      this._emit('error', { kind: 'setup', message: err.message });
      return this.close();
    } finally {
      this._connecting = false;
    }
    if (this._closed) return;
    this.state = 'connecting';
    let ws;
    try {
      ws = new WS(this.url, [SUBPROTOCOL]);
    } catch (err) {
      return this._lost(`cannot connect: ${err.message}`);
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.names = new Map();
    this._past = [];
    this.lastRx = Date.now();
    this._hello = false;
    // Node's `ws` says why a handshake failed (e.g. "Unexpected server response: 401");
    // a browser never does.
    let why = '';
    ws.onerror = (e) => { why = e?.message ? `: ${e.message}` : ''; };
    ws.onmessage = (e) => this.ws === ws && this._frame(e.data);
    ws.onclose = (e) => this.ws === ws && this._lost(`closed (${e.code}${e.reason ? ' ' + e.reason : ''})${why}`, e.code);
    clearInterval(this._watch);
    this._watch = setInterval(() => this._check(), 100);
  }

  // Silence past 2.5 heartbeats (or no Hello as long after connecting): reconnect.
  _check() {
    if (!this.ws) return;
    const limit = 2.5 * Math.max(this.heartbeatMs, 100), silent = Date.now() - this.lastRx;
    if (silent <= limit) return;
    if (this._hello) {
      this.state = 'stale';
      this._emit('stale', { silentMs: silent });
      this._lost(`nothing from the server for ${silent} ms`);
    } else this._lost(`no Hello within ${silent} ms`);
  }

  _frame(data) {
    this.lastRx = Date.now();
    if (typeof data === 'string') return this._protocolError('a text message');
    let msgs;
    try {
      msgs = decodeAll(new Uint8Array(data));
    } catch (err) {
      return this._protocolError(err instanceof DecodeError ? `undecodable message: ${err.message}` : String(err));
    }
    for (const m of msgs) {
      if (!this._hello && m.type !== 'Hello') return this._protocolError(`${m.type} before Hello`);
      this._emit('message', m);
      if (this.ws === null) return;
      this._handle(m);
      if (this.ws === null) return;
    }
  }

  _protocolError(message) {
    this._emit('error', { kind: 'protocol', message });
    this._lost(message, 1002);
  }

  _handle(m) {
    switch (m.type) {
      case 'Hello': {
        if (this._hello) return this._protocolError('a second Hello');
        this._hello = true;
        const newEpoch = this.epoch === null || String(this.epoch) !== String(m.epoch);
        if (newEpoch) {
          // A restarted server: its seqs start again; no resume is offered.
          this.epoch = m.epoch;
          this.lastSeq = 0;
          this._seen.clear();
        }
        this.heartbeatMs = m.heartbeat_ms;
        this.server = m.server;
        this.broker = m.broker_up;
        this.state = 'live';
        const resumed = cmp(this.lastSeq, 0) > 0;
        this._subscribe(resumed ? { epoch: m.epoch, last_seq: this.lastSeq } : null);
        this.stats.connects += 1;
        this._emit('connected', { epoch: m.epoch, resumed, newEpoch, server: m.server, heartbeat_ms: m.heartbeat_ms, broker_up: m.broker_up });
        break;
      }
      case 'Topic': this.names.set(m.id, m.name); break;
      case 'Event': {
        const topic = this.names.get(m.topic) ?? `#${m.topic}`;
        const key = String(m.seq);
        if (this.answering) this._touched?.add(topic);
        else if (cmp(m.seq, this.lastSeq) > 0) this.lastSeq = m.seq;
        if (this._seen.has(key)) {
          this.stats.resent += 1;
          break;
        }
        this._seen.add(key);
        if (this._seen.size > SEEN_MAX) this._seen.delete(this._seen.values().next().value);
        this._emit('event', { topic, seq: m.seq, ts_ms: m.ts_ms, value: m.value, inAnswer: this.answering });
        break;
      }
      case 'Synced': {
        if (m.id !== this.subId) break;
        if (cmp(m.seq, this.lastSeq) > 0) this.lastSeq = m.seq;
        this.answering = false;
        // A full sync resets the backoff.
        this.attempt = 0;
        this.stats[m.mode === 'Replay' ? 'replays' : 'snapshots'] += 1;
        this._emit('synced', { id: m.id, seq: m.seq, mode: m.mode });
        if (m.mode === 'Snapshot') this._emit('snapshot', { seq: m.seq, topics: [...this._touched] });
        this._touched = null;
        break;
      }
      case 'Lagged':
        this.stats.lagged += 1;
        this._emit('lagged', { skipped: m.skipped });
        break;
      case 'Broker':
        this.broker = m.up;
        this._emit('broker', { up: m.up });
        break;
      case 'Past': {
        const past = { topic: this.names.get(m.topic) ?? `#${m.topic}`, points: m.points };
        this._past.push(past);
        this._emit('past', past);
        break;
      }
      case 'HistoryDone': {
        const answer = { id: m.id, seq: m.seq, truncated: m.truncated, topics: this._past };
        this._past = [];
        this._settle(m.id, null, 'history', answer);
        break;
      }
      case 'Ack': this._settle(m.req, null); break;
      case 'Pong': this._settle(m.nonce, null, 'ping'); break;
      case 'Error':
        this._settle(m.req, m);
        this._settle(m.req, m, 'history');
        this._emit('error', { kind: 'server', code: m.code, req: m.req, message: m.message });
        break;
    }
  }

  _subscribe(resume) {
    this.subId = this._next();
    this.answering = true;
    this._touched = new Set();
    this._send({ type: 'Subscribe', id: this.subId, filters: this.filters, resume });
  }

  _next() {
    this._req = (this._req % 0xffffffff) + 1;
    return this._req;
  }

  _send(m) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    this.ws.send(encodeClient(m));
    return true;
  }

  _settle(req, err, kind = 'publish', value) {
    const p = this._pending.get(`${kind}:${req}`);
    if (!p) return;
    this._pending.delete(`${kind}:${req}`);
    if (err) p.reject(Object.assign(new Error(`${err.code} ${err.message}`), { code: err.code }));
    else p.resolve(kind === 'ping' ? Date.now() - p.at : value);
  }

  _wait(kind, id, msg) {
    return new Promise((resolve, reject) => {
      if (!this._send(msg)) return reject(new Error('not connected'));
      this._pending.set(`${kind}:${id}`, { resolve, reject, at: Date.now() });
    });
  }

  // Ends the connection; unless closed, reconnects after the backoff delay.
  _lost(why, code, polite = false) {
    const ws = this.ws;
    clearInterval(this._watch);
    this._watch = null;
    this.ws = null;
    this.answering = false;
    this._touched = null;
    if (ws) {
      ws.onmessage = ws.onclose = null;
      // A silent server never answers a close handshake: ws's terminate() does not wait.
      try { polite || !ws.terminate ? ws.close(1000) : ws.terminate(); } catch { /* already closed */ }
    }
    for (const p of this._pending.values()) p.reject(new Error(`connection lost: ${why}`));
    this._pending.clear();
    if (this._closed) return;
    this.stats.losses += 1;
    const retryIn = backoffDelay(this.attempt, this.base, this.cap, this.random);
    this.attempt += 1;
    this.retryAt = Date.now() + retryIn;
    this.state = 'reconnecting';
    this._timer = setTimeout(() => this._connect(), retryIn);
    this._emit('disconnected', { reason: why, code: code ?? null, retryIn });
  }

  // Follows `filters` instead: a new Subscribe, no resume, answered by a snapshot
  // whose values are all delivered (again).
  setFilters(filters) {
    this.filters = [...filters];
    if (!this._hello || !this.ws) return;
    this._seen.clear();
    this._send({ type: 'Unsubscribe', id: this.subId });
    this._subscribe(null);
  }

  // Publishes through the gateway's broker; resolves on Ack, rejects on Error
  // (with .code) or when the connection is lost first.
  publish(topic, payload, { retain = false } = {}) {
    const req = this._next();
    const bytes = typeof payload === 'string' ? new TextEncoder().encode(payload) : payload;
    return this._wait('publish', req, { type: 'Publish', req, topic, payload: bytes, retain });
  }

  // Up to `perTopic` recent events of every topic `filters` match, from the server's
  // history ring (§6.13): resolves to {id, seq, truncated, topics: [{topic, points:
  // [{seq, ts_ms, value}]}]}, oldest point first; rejects on Error (with .code) or a
  // lost connection. Not live: the resume point does not move, nothing reaches 'event'.
  history(filters = this.filters, perTopic = 60) {
    const id = this._next();
    return this._wait('history', id, { type: 'History', id, filters: [...filters], per_topic: Math.min(0xffff, Math.max(0, perTopic | 0)) });
  }

  // An application round trip through the server's request queue; resolves to ms.
  ping() {
    const nonce = this._next();
    return this._wait('ping', nonce, { type: 'Ping', nonce });
  }

  // Reconnects now if waiting for the backoff delay (e.g. when the network came back).
  retryNow() {
    if (!this.ws) this._connect();
  }

  // Stops for good: closes the connection, no more reconnects or events.
  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._timer);
    this._lost('closed by the client', 1000, true);
    this.state = 'closed';
    this._emit('closed', {});
  }
}
