// The follower against a WebSocket server in the test (the `ws` package) that
// sends what edgepush never would: garbage, text, a cut-off answer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { WebSocketServer } from 'ws';
import { Follower, backoffDelay, withToken } from '../src/index.mjs';
import { next, waitFor, scaled } from './support.mjs';

const hex = (h) => Buffer.from(h.replace(/\s+/g, ''), 'hex');
// Hello{version 1, server "e", epoch 2, heartbeat_ms 10000, max_filters 4, broker_up true}.
const HELLO = hex('00 01 01 65 02 904e 04 01');
const topic = (id, name) => Buffer.concat([Buffer.from([1, id, name.length]), Buffer.from(name)]);
// Event{topic, seq (< 128), ts_ms 1, Number(x)}.
const event = (id, seq, x) => {
  const b = Buffer.alloc(13);
  b.set([2, id, seq, 1, 0]);
  b.writeDoubleLE(x, 5);
  return b;
};
const synced = (id, seq, mode) => Buffer.from([3, id, seq, mode]);

// A Subscribe's id and resume, read from its bytes (small numbers only).
function readSubscribe(b) {
  assert.equal(b[0], 0, 'a Subscribe');
  let i = 1;
  const varint = () => { let n = 0, s = 0, x; do { x = b[i++]; n += (x & 0x7f) * 2 ** s; s += 7; } while (x & 0x80); return n; };
  const id = varint(), filters = [];
  for (let n = varint(); n > 0; n--) { const len = varint(); filters.push(b.subarray(i, i + len).toString()); i += len; }
  const resume = b[i++] ? { epoch: varint(), last_seq: varint() } : null;
  return { id, filters, resume };
}

// A server running `script(socket, n)` for its n-th connection.
async function fakeServer(script) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: (p) => (p.has('edgepush.v1') ? 'edgepush.v1' : false) });
  await new Promise((ok) => wss.once('listening', ok));
  let n = 0;
  wss.on('connection', (sock) => script(sock, n++));
  return { url: `ws://127.0.0.1:${wss.address().port}/ws`, wss, count: () => n, close: () => new Promise((ok) => { for (const c of wss.clients) c.terminate(); wss.close(ok); }) };
}

const firstMessage = (sock) => new Promise((ok) => sock.once('message', (d) => ok(d)));

test('bad frames: a decode error, a text message, an Event before Hello; each reported, reconnected, no crash', async () => {
  const bad = [hex('0c'), 'text', Buffer.concat([event(0, 1, 1)]), Buffer.concat([HELLO, hex('02 00 01 02 00 00')])];
  const srv = await fakeServer((sock, n) => {
    if (n < bad.length) sock.send(bad[n]);
    else sock.send(HELLO);
  });
  const f = new Follower(srv.url, { base: 1, cap: 5 });
  try {
    const errors = [];
    f.on('error', (e) => errors.push(e));
    const connected = await next(f, 'connected', () => true, 5000);
    assert.equal(srv.count(), bad.length + 1);
    assert.equal(connected.epoch, 2);
    assert.equal(errors.length, 4);
    assert.ok(errors.every((e) => e.kind === 'protocol'));
    assert.match(errors[0].message, /undecodable.*unknown ServerMsg variant/);
    assert.match(errors[1].message, /text message/);
    assert.match(errors[2].message, /Event before Hello/);
    assert.match(errors[3].message, /undecodable/);
    assert.equal(f.stats.losses, 4);
  } finally {
    f.close();
    await srv.close();
  }
});

test('the resume point advances on Synced and live events only, not inside an answer', async () => {
  const subs = [];
  const srv = await fakeServer(async (sock, n) => {
    sock.send(HELLO);
    subs.push(readSubscribe(await firstMessage(sock)));
    if (n === 0) {
      // A complete answer up to seq 3, then a live event 4.
      sock.send(Buffer.concat([topic(0, 'a'), event(0, 3, 3), synced(subs[0].id, 3, 0)]));
      sock.send(event(0, 4, 4));
      setTimeout(() => sock.terminate(), 100);
    } else if (n === 1) {
      // An answer cut off before its Synced: 5 and 6 must not move the resume point.
      sock.send(Buffer.concat([topic(0, 'a'), event(0, 5, 5), event(0, 6, 6)]));
      setTimeout(() => sock.terminate(), 100);
    } else {
      // The same events again, then the Synced: not delivered twice.
      sock.send(Buffer.concat([topic(0, 'a'), event(0, 5, 5), event(0, 6, 6), event(0, 7, 7), synced(subs[n].id, 7, 1)]));
    }
  });
  const f = new Follower(srv.url, { filters: ['a'], base: 1, cap: 5 });
  try {
    const events = [];
    f.on('event', (e) => events.push(e));
    const replay = next(f, 'synced', (s) => s.mode === 'Replay');
    await waitFor('three connections', () => subs.length === 3);
    await replay;
    assert.deepEqual(subs.map((s) => s.resume), [null, { epoch: 2, last_seq: 4 }, { epoch: 2, last_seq: 4 }]);
    assert.deepEqual(subs.map((s) => s.filters), [['a'], ['a'], ['a']]);
    assert.deepEqual(events.map((e) => [e.seq, e.inAnswer]), [[3, true], [4, false], [5, true], [6, true], [7, true]]);
    assert.equal(f.lastSeq, 7);
    assert.equal(f.stats.resent, 2);
  } finally {
    f.close();
    await srv.close();
  }
});

