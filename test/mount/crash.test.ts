/**
 * A server killed with SIGKILL (no chance to clean up) must leave the upper layer consistent:
 * a copy-up in progress lives only in WORKDIR/work, never as a partial file in upper, and
 * the next mount empties WORKDIR/work and serves the file whole, from the lower layer.
 *
 * The server runs in a child process spawned here (the test needs its pid to kill it), and
 * everything that touches the mount runs in a further child with a timeout, so a dead or
 * stuck mount can fail the test but never hang it.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, test } from 'node:test';
import { BIN, requires } from '../helpers/env';
import { removeDir, tempDir } from '../helpers/layers';
import { isMounted, optionString } from '../helpers/mounts';

const MiB = 1 << 20;

const dirs: string[] = [];
/** Every child started here; true for those in their own process group (the writers). */
const children = new Map<ChildProcess, boolean>();

function alive(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/** Mountpoints (from /proc/self/mountinfo) at or below `dir`. */
function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((mp): mp is string => mp !== undefined && (mp === dir || mp.startsWith(`${dir}/`)));
}

after(() => {
  for (const [child, group] of children) {
    if (!alive(child)) continue;
    try {
      process.kill(group ? -child.pid! : child.pid!, 'SIGKILL');
    } catch {
      child.kill('SIGKILL');
    }
  }
  for (const d of dirs) {
    // Deepest first, in case anything got stacked.
    for (const mp of mountsUnder(d).reverse()) spawnSync('umount', ['-l', mp], { timeout: 10000, killSignal: 'SIGKILL' });
    removeDir(d);
  }
});

async function waitFor(cond: () => boolean, ms: number, step = 20): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return true;
    await sleep(step);
  }
  return cond();
}

/** Resolves true once `child` has exited, false after `ms`. */
async function exited(child: ChildProcess, ms: number): Promise<boolean> {
  if (!alive(child)) return true;
  const done = new Promise<boolean>((resolve) => child.once('exit', () => resolve(true)));
  return Promise.race([done, sleep(ms, false, { ref: false })]);
}

interface Layout {
  root: string;
  lower: string;
  upper: string;
  work: string;
  mnt: string;
  /** One byte 'X', the data every write below puts at offset 0. */
  xfile: string;
  size: number;
  /** sha256 of the lower file. */
  original: string;
  /** sha256 of the lower file with its first byte replaced by 'X'. */
  expected: string;
}

/**
 * lower/big: `mib` MiB of random-looking data, 1 MiB random block repeated with the block
 * number stamped into each copy (so a chunk copied to the wrong offset changes the hash);
 * its first byte is 'A', so writing 'X' there is a change.
 */
function layout(mib: number): Layout {
  const root = tempDir('crash');
  dirs.push(root);
  const l: Layout = {
    root,
    lower: join(root, 'lower'),
    upper: join(root, 'upper'),
    work: join(root, 'work'),
    mnt: join(root, 'mnt'),
    xfile: join(root, 'x'),
    size: mib * MiB,
    original: '',
    expected: '',
  };
  for (const d of [l.lower, l.upper, l.work, l.mnt]) spawnSync('mkdir', ['-p', d]);
  writeFileSync(l.xfile, 'X');
  const block = randomBytes(MiB);
  block[0] = 0x41;
  const orig = createHash('sha256');
  const exp = createHash('sha256');
  const fd = openSync(join(l.lower, 'big'), 'w', 0o644);
  try {
    for (let i = 0; i < mib; i++) {
      block.writeUInt32BE(i, 16);
      writeSync(fd, block, 0, MiB, i * MiB);
      orig.update(block);
      if (i === 0) {
        const first = Buffer.from(block);
        first[0] = 0x58; // 'X'
        exp.update(first);
      } else {
        exp.update(block);
      }
    }
  } finally {
    closeSync(fd);
  }
  l.original = orig.digest('hex');
  l.expected = exp.digest('hex');
  return l;
}

interface Server {
  child: ChildProcess;
  stderr(): string;
}

/** Spawns `ts-overlayfs -f` on the layout and waits until the mount is in the mount table. */
async function startServer(l: Layout): Promise<Server> {
  const opts = optionString({ lowers: [l.lower], upper: l.upper, work: l.work });
  const child = spawn(BIN, ['-f', '-o', opts, l.mnt], { stdio: ['ignore', 'ignore', 'pipe'] });
  children.set(child, false);
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => { stderr += c.toString(); });
  const up = await waitFor(() => !alive(child) || isMounted(l.mnt), 15000);
  if (!up || !alive(child)) {
    child.kill('SIGKILL');
    detach(l.mnt);
    throw new Error(`ts-overlayfs did not mount ${l.mnt}: ${stderr.trim() || 'timeout'}`);
  }
  return { child, stderr: () => stderr };
}

