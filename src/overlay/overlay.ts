/**
 * The overlay filesystem's operations, addressed by node (an overlay inode, see node.ts) and
 * name, independent of FUSE. Each returns plain data or throws an error carrying an errno
 * (OvlError or Node's own). An operation is synchronous unless it must copy or sync data:
 * then it returns a promise.
 */
import { closeSync, constants as fsc, fdatasync as fsFdatasync, fsync as fsFsync, openSync, read as fsRead, readlinkSync, readFileSync, readSync, rmSync, statfsSync, writeSync } from 'node:fs';
import { errorFor } from '../errors';
import { fallocate, lgetxattr, llistxattr, seek } from '../sys/libc';
import { fstatx, lstatx, type Stat } from '../sys/stat';
import { setattr as setAttributes, removexattr as removeXattr, setxattr as setXattr, type AttrChanges } from './attributes';
import { copyUp, copyUpDirChain, glibcDev } from './copy-up';
import { isPrivateXattr } from './format';
import { IdMap, type IdMapOptions } from './idmap';
import { closeLayers, openLayers, statInLayer, type Layer } from './layer';
import type { OvlNode } from './node';
import { StatOverrides, type XattrPermissions } from './stat-override';
import { OverlayTree } from './tree';
import { Workdir } from './workdir';
import * as writes from './writes';

export type { AttrChanges, TimeChange } from './attributes';
export type { Owner } from './writes';

export interface OverlayConfig {
  /** Lower directories, top first (absolute paths). */
  readonly lowers: readonly string[];
  /** Upper directory; without it the overlay is read-only. */
  readonly upper?: string;
  /** Work directory, on the same filesystem as upper. */
  readonly work?: string;
  /** Namespace of the overlay's own xattrs written: `trusted` (default) or `user` (userxattr, rootless). */
  readonly xattrNamespace?: 'trusted' | 'user';
  /** Skip fsync of copied-up data and of fsync requests (the `volatile` option). */
  readonly volatile?: boolean;
  /** Force a whiteout style instead of probing what the upper filesystem allows (tests). */
  readonly whiteoutStyle?: 'chardev' | 'aufs';
  /** Force opaque markers as xattrs or `.wh..wh..opq` files instead of probing the upper (tests). */
  readonly opaqueStyle?: writes.OpaqueStyle;
  /** Which lowers (top first) are on id-mapped mounts, instead of asking mountinfo (tests). */
  readonly idmappedLowers?: readonly boolean[];
  /** uidmapping / gidmapping / squash_* (fuse-overlayfs's options). */
  readonly idmap?: IdMapOptions;
  /** Every directory reports nlink 1 (static_nlink). */
  readonly staticNlink?: boolean;
  /** No POSIX ACLs through the mount (noacl). */
  readonly noacl?: boolean;
  /**
   * getxattr, listxattr and setxattr answer ENOSYS, as with fuse-overlayfs's noxattrs=1 (the
   * kernel then answers EOPNOTSUPP itself and stops asking); removexattr still works there.
   */
  readonly noxattrs?: boolean;
  /** Owners and modes of new upper attributes kept in xattrs: 1 security.*, 2 user.* (xattr_permissions). */
  readonly xattrPermissions?: XattrPermissions;
  /**
   * Give new entries the owner passed to create/mknod/mkdir/symlink. Default: when this
   * process may chown (uid 0 with CAP_CHOWN, in the initial user namespace or its own).
   */
  readonly setOwners?: boolean;
}

/** Whether this process may give files away: euid 0 with CAP_CHOWN in its effective set. */
function mayChown(): boolean {
  if (process.geteuid?.() !== 0) return false;
  const capEff = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return capEff === null || (BigInt(`0x${capEff[1]}`) & 1n) === 1n;
}

const ACL_XATTRS = new Set(['system.posix_acl_access', 'system.posix_acl_default']);

/** Attributes as the mount presents them (ino, owner, mode and nlink as shown); times in seconds and nanoseconds. */
export type OvlStat = Omit<Stat, 'dev' | 'inoHigh' | 'inoLow'>;

export interface OvlDirEntry {
  /** A byte string. */
  name: string;
  ino: number;
  /** File type bits (S_IFMT) only. */
  type: number;
  /** The entry's node; null for `.` and `..`. */
  node: OvlNode | null;
}

export interface OvlStatfs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  namemax: number;
}

const ACCESS_WRITE_FLAGS = fsc.O_WRONLY | fsc.O_RDWR;
const W_OK = 2;
/** renameat2 flags the kernel's overlay takes (RENAME_WHITEOUT it refuses with EINVAL). */
export const RENAME_NOREPLACE = 1;
export const RENAME_EXCHANGE = 2;

