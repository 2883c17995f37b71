// The follower against a real edgepush and mosquitto: delivery, resume by replay,
// a snapshot after a restart (new epoch), staleness (SIGSTOP), token in the URL.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Follower } from '../src/index.mjs';
import { SKIP, scaled, sleep, next, waitFor, startBroker, startEdgepush, mqttPublisher, sha256 } from './support.mjs';

let broker, pub;
before(async () => {
  if (SKIP) return;
  broker = await startBroker();
  pub = await mqttPublisher(broker.port);
});
after(async () => {
  pub?.close();
  await broker?.stop();
});

// Every event a follower delivers, in order.
function record(f) {
  const events = [];
  f.on('event', (e) => events.push(e));
  return events;
}

test('delivery: Number, Fields, Text; token in the URL; publish answered by Ack or Error', { skip: SKIP }, async () => {
  const token = 'a b+c/é%';
  const server = await startEdgepush(broker, {
    extra: `[[auth.tokens]]\nname = "js"\nsha256 = "${sha256(token)}"\nsubscribe = ["d/#", "cmd/#"]\npublish = ["cmd/#"]\n`,
  });
  const f = new Follower(server.url, { filters: ['d/#', 'cmd/#'], token });
  try {
    assert.ok(f.url.endsWith('/ws?token=a%20b%2Bc%2F%C3%A9%25'), f.url);
    const events = record(f);
    const connected = await next(f, 'connected');
    assert.equal(connected.resumed, false);
    assert.equal(connected.newEpoch, true);
    await next(f, 'synced');
    pub.publish('d/t', '21.5');
    pub.publish('d/power', '{"w":820.5,"v":230}');
    pub.publish('d/door', 'open');
    await waitFor('three events', () => events.length === 3);
    assert.deepEqual(events.map((e) => [e.topic, e.value]), [
      ['d/t', { kind: 'Number', value: 21.5 }],
      ['d/power', { kind: 'Fields', fields: [['w', 820.5], ['v', 230]] }],
      ['d/door', { kind: 'Text', text: 'open' }],
    ]);
    assert.equal(events.every((e) => !e.inAnswer), true);
    assert.equal(Number(f.lastSeq), Number(events[2].seq));
    // Publish through the gateway to its broker and back.
    await f.publish('cmd/lamp', 'on');
    await waitFor('the published value back', () => events.some((e) => e.topic === 'cmd/lamp'));
    const refused = next(f, 'error', (e) => e.kind === 'server');
    await assert.rejects(f.publish('d/t', '1'), (e) => e.code === 403);
    assert.equal((await refused).code, 403);
    assert.ok((await f.ping()) >= 0);
  } finally {
    f.close();
    await server.stop();
  }
});

test('a wrong token is refused and retried with backoff, not in a loop', { skip: SKIP }, async () => {
  const server = await startEdgepush(broker, { extra: `[[auth.tokens]]\nname = "js"\nsha256 = "${sha256('right')}"\n` });
  const f = new Follower(server.url, { token: 'wrong', base: scaled(100), cap: scaled(200) });
  try {
    const lost = [];
    f.on('disconnected', (d) => lost.push(d));
    await sleep(scaled(1000));
    assert.ok(lost.length >= 2 && lost.length <= 25, `${lost.length} attempts in 1 s`);
    assert.ok(lost.every((d) => d.retryIn >= 0 && d.retryIn <= scaled(200)));
    assert.match(lost[0].reason, /401/);
    assert.equal(f.epoch, null);
  } finally {
    f.close();
    await server.stop();
  }
});

test('resume by replay: the socket cut, events published meanwhile, no gap and no repeat', { skip: SKIP }, async () => {
  const server = await startEdgepush(broker);
  // Reconnects exactly `base` after a loss: the events below are published in that gap.
  const f = new Follower(server.url, { filters: ['r/#'], base: scaled(1500), random: () => 1 });
  try {
    const events = record(f);
    await next(f, 'synced');
    for (let i = 1; i <= 5; i++) pub.publish('r/n', String(i));
    await waitFor('the first five', () => events.length === 5);
    const lost = next(f, 'disconnected');
    f.ws.terminate();
    assert.equal((await lost).code, 1006);
    for (let i = 6; i <= 10; i++) pub.publish(`r/${i % 2 ? 'odd' : 'even'}`, String(i));
    await pub.flush();
    const connected = await next(f, 'connected', () => true, 5000);
    assert.equal(connected.resumed, true);
    assert.equal(connected.newEpoch, false);
    const synced = await next(f, 'synced');
    assert.equal(synced.mode, 'Replay');
    await waitFor('all ten', () => events.length >= 10);
    await sleep(scaled(200));
    assert.deepEqual(events.map((e) => e.value.value), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    const seqs = events.map((e) => Number(e.seq));
    for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, `seqs ${seqs}`);
    assert.equal(f.stats.replays, 1);
  } finally {
    f.close();
    await server.stop();
  }
});

