/**
 * What a FUSE server speaking the kernel protocol itself (not libfuse 2's path API) must get
 * right, each against kernel overlayfs over identical copies of the same layers: nanosecond
 * times, UTIME_NOW/UTIME_OMIT, renameat2 flags, fallocate, SEEK_DATA/SEEK_HOLE, names that are
 * not UTF-8, one pipe for a fifo's hard links, I/O through descriptors whose names or
 * directories are gone, and st_ino across copy-up and remount.
 *
 * Each test runs the same operations on a kernel mount and on a ts-overlayfs mount (writable:
 * two lowers, an upper, a workdir), first checks that the kernel answers what the test says it
 * does (so the oracle is what it claims), then compares ts-overlayfs with it: each outcome (ok
 * or errno), what was observed, the merged view and the upper layer after unmount.
 *
 * ts-overlayfs on fuse-native (libfuse 2's path API) failed all of these; its own transport
 * passes them. PROTOCOL_COMPARE_SERVER=kernel runs the kernel against itself (every test must
 * pass: a check of the tests), =fuse-overlayfs compares fuse-overlayfs instead.
 * PROTOCOL_COMPARE_DUMP=DIR writes both sides' observations there (TEST.kernel.json, TEST.ts.json).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync, closeSync, constants, fchmodSync, fstatSync, fsyncSync, ftruncateSync, linkSync, lstatSync, mkdirSync,
  openSync, readdirSync, readFileSync, readlinkSync, readSync, renameSync, rmdirSync, symlinkSync, unlinkSync,
  writeFileSync, writeSync, type BigIntStats,
} from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isWhiteoutStat } from '../../src/overlay/format';
import { lgetxattr, lgetxattrOrNull, llistxattr, lutimens, mknod } from '../../src/sys/libc';
import { requires } from '../helpers/env';
import { buildLayer, removeDir, tempDir, type Tree } from '../helpers/layers';
import { mountFuseOverlayfs, mountKernel, mountTs, type Mounted } from '../helpers/mounts';
import { typeOf } from '../helpers/snapshot';
import {
  AT_SYMLINK_NOFOLLOW, dataExtents, fallocate, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, lseek,
  RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, renameat2, SEEK_DATA, SEEK_HOLE, UTIME_NOW, UTIME_OMIT, utimensat,
} from '../helpers/syscalls';

/** A directory: each test writes both sides' observations there as TEST.kernel.json and TEST.ts.json. */
const DUMP = process.env.PROTOCOL_COMPARE_DUMP;
const S_IFIFO = 0o010000;
const MiB = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Recording outcomes and views
// ---------------------------------------------------------------------------------------------

/** 'ok' or the errno's name (Node's fs errors and ours carry it as `code`). */
function outcome(fn: () => unknown): string {
  try {
    fn();
    return 'ok';
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (typeof code === 'string') return code;
    throw err;
  }
}

/** The value `fn` returns, or the errno's name. */
function valueOr<T>(fn: () => T): T | string {
  try {
    return fn();
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (typeof code === 'string') return `error ${code}`;
    throw err;
  }
}

/** A name's bytes, printable: ASCII as it is, every other byte (and the backslash) as \xNN. */
function esc(name: Buffer | string): string {
  const b = typeof name === 'string' ? Buffer.from(name) : name;
  let s = '';
  for (const c of b) s += c >= 0x20 && c < 0x7f && c !== 0x5c ? String.fromCharCode(c) : `\\x${c.toString(16).padStart(2, '0')}`;
  return s;
}

/** A path of bytes: `base` and parts joined with '/'. */
function bpath(base: string | Buffer, ...parts: (string | Buffer)[]): Buffer {
  const out: Buffer[] = [typeof base === 'string' ? Buffer.from(base) : base];
  for (const p of parts) out.push(Buffer.from('/'), typeof p === 'string' ? Buffer.from(p) : p);
  return Buffer.concat(out);
}


function sha(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex').slice(0, 16);
}

/**
 * A directory tree as comparable strings, names as bytes: type, mode, owner, nlink (of
 * non-directories: a merged directory's count is the kernel's business), size and content
 * of files, symlink targets, device numbers, xattrs. Read errors are recorded, not thrown.
 */
function viewOf(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (rel: Buffer | null) => {
    const p = rel ? bpath(root, rel) : Buffer.from(root);
    const key = rel ? esc(rel) : '.';
    let st;
    try {
      st = lstatSync(p);
    } catch (err) {
      out[key] = `error ${(err as { code?: string }).code}`;
      return;
    }
    const type = typeOf(st.mode);
    const parts = [type, (st.mode & 0o7777).toString(8), `${st.uid}:${st.gid}`];
    if (type !== 'dir') parts.push(`nlink=${st.nlink}`);
    if (type === 'file') parts.push(`size=${st.size}`, `sha=${valueOr(() => sha(readFileSync(p)))}`);
    if (type === 'symlink') parts.push(`-> ${esc(readlinkSync(p, { encoding: 'buffer' }))}`);
    if (type === 'chr' || type === 'blk') parts.push(`rdev=${st.rdev}`);
    if (type !== 'symlink') {
      const xattrs = valueOr(() => llistxattr(p).sort().map((n) => `${n}=${lgetxattr(p, n).toString('hex')}`));
      if (typeof xattrs === 'string' || xattrs.length > 0) parts.push(`xattrs=${xattrs}`);
    }
    out[key] = parts.join(' ');
    if (type === 'dir') {
      const names = valueOr(() => readdirSync(p, { encoding: 'buffer' }).sort(Buffer.compare));
      if (typeof names === 'string') out[key] += ` readdir=${names}`;
      else for (const n of names) walk(rel ? bpath(rel, n) : n);
    }
  };
  walk(null);
  return out;
}

/**
 * The upper layer as the on-disk format sees it: whiteouts, opaque markers, types, modes,
 * owners, link counts, data, symlink targets, xattrs other than the kernel's own bookkeeping
 * (trusted.overlay.origin, .impure: not part of the format others read). Names as bytes.
 */
function upperOf(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (rel: Buffer | null) => {
    const p = rel ? bpath(root, rel) : Buffer.from(root);
    const st = lstatSync(p);
    const type = isWhiteoutStat(st) ? 'whiteout' : typeOf(st.mode);
    const parts = [type, (st.mode & 0o7777).toString(8), `${st.uid}:${st.gid}`];
    // Not of whiteouts: the kernel (5.8+) makes most of them hard links of one shared whiteout.
    if (type !== 'dir' && type !== 'whiteout') parts.push(`nlink=${st.nlink}`);
    if (type === 'file') parts.push(`size=${st.size}`, `sha=${sha(readFileSync(p))}`);
    if (type === 'symlink') parts.push(`-> ${esc(readlinkSync(p, { encoding: 'buffer' }))}`);
    if (type === 'chr' || type === 'blk') parts.push(`rdev=${st.rdev}`);
    if (type === 'dir') {
      const opaque = lgetxattrOrNull(p, 'trusted.overlay.opaque');
      if (opaque) parts.push(`opaque=${opaque.toString()}`);
    }
    if (type !== 'symlink') {
      const xattrs = llistxattr(p).filter((n) => !n.startsWith('trusted.overlay.')).sort();
      if (xattrs.length > 0) parts.push(`xattrs=${xattrs}`);
    }
    out[rel ? esc(rel) : '.'] = parts.join(' ');
    if (type === 'dir') for (const n of readdirSync(p, { encoding: 'buffer' }).sort(Buffer.compare)) walk(rel ? bpath(rel, n) : n);
  };
  walk(null);
  return out;
}

