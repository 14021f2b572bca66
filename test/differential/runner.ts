/**
 * Differential runner: one operation sequence applied to kernel overlayfs and to ts-overlayfs
 * (in a child process, with the cache settings a user gets) over the same lower layers, each
 * with its own upper and work directory. Operations run here, with synchronous calls. After
 * every step the outcome and the whole merged view are compared; at the end the upper layers'
 * encodings and the cross-mounts (each upper under the other implementation). A divergence is
 * shrunk to a short sequence and reported with a command that reproduces it.
 */
import {
  chmodSync, chownSync, closeSync, constants as fsc, fstatSync, ftruncateSync, lchownSync, linkSync, lstatSync, mkdirSync, mkdtempSync, openSync,
  opendirSync, readdirSync, readFileSync, readSync, renameSync, rmdirSync, rmSync, statSync, symlinkSync, truncateSync,
  unlinkSync, writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { lgetxattr, lremovexattr, lsetxattr, mknod } from '../../src/sys/libc';
import { mountKernel, mountTs, type Mounted } from '../helpers/mounts';
import { typeOf } from '../helpers/snapshot';
import {
  AT_SYMLINK_NOFOLLOW, fallocate, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, lseek, renameat2, RENAME_EXCHANGE, RENAME_NOREPLACE,
  RENAME_WHITEOUT, SEEK_DATA, SEEK_HOLE, SEEK_SET, UTIME_NOW, UTIME_OMIT, utimensat, type Ts,
} from '../helpers/syscalls';
import {
  buildLayer, dataBytes, describeOp, generateLayers, OpGenerator, Rng, SLOTS, type FallocateMode, type LayerSpec, type Op, type OpenFlag,
  type RenameFlag, type TimeArg, type ViewInfo,
} from './generate';
import { fuzzMode } from './mode';
import { bytesOf, stringOf, under } from './names';
import { diffUppers, diffViews, fstatSummary, pictureUpper, readAll, sha, statSummary, takeView, type Diff, type View } from './view';

// ---------------------------------------------------------------------------------------------
// Watchdog: a worker thread that kills the ts-overlayfs server if one call blocks too long.
// A blocked synchronous call on a FUSE mount then fails (ENOTCONN) instead of hanging forever.

class HangError extends Error {}

class Watchdog {
  private readonly state = new BigInt64Array(new SharedArrayBuffer(24));
  private worker: Worker | null = null;

  private start(): void {
    if (this.worker) return;
    this.worker = new Worker(
      `const { workerData } = require('node:worker_threads');
       const a = new BigInt64Array(workerData);
       setInterval(() => {
         const deadline = Number(Atomics.load(a, 0));
         const pid = Number(Atomics.load(a, 1));
         if (deadline > 0 && Date.now() > deadline) {
           Atomics.store(a, 0, 0n);
           Atomics.store(a, 2, 1n);
           if (pid > 0) { try { process.kill(pid, 'SIGKILL'); } catch {} }
         }
       }, 200);`,
      { eval: true, workerData: this.state.buffer },
    );
    this.worker.unref();
  }

  /** Runs `fn` (synchronous) with a deadline after which server `pid` is killed. */
  guard<T>(pid: number, ms: number, what: string, fn: () => T): T {
    this.start();
    Atomics.store(this.state, 2, 0n);
    Atomics.store(this.state, 1, BigInt(pid));
    Atomics.store(this.state, 0, BigInt(Date.now() + ms));
    try {
      return fn();
    } finally {
      Atomics.store(this.state, 0, 0n);
      if (Atomics.load(this.state, 2) !== 0n) {
        // eslint-disable-next-line no-unsafe-finally
        throw new HangError(`${what}: no answer within ${ms} ms; the ts-overlayfs server was killed`);
      }
    }
  }

  async stop(): Promise<void> {
    if (this.worker) await this.worker.terminate();
    this.worker = null;
  }
}

// ---------------------------------------------------------------------------------------------
// Sides

type SideName = 'kernel' | 'ts';

interface Side {
  readonly name: SideName;
  /** The mountpoint sits 3 private directories deep: symlinks with `..` stay in them. */
  readonly mnt: string;
  readonly upper: string;
  readonly work: string;
  mounted: Mounted | null;
  pid: number;
  fds: (number | null)[];
  /** Files fallocate gave space without data, as st_dev:st_ino (differences.ts: unwritten-space). */
  unwritten: Set<string>;
}

function makeSide(base: string, name: SideName): Side {
  const root = join(base, name);
  const mnt = join(root, 'p', 'p', 'p', 'mnt');
  const side: Side = { name, mnt, upper: join(root, 'upper'), work: join(root, 'work'), mounted: null, pid: 0, fds: new Array(SLOTS).fill(null), unwritten: new Set() };
  for (const d of [mnt, side.upper, side.work]) mkdirSync(d, { recursive: true });
  return side;
}

/** The pid of the ts-overlayfs server of `mnt` (a child of this process). */
function serverPid(mnt: string): number {
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const argv = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (argv.includes(mnt) && argv.some((a) => a.endsWith('ts-overlayfs'))) return Number(d);
    } catch {
      // gone meanwhile
    }
  }
  return 0;
}

