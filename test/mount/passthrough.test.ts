/**
 * FUSE passthrough: opens of upper files are read and written by the kernel itself, opens of
 * lower files by the server. What is checked is what a user sees: the same data through
 * every descriptor, across a copy-up and between the two kinds of opens, as kernel overlayfs
 * shows; and, in the daemon's request log, which opens went which way.
 */
import assert from 'node:assert/strict';
import { chmodSync, closeSync, fstatSync, ftruncateSync, openSync, readFileSync, readSync, statSync, writeFileSync, writeSync, constants as fsc } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { requires } from '../helpers/env';
import { buildLayer, removeDir, tempDir } from '../helpers/layers';
import { asNobody } from '../helpers/rootless';
import { mountKernel, mountTs, type LayerDirs, type Mounted, type TsMounted } from '../helpers/mounts';

const MIB = 1 << 20;

function readAt(fd: number, length: number, position: number): string {
  const buf = Buffer.alloc(length);
  return buf.subarray(0, readSync(fd, buf, 0, length, position)).toString();
}

/**
 * Opens of one lower file: read-only before its copy-up, read-write for it, then opens made
 * after every earlier one is closed (passthrough ones on ts-overlayfs), each read through
 * the others. Returns what every read saw.
 */
function coherence(m: string): string[] {
  const seen: string[] = [];
  const file = join(m, 'lower-file');
  const ro = openSync(file, fsc.O_RDONLY);
  seen.push(readAt(ro, 64, 0));
  const rw = openSync(file, fsc.O_RDWR);
  writeSync(rw, 'LOWER', 0);
  seen.push(readAt(ro, 64, 0), `size ${fstatSync(ro).size}`);
  closeSync(rw);
  closeSync(ro);

  const writer = openSync(file, fsc.O_RDWR);
  writeSync(writer, 'again, longer than before', 0);
  const reader = openSync(file, fsc.O_RDONLY);
  seen.push(readAt(reader, 64, 0), `size ${statSync(file).size}`);
  const appender = openSync(file, fsc.O_WRONLY | fsc.O_APPEND);
  writeSync(appender, '+tail');
  closeSync(appender);
  seen.push(readAt(reader, 64, 0));
  ftruncateSync(writer, 5);
  seen.push(readAt(reader, 64, 0), `size ${fstatSync(reader).size}`);
  closeSync(writer);
  closeSync(reader);
  seen.push(readFileSync(file, 'utf8'));
  return seen;
}

describe('passthrough opens', requires('root', 'fuse', 'kernel-overlay', 'fuse-passthrough'), () => {
  let root: string;
  const dirs = (name: string): LayerDirs & { mnt: string } => ({
    lowers: [join(root, 'lower')], upper: join(root, `${name}-upper`), work: join(root, `${name}-work`), mnt: join(root, `${name}-mnt`),
  });
  const mounts: Mounted[] = [];

  before(() => {
    root = tempDir('tsovl-passthrough-');
    buildLayer(join(root, 'lower'), { 'lower-file': { kind: 'file', data: 'from the lower layer\n' } });
    for (const name of ['ts', 'kernel', 'log', 'off']) {
      const d = dirs(name);
      buildLayer(d.upper!, {});
      buildLayer(d.work!, {});
      buildLayer(d.mnt, {});
    }
  });
  after(async () => {
    for (const m of mounts.splice(0)) await m.unmount();
    removeDir(root);
  });

  test('every descriptor reads what was written last, across a copy-up, as on the kernel', async () => {
    const ts = dirs('ts');
    const kernel = dirs('kernel');
    const tsMount = await mountTs(ts, ts.mnt);
    mounts.push(tsMount);
    const kernelMount = await mountKernel(kernel, kernel.mnt);
    mounts.push(kernelMount);
    const want = coherence(kernel.mnt);
    assert.deepEqual(coherence(ts.mnt), want);
    assert.deepEqual(want.at(-1), 'again');
  });

  test('a write by a user without CAP_FSETID drops the set-id bits, as on the kernel', async () => {
    const modes: Record<string, string> = {};
    chmodSync(root, 0o755);
    for (const name of ['setid-ts', 'setid-kernel']) {
      const d = dirs(name);
      for (const p of [d.upper!, d.work!, d.mnt]) buildLayer(p, {});
      const m = name === 'setid-ts' ? await mountTs(d, d.mnt) : await mountKernel(d, d.mnt);
      mounts.push(m);
      const file = join(d.mnt, 'set-id');
      writeFileSync(file, 'x');
      chmodSync(file, 0o6777);
      const [cmd, args] = asNobody(['sh', '-c', 'echo more >> "$1"', 'sh', file]);
      const r = spawnSync(cmd, args, { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      modes[name] = (statSync(file).mode & 0o7777).toString(8);
    }
    assert.deepEqual(modes, { 'setid-ts': '777', 'setid-kernel': '777' });
  });

  async function logged(name: string, extra: string[]): Promise<string> {
    const d = dirs(name);
    const m: TsMounted = await mountTs(d, d.mnt, extra, { ...process.env, DEBUG: 'ts-overlayfs:op' });
    mounts.push(m);
    writeFileSync(join(d.mnt, 'new-file'), Buffer.alloc(4 * MIB, 7));
    assert.equal(readFileSync(join(d.mnt, 'new-file')).length, 4 * MIB);
    assert.equal(readFileSync(join(d.mnt, 'lower-file'), 'utf8'), 'from the lower layer\n');
    await m.unmount();
    mounts.splice(mounts.indexOf(m), 1);
    return m.stderr();
  }

  test('an upper file is read and written by the kernel, a lower one by the server', async () => {
    const log = await logged('log', []);
    assert.match(log, /backing open fd \d+ -> \d+/);
    assert.doesNotMatch(log, /\b(write|read) \/new-file /, 'no request for the passthrough file\'s data');
    assert.match(log, /\bread \/lower-file /);
  });

  test('passthrough=off serves every read and write', async () => {
    const log = await logged('off', ['passthrough=off']);
    assert.doesNotMatch(log, /backing open/);
    assert.match(log, /\bwrite \/new-file /);
  });
});