/** Lazily detaches `mnt` if it is mounted; true once it is gone from the mount table. */
function detach(mnt: string): boolean {
  if (isMounted(mnt)) spawnSync('umount', ['-l', mnt], { timeout: 10000, killSignal: 'SIGKILL' });
  return !isMounted(mnt);
}

async function killServer(s: Server, l: Layout): Promise<void> {
  s.child.kill('SIGKILL');
  assert.ok(await exited(s.child, 10000), 'the server died on SIGKILL');
  assert.equal(s.child.signalCode, 'SIGKILL');
  // The kernel keeps the dead connection's mount (ENOTCONN) until it is detached.
  assert.ok(detach(l.mnt), 'the dead mount was detached');
}

/** SIGTERM: the server unmounts and exits 0. */
async function stopServer(s: Server, l: Layout): Promise<void> {
  s.child.kill('SIGTERM');
  const done = await exited(s.child, 10000);
  if (!done) s.child.kill('SIGKILL');
  detach(l.mnt);
  assert.ok(done, `the server exited on SIGTERM: ${s.stderr()}`);
  assert.equal(s.child.exitCode, 0, s.stderr());
  assert.ok(!isMounted(l.mnt));
}

/** sha256 of a file, read by a child process (never by this process: the mount may be dead). */
function sha256(path: string, timeout = 30000): string {
  const r = spawnSync('sha256sum', [path], { encoding: 'utf8', timeout, killSignal: 'SIGKILL' });
  assert.equal(r.status, 0, `sha256sum ${path}: ${r.error?.message ?? ''} ${r.stderr}`);
  return r.stdout.split(' ')[0];
}

function ddArgs(l: Layout): string[] {
  return [`if=${l.xfile}`, `of=${join(l.mnt, 'big')}`, 'bs=1', 'count=1', 'conv=notrunc', 'status=none'];
}

/** Writes 'X' at offset 0 through the mount, to completion. */
function writeX(l: Layout): void {
  const r = spawnSync('dd', ddArgs(l), { encoding: 'utf8', timeout: 30000, killSignal: 'SIGKILL' });
  assert.equal(r.status, 0, `dd through the mount: ${r.error?.message ?? ''} ${r.stderr}`);
}

function workEntries(l: Layout): string[] {
  const dir = join(l.work, 'work');
  return existsSync(dir) ? readdirSync(dir) : [];
}

/** The size of the largest file in WORKDIR/work, or -1 if there is none. */
function tempSize(l: Layout): number {
  let max = -1;
  for (const name of workEntries(l)) {
    try {
      max = Math.max(max, statSync(join(l.work, 'work', name)).size);
    } catch {
      // Renamed into upper while we looked.
    }
  }
  return max;
}

type CrashResult = { caught: true; at: number } | { caught: false; why: string };

/**
 * Starts a writer that opens lower/big for writing through the mount (a copy-up of the
 * whole file) and SIGKILLs the server while the copy in WORKDIR/work has some MiB but not
 * all of them. The writer is killed too and the dead mount detached.
 */
