/**
 * Real programs on a writable mount: tar, git, sqlite3 and a Node script run the same commands
 * on a ts-overlayfs mount and on a kernel overlayfs mount over the same lower layers (shared
 * read-only between the two mounts: lowers are never written). Compared afterwards:
 *  - what the programs report (exit status, stdout, stderr, mountpoint replaced by MNT);
 *  - the merged trees (paths, types, modes, owners, sizes, contents, symlink targets, visible
 *    xattrs, hard-link groups);
 *  - once both are unmounted, the upper layers' encodings: same paths, whiteouts (char 0/0)
 *    at the same places, the same opaque markers, the same contents.
 *
 * Each scenario has its own layers, uppers and mounts, so one failing leaves the others
 * alone. The servers run in child processes (mountTs); the programs are children too, with
 * their working directory inside the mount.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, chownSync, linkSync, lstatSync, lutimesSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, test } from 'node:test';
import { lgetxattr, llistxattr, lutimens } from '../../src/sys/libc';
import { requires } from '../helpers/env';
import { buildLayer, removeDir, tempDir, type Tree } from '../helpers/layers';
import { mountKernel, mountTs, type Mounted } from '../helpers/mounts';
import { snapshot, type Snapshot, typeOf } from '../helpers/snapshot';

type SideName = 'kernel' | 'ts';
const SIDES: readonly SideName[] = ['kernel', 'ts'];

interface Side {
  readonly name: SideName;
  readonly upper: string;
  readonly work: string;
  readonly mnt: string;
  mount?: Mounted;
}

interface Pair {
  readonly dir: string;
  readonly lowers: string[];
  readonly sides: Record<SideName, Side>;
  /** Taken after the layers were built: an mtime before it was not set by the programs. */
  readonly since: number;
}

/** Fields that legitimately differ between two runs, per path (see where each is used). */
type Unstable = Record<string, readonly ('sha256' | 'size')[]>;

const FIXED = { sec: 1600000000, nsec: 0 };
const ARCHIVE_TIME = 1577836800; // 2020-01-01T00:00:00Z
const RUN_TIMEOUT = 30000;
/** A small, fixed environment for the programs (no user config, same locale and zone). */
const BASE_ENV: NodeJS.ProcessEnv = {
  PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
  LC_ALL: 'C',
  TZ: 'UTC',
  HOME: '/nonexistent',
};

const dirs: string[] = [];
const live = new Set<Mounted>();

after(async () => {
  for (const m of [...live].reverse()) {
    live.delete(m);
    try {
      await m.unmount();
    } catch {
      // mounts.ts detaches what will not go; nothing more to do here.
    }
  }
  for (const d of dirs) removeDir(d);
});

function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Deterministic bytes, different per seed. */
function bytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 131 + seed * 7 + (i >> 8)) & 0xff;
  return b;
}

function buildLowers(dir: string, trees: Tree[]): string[] {
  return trees.map((tree, i) => {
    const root = join(dir, `lower${i}`);
    buildLayer(root, tree);
    return root;
  });
}

/** Builds the lowers, then mounts the kernel and ts-overlayfs over them, each with its own empty upper. */
async function openPair(label: string, makeLowers: (dir: string) => string[]): Promise<Pair> {
  const dir = tempDir(`prog-${label}`);
  dirs.push(dir);
  const lowers = makeLowers(dir);
  const sides = {} as Record<SideName, Side>;
  for (const name of SIDES) {
    const side: Side = { name, upper: join(dir, `${name}-upper`), work: join(dir, `${name}-work`), mnt: join(dir, `${name}-mnt`) };
    for (const p of [side.upper, side.work, side.mnt]) mkdirSync(p);
    // The merged root shows the upper root's times: the same on both sides.
    lutimens(side.upper, FIXED, FIXED);
    sides[name] = side;
  }
  const k = sides.kernel;
  k.mount = await mountKernel({ lowers, upper: k.upper, work: k.work }, k.mnt);
  live.add(k.mount);
  const t = sides.ts;
  t.mount = await mountTs({ lowers, upper: t.upper, work: t.work }, t.mnt);
  live.add(t.mount);
  const since = Date.now();
  // File times come from a coarse clock that may lag Date.now() by a tick: let it pass, so
  // whatever the programs write is stamped after `since`.
  await sleep(50);
  return { dir, lowers, sides, since };
}

async function unmountSide(side: Side): Promise<void> {
  const m = side.mount;
  if (!m) return;
  side.mount = undefined;
  live.delete(m);
  await m.unmount();
}

