/**
 * The overlay served over FUSE: each request's node id is looked up in the node table, the
 * overlay operation runs on that node, and its result is put in the protocol's terms
 * (attributes, entries with their cache timeouts, handles). Every handler has that one shape;
 * what an operation means is the overlay's business (src/overlay/), how it travels is the
 * protocol's (src/fuse/).
 *
 * Names arrive as bytes and are handed to the overlay as byte strings (one char per byte),
 * so names that are not UTF-8 pass unchanged. The caller's ids from each request header
 * own the entries it creates.
 */
import { constants } from 'node:os';
import type {
  Attr, AttrReply, Awaitable, BackingFiles, Connection, Created, DirectoryPlusSink, DirectorySink, Entry, FileSystem, Notifier, Opened, Request, SetAttr, StatFs,
} from '../fuse/types';
import { Fattr, Fopen } from '../fuse/protocol';
import { NO_ATTR } from '../fuse/wire';
import { errorFor, isKnownErrno } from '../errors';
import { log } from '../log';
import type { AttrChanges, OvlDirEntry, OvlStat, Overlay, TimeChange } from '../overlay/overlay';
import type { OvlNode } from '../overlay/node';
import { copyFileRange } from '../sys/libc';
import type { CachePolicy } from './cache-policy';
import { NodeTable } from './node-table';
import { OpenFiles } from './open-files';

/**
 * Reads longer than this go to the thread pool, so they do not hold up other requests. The
 * kernel's readahead asks for 128 KiB at a time: those are served at once (measured: a cold
 * sequential read took 2.2x as long with them in the pool, every one a pool round trip).
 */
const ASYNC_READ_BYTES = 128 * 1024;
const ACCESS_ACL = 'system.posix_acl_access';
/**
 * The kernel keeps a directory's listing across opens: every change of names passes through
 * it (what a copy-up changes, the kernel is told of: see attributesChanged). Files: see
 * open-files.ts.
 */
const DIR_OPEN_FLAGS = Fopen.KEEP_CACHE | Fopen.CACHE_DIR;
/** Most a copy_file_range request copies in one call (the caller asks again for the rest). */
const COPY_RANGE_CHUNK = 16 << 20;

function byteString(name: Buffer): string {
  return name.toString('latin1');
}

/** The kernel's new_encode_dev: 12 bits of major, 20 of minor, in 32 bits. */
export function encodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

export function toAttr(st: OvlStat): Attr {
  return { ...st, rdev: encodeDev(st.rdevMajor, st.rdevMinor) };
}

function after<A, T>(p: A | Promise<A>, then: (a: A) => T): T | Promise<T> {
  return p instanceof Promise ? p.then(then) : then(p);
}

/** What a directory handle lists: taken at the first read (and at a read from the start again). */
interface DirHandle {
  readonly node: OvlNode;
  entries: OvlDirEntry[] | null;
}

export interface OverlayFsOptions {
  readonly cache: CachePolicy;
  /** Opens of upper files use passthrough where the kernel offers it. */
  readonly passthrough?: boolean;
  /** The kernel's INIT is answered: the mount is usable. */
  readonly onInit?: () => void;
}

export class OverlayFs implements FileSystem {
  readonly nodes: NodeTable;
  private readonly dirs = new Map<number, DirHandle>();
  private nextDirHandle = 1;
  private readonly files = new OpenFiles();
  private notify: Notifier | null = null;

  constructor(private readonly overlay: Overlay, private readonly options: OverlayFsOptions) {
    this.nodes = new NodeTable(overlay.root);
    overlay.watch((node) => this.attributesChanged(node));
  }

  /**
   * The overlay changed a node's attributes behind the kernel's back: what the kernel keeps
   * of them is dropped (it keeps nothing of a node it does not hold). A directory's cached
   * listing goes too: a copy-up in it may have given an entry a number of its own.
   */
  private attributesChanged(node: OvlNode): void {
    if (node.nodeId === 0 || this.notify === null) return;
    const errno = this.notify.invalInode(node.nodeId, node.isDir ? 0 : -1);
    // ENOENT: the kernel had already let the node go, so it kept nothing stale.
    if (errno !== 0 && errno !== constants.errno.ENOENT) log.error('cannot invalidate the attributes of %s: errno %d', node.path, errno);
  }

