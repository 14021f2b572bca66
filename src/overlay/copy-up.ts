/**
 * Copy-up: before the first change to an entry that lives only in a lower layer, a copy of it
 * (data, mode, owner, times, xattrs) is built in the work directory and renamed into the
 * upper layer in one step; its parent directories are copied up first, the same way.
 * A file keeps its st_ino (recorded on the copy, so it keeps it across mounts too).
 * Concurrent first writers share one copy-up.
 *
 * A copy-up that moves no data and syncs nothing (a directory, a symlink, a device, a file
 * about to be truncated with `volatile`) is done at once; copying data or syncing it is
 * asynchronous, so other requests are served meanwhile.
 */
import { closeSync, ftruncateSync, lchownSync, chmodSync, mkdirSync, openSync, readlinkSync, rmSync, symlinkSync } from 'node:fs';
import { read as fsRead, write as fsWrite, fsync as fsFsync, constants as fsc } from 'node:fs';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { errorFor, hasCode } from '../errors';
import { log } from '../log';
import { copyFileRange, dup2, lgetxattr, llistxattr, lsetxattr, lutimens, mknod, nextDataExtent, reflink, renameat2, RENAME_NOREPLACE, type Timespec } from '../sys/libc';
import { lstatx, type Stat } from '../sys/stat';
import { isPrivateXattr } from './format';
import { originInoXattr } from './inodes';
import { layerPath, type Layer } from './layer';
import type { IdMap } from './idmap';
import type { OvlNode } from './node';
import type { StatOverrides } from './stat-override';
import type { OverlayTree } from './tree';
import type { Workdir } from './workdir';

export interface UpperContext {
  readonly tree: OverlayTree;
  readonly upper: Layer;
  readonly work: Workdir;
  /** fsync copied data before it is renamed into place (off with `volatile`). */
  readonly fsync: boolean;
  /** Owners and modes kept in xattrs (xattr_permissions, containers/storage layers). */
  readonly overrides: StatOverrides;
  /** uidmapping/gidmapping: a copy from a lower on an id-mapped mount stores its ids mapped back. */
  readonly ids: IdMap;
  /** Where the overlay's own xattrs go: `trusted`, or `user` (userxattr). */
  readonly xattrNamespace: 'trusted' | 'user';
}

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
/** The read/write buffer, where the kernel cannot copy. */
const COPY_CHUNK = 1 << 20;
/**
 * Bytes per copy_file_range call. koffi calls are synchronous, so each blocks every other
 * request; 4 MiB takes a few milliseconds from the page cache.
 */
const RANGE_CHUNK = 4 << 20;

export interface CopyUpOptions {
  /** Copy the file data; false where it is about to be truncated to nothing anyway. */
  readonly data: boolean;
}

/**
 * Makes `node` live in the upper layer (nothing to do if it does): at once, or with a promise
 * where data is copied or synced. It keeps its st_ino, except a file with other hard links
 * below, whose copy is a different file from then on.
 */
export function copyUp(ctx: UpperContext, node: OvlNode, opts: CopyUpOptions = { data: true }): void | Promise<void> {
  if (node.layer.upper) return;
  // As the kernel's overlay, which copies up to the name: a whiteout stands there now, or
  // nothing is left to put it in.
  if (!node.attached) throw errorFor(node.parent?.attached ? 'EEXIST' : 'ENOENT', node.path);
  if (node.copyUp) return node.copyUp.then(() => copyUp(ctx, node, opts));
  if (node.isDir || (node.type & S_IFMT) !== S_IFREG || (!opts.data && !ctx.fsync)) {
    copyUpSync(ctx, node);
    return;
  }
  const running = copyUpFile(ctx, node, opts).finally(() => { node.copyUp = undefined; });
  node.copyUp = running;
  return running;
}

/** Makes a directory and its ancestors live in the upper layer; synchronous, so atomic here. */
export function copyUpDirChain(ctx: UpperContext, dir: OvlNode): void {
  if (!dir.layer.upper) copyUpSync(ctx, dir);
}

