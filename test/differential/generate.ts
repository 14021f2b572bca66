/**
 * Seeded generators for differential fuzzing against kernel overlayfs: layer sets in the
 * kernel's on-disk format and operation sequences on the merged view.
 *
 * Everything here is a pure function of the seed (and, for operations, of the merged view the
 * oracle shows at that step), so a seed reproduces exactly. No dependencies.
 */
import { chmodSync, closeSync, ftruncateSync, lchownSync, linkSync, mkdirSync, openSync, symlinkSync, writeSync } from 'node:fs';
import { lsetxattr, lutimens, mknod } from '../../src/sys/libc';
import { AVOID } from './differences';
import { fuzzMode } from './mode';
import { bytesOf, under } from './names';

// ---------------------------------------------------------------------------------------------
// PRNG

/** mulberry32: a small, fast 32-bit PRNG; good enough to pick fuzzing choices. */
export class Rng {
  private s: number;

  constructor(seed: number) {
    this.s = (seed >>> 0) ^ 0x6d2b79f5;
    // Warm up, so that seeds 1, 2, 3 do not start alike.
    for (let i = 0; i < 4; i++) this.u32();
  }

  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** Uniform in [0, 1). */
  float(): number {
    return this.u32() / 4294967296;
  }

  /** Integer in [lo, hi] (inclusive). */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.float() * (hi - lo + 1));
  }

  chance(p: number): boolean {
    return this.float() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from nothing');
    return items[Math.floor(this.float() * items.length)];
  }

  /** Picks by weight: [[weight, value], ...]. */
  weighted<T>(choices: readonly (readonly [number, T])[]): T {
    const total = choices.reduce((n, [w]) => n + w, 0);
    let r = this.float() * total;
    for (const [w, v] of choices) {
      if ((r -= w) < 0) return v;
    }
    return choices[choices.length - 1][1];
  }

  /** A derived generator: its own stream, so adding draws here does not shift it. */
  fork(salt: number): Rng {
    return new Rng((this.u32() ^ Math.imul(salt, 0x9e3779b1)) >>> 0);
  }
}