/** Reads `length` bytes at `pos` (or to the end), or the errno's name. */
function pread(fd: number, pos: number, length: number): string {
  return String(valueOr(() => {
    const buf = Buffer.alloc(length);
    let got = 0;
    while (got < length) {
      const n = readSync(fd, buf, got, length - got, pos + got);
      if (n === 0) break;
      got += n;
    }
    return buf.subarray(0, got).toString('latin1');
  }));
}

/** A file's whole content read through an open descriptor, hashed. */
function contentOf(fd: number): string {
  const size = fstatSync(fd).size;
  const buf = Buffer.alloc(size);
  let got = 0;
  while (got < size) {
    const n = readSync(fd, buf, got, size - got, got);
    if (n === 0) break;
    got += n;
  }
  return `${got} bytes sha=${sha(buf.subarray(0, got))}`;
}

function times(st: BigIntStats): string {
  return `atime=${st.atimeNs} mtime=${st.mtimeNs}`;
}

function ltimes(p: string | Buffer): string {
  return String(valueOr(() => times(lstatSync(p, { bigint: true }))));
}

/** A program's failure becomes an error with a code, so outcomes compare. */
function run(cmd: string, ...args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10000 });
  if (r.status !== 0) throw Object.assign(new Error(r.stderr), { code: `exit ${r.status}: ${r.stderr.trim()}` });
}