async function crashDuringCopyUp(l: Layout, s: Server): Promise<CrashResult> {
  const writer = spawn('dd', ddArgs(l), { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  children.set(writer, true);
  let writerErr = '';
  writer.stderr!.on('data', (c: Buffer) => { writerErr += c.toString(); });
  let at = -1;
  const end = Date.now() + 30000;
  while (Date.now() < end && alive(writer)) {
    const n = tempSize(l);
    if (n >= 8 * MiB && n < l.size) {
      s.child.kill('SIGKILL');
      at = n;
      break;
    }
    if (n >= l.size) break; // The data is all there: too late to crash mid-copy.
    await sleep(2);
  }
  if (at < 0) {
    // Missed (or timed out): let the writer finish or kill it, and stop the server.
    const wrote = await exited(writer, 30000);
    if (!wrote) process.kill(-writer.pid!, 'SIGKILL');
    await exited(writer, 5000);
    s.child.kill('SIGKILL');
    await exited(s.child, 10000);
    detach(l.mnt);
    return { caught: false, why: Date.now() >= end ? 'timeout' : `copy-up finished first (writer: ${writerErr.trim() || writer.exitCode})` };
  }
  assert.ok(await exited(s.child, 10000), 'the server died on SIGKILL');
  // The writer gets ENOTCONN once the connection is gone; kill it in any case.
  if (!(await exited(writer, 5000))) {
    process.kill(-writer.pid!, 'SIGKILL');
    assert.ok(await exited(writer, 10000), 'the writer died on SIGKILL');
  }
  assert.notEqual(writer.exitCode, 0, 'the write through the killed server did not succeed');
  assert.ok(detach(l.mnt), 'the dead mount was detached');
  return { caught: true, at };
}

describe('crash safety: SIGKILL of the server', requires('root', 'fuse'), () => {
  test('during a copy-up leaves no partial file in upper; a remount cleans WORKDIR/work and serves the file whole', { timeout: 120000 }, async (t) => {
    let l: Layout | undefined;
    let crash: CrashResult = { caught: false, why: 'not tried' };
    for (const mib of [512, 1024]) {
      const t0 = Date.now();
      l = layout(mib);
      t.diagnostic(`lower/big: ${mib} MiB written in ${Date.now() - t0} ms`);
      const s = await startServer(l);
      const t1 = Date.now();
      crash = await crashDuringCopyUp(l, s);
      if (crash.caught) {
        t.diagnostic(`server killed ${Date.now() - t1} ms after the open, with ${(crash.at / MiB).toFixed(1)} MiB of ${mib} copied`);
        break;
      }
      t.diagnostic(`${mib} MiB: missed the copy-up in progress (${crash.why}); retrying bigger`);
      removeDir(l.root);
    }
    assert.ok(crash.caught && l, `could not kill the server during a copy-up: ${crash.caught ? '' : crash.why}`);

    // Right after the crash: the partial copy is only in WORKDIR/work, upper has no trace.
    assert.deepEqual(readdirSync(l.upper).filter((n) => n.includes('big')), [], 'no entry for big in upper');
    assert.ok(!existsSync(join(l.upper, 'big')));
    const leftover = tempSize(l);
    assert.ok(leftover >= 8 * MiB && leftover < l.size, `the partial copy is in WORKDIR/work (${leftover} bytes)`);
    assert.equal(sha256(join(l.lower, 'big')), l.original, 'the lower file is untouched');

    // Remount on the same layers.
    const s2 = await startServer(l);
    assert.deepEqual(workEntries(l), [], 'WORKDIR/work is emptied at mount');
    assert.ok(!existsSync(join(l.upper, 'big')), 'mounting did not put anything in upper');
    let t2 = Date.now();
    assert.equal(sha256(join(l.mnt, 'big')), l.original, 'the file reads whole through the mount');
    t.diagnostic(`read ${l.size / MiB} MiB through the mount in ${Date.now() - t2} ms`);

    // The write again, to completion this time.
    t2 = Date.now();
    writeX(l);
    t.diagnostic(`copy-up + write took ${Date.now() - t2} ms`);
    assert.equal(sha256(join(l.mnt, 'big')), l.expected, 'the file reads as written through the mount');
    const st = statSync(join(l.upper, 'big'));
    assert.ok(st.isFile());
    assert.equal(st.size, l.size, 'upper holds a copy of the full size');
    assert.equal(sha256(join(l.upper, 'big')), l.expected, 'upper holds the complete, written copy');
    assert.equal(sha256(join(l.lower, 'big')), l.original, 'the lower file is untouched');
    assert.deepEqual(workEntries(l), [], 'nothing left in WORKDIR/work after a complete copy-up');
    await stopServer(s2, l);
  });

  test('right after a complete copy-up and write loses nothing', { timeout: 60000 }, async () => {
    const l = layout(64);
    const s = await startServer(l);
    writeX(l);
    await killServer(s, l);

    assert.equal(statSync(join(l.upper, 'big')).size, l.size);
    assert.equal(sha256(join(l.upper, 'big')), l.expected, 'upper holds the written copy');
    assert.deepEqual(workEntries(l), [], 'no temp file left in WORKDIR/work');

    const s2 = await startServer(l);
    assert.deepEqual(workEntries(l), []);
    assert.equal(sha256(join(l.mnt, 'big')), l.expected, 'the file reads as written after the remount');
    assert.equal(sha256(join(l.lower, 'big')), l.original, 'the lower file is untouched');
    await stopServer(s2, l);
  });
});
