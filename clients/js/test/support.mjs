// Test fixtures: a real mosquitto and a real edgepush on free loopback ports, a
// minimal MQTT publisher, deadlines scaled by EDGEPUSH_TEST_TIME_SCALE.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync, existsSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const SCALE = Number(process.env.EDGEPUSH_TEST_TIME_SCALE) || 1;
export const scaled = (ms) => Math.round(ms * SCALE);
// The server binary: cargo passes it (tests/js_client.rs); without it the server tests skip.
export const BIN = process.env.CARGO_BIN_EXE_edgepush;
export const SKIP = BIN && existsSync(BIN) ? false : 'CARGO_BIN_EXE_edgepush is not set (run: cargo test --test js_client)';
const MOSQUITTO = process.env.EDGEPUSH_TEST_MOSQUITTO || '/usr/sbin/mosquitto';

export const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

export function freePort() {
  return new Promise((ok, fail) => {
    const s = net.createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

function canConnect(port) {
  return new Promise((ok) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); ok(true); });
    s.once('error', () => ok(false));
  });
}

// Polls `cond` every 20 ms until it is true; throws naming `what` after `ms` (scaled).
export async function waitFor(what, cond, ms = 5000) {
  const end = Date.now() + scaled(ms);
  while (Date.now() < end) {
    if (await cond()) return;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${what}`);
}

// The next `type` event of `target` (an EventTarget) whose detail passes `pred`.
export function next(target, type, pred = () => true, ms = 5000) {
  return new Promise((ok, fail) => {
    const t = setTimeout(() => { target.removeEventListener(type, h); fail(new Error(`no ${type} event within ${scaled(ms)} ms`)); }, scaled(ms));
    const h = (e) => {
      if (!pred(e.detail)) return;
      clearTimeout(t);
      target.removeEventListener(type, h);
      ok(e.detail);
    };
    target.addEventListener(type, h);
  });
}

class Proc {
  constructor(cmd, args, name) {
    this.name = name;
    this.log = '';
    const runner = name === 'edgepush' ? (process.env.EDGEPUSH_TEST_RUNNER || '').trim() : '';
    const argv = runner ? [...runner.split(/\s+/), cmd, ...args] : [cmd, ...args];
    this.child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    for (const s of [this.child.stdout, this.child.stderr]) s.on('data', (d) => { this.log = (this.log + d).slice(-20000); });
    this.exited = new Promise((ok) => this.child.once('exit', ok));
  }
  signal(sig) { this.child.kill(sig); }
  async stop() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGCONT');
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), scaled(5000));
    await this.exited;
    clearTimeout(t);
  }
}

export async function startBroker() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'edgepush-js-mosquitto-'));
  const conf = join(dir, 'mosquitto.conf');
  writeFileSync(conf, `listener ${port} 127.0.0.1\npersistence false\nmax_queued_messages 0\nallow_anonymous true\n`);
  const p = new Proc(MOSQUITTO, ['-c', conf], 'mosquitto');
  p.port = port;
  await waitFor('mosquitto to listen', () => canConnect(port));
  const stop = p.stop.bind(p);
  p.stop = async () => { await stop(); rmSync(dir, { recursive: true, force: true }); };
  return p;
}

export const sha256 = (s) => createHash('sha256').update(s).digest('hex');

// edgepush on `port` (a free one if not given) linked to the broker, once /healthz says 200.
export async function startEdgepush(broker, { port, extra = '' } = {}) {
  port ??= await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'edgepush-js-'));
  const conf = join(dir, 'edgepush.toml');
  const auth = extra.includes('[auth') ? '' : '[auth]\nmode = "none"\npublish = ["cmd/#"]\n';
  writeFileSync(conf, `listen = "127.0.0.1:${port}"\n[limits]\nconnections-per-second-per-ip = 1000\n` +
    `[heartbeat]\ninterval-ms = ${scaled(250)}\ntimeout-ms = ${scaled(2000)}\n` +
    `[mqtt]\nport = ${broker.port}\nclient-id = "edgepush-js-${process.pid}-${port}"\nreconnect-min-ms = 50\nreconnect-max-ms = 200\n` +
    `${auth}${extra}\n`);
  const p = new Proc(BIN, ['run', '--config', conf], 'edgepush');
  p.port = port;
  p.url = `ws://127.0.0.1:${port}/ws`;
  try {
    await waitFor('edgepush linked to its broker', async () => {
      if (p.child.exitCode !== null) throw new Error(`edgepush exited: ${p.log}`);
      try { return (await fetch(`http://127.0.0.1:${port}/healthz`)).status === 200; } catch { return false; }
    }, 20000);
  } catch (e) {
    await p.stop();
    throw e;
  }
  const stop = p.stop.bind(p);
  p.stop = async () => { await stop(); rmSync(dir, { recursive: true, force: true }); };
  return p;
}

function remaining(n) {
  const out = [];
  do { let b = n % 128; n = Math.floor(n / 128); if (n) b |= 0x80; out.push(b); } while (n);
  return out;
}
const str = (s) => { const b = Buffer.from(s); return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]); };
const packet = (type, body) => Buffer.concat([Buffer.from([type, ...remaining(body.length)]), body]);

// A minimal MQTT 3.1.1 publisher (QoS 0): publish(), and flush() as a PINGREQ round trip.
export async function mqttPublisher(port) {
  const s = net.connect(port, '127.0.0.1');
  await new Promise((ok, fail) => { s.once('connect', ok); s.once('error', fail); });
  let buf = Buffer.alloc(0), waiters = [];
  s.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 2 && buf.length >= 2 + buf[1]) {
      const type = buf[0] >> 4;
      buf = buf.subarray(2 + buf[1]);
      const w = waiters.findIndex((x) => x.type === type);
      if (w >= 0) waiters.splice(w, 1)[0].ok();
    }
  });
  const expect = (type) => new Promise((ok) => waiters.push({ type, ok }));
  const connack = expect(2);
  s.write(packet(0x10, Buffer.concat([str('MQTT'), Buffer.from([4, 2, 0, 60]), str(`js-pub-${process.pid}-${port}-${Math.random()}`)])));
  await connack;
  return {
    publish(topic, payload, retain = false) {
      s.write(packet(0x30 | (retain ? 1 : 0), Buffer.concat([str(topic), Buffer.from(payload)])));
    },
    async flush() { const p = expect(13); s.write(Buffer.from([0xc0, 0])); await p; },
    close() { s.end(Buffer.from([0xe0, 0])); },
  };
}