test('Lagged and Broker are surfaced; close() stops reconnecting', async () => {
  const srv = await fakeServer(async (sock) => {
    sock.send(HELLO);
    const s = readSubscribe(await firstMessage(sock));
    sock.send(Buffer.concat([synced(s.id, 0, 0), hex('09 80 01'), hex('06 00')]));
  });
  const f = new Follower(srv.url, { base: 1, cap: 5 });
  try {
    const lagged = next(f, 'lagged'), broker = next(f, 'broker');
    assert.deepEqual(await next(f, 'snapshot'), { seq: 0, topics: [] });
    assert.deepEqual(await lagged, { skipped: 128 });
    assert.deepEqual(await broker, { up: false });
    const closed = next(f, 'closed');
    f.close();
    await closed;
    assert.equal(f.state, 'closed');
    await new Promise((ok) => setTimeout(ok, scaled(100)));
    assert.equal(srv.count(), 1);
  } finally {
    await srv.close();
  }
});

test('backoff: full jitter below the doubling ceiling and the cap', () => {
  for (let attempt = 0; attempt < 40; attempt++) {
    const ceiling = Math.min(30000, 500 * 2 ** attempt);
    let max = 0;
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt);
      assert.ok(d >= 0 && d <= ceiling, `${attempt}: ${d}`);
      max = Math.max(max, d);
    }
    assert.ok(max > 0.8 * ceiling, `attempt ${attempt}: max ${max}`);
  }
  assert.equal(backoffDelay(3, 100, 1000, () => 1), 800);
  assert.equal(backoffDelay(9, 100, 1000, () => 1), 1000);
});

test('the token goes in the URL percent-encoded, replacing one already there', () => {
  assert.equal(withToken('ws://h:1/ws', 'a b&c=d'), 'ws://h:1/ws?token=a%20b%26c%3Dd');
  assert.equal(withToken('ws://h:1/ws?x=1&token=old', 't'), 'ws://h:1/ws?x=1&token=t');
  assert.equal(withToken('ws://h:1/ws', null), 'ws://h:1/ws');
  const f = new Follower('http://h:1/ws', { token: 'é', WebSocket: class { constructor() { throw new Error('offline'); } } });
  assert.equal(f.url, 'ws://h:1/ws?token=%C3%A9');
  f.close();
});

test('setFilters: Unsubscribe, then a Subscribe without resume whose answer is delivered again', async () => {
  const got = [];
  const srv = await fakeServer((sock) => {
    sock.send(HELLO);
    sock.on('message', (b) => {
      got.push(Buffer.from(b));
      if (b[0] !== 0) return;
      const s = readSubscribe(b);
      sock.send(Buffer.concat([topic(0, 'a'), event(0, 1, 1), synced(s.id, 1, 0)]));
    });
  });
  const f = new Follower(srv.url, { filters: ['a'], base: 1, cap: 5 });
  try {
    const events = [];
    f.on('event', (e) => events.push(e));
    await next(f, 'synced');
    const again = next(f, 'synced');
    f.setFilters(['a', 'b']);
    await again;
    assert.equal(got.length, 3);
    assert.deepEqual([...got[1]], [1, readSubscribe(got[0]).id]);
    assert.deepEqual(readSubscribe(got[2]).filters, ['a', 'b']);
    assert.equal(readSubscribe(got[2]).resume, null);
    assert.deepEqual(events.map((e) => e.seq), [1, 1]);
  } finally {
    f.close();
    await srv.close();
  }
});

test("a runtime's global WebSocket (here Node's --experimental-websocket, as in a browser) is used without ws", async () => {
  const srv = await fakeServer(async (sock) => {
    sock.send(HELLO);
    const s = readSubscribe(await firstMessage(sock));
    sock.send(Buffer.concat([topic(0, 'a'), event(0, 1, 21.5), synced(s.id, 1, 0)]));
  });
  try {
    const script = `
      import { Follower } from ${JSON.stringify(new URL('../src/index.mjs', import.meta.url).href)};
      const f = new Follower(${JSON.stringify(srv.url)}, { filters: ['a'] });
      f.on('event', (e) => { console.log(f.ws instanceof globalThis.WebSocket, e.topic, e.value.value); f.close(); });`;
    const out = await new Promise((ok) => {
      const c = spawn(process.execPath, ['--experimental-websocket', '--no-warnings', '--input-type=module', '-e', script]);
      let text = '';
      c.stdout.on('data', (d) => { text += d; });
      c.on('exit', () => ok(text));
    });
    assert.equal(out.trim(), 'true a 21.5');
  } finally {
    await srv.close();
  }
});
