/**
 * An overlay inode: one entry of the merged tree, what it is made of (its topmost real file,
 * and for a directory the layers merged into it), the names it is known by, and what of it is
 * in use (open descriptors, the kernel's references).
 *
 * All names of one upper file are one node, as they are one inode in the kernel's overlay;
 * a lower file with several hard links is one node per name until copied up (the kernel's
 * overlay without an index breaks such links at copy-up, so it keeps them apart too).
 */
import type { Stat } from '../sys/stat';
import { layerPath, type Layer } from './layer';
import { emptyListing, readListing, type LayerListing } from './listing';

/** Bumped whenever a rename may have changed paths: cached paths of an older epoch are stale. */
let pathEpoch = 0;

export function pathsMoved(): void {
  pathEpoch++;
}

export interface NodeName {
  dir: OvlNode;
  name: string;
}

export class OvlNode {
  private childMap?: Map<string, OvlNode | null>;
  private loaded?: LayerListing[];
  /** Other names of the same file, beside parent/name (hard links in the upper layer). */
  otherNames: NodeName[] | null = null;
  /** No name is left in the merged tree (unlinked, removed, or renamed over). */
  removed = false;
  /** A copy-up in progress, which later writers wait for instead of starting their own. */
  copyUp?: Promise<void>;
  /**
   * Descriptors open on this node, each with its open flags while it reads the file in a
   * lower layer (null once it reads the upper file): a copy-up points those at the upper
   * copy, as the kernel's overlay reopens its real file, so reads through them see later
   * writes. Most nodes are never open: made when first needed.
   */
  private openFds: Map<number, number | null> | null = null;
  /** Where the data of a removed upper file that is still open waits (in the work directory). */
  detachedAt?: Buffer;
  /** What a removed upper entry with no data kept looked like, for whoever still asks. */
  lastStat?: Stat;
  /** The upper file this node is, as the tree's index of upper files knows it. */
  identity?: string;
  /** The kernel's node id for this node (0: none), and how many lookups it holds (kept by the server). */
  nodeId = 0;
  lookups = 0;
  private cachedPath = '';
  private cachedEpoch = -1;

  constructor(
    public name: string,
    public parent: OvlNode | null,
    /** Topmost layer holding the entry: where its attributes and data come from. */
    public layer: Layer,
    /** Directories only: the layers merged into it, top first, cut at an opaque one. */
    public dirLayers: readonly Layer[],
    /** File type bits (S_IFMT) of the entry. */
    public type: number,
    /** The inode number shown. */
    public ino: number,
  ) {}

  get isDir(): boolean {
    return this.dirLayers.length > 0;
  }

  /** Lookups done in this directory: a node, or null for a name known not to exist. */
  get children(): Map<string, OvlNode | null> {
    return (this.childMap ??= new Map());
  }

  /** A descriptor now open on this node; `lowerFlags` if it reads the file in a lower layer. */
  opened(fd: number, lowerFlags: number | null): void {
    (this.openFds ??= new Map()).set(fd, lowerFlags);
  }

  closed(fd: number): void {
    this.openFds?.delete(fd);
    if (this.openFds?.size === 0) this.openFds = null;
  }

  /** Descriptors open on this node. */
  get fds(): Iterable<number> {
    return this.openFds?.keys() ?? [];
  }

  get isOpen(): boolean {
    return this.openFds !== null;
  }

  /** The descriptors still reading the lower file, with their open flags; from now on they read the upper one. */
  takeLowerFds(): [number, number][] {
    const lower: [number, number][] = [];
    for (const [fd, flags] of this.openFds ?? []) {
      if (flags === null) continue;
      lower.push([fd, flags]);
      this.openFds!.set(fd, null);
    }
    return lower;
  }

  /** Relative overlay path (a byte string), '' for the root. */
  get path(): string {
    if (this.parent === null) return '';
    if (this.cachedEpoch === pathEpoch) return this.cachedPath;
    const parentPath = this.parent.path;
    this.cachedPath = parentPath === '' ? this.name : `${parentPath}/${this.name}`;
    this.cachedEpoch = pathEpoch;
    return this.cachedPath;
  }

  /** The real path of the entry in its topmost layer. */
  get realPath(): Buffer {
    return this.detachedAt ?? layerPath(this.layer, this.path);
  }

  /** A merged directory (contents from more than one layer) reports nlink 1, as the kernel does. */
  get isMergedDir(): boolean {
    return this.dirLayers.length > 1;
  }

  /** The listings of this directory's layers, read once. */
  listings(): LayerListing[] {
    if (!this.loaded) {
      const rel = this.path;
      this.loaded = this.dirLayers.map((l) => readListing(layerPath(l, rel)));
    }
    return this.loaded;
  }

  /** The upper layer's listing of this directory, once loaded (undefined if not in upper). */
  upperListing(): LayerListing | undefined {
    return this.dirLayers[0]?.upper ? this.loaded?.[0] : undefined;
  }

  /** After a copy-up of this directory: the upper layer now merges into it, on top. */
  prependUpper(upper: Layer): void {
    this.dirLayers = [upper, ...this.dirLayers];
    this.layer = upper;
    if (this.loaded) this.loaded = [emptyListing(), ...this.loaded];
  }

  /** Forgets what was read of this directory's layers (its layers changed). */
  dropListings(): void {
    this.loaded = undefined;
  }

  /** No ancestor (nor the node itself) was removed: it still has a place in the tree. */
  get attached(): boolean {
    for (let n: OvlNode | null = this; n !== null; n = n.parent) if (n.removed) return false;
    return true;
  }

  /** Every name of this node: parent/name first. */
  names(): NodeName[] {
    const first = this.parent ? [{ dir: this.parent, name: this.name }] : [];
    return this.otherNames ? [...first, ...this.otherNames] : first;
  }

  hasName(dir: OvlNode, name: string): boolean {
    if (this.parent === dir && this.name === name) return true;
    return this.otherNames?.some((n) => n.dir === dir && n.name === name) ?? false;
  }

  /** Adds a name (a new hard link, or one found by lookup). */
  addName(dir: OvlNode, name: string): void {
    if (this.hasName(dir, name)) return;
    if (this.removed) {
      this.parent = dir;
      this.name = name;
      this.removed = false;
      this.detachedAt = undefined;
      pathsMoved();
      return;
    }
    (this.otherNames ??= []).push({ dir, name });
  }

  /**
   * Drops one name; true if it was the last (the node is then removed, and keeps its last
   * parent and name so the path of a lower entry can still be built).
   */
  dropName(dir: OvlNode, name: string): boolean {
    if (this.parent === dir && this.name === name) {
      const next = this.otherNames?.shift();
      if (!next) {
        this.removed = true;
        return true;
      }
      this.parent = next.dir;
      this.name = next.name;
      if (this.otherNames?.length === 0) this.otherNames = null;
      pathsMoved();
      return false;
    }
    const i = this.otherNames?.findIndex((n) => n.dir === dir && n.name === name) ?? -1;
    if (i >= 0) this.otherNames!.splice(i, 1);
    if (this.otherNames?.length === 0) this.otherNames = null;
    return false;
  }

  /** Renames one of this node's names. */
  moveName(dir: OvlNode, name: string, toDir: OvlNode, toName: string): void {
    if (this.parent === dir && this.name === name) {
      this.parent = toDir;
      this.name = toName;
    } else {
      const other = this.otherNames?.find((n) => n.dir === dir && n.name === name);
      if (other) {
        other.dir = toDir;
        other.name = toName;
      }
    }
    pathsMoved();
  }
}