/** Fixed content for a name: identical on both sides. */
function dataFor(name: string, size = 0): Buffer {
  const text = Buffer.from(`content of ${name}\n`);
  if (size === 0) return text;
  const out = Buffer.alloc(size);
  for (let i = 0; i < size; i += text.length) text.copy(out, i);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Running the same thing on both
// ---------------------------------------------------------------------------------------------

type SideName = 'kernel' | 'ts';

interface Side {
  readonly name: SideName;
  readonly lowers: string[];
  readonly upper: string;
  readonly work: string;
  readonly mnt: string;
  /** Unmounts and mounts the same layers again. */
  remount(): Promise<void>;
}

interface Layers {
  /** Top layer first. */
  trees: Tree[];
  /** What buildLayer cannot make (nanosecond times, names that are not UTF-8, ...), on each copy. */
  prepare?: (lowers: string[]) => void;
}

interface SideResult<T, U> {
  obs: T;
  view: Record<string, string>;
  upper: Record<string, string>;
  /** What `inUpper` read from the upper layer after unmount. */
  after: U;
  side: Side;
}

let root: string;
const live = new Set<Mounted>();

/**
 * What stands in for ts-overlayfs: itself, or (to check the tests themselves) the kernel, whose
 * run against itself must pass every test, or fuse-overlayfs, another FUSE server.
 */
const SERVER = process.env.PROTOCOL_COMPARE_SERVER ?? 'ts';
const WHO = SERVER === 'ts' ? 'ts-overlayfs' : `${SERVER} (standing in for ts-overlayfs)`;

async function mountSide(name: SideName, d: { lowers: string[]; upper: string; work: string }, mnt: string): Promise<Mounted> {
  const as = name === 'kernel' ? 'kernel' : SERVER;
  const m = as === 'kernel' ? await mountKernel(d, mnt) : as === 'fuse-overlayfs' ? await mountFuseOverlayfs(d, mnt) : await mountTs(d, mnt);
  live.add(m);
  return m;
}

async function unmountSide(m: Mounted): Promise<void> {
  live.delete(m);
  await m.unmount();
}

/**
 * Builds a fresh copy of the layers for `side`, mounts, runs `ops` (the test process is only
 * ever the client; the server is a child), records the merged view, unmounts (even on
 * failure), then reads the upper layer.
 */
async function onSide<T, U = undefined>(
  test: string, name: SideName, layers: Layers, ops: (s: Side) => T | Promise<T>, inUpper?: (s: Side) => U, withView = true,
): Promise<SideResult<T, U>> {
  const base = join(root, test, name);
  const lowers = layers.trees.map((tree, i) => {
    const l = join(base, `lower${i}`);
    buildLayer(l, tree);
    return l;
  });
  layers.prepare?.(lowers);
  const dirs = { lowers, upper: join(base, 'upper'), work: join(base, 'work') };
  const mnt = join(base, 'mnt');
  for (const p of [dirs.upper, dirs.work, mnt]) mkdirSync(p, { recursive: true });
  let m: Mounted | undefined = await mountSide(name, dirs, mnt);
  const side: Side = {
    name, ...dirs, mnt,
    async remount() {
      const old = m!;
      m = undefined;
      await unmountSide(old);
      m = await mountSide(name, dirs, mnt);
    },
  };
  let obs: T;
  let view: Record<string, string> = {};
  try {
    obs = await ops(side);
    // Reading every file moves atimes (relatime): tests that look at times go without the view.
    if (withView) view = viewOf(mnt);
  } finally {
    if (m) await unmountSide(m);
  }
  // What the test reads from the upper layer first: the encoding reads every file and directory.
  const after = inUpper ? inUpper(side) : (undefined as U);
  return { obs, view, upper: upperOf(dirs.upper), after, side };
}

/** Writes what a side saw to DUMP/TEST.SIDE.json, for reading a failure (BigInts as strings). */
function dump(test: string, side: string, what: unknown): void {
  if (!DUMP) return;
  mkdirSync(DUMP, { recursive: true });
  writeFileSync(join(DUMP, `${test}.${side}.json`), JSON.stringify(what, (_k, v) => (typeof v === 'bigint' ? `${v}n` : v), 1));
}

/** ts-overlayfs's observations, view and upper layer against the kernel's. */
function assertSame<T, U>(ts: SideResult<T, U>, kernel: SideResult<T, U>, opts: { view?: boolean; upper?: boolean } = {}): void {
  assert.deepEqual(ts.obs, kernel.obs, `observations through the mount: ${WHO} (actual) vs kernel (expected)`);
  assert.deepEqual(ts.after, kernel.after, `the upper layer after unmount: ${WHO} (actual) vs kernel (expected)`);
  if (opts.view !== false) {
    assert.deepEqual(ts.view, kernel.view, `the merged view afterwards: ${WHO} (actual) vs kernel (expected)`);
  }
  if (opts.upper !== false) {
    assert.deepEqual(ts.upper, kernel.upper, `the upper layer's encoding after unmount: ${WHO} (actual) vs kernel (expected)`);
  }
}

/** Both sides, kernel first; `checkKernel` asserts the oracle answers what the test says it does. */
async function compare<T, U = undefined>(
  test: string, layers: Layers, ops: (s: Side) => T | Promise<T>,
  opts: { inUpper?: (s: Side) => U; checkKernel?: (k: SideResult<T, U>) => void; view?: boolean; upper?: boolean } = {},
): Promise<void> {
  const kernel = await onSide(test, 'kernel', layers, ops, opts.inUpper, opts.view !== false);
  dump(test, 'kernel', { obs: kernel.obs, after: kernel.after, view: kernel.view, upper: kernel.upper });
  opts.checkKernel?.(kernel);
  const ts = await onSide(test, 'ts', layers, ops, opts.inUpper, opts.view !== false);
  dump(test, 'ts', { obs: ts.obs, after: ts.after, view: ts.view, upper: ts.upper });
  assertSame(ts, kernel, opts);
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

describe('what the FUSE protocol server must get right, against kernel overlayfs', requires('root', 'fuse', 'kernel-overlay'), () => {
  before(() => {
    root = tempDir('proto');
  });

  after(async () => {
    for (const m of [...live]) await unmountSide(m).catch(() => undefined);
    if (root) removeDir(root);
  });

  // 1 ------------------------------------------------------------------------------------------
  test('nanosecond times: shown as the layers hold them, set and stored to the nanosecond', async () => {
    /** [atime, mtime] as [sec, nsec] of each lower entry (the layer: 0 is the top). */
    // `dir` is looked at first: ts-overlayfs reads a lower directory's listing to look up a
    // name in it, which moves that directory's atime (relatime); the kernel's lookup does not.
    const lowerTimes: Record<string, { layer: number; a: [number, number]; m: [number, number] }> = {
      dir: { layer: 1, a: [1500000005, 777777777], m: [1600000005, 888888889] },
      'top-file': { layer: 0, a: [1500000000, 123456789], m: [1600000000, 987654321] },
      link: { layer: 0, a: [1500000001, 1], m: [1600000001, 999999999] },
      'bottom-file': { layer: 1, a: [1500000002, 500000001], m: [1600000002, 2] },
      'dir/inner': { layer: 1, a: [1500000003, 333333333], m: [1600000003, 444444444] },
      'chmod-file': { layer: 1, a: [1500000004, 5], m: [1600000004, 600000007] },
    };
    /** utimensat through the mount: lower entries (copied up), new ones, a symlink itself. */
    const setTimes: Record<string, { a: [number, number]; m: [number, number] }> = {
      'top-file': { a: [1234567890, 1], m: [1234567891, 999999999] },
      'dir/inner': { a: [1234567892, 123], m: [1234567893, 456000789] },
      dir: { a: [1234567894, 10], m: [1234567895, 20] },
      link: { a: [1234567896, 314159265], m: [1234567897, 271828182] },
      'new-file': { a: [1234567898, 999999998], m: [1234567899, 3] },
      'new-dir': { a: [1234567900, 42], m: [1234567901, 43] },
    };
    const str = (t: { a: [number, number]; m: [number, number] }) =>
      `atime=${BigInt(t.a[0]) * 1000000000n + BigInt(t.a[1])} mtime=${BigInt(t.m[0]) * 1000000000n + BigInt(t.m[1])}`;
    const layers: Layers = {
      trees: [
        { 'top-file': { kind: 'file', data: 'top' }, link: { kind: 'symlink', target: 'top-file' } },
        { 'bottom-file': { kind: 'file', data: 'bottom' }, 'dir/inner': { kind: 'file', data: 'inner' }, 'chmod-file': { kind: 'file', data: 'c' } },
      ],
      prepare: (lowers) => {
        for (const [p, t] of Object.entries(lowerTimes)) {
          lutimens(join(lowers[t.layer], p), { sec: t.a[0], nsec: t.a[1] }, { sec: t.m[0], nsec: t.m[1] });
          assert.equal(ltimes(join(lowers[t.layer], p)), str(t), `the lower filesystem keeps nanoseconds (${p})`);
        }
      },
    };
    const paths = Object.keys(lowerTimes);
    await compare('ns-times', layers, (s) => {
      const shown = Object.fromEntries(paths.map((p) => [p, ltimes(join(s.mnt, p))]));
      const made = [outcome(() => writeFileSync(join(s.mnt, 'new-file'), 'new')), outcome(() => mkdirSync(join(s.mnt, 'new-dir')))];
      const set: Record<string, string> = {};
      for (const [p, t] of Object.entries(setTimes)) {
        set[p] = outcome(() => utimensat(join(s.mnt, p), { sec: t.a[0], nsec: t.a[1] }, { sec: t.m[0], nsec: t.m[1] }, p === 'link' ? AT_SYMLINK_NOFOLLOW : 0));
      }
      const shownAfterSet = Object.fromEntries(Object.keys(setTimes).map((p) => [p, ltimes(join(s.mnt, p))]));
      const chmod = outcome(() => chmodSync(join(s.mnt, 'chmod-file'), 0o640));
      return { shown, made, set, shownAfterSet, chmod, shownAfterChmod: ltimes(join(s.mnt, 'chmod-file')) };
    }, {
      inUpper: (s) => Object.fromEntries([...Object.keys(setTimes), 'chmod-file'].map((p) => [p, ltimes(join(s.upper, p))])),
      checkKernel: (k) => {
        assert.deepEqual(k.obs.shown, Object.fromEntries(paths.map((p) => [p, str(lowerTimes[p])])));
        assert.deepEqual(k.obs.shownAfterSet, Object.fromEntries(Object.entries(setTimes).map(([p, t]) => [p, str(t)])));
        assert.equal(k.obs.shownAfterChmod, str(lowerTimes['chmod-file']), 'copy-up keeps the lower times to the nanosecond');
        assert.deepEqual(k.after, {
          ...Object.fromEntries(Object.entries(setTimes).map(([p, t]) => [p, str(t)])),
          'chmod-file': str(lowerTimes['chmod-file']),
        });
      },
      view: false, // directory times change with every entry made; the times that matter are compared above
    });
  });

  // 2 ------------------------------------------------------------------------------------------
  test('touch -m, touch -a, UTIME_OMIT with UTIME_NOW: the omitted time stays exactly as it was', async () => {
    // Whole seconds, so that this test fails only where UTIME_OMIT/UTIME_NOW are wrong (test 1 covers nanoseconds).
    const A = 1500000000n * 1000000000n;
    const M = 1600000000n * 1000000000n;
    const how: Record<string, { keeps: 'atime' | 'mtime' | 'both'; op: (p: string) => void }> = {
      'touch-m': { keeps: 'atime', op: (p) => run('touch', '-m', p) },
      'touch-a': { keeps: 'mtime', op: (p) => run('touch', '-a', p) },
      'omit-atime-now-mtime': { keeps: 'atime', op: (p) => utimensat(p, { sec: 0, nsec: UTIME_OMIT }, { sec: 0, nsec: UTIME_NOW }) },
      'now-atime-omit-mtime': { keeps: 'mtime', op: (p) => utimensat(p, { sec: 0, nsec: UTIME_NOW }, { sec: 0, nsec: UTIME_OMIT }) },
      'omit-both': { keeps: 'both', op: (p) => utimensat(p, { sec: 0, nsec: UTIME_OMIT }, { sec: 0, nsec: UTIME_OMIT }) },
    };
    const names = Object.keys(how).flatMap((n) => [`lower-${n}`, `upper-${n}`]);
    const layers: Layers = {
      trees: [Object.fromEntries(Object.keys(how).map((n) => [`lower-${n}`, { kind: 'file', data: n }])), {}],
      prepare: (lowers) => {
        for (const n of Object.keys(how)) lutimens(join(lowers[0], `lower-${n}`), { sec: 1500000000, nsec: 0 }, { sec: 1600000000, nsec: 0 });
      },
    };
    /** The kept time(s) as they are, the other one: "now" (within a minute of the test's clock) or its value. */
    const judge = (st: BigIntStats | string, keeps: string, since: bigint) => {
      if (typeof st === 'string') return st;
      const isNow = (t: bigint) => t >= since - 60n * 1000000000n && t <= BigInt(Date.now()) * 1000000n + 60n * 1000000000n;
      const a = keeps === 'atime' || keeps === 'both' ? `atime=${st.atimeNs}` : `atime ${isNow(st.atimeNs) ? 'now' : `not now: ${st.atimeNs}`}`;
      const m = keeps === 'mtime' || keeps === 'both' ? `mtime=${st.mtimeNs}` : `mtime ${isNow(st.mtimeNs) ? 'now' : `not now: ${st.mtimeNs}`}`;
      return `${a} ${m}`;
    };
    await compare('touch', layers, (s) => {
      const setup = Object.keys(how).map((n) => outcome(() => {
        const p = join(s.mnt, `upper-${n}`);
        writeFileSync(p, n);
        utimensat(p, { sec: 1500000000, nsec: 0 }, { sec: 1600000000, nsec: 0 });
      }));
      const before = Object.fromEntries(names.map((n) => [n, ltimes(join(s.mnt, n))]));
      const since = BigInt(Date.now()) * 1000000n;
      const result: Record<string, string> = {};
      for (const [n, h] of Object.entries(how)) {
        for (const where of ['lower', 'upper']) {
          const p = join(s.mnt, `${where}-${n}`);
          const o = outcome(() => h.op(p));
          result[`${where}-${n}`] = `${o}: ${judge(valueOr(() => lstatSync(p, { bigint: true })), h.keeps, since)}`;
        }
      }
      return { setup, before, result };
    }, {
      inUpper: (s) => Object.fromEntries(names.map((n) => [n, ltimes(join(s.upper, n))]).map(([n, t]) => {
        const keeps = how[n.replace(/^(lower|upper)-/, '')].keeps;
        // Only the kept time is fixed; the other one is the clock's.
        return [n, t.split(' ').filter((x) => keeps === 'both' || x.startsWith(keeps)).join(' ')];
      })),
      checkKernel: (k) => {
        for (const n of names) assert.equal(k.obs.before[n], `atime=${A} mtime=${M}`, n);
        const expect = (keeps: string) => ({
          atime: `ok: atime=${A} mtime now`, mtime: `ok: atime now mtime=${M}`, both: `ok: atime=${A} mtime=${M}`,
        })[keeps];
        for (const [n, h] of Object.entries(how)) {
          for (const where of ['lower', 'upper']) assert.equal(k.obs.result[`${where}-${n}`], expect(h.keeps), `${where}-${n}`);
        }
        // UTIME_OMIT for both times changes nothing, so nothing is copied up (the VFS returns early).
        assert.equal(k.after['lower-omit-both'], 'error ENOENT');
        assert.equal(k.after['lower-touch-m'], `atime=${A}`);
      },
      view: false, // the "now" times differ between the two runs
    });
  });

  // 3 ------------------------------------------------------------------------------------------
  test('renameat2: RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT on upper, lower and merged names', async () => {
    const lowerFile = (n: string) => ({ kind: 'file' as const, data: `lower ${n}` });
    const layers: Layers = {
      trees: [
        { 'md/above': lowerFile('md/above'), 'md2/above2': lowerFile('md2/above2'), 'lf-top': lowerFile('lf-top') },
        {
          ...Object.fromEntries(['lf-a', 'lf-b', 'lf-c', 'lf-d', 'lf-gone', 'cf'].map((n) => [n, lowerFile(n)])),
          'md/below': lowerFile('md/below'), 'md2/below2': lowerFile('md2/below2'), 'ld/inner': lowerFile('ld/inner'), 'sub/lf-s': lowerFile('sub/lf-s'),
        },
      ],
    };
    const NR = RENAME_NOREPLACE;
    const EX = RENAME_EXCHANGE;
    /** [what, from, to, flags, the kernel's answer] */
    const steps: [string, string, string, number, string][] = [
      ['noreplace: upper file to a new name', 'uf-a', 'uf-a2', NR, 'ok'],
      ['noreplace: upper file onto an upper file', 'uf-b', 'uf-c', NR, 'EEXIST'],
      ['noreplace: upper file onto a lower file', 'uf-b', 'lf-a', NR, 'EEXIST'],
      ['noreplace: upper file onto a copied-up file', 'uf-b', 'cf', NR, 'EEXIST'],
      ['noreplace: lower file to a new name', 'lf-a', 'lf-a2', NR, 'ok'],
      ['noreplace: lower file onto a lower file', 'lf-b', 'lf-c', NR, 'EEXIST'],
      ['noreplace: lower file onto a whited-out name', 'lf-b', 'lf-gone', NR, 'ok'],
      ['noreplace: missing name', 'missing', 'x', NR, 'ENOENT'],
      ['noreplace: merged dir to a new name', 'md', 'md-new', NR, 'EXDEV'],
      ['noreplace: merged dir onto an existing name', 'md', 'uf-c', NR, 'EEXIST'],
      ['noreplace: lower-only dir to a new name', 'ld', 'ld-new', NR, 'EXDEV'],
      ['noreplace: upper dir to a new name', 'ud', 'ud-new', NR, 'ok'],
      ['noreplace: upper dir onto a merged dir', 'ud2', 'md', NR, 'EEXIST'],
      ['noreplace: upper file into a lower dir', 'uf-a2', 'ld/uf-a2', NR, 'ok'],
      ['noreplace: upper dir into a merged dir', 'ud3', 'md/ud3', NR, 'ok'],
      ['noreplace: a name onto itself', 'uf-c', 'uf-c', NR, 'EEXIST'],
      ['exchange: upper files in one dir', 'uf-b', 'uf-c', EX, 'ok'],
      ['exchange: upper file and lower file', 'uf-b', 'lf-c', EX, 'ok'],
      ['exchange: lower files across dirs', 'lf-d', 'sub/lf-s', EX, 'ok'],
      ['exchange: copied-up file and a file in a lower dir', 'cf', 'ld/inner', EX, 'ok'],
      ['exchange: file and upper dir', 'uf-c', 'ud-new', EX, 'ok'],
      ['exchange: lower file and merged dir', 'lf-top', 'md', EX, 'EXDEV'],
      ['exchange: upper dir and merged dir', 'ud2', 'md2', EX, 'EXDEV'],
      ['exchange: upper dirs across dirs', 'ud4', 'sub-up/ud5', EX, 'ok'],
      ['exchange: with a missing name', 'uf-b', 'missing', EX, 'ENOENT'],
      ['exchange: with a whited-out name', 'uf-b', 'lf-a', EX, 'ENOENT'],
      ['exchange: a name with itself', 'uf-b', 'uf-b', EX, 'ok'],
      ['exchange: upper file and a lower file of a merged dir', 'uf-b', 'md/above', EX, 'ok'],
      ['exchange: upper dir and a lower file of a merged dir', 'ud4', 'md/below', EX, 'ok'],
      ['whiteout: upper file', 'uf-b', 'uf-w', RENAME_WHITEOUT, 'EINVAL'],
      ['whiteout: lower file', 'md2/below2', 'md2/w', RENAME_WHITEOUT, 'EINVAL'],
      ['whiteout|noreplace: upper file', 'uf-b', 'uf-w', RENAME_WHITEOUT | NR, 'EINVAL'],
      ['noreplace|exchange', 'uf-b', 'uf-c', NR | EX, 'EINVAL'],
      ['whiteout|exchange', 'uf-b', 'uf-c', RENAME_WHITEOUT | EX, 'EINVAL'],
    ];
    await compare('renameat2', layers, (s) => {
      const m = (p: string) => join(s.mnt, p);
      const setup = [
        () => writeFileSync(m('uf-a'), 'upper uf-a'), () => writeFileSync(m('uf-b'), 'upper uf-b'), () => writeFileSync(m('uf-c'), 'upper uf-c'),
        () => mkdirSync(m('ud')), () => writeFileSync(m('ud/inner'), 'upper ud/inner'),
        () => mkdirSync(m('ud2')), () => writeFileSync(m('ud2/x'), 'upper ud2/x'),
        () => mkdirSync(m('ud3')), () => mkdirSync(m('ud4')),
        () => mkdirSync(m('sub-up')), () => mkdirSync(m('sub-up/ud5')), () => writeFileSync(m('sub-up/ud5/y'), 'upper ud5/y'),
        () => chmodSync(m('cf'), 0o600), () => unlinkSync(m('lf-gone')),
      ].map(outcome);
      const results = steps.map(([what, from, to, flags]) => `${what}: ${outcome(() => renameat2(m(from), m(to), flags))}`);
      return { setup, results };
    }, {
      checkKernel: (k) => {
        assert.ok(k.obs.setup.every((o) => o === 'ok'), `setup: ${k.obs.setup}`);
        assert.deepEqual(k.obs.results, steps.map(([what, , , , expect]) => `${what}: ${expect}`));
        // Where the kernel left whiteouts and opaque markers (checked so that the comparison exercises them).
        assert.match(k.upper['lf-a'], /^whiteout /);
        assert.match(k.upper['lf-b'], /^whiteout /);
        // An upper-only directory moved into a merged directory is made opaque (by exchange too);
        // one moved inside an upper-only directory is not.
        assert.match(k.upper['md/ud3'], /opaque=y/);
        assert.match(k.upper['uf-c'], /^dir .*opaque=y/);
        assert.match(k.upper['md/below'], /^dir .*opaque=y/);
        assert.doesNotMatch(k.upper['sub-up/ud5'], /opaque/);
      },
    });
  });

  // 4 ------------------------------------------------------------------------------------------
  test('fallocate through an open descriptor: mode 0, KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE', async () => {
    const layers: Layers = {
      trees: [{
        grow: { kind: 'file', data: dataFor('grow', 10000) },
        keep: { kind: 'file', data: dataFor('keep', 10000) },
        punch: { kind: 'file', data: dataFor('punch', 256 * 1024) },
        zero: { kind: 'file', data: dataFor('zero', 64 * 1024) },
        ro: { kind: 'file', data: dataFor('ro', 100) },
      }, {}],
    };
    // What the filesystem the layers live on answers for each mode, on a plain file: the
    // kernel overlay passes fallocate through to the upper file, so it must answer the same.
    const probeDir = join(root, 'fallocate-probe');
    mkdirSync(probeDir, { recursive: true });
    const probe = (mode: number) => {
      const p = join(probeDir, `m${mode}`);
      writeFileSync(p, dataFor('probe', 65536));
      const fd = openSync(p, 'r+');
      try {
        return outcome(() => fallocate(fd, mode, 4096, 8192));
      } finally {
        closeSync(fd);
      }
    };
    const supported = {
      plain: probe(0), keepSize: probe(FALLOC_FL_KEEP_SIZE), punch: probe(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE), zero: probe(FALLOC_FL_ZERO_RANGE),
    };
    const cases: [string, string, string, number, number, number][] = [
      // [what, file, open flags, mode, offset, length]
      ['mode 0 extending a lower file', 'grow', 'r+', 0, 0, 100000],
      ['KEEP_SIZE past the end', 'keep', 'r+', FALLOC_FL_KEEP_SIZE, 10000, MiB],
      ['PUNCH_HOLE|KEEP_SIZE in the middle', 'punch', 'r+', FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 65536, 65536],
      ['ZERO_RANGE inside', 'zero', 'r+', FALLOC_FL_ZERO_RANGE, 4096, 8192],
      ['ZERO_RANGE past the end', 'zero', 'r+', FALLOC_FL_ZERO_RANGE, 65536, 4096],
      ['ZERO_RANGE|KEEP_SIZE past the end', 'zero', 'r+', FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 69632, 65536],
      ['PUNCH_HOLE without KEEP_SIZE', 'punch', 'r+', FALLOC_FL_PUNCH_HOLE, 0, 4096],
      ['length 0', 'punch', 'r+', 0, 0, 0],
      ['a read-only descriptor', 'ro', 'r', 0, 0, 4096],
      ['mode 0 on a new upper file', 'new', 'r+', 0, 0, 8192],
      ['PUNCH_HOLE|KEEP_SIZE of a whole new upper file', 'new', 'r+', FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 8192],
    ];
    const files = ['grow', 'keep', 'punch', 'zero', 'ro', 'new'];
    await compare('fallocate', layers, (s) => {
      const made = outcome(() => writeFileSync(join(s.mnt, 'new'), 'x'));
      const results = cases.map(([what, file, flags, mode, offset, length]) => {
        const fd = openSync(join(s.mnt, file), flags);
        try {
          const o = outcome(() => fallocate(fd, mode, offset, length));
          const st = fstatSync(fd);
          // Extents before content: on ext4, unwritten (fallocated) blocks count as data once read into the page cache.
          const extents = valueOr(() => dataExtents(fd));
          return `${what}: ${o}; size=${st.size}; data=${extents}; ${contentOf(fd)}`;
        } finally {
          closeSync(fd);
        }
      });
      // KEEP_SIZE allocates blocks past the end (st_blocks), which the size does not show.
      const keepBlocks = lstatSync(join(s.mnt, 'keep')).blocks * 512 >= MiB;
      return { made, results, keepBlocks };
    }, {
      inUpper: (s) => Object.fromEntries(files.map((f) => [f, valueOr(() => {
        const fd = openSync(join(s.upper, f), 'r');
        try {
          // Content first: once every page is read, ext4 counts unwritten (fallocated) blocks as
          // data, whatever the page cache held before; holes stay holes.
          const content = contentOf(fd);
          return `size=${fstatSync(fd).size}; data=${dataExtents(fd)}; ${content}`;
        } finally {
          closeSync(fd);
        }
      })])),
      checkKernel: (k) => {
        const at = (what: string) => k.obs.results.find((r) => r.startsWith(`${what}:`))!;
        assert.match(at('mode 0 extending a lower file'), new RegExp(`: ${supported.plain}; size=${supported.plain === 'ok' ? 100000 : 10000};`));
        assert.match(at('KEEP_SIZE past the end'), new RegExp(`: ${supported.keepSize}; size=10000;`));
        assert.match(at('PUNCH_HOLE|KEEP_SIZE in the middle'), new RegExp(`: ${supported.punch}; size=262144;`));
        assert.match(at('ZERO_RANGE inside'), new RegExp(`: ${supported.zero}; size=65536;`));
        assert.match(at('PUNCH_HOLE without KEEP_SIZE'), /: EOPNOTSUPP;/);
        assert.match(at('length 0'), /: EINVAL;/);
        assert.match(at('a read-only descriptor'), /: EBADF;/);
        if (supported.keepSize === 'ok') assert.equal(k.obs.keepBlocks, true);
        if (supported.punch === 'ok') {
          // A real hole where the punch was, seen through the mount and in the upper layer.
          assert.match(at('PUNCH_HOLE|KEEP_SIZE in the middle'), /data=0-65536,131072-262144;/);
          assert.match(String(k.after.punch), /data=0-65536,131072-262144;/);
        }
        if (supported.zero === 'ok') assert.notEqual(at('ZERO_RANGE inside').match(/sha=(\w+)/)![1], sha(dataFor('zero', 65536)));
      },
    });
  });

  // 5 ------------------------------------------------------------------------------------------
  test('lseek SEEK_DATA/SEEK_HOLE on sparse lower files opened read-only', async () => {
    const B = 1 * MiB + 8192; // second data run
    /** name: [data runs as [offset, length]], size */
    const sparse: Record<string, { runs: [number, number][]; size: number }> = {
      sparse: { runs: [[0, 4096], [B, 4096]], size: 3 * MiB },
      'hole-only': { runs: [], size: MiB },
      'tail-data': { runs: [[2 * MiB, 100]], size: 2 * MiB + 100 },
      dense: { runs: [[0, 10000]], size: 10000 },
      empty: { runs: [], size: 0 },
    };
    const layers: Layers = {
      trees: [{}, {}],
      prepare: (lowers) => {
        for (const [n, f] of Object.entries(sparse)) {
          const fd = openSync(join(lowers[n === 'sparse' ? 0 : 1], n), 'w');
          for (const [at, len] of f.runs) writeSync(fd, dataFor(n, len), 0, len, at);
          ftruncateSync(fd, f.size);
          fsyncSync(fd);
          closeSync(fd);
        }
      },
    };
    const offsets = (size: number) => [...new Set([0, 1, 4095, 4096, 65536, MiB, B - 1, B, B + 4095, B + 4096, 2 * MiB, size - 1, size, size + 1, 10 * MiB])]
      .filter((o) => o >= 0).sort((a, b) => a - b);
    const seeks = (p: string) => {
      const fd = openSync(p, 'r');
      try {
        const out: string[] = [];
        for (const o of offsets(fstatSync(fd).size)) {
          out.push(`${o}: data ${valueOr(() => lseek(fd, o, SEEK_DATA))} hole ${valueOr(() => lseek(fd, o, SEEK_HOLE))}`);
        }
        return out;
      } finally {
        closeSync(fd);
      }
    };
    const where = (lowers: string[], n: string) => join(lowers[n === 'sparse' ? 0 : 1], n);
    let direct: Record<string, string[]> = {};
    let holesReported = false;
    await compare('lseek', layers, (s) => {
      direct = Object.fromEntries(Object.keys(sparse).map((n) => [n, seeks(where(s.lowers, n))]));
      const fd = openSync(where(s.lowers, 'sparse'), 'r');
      holesReported = lseek(fd, 0, SEEK_HOLE) < sparse.sparse.size;
      closeSync(fd);
      return Object.fromEntries(Object.keys(sparse).map((n) => [n, seeks(join(s.mnt, n))]));
    }, {
      checkKernel: (k) => {
        // The kernel overlay passes lseek to the lower file: exactly what the lower fs reports.
        assert.deepEqual(k.obs, direct);
        if (holesReported) {
          assert.ok(k.obs.sparse.includes('0: data 0 hole 4096'), 'the hole after the first run is seen');
          assert.ok(k.obs.sparse.includes(`4096: data ${B} hole 4096`));
          assert.ok(k.obs['hole-only'].includes(`0: data error ENXIO hole 0`));
        } else {
          console.log('lseek test: the lower filesystem reports no holes; only the comparison with the kernel is made');
        }
        for (const n of Object.keys(sparse)) {
          const size = sparse[n].size;
          assert.ok(k.obs[n].includes(`${size}: data error ENXIO hole error ENXIO`), `ENXIO at the end of ${n}`);
        }
        assert.deepEqual(k.upper, { '.': k.upper['.'] }, 'read-only opens copy nothing up');
      },
    });
  });

  // 6 ------------------------------------------------------------------------------------------
  test('names that are not UTF-8: readdir, stat, open, rename, unlink, symlink targets, and the bytes in upper', async () => {
    const b = (...parts: (string | number[])[]) => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : Buffer.from(p))));
    const cafe = b('caf', [0xe9]); // latin-1 "café"
    const ffName = b([0xff, 0xfe], '.txt');
    const dirName = b('d', [0xe9], 'j', [0xe0]);
    const inDir = b('x', [0xff]);
    const linkName = b('lnk', [0xe9]);
    const made = b('new-', [0xe9, 0xff]);
    const madeDir = b('nd', [0xfe]);
    const madeInDir = b('f', [0xe9]);
    const madeLink = b('sl', [0xe9]);
    const moved = b('moved-', [0xe9]);
    const movedIn = b('in-', [0xff]);
    const layers: Layers = {
      trees: [{}, { 'plain-dir': { kind: 'dir' } }],
      prepare: (lowers) => {
        writeFileSync(bpath(lowers[0], cafe), 'latin-1 name');
        writeFileSync(bpath(lowers[1], ffName), 'ff fe name');
        mkdirSync(bpath(lowers[1], dirName));
        writeFileSync(bpath(lowers[1], dirName, inDir), 'inside');
        writeFileSync(bpath(lowers[1], dirName, 'ok'), 'ascii inside');
        symlinkSync(cafe, bpath(lowers[0], linkName));
      },
    };
    const list = (p: Buffer | string) => String(valueOr(() => readdirSync(p, { encoding: 'buffer' }).map(esc).sort()));
    await compare('non-utf8', layers, (s) => {
      const m = (...parts: Buffer[]) => bpath(s.mnt, ...parts);
      const read = (p: Buffer) => String(valueOr(() => readFileSync(p, 'latin1')));
      const st = (p: Buffer) => String(valueOr(() => { const x = lstatSync(p); return `${typeOf(x.mode)}${x.isFile() ? ` size=${x.size}` : ''}`; }));
      return {
        readdirRoot: list(s.mnt),
        readdirDir: list(m(dirName)),
        stat: [cafe, ffName, dirName, linkName].map((n) => `${esc(n)}: ${st(m(n))}`),
        read: [read(m(cafe)), read(m(dirName, inDir)), read(m(linkName))],
        readlink: String(valueOr(() => esc(readlinkSync(m(linkName), { encoding: 'buffer' })))),
        changes: [
          ['create', () => writeFileSync(m(made), 'made through the mount')],
          ['mkdir', () => mkdirSync(m(madeDir))],
          ['create in it', () => writeFileSync(m(madeDir, madeInDir), 'in a new dir')],
          ['symlink', () => symlinkSync(ffName, m(madeLink))],
          ['rename a lower name', () => renameSync(m(ffName), m(moved))],
          ['rename a new name into a lower dir', () => renameSync(m(made), m(dirName, movedIn))],
          ['unlink a lower name', () => unlinkSync(m(cafe))],
          ['unlink in a lower dir', () => unlinkSync(m(dirName, inDir))],
        ].map(([what, fn]) => `${what}: ${outcome(fn as () => void)}`),
        // The new symlink's target was the renamed name: it dangles now.
        readAfter: [read(m(moved)), read(m(dirName, movedIn)), read(m(madeDir, madeInDir)), read(m(madeLink)), st(m(cafe)), st(m(ffName))],
        readlinkAfter: String(valueOr(() => esc(readlinkSync(m(madeLink), { encoding: 'buffer' })))),
        readdirRootAfter: list(s.mnt),
        readdirDirAfter: list(m(dirName)),
      };
    }, {
      checkKernel: (k) => {
        assert.equal(k.obs.readdirRoot, [esc(cafe), esc(dirName), esc(ffName), esc(linkName), 'plain-dir'].sort().join(','));
        assert.deepEqual(k.obs.read, ['latin-1 name', 'inside', 'latin-1 name']);
        assert.equal(k.obs.readlink, esc(cafe));
        assert.ok(k.obs.changes.every((c) => c.endsWith(': ok')), String(k.obs.changes));
        assert.deepEqual(k.obs.readAfter, ['ff fe name', 'made through the mount', 'in a new dir', 'error ENOENT', 'error ENOENT', 'error ENOENT']);
        assert.equal(k.obs.readlinkAfter, esc(ffName));
        // The upper layer holds the exact bytes: whiteouts of the lower names, the new names.
        assert.match(k.upper[esc(cafe)], /^whiteout /);
        assert.match(k.upper[esc(ffName)], /^whiteout /);
        assert.match(k.upper[`${esc(dirName)}/${esc(inDir)}`], /^whiteout /);
        assert.match(k.upper[`${esc(dirName)}/${esc(movedIn)}`], /^file /);
        assert.match(k.upper[esc(madeLink)], new RegExp(`^symlink .* -> ${esc(ffName).replace(/\\/g, '\\\\')}$`));
      },
    });
  });

  // 7 ------------------------------------------------------------------------------------------
  test('a fifo\'s hard links are one pipe (as the kernel has it)', async () => {
    const { O_RDONLY, O_WRONLY, O_NONBLOCK } = constants;
    const layers: Layers = {
      trees: [{
        'lower-fifo': { kind: 'fifo', mode: 0o644 },
        'lower-fifo-2': { kind: 'hardlink', to: 'lower-fifo' },
        'single-fifo': { kind: 'fifo', mode: 0o644 },
      }, {}],
    };
    /** A reader opened on one name, a writer on the other, data written, what the reader gets. */
    const pipe = (reader: string, writer: string) => {
      let r: number | undefined;
      let w: number | undefined;
      try {
        const ro = outcome(() => { r = openSync(reader, O_RDONLY | O_NONBLOCK); });
        const wo = outcome(() => { w = openSync(writer, O_WRONLY | O_NONBLOCK); });
        const wrote = w === undefined ? '-' : outcome(() => writeSync(w!, 'through the pipe'));
        const got = r === undefined ? '-' : String(valueOr(() => {
          const buf = Buffer.alloc(64);
          return buf.subarray(0, readSync(r!, buf, 0, 64, null)).toString();
        }));
        return `reader ${ro}, writer ${wo}, write ${wrote}, read "${got}"`;
      } finally {
        if (w !== undefined) closeSync(w);
        if (r !== undefined) closeSync(r);
      }
    };
    await compare('fifo', layers, (s) => {
      const m = (p: string) => join(s.mnt, p);
      const made = [
        outcome(() => mknod(m('new-fifo'), S_IFIFO | 0o644, 0)),
        outcome(() => linkSync(m('new-fifo'), m('new-fifo-2'))),
        outcome(() => linkSync(m('single-fifo'), m('single-fifo-2'))),
      ];
      const ino = (p: string) => String(valueOr(() => lstatSync(m(p)).ino));
      return {
        made,
        sameInode: {
          new: ino('new-fifo') === ino('new-fifo-2'),
          lower: ino('lower-fifo') === ino('lower-fifo-2'),
          single: ino('single-fifo') === ino('single-fifo-2'),
        },
        nlink: ['new-fifo', 'new-fifo-2', 'lower-fifo', 'lower-fifo-2', 'single-fifo', 'single-fifo-2'].map((p) => `${p}: ${valueOr(() => lstatSync(m(p)).nlink)}`),
        newOneName: pipe(m('new-fifo'), m('new-fifo')),
        newAcross: pipe(m('new-fifo'), m('new-fifo-2')),
        newAcrossBack: pipe(m('new-fifo-2'), m('new-fifo')),
        lowerOneName: pipe(m('lower-fifo'), m('lower-fifo')),
        lowerAcross: pipe(m('lower-fifo'), m('lower-fifo-2')),
        lowerAcrossBack: pipe(m('lower-fifo-2'), m('lower-fifo')),
        singleLinkedAcross: pipe(m('single-fifo'), m('single-fifo-2')),
      };
    }, {
      checkKernel: (k) => {
        assert.deepEqual(k.obs.made, ['ok', 'ok', 'ok']);
        const passes = 'reader ok, writer ok, write ok, read "through the pipe"';
        assert.equal(k.obs.newOneName, passes);
        assert.equal(k.obs.newAcross, passes, 'a fifo made and linked through the mount is one pipe');
        assert.equal(k.obs.newAcrossBack, passes);
        assert.equal(k.obs.lowerOneName, passes);
        assert.equal(k.obs.singleLinkedAcross, passes, 'a lower fifo linked through the mount (copied up, then linked in upper) is one pipe');
        // Without index, the kernel gives each name of a lower hard link its own overlay inode
        // (ovl_hash_bylower: no, for a lower with nlink > 1 on a writable mount), and the pipe
        // lives on that inode: two pipes, though both names show one st_ino and nlink 2.
        assert.equal(k.obs.lowerAcross, 'reader ok, writer ENXIO, write -, read ""');
        assert.equal(k.obs.lowerAcrossBack, 'reader ok, writer ENXIO, write -, read ""');
        assert.deepEqual(k.obs.sameInode, { new: true, lower: true, single: true });
      },
    });
  });

  // 8 ------------------------------------------------------------------------------------------
  test('I/O through a descriptor after unlink, after rmdir of its directory, after rename of its directory', async () => {
    const scenarios = ['unlink', 'rmdir', 'rename-dir'] as const;
    const kinds = ['lower-ro', 'lower-rw', 'lower-moved', 'upper'] as const;
    const lowerTree: Tree = {};
    for (const sc of scenarios) {
      for (const k of ['lower-ro', 'lower-rw']) lowerTree[`${sc}-${k}/f`] = { kind: 'file', data: `data of ${sc}-${k}: 0123456789abcdef`, mode: 0o644 };
      lowerTree[`src/${sc}-lower-moved`] = { kind: 'file', data: `data of ${sc}-lower-moved: 0123456789abcdef`, mode: 0o644 };
    }
    const layers: Layers = { trees: [{}, lowerTree] };
    const fstatView = (fd: number) => String(valueOr(() => {
      const st = fstatSync(fd);
      return `${typeOf(st.mode)} ${(st.mode & 0o7777).toString(8)} nlink=${st.nlink} size=${st.size}`;
    }));
    await compare('open-fds', layers, (s) => {
      const out: Record<string, Record<string, string>> = {};
      for (const sc of scenarios) {
        for (const k of kinds) {
          const dir = join(s.mnt, `${sc}-${k}`);
          const f = join(dir, 'f');
          const r: Record<string, string> = {};
          if (k === 'upper') r.setup = [outcome(() => mkdirSync(dir)), outcome(() => writeFileSync(f, `data of ${sc}-${k}: 0123456789abcdef`, { mode: 0o644 }))].join(',');
          if (k === 'lower-moved') r.setup = [outcome(() => mkdirSync(dir)), outcome(() => renameSync(join(s.mnt, 'src', `${sc}-${k}`), f))].join(',');
          const fd = openSync(f, k === 'lower-ro' || k === 'lower-moved' ? 'r' : 'r+');
          try {
            r.before = fstatView(fd);
            r.change = sc === 'unlink' ? outcome(() => unlinkSync(f))
              : sc === 'rmdir' ? [outcome(() => unlinkSync(f)), outcome(() => rmdirSync(dir))].join(',')
                : outcome(() => renameSync(dir, `${dir}-moved`));
            r.fstat = fstatView(fd);
            r.read = pread(fd, 0, 64);
            r.write = outcome(() => writeSync(fd, 'XYZ', 3));
            r.fstatAfterWrite = fstatView(fd);
            r.ftruncate = outcome(() => ftruncateSync(fd, 8));
            r.fchmod = outcome(() => fchmodSync(fd, 0o600));
            // fchmod needs a copy-up, which the kernel cannot make of a lower file whose name is
            // gone: EEXIST after unlink (the whiteout stands in the way), ENOENT after rmdir. Only
            // that it fails is compared, not which errno this accident gives.
            if (k === 'lower-ro' && sc !== 'rename-dir' && r.fchmod !== 'ok') r.fchmod = 'fails';
            r.fstatAfterChanges = fstatView(fd);
            r.readAfterChanges = pread(fd, 0, 64);
            r.fsync = outcome(() => fsyncSync(fd));
          } finally {
            r.close = outcome(() => closeSync(fd));
          }
          r.nameAfterClose = String(valueOr(() => {
            const p = sc === 'rename-dir' && r.change === 'ok' ? join(`${dir}-moved`, 'f') : f;
            const st = lstatSync(p);
            return `${(st.mode & 0o7777).toString(8)} nlink=${st.nlink} "${readFileSync(p, 'latin1')}"`;
          }));
          out[`${sc} ${k}`] = r;
        }
      }
      return out;
    }, {
      checkKernel: (k) => {
        // The kernel keeps every descriptor working, whatever happened to its names.
        for (const [name, r] of Object.entries(k.obs)) {
          assert.doesNotMatch(r.fstat, /^error/, `${name}: fstat after the change`);
          assert.doesNotMatch(r.read, /^error/, `${name}: read after the change`);
          assert.equal(r.close, 'ok', name);
          if (name.endsWith('lower-ro') && !name.startsWith('rename-dir')) assert.equal(r.fchmod, 'fails', name);
          else assert.equal(r.fchmod, 'ok', name);
          if (name.endsWith('lower-rw') || name.endsWith(' upper')) {
            assert.equal(r.write, 'ok', `${name}: write`);
            assert.equal(r.ftruncate, 'ok', `${name}: ftruncate`);
            assert.equal(r.readAfterChanges, 'datXYZf ', `${name}: the write and truncate reached the file`);
          } else {
            assert.equal(r.write, 'EBADF', `${name}: write on a read-only descriptor`);
            assert.equal(r.ftruncate, 'EINVAL', `${name}: ftruncate on a read-only descriptor`);
          }
        }
        assert.equal(k.obs['rename-dir upper'].change, 'ok');
        assert.equal(k.obs['rename-dir lower-ro'].change, 'EXDEV', 'a directory with lower content is not renamed (no redirect_dir)');
        // nlink through the descriptor: 0 once the name is gone, but a lower file opened
        // read-only shows the lower file's own count (still 1: the lower layer keeps it).
        assert.match(k.obs['unlink upper'].fstat, /nlink=0/);
        assert.match(k.obs['unlink lower-rw'].fstat, /nlink=0/);
        assert.match(k.obs['unlink lower-ro'].fstat, /nlink=1/);
      },
    });
  });

  // 9, 10 -------------------------------------------------------------------------------------
  const inoLayers: Layers = {
    trees: [
      { 'ino/top': { kind: 'file', data: 'top' } },
      {
        'ino/a': { kind: 'file', data: 'a' },
        'ino/b': { kind: 'file', data: 'b' },
        'ino/h1': { kind: 'file', data: 'hard' },
        'ino/h2': { kind: 'hardlink', to: 'ino/h1' },
        'ino/d': { kind: 'dir' },
        'ino/d/x': { kind: 'file', data: 'x' },
        'ino/sym': { kind: 'symlink', target: 'a' },
        ...Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`others/o${i}`, { kind: 'file' as const, data: `o${i}` }])),
      },
    ],
  };
  const others = Array.from({ length: 20 }, (_, i) => `others/o${i}`);
  const tracked = ['ino/top', 'ino/a', 'ino/b', 'ino/h1', 'ino/h2', 'ino/d', 'ino/d/x', 'ino/sym', 'ino/u'];
  /** Copied up by chmod (chown -h for the symlink); ino/d/x is not, but its parent is. */
  const copiedUp = ['ino/top', 'ino/a', 'ino/h1', 'ino/d', 'ino/sym'];
  type Inos = Record<string, bigint | string>;

  /**
   * st_ino of every tracked name: at first, after the copy-ups, and after an unmount and a
   * remount (other names looked up first, in another order, and new files made, so that
   * numbers handed out in lookup order would differ). Also the layer files' own numbers.
   */
  async function inoRun(test: string, s: Side) {
    const m = (p: string) => join(s.mnt, p);
    const inos = (paths: string[]): Inos => Object.fromEntries(paths.map((p) => [p, valueOr(() => lstatSync(m(p), { bigint: true }).ino)]));
    const layerIno = (p: string) => {
      for (const l of [s.upper, ...s.lowers]) {
        const st = valueOr(() => lstatSync(join(l, p), { bigint: true }));
        if (typeof st !== 'string') return st.ino;
      }
      return 'none';
    };
    const made = outcome(() => writeFileSync(m('ino/u'), 'upper'));
    const first = inos([...tracked, ...others]);
    const lowerFirst = Object.fromEntries(tracked.map((p) => [p, layerIno(p)]));
    const changes = copiedUp.map((p) => outcome(() => (p === 'ino/sym' ? run('chown', '-h', '1:1', m(p)) : chmodSync(m(p), 0o700))));
    const copied = inos(tracked);
    await s.remount();
    const othersAgain = inos([...others].reverse());
    const madeAgain = ['ino/new1', 'ino/new2'].map((n) => outcome(() => writeFileSync(m(n), n)));
    const remounted = inos([...tracked].reverse());
    const distinct = (values: (bigint | string)[], expect: number) => new Set(values).size === expect && values.every((v) => typeof v === 'bigint');
    const values = { first, copied, remounted, layer: lowerFirst };
    dump(`${test}-numbers`, s.name, values);
    return {
      values,
      obs: {
        made, changes, madeAgain,
        keptAcrossCopyUp: Object.fromEntries(tracked.map((p) => [p, first[p] === copied[p]])),
        keptAcrossRemount: Object.fromEntries(tracked.map((p) => [p, copied[p] === remounted[p]])),
        hardLinksShareBefore: first['ino/h1'] === first['ino/h2'],
        hardLinksShareAfter: copied['ino/h1'] === copied['ino/h2'],
        // Different files have different numbers, within each mount (h1 and h2 are one file until the copy-up).
        distinctFirst: distinct(Object.values(first), tracked.length + others.length - 1),
        distinctRemounted: distinct([...Object.values(othersAgain), ...Object.values(remounted)], tracked.length + others.length),
      },
    };
  }

  test('st_ino stays the same across a copy-up and across an unmount and remount, where the kernel keeps it', async () => {
    await compare('ino', inoLayers, async (s) => (await inoRun('ino', s)).obs, {
      checkKernel: (k) => {
        assert.equal(k.obs.made, 'ok');
        assert.deepEqual(k.obs.changes, copiedUp.map(() => 'ok'));
        assert.equal(k.obs.distinctFirst, true);
        assert.equal(k.obs.distinctRemounted, true);
        assert.equal(k.obs.hardLinksShareBefore, true);
        // Everything keeps its number, but the copy-up of one name of a lower hard link
        // (no index: the link is broken, that name is a new file, with the upper file's number).
        assert.deepEqual(k.obs.keptAcrossCopyUp, Object.fromEntries(tracked.map((p) => [p, p !== 'ino/h1'])));
        assert.equal(k.obs.hardLinksShareAfter, false);
        assert.deepEqual(k.obs.keptAcrossRemount, Object.fromEntries(tracked.map((p) => [p, true])));
      },
    });
  });

  // With every layer on one filesystem and no xino, the kernel shows the number of the file a
  // name comes from: the lower file's (kept by copied-up files, through their origin), the
  // upper file's for entries made in upper and for a copy that broke a lower hard link.
  // ts-overlayfs does the same (README). (The layers here are on ext4, whose numbers fit in
  // 32 bits: this does not show that numbers above 2^32 pass unchanged.)
  test('st_ino is the layer file\'s own number, as the kernel shows it with all layers on one filesystem', async () => {
    await compare('ino-own', inoLayers, async (s) => {
      const { values } = await inoRun('ino-own', s);
      const upperIno = (p: string) => lstatSync(join(s.upper, p), { bigint: true }).ino;
      const own = (p: string) => (p === 'ino/u' ? upperIno(p) : values.layer[p]);
      return {
        first: Object.fromEntries(tracked.map((p) => [p, values.first[p] === own(p)])),
        // After the copy-up, a file that broke a lower hard link is a new file: the upper one's number.
        copied: Object.fromEntries(tracked.map((p) => [p, values.copied[p] === (p === 'ino/h1' ? upperIno(p) : own(p))])),
        remounted: Object.fromEntries(tracked.map((p) => [p, values.remounted[p] === (p === 'ino/h1' ? upperIno(p) : own(p))])),
      };
    }, {
      checkKernel: (k) => {
        const all = Object.fromEntries(tracked.map((p) => [p, true]));
        assert.deepEqual(k.obs, { first: all, copied: all, remounted: all });
      },
      view: false,
      upper: false,
    });
  });
});