export const TS_EXTRA_OPTIONS: string[] = [];

async function mountSide(side: Side, lowers: string[], upper = side.upper, work = side.work): Promise<void> {
  const dirs = { lowers, upper, work };
  if (side.name === 'kernel') {
    side.mounted = await mountKernel(dirs, side.mnt, [...fuzzMode().kernelOptions]);
  } else {
    side.mounted = await mountTs(dirs, side.mnt, TS_EXTRA_OPTIONS);
    side.pid = serverPid(side.mnt);
  }
}

async function unmountSide(side: Side): Promise<void> {
  for (let i = 0; i < side.fds.length; i++) {
    const fd = side.fds[i];
    if (fd !== null) {
      try { closeSync(fd); } catch { /* the mount may be gone */ }
      side.fds[i] = null;
    }
  }
  if (side.mounted) {
    const m = side.mounted;
    side.mounted = null;
    await m.unmount();
  }
  side.pid = 0;
}

// ---------------------------------------------------------------------------------------------
// Executing operations

const FLAG_BITS: Record<OpenFlag, number> = {
  RDONLY: fsc.O_RDONLY, WRONLY: fsc.O_WRONLY, RDWR: fsc.O_RDWR, CREAT: fsc.O_CREAT, EXCL: fsc.O_EXCL, TRUNC: fsc.O_TRUNC, APPEND: fsc.O_APPEND,
};
const S_IFIFO = 0o010000;
const READ_BUF = Buffer.alloc(1 << 20);
const RENAME_FLAGS: Record<RenameFlag, number> = { NOREPLACE: RENAME_NOREPLACE, EXCHANGE: RENAME_EXCHANGE, WHITEOUT: RENAME_WHITEOUT };
const FALLOCATE_MODES: Record<FallocateMode, number> = { ALLOC: 0, KEEP_SIZE: FALLOC_FL_KEEP_SIZE, PUNCH_HOLE: FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE };

function timeArg(t: TimeArg): Ts {
  return t === 'now' ? { sec: 0, nsec: UTIME_NOW } : t === 'omit' ? { sec: 0, nsec: UTIME_OMIT } : t;
}

function codeOf(err: unknown): string {
  if (err instanceof HangError) throw err;
  const code = (err as { code?: unknown })?.code;
  return typeof code === 'string' ? code : `THROW ${String(err)}`;
}

function attempt(run: () => string | void): string {
  try {
    const r = run();
    return r === undefined ? 'ok' : `ok ${r}`;
  } catch (err) {
    return codeOf(err);
  }
}

function names(dir: Buffer): string[] {
  return readdirSync(dir, { encoding: 'buffer' }).map(stringOf).sort();
}

