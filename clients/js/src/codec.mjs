// Postcard codec for the edgepush wire protocol, version 1 (docs/PROTOCOL.md).
// Decodes ServerMsg, encodes ClientMsg. u64 values above 2^53 - 1 decode as BigInt.
// Part of the edgepush-client package; edgepush serves it at /client/codec.mjs for its dashboard.

const utf8 = new TextDecoder('utf-8', { fatal: true });
const utf8enc = new TextEncoder();

export class DecodeError extends Error {}

class Reader {
  constructor(bytes) {
    this.b = bytes;
    this.i = 0;
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  byte() {
    if (this.i >= this.b.length) throw new DecodeError('unexpected end');
    return this.b[this.i++];
  }
  // LEB128 varint of at most `maxBits` bits.
  varint(maxBits) {
    let n = 0, shift = 0, big = null;
    for (;;) {
      const x = this.byte();
      const part = x & 0x7f;
      if (shift >= maxBits || (shift + 7 > maxBits && part >> (maxBits - shift))) throw new DecodeError('varint overflow');
      if (big !== null) big |= BigInt(part) << BigInt(shift);
      else if (shift < 49 || (shift === 49 && part < 16)) n += part * 2 ** shift;
      else big = BigInt(n) | (BigInt(part) << BigInt(shift));
      shift += 7;
      if (!(x & 0x80)) break;
    }
    if (big !== null) return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
    return n;
  }
  u16() { return this.varint(16); }
  u32() { return this.varint(32); }
  u64() { return this.varint(64); }
  bool() {
    const x = this.byte();
    if (x > 1) throw new DecodeError('bad bool');
    return x === 1;
  }
  f64() {
    if (this.i + 8 > this.b.length) throw new DecodeError('unexpected end');
    const v = this.dv.getFloat64(this.i, true);
    this.i += 8;
    return v;
  }
  bytes() {
    const n = this.u64();
    if (typeof n !== 'number' || this.i + n > this.b.length) throw new DecodeError('length past the end');
    const v = this.b.subarray(this.i, this.i + n);
    this.i += n;
    return v;
  }
  string() {
    try { return utf8.decode(this.bytes()); } catch (e) {
      if (e instanceof DecodeError) throw e;
      throw new DecodeError('invalid UTF-8');
    }
  }
  seqLen() {
    const n = this.u64();
    if (typeof n !== 'number' || n > this.b.length - this.i) throw new DecodeError('count past the end');
    return n;
  }
  value() {
    switch (this.u32()) {
      case 0: return { kind: 'Number', value: this.f64() };
      case 1: {
        const n = this.seqLen(), fields = [];
        for (let k = 0; k < n; k++) fields.push([this.string(), this.f64()]);
        return { kind: 'Fields', fields };
      }
      case 2: return { kind: 'Text', text: this.string() };
      case 3: return { kind: 'Bytes', bytes: Uint8Array.from(this.bytes()) };
      default: throw new DecodeError('unknown Value variant');
    }
  }
  serverMsg() {
    switch (this.u32()) {
      case 0: return { type: 'Hello', version: this.u16(), server: this.string(), epoch: this.u64(), heartbeat_ms: this.u32(), max_filters: this.u16(), broker_up: this.bool() };
      case 1: return { type: 'Topic', id: this.u32(), name: this.string() };
      case 2: return { type: 'Event', topic: this.u32(), seq: this.u64(), ts_ms: this.u64(), value: this.value() };
      case 3: {
        const id = this.u32(), seq = this.u64(), m = this.u32();
        if (m > 1) throw new DecodeError('unknown SyncMode');
        return { type: 'Synced', id, seq, mode: m === 0 ? 'Snapshot' : 'Replay' };
      }
      case 4: return { type: 'Ack', req: this.u32() };
      case 5: return { type: 'Error', code: this.u16(), req: this.u32(), message: this.string() };
      case 6: return { type: 'Broker', up: this.bool() };
      case 7: return { type: 'Pong', nonce: this.u32() };
      case 8: return { type: 'Heartbeat', ts_ms: this.u64() };
      case 9: return { type: 'Lagged', skipped: this.u32() };
      case 10: {
        const topic = this.u32(), n = this.seqLen(), points = [];
        for (let k = 0; k < n; k++) points.push({ seq: this.u64(), ts_ms: this.u64(), value: this.value() });
        return { type: 'Past', topic, points };
      }
      case 11: return { type: 'HistoryDone', id: this.u32(), seq: this.u64(), truncated: this.bool() };
      default: throw new DecodeError('unknown ServerMsg variant');
    }
  }
}

// Every ServerMsg in one binary WebSocket message, in order.
export function decodeAll(bytes) {
  const r = new Reader(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes));
  const out = [];
  while (r.i < r.b.length) out.push(r.serverMsg());
  return out;
}

class Writer {
  constructor() { this.out = []; }
  varint(v) {
    let n = BigInt(v);
    if (n < 0n) throw new RangeError('negative');
    do {
      let x = Number(n & 0x7fn);
      n >>= 7n;
      if (n) x |= 0x80;
      this.out.push(x);
    } while (n);
  }
  bool(b) { this.out.push(b ? 1 : 0); }
  bytes(b) { this.varint(b.length); for (const x of b) this.out.push(x); }
  string(s) { this.bytes(utf8enc.encode(s)); }
}

// One ClientMsg: {type: 'Subscribe', id, filters, resume: {epoch, last_seq} | null},
// {type: 'Unsubscribe', id}, {type: 'Publish', req, topic, payload, retain}, {type: 'Ping', nonce},
// {type: 'History', id, filters, per_topic}.
export function encodeClient(m) {
  const w = new Writer();
  switch (m.type) {
    case 'Subscribe':
      w.varint(0); w.varint(m.id); w.varint(m.filters.length);
      for (const f of m.filters) w.string(f);
      if (m.resume) { w.out.push(1); w.varint(m.resume.epoch); w.varint(m.resume.last_seq); } else w.out.push(0);
      break;
    case 'Unsubscribe': w.varint(1); w.varint(m.id); break;
    case 'Publish': w.varint(2); w.varint(m.req); w.string(m.topic); w.bytes(m.payload); w.bool(m.retain); break;
    case 'Ping': w.varint(3); w.varint(m.nonce); break;
    case 'History':
      w.varint(4); w.varint(m.id); w.varint(m.filters.length);
      for (const f of m.filters) w.string(f);
      w.varint(m.per_topic);
      break;
    default: throw new TypeError('unknown ClientMsg ' + m.type);
  }
  return Uint8Array.from(w.out);
}