test('a restarted server (new epoch) answers with a snapshot, and the resume point starts again', { skip: SKIP }, async () => {
  let server = await startEdgepush(broker);
  const port = server.port;
  const f = new Follower(server.url, { filters: ['s/#'], base: scaled(3000), cap: scaled(3000), random: () => 1 });
  try {
    const events = record(f);
    const first = await next(f, 'connected');
    await next(f, 'synced');
    pub.publish('s/kept', '7', true);
    for (let i = 0; i < 5; i++) pub.publish('s/live', String(i));
    await waitFor('six events', () => events.length === 6);
    const before = Number(f.lastSeq);
    assert.ok(before >= 6);
    const lost = next(f, 'disconnected');
    await server.stop();
    await lost;
    server = await startEdgepush(broker, { port });
    const connected = await next(f, 'connected', () => true, 10000);
    assert.equal(connected.newEpoch, true);
    assert.equal(connected.resumed, false);
    assert.notEqual(String(connected.epoch), String(first.epoch));
    const snapshot = next(f, 'snapshot');
    const synced = await next(f, 'synced');
    assert.equal(synced.mode, 'Snapshot');
    // The broker's retained value came to the new server and in its answer.
    assert.ok((await snapshot).topics.includes('s/kept'));
    const kept = events.slice(6).find((e) => e.topic === 's/kept');
    assert.deepEqual(kept?.value, { kind: 'Number', value: 7 });
    assert.equal(kept.inAnswer, true);
    assert.ok(Number(f.lastSeq) < before, `${f.lastSeq} after ${before}`);
  } finally {
    f.close();
    pub.publish('s/kept', '', true);
    await server.stop();
  }
});

test('staleness: a stopped server is reported stale at 2.5 heartbeats, and followed again once it runs', { skip: SKIP }, async () => {
  const server = await startEdgepush(broker);
  const f = new Follower(server.url, { filters: ['st/#'], base: scaled(100), cap: scaled(400) });
  try {
    const events = record(f);
    const connected = await next(f, 'connected');
    await next(f, 'synced');
    pub.publish('st/a', '1');
    await waitFor('the first event', () => events.length === 1);
    const stale = next(f, 'stale', () => true, 5000);
    const stoppedAt = Date.now();
    server.signal('SIGSTOP');
    const s = await stale;
    const hb = connected.heartbeat_ms;
    assert.ok(s.silentMs > 2.5 * hb, `${s.silentMs} ms`);
    assert.ok(Date.now() - stoppedAt < 2.5 * hb + scaled(1500), `stale after ${Date.now() - stoppedAt} ms`);
    assert.equal(f.state === 'reconnecting' || f.state === 'connecting', true, f.state);
    // While stopped, attempts get no Hello and are retried.
    await sleep(scaled(1000));
    assert.equal(f.stats.connects, 1);
    pub.publish('st/a', '2');
    server.signal('SIGCONT');
    const again = await next(f, 'connected', () => true, 10000);
    assert.equal(again.resumed, true);
    assert.equal((await next(f, 'synced')).mode, 'Replay');
    await waitFor('the event published while stopped', () => events.length === 2);
    assert.deepEqual(events.map((e) => e.value.value), [1, 2]);
  } finally {
    f.close();
    await server.stop();
  }
});

test('history: recent values per topic, oldest first, not live, within the token, bounded', { skip: SKIP }, async () => {
  const token = 'hist';
  const server = await startEdgepush(broker, {
    extra: `[[auth.tokens]]\nname = "js"\nsha256 = "${sha256(token)}"\nsubscribe = ["h/#"]\n`,
  });
  // Published before any client connects: only the ring has them.
  for (let i = 1; i <= 5; i++) pub.publish('h/a', String(i));
  pub.publish('h/b', '{"w":1}');
  await pub.flush();
  const f = new Follower(server.url, { filters: ['h/#'], token });
  try {
    const events = record(f);
    const pasts = [];
    f.on('past', (p) => pasts.push(p));
    await next(f, 'synced');
    await waitFor('the latest values', () => events.some((e) => e.value.value === 5) && events.some((e) => e.topic === 'h/b'));
    const [resumeAt, seen] = [f.lastSeq, events.length];
    const answer = await f.history(['h/#'], 3);
    assert.equal(answer.truncated, false);
    assert.deepEqual(answer.topics.map((t) => [t.topic, t.points.map((p) => p.value.value ?? p.value.fields[0][1])]), [
      ['h/a', [3, 4, 5]],
      ['h/b', [1]],
    ]);
    const seqs = answer.topics[0].points.map((p) => Number(p.seq));
    assert.deepEqual(seqs, [seqs[0], seqs[0] + 1, seqs[0] + 2]);
    assert.equal(pasts.length, 2);
    assert.equal(events.length, seen, 'a History answer is not live events');
    assert.equal(f.lastSeq, resumeAt, 'a History answer does not move the resume point');
    await assert.rejects(f.history(['x/#'], 3), (e) => e.code === 403);
    // Two History requests per connection at once (403 above used none): the third is refused.
    await f.history(['h/a'], 1);
    await assert.rejects(f.history(['h/a'], 1), (e) => e.code === 429);
  } finally {
    f.close();
    await server.stop();
  }
});
