// The codec against the shared vectors the Rust test writes
// (tests/decoder_vectors.rs → tests/vectors/postcard.json, in the edgepush repository).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { decodeAll, encodeClient, DecodeError } from '../src/codec.mjs';

const vectors = JSON.parse(readFileSync(new URL('../../../tests/vectors/postcard.json', import.meta.url)));
const fromHex = (h) => Uint8Array.from(h.match(/../g) ?? [], (x) => parseInt(x, 16));
const toHex = (b) => [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
const bits = (x) => {
  const dv = new DataView(new ArrayBuffer(8));
  dv.setFloat64(0, x);
  return dv.getBigUint64(0).toString(16).padStart(16, '0');
};
const U64 = new Set(['epoch', 'seq', 'ts_ms']);

// The decoded message in the vectors' JSON form: u64 as decimal strings, f64 as bits.
function canonical(m) {
  const out = {};
  for (const [k, v] of Object.entries(m)) {
    if (U64.has(k)) out[k] = String(v);
    else if (k === 'points') out.points = v.map(canonical);
    else if (k === 'value') {
      if (v.kind === 'Number') out.value = { Number: bits(v.value) };
      else if (v.kind === 'Fields') out.value = { Fields: v.fields.map(([n, x]) => [n, bits(x)]) };
      else if (v.kind === 'Text') out.value = { Text: v.text };
      else out.value = { Bytes: toHex(v.bytes) };
    } else out[k] = v;
  }
  return out;
}

test('vectors cover every ServerMsg and Value variant', () => {
  const types = new Set(vectors.server.flatMap((v) => v.messages.map((m) => m.type)));
  for (const t of ['Hello', 'Topic', 'Event', 'Synced', 'Ack', 'Error', 'Broker', 'Pong', 'Heartbeat', 'Lagged', 'Past', 'HistoryDone']) assert.ok(types.has(t), t);
  const kinds = new Set(vectors.server.flatMap((v) => v.messages.filter((m) => m.value).map((m) => Object.keys(m.value)[0])));
  for (const k of ['Number', 'Fields', 'Text', 'Bytes']) assert.ok(kinds.has(k), k);
});

for (const v of vectors.server) {
  test(`decodes ${v.name}`, () => {
    assert.deepEqual(decodeAll(fromHex(v.hex)).map(canonical), v.messages);
  });
}

test('u64 above 2^53 decode exactly as BigInt, below as Number', () => {
  const big = vectors.server.find((v) => v.name === 'Event seq 2^53+1');
  assert.equal(decodeAll(fromHex(big.hex))[0].seq, 2n ** 53n + 1n);
  const max = vectors.server.find((v) => v.name === 'Event seq 2^64-1');
  assert.equal(decodeAll(fromHex(max.hex))[0].seq, 2n ** 64n - 1n);
  const small = vectors.server.find((v) => v.name === 'Event seq 2^53-1');
  assert.equal(decodeAll(fromHex(small.hex))[0].seq, Number.MAX_SAFE_INTEGER);
});

for (const v of vectors.invalid) {
  test(`refuses ${v.name}`, () => {
    assert.throws(() => decodeAll(fromHex(v.hex)), DecodeError);
  });
}

for (const v of vectors.client) {
  test(`encodes ${v.message.type} like the server decodes it`, () => {
    const m = structuredClone(v.message);
    if (m.type === 'Publish') m.payload = fromHex(m.payload);
    if (m.resume) m.resume = { epoch: BigInt(m.resume.epoch), last_seq: BigInt(m.resume.last_seq) };
    assert.equal(toHex(encodeClient(m)), v.hex);
  });
}