interface Outcome {
  status: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

interface RunOptions {
  /** Working directory relative to the mountpoint. */
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  input?: string;
}

/** Runs a program with its working directory inside SIDE's mount; the mountpoint reads MNT in its output. */
function run(side: Side, cmd: string, args: string[], opts: RunOptions = {}): Outcome {
  const r = spawnSync(cmd, args.map((a) => a.split('{MNT}').join(side.mnt)), {
    cwd: join(side.mnt, opts.cwd ?? ''),
    env: { ...BASE_ENV, ...opts.env },
    input: opts.input,
    encoding: 'utf8',
    timeout: RUN_TIMEOUT,
    maxBuffer: 64 << 20,
  });
  const label = `${cmd} ${args.join(' ')} on ${side.name}`;
  if (r.error) throw new Error(`${label}: ${r.error.message}\nstderr: ${r.stderr}`);
  const scrub = (s: string) => s.split(side.mnt).join('MNT');
  return { status: r.status, signal: r.signal, stdout: scrub(r.stdout), stderr: scrub(r.stderr) };
}

/** The same command on both mounts: the outcomes must be equal; returns it. */
function both(pair: Pair, cmd: string, args: string[], opts: RunOptions = {}): Outcome {
  const k = run(pair.sides.kernel, cmd, args, opts);
  const t = run(pair.sides.ts, cmd, args, opts);
  assert.deepEqual(t, k, `${cmd} ${args.join(' ')}: same outcome on ts-overlayfs as on the kernel`);
  return k;
}

/** A shell pipeline on both mounts (`sh -c SCRIPT`), same outcome. */
function bothSh(pair: Pair, script: string, opts: RunOptions = {}): Outcome {
  return both(pair, 'sh', ['-c', script], opts);
}

type Comparable = Omit<Snapshot['entries'][string], 'mtimeNs'> & { mtime: string | 'set by the run' };

/**
 * A snapshot without what two runs of the same programs cannot share: an mtime set while
 * the programs ran is the wall clock of that run, so it is only required to be recent on
 * both sides; older mtimes (from the lowers, kept by copy-up, or restored by tar -p) must be
 * equal to the nanosecond. Fields named in UNSTABLE are dropped for that path.
 */
function comparable(snap: Snapshot, since: number, unstable: Unstable): Record<string, Comparable> {
  const out: Record<string, Comparable> = {};
  for (const [path, e] of Object.entries(snap.entries)) {
    const { mtimeNs, ...rest } = e;
    const view: Comparable = { ...rest, mtime: BigInt(mtimeNs) < BigInt(Math.floor(since)) * 1_000_000n ? mtimeNs : 'set by the run' };
    for (const field of unstable[path] ?? []) delete (view as Partial<Comparable>)[field];
    out[path] = view;
  }
  return out;
}

/** Every difference between two path-keyed views, one line each: `WHAT PATH: FIELD kernel X, ts Y`. */
function diffEntries(ours: Record<string, object>, kernel: Record<string, object>, what: string): string[] {
  const out: string[] = [];
  const show = (v: unknown) => JSON.stringify(v);
  for (const path of [...new Set([...Object.keys(kernel), ...Object.keys(ours)])].sort()) {
    const k = kernel[path] as Record<string, unknown> | undefined;
    const t = ours[path] as Record<string, unknown> | undefined;
    if (!k || !t) {
      out.push(`${what} ${path}: only on ${k ? 'the kernel' : 'ts-overlayfs'}`);
      continue;
    }
    for (const field of [...new Set([...Object.keys(k), ...Object.keys(t)])]) {
      if (!isDeepStrictEqual(k[field], t[field])) out.push(`${what} ${path}: ${field} kernel ${show(k[field])}, ts ${show(t[field])}`);
    }
  }
  return out;
}

interface Merged {
  kernel: Snapshot;
  ts: Snapshot;
  /** Every difference, asserted empty at the end of the test (assertSameMerged). */
  diffs: string[];
}

/**
 * The merged trees of both mounts. Differences are collected, not thrown at once, and
 * asserted at the end of the test (assertSameMerged): one difference then does not hide
 * what the rest of the scenario (round trips, the upper layers) would show.
 */
function compareMerged(pair: Pair, unstable: Unstable = {}): Merged {
  const kernel = snapshot(pair.sides.kernel.mnt);
  const ours = snapshot(pair.sides.ts.mnt);
  const diffs = diffEntries(comparable(ours, pair.since, unstable), comparable(kernel, pair.since, unstable), 'merged');
  if (!isDeepStrictEqual(ours.linkGroups, kernel.linkGroups)) {
    diffs.push(`merged hard-link groups (same st_ino): kernel ${JSON.stringify(kernel.linkGroups)}, ts ${JSON.stringify(ours.linkGroups)}`);
  }
  if (ours.distinctInodes !== kernel.distinctInodes) {
    diffs.push(`merged distinct st_ino of non-directories: kernel ${kernel.distinctInodes}, ts ${ours.distinctInodes}`);
  }
  return { kernel, ts: ours, diffs };
}

function assertSameMerged(merged: Merged): void {
  assert.deepEqual(merged.diffs, [], 'merged tree on ts-overlayfs as on the kernel');
}

interface UpperEntry {
  type: string;
  mode: string;
  uid: number;
  gid: number;
  whiteout?: boolean;
  size?: number;
  sha256?: string;
  target?: string;
  /** trusted.overlay.opaque, the one overlay xattr both implementations must write alike. */
  opaque: string | null;
  /** Every other xattr but the overlay's own. */
  xattrs: Record<string, string>;
}

interface UpperView {
  entries: Record<string, UpperEntry>;
  /** Other trusted.overlay.* names per path (origin, impure, uuid: the kernel's bookkeeping). */
  overlayXattrs: Record<string, string[]>;
}

const OPAQUE = 'trusted.overlay.opaque';

/**
 * An upper layer as the overlay format sees it. Not compared: times (compared through the
 * live mounts instead, where the rules for run-dependent times apply), nlink (the kernel
 * makes its whiteouts hard links of one shared whiteout inode: nlink 2 and more, ours are
 * separate mknods) and directory sizes (already compared through the mounts, which show the
 * upper directory's size).
 */
function upperView(root: string, unstable: Unstable): UpperView {
  const entries: Record<string, UpperEntry> = {};
  const overlayXattrs: Record<string, string[]> = {};
  const walk = (rel: string) => {
    const p = rel === '' ? root : join(root, rel);
    const st = lstatSync(p);
    const type = typeOf(st.mode);
    const view: UpperEntry = { type, mode: (st.mode & 0o7777).toString(8), uid: st.uid, gid: st.gid, opaque: null, xattrs: {} };
    if (type === 'chr' || type === 'blk') view.whiteout = type === 'chr' && st.rdev === 0;
    if (type === 'file') {
      view.size = st.size;
      view.sha256 = sha256(readFileSync(p));
    }
    if (type === 'symlink') view.target = readlinkSync(p);
    const key = rel === '' ? '.' : rel;
    if (type !== 'symlink') {
      for (const name of llistxattr(p).sort()) {
        const value = lgetxattr(p, name);
        if (name === OPAQUE) view.opaque = value.toString();
        else if (name.startsWith('trusted.overlay.')) (overlayXattrs[key] ??= []).push(name.slice('trusted.overlay.'.length));
        else view.xattrs[name] = value.toString('base64');
      }
    }
    for (const field of unstable[key] ?? []) delete (view as Partial<UpperEntry>)[field];
    entries[key] = view;
    if (type === 'dir') for (const name of readdirSync(p).sort()) walk(rel === '' ? name : `${rel}/${name}`);
  };
  walk('');
  return { entries, overlayXattrs };
}

/** The kernel's own bookkeeping xattrs in an upper layer; ts-overlayfs writes none of them. */
const KERNEL_BOOKKEEPING = new Set(['origin', 'impure', 'uuid']);
/** ts-overlayfs's own: the inode number a copy keeps (an overlay xattr the kernel ignores, and hides). */
const OURS = new Set(['tsovl.ino']);

/**
 * Unmounts both sides, then compares the upper layers. Differences that are legitimate:
 *  - the kernel also writes trusted.overlay.origin (file handle of the lower a copy came
 *    from), .impure (a directory holds copied-up or moved entries) and .uuid (on the upper
 *    root): bookkeeping for stable inode numbers, NFS export and the index, all off or
 *    optional here. Without them the kernel takes an upper entry for a pure upper one;
 *    kernelReadsUppers below shows it reads ts-overlayfs's upper to the same tree as its
 *    own. They are listed, and must be nothing else than these three (a redirect or
 *    metacopy xattr would mean a different encoding, which these options rule out).
 *  - WORKDIR: the kernel keeps `work/` (and its shared whiteout) there; not compared. Ours must
 *    hold no leftover temporary entry.
 */
async function closePair(pair: Pair, unstable: Unstable = {}): Promise<Record<SideName, UpperView>> {
  for (const name of SIDES) await unmountSide(pair.sides[name]);
  const kernel = upperView(pair.sides.kernel.upper, unstable);
  const ours = upperView(pair.sides.ts.upper, unstable);
  assert.deepEqual(diffEntries(ours.entries, kernel.entries, 'upper'), [], 'upper layer encoded as by the kernel');
  for (const [path, names] of Object.entries(kernel.overlayXattrs)) {
    const odd = names.filter((n) => !KERNEL_BOOKKEEPING.has(n));
    assert.deepEqual(odd, [], `kernel upper ${path}: only bookkeeping overlay xattrs besides opaque`);
  }
  for (const [path, names] of Object.entries(ours.overlayXattrs)) {
    // Should ts-overlayfs ever write one of these, the kernel must have written it at the same place.
    for (const n of names) if (!OURS.has(n)) assert.ok(kernel.overlayXattrs[path]?.includes(n), `ts upper ${path}: trusted.overlay.${n} not written by the kernel`);
  }
  assert.deepEqual(readdirSync(join(pair.sides.ts.work, 'work')), [], 'no temporary entry left in WORKDIR/work');
  assert.deepEqual(await kernelReadsUppers(pair, unstable), [], 'the kernel reads the ts-overlayfs upper as it reads its own');
  return { kernel, ts: ours };
}

/**
 * The evidence that the differences above do not matter: each upper, now a plain directory,
 * mounted read-only by the kernel as the top layer over the same lowers, gives the same tree
 * (times aside: compared on the live mounts). Whiteouts and opaque markers are honoured the
 * same way, with or without the kernel's bookkeeping xattrs.
 */
async function kernelReadsUppers(pair: Pair, unstable: Unstable): Promise<string[]> {
  const views = {} as Record<SideName, Record<string, object>>;
  for (const side of SIDES) {
    const mnt = join(pair.dir, `${side}-readback`);
    mkdirSync(mnt);
    const m = await mountKernel({ lowers: [pair.sides[side].upper, ...pair.lowers] }, mnt);
    live.add(m);
    try {
      views[side] = Object.fromEntries(Object.entries(comparable(snapshot(mnt), pair.since, unstable))
        .map(([path, { mtime: _mtime, ...rest }]) => [path, rest]));
    } finally {
      live.delete(m);
      await m.unmount();
    }
  }
  return diffEntries(views.ts, views.kernel, 'kernel reading the upper');
}

function whiteouts(view: UpperView): string[] {
  return Object.entries(view.entries).filter(([, e]) => e.whiteout).map(([p]) => p).sort();
}

function opaques(view: UpperView): string[] {
  return Object.entries(view.entries).filter(([, e]) => e.opaque !== null).map(([p, e]) => `${p}=${e.opaque}`).sort();
}

function fileSha(path: string): string {
  return sha256(readFileSync(path));
}

describe('programs on a writable mount behave as on kernel overlayfs', requires('root', 'fuse', 'kernel-overlay'), () => {
  test('tar -x into the mount; tar -c of the whole mount round-trips', { timeout: 60000 }, async () => {
    const pair = await openPair('tar', (dir) => buildLowers(dir, [
      {
        'sub/keep.txt': { kind: 'file', data: 'kept from the top lower\n' },
        'sub/overwrite-me.txt': { kind: 'file', data: 'lower version\n', mode: 0o644 },
        'sub/shared-dir/from-top.txt': { kind: 'file', data: 'top\n' },
        'sub/hl-lower/a': { kind: 'file', data: 'linked in a lower\n' },
        'sub/hl-lower/b': { kind: 'hardlink', to: 'sub/hl-lower/a' },
        'sub/lower-link': { kind: 'symlink', target: 'keep.txt' },
      },
      {
        'sub/overwrite-me.txt': { kind: 'file', data: 'hidden bottom version\n' },
        'sub/shared-dir/from-bottom.txt': { kind: 'file', data: 'bottom\n' },
        'sub/deep/lower/file.txt': { kind: 'file', data: 'deep in the bottom lower\n' },
        'other/untouched.txt': { kind: 'file', data: 'untouched\n', mode: 0o600 },
      },
    ]));

    // The archive is made outside any mount, with fixed times so tar -x restores known ones.
    const src = join(pair.dir, 'archive-src');
    const files: Record<string, [string | Buffer, number]> = {
      'newdir/a.txt': ['alpha\n', 0o644],
      'newdir/nested/b.bin': [bytes(65537, 1), 0o600],
      'overwrite-me.txt': ['archive version\n', 0o640],
      'shared-dir/from-archive.txt': ['from the archive\n', 0o644],
      'deep/lower/extra.txt': ['next to a bottom-lower file\n', 0o644],
      'exec.sh': ['#!/bin/sh\necho hi\n', 0o755],
      'owned.txt': ['owned by someone else\n', 0o644],
    };
    for (const [rel, [data, mode]] of Object.entries(files)) {
      mkdirSync(join(src, rel, '..'), { recursive: true });
      writeFileSync(join(src, rel), data, { mode });
    }
    mkdirSync(join(src, 'empty-dir'));
    symlinkSync('a.txt', join(src, 'newdir/link'));
    linkSync(join(src, 'newdir/a.txt'), join(src, 'newdir/hard'));
    chownSync(join(src, 'owned.txt'), 1234, 5678);
    chmodSync(join(src, 'shared-dir'), 0o750);
    lutimesSync(join(src, 'newdir/link'), ARCHIVE_TIME, ARCHIVE_TIME);
    for (const rel of ['.', ...readdirSync(src, { recursive: true }) as string[]]) {
      if (!lstatSync(join(src, rel)).isSymbolicLink()) utimesSync(join(src, rel), ARCHIVE_TIME, ARCHIVE_TIME + 60);
    }
    const archive = join(pair.dir, 'in.tar');
    const made = spawnSync('tar', ['--sort=name', '--numeric-owner', '-cf', archive, '-C', src, '.'], { encoding: 'utf8' });
    assert.equal(made.status, 0, made.stderr);

    const x = both(pair, 'tar', ['-xf', archive, '-C', 'sub', '--same-owner', '-p', '--numeric-owner']);
    assert.equal(x.status, 0, x.stderr);
    assert.equal(x.stderr, '');

    const merged = compareMerged(pair);
    const k = merged.kernel.entries;
    // The oracle did what the scenario means to exercise.
    assert.equal(k['sub/overwrite-me.txt'].sha256, sha256('archive version\n'));
    assert.equal(k['sub/overwrite-me.txt'].mode, '640');
    assert.equal(k['sub/shared-dir'].mode, '750');
    assert.deepEqual(Object.keys(k).filter((p) => p.startsWith('sub/shared-dir/')).sort(),
      ['sub/shared-dir/from-archive.txt', 'sub/shared-dir/from-bottom.txt', 'sub/shared-dir/from-top.txt']);
    assert.equal(k['sub/newdir/link'].target, 'a.txt');
    assert.equal(k['sub/owned.txt'].uid, 1234);
    assert.equal(k['sub/newdir/a.txt'].mtimeNs, String(BigInt(ARCHIVE_TIME + 60) * 1_000_000_000n), 'tar -p restored the time');
    assert.ok(merged.kernel.linkGroups.some((g) => g.join() === 'sub/newdir/a.txt,sub/newdir/hard'));
    assert.ok(k['sub/deep/lower/file.txt'] && k['sub/deep/lower/extra.txt']);

    // The whole mount into an archive. --sort=name: without it the member order is readdir
    // order, which may differ, and with it which name of a hard link is stored as the file.
    const out = (side: SideName) => join(pair.dir, `out-${side}.tar`);
    const made2 = Object.fromEntries(SIDES.map((side) => [side,
      run(pair.sides[side], 'sh', ['-c', 'tar --sort=name --numeric-owner -cf - -C "$1" . > "$2"', 'sh', '{MNT}', out(side)])]));
    assert.equal(made2.kernel.status, 0, made2.kernel.stderr);
    const listing = (side: SideName) => {
      const r = spawnSync('tar', ['--numeric-owner', '-tvf', out(side)], { encoding: 'utf8', env: BASE_ENV });
      assert.equal(r.status, 0, r.stderr);
      // Modulo times: "mode owner size DATE TIME name".
      return r.stdout.trim().split('\n').map((l) => l.replace(/^(\S+ \S+ +\d+) \d{4}-\d\d-\d\d \d\d:\d\d /, '$1 '));
    };
    const kl = listing('kernel');
    assert.ok(kl.some((l) => /^h.* \.\/sub\/newdir\/hard link to \.\/sub\/newdir\/a\.txt$/.test(l)), kl.join('\n'));
    // Differences from here on are collected and asserted at the end, with the merged tree's.
    const problems: string[] = [];
    if (!isDeepStrictEqual(made2.ts, made2.kernel)) problems.push(`tar -c: kernel ${JSON.stringify(made2.kernel)}, ts ${JSON.stringify(made2.ts)}`);
    const tl = listing('ts');
    if (!isDeepStrictEqual(tl, kl) && kl.every((l) => tl.includes(l)) && tl.every((l) => kl.includes(l))) {
      problems.push('tar -tvf: the same members in another order');
    }
    for (const line of kl.filter((l) => !tl.includes(l))) problems.push(`tar -tvf: only on the kernel: ${line}`);
    for (const line of tl.filter((l) => !kl.includes(l))) problems.push(`tar -tvf: only on ts-overlayfs: ${line}`);

    // Round trip: the archive of the ts mount, extracted on a plain directory, is the merged
    // tree (as the kernel shows it). Not carried by a plain tar: xattrs, times to the ms; nlink
    // of a merged directory is 1 in a mount.
    const plain = join(pair.dir, 'roundtrip');
    mkdirSync(plain);
    const rx = spawnSync('tar', ['-xf', out('ts'), '-C', plain, '--same-owner', '-p', '--numeric-owner'], { encoding: 'utf8' });
    assert.equal(rx.status, 0, rx.stderr);
    const essentials = (s: Snapshot) => Object.fromEntries(Object.entries(s.entries).map(([p, e]) =>
      [p, { type: e.type, mode: e.mode, uid: e.uid, gid: e.gid, size: e.type === 'dir' ? 0 : e.size, sha256: e.sha256, target: e.target }]));
    const back = snapshot(plain);
    problems.push(...diffEntries(essentials(back), essentials(merged.kernel), 'round trip'));
    if (!isDeepStrictEqual(back.linkGroups, merged.kernel.linkGroups)) {
      problems.push(`round trip hard links: mount ${JSON.stringify(merged.kernel.linkGroups)}, extracted ${JSON.stringify(back.linkGroups)}`);
    }

    // mv of a directory with content in a lower layer: rename(2) gives EXDEV, so mv copies the
    // tree and deletes the source (which leaves a whiteout); then what a program sees of it.
    const mv = Object.fromEntries(SIDES.map((side) => [side,
      run(pair.sides[side], 'sh', ['-c', 'mv sub/deep other/deep && stat -c "%A %h %s %n" other/deep other/deep/lower other/deep/lower/* && ls -A sub'])]));
    assert.equal(mv.kernel.status, 0, mv.kernel.stderr);
    assert.match(mv.kernel.stdout, /^drwxr-xr-x .* other\/deep\n/);
    if (!isDeepStrictEqual(mv.ts, mv.kernel)) problems.push(`mv sub/deep other/deep: kernel ${JSON.stringify(mv.kernel)}, ts ${JSON.stringify(mv.ts)}`);
    const moved = compareMerged(pair);
    problems.push(...moved.diffs.filter((d) => !merged.diffs.includes(d)).map((d) => `after mv: ${d}`));

    const uppers = await closePair(pair);
    // tar -x replaces a lower file in place (unlink, then create over the whiteout): the only
    // whiteout left is the one mv's delete left where the moved directory was.
    assert.deepEqual(whiteouts(uppers.kernel), ['sub/deep']);
    assert.deepEqual([...merged.diffs, ...problems], [], 'merged tree, tar -c listing, round trip and mv as on the kernel');
  });

  test('git: init, commit, modify a lower file, commit again', { timeout: 60000 }, async () => {
    const pair = await openPair('git', (dir) => buildLowers(dir, [
      {
        'repo/README.md': { kind: 'file', data: '# project\n' },
        'repo/src/lib.txt': { kind: 'file', data: 'library\n' },
        'repo/bin/run.sh': { kind: 'file', data: '#!/bin/sh\n', mode: 0o755 },
      },
      {
        'repo/README.md': { kind: 'file', data: 'hidden\n' },
        'repo/docs/guide.txt': { kind: 'file', data: 'guide from the bottom lower\n' },
      },
    ]));
    const home = join(pair.dir, 'home');
    mkdirSync(home);
    const env = {
      HOME: home,
      GIT_CONFIG_NOSYSTEM: '1',
      GIT_AUTHOR_DATE: '2020-01-01T00:00:00Z',
      GIT_COMMITTER_DATE: '2020-01-01T00:00:00Z',
    };
    const git = (args: string[]) => {
      const r = both(pair, 'git', args, { cwd: 'repo', env });
      assert.equal(r.status, 0, `git ${args.join(' ')}: ${r.stderr}`);
      return r;
    };
    git(['init', '-q', '-b', 'main']);
    git(['config', 'user.name', 'Test Person']);
    git(['config', 'user.email', 'test@example.invalid']);
    assert.equal(bothSh(pair, "echo 'a new file' > new.txt && mkdir src/sub && echo 'int main(void) { return 0; }' > src/sub/code.c", { cwd: 'repo' }).status, 0);
    const first = bothSh(pair, 'git add -A && git commit -q -m x', { cwd: 'repo', env });
    assert.equal(first.status, 0, first.stderr);
    assert.equal(bothSh(pair, "echo 'changed through the mount' >> README.md", { cwd: 'repo' }).status, 0);
    const second = bothSh(pair, 'git add -A && git commit -q -m y', { cwd: 'repo', env });
    assert.equal(second.status, 0, second.stderr);

    assert.equal(bothSh(pair, 'git log --oneline | wc -l', { cwd: 'repo', env }).stdout.trim(), '2');
    assert.equal(git(['status', '--porcelain']).stdout, '');
    git(['fsck']);
    const heads = Object.fromEntries(SIDES.map((s) => [s, run(pair.sides[s], 'git', ['rev-parse', 'HEAD'], { cwd: 'repo', env }).stdout.trim()]));
    assert.match(heads.kernel, /^[0-9a-f]{40}$/);
    assert.equal(heads.ts, heads.kernel, 'same HEAD commit hash');
    const probe = git(['config', '--list', '--local']).stdout;
    assert.match(probe, /core\.filemode=true/);
    assert.doesNotMatch(probe, /core\.symlinks=false/);

    // .git/index holds each tracked file's stat data (st_dev, st_ino, ctime, mtime): the
    // same size, different bytes from one run to the next. Everything else git writes here
    // (objects, refs, logs, config) is determined by the commands and the fixed dates.
    const unstable: Unstable = { 'repo/.git/index': ['sha256'] };
    const merged = compareMerged(pair, unstable);
    assert.equal(merged.kernel.entries['repo/README.md'].sha256, sha256('# project\nchanged through the mount\n'));
    const uppers = await closePair(pair, unstable);
    assert.ok(uppers.kernel.entries['repo/README.md'], 'the lower README was copied up');
    assert.equal(lstatSync(join(pair.lowers[0], 'repo/README.md')).size, '# project\n'.length, 'lower unchanged');
    assertSameMerged(merged);
  });

  test('sqlite3: a new WAL database and a rollback-journal database from a lower layer', { timeout: 60000 }, async () => {
    let lowerDb = '';
    let lowerSha = '';
    const pair = await openPair('sqlite', (dir) => {
      const lowers = buildLowers(dir, [
        { 'data/README': { kind: 'file', data: 'databases\n' } },
        { 'data/other.txt': { kind: 'file', data: 'bottom\n' } },
      ]);
      lowerDb = join(lowers[0], 'data/lower.db');
      const made = spawnSync('sqlite3', ['-batch', '-bail', lowerDb], {
        input: "CREATE TABLE kv(k TEXT PRIMARY KEY, v INTEGER NOT NULL);\n" +
          "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM c WHERE i<199) INSERT INTO kv SELECT printf('k%03d', i), i FROM c;\n",
        encoding: 'utf8',
      });
      assert.equal(made.status, 0, made.stderr);
      lowerSha = fileSha(lowerDb);
      return lowers;
    });
    const sqlite = (db: string, sql: string) => {
      const r = both(pair, 'sqlite3', ['-batch', '-bail', db], { input: sql });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stderr, '');
      return r.stdout;
    };

    // A new database in WAL mode: 1000 rows in one transaction, updated, partly deleted.
    assert.equal(sqlite('new.db', [
      'PRAGMA journal_mode=WAL;',
      'CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);',
      'BEGIN;',
      "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<1000) INSERT INTO t SELECT i, printf('row-%04d', i) FROM c;",
      'COMMIT;',
      "UPDATE t SET v = v || '-updated' WHERE id % 3 = 0;",
      'DELETE FROM t WHERE id % 10 = 0;',
      'PRAGMA integrity_check;',
      'SELECT count(*) FROM t;',
      "SELECT count(*) FROM t WHERE v LIKE '%-updated';",
    ].join('\n')), 'wal\nok\n900\n300\n');
    // Reopened by another process: still WAL, checkpointed, intact.
    assert.equal(sqlite('new.db', 'PRAGMA journal_mode;\nPRAGMA integrity_check;\nSELECT sum(id) FROM t;\n'), 'wal\nok\n450000\n');

    // The lower database, changed through the mount with the default rollback journal.
    assert.equal(sqlite('data/lower.db', [
      'PRAGMA journal_mode;',
      'BEGIN;',
      "UPDATE kv SET v = v + 1000 WHERE k <= 'k049';",
      "INSERT INTO kv VALUES('added', 42);",
      "DELETE FROM kv WHERE k = 'k199';",
      'COMMIT;',
      'PRAGMA integrity_check;',
      'SELECT count(*), sum(v) FROM kv;',
    ].join('\n')), 'delete\nok\n200|69743\n');
    assert.equal(sqlite('data/lower.db', "SELECT v FROM kv WHERE k = 'added';\n"), '42\n');
    assert.equal(fileSha(lowerDb), lowerSha, 'the lower database is unchanged while mounted');

    const merged = compareMerged(pair);
    const names = Object.keys(merged.kernel.entries);
    assert.deepEqual(names.filter((p) => /-(wal|shm|journal)$/.test(p)), [], 'no journal left behind');
    assert.notEqual(merged.kernel.entries['data/lower.db'].sha256, lowerSha, 'the merged database has the change');

    const uppers = await closePair(pair);
    assert.ok(uppers.ts.entries['data/lower.db'], 'the database was copied up');
    assert.equal(fileSha(lowerDb), lowerSha, 'the lower database is unchanged after unmount');
    assertSameMerged(merged);
  });

  test('a Node script: offsets, appends, fsync, atomic replace, renames, truncates', { timeout: 60000 }, async () => {
    const pair = await openPair('node', (dir) => buildLowers(dir, [
      {
        'data/lower.txt': { kind: 'file', data: '0123456789abcdefghijklmnopqrstuvwxyz\n' },
        'data/log.txt': { kind: 'file', data: 'line 1\n' },
        'data/config.json': { kind: 'file', data: '{"version":1}\n', mode: 0o600 },
        'data/move-me.txt': { kind: 'file', data: 'moving\n' },
        'data/big.bin': { kind: 'file', data: bytes(200 * 1024 + 3, 2) },
        'data/doomed.txt': { kind: 'file', data: 'soon empty\n' },
        'data/unlink-me.txt': { kind: 'file', data: 'gone soon\n' },
        'tree/a/x.txt': { kind: 'file', data: 'x from the top lower\n' },
      },
      {
        'data/config.json': { kind: 'file', data: '{"version":0}\n' },
        'data/from-bottom.txt': { kind: 'file', data: 'from the bottom lower\n' },
        'tree/b/y.txt': { kind: 'file', data: 'y\n' },
        'rmme/inner/z.txt': { kind: 'file', data: 'z\n' },
        'rmme/top.txt': { kind: 'file', data: 'top\n' },
      },
    ]));
    const script = join(pair.dir, 'script.js');
    writeFileSync(script, NODE_SCRIPT);
    const outs = Object.fromEntries(SIDES.map((side) => [side, run(pair.sides[side], process.execPath, [script, '{MNT}'])])) as Record<SideName, Outcome>;
    assert.equal(outs.kernel.status, 0, outs.kernel.stderr);
    type Summary = { steps: Record<string, unknown>; tree: { path: string }[] };
    const kernelSummary = JSON.parse(outs.kernel.stdout) as Summary;
    const s = kernelSummary.steps;
    // The oracle's answers, so that "equal" means "right".
    assert.deepEqual(s['offsets'], { size: 1048580, middle: 'middle', head: 'hEAd' });
    assert.equal(s['pwrite into a lower file'], '0123456789PATCHEDhijklmnopqrstuvwxyz\n');
    assert.equal(s['append to a lower file'], 'line 1\nline 2\nline 3\n');
    assert.deepEqual(s['atomic replace of a lower file'], { text: '{"version":2}\n', tmpGone: true, mode: '640' });
    assert.equal(s['atomic replace of a new file, twice'], 'state b');
    assert.deepEqual(s['rename across directories'], { moved: ['from-lower.txt'], data: ['big.bin', 'config.json', 'doomed.txt', 'log.txt', 'lower.txt', 'offsets.bin', 'unlink-me.txt'], a: 'from the bottom lower\n', b: ['y.txt'] });
    assert.equal(s['rename a directory with lower content'], 'error EXDEV');
    assert.deepEqual(s['rename a new directory across directories'], ['from-lower.txt', 'newdir']);
    assert.deepEqual(s['truncate'], { big: sha256(bytes(200 * 1024 + 3, 2).subarray(0, 10)), bigSize: 10, doomed: 0, state: 100000 });
    assert.deepEqual(s['remove a lower tree, make the dir again'], ['new.txt']);
    assert.equal(s['unlink a lower file'], false);
    assert.deepEqual(s['hard link: attributes seen through each name'], { before: 1, afterLink: [2, 2], sizes: [8, 8], afterUnlink: 1 });
    assert.deepEqual(s['utimes with different atime and mtime'], { atimeMs: 1000000000000, mtimeMs: 1500000000000 });

    // ts-overlayfs against the oracle, step by step: collected and asserted at the end, with
    // the merged tree's differences, so that one step does not hide the upper layer's.
    const problems: string[] = [];
    let tsSummary: Summary | null = null;
    try {
      tsSummary = JSON.parse(outs.ts.stdout) as Summary;
    } catch {
      problems.push(`node script on ts-overlayfs printed no summary: status ${outs.ts.status}, stderr ${outs.ts.stderr}`);
    }
    if (outs.ts.status !== outs.kernel.status || outs.ts.stderr !== outs.kernel.stderr) {
      problems.push(`node script: kernel status ${outs.kernel.status} stderr ${JSON.stringify(outs.kernel.stderr)}, ts status ${outs.ts.status} stderr ${JSON.stringify(outs.ts.stderr)}`);
    }
    if (tsSummary) {
      const t = tsSummary;
      for (const name of new Set([...Object.keys(s), ...Object.keys(t.steps)])) {
        if (!isDeepStrictEqual(t.steps[name], s[name])) problems.push(`step "${name}": kernel ${JSON.stringify(s[name])}, ts ${JSON.stringify(t.steps[name])}`);
      }
      const byPath = (sum: Summary) => Object.fromEntries(sum.tree.map((e) => [e.path, e]));
      problems.push(...diffEntries(byPath(t), byPath(kernelSummary), 'script tree'));
    }

    const merged = compareMerged(pair);
    const uppers = await closePair(pair);
    // Where the format must show: sources of renames and unlinked lower names are whiteouts,
    // the directory made again where a lower one was removed is opaque.
    assert.deepEqual(whiteouts(uppers.kernel), ['data/from-bottom.txt', 'data/move-me.txt', 'data/unlink-me.txt']);
    assert.deepEqual(opaques(uppers.kernel), ['rmme=y']);
    assert.deepEqual([...problems, ...merged.diffs], [], 'the script and the merged tree as on the kernel');
  });
});