function promised<T>(run: (cb: (err: NodeJS.ErrnoException | null, result?: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => run((err, result) => (err ? reject(err) : resolve(result as T))));
}

/** Runs `then` once `p` is done: at once when it was done at once. */
function after<A, T>(p: A | Promise<A>, then: (a: A) => T): T | Promise<T> {
  return p instanceof Promise ? p.then(then) : then(p);
}

export class Overlay {
  private constructor(
    readonly config: OverlayConfig,
    readonly layers: readonly Layer[],
    readonly tree: OverlayTree,
    private readonly ids: IdMap,
    private readonly overrides: StatOverrides,
    private readonly writeContext: writes.WriteContext | null,
  ) {}

  static async open(config: OverlayConfig): Promise<Overlay> {
    if (config.upper !== undefined && config.work === undefined) throw errorFor('EINVAL', 'upperdir needs a workdir');
    const layers = openLayers(config.lowers, config.upper, config.idmappedLowers);
    const ids = new IdMap(config.idmap);
    const xattrNamespace = config.xattrNamespace ?? 'trusted';
    let work: Workdir | undefined;
    try {
      const tree = new OverlayTree(layers, xattrNamespace);
      let ctx: writes.WriteContext | null = null;
      // Without an upper there is nothing to record overrides in (and nothing to prepare).
      let overrides = StatOverrides.open(layers, 0);
      if (config.work !== undefined && config.upper !== undefined) {
        work = await Workdir.prepare(config.work, layers[0].dev);
        // Only once the workdir is ours: preparing the upper root writes to it.
        overrides = StatOverrides.open(layers, config.xattrPermissions ?? 0);
        ctx = {
          tree,
          upper: layers[0],
          work,
          fsync: !config.volatile,
          xattrNamespace,
          whiteoutStyle: config.whiteoutStyle ?? writes.probeWhiteoutStyle(work.temp()),
          opaqueStyle: config.opaqueStyle ?? writes.probeOpaqueStyle(work.temp(), xattrNamespace),
          overrides,
          ids,
          setOwners: config.setOwners ?? mayChown(),
        };
      }
      return new Overlay(config, layers, tree, ids, overrides, ctx);
    } catch (err) {
      work?.release();
      closeLayers(layers);
      throw err;
    }
  }

  get root(): OvlNode {
    return this.tree.root;
  }

  /** `watcher` hears of each node whose attributes change other than by an operation on it (a copy-up). */
  watch(watcher: (node: OvlNode) => void): void {
    this.tree.watch(watcher);
  }

  get readOnly(): boolean {
    return this.writeContext === null;
  }

  /** Ends this overlay's use of its layers (their descriptors, the work directory lock). */
  close(): void {
    this.writeContext?.work.release();
    closeLayers(this.layers);
  }

  private get ctx(): writes.WriteContext {
    if (this.writeContext === null) throw errorFor('EROFS');
    return this.writeContext;
  }

  /** NAME in DIR; ENOENT if there is none. */
  lookup(dir: OvlNode, name: string): OvlNode {
    if (!dir.isDir) throw errorFor('ENOTDIR', dir.path);
    if (dir.removed) throw errorFor('ENOENT', name);
    const node = this.tree.child(dir, name);
    if (node === null) throw errorFor('ENOENT', name);
    return node;
  }

  /** A name that is free in DIR, for a new entry (EEXIST if it is taken). */
  private freeName(dir: OvlNode, name: string): void {
    if (!dir.isDir) throw errorFor('ENOTDIR', dir.path);
    if (dir.removed) throw errorFor('ENOENT', name);
    if (this.tree.child(dir, name)) throw errorFor('EEXIST', name);
  }

  /** The new entry NAME in DIR, just made. */
  private made(dir: OvlNode, name: string): OvlNode {
    const node = this.tree.child(dir, name);
    if (node === null) throw errorFor('EIO', `${name} vanished as it was made`);
    return node;
  }

  getattr(node: OvlNode): OvlStat {
    return this.statOf(node);
  }

  readlink(node: OvlNode): Buffer {
    if ((node.type & 0o170000) !== 0o120000) throw errorFor('EINVAL', node.path);
    return readlinkSync(node.realPath, { encoding: 'buffer' });
  }

  /** Opens a file for I/O and returns its descriptor (the FUSE file handle); writers copy up first. */
  open(node: OvlNode, flags: number): number | Promise<number> {
    if (node.isDir) throw errorFor('EISDIR', node.path);
    const truncating = (flags & fsc.O_TRUNC) !== 0;
    if ((flags & ACCESS_WRITE_FLAGS) === 0 && !truncating) return this.openNow(node, flags);
    // O_TRUNC spares copying data that would be dropped.
    return after(copyUp(this.ctx, node, { data: !truncating }), () => this.openNow(node, flags));
  }

  /** Synchronous, so that no copy-up can land between the open and the bookkeeping below. */
  private openNow(node: OvlNode, flags: number): number {
    const passed = (flags & writes.PASSED_OPEN_FLAGS) | fsc.O_NOFOLLOW;
    const fd = openSync(node.realPath, passed);
    this.opened(node, fd, passed);
    return fd;
  }

  private readonly fdNodes = new Map<number, OvlNode>();

  /** The node a descriptor of `open`/`create` is open on. */
  nodeOf(fd: number): OvlNode | undefined {
    return this.fdNodes.get(fd);
  }

  private opened(node: OvlNode, fd: number, flags: number): void {
    this.fdNodes.set(fd, node);
    node.opened(fd, node.layer.upper ? null : flags);
  }

  /** Closes a descriptor of `open`/`create`. */
  release(fd: number): void {
    const node = this.fdNodes.get(fd);
    this.fdNodes.delete(fd);
    closeSync(fd);
    if (!node) return;
    node.closed(fd);
    if (node.lookups === 0) this.forget(node);
  }

  /**
   * Nothing refers to `node` any more (the kernel forgot it, no descriptor is open): a
   * removed file's data can go.
   */
  forget(node: OvlNode): void {
    if (node.isOpen || node.lookups > 0 || !node.removed || !node.detachedAt) return;
    rmSync(node.detachedAt, { force: true });
    node.detachedAt = undefined;
    this.tree.upperGone(node);
  }

  /**
   * The stored owner of an entry made by a caller with these ids (as seen through the mount):
   * mapped back through uidmapping/gidmapping, as chown's are.
   */
  storedOwner(uid: number, gid: number): writes.Owner {
    return { uid: this.ids.storedUid(uid), gid: this.ids.storedGid(gid) };
  }

  storedUid(uid: number): number {
    return this.ids.storedUid(uid);
  }

  storedGid(gid: number): number {
    return this.ids.storedGid(gid);
  }

  /**
   * create, mknod, mkdir and symlink give the new entry `owner` (stored ids; see storedOwner),
   * or the gid of a set-group-ID parent, where this process may chown; without an owner the
   * entry is this process's.
   */
  create(dir: OvlNode, name: string, mode: number, flags: number, owner?: writes.Owner): { node: OvlNode; fd: number } {
    const ctx = this.ctx;
    this.freeName(dir, name);
    const fd = writes.create(ctx, dir, name, mode, flags, owner);
    let node: OvlNode;
    try {
      node = this.made(dir, name);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    this.opened(node, fd, flags);
    return { node, fd };
  }

  /** mknod; `rdev` as its major and minor numbers. */
  mknod(dir: OvlNode, name: string, mode: number, major: number, minor: number, owner?: writes.Owner): OvlNode {
    const ctx = this.ctx;
    this.freeName(dir, name);
    writes.mknodAt(ctx, dir, name, mode, glibcDev(major, minor), owner);
    return this.made(dir, name);
  }

  mkdir(dir: OvlNode, name: string, mode: number, owner?: writes.Owner): OvlNode {
    const ctx = this.ctx;
    this.freeName(dir, name);
    writes.mkdirAt(ctx, dir, name, mode, owner);
    return this.made(dir, name);
  }

  symlink(dir: OvlNode, name: string, target: Buffer, owner?: writes.Owner): OvlNode {
    const ctx = this.ctx;
    this.freeName(dir, name);
    writes.symlinkAt(ctx, dir, name, target, owner);
    return this.made(dir, name);
  }

  link(node: OvlNode, dir: OvlNode, name: string): OvlNode | Promise<OvlNode> {
    const ctx = this.ctx;
    if (node.isDir) throw errorFor('EPERM', 'hard link to a directory');
    writes.checkNewName(name);
    this.freeName(dir, name);
    return after(copyUp(ctx, node), () => {
      // The name may have been taken while the data was copied.
      this.freeName(dir, name);
      writes.linkAt(ctx, node, dir, name);
      return node;
    });
  }

  unlink(dir: OvlNode, name: string): void {
    const ctx = this.ctx;
    const node = this.lookup(dir, name);
    if (node.isDir) throw errorFor('EISDIR', name);
    writes.remove(ctx, dir, name, node);
  }

  rmdir(dir: OvlNode, name: string): void {
    const ctx = this.ctx;
    const node = this.lookup(dir, name);
    if (!node.isDir) throw errorFor('ENOTDIR', name);
    if (node === this.root) throw errorFor('EBUSY', name);
    if (this.mergedNames(node).length > 0) throw errorFor('ENOTEMPTY', name);
    writes.remove(ctx, dir, name, node);
  }

  /** rename(2) and renameat2(2) with RENAME_NOREPLACE or RENAME_EXCHANGE, checked in the kernel's overlay's order. */
  rename(dir: OvlNode, name: string, newDir: OvlNode, newName: string, flags = 0): void | Promise<void> {
    const ctx = this.ctx;
    if ((flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) !== 0 || (flags & RENAME_NOREPLACE && flags & RENAME_EXCHANGE)) throw errorFor('EINVAL', 'rename flags');
    const src = this.lookup(dir, name);
    if (src === this.root) throw errorFor('EBUSY', name);
    writes.checkNewName(newName);
    if (!newDir.isDir) throw errorFor('ENOTDIR', newDir.path);
    if (newDir.removed) throw errorFor('ENOENT', newName);
    const dst = this.tree.child(newDir, newName);
    if (flags & RENAME_EXCHANGE) {
      if (!dst) throw errorFor('ENOENT', newName);
      if (dst === src) return;
      if ((src.isDir && !writes.canMoveDir(src)) || (dst.isDir && !writes.canMoveDir(dst))) throw errorFor('EXDEV', name);
      const swap = (): void => {
        copyUpDirChain(ctx, dir);
        copyUpDirChain(ctx, newDir);
        writes.exchange(ctx, dir, name, src, newDir, newName, dst);
      };
      const copying = copyUp(ctx, src);
      if (copying) return copying.then(() => copyUp(ctx, dst)).then(swap);
      const second = copyUp(ctx, dst);
      return second ? second.then(swap) : swap();
    }
    if (dst && flags & RENAME_NOREPLACE) throw errorFor('EEXIST', newName);
    if (dst === src) return;
    if (dst) {
      if (src.isDir && !dst.isDir) throw errorFor('ENOTDIR', newName);
      if (!src.isDir && dst.isDir) throw errorFor('EISDIR', newName);
    }
    if (src.isDir && !writes.canMoveDir(src)) throw errorFor('EXDEV', name);
    if (dst && dst.isDir && this.mergedNames(dst).length > 0) throw errorFor('ENOTEMPTY', newName);
    return after(copyUp(ctx, src), () => {
      // While data was copied, the target may have changed: the rename takes what is there now.
      const now = this.tree.child(newDir, newName);
      if (now && now !== dst) throw errorFor('EEXIST', newName);
      writes.rename(ctx, dir, name, src, newDir, newName, dst);
    });
  }

  /** setattr; `fd` when it came through an open descriptor (ftruncate). */
  setattr(node: OvlNode, changes: AttrChanges, fd?: number): void | Promise<void> {
    return setAttributes(this.ctx, node, changes, fd);
  }

  setxattr(node: OvlNode, name: string, value: Buffer, flags: number): void | Promise<void> {
    this.checkXattrsOn();
    this.checkAcl(name);
    return setXattr(this.ctx, node, name, value, flags);
  }

  removexattr(node: OvlNode, name: string): void | Promise<void> {
    return removeXattr(this.ctx, node, name);
  }

  getxattr(node: OvlNode, name: string): Buffer {
    this.checkXattrsOn();
    this.checkAcl(name);
    if (isPrivateXattr(name)) throw errorFor('ENODATA', name);
    return lgetxattr(node.realPath, name);
  }

  listxattr(node: OvlNode): string[] {
    this.checkXattrsOn();
    return llistxattr(node.realPath).filter((name) => !isPrivateXattr(name) && !(this.config.noacl && ACL_XATTRS.has(name)));
  }

  private checkXattrsOn(): void {
    if (this.config.noxattrs) throw errorFor('ENOSYS', 'noxattrs');
  }

  /** With noacl, POSIX ACLs do not exist through the mount. */
  private checkAcl(name: string): void {
    if (this.config.noacl && ACL_XATTRS.has(name)) throw errorFor('EOPNOTSUPP', name);
  }

  read(fd: number, into: Buffer, length: number, position: number): number {
    return readSync(fd, into, 0, length, position);
  }

  /** A read in the thread pool, for reads long enough to hold up other requests. */
  readAsync(fd: number, into: Buffer, length: number, position: number): Promise<number> {
    return promised((cb) => fsRead(fd, into, 0, length, position, cb));
  }

  write(fd: number, data: Buffer, position: number): number {
    return writeSync(fd, data, 0, data.length, position);
  }

  fsync(fd: number, datasync: boolean): void | Promise<void> {
    if (this.config.volatile) return;
    return promised((cb) => (datasync ? fsFdatasync : fsFsync)(fd, cb));
  }

  fallocate(fd: number, mode: number, offset: number, length: number): void {
    fallocate(fd, mode, offset, length);
  }

  /** lseek for SEEK_DATA and SEEK_HOLE (the kernel answers the others itself). */
  lseek(fd: number, offset: number, whence: number): number {
    return seek(fd, offset, whence);
  }

  /**
   * Lists a directory as readdir shows it: `.`, `..`, then the union of its layers minus
   * whiteouts, in one stable order (top layer first).
   */
  listDir(dir: OvlNode): OvlDirEntry[] {
    if (!dir.isDir) throw errorFor('ENOTDIR', dir.path);
    const parent = dir.parent ?? dir;
    const entries: OvlDirEntry[] = [
      { name: '.', ino: dir.ino, type: dir.type, node: null },
      { name: '..', ino: parent.ino, type: parent.type, node: null },
    ];
    if (dir.removed) return entries;
    for (const name of this.mergedNames(dir)) {
      // A name can vanish between listing and lookup only if a layer changed under the mount.
      const node = this.tree.child(dir, name);
      if (node) entries.push({ name, ino: node.ino, type: node.type, node });
    }
    return entries;
  }

  /**
   * fsync of a directory's upper copy, where its entries live once changed; a directory
   * with no upper copy has had no change through the mount, so there is nothing to sync.
   */
  fsyncdir(node: OvlNode, datasync: boolean): void | Promise<void> {
    if (!node.isDir) throw errorFor('ENOTDIR', node.path);
    if (this.config.volatile || !node.layer.upper || node.removed) return;
    const fd = openSync(node.realPath, fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
    return promised<void>((cb) => (datasync ? fsFdatasync : fsFsync)(fd, cb)).finally(() => closeSync(fd));
  }

  access(_node: OvlNode, mode: number): void {
    if ((mode & W_OK) !== 0 && this.readOnly) throw errorFor('EROFS');
  }

  statfs(): OvlStatfs {
    const st = statfsSync(`${this.layers[0].root}/.`);
    return { bsize: st.bsize, frsize: st.bsize, blocks: st.blocks, bfree: st.bfree, bavail: st.bavail, files: st.files, ffree: st.ffree, namemax: 255 };
  }

  /** Names visible in a merged directory: the union of its layers, minus whiteouts. */
  private mergedNames(dir: OvlNode): string[] {
    const seen = new Set<string>();
    const names: string[] = [];
    for (const listing of dir.listings()) {
      for (const name of listing.entries.keys()) {
        if (!seen.has(name)) {
          seen.add(name);
          names.push(name);
        }
      }
      // Whited-out names are marked seen only after this layer's own entries are taken.
      for (const name of listing.whiteouts) seen.add(name);
    }
    return names;
  }

  /** What stat says of the node's real file, or of what is left of it once removed. */
  private realStat(node: OvlNode): Stat {
    if (!node.removed || !node.layer.upper) {
      const st = statInLayer(node.layer, node.path);
      if (st === null) throw errorFor('ENOENT', node.path);
      return st;
    }
    // A removed upper file keeps its data at a second name while open: that name is no link of the file's own.
    if (node.detachedAt) return { ...lstatx(node.detachedAt), nlink: 0 };
    for (const fd of node.fds) return fstatx(fd);
    if (node.lastStat) return node.lastStat;
    throw errorFor('ENOENT', node.path);
  }

  private statOf(node: OvlNode): OvlStat {
    const st = this.realStat(node);
    const override = node.removed && node.layer.upper && !node.detachedAt ? null : this.overrides.override(node.layer, node.realPath, st.mode);
    const attrs = override ?? { uid: st.uid, gid: st.gid, mode: st.mode };
    // A lower on an id-mapped mount gives the ids to show; its overrides give stored ones.
    const alreadyShown = override === null && node.layer.idmapped;
    return {
      ...st,
      ino: node.ino,
      mode: attrs.mode,
      uid: this.ids.shownUid(attrs.uid, alreadyShown),
      gid: this.ids.shownGid(attrs.gid, alreadyShown),
      nlink: node.isDir && (node.isMergedDir || this.config.staticNlink) && st.nlink > 0 ? 1 : st.nlink,
    };
  }
}