/** A copy-up without data (a regular file only where its data is not wanted). */
function copyUpSync(ctx: UpperContext, node: OvlNode): void {
  copyUpDirChain(ctx, node.parent!);
  const src = node.realPath;
  const st = lstatx(src);
  const tmp = ctx.work.temp();
  const type = st.mode & S_IFMT;
  if (node.isDir) mkdirSync(tmp, { mode: 0o700 });
  else if (type === S_IFLNK) symlinkSync(readlinkSync(src, { encoding: 'buffer' }), tmp);
  else if (type === S_IFREG) closeSync(openSync(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600));
  else mknod(tmp, st.mode, glibcDev(st.rdevMajor, st.rdevMinor));
  try {
    copyAttributes(ctx, node.layer, src, tmp, st);
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  moveIntoUpper(ctx, node, tmp, st);
}

async function copyUpFile(ctx: UpperContext, node: OvlNode, opts: CopyUpOptions): Promise<void> {
  const src = node.realPath;
  const st = lstatx(src);
  const tmp = ctx.work.temp();
  const out = openSync(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
  try {
    try {
      if (opts.data) await copyData(src, out, st.size);
      // In the thread pool: flushing a large copy takes long enough to stall every other request.
      if (ctx.fsync) await ioFsync(out);
    } finally {
      closeSync(out);
    }
    copyAttributes(ctx, node.layer, src, tmp, st);
    // The entry may have been removed or renamed while its data was being copied.
    if (!node.attached) throw errorFor('ENOENT', node.path);
    if (node.layer.upper) throw errorFor('EEXIST', node.path);
    copyUpDirChain(ctx, node.parent!);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
  moveIntoUpper(ctx, node, tmp, st);
}

/** glibc's dev_t for a device number, as mknod takes it. */
export function glibcDev(major: number, minor: number): number {
  return (major & 0xfff) * 256 + (minor & 0xff) + (minor & ~0xff) * 4096 + Math.floor(major / 4096) * 2 ** 44;
}

/**
 * Copies file data, keeping holes: by reflink where the filesystem shares extents, else each
 * data extent by copy_file_range, or by read and write where the kernel cannot copy.
 */
async function copyData(src: Buffer, out: number, size: number): Promise<void> {
  const input = openSync(src, fsc.O_RDONLY | fsc.O_NOFOLLOW);
  try {
    if (reflink(out, input)) return;
    const mover: DataMover = { inKernel: true, bufferSize: Math.min(COPY_CHUNK, Math.max(size, 1)) };
    let pos = 0;
    for (let extent = nextDataExtent(input, 0); extent !== null && extent[0] < size; extent = nextDataExtent(input, pos)) {
      pos = await copyRange(mover, input, out, extent[0], Math.min(extent[1], size));
      if (pos >= size) break;
    }
  } finally {
    closeSync(input);
  }
  // A hole at the end is kept by the size alone.
  ftruncateSync(out, size);
}

/** How one copy-up moves data: in the kernel until it refuses, then through a buffer. */
interface DataMover {
  inKernel: boolean;
  readonly bufferSize: number;
  buffer?: Buffer;
}

/** copy_file_range's answers for "not between these two files", as opposed to a failed copy. */
function cannotCopyInKernel(err: unknown): boolean {
  return hasCode(err, 'EXDEV', 'EOPNOTSUPP', 'ENOSYS', 'EINVAL');
}

/** Copies [pos, end) at the same offsets; returns where it stopped (before `end` only at end of file). */
async function copyRange(mover: DataMover, input: number, out: number, pos: number, end: number): Promise<number> {
  while (pos < end) {
    let n: number;
    if (mover.inKernel) {
      try {
        n = copyFileRange(input, pos, out, pos, Math.min(RANGE_CHUNK, end - pos));
      } catch (err) {
        if (!cannotCopyInKernel(err)) throw err;
        mover.inKernel = false;
        continue;
      }
      // That call ran on the event loop: let other requests in before the next one.
      await yieldToEventLoop();
    } else {
      mover.buffer ??= Buffer.allocUnsafe(mover.bufferSize);
      n = await ioRead(input, mover.buffer, Math.min(mover.buffer.length, end - pos), pos);
      if (n > 0) await ioWriteAll(out, mover.buffer, n, pos);
    }
    if (n === 0) break;
    pos += n;
  }
  return pos;
}

function ioFsync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fsFsync(fd, (err) => (err ? reject(err) : resolve())));
}

function ioRead(fd: number, buf: Buffer, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => fsRead(fd, buf, 0, length, position, (err, n) => (err ? reject(err) : resolve(n))));
}

