/**
 * The overlay addressed by path, for unit tests on plain directories: each call resolves its
 * path in the merged tree and calls the node operation, as a lookup then a request would
 * through the mount. Paths are ordinary (UTF-8) strings; times of the old millisecond form.
 */
import { NO_ID } from '../../src/overlay/idmap';
import type { OvlNode } from '../../src/overlay/node';
import { Overlay, type OverlayConfig, type Owner, type TimeChange } from '../../src/overlay/overlay';

export interface PathStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  ino: number;
  /** glibc's dev_t. */
  rdev: number;
  blksize: number;
  blocks: number;
  atimeMs: number;
  mtimeMs: number;
  ctimeMs: number;
  mtimeNs: bigint;
}

export interface PathDirEntry {
  name: string;
  ino: number;
  type: number;
}

const O_RDWR = 2;

/** A path as the overlay's byte string. */
function bytes(path: string): string {
  return Buffer.from(path, 'utf8').toString('latin1');
}

function split(path: string): [string, string] {
  const p = bytes(path);
  const i = p.lastIndexOf('/');
  return [i <= 0 ? '/' : p.slice(0, i), p.slice(i + 1)];
}

function ms(sec: number, nsec: number): number {
  return sec * 1000 + Math.floor(nsec / 1e6);
}

function timeOf(t: number | 'now' | 'omit'): TimeChange {
  if (typeof t === 'string') return t;
  return { sec: Math.floor(t / 1000), nsec: Math.round((t % 1000) * 1e6) };
}

export class PathOverlay {
  private constructor(readonly ov: Overlay) {}

  static async open(config: OverlayConfig): Promise<PathOverlay> {
    return new PathOverlay(await Overlay.open(config));
  }

  get config(): OverlayConfig {
    return this.ov.config;
  }

  get readOnly(): boolean {
    return this.ov.readOnly;
  }

  close(): void {
    this.ov.close();
  }

  node(path: string): OvlNode {
    return this.ov.tree.resolve(bytes(path));
  }

  private parentOf(path: string): [OvlNode, string] {
    const [dir, name] = split(path);
    return [this.ov.tree.resolve(dir), name];
  }

  async getattr(path: string): Promise<PathStat> {
    const st = this.ov.getattr(this.node(path));
    return {
      mode: st.mode,
      uid: st.uid,
      gid: st.gid,
      size: st.size,
      nlink: st.nlink,
      ino: st.ino,
      rdev: (st.rdevMajor << 8) | st.rdevMinor,
      blksize: st.blksize,
      blocks: st.blocks,
      atimeMs: ms(st.atime, st.atimeNsec),
      mtimeMs: ms(st.mtime, st.mtimeNsec),
      ctimeMs: ms(st.ctime, st.ctimeNsec),
      mtimeNs: BigInt(st.mtime) * 1_000_000_000n + BigInt(st.mtimeNsec),
    };
  }

  async opendir(path: string): Promise<void> {
    this.ov.listDir(this.node(path));
  }

  async readdir(path: string): Promise<PathDirEntry[]> {
    return this.ov.listDir(this.node(path)).map((e) => ({ name: Buffer.from(e.name, 'latin1').toString('utf8'), ino: e.ino, type: e.type }));
  }

  async readlink(path: string): Promise<string> {
    return this.ov.readlink(this.node(path)).toString('utf8');
  }

  async open(path: string, flags: number): Promise<number> {
    return this.ov.open(this.node(path), flags);
  }

  async create(path: string, mode: number, owner?: Owner): Promise<number> {
    const [dir, name] = this.parentOf(path);
    return this.ov.create(dir, name, mode, O_RDWR, owner).fd;
  }

  async mknod(path: string, mode: number, rdev: number, owner?: Owner): Promise<void> {
    const [dir, name] = this.parentOf(path);
    this.ov.mknod(dir, name, mode, (rdev >> 8) & 0xfff, (rdev & 0xff) | ((rdev >> 12) & 0xfff00), owner);
  }

