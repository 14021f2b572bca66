/**
 * Pictures of a merged view and of an upper layer, and their comparison, for the
 * differential fuzzer. Times are compared to the nanosecond, except those from the clock
 * (differences.ts fresh-times). Paths are fuzzer strings (names.ts): any bytes.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants as fsc, fstatSync, lstatSync, openSync, readdirSync, readlinkSync, readSync, type BigIntStats } from 'node:fs';
import { isWhiteoutStat } from '../../src/overlay/format';
import { lgetxattr, lgetxattrOrNull, llistxattr } from '../../src/sys/libc';
import { typeOf } from '../helpers/snapshot';
import { FRESH_TIME_MS } from './generate';
import { fuzzMode } from './mode';
import { stringOf, under } from './names';

const FRESH_TIME_NS = BigInt(FRESH_TIME_MS) * 1_000_000n;

/** mtime in nanoseconds, or 'fresh' for a time from the clock during the run. */
export function mtimeOf(st: BigIntStats): string {
  return st.mtimeNs >= FRESH_TIME_NS ? 'fresh' : String(st.mtimeNs);
}

/** The names in directory `p`, as fuzzer strings, sorted. */
function namesIn(p: Buffer): string[] {
  return readdirSync(p, { encoding: 'buffer' }).map(stringOf).sort();
}

export function sha(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex').slice(0, 16);
}

const CHUNK = Buffer.alloc(1 << 20);

/** Reads a whole file without blocking on a fifo; returns [length, hash]. */
export function readAll(path: string | Buffer): [number, string] {
  const fd = openSync(path, fsc.O_RDONLY | fsc.O_NONBLOCK | fsc.O_NOFOLLOW);
  try {
    const h = createHash('sha256');
    let total = 0;
    for (;;) {
      const n = readSync(fd, CHUNK, 0, CHUNK.length, null);
      if (n === 0) break;
      h.update(CHUNK.subarray(0, n));
      total += n;
    }
    return [total, h.digest('hex').slice(0, 16)];
  } finally {
    closeSync(fd);
  }
}

export interface ViewEntry {
  type: string;
  mode: string;
  uid: number;
  gid: number;
  nlink: number;
  size: number;
  mtime: string;
  /** `lower N` where the entry shows the st_ino of lower inode N, else `upper` (differences.ts inode-numbers). */
  ino?: string;
  target?: string;
  data?: string;
  xattrs: string[];
}

/** Entries by path, and the names sharing an st_ino (groups of two or more, sorted). */
export interface Picture<E extends { type: string }> {
  entries: Map<string, E>;
  linkGroups: string[][];
}

/**
 * A merged view; `stamps` (left out of comparisons) tells, per path, whether a file's data and
 * xattrs may have changed since: type, st_ino, size, mode, nlink and the times.
 */
export type View = Picture<ViewEntry> & { stamps?: Map<string, string> };

function xattrsOf(p: Buffer): string[] {
  return llistxattr(p).sort().map((n) => `${n}=${lgetxattr(p, n).toString('base64')}`);
}

/**
 * The merged view under `root`: every path, never following symlinks. With `since`, the data
 * and xattrs of an entry whose stamp is unchanged (and, if given, `alsoUnchanged` says so) are
 * taken from that earlier view instead of being read again: a change of data or xattrs moves
 * ctime, and reading every file through FUSE at every step was most of a fuzzing run's time.
 * ts-overlayfs's view is reused only where the kernel's is unchanged too (ext4 makes each
 * change after a stat move ctime), so a change it shows without a new ctime is still seen.
 * With `lowerInos` (the lower layers' st_ino values), each entry tells which one it shows.
 * `exactTimes`: times from the clock are shown as they are too (for views of the same upper).
 */
export function takeView(root: string, opts: {
  exactTimes?: boolean; since?: View; alsoUnchanged?: (path: string) => boolean; lowerInos?: ReadonlySet<bigint>;
} = {}): View {
  const entries = new Map<string, ViewEntry>();
  const stamps = new Map<string, string>();
  const byIno = new Map<bigint, string[]>();
  const walk = (rel: string) => {
    const p = under(root, rel);
    const key = rel === '' ? '.' : rel;
    const st = lstatSync(p, { bigint: true });
    const type = typeOf(Number(st.mode));
    const stamp = `${type} ${st.ino} ${st.size} ${st.mode} ${st.nlink} ${st.mtimeNs} ${st.ctimeNs}`;
    const same = opts.since?.stamps?.get(key) === stamp && (opts.alsoUnchanged?.(key) ?? true);
    const before = same ? opts.since?.entries.get(key) : undefined;
    const e: ViewEntry = {
      type,
      mode: (Number(st.mode) & 0o7777).toString(8),
      uid: Number(st.uid),
      gid: Number(st.gid),
      nlink: Number(st.nlink),
      mtime: opts.exactTimes ? String(st.mtimeNs) : mtimeOf(st),
      size: Number(st.size),
      xattrs: type === 'symlink' ? [] : before ? before.xattrs : xattrsOf(p),
    };
    if (opts.lowerInos) e.ino = opts.lowerInos.has(st.ino) ? `lower ${st.ino}` : 'upper';
    if (type === 'symlink') e.target = stringOf(readlinkSync(p, { encoding: 'buffer' }));
    if (type === 'file') e.data = before?.data ?? readAll(p).join(':');
    entries.set(key, e);
    stamps.set(key, stamp);
    if (type === 'dir') {
      for (const name of namesIn(p)) walk(rel === '' ? name : `${rel}/${name}`);
    } else {
      const g = byIno.get(st.ino) ?? [];
      g.push(rel);
      byIno.set(st.ino, g);
    }
  };
  walk('');
  const linkGroups = [...byIno.values()].filter((g) => g.length > 1).map((g) => g.sort()).sort();
  return { entries, linkGroups, stamps };
}