  /** A node as the log shows it: its path in the merged tree. */
  nodeName(id: number): string {
    const node = this.nodes.peek(id);
    if (!node) return `#${id}`;
    return `/${node.path.replace(/[^\x20-\x7e]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`)}${node.removed ? ' (removed)' : ''}`;
  }

  init(_connection: Connection, notify: Notifier, backing: BackingFiles | null): void {
    this.notify = notify;
    this.files.usePassthrough(this.options.passthrough ? backing : null);
    this.options.onInit?.();
  }

  /** The answer for a node the kernel now holds one more lookup of. */
  private entry(node: OvlNode): Entry {
    const attr = toAttr(this.overlay.getattr(node));
    const { nodeId, generation } = this.nodes.take(node);
    return { nodeId, generation, entryTimeout: this.options.cache.entry, attrTimeout: this.options.cache.attr, attr };
  }

  private attrs(node: OvlNode): AttrReply {
    return { attr: toAttr(this.overlay.getattr(node)), timeout: this.options.cache.attr };
  }

  private owner(req: Request) {
    return this.overlay.storedOwner(req.uid, req.gid);
  }

  lookup(_req: Request, parent: number, name: Buffer): Entry {
    const dir = this.nodes.get(parent);
    let node: OvlNode;
    try {
      node = this.overlay.lookup(dir, byteString(name));
    } catch (err) {
      // A negative answer the kernel may keep, as it keeps names.
      if ((err as { errno?: number }).errno === constants.errno.ENOENT && this.options.cache.negative > 0) {
        return { nodeId: 0, generation: 0, entryTimeout: this.options.cache.negative, attrTimeout: 0, attr: NO_ATTR };
      }
      throw err;
    }
    return this.entry(node);
  }

  forget(id: number, count: number): void {
    const node = this.nodes.forget(id, count);
    if (node) this.overlay.forget(node);
  }

  getattr(_req: Request, id: number): AttrReply {
    return this.attrs(this.nodes.get(id));
  }

  setattr(_req: Request, id: number, s: SetAttr): Awaitable<AttrReply> {
    const node = this.nodes.get(id);
    const changes: { -readonly [K in keyof AttrChanges]: AttrChanges[K] } = {};
    if (s.valid & Fattr.MODE) changes.mode = s.mode;
    if (s.valid & Fattr.UID) changes.uid = this.overlay.storedUid(s.uid);
    if (s.valid & Fattr.GID) changes.gid = this.overlay.storedGid(s.gid);
    if (s.valid & Fattr.SIZE) changes.size = s.size;
    if (s.valid & Fattr.ATIME) changes.atime = timeOf(s.valid & Fattr.ATIME_NOW, s.atime, s.atimeNsec);
    if (s.valid & Fattr.MTIME) changes.mtime = timeOf(s.valid & Fattr.MTIME_NOW, s.mtime, s.mtimeNsec);
    const fd = s.valid & Fattr.FH ? s.fh : undefined;
    return after(this.overlay.setattr(node, changes, fd), () => this.attrs(node));
  }

  readlink(_req: Request, id: number): Buffer {
    return this.overlay.readlink(this.nodes.get(id));
  }

  mknod(req: Request, parent: number, name: Buffer, mode: number, rdev: number): Entry {
    const major = (rdev >>> 8) & 0xfff;
    const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
    return this.entry(this.overlay.mknod(this.nodes.get(parent), byteString(name), mode, major, minor, this.owner(req)));
  }

  mkdir(req: Request, parent: number, name: Buffer, mode: number): Entry {
    return this.entry(this.overlay.mkdir(this.nodes.get(parent), byteString(name), mode, this.owner(req)));
  }

  symlink(req: Request, parent: number, name: Buffer, target: Buffer): Entry {
    return this.entry(this.overlay.symlink(this.nodes.get(parent), byteString(name), target, this.owner(req)));
  }

  unlink(_req: Request, parent: number, name: Buffer): void {
    this.overlay.unlink(this.nodes.get(parent), byteString(name));
  }

  rmdir(_req: Request, parent: number, name: Buffer): void {
    this.overlay.rmdir(this.nodes.get(parent), byteString(name));
  }

  rename(_req: Request, parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number): Awaitable<void> {
    return this.overlay.rename(this.nodes.get(parent), byteString(name), this.nodes.get(newParent), byteString(newName), flags);
  }

  link(_req: Request, id: number, newParent: number, newName: Buffer): Awaitable<Entry> {
    return after(this.overlay.link(this.nodes.get(id), this.nodes.get(newParent), byteString(newName)), (node) => this.entry(node));
  }

  open(_req: Request, id: number, flags: number): Awaitable<Opened> {
    const node = this.nodes.get(id);
    return after(this.overlay.open(node, flags), (fd) => this.files.opened(node, fd, node.layer.upper));
  }

  read(_req: Request, _id: number, fh: number, offset: number, size: number, into: Buffer): Awaitable<number> {
    if (size > ASYNC_READ_BYTES) return this.overlay.readAsync(fh, into, size, offset);
    return this.overlay.read(fh, into, size, offset);
  }

  write(_req: Request, _id: number, fh: number, offset: number, data: Buffer): number {
    return this.overlay.write(fh, data, offset);
  }

  statfs(): StatFs {
    const s = this.overlay.statfs();
    return { blocks: s.blocks, bfree: s.bfree, bavail: s.bavail, files: s.files, ffree: s.ffree, bsize: s.bsize, namelen: s.namemax, frsize: s.frsize };
  }

  release(_req: Request, _id: number, fh: number): void {
    this.files.released(fh);
    this.overlay.release(fh);
  }

  fsync(_req: Request, _id: number, fh: number, datasync: boolean): Awaitable<void> {
    return this.overlay.fsync(fh, datasync);
  }

  setxattr(_req: Request, id: number, name: Buffer, value: Buffer, flags: number): Awaitable<void> {
    const node = this.nodes.get(id);
    const xattr = name.toString();
    return after(this.overlay.setxattr(node, xattr, value, flags), () => this.aclSet(node, xattr));
  }

  getxattr(_req: Request, id: number, name: Buffer): Buffer {
    return this.overlay.getxattr(this.nodes.get(id), name.toString());
  }

  listxattr(_req: Request, id: number): Buffer {
    return Buffer.from(this.overlay.listxattr(this.nodes.get(id)).map((n) => `${n}\0`).join(''));
  }

  removexattr(_req: Request, id: number, name: Buffer): Awaitable<void> {
    const node = this.nodes.get(id);
    const xattr = name.toString();
    return after(this.overlay.removexattr(node, xattr), () => this.aclSet(node, xattr));
  }

  /** An access ACL carries the mode's group bits: the kernel's copy of the mode is one to drop, not just its ctime. */
  private aclSet(node: OvlNode, xattr: string): void {
    if (xattr === ACCESS_ACL) this.attributesChanged(node);
  }

  opendir(_req: Request, id: number): Opened {
    const node = this.nodes.get(id);
    if (!node.isDir) throw errorFor('ENOTDIR', node.path);
    const fh = this.nextDirHandle++;
    this.dirs.set(fh, { node, entries: null });
    return { fh, flags: DIR_OPEN_FLAGS };
  }

  /** A directory handle's entries; a read from the start (the first, or after rewinddir) sees the directory as it is now. */
  private listing(fh: number, offset: number): OvlDirEntry[] {
    const handle = this.dirs.get(fh);
    if (!handle) throw errorFor('EBADF', `directory handle ${fh}`);
    if (offset === 0 || handle.entries === null) handle.entries = this.overlay.listDir(handle.node);
    return handle.entries;
  }

  readdir(_req: Request, _id: number, fh: number, offset: number, out: DirectorySink): void {
    const entries = this.listing(fh, offset);
    for (let i = offset; i < entries.length; i++) {
      const e = entries[i];
      if (!out.add(Buffer.from(e.name, 'latin1'), e.ino, e.type >>> 12, i + 1)) break;
    }
  }

  readdirplus(_req: Request, _id: number, fh: number, offset: number, out: DirectoryPlusSink): void {
    const entries = this.listing(fh, offset);
    for (let i = offset; i < entries.length; i++) {
      const e = entries[i];
      // An entry the kernel holds (`.` and `..` too) goes without an answer: it knows all of
      // it already, and a stat per entry would make a walk of a cached tree cost a cold one.
      const entry = e.node === null || e.node.lookups > 0 ? null : this.listedEntry(e.node);
      if (out.add(Buffer.from(e.name, 'latin1'), entry, e.ino, e.type >>> 12, i + 1)) continue;
      // Not taken: the lookup it counted is given back.
      if (entry !== null) this.forget(entry.nodeId, 1);
      break;
    }
  }

  /**
   * A listed entry's answer, or null where its attributes cannot be had now: the name goes
   * alone, and the kernel's lookup of it gets the error.
   */
  private listedEntry(node: OvlNode): Entry | null {
    try {
      return this.entry(node);
    } catch (err) {
      if (!isKnownErrno(err)) throw err;
      return null;
    }
  }

  releasedir(_req: Request, _id: number, fh: number): void {
    this.dirs.delete(fh);
  }

  fsyncdir(_req: Request, id: number, _fh: number, datasync: boolean): Awaitable<void> {
    return this.overlay.fsyncdir(this.nodes.get(id), datasync);
  }

  access(_req: Request, id: number, mask: number): void {
    this.overlay.access(this.nodes.get(id), mask);
  }

  create(req: Request, parent: number, name: Buffer, mode: number, _umask: number, flags: number): Created {
    const { node, fd } = this.overlay.create(this.nodes.get(parent), byteString(name), mode, flags, this.owner(req));
    try {
      const entry = this.entry(node);
      return { ...entry, open: this.files.opened(node, fd, true) };
    } catch (err) {
      this.overlay.release(fd);
      throw err;
    }
  }

  fallocate(_req: Request, _id: number, fh: number, offset: number, length: number, mode: number): void {
    this.overlay.fallocate(fh, mode, offset, length);
  }

  lseek(_req: Request, _id: number, fh: number, offset: number, whence: number): number {
    return this.overlay.lseek(fh, offset, whence);
  }

  copyFileRange(_req: Request, _in: number, fhIn: number, offIn: number, _out: number, fhOut: number, offOut: number, length: number, flags: number): number {
    if (flags !== 0) throw errorFor('EINVAL', 'copy_file_range flags');
    return copyFileRange(fhIn, offIn, fhOut, offOut, Math.min(length, COPY_RANGE_CHUNK));
  }
}

function timeOf(now: number, sec: number, nsec: number): TimeChange {
  return now ? 'now' : { sec, nsec };
}