  async mkdir(path: string, mode: number, owner?: Owner): Promise<void> {
    const [dir, name] = this.parentOf(path);
    this.ov.mkdir(dir, name, mode, owner);
  }

  async symlink(target: string, path: string, owner?: Owner): Promise<void> {
    const [dir, name] = this.parentOf(path);
    this.ov.symlink(dir, name, Buffer.from(target), owner);
  }

  async link(from: string, to: string): Promise<void> {
    const [dir, name] = this.parentOf(to);
    await this.ov.link(this.node(from), dir, name);
  }

  async unlink(path: string): Promise<void> {
    const [dir, name] = this.parentOf(path);
    this.ov.unlink(dir, name);
  }

  async rmdir(path: string): Promise<void> {
    if (bytes(path).replace(/\/+$/, '') === '') {
      this.node(path);
      throw Object.assign(new Error('EBUSY'), { errno: 16, code: 'EBUSY' });
    }
    const [dir, name] = this.parentOf(path);
    this.ov.rmdir(dir, name);
  }

  async rename(from: string, to: string, flags = 0): Promise<void> {
    const [dir, name] = this.parentOf(from);
    const [newDir, newName] = this.parentOf(to);
    await this.ov.rename(dir, name, newDir, newName, flags);
  }

  async truncate(path: string, size: number): Promise<void> {
    await this.ov.setattr(this.node(path), { size });
  }

  async ftruncate(fd: number, size: number, path?: string): Promise<void> {
    await this.ov.setattr(this.nodeOfFd(fd, path), { size }, fd);
  }

  private nodeOfFd(fd: number, path?: string): OvlNode {
    const node = this.ov.nodeOf(fd);
    if (node) return node;
    if (path === undefined) throw new Error(`descriptor ${fd} is not the overlay's`);
    return this.node(path);
  }

  async chmod(path: string, mode: number): Promise<void> {
    await this.ov.setattr(this.node(path), { mode });
  }

  /** Ids as the mount shows them: mapped back, as a chown through the mount is. */
  async chown(path: string, uid: number, gid: number): Promise<void> {
    await this.ov.setattr(this.node(path), {
      uid: uid === NO_ID ? NO_ID : this.ov.storedUid(uid),
      gid: gid === NO_ID ? NO_ID : this.ov.storedGid(gid),
    });
  }

  async utimens(path: string, atime: number | 'now' | 'omit', mtime: number | 'now' | 'omit'): Promise<void> {
    await this.ov.setattr(this.node(path), { atime: timeOf(atime), mtime: timeOf(mtime) });
  }

  async setxattr(path: string, name: string, value: Buffer, flags: number): Promise<void> {
    await this.ov.setxattr(this.node(path), name, value, flags);
  }

  async removexattr(path: string, name: string): Promise<void> {
    await this.ov.removexattr(this.node(path), name);
  }

  async getxattr(path: string, name: string): Promise<Buffer> {
    return this.ov.getxattr(this.node(path), name);
  }

  async listxattr(path: string): Promise<string[]> {
    return this.ov.listxattr(this.node(path));
  }

  async write(fd: number, buf: Buffer, length: number, position: number): Promise<number> {
    return this.ov.write(fd, buf.subarray(0, length), position);
  }

  async read(fd: number, buf: Buffer, length: number, position: number): Promise<number> {
    return this.ov.read(fd, buf, length, position);
  }

  async release(fd: number): Promise<void> {
    this.ov.release(fd);
  }

  async fsync(fd: number, datasync: boolean): Promise<void> {
    await this.ov.fsync(fd, datasync);
  }

  async fsyncdir(path: string, datasync: boolean): Promise<void> {
    await this.ov.fsyncdir(this.node(path), datasync);
  }

  async access(path: string, mode: number): Promise<void> {
    this.ov.access(this.node(path), mode);
  }

  async statfs(): Promise<ReturnType<Overlay['statfs']>> {
    return this.ov.statfs();
  }

  storedOwner(uid: number, gid: number): Owner {
    return this.ov.storedOwner(uid, gid);
  }
}
