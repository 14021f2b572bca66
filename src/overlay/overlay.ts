/**
 * The overlay filesystem's operations on overlay paths, independent of FUSE: each returns
 * plain data or throws an error carrying an errno (OvlError or Node's own).
 */
import { closeSync, constants as fsc, lstatSync, openSync, readFileSync, readlinkSync, rmSync, promises as fsp } from 'node:fs';
import { read as fsRead, close as fsClose, write as fsWrite, fsync as fsFsync, fdatasync as fsFdatasync, ftruncate as fsFtruncate } from 'node:fs';
import { errorFor } from '../errors';
import { lgetxattr, llistxattr } from '../sys/libc';
import { isPrivateXattr } from './format';
import { closeLayers, openLayers, type Layer } from './layer';
import { OverlayTree, type OvlNode } from './tree';
import { IdMap, NO_ID, type IdMapOptions } from './idmap';
import { StatOverrides, type XattrPermissions } from './stat-override';
import { Workdir } from './workdir';
import * as writes from './writes';

export interface OverlayConfig {
  /** Lower directories, top first (absolute paths). */
  readonly lowers: readonly string[];
  /** Upper directory; without it the overlay is read-only. */
  readonly upper?: string;
  /** Work directory, on the same filesystem as upper. */
  readonly work?: string;
  /** Namespace of the opaque markers written: `trusted` (default) or `user` (userxattr, rootless). */
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

/** Attributes as the mount presents them. */
export interface OvlStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  ino: number;
  rdev: number;
  blksize: number;
  blocks: number;
  atimeMs: number;
  mtimeMs: number;
  ctimeMs: number;
}

/** A new time in milliseconds, the current time, or no change. */
export type TimeChange = number | 'now' | 'omit';

export interface OvlDirEntry {
  name: string;
  ino: number;
  /** File type bits (S_IFMT) only. */
  type: number;
}

export interface OvlStatfs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  namemax: number;
}

const ACCESS_WRITE_FLAGS = fsc.O_WRONLY | fsc.O_RDWR;
const W_OK = 2;
/** Flags passed on when opening a layer file; creation is the overlay's business. */
const PASSED_OPEN_FLAGS = fsc.O_WRONLY | fsc.O_RDWR | fsc.O_APPEND | fsc.O_NONBLOCK | fsc.O_SYNC | fsc.O_DSYNC | fsc.O_TRUNC;

