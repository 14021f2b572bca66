/**
 * The overlay filesystem's operations on overlay paths, independent of FUSE: each returns
 * plain data or throws an error carrying an errno (OvlError or Node's own).
 */
import { constants as fsc, lstatSync, readlinkSync, promises as fsp } from 'node:fs';
import { read as fsRead, close as fsClose, open as fsOpen } from 'node:fs';
import { errorFor } from '../errors';
import { lgetxattr, llistxattr } from '../sys/libc';
import { isPrivateXattr } from './format';
import { openLayers, type Layer } from './layer';
import { OverlayTree, type OvlNode } from './tree';

export interface OverlayConfig {
  /** Lower directories, top first (absolute paths). */
  readonly lowers: readonly string[];
  /** Upper directory; without it the overlay is read-only. */
  readonly upper?: string;
  /** Work directory, on the same filesystem as upper. */
  readonly work?: string;
}

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
/** Flags passed on when opening a layer file; creation and truncation are the overlay's business. */
const PASSED_OPEN_FLAGS = fsc.O_WRONLY | fsc.O_RDWR | fsc.O_APPEND | fsc.O_NONBLOCK | fsc.O_SYNC | fsc.O_DSYNC;

export class Overlay {
  private constructor(
    readonly config: OverlayConfig,
    readonly layers: readonly Layer[],
    readonly tree: OverlayTree,
  ) {}

  static async open(config: OverlayConfig): Promise<Overlay> {
    const layers = await openLayers(config.lowers, config.upper);
    const tree = new OverlayTree(layers);
    await tree.root();
    return new Overlay(config, layers, tree);
  }

  get readOnly(): boolean {
    return this.config.upper === undefined;
  }

  async getattr(path: string): Promise<OvlStat> {
    const node = await this.tree.resolve(path);
    return this.statOf(node);
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
    const node = await this.tree.resolve(path);
    return readlinkSync(node.realPath);
  }

  /** Opens a file for I/O and returns its descriptor, used as the FUSE file handle. */
  async open(path: string, flags: number): Promise<number> {
    const node = await this.tree.resolve(path);
    const writing = (flags & ACCESS_WRITE_FLAGS) !== 0 || (flags & fsc.O_TRUNC) !== 0;
    // Writing through the mount (copy-up and the mutating operations) is not there yet.
    if (writing) throw errorFor('EROFS', path);
    return new Promise((resolve, reject) => {
      fsOpen(node.realPath, (flags & PASSED_OPEN_FLAGS) | fsc.O_NOFOLLOW, (err, fd) => (err ? reject(err) : resolve(fd)));
    });
  }

  read(fd: number, buf: Buffer, length: number, position: number): Promise<number> {
    return new Promise((resolve, reject) => {
      fsRead(fd, buf, 0, length, position, (err, n) => (err ? reject(err) : resolve(n)));
    });
  }

  release(fd: number): Promise<void> {
    return new Promise((resolve, reject) => fsClose(fd, (err) => (err ? reject(err) : resolve())));
  }

  async getxattr(path: string, name: string): Promise<Buffer> {
    const node = await this.tree.resolve(path);
    if (isPrivateXattr(name)) throw errorFor('ENODATA', name);
    return lgetxattr(node.realPath, name);
  }

  async listxattr(path: string): Promise<string[]> {
    const node = await this.tree.resolve(path);
    return llistxattr(node.realPath).filter((name) => !isPrivateXattr(name));
  }

  async access(path: string, mode: number): Promise<void> {
    await this.tree.resolve(path);
    if ((mode & W_OK) !== 0) throw errorFor('EROFS', path);
  }

  /** Every change through the mount, until copy-up and the write path exist. */
  async refuseWrite(path: string): Promise<void> {
    throw errorFor('EROFS', path);
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
    const st = lstatSync(node.realPath);
    return {
      mode: st.mode,
      uid: st.uid,
      gid: st.gid,
      size: st.size,
      nlink: node.isMergedDir ? 1 : st.nlink,
      ino: node.ino,
      rdev: st.rdev,
      blksize: st.blksize,
      blocks: st.blocks,
      atimeMs: st.atimeMs,
      mtimeMs: st.mtimeMs,
      ctimeMs: st.ctimeMs,
    };
  }
}
