/** Daemonizing, signals and outside unmounts: the mount and the daemon go away together. */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, test } from 'node:test';
import { BIN, requires } from '../helpers/env';
import { buildLayer, removeDir, tempDir } from '../helpers/layers';
import { isMounted } from '../helpers/mounts';
import { daemonsFor, eventually } from '../helpers/processes';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) {
    const mnt = join(d, 'mnt');
    if (isMounted(mnt)) spawnSync('umount', ['-l', mnt]);
    removeDir(d);
  }
});

/** The session id of a process (field 6 of /proc/PID/stat, after the parenthesised name). */
function sessionOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[3]);
}

function layout(): { lower: string; mnt: string } {
  const d = tempDir('life');
  dirs.push(d);
  buildLayer(join(d, 'lower'), { 'hello.txt': { kind: 'file', data: 'hello' } });
  buildLayer(join(d, 'mnt'), {});
  return { lower: join(d, 'lower'), mnt: join(d, 'mnt') };
}

function mountDaemon(lower: string, mnt: string) {
  return spawnSync(BIN, ['-o', `lowerdir=${lower}`, mnt], { encoding: 'utf8', timeout: 20000 });
}

describe('mount lifecycle', requires('root', 'fuse'), () => {
  test('without -f the command returns once the mount is usable, leaving one daemon', () => {
    const { lower, mnt } = layout();
    const r = mountDaemon(lower, mnt);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr, '');
    assert.ok(isMounted(mnt));
    assert.equal(readFileSync(join(mnt, 'hello.txt'), 'utf8'), 'hello');
    const daemons = daemonsFor(mnt);
    assert.equal(daemons.length, 1);
    assert.equal(sessionOf(daemons[0]), daemons[0], 'the daemon leads a session of its own (setsid)');
    spawnSync('fusermount3', ['-u', mnt]);
  });

  test('without setsid, Node launches the daemon itself, with the same outcome', () => {
    const { lower, mnt } = layout();
    // A PATH with readlink only: bin/ts-overlayfs finds no setsid and leaves it all to Node.
    const path = join(mnt, '..', 'path');
    mkdirSync(path);
    symlinkSync(spawnSync('sh', ['-c', 'command -v readlink'], { encoding: 'utf8' }).stdout.trim(), join(path, 'readlink'));
    const r = spawnSync(BIN, ['-o', `lowerdir=${lower}`, mnt], { encoding: 'utf8', timeout: 20000, env: { ...process.env, PATH: path, TS_OVERLAYFS_NODE: process.execPath } });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr, '');
    assert.equal(readFileSync(join(mnt, 'hello.txt'), 'utf8'), 'hello');
    const daemons = daemonsFor(mnt);
    assert.equal(daemons.length, 1);
    assert.equal(sessionOf(daemons[0]), daemons[0]);
    spawnSync('fusermount3', ['-u', mnt]);
  });

  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    test(`${signal} to the daemon unmounts and ends it`, async () => {
      const { lower, mnt } = layout();
      assert.equal(mountDaemon(lower, mnt).status, 0);
      const [pid] = daemonsFor(mnt);
      process.kill(pid, signal);
      assert.ok(await eventually(() => !isMounted(mnt)), 'unmounted');
      assert.ok(await eventually(() => daemonsFor(mnt).length === 0), 'daemon gone');
    });
  }

  for (const how of [['fusermount3', '-u'], ['umount']]) {
    test(`an outside unmount (${how.join(' ')}) ends the daemon`, async () => {
      const { lower, mnt } = layout();
      assert.equal(mountDaemon(lower, mnt).status, 0);
      assert.equal(spawnSync(how[0], [...how.slice(1), mnt]).status, 0);
      assert.ok(await eventually(() => daemonsFor(mnt).length === 0), 'daemon gone');
    });
  }

  test('in the foreground (-f), SIGTERM unmounts and exits 0, even the moment the mount appears', async () => {
    const { lower, mnt } = layout();
    // The kernel lists the mount before the server is told it is up; a signal sent in that gap
    // once killed the process and left the mount behind, so the signal is sent at first sight,
    // several times over.
    for (let round = 0; round < 8; round++) {
      const child = spawn(BIN, ['-f', '-o', `lowerdir=${lower}`, mnt], { stdio: 'ignore' });
      const code = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
      const end = Date.now() + 10000;
      while (!isMounted(mnt) && Date.now() < end) await sleep(2);
      assert.ok(isMounted(mnt), `round ${round}: mounted`);
      child.kill('SIGTERM');
      assert.equal(await code, 0, `round ${round}: exit code`);
      assert.ok(!isMounted(mnt), `round ${round}: unmounted`);
    }
  });

  test('-d stays in the foreground and logs each operation on stderr', async () => {
    const { lower, mnt } = layout();
    const child = spawn(BIN, ['-d', '-o', `lowerdir=${lower}`, mnt], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    const code = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    try {
      assert.ok(await eventually(() => isMounted(mnt)), 'mounted');
      assert.equal(readFileSync(join(mnt, 'hello.txt'), 'utf8'), 'hello');
      assert.ok(await eventually(() => /ts-overlayfs:op read \/hello.txt \d+@0 -> 5/.test(stderr)), `the read is logged:\n${stderr}`);
      assert.match(stderr, /ts-overlayfs:op lookup \/ hello.txt -> #\d+/);
      assert.match(stderr, /ts-overlayfs:op open \/hello.txt flags \d+ -> ok/);
      assert.equal(child.exitCode, null, 'still running: -d did not daemonize');
    } finally {
      child.kill('SIGTERM');
    }
    assert.equal(await code, 0);
    assert.ok(!isMounted(mnt));
  });

  test('a mount that fails in the daemon makes the command exit non-zero with the reason', async () => {
    // The workdir lock is taken by the daemon, after the command line was accepted: a second
    // mount of the same upper and workdir fails there, and the launcher must report it.
    const { lower, mnt } = layout();
    const d = join(mnt, '..');
    for (const sub of ['upper', 'work', 'mnt2']) buildLayer(join(d, sub), {});
    const layers = `lowerdir=${lower},upperdir=${join(d, 'upper')},workdir=${join(d, 'work')}`;
    const first = spawnSync(BIN, ['-o', layers, mnt], { encoding: 'utf8', timeout: 20000 });
    assert.equal(first.status, 0, first.stderr);
    try {
      const second = spawnSync(BIN, ['-o', layers, join(d, 'mnt2')], { encoding: 'utf8', timeout: 20000 });
      assert.equal(second.status, 1, second.stderr);
      assert.match(second.stderr, /^ts-overlayfs: EBUSY: workdir .* is in use by another mount\n$/);
      assert.ok(!isMounted(join(d, 'mnt2')), 'nothing mounted');
      assert.ok(await eventually(() => daemonsFor(join(d, 'mnt2')).length === 0), 'no daemon left');
      assert.equal(readFileSync(join(mnt, 'hello.txt'), 'utf8'), 'hello', 'the first mount works on');
    } finally {
      spawnSync('fusermount3', ['-u', mnt]);
      if (isMounted(join(d, 'mnt2'))) spawnSync('umount', ['-l', join(d, 'mnt2')]);
    }
  });

  test('the daemon keeps none of the caller\'s stdio open (a reader of stderr sees EOF)', async () => {
    const { lower, mnt } = layout();
    const launcher = spawn(BIN, ['-o', `lowerdir=${lower}`, mnt], { stdio: ['pipe', 'pipe', 'pipe'] });
    const eof = (s: NodeJS.ReadableStream) => new Promise<void>((resolve) => { s.resume(); s.on('end', () => resolve()); });
    const closed = Promise.all([eof(launcher.stdout!), eof(launcher.stderr!)]);
    const ok = await Promise.race([closed.then(() => true), sleep(10000, false, { ref: false })]);
    assert.ok(ok, 'stdout and stderr reached EOF while the mount is up');
    assert.ok(isMounted(mnt));
    spawnSync('fusermount3', ['-u', mnt]);
  });
});