async function ioWriteAll(fd: number, buf: Buffer, length: number, position: number): Promise<void> {
  for (let done = 0; done < length;) {
    const n = await new Promise<number>((resolve, reject) =>
      fsWrite(fd, buf, done, length - done, position + done, (err, w) => (err ? reject(err) : resolve(w))));
    done += n;
  }
}

function timespec(sec: number, nsec: number): Timespec {
  return { sec, nsec };
}

/**
 * Owner first: chown drops security.capability and the set-id bits. Then mode (set-id bits
 * included), then xattrs (but the overlay's own), then times, which every other change touches.
 * Owner and mode are the ones shown: a lower layer's override is applied for real, or
 * recorded in the upper's own override (xattr_permissions), as fuse-overlayfs copies up.
 * Ids read through an id-mapped mount are shown ones: the copy gets them mapped back.
 */
function copyAttributes(ctx: UpperContext, layer: Layer, src: Buffer, dst: string, st: Stat): void {
  const mode = st.mode;
  const isLink = (mode & S_IFMT) === S_IFLNK;
  const uid = st.uid;
  const gid = st.gid;
  const attrs = ctx.overrides.override(layer, src, mode)
    ?? (layer.idmapped ? { uid: ctx.ids.storedUid(uid), gid: ctx.ids.storedGid(gid), mode } : { uid, gid, mode });
  if (!ctx.overrides.record(dst, attrs)) {
    lchownSync(dst, attrs.uid, attrs.gid);
    if (!isLink) chmodSync(dst, attrs.mode & 0o7777);
  }
  for (const name of llistxattr(src)) {
    if (isPrivateXattr(name)) continue;
    try {
      lsetxattr(dst, name, lgetxattr(src, name));
    } catch (err) {
      // user.* xattrs cannot exist on symlinks of most filesystems: nothing to lose there.
      if (!(isLink && hasCode(err, 'EPERM', 'ENOTSUP'))) throw err;
    }
  }
  lutimens(dst, timespec(st.atime, st.atimeNsec), timespec(st.mtime, st.mtimeNsec));
}

/** The one rename that makes a copy visible; the parent's times stay as they were. */
function moveIntoUpper(ctx: UpperContext, node: OvlNode, tmp: string, lower: Stat): void {
  const parent = node.parent!;
  const parentPath = layerPath(ctx.upper, parent.path);
  const target = layerPath(ctx.upper, node.path);
  // A file with other hard links below becomes a different file (as in the kernel): a number of its own.
  const keepsIno = node.isDir || lower.nlink <= 1;
  if (keepsIno) recordIno(ctx, tmp, node.ino);
  const pst = lstatx(parentPath);
  try {
    renameat2(tmp, target, RENAME_NOREPLACE);
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  lutimens(parentPath, timespec(pst.atime, pst.atimeNsec), timespec(pst.mtime, pst.mtimeNsec));
  const st = lstatx(target);
  if (!keepsIno) node.ino = ctx.tree.inodes.of(st);
  if (node.isDir) node.prependUpper(ctx.upper);
  else node.layer = ctx.upper;
  ctx.tree.upperIs(node, st);
  parent.upperListing()?.entries.set(node.name, node.isDir ? 'dir' : 'other');
  followCopyUp(node, target);
  // Its ctime, and maybe its number and link count, are the copy's now; the parent's ctime moved.
  ctx.tree.attributesChanged(node);
  ctx.tree.attributesChanged(parent);
}

/** Records the number a copy keeps, for later mounts; where the entry cannot hold it (a symlink refusing user.*), it is lost there. */
function recordIno(ctx: UpperContext, path: string, ino: number): void {
  try {
    lsetxattr(path, originInoXattr(ctx.xattrNamespace), Buffer.from(String(ino)));
  } catch (err) {
    if (!hasCode(err, 'EPERM', 'ENOTSUP', 'EOPNOTSUPP')) throw err;
  }
}

/** Points the descriptors still open on the lower file at the upper copy, keeping their numbers. */
function followCopyUp(node: OvlNode, upperPath: Buffer): void {
  for (const [fd, flags] of node.takeLowerFds()) {
    try {
      const copy = openSync(upperPath, (flags & ~fsc.O_TRUNC) | fsc.O_NOFOLLOW);
      try {
        dup2(copy, fd);
      } finally {
        closeSync(copy);
      }
    } catch (err) {
      // The copy-up itself is done; this descriptor just goes on reading the lower file.
      log.error('descriptor %d of %s stays on the lower file: %s', fd, node.path, (err as Error).message);
    }
  }
}