/** Deterministic bytes for data: `n` bytes from seed `s` (a short repeating pattern when s < 0). */
export function dataBytes(s: number, n: number): Buffer {
  const buf = Buffer.alloc(n);
  if (s < 0) {
    for (let i = 0; i < n; i++) buf[i] = 0x41 + ((i - s) % 26);
    return buf;
  }
  const r = new Rng(s);
  let i = 0;
  for (; i + 4 <= n; i += 4) buf.writeUInt32LE(r.u32(), i);
  for (; i < n; i++) buf[i] = r.u32() & 0xff;
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Layers

export interface Timespec { sec: number; nsec: number }

export type LayerEntry =
  | { kind: 'file'; size: number; data: number; sparseAt?: number; mode: number; uid: number; gid: number; mtime: Timespec; xattrs: Record<string, string> }
  | { kind: 'dir'; mode: number; uid: number; gid: number; mtime: Timespec; xattrs: Record<string, string>; opaque: boolean }
  | { kind: 'symlink'; target: string; uid: number; gid: number; mtime: Timespec }
  | { kind: 'hardlink'; to: string }
  | { kind: 'fifo'; mode: number; uid: number; gid: number; mtime: Timespec }
  | { kind: 'whiteout' };

/** One lower layer: relative paths in creation order (parents first). */
export type LayerSpec = [string, LayerEntry][];

/**
 * Names shared by all layers, so that layers collide: merges, hiding, whiteouts. Two are not
 * UTF-8 (names.ts: each \udcXX is the byte 0xXX): Latin-1 "lät", and a cut-off UTF-8
 * sequence followed by 0xff.
 */
export const NAMES = ['a', 'b', 'c', 'd', 'sub', 'dir', 'with space', 'ünï ✓', 'co:lon', '-dash', '.hid', 'x', 'l\udce4t', '\udcc3\udcff'] as const;
/** Names for new entries made by operations: the shared names (some whited out below) and fresh ones. */
const NEW_NAMES = [...NAMES, 'n1', 'n2', 'new file', 'ñ:2', '-n3', 'r\udce9s\udc80'] as const;

const FILE_MODES = [0o644, 0o644, 0o600, 0o755, 0o4755, 0o2755, 0o000, 0o444, 0o640, 0o777, 0o1644];
const DIR_MODES = [0o755, 0o755, 0o755, 0o700, 0o1777, 0o2775, 0o555, 0o750, 0o000];
const FIFO_MODES = [0o644, 0o600, 0o666];
const IDS = [0, 0, 0, 1000, 65534, 12345];
/** Owners of layer entries: in a user namespace only id 0 is mapped (chown ops still try all). */
const layerIds = (): number[] => (fuzzMode().unprivileged ? [0] : IDS);
export const XATTR_NAMES = ['user.a', 'user.color', 'user.empty', 'user.long'] as const;
/** 2001-01-01 .. 2021-01-01: every generated time is before any clock time of a run. */
const T_LO = 978307200;
const T_HI = 1609459200;
/** Times at or after this come from the clock during a run, not from layers or utimes. */
export const FRESH_TIME_MS = Date.UTC(2022, 0, 1);

function time(r: Rng): Timespec {
  return { sec: r.int(T_LO, T_HI), nsec: r.chance(0.2) ? r.pick([0, 999999999, 500000]) : r.int(0, 999999999) };
}

function xattrValue(r: Rng, name: string): string {
  if (name === 'user.empty') return '';
  if (name === 'user.long') return 'L'.repeat(r.int(200, 400));
  return r.pick(['blue', 'red', 'v', 'ünï', 'x'.repeat(r.int(1, 40))]);
}

function xattrs(r: Rng): Record<string, string> {
  const out: Record<string, string> = {};
  if (r.chance(0.25)) {
    for (const n of XATTR_NAMES) if (r.chance(0.4)) out[n] = xattrValue(r, n);
  }
  return out;
}

function fileSize(r: Rng): number {
  return r.weighted([
    [3, 0],
    [8, r.int(1, 64)],
    [6, r.int(65, 8192)],
    [2, r.int(8193, 200000)],
  ]);
}

/**
 * A symlink target that cannot leave the test's own directories: no absolute target that
 * exists, and at most 3 `..` (each side's mountpoint sits 3 empty private directories deep).
 */
export function symlinkTarget(r: Rng): string {
  return r.weighted([
    [4, r.pick(NAMES)],
    [3, `${r.pick(NAMES)}/${r.pick(NAMES)}`],
    [3, `../${r.pick(NAMES)}`],
    [1, `../../${r.pick(NAMES)}/${r.pick(NAMES)}`],
    [1, `../../../${r.pick(NAMES)}`],
    [2, `/nonexistent-tsovl-fuzz/${r.pick(NAMES)}`],
    [1, 'nowhere/at/all'],
    [1, '.'],
  ]);
}

/**
 * Directories in the merged view, as the kernel resolves them (lowers only): the layers that
 * make up each visible directory, top first. Used to place whiteouts only where they mean
 * something (see differences.ts: whiteouts in unmerged directories).
 */
export function mergedDirLayers(layers: readonly LayerSpec[]): Map<string, number[]> {
  const maps = layers.map((l) => new Map(l));
  const out = new Map<string, number[]>();
  out.set('', layers.map((_, i) => i));
  const kindAt = (i: number, p: string): 'dir' | 'other' | 'whiteout' | undefined => {
    const e = maps[i].get(p);
    if (!e) return undefined;
    if (e.kind === 'dir') return 'dir';
    if (e.kind === 'whiteout') return 'whiteout';
    return 'other';
  };
  const visit = (dir: string, dirLayers: number[]) => {
    const names = new Set<string>();
    for (const i of dirLayers) {
      for (const [p] of layers[i]) {
        const slash = p.lastIndexOf('/');
        const parent = slash < 0 ? '' : p.slice(0, slash);
        if (parent === dir) names.add(p.slice(slash + 1));
      }
    }
    for (const name of [...names].sort()) {
      const p = dir === '' ? name : `${dir}/${name}`;
      const found: number[] = [];
      for (const i of dirLayers) {
        const k = kindAt(i, p);
        if (k === undefined) continue;
        if (k === 'whiteout') break;
        if (k === 'other') break;
        found.push(i);
        const e = maps[i].get(p) as { opaque: boolean };
        if (e.opaque) break;
      }
      // A non-directory above the first directory hides it: then p is not a directory.
      const firstAny = dirLayers.find((i) => kindAt(i, p) !== undefined);
      if (found.length > 0 && firstAny === found[0]) {
        out.set(p, found);
        visit(p, found);
      }
    }
  };
  visit('', out.get('')!);
  return out;
}

/** A random set of 1..maxLowers lower layers (top first), in the kernel's format. */
export function generateLayers(seed: number, lowers?: number): LayerSpec[] {
  const ids = layerIds();
  const r = new Rng(seed).fork(1);
  const n = lowers ?? r.int(1, 5);
  const layers: LayerSpec[] = [];
  for (let li = 0; li < n; li++) {
    const layer: LayerSpec = [];
    const files: string[] = [];
    const gen = (dir: string, depth: number) => {
      const count = depth === 0 ? r.int(2, 7) : r.int(0, 4);
      const names = new Set<string>();
      for (let k = 0; k < count; k++) names.add(r.pick(NAMES));
      for (const name of names) {
        const p = dir === '' ? name : `${dir}/${name}`;
        const kind = r.weighted([
          [depth < 3 ? 30 : 0, 'dir'],
          [40, 'file'],
          [9, 'symlink'],
          [4, 'fifo'],
          [files.length > 0 ? 6 : 0, 'hardlink'],
          [12, 'whiteout'],
        ] as const);
        switch (kind) {
          case 'dir':
            layer.push([p, {
              kind: 'dir', mode: r.pick(DIR_MODES), uid: r.pick(ids), gid: r.pick(ids), mtime: time(r), xattrs: xattrs(r),
              opaque: depth > 0 && r.chance(0.12),
            }]);
            gen(p, depth + 1);
            break;
          case 'file': {
            const sparse = r.chance(0.05);
            const size = sparse ? r.int(1, 4) * 1024 * 1024 + r.int(0, 4095) : fileSize(r);
            layer.push([p, {
              kind: 'file', size, data: r.u32(), sparseAt: sparse ? sparseStart(r, size) : undefined,
              mode: r.pick(FILE_MODES), uid: r.pick(ids), gid: r.pick(ids), mtime: time(r), xattrs: xattrs(r),
            }]);
            files.push(p);
            break;
          }
          case 'symlink':
            layer.push([p, { kind: 'symlink', target: symlinkTarget(r), uid: r.pick(ids), gid: r.pick(ids), mtime: time(r) }]);
            break;
          case 'fifo':
            layer.push([p, { kind: 'fifo', mode: r.pick(FIFO_MODES), uid: r.pick(ids), gid: r.pick(ids), mtime: time(r) }]);
            break;
          case 'hardlink':
            layer.push([p, { kind: 'hardlink', to: r.pick(files) }]);
            break;
          case 'whiteout':
            layer.push([p, { kind: 'whiteout' }]);
            break;
        }
      }
    };
    gen('', 0);
    layers.push(layer);
  }
  // Whiteouts only inside directories the kernel merges (see differences.ts); repeat until
  // stable, as dropping one can merge more.
  for (;;) {
    const merged = mergedDirLayers(layers);
    let dropped = false;
    layers.forEach((layer, li) => {
      for (let k = layer.length - 1; k >= 0; k--) {
        const [p, e] = layer[k];
        if (e.kind !== 'whiteout') continue;
        const slash = p.lastIndexOf('/');
        const parent = slash < 0 ? '' : p.slice(0, slash);
        const dl = merged.get(parent);
        if (AVOID.whiteoutInUnmergedDir && parent !== '' && !(dl && dl.length > 1 && dl.includes(li))) {
          layer.splice(k, 1);
          dropped = true;
        }
      }
    });
    if (!dropped) break;
  }
  return layers;
}

/**
 * Where a sparse layer file's data starts (see buildLayer): a layout that the kernel's copy-up
 * (1 MiB chunks from each data extent it finds, differences.ts copy-up-holes) and an exact
 * copy of the extents both reproduce: a hole, then data to the end (from anywhere), or a
 * whole 1 MiB chunk of data at a block boundary, then a hole to the end.
 */
function sparseStart(r: Rng, size: number): number {
  if (size > SPARSE_CHUNK + 4096 && r.chance(0.5)) return -4096 * r.int(0, Math.floor((size - SPARSE_CHUNK) / 4096) - 1) - 1;
  return r.chance(0.5) ? size - r.int(1, 200000) : r.int(1, size - 1);
}

/** The kernel's copy-up chunk (OVL_COPY_UP_CHUNK_SIZE). */
const SPARSE_CHUNK = 1 << 20;

const S_IFCHR = 0o020000;
const S_IFIFO = 0o010000;

/**
 * Writes one layer to disk. Times are set last, deepest first (creating children changes a dir's mtime).
 * A sparse file (`sparseAt`): at `sparseAt` >= 0, a hole then data to the end; at -1 - B, 1 MiB
 * of data at B, then a hole to the end.
 */
export function buildLayer(root: string, spec: LayerSpec): void {
  mkdirSync(root, { recursive: true });
  const times: [string | Buffer, Timespec][] = [];
  for (const [rel, e] of spec) {
    const p = under(root, rel);
    switch (e.kind) {
      case 'dir':
        mkdirSync(p);
        if (e.opaque) lsetxattr(p, `${fuzzMode().overlayXattrs}opaque`, Buffer.from('y'));
        break;
      case 'file': {
        const fd = openSync(p, 'wx');
        try {
          if (e.sparseAt !== undefined && e.sparseAt >= 0) {
            writeSync(fd, dataBytes(e.data, e.size - e.sparseAt), 0, e.size - e.sparseAt, e.sparseAt);
          } else if (e.sparseAt !== undefined) {
            writeSync(fd, dataBytes(e.data, SPARSE_CHUNK), 0, SPARSE_CHUNK, -1 - e.sparseAt);
            ftruncateSync(fd, e.size);
          } else if (e.size > 0) {
            writeSync(fd, dataBytes(e.data, e.size));
          }
        } finally {
          closeSync(fd);
        }
        break;
      }
      case 'symlink':
        symlinkSync(bytesOf(e.target), p);
        break;
      case 'hardlink':
        linkSync(under(root, e.to), p);
        break;
      case 'fifo':
        mknod(p, S_IFIFO | e.mode, 0);
        break;
      case 'whiteout':
        mknod(p, S_IFCHR, 0);
        break;
    }
    if (e.kind === 'file' || e.kind === 'dir') {
      for (const [name, value] of Object.entries(e.xattrs)) lsetxattr(p, name, Buffer.from(value));
    }
    if (e.kind === 'file' || e.kind === 'dir' || e.kind === 'symlink' || e.kind === 'fifo') {
      lchownSync(p, e.uid, e.gid);
      // chown clears set-id bits: the mode goes last. Symlinks have no mode of their own.
      if (e.kind !== 'symlink') chmodSync(p, e.mode);
      times.push([p, e.mtime]);
    }
  }
  times.push([root, { sec: T_LO, nsec: 0 }]);
  for (const [p, t] of times.reverse()) lutimens(p, { sec: t.sec - 86400, nsec: t.nsec }, t);
}

// ---------------------------------------------------------------------------------------------
// Operations

/** Open flags by name, so that sequences print and serialize readably. */
export type OpenFlag = 'RDONLY' | 'WRONLY' | 'RDWR' | 'CREAT' | 'EXCL' | 'TRUNC' | 'APPEND';

/** Data written: `n` bytes of dataBytes(s, n). */
export interface Data { s: number; n: number }

/** A time for utimensat: a value, or UTIME_NOW / UTIME_OMIT. */
export type TimeArg = Timespec | 'now' | 'omit';

/** renameat2 flags (RENAME_WHITEOUT is EINVAL on an overlay, and EPERM without CAP_MKNOD). */
export type RenameFlag = 'NOREPLACE' | 'EXCHANGE' | 'WHITEOUT';

/** fallocate modes the upper filesystem supports: 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE. */
export type FallocateMode = 'ALLOC' | 'KEEP_SIZE' | 'PUNCH_HOLE';

export type Op =
  | { t: 'open'; slot: number; path: string; flags: OpenFlag[]; mode: number }
  | { t: 'close'; slot: number }
  | { t: 'read'; slot: number; pos: number | null; len: number }
  | { t: 'write'; slot: number; pos: number | null; data: Data }
  | { t: 'ftruncate'; slot: number; size: number }
  | { t: 'fstat'; slot: number }
  | { t: 'fallocate'; slot: number; mode: FallocateMode; offset: number; len: number }
  | { t: 'seek'; slot: number; whence: 'DATA' | 'HOLE'; offset: number }
  | { t: 'readFile'; path: string }
  | { t: 'writeFile'; path: string; data: Data; mode: number }
  | { t: 'append'; path: string; data: Data }
  | { t: 'truncate'; path: string; size: number }
  | { t: 'mkdir'; path: string; mode: number }
  | { t: 'rmdir'; path: string }
  | { t: 'unlink'; path: string }
  | { t: 'rename'; from: string; to: string }
  | { t: 'rename2'; from: string; to: string; flag: RenameFlag }
  | { t: 'link'; from: string; to: string }
  | { t: 'symlink'; target: string; path: string }
  | { t: 'mkfifo'; path: string; mode: number }
  | { t: 'chmod'; path: string; mode: number }
  | { t: 'chown'; path: string; uid: number; gid: number; follow: boolean }
  | { t: 'utimes'; path: string; atime: TimeArg; mtime: TimeArg; follow: boolean }
  | { t: 'setxattr'; path: string; name: string; value: string; flags: 0 | 1 | 2 }
  | { t: 'removexattr'; path: string; name: string }
  | { t: 'getxattr'; path: string; name: string }
  | { t: 'stat'; path: string }
  | { t: 'readdir'; path: string }
  | { t: 'readdirDuring'; path: string; inner: Op };

/** What the generator needs to know of the current merged view (from the oracle). */
export interface ViewInfo {
  /** Every path ('' excluded) with its type: dir, file, symlink, fifo, ... */
  readonly types: ReadonlyMap<string, string>;
  /** Sizes of regular files. */
  readonly sizes: ReadonlyMap<string, number>;
  /** Paths present in the lower layers at the start (never changed by the sequence). */
  readonly lowerPaths: readonly string[];
  /** Paths where a lower layer holds a whiteout. */
  readonly lowerWhiteouts: ReadonlySet<string>;
  /**
   * Link counts of non-directories, as the kernel shows them (its st_ino cannot tell hard
   * links apart in the unprivileged mode: differences.ts userns-ino).
   */
  readonly nlinks: ReadonlyMap<string, number>;
  /** Modes (permission bits) by path. */
  readonly modes: ReadonlyMap<string, number>;
  /** Descriptor slots: the type of what each holds open (its name still there or not), or null. */
  readonly slots: readonly (string | null)[];
  /** Whether opening `path` (symlinks followed) opens a fifo with other links (unprivileged mode only: userns-ino). */
  readonly opensLinkedFifo: (path: string) => boolean;
}

export const SLOTS = 4;

function hasOtherLinks(v: ViewInfo, path: string): boolean {
  return (v.nlinks.get(path) ?? 1) > 1;
}

/** `[op]`, or none if it would run into one of the differences below. */
function allowed(v: ViewInfo, op: Op): Op[] {
  // differences.ts failed-rename-opaque: no directory over a non-empty directory.
  if (op.t === 'rename' && AVOID.failedRenameOpaque && v.types.get(op.from) === 'dir' && v.types.get(op.to) === 'dir' &&
    [...v.types.keys()].some((p) => p.startsWith(`${op.to}/`))) return [];
  // differences.ts userns-ino: not between two names that may be one file, in a user namespace,
  // and no fifo opened there that has other links.
  if ((op.t === 'rename' || op.t === 'rename2') && fuzzMode().unprivileged && hasOtherLinks(v, op.from) && hasOtherLinks(v, op.to)) return [];
  const opened = op.t === 'open' || op.t === 'readFile' || op.t === 'writeFile' || op.t === 'append' ? op.path : null;
  if (opened !== null && fuzzMode().unprivileged && v.opensLinkedFifo(opened)) return [];
  return [op];
}

const NEW_FILE_MODES = [0o644, 0o600, 0o755, 0o4755, 0o000, 0o666, 0o2644];
const NEW_DIR_MODES = [0o755, 0o700, 0o1777, 0o2775, 0o555, 0o000];

function dataOf(r: Rng): Data {
  return { s: r.chance(0.3) ? -r.int(1, 25) : r.u32(), n: r.weighted([[2, 0], [6, r.int(1, 100)], [4, r.int(100, 9000)], [1, r.int(60000, 150000)]]) };
}

/**
 * Generates operations. Paths come mostly from the current merged view (so most operations
 * succeed), sometimes from the lower layers' paths (whited out or renamed since) or made up.
 */
export class OpGenerator {
  constructor(private readonly r: Rng) {}

  private existing(v: ViewInfo, pred: (type: string) => boolean = () => true): string | null {
    const all = [...v.types].filter(([, t]) => pred(t)).map(([p]) => p);
    return all.length === 0 ? null : this.r.pick(all);
  }

  private dirs(v: ViewInfo): string[] {
    return ['', ...[...v.types].filter(([, t]) => t === 'dir').map(([p]) => p)];
  }

  /** Any path: mostly existing, sometimes gone or made up. */
  private anyPath(v: ViewInfo, pred?: (type: string) => boolean): string {
    const r = this.r;
    const choice = r.weighted([[14, 'existing'], [2, 'lower'], [2, 'new'], [1, 'bogus']] as const);
    if (choice === 'existing') {
      const p = this.existing(v, pred);
      if (p !== null) return p;
    }
    if (choice === 'lower' && v.lowerPaths.length > 0) return r.pick(v.lowerPaths);
    if (choice === 'bogus') {
      // Under a non-directory (ENOTDIR), or deeper than anything.
      const f = this.existing(v, (t) => t !== 'dir');
      return f !== null && r.chance(0.5) ? `${f}/${r.pick(NAMES)}` : `${r.pick(NAMES)}/${r.pick(NAMES)}/${r.pick(NAMES)}/${r.pick(NAMES)}`;
    }
    return this.newPath(v);
  }

  /** A name for something new: in an existing directory, often free, sometimes taken. */
  private newPath(v: ViewInfo): string {
    const r = this.r;
    const dir = r.chance(0.85) ? r.pick(this.dirs(v)) : (this.existing(v) ?? '');
    const name = r.pick(NEW_NAMES);
    return dir === '' ? name : `${dir}/${name}`;
  }

  private file(v: ViewInfo): string {
    return this.anyPath(v, (t) => t === 'file' || (this.r.chance(0.15) && t !== 'fifo'));
  }

  private openFlags(): OpenFlag[] {
    const r = this.r;
    const flags: OpenFlag[] = [r.weighted([[4, 'RDONLY'], [3, 'WRONLY'], [4, 'RDWR']] as const)];
    if (r.chance(0.35)) flags.push('CREAT');
    if (flags.includes('CREAT') && r.chance(0.3)) flags.push('EXCL');
    if (r.chance(0.2)) flags.push('TRUNC');
    if (r.chance(0.2)) flags.push('APPEND');
    return flags;
  }

  /** An open descriptor slot, its name still there or not (I/O after unlink is exercised). */
  private openSlot(v: ViewInfo): number | null {
    const open = v.slots.flatMap((s, i) => (s !== null ? [i] : []));
    return open.length === 0 ? null : this.r.pick(open);
  }

  /** A slot holding a regular file, mostly (fallocate and lseek then mostly do something). */
  private fileSlot(v: ViewInfo): number | null {
    const files = v.slots.flatMap((s, i) => (s === 'file' ? [i] : []));
    return files.length > 0 && this.r.chance(0.85) ? this.r.pick(files) : null;
  }

  private fallocate(slot: number): Op {
    const r = this.r;
    const mode = r.weighted([[3, 'ALLOC'], [2, 'KEEP_SIZE'], [4, 'PUNCH_HOLE']] as const);
    const offset = r.weighted([[3, r.pick([0, 100, 4096, 8192])], [3, r.int(0, 9000)], [1, r.pick([65536, 1 << 20, (1 << 20) + 4096, 3000000])]]);
    const len = r.weighted([[1, 0], [4, r.pick([1, 100, 4096, 8192, 65536])], [3, r.int(1, 20000)], [1, r.pick([1 << 20, 2 << 20])]]);
    return { t: 'fallocate', slot, mode, offset, len };
  }

  private seek(slot: number): Op {
    const r = this.r;
    return { t: 'seek', slot, whence: r.pick(['DATA', 'HOLE'] as const), offset: r.weighted([[3, 0], [3, r.int(0, 9000)], [1, r.pick([4096, 65536, 1 << 20, (1 << 20) + 1, 3000000])]]) };
  }

  /** A time for utimes: mostly a value, sometimes UTIME_NOW or UTIME_OMIT. */
  private time(): TimeArg {
    return this.r.weighted<() => TimeArg>([[8, () => time(this.r)], [1, () => 'now'], [1, () => 'omit']])();
  }

  /** The target of a rename: a new name, an existing one, the source's own subtree, or any. */
  private renameTarget(v: ViewInfo, from: string, overWeight: number): string {
    const r = this.r;
    const how = r.weighted([[5, 'new'], [overWeight, 'over'], [1, 'into-itself'], [1, 'any']] as const);
    if (how === 'into-itself') return `${from}/${r.pick(NEW_NAMES)}`;
    if (how === 'over') return this.existing(v, (t) => (v.types.get(from) === 'dir') === (t === 'dir') || r.chance(0.2)) ?? this.newPath(v);
    if (how === 'new') return this.newPath(v);
    return this.anyPath(v);
  }

  /** The next operation(s): usually one, a few for the stale-descriptor scenario. */
  next(v: ViewInfo): Op[] {
    const r = this.r;
    const slot = this.openSlot(v);
    const closable = this.openSlot(v);
    const kind = r.weighted([
      [10, 'open'], [closable !== null ? 4 : 0, 'close'], [slot !== null ? 9 : 0, 'read'], [slot !== null ? 8 : 0, 'write'],
      [slot !== null ? 2 : 0, 'ftruncate'], [slot !== null ? 2 : 0, 'fstat'], [slot !== null ? 3 : 0, 'fallocate'],
      [slot !== null ? 3 : 0, 'seek'], [3, 'holes'], [3, 'readFile'], [6, 'writeFile'],
      [4, 'append'], [4, 'truncate'], [6, 'mkdir'], [4, 'rmdir'], [6, 'unlink'], [9, 'rename'], [5, 'rename2'], [4, 'link'], [4, 'symlink'],
      [2, 'mkfifo'], [4, 'chmod'], [3, 'chown'], [3, 'utimes'], [4, 'setxattr'], [3, 'removexattr'], [1, 'getxattr'],
      [2, 'stat'], [3, 'readdir'], [2, 'readdirDuring'], [3, 'staleFd'], [2, 'linkedOpen'], [1, 'linkedFifo'],
    ] as const);
    switch (kind) {
      case 'open': {
        const free = v.slots.flatMap((s, i) => (s === null ? [i] : []));
        return allowed(v, { t: 'open', slot: free.length > 0 ? r.pick(free) : r.int(0, SLOTS - 1), path: r.chance(0.75) ? this.file(v) : this.newPath(v), flags: this.openFlags(), mode: r.pick(NEW_FILE_MODES) });
      }
      case 'close':
        return [{ t: 'close', slot: closable! }];
      case 'read':
        return [{ t: 'read', slot: slot!, pos: r.chance(0.3) ? null : r.int(0, 9000), len: r.pick([1, 100, 4096, 70000]) }];
      case 'write':
        return [{ t: 'write', slot: slot!, pos: r.chance(0.3) ? null : r.weighted([[4, r.int(0, 5000)], [1, r.int(100000, 3000000)]]), data: dataOf(r) }];
      case 'ftruncate':
        return [{ t: 'ftruncate', slot: slot!, size: r.pick([0, 1, 100, 5000, 70000]) }];
      case 'fstat':
        return [{ t: 'fstat', slot: slot! }];
      case 'fallocate':
        return [this.fallocate(this.fileSlot(v) ?? slot!)];
      case 'seek': {
        const s = this.fileSlot(v) ?? slot!;
        // differences.ts dir-seek: not on a directory.
        return v.slots[s] === 'dir' ? [] : [this.seek(s)];
      }
      case 'holes': {
        // A file opened for writing, given holes (a write far out, a punched hole, space
        // kept past its end), then where SEEK_DATA/SEEK_HOLE land, and its data.
        const f = this.existing(v, (t) => t === 'file') ?? this.newPath(v);
        const a = r.int(0, SLOTS - 1);
        const ops: Op[] = [{ t: 'open', slot: a, path: f, flags: r.pick([['RDWR'], ['RDWR', 'CREAT'], ['WRONLY', 'CREAT', 'TRUNC']] as OpenFlag[][]), mode: 0o644 }];
        if (r.chance(0.6)) ops.push({ t: 'write', slot: a, pos: r.pick([0, 4096, 70000, 1 << 20, 3000000]), data: dataOf(r) });
        for (let k = r.int(1, 3); k > 0; k--) ops.push(this.fallocate(a));
        for (let k = r.int(1, 4); k > 0; k--) ops.push(this.seek(a));
        if (r.chance(0.5)) ops.push({ t: 'read', slot: a, pos: null, len: 4096 });
        return ops;
      }
      case 'readFile':
        return allowed(v, { t: 'readFile', path: this.file(v) });
      case 'writeFile':
        return allowed(v, { t: 'writeFile', path: r.chance(0.5) ? this.file(v) : this.newPath(v), data: dataOf(r), mode: r.pick(NEW_FILE_MODES) });
      case 'append':
        return allowed(v, { t: 'append', path: this.file(v), data: dataOf(r) });
      case 'truncate':
        return [{ t: 'truncate', path: this.file(v), size: r.pick([0, 0, 1, 10, 4096, 100000, 3000000]) }];
      case 'mkdir': {
        return [{ t: 'mkdir', path: r.chance(0.85) ? this.newPath(v) : this.anyPath(v), mode: r.pick(NEW_DIR_MODES) }];
      }
      case 'rmdir':
        return allowed(v, { t: 'rmdir', path: this.anyPath(v, (t) => t === 'dir' || r.chance(0.1)) });
      case 'unlink':
        return allowed(v, { t: 'unlink', path: this.anyPath(v, (t) => t !== 'dir' || r.chance(0.1)) });
      case 'rename': {
        const from = this.anyPath(v);
        return allowed(v, { t: 'rename', from, to: this.renameTarget(v, from, 3) });
      }
      case 'rename2': {
        const flag = r.weighted([[4, 'NOREPLACE'], [5, 'EXCHANGE'], [0.3, 'WHITEOUT']] as const);
        const from = this.anyPath(v);
        // An exchange needs two existing names: mostly over one.
        return allowed(v, { t: 'rename2', from, to: this.renameTarget(v, from, flag === 'EXCHANGE' ? 12 : 3), flag });
      }
      case 'link':
        return [{ t: 'link', from: this.anyPath(v, (t) => t !== 'dir' || r.chance(0.1)), to: r.chance(0.85) ? this.newPath(v) : this.anyPath(v) }];
      case 'symlink':
        return [{ t: 'symlink', target: symlinkTarget(r), path: r.chance(0.85) ? this.newPath(v) : this.anyPath(v) }];
      case 'mkfifo':
        return [{ t: 'mkfifo', path: r.chance(0.85) ? this.newPath(v) : this.anyPath(v), mode: r.pick(FIFO_MODES) }];
      case 'chmod':
        return [{ t: 'chmod', path: this.anyPath(v, (t) => t !== 'symlink' || r.chance(0.3)), mode: r.pick([...FILE_MODES, ...DIR_MODES]) }];
      case 'chown': {
        const uid = r.pick([...IDS, -1]);
        const gid = r.pick([...IDS, -1]);
        return [{ t: 'chown', path: this.anyPath(v), uid, gid, follow: r.chance(0.5) }];
      }
      case 'utimes':
        return [{ t: 'utimes', path: this.anyPath(v), atime: this.time(), mtime: this.time(), follow: r.chance(0.4) }];
      case 'setxattr': {
        const name = r.pick(XATTR_NAMES);
        return [{ t: 'setxattr', path: this.anyPath(v), name, value: xattrValue(r, name), flags: r.weighted([[6, 0], [1, 1], [1, 2]] as const) }];
      }
      case 'removexattr':
        return [{ t: 'removexattr', path: this.anyPath(v), name: r.pick(XATTR_NAMES) }];
      case 'getxattr':
        return [{ t: 'getxattr', path: this.anyPath(v), name: r.pick(XATTR_NAMES) }];
      case 'stat':
        return [{ t: 'stat', path: this.anyPath(v) }];
      case 'readdir':
        return [{ t: 'readdir', path: this.anyPath(v, (t) => t === 'dir' || r.chance(0.05)) }];
      case 'readdirDuring': {
        const dir = r.pick(this.dirs(v));
        const inDir = [...v.types.keys()].filter((p) => p.startsWith(dir === '' ? '' : `${dir}/`) && !p.slice(dir.length + 1).includes('/'));
        const victim = inDir.length > 0 ? r.pick(inDir) : null;
        const name = r.pick(NEW_NAMES);
        const fresh = dir === '' ? name : `${dir}/${name}`;
        const inner: Op = r.weighted([
          [3, { t: 'writeFile', path: fresh, data: dataOf(r), mode: 0o644 }],
          [2, { t: 'mkdir', path: fresh, mode: 0o755 }],
          [victim !== null ? 3 : 0, { t: 'unlink', path: victim ?? fresh }],
          [victim !== null ? 3 : 0, { t: 'rename', from: victim ?? fresh, to: fresh }],
          [victim !== null ? 2 : 0, { t: 'rmdir', path: victim ?? fresh }],
        ] as const);
        return allowed(v, inner).length > 0 ? [{ t: 'readdirDuring', path: dir, inner }] : [];
      }
      case 'linkedOpen': {
        // A file with other hard links, open while one of its names goes (unlink, rename
        // over, or its directory renamed); then I/O and fstat through the descriptor, and
        // the other names' link count in the view.
        // differences.ts userns-ino: no fifo made linked here (allowed() sees the view before the link).
        const f = this.existing(v, (t) => t === 'file' || (t === 'fifo' && !fuzzMode().unprivileged));
        if (f === null) return [];
        const a = r.int(0, SLOTS - 1);
        const other = this.newPath(v);
        const ops: Op[] = [];
        if (!hasOtherLinks(v, f)) ops.push({ t: 'link', from: f, to: other });
        const isFifo = v.types.get(f) === 'fifo';
        ops.push({ t: 'open', slot: a, path: f, flags: isFifo ? ['RDONLY'] : r.pick([['RDONLY'], ['RDWR'], ['WRONLY', 'APPEND']] as OpenFlag[][]), mode: 0 });
        const gone = r.weighted([[3, 'unlink'], [2, 'rename-over'], [1, 'rename-away'], [1, 'rmdir-parent']] as const);
        if (gone === 'unlink') ops.push({ t: 'unlink', path: f });
        else if (gone === 'rename-over') ops.push({ t: 'rename', from: this.existing(v, (t) => t !== 'dir') ?? other, to: f });
        else if (gone === 'rename-away') ops.push({ t: 'rename', from: f, to: this.newPath(v) });
        else {
          ops.push({ t: 'unlink', path: f });
          ops.push({ t: 'rmdir', path: f.includes('/') ? f.slice(0, f.lastIndexOf('/')) : f });
        }
        if (!isFifo) ops.push({ t: 'write', slot: a, pos: r.chance(0.5) ? 0 : null, data: dataOf(r) });
        ops.push({ t: 'fstat', slot: a });
        if (!isFifo) ops.push({ t: 'read', slot: a, pos: 0, len: 70000 });
        if (r.chance(0.4)) ops.push({ t: 'close', slot: a });
        return ops.flatMap((op) => allowed(v, op));
      }
      case 'linkedFifo': {
        // A fifo's hard links are one pipe: a reader opened by one name is the reader of a
        // writer opened by another, and data written by one name is read by the other.
        if (fuzzMode().unprivileged) return []; // differences.ts userns-ino
        const f = this.existing(v, (t) => t === 'fifo');
        const name = f ?? this.newPath(v);
        const other = this.newPath(v);
        const a = r.int(0, SLOTS - 1);
        let b = r.int(0, SLOTS - 2);
        if (b >= a) b++;
        const ops: Op[] = [];
        if (f === null) ops.push({ t: 'mkfifo', path: name, mode: 0o644 });
        ops.push({ t: 'link', from: name, to: other });
        ops.push({ t: 'open', slot: a, path: r.chance(0.5) ? name : other, flags: ['RDONLY'], mode: 0 });
        if (r.chance(0.5)) ops.push({ t: 'open', slot: b, path: r.chance(0.5) ? name : other, flags: ['WRONLY'], mode: 0 });
        ops.push({ t: 'writeFile', path: r.chance(0.5) ? name : other, data: { s: -1, n: r.int(1, 3000) }, mode: 0o644 });
        ops.push({ t: 'read', slot: a, pos: null, len: 4096 });
        if (r.chance(0.5)) ops.push({ t: 'fstat', slot: a });
        return ops.flatMap((op) => allowed(v, op));
      }
      case 'staleFd': {
        // A descriptor opened read-only before a copy-up, then the file changes through
        // another descriptor or by path; then read (and fstat) through the old one.
        const f = this.existing(v, (t) => t === 'file');
        if (f === null) return [];
        const a = r.int(0, SLOTS - 1);
        let b = r.int(0, SLOTS - 2);
        if (b >= a) b++;
        const ops: Op[] = [{ t: 'open', slot: a, path: f, flags: ['RDONLY'], mode: 0 }];
        if (r.chance(0.5)) ops.push({ t: 'read', slot: a, pos: 0, len: 100 });
        const change = r.weighted([[4, 'fd'], [2, 'path'], [1, 'truncate'], [1, 'chmod']] as const);
        if (change === 'fd') {
          ops.push({ t: 'open', slot: b, path: f, flags: r.pick([['RDWR'], ['WRONLY'], ['WRONLY', 'APPEND'], ['RDWR', 'TRUNC']] as OpenFlag[][]), mode: 0 });
          ops.push({ t: 'write', slot: b, pos: r.chance(0.5) ? 0 : null, data: dataOf(r) });
        } else if (change === 'path') {
          ops.push({ t: 'writeFile', path: f, data: dataOf(r), mode: 0o644 });
        } else if (change === 'truncate') {
          ops.push({ t: 'truncate', path: f, size: r.pick([0, 3, 5000]) });
        } else {
          ops.push({ t: 'chmod', path: f, mode: 0o600 });
        }
        ops.push({ t: 'read', slot: a, pos: 0, len: 70000 });
        if (r.chance(0.5)) ops.push({ t: 'fstat', slot: a });
        return ops;
      }
    }
  }
}

/** One line per operation, for reports. */
export function describeOp(op: Op): string {
  const q = (p: string) => JSON.stringify(p);
  const d = (x: Data) => `${x.n} bytes`;
  const tm = (x: TimeArg) => (x === 'now' ? 'UTIME_NOW' : x === 'omit' ? 'UTIME_OMIT' : `${x.sec}.${String(x.nsec).padStart(9, '0')}`);
  switch (op.t) {
    case 'open': return `fd${op.slot} = open(${q(op.path)}, ${op.flags.join('|')}${op.flags.includes('CREAT') ? `, 0${op.mode.toString(8)}` : ''})`;
    case 'close': return `close(fd${op.slot})`;
    case 'read': return `read(fd${op.slot}, ${op.len}${op.pos === null ? '' : ` @${op.pos}`})`;
    case 'write': return `write(fd${op.slot}, ${d(op.data)}${op.pos === null ? '' : ` @${op.pos}`})`;
    case 'ftruncate': return `ftruncate(fd${op.slot}, ${op.size})`;
    case 'fstat': return `fstat(fd${op.slot})`;
    case 'fallocate': return `fallocate(fd${op.slot}, ${op.mode === 'ALLOC' ? '0' : op.mode === 'KEEP_SIZE' ? 'KEEP_SIZE' : 'PUNCH_HOLE|KEEP_SIZE'}, ${op.offset}, ${op.len})`;
    case 'seek': return `lseek(fd${op.slot}, ${op.offset}, SEEK_${op.whence})`;
    case 'readFile': return `readFile(${q(op.path)})`;
    case 'writeFile': return `writeFile(${q(op.path)}, ${d(op.data)}, 0${op.mode.toString(8)})`;
    case 'append': return `append(${q(op.path)}, ${d(op.data)})`;
    case 'truncate': return `truncate(${q(op.path)}, ${op.size})`;
    case 'mkdir': return `mkdir(${q(op.path)}, 0${op.mode.toString(8)})`;
    case 'rmdir': return `rmdir(${q(op.path)})`;
    case 'unlink': return `unlink(${q(op.path)})`;
    case 'rename': return `rename(${q(op.from)}, ${q(op.to)})`;
    case 'rename2': return `renameat2(${q(op.from)}, ${q(op.to)}, RENAME_${op.flag})`;
    case 'link': return `link(${q(op.from)}, ${q(op.to)})`;
    case 'symlink': return `symlink(${q(op.target)}, ${q(op.path)})`;
    case 'mkfifo': return `mkfifo(${q(op.path)}, 0${op.mode.toString(8)})`;
    case 'chmod': return `chmod(${q(op.path)}, 0${op.mode.toString(8)})`;
    case 'chown': return `${op.follow ? 'chown' : 'lchown'}(${q(op.path)}, ${op.uid}, ${op.gid})`;
    case 'utimes': return `utimensat(${q(op.path)}, ${tm(op.atime)}, ${tm(op.mtime)}${op.follow ? '' : ', AT_SYMLINK_NOFOLLOW'})`;
    case 'setxattr': return `lsetxattr(${q(op.path)}, ${op.name}, ${op.value.length} bytes, flags=${op.flags})`;
    case 'removexattr': return `lremovexattr(${q(op.path)}, ${op.name})`;
    case 'getxattr': return `lgetxattr(${q(op.path)}, ${op.name})`;
    case 'stat': return `stat(${q(op.path)})`;
    case 'readdir': return `readdir(${q(op.path)})`;
    case 'readdirDuring': return `readdir(${q(op.path)}) around ${describeOp(op.inner)}`;
  }
}
