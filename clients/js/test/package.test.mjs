// The package as published: exactly the files meant to ship, and entry points that resolve.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, existsSync } from 'node:fs';

const dir = new URL('..', import.meta.url);
const pkg = JSON.parse(readFileSync(new URL('package.json', dir)));

test('npm pack ships exactly the modules, the declarations, the README and package.json', () => {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const [info] = JSON.parse(out);
  const files = info.files.map((f) => f.path).sort();
  assert.deepEqual(files, ['README.md', 'index.d.ts', 'package.json', 'src/codec.mjs', 'src/follower.mjs', 'src/index.mjs']);
  assert.equal(info.name, 'edgepush-client');
  // Small enough to read in one sitting; the README states the figure.
  assert.ok(info.size < 16384, `${info.size} bytes`);
  console.log(`# npm pack: ${info.size} bytes packed, ${info.unpackedSize} unpacked`);
});

test('the entry points and declarations named in package.json exist, with no runtime dependency', () => {
  assert.equal(pkg.type, 'module');
  assert.equal(pkg.dependencies, undefined);
  assert.equal(pkg.peerDependenciesMeta.ws.optional, true);
  assert.ok(pkg.devDependencies.ws);
  for (const p of [pkg.main, pkg.types, pkg.exports['.'].default, pkg.exports['.'].types, pkg.exports['./codec'].default]) {
    assert.ok(existsSync(new URL(p, dir)), p);
  }
  const dts = readFileSync(new URL(pkg.types, dir), 'utf8');
  for (const name of ['decodeAll', 'encodeClient', 'DecodeError', 'class Follower', 'FollowerEvents', 'withToken', 'backoffDelay']) {
    assert.ok(dts.includes(name), name);
  }
});

test('the package imports by its own name, as a user would', async () => {
  const m = await import('edgepush-client');
  assert.equal(typeof m.Follower, 'function');
  assert.equal(typeof m.decodeAll, 'function');
  const c = await import('edgepush-client/codec');
  assert.equal(c.encodeClient, m.encodeClient);
});
