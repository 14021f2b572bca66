/**
 * One scripted sequence of changes run on kernel overlayfs and on ts-overlayfs over the same
 * lower layers. Compared: each operation's outcome (ok or the errno), the merged view after
 * the sequence, the upper directory's encoding after unmount (whiteouts, opaque markers, data,
 * mode, owner), and each upper mounted by the other implementation.
 */
import assert from 'node:assert/strict';
import {
  appendFileSync, chmodSync, chownSync, closeSync, linkSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync,
  renameSync, rmdirSync, rmSync, symlinkSync, truncateSync, unlinkSync, utimesSync, writeFileSync, writeSync, fsyncSync,
} from 'node:fs';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isWhiteoutStat } from '../../src/overlay/format';
import { lgetxattrOrNull, llistxattr, lremovexattr, lsetxattr, mknod } from '../../src/sys/libc';
import { requires } from '../helpers/env';
import { kernelFormatLayers } from '../helpers/fixtures';
import { buildLayer, makedev, removeDir, tempDir } from '../helpers/layers';
import { mountKernel, mountTs, type LayerDirs, type Mounted } from '../helpers/mounts';
import { snapshot, type Snapshot } from '../helpers/snapshot';

type Step = [string, (m: string) => void];

/** The sequence: every mutating operation, on lower, upper and whited-out names, with failures. */
const steps: Step[] = [
  ['append to a lower file', (m) => appendFileSync(`${m}/merged/both`, ' + appended')],
  ['write at an offset into a lower file', (m) => {
    const fd = openSync(`${m}/merged/from-bottom`, 'r+');
    writeSync(fd, 'XY', 2);
    fsyncSync(fd);
    closeSync(fd);
  }],
  ['create a new file', (m) => writeFileSync(`${m}/new-file`, 'new\n', { mode: 0o640 })],
  ['create in a lower-only dir', (m) => writeFileSync(`${m}/only-bottom/added`, 'added')],
  ['mkdir', (m) => mkdirSync(`${m}/new-dir`, { mode: 0o750 })],
  ['create inside the new dir', (m) => writeFileSync(`${m}/new-dir/inner`, 'inner')],
  ['unlink a lower file', (m) => unlinkSync(`${m}/merged/from-middle`)],
  ['unlink a missing file', (m) => unlinkSync(`${m}/merged/nothing-here`)],
  ['rm -r a lower dir', (m) => rmSync(`${m}/merged/sub`, { recursive: true })],
  ['mkdir where a whiteout stands', (m) => mkdirSync(`${m}/merged/sub`)],
  ['create where a whiteout stands', (m) => writeFileSync(`${m}/merged/from-middle`, 'reborn')],
  ['rmdir a non-empty merged dir', (m) => rmdirSync(`${m}/deep/a/b/c`)],
  ['mkdir over an existing dir', (m) => mkdirSync(`${m}/deep`)],
  ['rename a lower file across dirs', (m) => renameSync(`${m}/merged/from-top`, `${m}/new-dir/moved`)],
  ['rename a new file over a lower file', (m) => renameSync(`${m}/new-file`, `${m}/owners/odd`)],
  ['rename a dir with lower content', (m) => renameSync(`${m}/deep`, `${m}/deeper`)],
  ['rename an upper-only dir', (m) => renameSync(`${m}/new-dir`, `${m}/renamed-dir`)],
  ['rename a file over a dir', (m) => renameSync(`${m}/names/co:lon`, `${m}/only-bottom`)],
  ['hard link a lower file', (m) => linkSync(`${m}/hard/one`, `${m}/hard/four`)],
  ['write through the new link', (m) => appendFileSync(`${m}/hard/four`, '+4')],
  ['symlink', (m) => symlinkSync('../merged/both', `${m}/links/new`)],
  ['mkfifo', (m) => mknod(`${m}/special/new-fifo`, 0o010600, 0)],
  ['mknod c 0 0 (a forged whiteout)', (m) => mknod(`${m}/special/forged-whiteout`, 0o020644, 0)],
  ['mknod a char device', (m) => mknod(`${m}/special/new-null`, 0o020644, makedev(1, 3))],
  ['mknod a block device', (m) => mknod(`${m}/special/new-block`, 0o060640, makedev(7, 0))],
  ['mknod a socket', (m) => mknod(`${m}/special/new-sock`, 0o140755, 0)],
  ['chmod a lower char device', (m) => chmodSync(`${m}/special/null`, 0o600)],
  ['chmod a lower fifo', (m) => chmodSync(`${m}/special/fifo`, 0o600)],
  ['chmod a lower socket', (m) => chmodSync(`${m}/special/sock`, 0o700)],
  ['chmod a lower file', (m) => chmodSync(`${m}/modes/none`, 0o604)],
  ['chmod a lower dir', (m) => chmodSync(`${m}/only-bottom`, 0o755)],
  ['chown a lower file', (m) => chownSync(`${m}/names/with space`, 321, 654)],
  ['utimes on a lower file', (m) => utimesSync(`${m}/names/.hidden`, 1000000.25, 2000000.5)],
  ['touch -m (mtime only) on a lower file', (m) => run('touch', '-m', '-d', '@1500000000.5', `${m}/names/ünïcødé ✓`)],
  ['touch -a (atime only) on an upper file', (m) => run('touch', '-a', '-d', '@1400000000', `${m}/names/.hidden`)],
  ['setxattr on a lower file', (m) => lsetxattr(`${m}/xattrs/g`, 'user.added', Buffer.from('v'))],
  ['setxattr on a lower file with a capability and set-uid', (m) => lsetxattr(`${m}/modes/capable`, 'user.added', Buffer.from('v'))],
  ['removexattr on a lower file', (m) => lremovexattr(`${m}/xattrs/f`, 'user.color')],
  ['removexattr of a missing xattr', (m) => lremovexattr(`${m}/names/-leading-dash`, 'user.none')],
  ['truncate a lower file to 0', (m) => truncateSync(`${m}/big/random`, 0)],
  ['truncate a lower file shorter', (m) => truncateSync(`${m}/dir-over-file/inside`, 1)],
  ['extend a sparse lower file', (m) => truncateSync(`${m}/big/sparse`, 80 << 20)],
  ['unlink a hard link', (m) => unlinkSync(`${m}/hard/two`)],
  ['empty and remove a merged dir', (m) => {
    for (const n of readdirSync(`${m}/merged`)) rmSync(`${m}/merged/${n}`, { recursive: true });
    rmdirSync(`${m}/merged`);
  }],
  ['recreate it as a file', (m) => writeFileSync(`${m}/merged`, 'a file now')],
];