function promised<T>(run: (cb: (err: NodeJS.ErrnoException | null, result?: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => run((err, result) => (err ? reject(err) : resolve(result as T))));
}

/** libfuse 2 names an open file it unlinks `.fuse_hiddenXXXXXXXXYYYYYYYY` (see Overlay.hidden). */
function isLibfuseHiddenName(path: string): boolean {
  return /\/\.fuse_hidden[0-9a-f]{16}$/.test(path);
}

/** '/a/b/c' -> ['/a/b', 'c']. */
function splitPath(path: string): [string, string] {
  const i = path.lastIndexOf('/');
  return [i <= 0 ? '/' : path.slice(0, i), path.slice(i + 1)];
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
    let work: Workdir | undefined;
    try {
      const tree = new OverlayTree(layers);
      await tree.root();
      let ctx: writes.WriteContext | null = null;
      // Without an upper there is nothing to record overrides in (and nothing to prepare).
      let overrides = StatOverrides.open(layers, 0);
      if (config.work !== undefined && config.upper !== undefined) {
        work = await Workdir.prepare(config.work, layers[0].dev);
        // Only once the workdir is ours: preparing the upper root writes to it.
        overrides = StatOverrides.open(layers, config.xattrPermissions ?? 0);
        const xattrNamespace = config.xattrNamespace ?? 'trusted';
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

  /** The directory a new name goes in, and the name; EEXIST if the name is taken. */
  private async freeName(path: string): Promise<[OvlNode, string]> {
    const [dirPath, name] = splitPath(path);
    const dir = await this.tree.resolve(dirPath);
    if (!dir.isDir) throw errorFor('ENOTDIR', dirPath);
    if (await dir.child(name, this.tree)) throw errorFor('EEXIST', path);
    return [dir, name];
  }

  /**
   * Files unlinked (or renamed over) while open, by their `.fuse_hidden*` names. libfuse 2
   * renames such a file to a hidden name, keeps serving its open descriptors through that
   * name, and unlinks it at the last close (unless hard_remove, which makes those
   * descriptors fail). Here the hidden name never enters the upper layer: the entry leaves
   * the merged view as an unlink does, and its data waits in the work directory.
   */
  private readonly hidden = new Map<string, OvlNode>();

  private resolve(path: string): Promise<OvlNode> {
    const h = this.hidden.get(path);
    return h ? Promise.resolve(h) : this.tree.resolve(path);
  }

  async getattr(path: string): Promise<OvlStat> {
    const node = await this.resolve(path);
    const st = await this.statOf(node);
    // libfuse 2 answers for a hidden file with one link fewer than we say, standing in for
    // the unlinked name. A lower file loses no link (the kernel shows all of them), so the
    // one libfuse takes away is added here.
    if (this.hidden.get(path) === node && !node.layer.upper) st.nlink += 1;
    return st;
  }

  /**
   * Checks that a directory can be listed. The listing itself is taken at each readdir:
   * libfuse 2 reads a whole directory at its first readdir and serves the rest of that
   * open from its own copy, so no handle of ours is needed.
   */
  async opendir(path: string): Promise<void> {
    const dir = await this.tree.resolve(path);
    if (!dir.isDir) throw errorFor('ENOTDIR', path);
  }

  async readdir(path: string): Promise<OvlDirEntry[]> {
    const dir = await this.tree.resolve(path);
    if (!dir.isDir) throw errorFor('ENOTDIR', path);
    const names = await this.mergedNames(dir);
    const nodes = await Promise.all(names.map((name) => dir.child(name, this.tree)));
    const parent = dir.parent ?? dir;
    const entries: OvlDirEntry[] = [
      { name: '.', ino: dir.ino, type: dir.type },
      { name: '..', ino: parent.ino, type: parent.type },
    ];
    nodes.forEach((node, i) => {
      // A name can vanish between listing and lookup only if a layer changed under the mount.
      if (node) entries.push({ name: names[i], ino: node.ino, type: node.type });
    });
    return entries;
  }

  async readlink(path: string): Promise<string> {
    const node = await this.resolve(path);
    return readlinkSync(node.realPath);
  }

  /** Opens a file for I/O and returns its descriptor, used as the FUSE file handle. */
  async open(path: string, flags: number): Promise<number> {
    const node = await this.resolve(path);
    const truncating = (flags & fsc.O_TRUNC) !== 0;
    if ((flags & ACCESS_WRITE_FLAGS) !== 0 || truncating) await writes.openForWrite(this.ctx, node, truncating);
    // Synchronous, so that no copy-up can land between the open and the bookkeeping below.
    const passed = (flags & PASSED_OPEN_FLAGS) | fsc.O_NOFOLLOW;
    const fd = openSync(node.realPath, passed);
    if (!node.layer.upper && node.detachedAt === undefined) {
      node.lowerFds.set(fd, passed);
      this.lowerFdNodes.set(fd, node);
    }
    return fd;
  }

  /** The lower-layer entries of open descriptors, to forget them at release. */
  private readonly lowerFdNodes = new Map<number, OvlNode>();

  /**
   * The stored owner of an entry made by a caller with these ids (as seen through the mount):
   * mapped back through uidmapping/gidmapping, as chown's are.
   */
  storedOwner(uid: number, gid: number): writes.Owner {
    return { uid: this.ids.storedUid(uid), gid: this.ids.storedGid(gid) };
  }

  /**
   * create, mknod, mkdir and symlink give the new entry `owner` (stored ids; see storedOwner),
   * or the gid of a set-group-ID parent, where this process may chown; without an owner the
   * entry is this process's.
   */
  async create(path: string, mode: number, owner?: writes.Owner): Promise<number> {
    const ctx = this.ctx;
    const [dir, name] = await this.freeName(path);
    return writes.create(ctx, dir, name, mode, owner);
  }

  async mknod(path: string, mode: number, rdev: number, owner?: writes.Owner): Promise<void> {
    const ctx = this.ctx;
    const [dir, name] = await this.freeName(path);
    writes.mknodAt(ctx, dir, name, mode, rdev, owner);
  }

  async mkdir(path: string, mode: number, owner?: writes.Owner): Promise<void> {
    const ctx = this.ctx;
    const [dir, name] = await this.freeName(path);
    writes.mkdirAt(ctx, dir, name, mode, owner);
  }

  async symlink(target: string, path: string, owner?: writes.Owner): Promise<void> {
    const ctx = this.ctx;
    const [dir, name] = await this.freeName(path);
    writes.symlinkAt(ctx, dir, name, target, owner);
  }

  async link(from: string, to: string): Promise<void> {
    const ctx = this.ctx;
    const src = await this.tree.resolve(from);
    const [dir, name] = await this.freeName(to);
    await writes.linkAt(ctx, src, dir, name);
  }

  async unlink(path: string): Promise<void> {
    const ctx = this.ctx;
    const hidden = this.hidden.get(path);
    if (hidden) {
      this.hidden.delete(path);
      if (hidden.layer.upper) rmSync(hidden.realPath, { force: true });
      return;
    }
    const node = await this.tree.resolve(path);
    if (node.isDir) throw errorFor('EISDIR', path);
    await writes.remove(ctx, node.parent!, node);
  }

  async rmdir(path: string): Promise<void> {
    const ctx = this.ctx;
    const node = await this.tree.resolve(path);
    if (!node.isDir) throw errorFor('ENOTDIR', path);
    if (node.parent === null) throw errorFor('EBUSY', path);
    if ((await this.mergedNames(node)).length > 0) throw errorFor('ENOTEMPTY', path);
    await writes.remove(ctx, node.parent, node);
  }

  async rename(from: string, to: string): Promise<void> {
    const ctx = this.ctx;
    const src = await this.tree.resolve(from);
    if (src.parent === null) throw errorFor('EBUSY', from);
    if (isLibfuseHiddenName(to) && !src.isDir) {
      src.detachedAt = await writes.remove(ctx, src.parent, src, true);
      this.hidden.set(to, src);
      return;
    }
    const [dirPath, name] = splitPath(to);
    const dstDir = await this.tree.resolve(dirPath);
    if (!dstDir.isDir) throw errorFor('ENOTDIR', dirPath);
    const dst = await dstDir.child(name, this.tree);
    if (dst === src) return;
    if (dst) {
      if (src.isDir && !dst.isDir) throw errorFor('ENOTDIR', to);
      if (!src.isDir && dst.isDir) throw errorFor('EISDIR', to);
      // Two names of one upper file: rename does nothing (POSIX). Lower hard links are
      // different files to the overlay (a copy-up would split them), as in the kernel.
      if (!src.isDir && dst.ino === src.ino && src.layer.upper && dst.layer.upper) return;
    }
    if (src.isDir && !writes.canMoveDir(src)) throw errorFor('EXDEV', from);
    if (dst && dst.isDir && (await this.mergedNames(dst)).length > 0) throw errorFor('ENOTEMPTY', to);
    await writes.rename(ctx, src, dstDir, name, dst);
    if (src.isDir) this.moveHidden(from, to);
  }

  /** libfuse 2 names a hidden file by its directory's path: that changes when the directory moves. */
  private moveHidden(fromDir: string, toDir: string): void {
    const prefix = `${fromDir}/`;
    for (const [path, node] of [...this.hidden]) {
      if (!path.startsWith(prefix)) continue;
      this.hidden.delete(path);
      this.hidden.set(`${toDir}/${path.slice(prefix.length)}`, node);
    }
  }

  async truncate(path: string, size: number): Promise<void> {
    await writes.truncate(this.ctx, await this.resolve(path), size);
  }

  async chmod(path: string, mode: number): Promise<void> {
    await writes.chmod(this.ctx, await this.resolve(path), mode);
  }

  async chown(path: string, uid: number, gid: number): Promise<void> {
    const storedUid = uid === NO_ID ? uid : this.ids.storedUid(uid);
    const storedGid = gid === NO_ID ? gid : this.ids.storedGid(gid);
    await writes.chown(this.ctx, await this.resolve(path), storedUid, storedGid);
  }

  async utimens(path: string, atime: TimeChange, mtime: TimeChange): Promise<void> {
    await writes.utimens(this.ctx, await this.resolve(path), atime, mtime);
  }

  async setxattr(path: string, name: string, value: Buffer, flags: number): Promise<void> {
    this.checkXattrsOn();
    this.checkAcl(name);
    await writes.setxattr(this.ctx, await this.resolve(path), name, value, flags);
  }

  async removexattr(path: string, name: string): Promise<void> {
    await writes.removexattr(this.ctx, await this.resolve(path), name);
  }

  write(fd: number, buf: Buffer, length: number, position: number): Promise<number> {
    return promised((cb) => fsWrite(fd, buf, 0, length, position, cb));
  }

  ftruncate(fd: number, size: number): Promise<void> {
    return promised((cb) => fsFtruncate(fd, size, cb));
  }

  fsync(fd: number, datasync: boolean): Promise<void> {
    if (this.config.volatile) return Promise.resolve();
    return promised((cb) => (datasync ? fsFdatasync : fsFsync)(fd, cb));
  }

  /**
   * fsync of a directory's upper copy, where its entries live once changed; a directory
   * with no upper copy has had no change through the mount, so there is nothing to sync.
   */
  async fsyncdir(path: string, datasync: boolean): Promise<void> {
    const node = await this.resolve(path);
    if (!node.isDir) throw errorFor('ENOTDIR', path);
    if (this.config.volatile || !node.layer.upper) return;
    const fd = openSync(node.realPath, fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
    try {
      await this.fsync(fd, datasync);
    } finally {
      closeSync(fd);
    }
  }

  read(fd: number, buf: Buffer, length: number, position: number): Promise<number> {
    return promised((cb) => fsRead(fd, buf, 0, length, position, cb));
  }

  release(fd: number): Promise<void> {
    this.lowerFdNodes.get(fd)?.lowerFds.delete(fd);
    this.lowerFdNodes.delete(fd);
    return promised((cb) => fsClose(fd, cb));
  }

  async getxattr(path: string, name: string): Promise<Buffer> {
    this.checkXattrsOn();
    const node = await this.resolve(path);
    this.checkAcl(name);
    if (isPrivateXattr(name)) throw errorFor('ENODATA', name);
    return lgetxattr(node.realPath, name);
  }

  async listxattr(path: string): Promise<string[]> {
    this.checkXattrsOn();
    const node = await this.resolve(path);
    return llistxattr(node.realPath).filter((name) => !isPrivateXattr(name) && !(this.config.noacl && ACL_XATTRS.has(name)));
  }

  private checkXattrsOn(): void {
    if (this.config.noxattrs) throw errorFor('ENOSYS', 'noxattrs');
  }

  /** With noacl, POSIX ACLs do not exist through the mount. */
  private checkAcl(name: string): void {
    if (this.config.noacl && ACL_XATTRS.has(name)) throw errorFor('EOPNOTSUPP', name);
  }

  async access(path: string, mode: number): Promise<void> {
    await this.resolve(path);
    if ((mode & W_OK) !== 0 && this.readOnly) throw errorFor('EROFS', path);
  }

  async statfs(): Promise<OvlStatfs> {
    const st = await fsp.statfs(this.layers[0].root);
    return {
      bsize: st.bsize,
      frsize: st.bsize,
      blocks: st.blocks,
      bfree: st.bfree,
      bavail: st.bavail,
      files: st.files,
      ffree: st.ffree,
      favail: st.ffree,
      namemax: 255,
    };
  }

  /** Names visible in a merged directory: the union of its layers, minus whiteouts. */
  private async mergedNames(dir: OvlNode): Promise<string[]> {
    const listings = await dir.listings();
    const seen = new Set<string>();
    const names: string[] = [];
    for (const listing of listings) {
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

  private async statOf(node: OvlNode): Promise<OvlStat> {
    // Nanoseconds as integers: the float st.mtimeMs rounds .9999999 s up to the next second.
    const st = lstatSync(node.realPath, { bigint: true });
    const ms = (ns: bigint) => Number(ns / 1_000_000n);
    const override = this.overrides.override(node.layer, node.realPath, Number(st.mode));
    const attrs = override ?? { uid: Number(st.uid), gid: Number(st.gid), mode: Number(st.mode) };
    // A lower on an id-mapped mount gives the ids to show; its overrides give stored ones.
    const alreadyShown = override === null && node.layer.idmapped;
    return {
      mode: attrs.mode,
      uid: this.ids.shownUid(attrs.uid, alreadyShown),
      gid: this.ids.shownGid(attrs.gid, alreadyShown),
      size: Number(st.size),
      nlink: node.isMergedDir || (node.isDir && this.config.staticNlink) ? 1 : Number(st.nlink),
      ino: node.ino,
      rdev: Number(st.rdev),
      blksize: Number(st.blksize),
      blocks: Number(st.blocks),
      atimeMs: ms(st.atimeNs),
      mtimeMs: ms(st.mtimeNs),
      ctimeMs: ms(st.ctimeNs),
    };
  }
}