/**
 * Run as `node script.js MNT`; prints {steps, tree} as JSON with paths relative to MNT.
 * Each step records its result or `error CODE`.
 */
const NODE_SCRIPT = String.raw`'use strict';
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const root = path.resolve(process.argv[2]);
const p = (rel) => path.join(root, rel);
const sha = (b) => crypto.createHash('sha256').update(b).digest('hex');
const steps = {};
function step(name, fn) {
  try {
    const r = fn();
    steps[name] = r === undefined ? 'ok' : r;
  } catch (e) {
    steps[name] = 'error ' + (e.code || e.message);
  }
}
function writeAt(fd, text, pos) {
  const b = Buffer.from(text);
  if (fs.writeSync(fd, b, 0, b.length, pos) !== b.length) throw new Error('short write');
}

step('offsets', () => {
  fs.mkdirSync(p('out'));
  const fd = fs.openSync(p('out/offsets.bin'), 'w+', 0o644);
  writeAt(fd, 'head', 0);
  writeAt(fd, 'middle', 8192);
  writeAt(fd, 'tail', 1048576);
  writeAt(fd, 'EA', 1);
  fs.fsyncSync(fd);
  const b = Buffer.alloc(6);
  fs.readSync(fd, b, 0, 6, 8192);
  const size = fs.fstatSync(fd).size;
  fs.closeSync(fd);
  return { size, middle: b.toString(), head: fs.readFileSync(p('out/offsets.bin')).subarray(0, 4).toString() };
});

step('pwrite into a lower file', () => {
  const fd = fs.openSync(p('data/lower.txt'), 'r+');
  writeAt(fd, 'PATCHED', 10);
  fs.fdatasyncSync(fd);
  fs.closeSync(fd);
  return fs.readFileSync(p('data/lower.txt'), 'utf8');
});

step('append to a lower file', () => {
  fs.appendFileSync(p('data/log.txt'), 'line 2\n');
  const fd = fs.openSync(p('data/log.txt'), 'a');
  writeAt(fd, 'line 3\n', 0); // O_APPEND: the position is ignored
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  return fs.readFileSync(p('data/log.txt'), 'utf8');
});

step('atomic replace of a lower file', () => {
  const tmp = p('data/config.json.tmp');
  const fd = fs.openSync(tmp, 'wx', 0o640);
  fs.writeSync(fd, '{"version":2}\n');
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  fs.renameSync(tmp, p('data/config.json'));
  const dfd = fs.openSync(p('data'), 'r');
  fs.fsyncSync(dfd);
  fs.closeSync(dfd);
  return {
    text: fs.readFileSync(p('data/config.json'), 'utf8'),
    tmpGone: !fs.existsSync(tmp),
    mode: (fs.statSync(p('data/config.json')).mode & 0o777).toString(8),
  };
});

step('atomic replace of a new file, twice', () => {
  for (const v of ['a', 'b']) {
    fs.writeFileSync(p('out/state.tmp'), 'state ' + v);
    fs.renameSync(p('out/state.tmp'), p('out/state'));
  }
  return fs.readFileSync(p('out/state'), 'utf8');
});

step('rename across directories', () => {
  fs.mkdirSync(p('moved'));
  fs.renameSync(p('data/move-me.txt'), p('moved/from-lower.txt'));
  fs.renameSync(p('out/offsets.bin'), p('data/offsets.bin'));
  fs.renameSync(p('data/from-bottom.txt'), p('tree/a/x.txt'));
  return {
    moved: fs.readdirSync(p('moved')).sort(),
    data: fs.readdirSync(p('data')).sort(),
    a: fs.readFileSync(p('tree/a/x.txt'), 'utf8'),
    b: fs.readdirSync(p('tree/b')).sort(),
  };
});

step('rename a directory with lower content', () => {
  fs.renameSync(p('tree/a'), p('tree/a2'));
});

step('rename a new directory across directories', () => {
  fs.mkdirSync(p('out/newdir'));
  fs.writeFileSync(p('out/newdir/f'), 'f');
  fs.renameSync(p('out/newdir'), p('moved/newdir'));
  return fs.readdirSync(p('moved')).sort();
});

step('truncate', () => {
  fs.truncateSync(p('data/big.bin'), 10);
  fs.truncateSync(p('data/doomed.txt'), 0);
  const fd = fs.openSync(p('out/state'), 'r+');
  fs.ftruncateSync(fd, 100000);
  fs.closeSync(fd);
  return {
    big: sha(fs.readFileSync(p('data/big.bin'))),
    bigSize: fs.statSync(p('data/big.bin')).size,
    doomed: fs.statSync(p('data/doomed.txt')).size,
    state: fs.statSync(p('out/state')).size,
  };
});

step('remove a lower tree, make the dir again', () => {
  fs.rmSync(p('rmme'), { recursive: true });
  fs.mkdirSync(p('rmme'));
  fs.writeFileSync(p('rmme/new.txt'), 'new');
  return fs.readdirSync(p('rmme')).sort();
});

step('unlink a lower file', () => {
  fs.unlinkSync(p('data/unlink-me.txt'));
  return fs.existsSync(p('data/unlink-me.txt'));
});

step('hard link: attributes seen through each name', () => {
  fs.writeFileSync(p('out/linked'), 'one\n');
  const before = fs.statSync(p('out/linked')).nlink;
  fs.linkSync(p('out/linked'), p('moved/linked-too'));
  const afterLink = [fs.statSync(p('out/linked')).nlink, fs.statSync(p('moved/linked-too')).nlink];
  fs.appendFileSync(p('moved/linked-too'), 'two\n');
  const sizes = [fs.statSync(p('out/linked')).size, fs.statSync(p('moved/linked-too')).size];
  fs.unlinkSync(p('moved/linked-too'));
  const afterUnlink = fs.statSync(p('out/linked')).nlink;
  return { before, afterLink, sizes, afterUnlink };
});

step('utimes with different atime and mtime', () => {
  fs.writeFileSync(p('out/stamped'), 'stamped\n');
  fs.utimesSync(p('out/stamped'), 1000000000, 1500000000);
  const st = fs.statSync(p('out/stamped'));
  return { atimeMs: st.atimeMs, mtimeMs: st.mtimeMs };
});

const tree = [];
(function walk(rel) {
  const st = fs.lstatSync(rel ? p(rel) : root);
  const item = { path: rel || '.', mode: (st.mode & 0o7777).toString(8), dir: st.isDirectory() };
  if (st.isFile()) {
    item.size = st.size;
    item.sha256 = sha(fs.readFileSync(p(rel)));
  }
  tree.push(item);
  if (st.isDirectory()) for (const n of fs.readdirSync(rel ? p(rel) : root).sort()) walk(rel ? rel + '/' + n : n);
})('');
process.stdout.write(JSON.stringify({ steps, tree }, null, 1) + '\n');
`;