/** A program's failure becomes an error with its stderr, so outcomes compare. */
function run(cmd: string, ...args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10000 });
  if (r.status !== 0) throw Object.assign(new Error(r.stderr), { code: `exit ${r.status}` });
}

function outcome(run: () => void): string {
  try {
    run();
    return 'ok';
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
}

/**
 * What can be compared between two runs made a moment apart: everything but times.
 * (Times of files the sequence sets explicitly are checked on the ts side separately.)
 */
function timeless(s: Snapshot): Snapshot {
  return {
    ...s,
    entries: Object.fromEntries(Object.entries(s.entries).map(([p, e]) => [p, { ...e, mtimeNs: '0' }])),
  };
}

interface UpperEntry {
  type: string;
  mode: string;
  uid: number;
  gid: number;
  sha256?: string;
  rdev?: number;
  opaque?: string;
  xattrs: string[];
}

/**
 * The upper layer as the on-disk format sees it. The kernel's own bookkeeping xattrs
 * (trusted.overlay.origin, .impure, ...) are not part of the format others read.
 */
function upperEncoding(root: string): Record<string, UpperEntry> {
  const out: Record<string, UpperEntry> = {};
  const walk = (rel: string) => {
    const p = rel ? join(root, rel) : root;
    const st = lstatSync(p);
    const type = isWhiteoutStat(st) ? 'whiteout' : st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : 'special';
    const entry: UpperEntry = {
      type,
      mode: (st.mode & 0o7777).toString(8),
      uid: st.uid,
      gid: st.gid,
      xattrs: type === 'symlink' ? [] : llistxattr(p).filter((n) => !n.startsWith('trusted.overlay.')).sort(),
    };
    if (type === 'file') entry.sha256 = createHash('sha256').update(readFileSync(p)).digest('hex');
    if (type === 'special') entry.rdev = st.rdev;
    if (type === 'dir') {
      const o = lgetxattrOrNull(p, 'trusted.overlay.opaque');
      if (o) entry.opaque = o.toString();
    }
    out[rel || '.'] = entry;
    if (type === 'dir') for (const n of readdirSync(p).sort()) walk(rel ? `${rel}/${n}` : n);
  };
  walk('');
  return out;
}

// Primed: every entry is looked at (its attributes and data in the kernel's caches) before
// the sequence, so what a copy-up changes must reach the kernel's caches too.
for (const primed of [false, true]) describe(`a sequence of changes${primed ? ', after a look at every entry,' : ''} gives the kernel\'s results, view and upper layer`, requires('root', 'fuse', 'kernel-overlay'), () => {
  let dir: string;
  let lowers: string[];
  const live: Mounted[] = [];
  const sides = {
    kernel: { results: [] as string[], times: {} as Record<string, string>, view: undefined as Snapshot | undefined, dirs: undefined as unknown as LayerDirs & { mnt: string } },
    ts: { results: [] as string[], times: {} as Record<string, string>, view: undefined as Snapshot | undefined, dirs: undefined as unknown as LayerDirs & { mnt: string } },
  };

  function makeDirs(name: string): LayerDirs & { mnt: string } {
    const d = { lowers, upper: join(dir, `${name}-upper`), work: join(dir, `${name}-work`), mnt: join(dir, `${name}-mnt`) };
    for (const p of [d.upper, d.work, d.mnt]) mkdirSync(p);
    return d;
  }

  before(async () => {
    dir = tempDir(primed ? 'wcmp-primed' : 'wcmp');
    lowers = kernelFormatLayers().map((tree, i) => {
      buildLayer(join(dir, `lower${i}`), tree);
      return join(dir, `lower${i}`);
    });
    sides.kernel.dirs = makeDirs('kernel');
    sides.ts.dirs = makeDirs('ts');
    const k = await mountKernel(sides.kernel.dirs, sides.kernel.dirs.mnt);
    const t = await mountTs(sides.ts.dirs, sides.ts.dirs.mnt);
    live.push(k, t);
    if (primed) for (const side of [sides.kernel, sides.ts]) snapshot(side.dirs.mnt);
    for (const [, run] of steps) {
      sides.kernel.results.push(outcome(() => run(sides.kernel.dirs.mnt)));
      sides.ts.results.push(outcome(() => run(sides.ts.dirs.mnt)));
    }
    for (const side of [sides.kernel, sides.ts]) {
      for (const p of ['names/.hidden', 'names/ünïcødé ✓']) {
        const st = lstatSync(join(side.dirs.mnt, p));
        side.times[p] = `${Math.floor(st.atimeMs)} ${Math.floor(st.mtimeMs)}`;
      }
    }
    sides.kernel.view = timeless(snapshot(sides.kernel.dirs.mnt));
    sides.ts.view = timeless(snapshot(sides.ts.dirs.mnt));
    await t.unmount();
    await k.unmount();
    live.length = 0;
  });

  after(async () => {
    for (const m of live) await m.unmount();
    if (dir) removeDir(dir);
  });

  test('each operation has the same outcome', () => {
    const table = (r: string[]) => steps.map(([name], i) => `${name}: ${r[i]}`);
    assert.deepEqual(table(sides.ts.results), table(sides.kernel.results));
    assert.ok(sides.kernel.results.includes('EXDEV') && sides.kernel.results.includes('ENOTEMPTY'), 'the sequence exercises failures');
  });

  test('times set explicitly are the same (to the millisecond)', () => {
    assert.equal(sides.ts.times['names/.hidden'], sides.kernel.times['names/.hidden']);
    assert.equal(sides.ts.times['names/ünïcødé ✓'], sides.kernel.times['names/ünïcødé ✓']);
    assert.equal(sides.kernel.times['names/ünïcødé ✓'].split(' ')[1], '1500000000500');
    assert.equal(sides.kernel.times['names/.hidden'].split(' ')[0], '1400000000000');
  });

  test('the merged view afterwards is the same', () => {
    assert.deepEqual(Object.keys(sides.ts.view!.entries).sort(), Object.keys(sides.kernel.view!.entries).sort());
    for (const [p, e] of Object.entries(sides.kernel.view!.entries)) assert.deepEqual(sides.ts.view!.entries[p], e, p);
    assert.deepEqual(sides.ts.view!.linkGroups, sides.kernel.view!.linkGroups);
  });

  test('the upper layer is encoded the same way', () => {
    const ours = upperEncoding(sides.ts.dirs.upper!);
    const theirs = upperEncoding(sides.kernel.dirs.upper!);
    assert.deepEqual(Object.keys(ours).sort(), Object.keys(theirs).sort());
    for (const [p, e] of Object.entries(theirs)) assert.deepEqual(ours[p], e, p);
    assert.ok(Object.values(theirs).some((e) => e.type === 'whiteout') && Object.values(theirs).some((e) => e.opaque === 'y'));
  });

  for (const [reader, writer] of [['kernel', 'ts'], ['ts', 'kernel']] as const) {
    test(`the ${writer} upper mounted by ${reader === 'ts' ? 'ts-overlayfs' : 'the kernel'} shows the same view`, async () => {
      const work = join(dir, `${reader}-reads-${writer}-work`);
      const mnt = join(dir, `${reader}-reads-${writer}-mnt`);
      mkdirSync(work);
      mkdirSync(mnt);
      const dirs = { lowers, upper: sides[writer].dirs.upper, work };
      const m = reader === 'kernel' ? await mountKernel(dirs, mnt) : await mountTs(dirs, mnt);
      live.push(m);
      try {
        const view = timeless(snapshot(mnt));
        assert.deepEqual(Object.keys(view.entries).sort(), Object.keys(sides[writer].view!.entries).sort());
        for (const [p, e] of Object.entries(sides[writer].view!.entries)) assert.deepEqual(view.entries[p], e, p);
      } finally {
        await m.unmount();
        live.splice(live.indexOf(m), 1);
      }
    });
  }
});

/** Runs a shell command as uid/gid 1000 (no supplementary groups), as a container's service user would. */
function asUser(uid: number, gid: number, script: string): void {
  const r = spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', 'sh', '-euc', script], { encoding: 'utf8', timeout: 10000 });
  if (r.status !== 0) throw new Error(`as ${uid}:${gid}: ${script}: ${r.stderr}`);
}

/** What a new entry's owner is compared by: type, mode, uid, gid. */
function owned(path: string): string {
  const st = lstatSync(path);
  const type = isWhiteoutStat(st) ? 'whiteout' : st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : 'special';
  return `${type} ${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid}`;
}

describe('entries made by another user belong to that user, as on the kernel', requires('root', 'fuse', 'kernel-overlay'), () => {
  let dir: string;
  const live: Mounted[] = [];
  const made = ['file', 'dir', 'link', 'fifo', 'dir/inner'];
  const places = ['shared', 'sgid', 'shared/reborn-dir'];
  /** Every entry made, relative to the mount root; `old` and `old-dir` replace whiteouts. */
  const paths = [...places.flatMap((p) => made.map((m) => `${p}/${m}`)), 'shared/old', 'shared/old-dir', 'shared/old-dir/inner'];

  const script = (m: string) => [
    ...places.map((p) => `cd ${m}/${p}; echo data > file; mkdir dir; ln -s file link; mkfifo fifo; echo x > dir/inner`),
    `cd ${m}/shared; echo again > old; mkdir old-dir; touch old-dir/inner`,
  ].join('\n');

  before(() => {
    dir = tempDir('owner');
    chmodSync(dir, 0o755);
    buildLayer(join(dir, 'lower'), {
      shared: { kind: 'dir' },
      'shared/old': { kind: 'file', data: 'lower' },
      'shared/old-dir': { kind: 'dir' },
      'shared/old-dir/below': { kind: 'file', data: 'lower' },
      'shared/reborn-dir': { kind: 'dir' },
      'shared/reborn-dir/below': { kind: 'file', data: 'lower' },
      sgid: { kind: 'dir' },
    });
    // World-writable (sticky, as /tmp) and a set-group-ID directory of group 2000.
    chmodSync(join(dir, 'lower/shared'), 0o1777);
    chmodSync(join(dir, 'lower/shared/reborn-dir'), 0o777);
    chownSync(join(dir, 'lower/sgid'), 0, 2000);
    chmodSync(join(dir, 'lower/sgid'), 0o2777);
  });

  after(async () => {
    for (const m of live) await m.unmount();
    if (dir) removeDir(dir);
  });

  async function run(side: 'kernel' | 'ts', extra: string[] = []): Promise<{ view: Record<string, string>; upper: Record<string, string> }> {
    const d = { lowers: [join(dir, 'lower')], upper: join(dir, `${side}-upper`), work: join(dir, `${side}-work`) };
    const mnt = join(dir, `${side}-mnt`);
    for (const p of [d.upper, d.work, mnt]) mkdirSync(p, { mode: 0o755 });
    const m = side === 'kernel' ? await mountKernel(d, mnt) : await mountTs(d, mnt, extra);
    live.push(m);
    try {
      // As root: whiteouts for the user to create over (a lower file, a lower dir with content).
      rmSync(join(mnt, 'shared/old'));
      rmSync(join(mnt, 'shared/old-dir'), { recursive: true });
      rmSync(join(mnt, 'shared/reborn-dir/below'));
      asUser(1000, 1000, script(mnt));
      const view = Object.fromEntries(paths.map((p) => [p, owned(join(mnt, p))]));
      await m.unmount();
      live.splice(live.indexOf(m), 1);
      const upper = Object.fromEntries(paths.map((p) => [p, owned(join(d.upper, p))]));
      return { view, upper };
    } finally {
      if (live.includes(m)) {
        await m.unmount();
        live.splice(live.indexOf(m), 1);
      }
    }
  }

  test('through the mount and in the upper layer', async () => {
    const kernel = await run('kernel');
    const ts = await run('ts');
    assert.deepEqual(ts.view, kernel.view);
    assert.deepEqual(ts.upper, kernel.upper);
    // The kernel's answer is the one expected: the caller's ids, the group of a set-group-ID parent.
    assert.match(kernel.view['shared/file'], / 1000:1000$/);
    assert.match(kernel.view['sgid/dir'], /^dir 2755 1000:2000$/);
    assert.match(kernel.view['sgid/dir/inner'], / 1000:2000$/);
  });

  test('with uidmapping/gidmapping, the caller\'s ids are stored mapped back', async () => {
    const d = { lowers: [join(dir, 'lower')], upper: join(dir, 'mapped-upper'), work: join(dir, 'mapped-work') };
    const mnt = join(dir, 'mapped-mnt');
    for (const p of [d.upper, d.work, mnt]) mkdirSync(p, { mode: 0o755 });
    const m = await mountTs(d, mnt, ['uidmapping=0:100000:65536', 'gidmapping=0:100000:65536']);
    live.push(m);
    try {
      // Stored 0 (root) is shown as 100000: the lower's directories are 100000's, so make one world-writable.
      asUser(101000, 101000, `cd ${mnt}/shared; echo data > file; mkdir dir; ln -s file link; mkfifo fifo`);
      for (const p of ['file', 'dir', 'link', 'fifo']) {
        assert.match(owned(join(mnt, 'shared', p)), / 101000:101000$/, p);
        assert.match(owned(join(d.upper, 'shared', p)), / 1000:1000$/, p);
      }
    } finally {
      await m.unmount();
      live.splice(live.indexOf(m), 1);
    }
  });
});