/** POSIX's rule for readdir around a change (differences.ts: readdir-during-change). */
function readdirRule(before: string[], after: string[], seen: string[]): string {
  const b = new Set(before);
  const a = new Set(after);
  const problems: string[] = [];
  const s = new Set<string>();
  for (const n of seen) {
    if (s.has(n)) problems.push(`duplicate ${JSON.stringify(n)}`);
    s.add(n);
    if (!b.has(n) && !a.has(n)) problems.push(`unknown ${JSON.stringify(n)}`);
  }
  for (const n of before) if (a.has(n) && !s.has(n)) problems.push(`missing ${JSON.stringify(n)}`);
  return problems.length === 0 ? 'listing-ok' : problems.join(', ');
}

function fileIdentity(fd: number): string {
  const st = fstatSync(fd);
  return `${st.dev}:${st.ino}`;
}

function execOp(side: Side, op: Op): string {
  const at = (p: string) => under(side.mnt, p);
  const fdOf = (slot: number): number => {
    const fd = side.fds[slot];
    if (fd === null) throw Object.assign(new Error('no descriptor in slot'), { code: 'EBADF' });
    return fd;
  };
  switch (op.t) {
    case 'open': {
      const old = side.fds[op.slot];
      if (old !== null) {
        side.fds[op.slot] = null;
        try { closeSync(old); } catch { /* reported by close ops only */ }
      }
      const flags = op.flags.reduce((f, n) => f | FLAG_BITS[n], fsc.O_NONBLOCK);
      return attempt(() => {
        const fd = openSync(at(op.path), flags, op.mode);
        side.fds[op.slot] = fd;
        return fstatSummary(fd);
      });
    }
    case 'close':
      return attempt(() => {
        const fd = fdOf(op.slot);
        side.fds[op.slot] = null;
        closeSync(fd);
      });
    case 'read':
      return attempt(() => {
        const n = readSync(fdOf(op.slot), READ_BUF, 0, op.len, op.pos);
        return `${n} ${sha(READ_BUF.subarray(0, n))}`;
      });
    case 'write':
      return attempt(() => {
        const buf = dataBytes(op.data.s, op.data.n);
        return String(writeSync(fdOf(op.slot), buf, 0, buf.length, op.pos));
      });
    case 'ftruncate':
      return attempt(() => ftruncateSync(fdOf(op.slot), op.size));
    case 'fstat':
      return attempt(() => fstatSummary(fdOf(op.slot)));
    case 'fallocate':
      return attempt(() => {
        const fd = fdOf(op.slot);
        fallocate(fd, FALLOCATE_MODES[op.mode], op.offset, op.len);
        if (op.mode !== 'PUNCH_HOLE') side.unwritten.add(fileIdentity(fd));
      });
    case 'seek':
      return attempt(() => {
        const fd = fdOf(op.slot);
        const found = lseek(fd, op.offset, op.whence === 'DATA' ? SEEK_DATA : SEEK_HOLE);
        if (!side.unwritten.has(fileIdentity(fd))) return String(found);
        // Where it landed is uncertain: what later reads at the descriptor's offset see must not be.
        lseek(fd, op.offset, SEEK_SET);
        return 'somewhere (the file has unwritten space)';
      });
    case 'readFile':
      return attempt(() => readAll(at(op.path)).join(' '));
    case 'writeFile':
    case 'append':
      return attempt(() => {
        const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_NONBLOCK | (op.t === 'append' ? fsc.O_APPEND : fsc.O_TRUNC);
        const fd = openSync(at(op.path), flags, op.t === 'writeFile' ? op.mode : 0o644);
        try {
          const buf = dataBytes(op.data.s, op.data.n);
          return String(writeSync(fd, buf, 0, buf.length, null));
        } finally {
          closeSync(fd);
        }
      });
    case 'truncate':
      return attempt(() => truncateSync(at(op.path), op.size));
    case 'mkdir':
      return attempt(() => mkdirSync(at(op.path), op.mode));
    case 'rmdir':
      return attempt(() => rmdirSync(at(op.path)));
    case 'unlink':
      return attempt(() => unlinkSync(at(op.path)));
    case 'rename':
      return attempt(() => renameSync(at(op.from), at(op.to)));
    case 'rename2':
      return attempt(() => renameat2(at(op.from), at(op.to), RENAME_FLAGS[op.flag]));
    case 'link':
      return attempt(() => linkSync(at(op.from), at(op.to)));
    case 'symlink':
      return attempt(() => symlinkSync(bytesOf(op.target), at(op.path)));
    case 'mkfifo':
      return attempt(() => mknod(at(op.path), S_IFIFO | op.mode, 0));
    case 'chmod':
      return attempt(() => chmodSync(at(op.path), op.mode));
    case 'chown':
      return attempt(() => (op.follow ? chownSync : lchownSync)(at(op.path), op.uid, op.gid));
    case 'utimes':
      return attempt(() => utimensat(at(op.path), timeArg(op.atime), timeArg(op.mtime), op.follow ? 0 : AT_SYMLINK_NOFOLLOW));
    case 'setxattr':
      return attempt(() => lsetxattr(at(op.path), op.name, Buffer.from(op.value), op.flags));
    case 'removexattr':
      return attempt(() => lremovexattr(at(op.path), op.name));
    case 'getxattr':
      return attempt(() => lgetxattr(at(op.path), op.name).toString('base64'));
    case 'stat':
      return attempt(() => statSummary(statSync(at(op.path), { bigint: true })));
    case 'readdir':
      return attempt(() => JSON.stringify(names(at(op.path))));
    case 'readdirDuring': {
      const p = at(op.path);
      let before: string[];
      let dir;
      try {
        before = names(p);
        // Node's types lack it, but a Dir takes encoding 'buffer' (then each name is a Buffer).
        dir = opendirSync(p, { bufferSize: 1, encoding: 'buffer' as BufferEncoding });
      } catch (err) {
        return codeOf(err);
      }
      const seen: string[] = [];
      let inner: string;
      try {
        const first = dir.readSync();
        // With encoding 'buffer', a Dirent's name is a Buffer.
        if (first) seen.push(stringOf(first.name as unknown as Buffer));
        inner = execOp(side, op.inner);
        for (let e = dir.readSync(); e; e = dir.readSync()) seen.push(stringOf(e.name as unknown as Buffer));
      } catch (err) {
        return `listing ${codeOf(err)}`;
      } finally {
        dir.closeSync();
      }
      return `${inner}; ${readdirRule(before, names(p), seen)}`;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Runs

export type Stage = 'result' | 'view' | 'close' | 'upper' | 'cross-kernel-reads-ts' | 'cross-ts-reads-kernel' | 'hang' | 'harness';

export interface Divergence {
  stage: Stage;
  /** Index of the operation after which it showed; ops.length for the end-of-run stages. */
  step: number;
  /** What the bug looks like, to tell whether a shrunk sequence still shows the same one. */
  signature: string;
  detail: string;
}

export interface RunResult {
  /** The operations run (generated ones included). */
  ops: Op[];
  divergence: Divergence | null;
}

export interface RunOptions {
  /** Replay these operations, or generate `generate` of them from the seed. */
  ops: Op[] | { generate: number };
  /** Run only the kernel (to turn a seed into its operation list). */
  kernelOnly?: boolean;
  /** Skip the end-of-run stages (upper encoding, cross-mounts). */
  skipFinal?: boolean;
  /** Called with each step as it runs (verbose mode). */
  onStep?: (index: number, op: Op, kernel: string, ts: string) => void;
  /** Report per-step divergences through onStep/onDiverge but go on (diagnosis). */
  keepGoing?: boolean;
  onDiverge?: (d: Divergence) => void;
  /** A single call slower than this kills the ts-overlayfs server (ms). */
  callTimeoutMs?: number;
}

const MAX_DIFFS_SHOWN = 12;
const FULL_VIEW_EVERY = 10;

function formatDiffs(diffs: Diff[]): string {
  const lines = diffs.slice(0, MAX_DIFFS_SHOWN).map((d) => `    ${d.path}: ${d.field}: kernel ${JSON.stringify(d.kernel)}, ts ${JSON.stringify(d.ts)}`);
  if (diffs.length > MAX_DIFFS_SHOWN) lines.push(`    ... and ${diffs.length - MAX_DIFFS_SHOWN} more`);
  return lines.join('\n');
}

function diffSignature(stage: Stage, diffs: Diff[]): string {
  return `${stage}:${[...new Set(diffs.map((d) => d.field))].sort().join(',')}`;
}

/** The same bug: same stage, and the same operation and outcomes or a common differing field. */
export function sameBug(a: Divergence, b: Divergence): boolean {
  if (a.stage !== b.stage) return false;
  if (a.stage === 'result' || a.stage === 'hang' || a.stage === 'close') return a.signature === b.signature;
  const fields = (s: string) => new Set(s.slice(s.indexOf(':') + 1).split(','));
  const fb = fields(b.signature);
  return [...fields(a.signature)].some((f) => fb.has(f));
}

function firstToken(outcome: string): string {
  return outcome.split(/[ ;]/)[0];
}

function viewInfo(view: View, lowerPaths: string[], lowerWhiteouts: ReadonlySet<string>, fds: readonly (number | null)[], mnt: string): ViewInfo {
  const nlinks = new Map<string, number>();
  const types = new Map<string, string>();
  const sizes = new Map<string, number>();
  const modes = new Map<string, number>();
  for (const [p, e] of view.entries) {
    modes.set(p === '.' ? '' : p, parseInt(e.mode, 8));
    if (p === '.') continue;
    types.set(p, e.type);
    if (e.type === 'file') sizes.set(p, e.size);
    if (e.type !== 'dir') nlinks.set(p, e.nlink);
  }
  const opensLinkedFifo = (path: string): boolean => {
    try {
      const st = statSync(under(mnt, path));
      return (st.mode & 0o170000) === S_IFIFO && st.nlink > 1;
    } catch {
      return false;
    }
  };
  return { types, sizes, modes, lowerPaths, lowerWhiteouts, nlinks, slots: fds.map((fd) => (fd === null ? null : typeOf(Number(fstatSync(fd).mode)))), opensLinkedFifo };
}

/** The inode numbers of every entry of the lower layers (all on one filesystem). */
function inodesOf(dirs: readonly string[]): Set<bigint> {
  const out = new Set<bigint>();
  const walk = (p: Buffer) => {
    const st = lstatSync(p, { bigint: true });
    out.add(st.ino);
    if ((Number(st.mode) & 0o170000) === 0o040000) {
      for (const n of readdirSync(p, { encoding: 'buffer' })) walk(Buffer.concat([p, Buffer.from('/'), n]));
    }
  };
  for (const d of dirs) walk(Buffer.from(d));
  return out;
}

/**
 * One seed's lower layers on disk, and runs of operation sequences over them. The lowers are
 * built once and shared read-only by every mount; each run gets fresh uppers.
 */
export class Fuzzer {
  readonly dir: string;
  readonly layers: LayerSpec[];
  readonly lowerDirs: string[];
  private readonly lowerPaths: string[];
  private readonly lowerWhiteouts: Set<string>;
  /** st_ino of every lower entry: a view shows which one an entry keeps (view.ts ViewEntry.ino). */
  private readonly lowerInos: Set<bigint>;
  private readonly watchdog = new Watchdog();
  private runs = 0;

  readonly lowers?: number;

  /** Lower layers from the seed (`lowers` of them, or 1 to 5), or the given ones. */
  constructor(readonly seed: number, opts: { lowers?: number; layers?: LayerSpec[]; baseDir?: string } = {}) {
    this.lowers = opts.lowers;
    this.dir = mkdtempIn(opts.baseDir ?? tmpdir(), `tsovl-fuzz-${seed}-`);
    fuzzerDirs.add(this.dir);
    this.layers = opts.layers ?? generateLayers(seed, opts.lowers);
    this.lowerDirs = this.layers.map((spec, i) => {
      const d = join(this.dir, `lower${i}`);
      buildLayer(d, spec);
      return d;
    });
    this.lowerPaths = [...new Set(this.layers.flatMap((l) => l.map(([p]) => p)))].sort();
    this.lowerWhiteouts = new Set(this.layers.flatMap((l) => l.filter(([, e]) => e.kind === 'whiteout').map(([p]) => p)));
    this.lowerInos = inodesOf(this.lowerDirs);
  }

  /** The operation list seed `seed` generates (the kernel alone decides each next step's view). */
  async materialize(count: number): Promise<Op[]> {
    return (await this.run({ ops: { generate: count }, kernelOnly: true, skipFinal: true })).ops;
  }

  async run(opts: RunOptions): Promise<RunResult> {
    const base = join(this.dir, `run${this.runs++}`);
    const kernel = makeSide(base, 'kernel');
    const ts = opts.kernelOnly ? null : makeSide(base, 'ts');
    const sides = ts ? [kernel, ts] : [kernel];
    const timeout = opts.callTimeoutMs ?? 20000;
    const ops: Op[] = [];
    const gen = Array.isArray(opts.ops) ? null : new OpGenerator(new Rng(this.seed).fork(2));
    const total = Array.isArray(opts.ops) ? opts.ops.length : opts.ops.generate;
    const queue: Op[] = Array.isArray(opts.ops) ? [...opts.ops] : [];
    // differences.ts userns-ino: the kernel's st_ino of a copied-up file is not stable there.
    const lowerInos = fuzzMode().unprivileged ? undefined : this.lowerInos;
    const guard = <T>(side: Side, what: string, fn: () => T): T => this.watchdog.guard(side.pid, timeout, what, fn);
    let divergence: Divergence | null = null;
    const hang = (step: number, err: unknown): Divergence => ({ stage: 'hang', step, signature: 'hang', detail: String((err as Error).message) });
    try {
      for (const s of sides) await mountSide(s, this.lowerDirs);
      let kView = takeView(kernel.mnt, { lowerInos });
      let tView: View | undefined;
      if (ts) {
        tView = guard(ts, 'initial view', () => takeView(ts.mnt, { lowerInos }));
        const d = diffViews(kView, tView);
        if (d.length > 0) {
          divergence = { stage: 'view', step: -1, signature: diffSignature('view', d), detail: `  before any operation:\n${formatDiffs(d)}` };
          if (!opts.keepGoing) return { ops, divergence };
          opts.onDiverge?.(divergence);
        }
      }
      while (ops.length < total) {
        if (queue.length === 0 && gen) queue.push(...gen.next(viewInfo(kView, this.lowerPaths, this.lowerWhiteouts, kernel.fds, kernel.mnt)));
        const op = queue.shift();
        if (!op) continue;
        const i = ops.length;
        ops.push(op);
        const kOut = execOp(kernel, op);
        let tOut = '';
        if (ts) {
          try {
            tOut = guard(ts, describeOp(op), () => execOp(ts, op));
          } catch (err) {
            if (err instanceof HangError) return { ops, divergence: hang(i, err) };
            throw err;
          }
        }
        opts.onStep?.(i, op, kOut, tOut);
        if (ts && kOut !== tOut) {
          const d: Divergence = {
            stage: 'result', step: i, signature: `result:${op.t}:${firstToken(kOut)}/${firstToken(tOut)}`,
            detail: `  ${describeOp(op)}\n    kernel: ${kOut}\n    ts:     ${tOut}`,
          };
          if (!opts.keepGoing) return { ops, divergence: d };
          divergence ??= d;
          opts.onDiverge?.(d);
        }
        // Every FULL_VIEW_EVERY steps all data and xattrs are read again, stamps or not.
        const full = (i + 1) % FULL_VIEW_EVERY === 0;
        const kBefore = kView;
        kView = takeView(kernel.mnt, { since: full ? undefined : kBefore, lowerInos });
        const kernelUnchanged = (p: string) => kBefore.stamps?.get(p) === kView.stamps?.get(p);
        if (ts) {
          try {
            tView = guard(ts, 'view', () => takeView(ts.mnt, { since: full ? undefined : tView, alsoUnchanged: kernelUnchanged, lowerInos }));
          } catch (err) {
            if (err instanceof HangError) return { ops, divergence: hang(i, err) };
            return { ops, divergence: { stage: 'view', step: i, signature: 'view:unreadable', detail: `    ts view: ${codeOf(err)} ${String(err)}` } };
          }
          const d = diffViews(kView, tView);
          if (d.length > 0) {
            const dv: Divergence = { stage: 'view', step: i, signature: diffSignature('view', d), detail: `  after ${describeOp(op)}\n${formatDiffs(d)}` };
            if (!opts.keepGoing) return { ops, divergence: dv };
            divergence ??= dv;
            opts.onDiverge?.(dv);
          }
        }
      }
      if (!ts || opts.skipFinal || divergence) return { ops, divergence };

      // The end: close descriptors, unmount, compare the uppers and the cross-mounts. The final
      // views leave out which lower st_ino an entry keeps: neither implementation reads the
      // other's record of it (differences.ts inode-numbers).
      const step = ops.length;
      for (let slot = 0; slot < SLOTS; slot++) {
        const k = kernel.fds[slot] === null ? 'none' : execOp(kernel, { t: 'close', slot });
        const t = ts.fds[slot] === null ? 'none' : guard(ts, 'close', () => execOp(ts, { t: 'close', slot }));
        if (k !== t) return { ops, divergence: { stage: 'close', step, signature: `close:${k}/${t}`, detail: `    close(fd${slot}): kernel ${k}, ts ${t}` } };
      }
      const kFinal = takeView(kernel.mnt, { exactTimes: true });
      const tFinal = guard(ts, 'final view', () => takeView(ts.mnt, { exactTimes: true }));
      await unmountSide(ts);
      await unmountSide(kernel);
      const du = diffUppers(pictureUpper(kernel.upper), pictureUpper(ts.upper));
      if (du.length > 0) return { ops, divergence: { stage: 'upper', step, signature: diffSignature('upper', du), detail: formatDiffs(du) } };

      const crosses: [Stage, SideName, string, View][] = [
        ['cross-kernel-reads-ts', 'kernel', ts.upper, tFinal],
        ['cross-ts-reads-kernel', 'ts', kernel.upper, kFinal],
      ];
      for (const [stage, reader, upper, expected] of crosses) {
        const side = makeSide(join(base, stage), reader);
        sides.push(side);
        await mountSide(side, this.lowerDirs, upper, side.work);
        const seen = guard(side, stage, () => takeView(side.mnt, { exactTimes: true }));
        await unmountSide(side);
        // `kernel` and `ts` in these diffs: the writer's own view, then the reader's.
        const d = diffViews(expected, seen);
        if (d.length > 0) {
          return { ops, divergence: { stage, step, signature: diffSignature(stage, d), detail: `  (kernel = the writer's own final view, ts = the other reader's)\n${formatDiffs(d)}` } };
        }
      }
      return { ops, divergence: null };
    } catch (err) {
      if (err instanceof HangError) return { ops, divergence: hang(ops.length - 1, err) };
      return { ops, divergence: { stage: 'harness', step: ops.length - 1, signature: 'harness', detail: String((err as Error)?.stack ?? err) } };
    } finally {
      for (const s of sides) {
        try {
          await unmountSide(s);
        } catch {
          // reported by the leftover check
        }
      }
      rmSync(base, { recursive: true, force: true });
    }
  }

  /**
   * Shrinks a failing sequence: the shortest failing prefix, then dropping chunks and single
   * operations while the same bug still shows. Returns the kept indices into `ops`.
   */
  async shrink(ops: Op[], bug: Divergence, budgetMs = 300000, log?: (line: string) => void): Promise<{ keep: number[]; divergence: Divergence }> {
    const deadline = Date.now() + budgetMs;
    let best = { keep: ops.map((_, i) => i), divergence: bug };
    const tries = async (keep: number[]): Promise<Divergence | null> => {
      const r = await this.run({ ops: keep.map((i) => ops[i]), skipFinal: bug.step < ops.length });
      return r.divergence && sameBug(bug, r.divergence) ? r.divergence : null;
    };
    // Shortest prefix: for a per-step divergence, the prefix up to it; else binary search.
    if (bug.step >= 0 && bug.step < ops.length) {
      best.keep = best.keep.slice(0, bug.step + 1);
    } else {
      let lo = 0;
      let hi = ops.length;
      while (lo < hi && Date.now() < deadline) {
        const mid = Math.floor((lo + hi) / 2);
        const d = await tries(best.keep.slice(0, mid));
        if (d) {
          hi = mid;
          best = { keep: best.keep.slice(0, mid), divergence: d };
        } else {
          lo = mid + 1;
        }
      }
    }
    log?.(`  shrink: prefix of ${best.keep.length} operations`);
    // Drop chunks, halving their size down to single operations.
    for (let size = Math.max(1, Math.floor(best.keep.length / 2)); size >= 1 && Date.now() < deadline; size = Math.floor(size / 2)) {
      for (let start = best.keep.length - size; start >= 0 && Date.now() < deadline; start -= size) {
        const keep = [...best.keep.slice(0, start), ...best.keep.slice(start + size)];
        if (keep.length === 0) continue;
        const d = await tries(keep);
        if (d) best = { keep, divergence: d };
      }
      if (size === 1) break;
    }
    log?.(`  shrink: ${best.keep.length} operations${Date.now() >= deadline ? ' (budget used up)' : ''}`);
    return best;
  }

  async dispose(): Promise<void> {
    await this.watchdog.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function mkdtempIn(base: string, prefix: string): string {
  mkdirSync(base, { recursive: true });
  return mkdtempSync(join(base, prefix));
}

/** Directories of the Fuzzers this process made. */
const fuzzerDirs = new Set<string>();

/** Mounts this process's fuzzers made that are still present (should be none). */
export function leftoverMounts(): string[] {
  return readFileSync('/proc/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1] ?? '')
    .filter((mnt) => [...fuzzerDirs].some((d) => mnt.startsWith(`${d}/`)));
}

// ---------------------------------------------------------------------------------------------
// Reports

export interface Report {
  seed: number;
  lowers?: number;
  /** Operations generated for the seed (the --ops of the reproduction). */
  generated: number;
  ops: Op[];
  keep: number[];
  divergence: Divergence;
}

export function reproCommand(r: Report): string {
  const lowers = `${r.lowers !== undefined ? ` --lowers ${r.lowers}` : ''}${fuzzMode().unprivileged ? ' --unprivileged' : ''}`;
  if (r.generated === 0) return `scripts/fuzz --replay FILE (seed ${r.seed}${lowers}, a hand-written sequence)`;
  if (r.keep.length === 0) return `scripts/fuzz --seed ${r.seed} --ops 0${lowers}`;
  const keep = r.keep.length === r.generated && r.keep.every((k, i) => k === i) ? '' : ` --keep ${r.keep.join(',')}`;
  return `scripts/fuzz --seed ${r.seed} --ops ${r.generated}${lowers}${keep}`;
}

export function formatReport(r: Report): string {
  const lines = [
    `DIVERGENCE seed=${r.seed}${r.lowers !== undefined ? ` lowers=${r.lowers}` : ''}: ${r.divergence.signature}` +
      ` (${r.divergence.stage}${r.divergence.step >= 0 && r.divergence.step < r.keep.length ? ` at operation ${r.divergence.step}` : ''})`,
    r.divergence.detail,
    `  sequence (${r.keep.length} operations; [n] = index in the seed's sequence):`,
    ...r.keep.map((k, i) => `    ${String(i).padStart(3)} [${k}] ${describeOp(r.ops[k])}`),
    `  reproduce: ${reproCommand(r)}`,
  ];
  return lines.join('\n');
}