export interface Diff {
  path: string;
  field: string;
  kernel: unknown;
  ts: unknown;
}

/** Differences between two pictures (views or upper layers), the kernel's first. */
function diffPictures<E extends { type: string }>(kernel: Picture<E>, ts: Picture<E>, linkGroups = true): Diff[] {
  const out: Diff[] = [];
  const paths = new Set([...kernel.entries.keys(), ...ts.entries.keys()]);
  for (const p of [...paths].sort()) {
    const k = kernel.entries.get(p);
    const t = ts.entries.get(p);
    if (!k || !t) {
      out.push({ path: p, field: 'exists', kernel: k ? k.type : 'absent', ts: t ? t.type : 'absent' });
      continue;
    }
    for (const f of Object.keys({ ...k, ...t }) as (keyof E & string)[]) {
      if (JSON.stringify(k[f]) !== JSON.stringify(t[f])) out.push({ path: p, field: f, kernel: k[f], ts: t[f] });
    }
  }
  if (linkGroups && JSON.stringify(kernel.linkGroups) !== JSON.stringify(ts.linkGroups)) {
    out.push({ path: '*', field: 'hardlinks', kernel: kernel.linkGroups, ts: ts.linkGroups });
  }
  return out;
}

export function diffViews(kernel: View, ts: View): Diff[] {
  // differences.ts userns-ino: the kernel's st_ino of a copied-up file is not stable there.
  return diffPictures(kernel, ts, !fuzzMode().unprivileged);
}

export interface UpperEntry {
  type: string;
  mode: string;
  uid: number;
  gid: number;
  size?: number;
  data?: string;
  target?: string;
  opaque?: string;
  xattrs: string[];
}

export type UpperPicture = Picture<UpperEntry>;

/**
 * An upper layer as the format sees it: whiteouts, opaque markers, data, mode, owner, xattrs,
 * hard links. The kernel's own overlay bookkeeping xattrs (all but opaque) are left out.
 */
export function pictureUpper(root: string): UpperPicture {
  const entries = new Map<string, UpperEntry>();
  const byIno = new Map<bigint, string[]>();
  const walk = (rel: string) => {
    const p = under(root, rel);
    const st = lstatSync(p, { bigint: true });
    const plain = lstatSync(p);
    const whiteout = isWhiteoutStat(plain);
    const type = whiteout ? 'whiteout' : typeOf(plain.mode);
    const e: UpperEntry = {
      type,
      mode: (plain.mode & 0o7777).toString(8),
      uid: plain.uid,
      gid: plain.gid,
      xattrs: type === 'symlink' ? [] : llistxattr(p).filter((n) => !n.startsWith(fuzzMode().overlayXattrs)).sort()
        .map((n) => `${n}=${lgetxattr(p, n).toString('base64')}`),
    };
    if (type === 'file') {
      e.size = plain.size;
      e.data = readAll(p).join(':');
    }
    if (type === 'symlink') e.target = stringOf(readlinkSync(p, { encoding: 'buffer' }));
    if (type === 'dir') {
      const o = lgetxattrOrNull(p, `${fuzzMode().overlayXattrs}opaque`);
      if (o) e.opaque = o.toString();
    }
    entries.set(rel === '' ? '.' : rel, e);
    if (type === 'dir') {
      for (const n of namesIn(p)) walk(rel === '' ? n : `${rel}/${n}`);
    } else if (type !== 'whiteout') {
      const g = byIno.get(st.ino) ?? [];
      g.push(rel);
      byIno.set(st.ino, g);
    }
  };
  walk('');
  const linkGroups = [...byIno.values()].filter((g) => g.length > 1).map((g) => g.sort()).sort();
  return { entries, linkGroups };
}

export function diffUppers(kernel: UpperPicture, ts: UpperPicture): Diff[] {
  return diffPictures(kernel, ts);
}

/** A short summary of a stat for operation outcomes (stat, fstat). */
export function statSummary(st: BigIntStats): string {
  return `${typeOf(Number(st.mode))} ${(Number(st.mode) & 0o7777).toString(8)} ${st.uid}:${st.gid} nlink=${st.nlink} size=${st.size} mtime=${mtimeOf(st)}`;
}

export function fstatSummary(fd: number): string {
  return statSummary(fstatSync(fd, { bigint: true }));
}
