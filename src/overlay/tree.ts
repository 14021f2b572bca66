/**
 * The merged tree: which layer(s) each name comes from, resolved the way kernel overlayfs
 * resolves it, and kept in memory so a name is resolved once per mount.
 *
 * Lookup of NAME in a merged directory walks the directory's layers top-down:
 *  - a whiteout for NAME (char 0/0 device or `.wh.NAME`) in a layer hides NAME below it;
 *  - the first non-directory found is the entry, and hides everything below it;
 *  - a directory merges with the directories of the same name below it, until a layer that
 *    holds a non-directory or a whiteout of that name, or until an opaque directory.
 * Lower layers never change while mounted; the upper one changes only through this module,
 * which keeps the cache in step.
 *
 * Every call here is synchronous: on a local filesystem a metadata call takes microseconds,
 * less than a trip through libuv's thread pool would add to it.
 */
import { errorFor } from '../errors';
import { lgetxattrOrNull } from '../sys/libc';
import { lstatx, lstatxOrNull, type Stat } from '../sys/stat';
import { isOpaqueValue, OPAQUE_WHITEOUT, OPAQUE_XATTRS } from './format';
import { InodeNumbers, originInoXattr, parseOriginIno } from './inodes';
import { childPath, layerPath, statInLayer, type Layer } from './layer';
import type { LayerListing } from './listing';
import { OvlNode } from './node';

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
/** The longest name a directory entry may have (NAME_MAX). */
const NAME_MAX = 255;

/** The real file an entry is: every name of one upper file has the same identity. */
export function identityOf(st: Stat): string {
  return `${st.dev}:${st.inoHigh}:${st.inoLow}`;
}

export class OverlayTree {
  readonly inodes: InodeNumbers;
  readonly root: OvlNode;
  /** Upper non-directories by identity, so that every name of one upper file is one node. */
  private readonly uppers = new Map<string, OvlNode>();
  private watcher: ((node: OvlNode) => void) | null = null;

  constructor(readonly layers: readonly Layer[], private readonly namespace: 'trusted' | 'user' = 'trusted') {
    this.inodes = new InodeNumbers(layers.map((l) => l.dev));
    const top = layers[0];
    const st = lstatx(layerPath(top, ''));
    // As in the kernel, the root merges every layer: an opaque mark on a layer root is ignored.
    this.root = new OvlNode('', null, top, layers, st.mode & S_IFMT, this.shownIno(top, layerPath(top, ''), st));
  }

  /** The node of NAME in DIR, or null; resolved at most once (kept in DIR's children). */
  child(dir: OvlNode, name: string): OvlNode | null {
    const known = dir.children.get(name);
    if (known !== undefined) return known;
    if (name.length > NAME_MAX) throw errorFor('ENAMETOOLONG', name);
    const node = this.lookupChild(dir, name);
    dir.children.set(name, node);
    return node;
  }

  /** Resolves a path ('/', '/a/b'; a byte string); ENOENT where any component is missing or hidden. */
  resolve(path: string): OvlNode {
    let node = this.root;
    for (const name of path.split('/')) {
      if (name === '') continue;
      if (!node.isDir) throw errorFor('ENOTDIR', path);
      const next = this.child(node, name);
      if (next === null) throw errorFor('ENOENT', path);
      node = next;
    }
    return node;
  }

  /** The number an entry shows: one recorded at its copy-up, else its real inode's. */
  shownIno(layer: Layer, real: Buffer, st: Stat): number {
    if (layer.upper) {
      const recorded = parseOriginIno(readQuietly(real, originInoXattr(this.namespace)));
      if (recorded !== null) return recorded;
    }
    return this.inodes.of(st);
  }

  /** Registers the upper file a node now is (made, or copied up). */
  upperIs(node: OvlNode, st: Stat): void {
    if (node.isDir) return;
    node.identity = identityOf(st);
    this.uppers.set(node.identity, node);
  }

  /**
   * `watcher` hears of every node whose attributes change other than by an operation on the
   * node itself (a copy-up: its own, or a child's in it), for whoever keeps those attributes.
   */
  watch(watcher: (node: OvlNode) => void): void {
    this.watcher = watcher;
  }

  /** See watch(). */
  attributesChanged(node: OvlNode): void {
    this.watcher?.(node);
  }

  /** The upper file of a node is gone: its inode number may be a new file's soon. */
  upperGone(node: OvlNode): void {
    if (node.identity !== undefined && this.uppers.get(node.identity) === node) this.uppers.delete(node.identity);
    node.identity = undefined;
  }

  /** The kernel's lookup rule for NAME in a merged directory (see the top of this file). */
  private lookupChild(dir: OvlNode, name: string): OvlNode | null {
    const found = layersHolding(dir.dirLayers, dir.listings(), name, 0);
    if (found.length === 0) return null;
    const top = found[0];
    const rel = dir.path === '' ? name : `${dir.path}/${name}`;
    // The listing said it was there; if it is not, a layer changed under the mount.
    const st = statInLayer(top, rel);
    if (st === null) return null;
    const real = layerPath(top, rel);
    const type = st.mode & S_IFMT;
    if (type !== S_IFDIR && top.upper) {
      const same = this.uppers.get(identityOf(st));
      if (same) {
        same.addName(dir, name);
        return same;
      }
    }
    const dirLayers = type === S_IFDIR ? cutAtOpaque(found, rel) : [];
    const node = new OvlNode(name, dir, top, dirLayers, type, this.shownIno(top, real, st));
    if (top.upper) this.upperIs(node, st);
    return node;
  }
}

function readQuietly(path: Buffer, name: string): Buffer | null {
  try {
    return lgetxattrOrNull(path, name);
  } catch {
    // A symlink refuses user.* xattrs, an unreadable entry any: either way none was recorded.
    return null;
  }
}

/** Keeps the layers down to and including the first opaque directory. */
function cutAtOpaque(layers: readonly Layer[], rel: string): Layer[] {
  const kept: Layer[] = [];
  for (const layer of layers) {
    kept.push(layer);
    if (kept.length === layers.length) break;
    if (isOpaqueDir(layerPath(layer, rel))) break;
  }
  return kept;
}

/**
 * Whether NAME would be visible in DIR from its lower layers alone: then removing it from the
 * upper layer must leave a whiteout, and a directory put there must be opaque.
 */
export function lowerPositive(dir: OvlNode, name: string): boolean {
  const first = dir.dirLayers[0]?.upper ? 1 : 0;
  return layersHolding(dir.dirLayers, dir.listings(), name, first).length > 0;
}

/** The layers, from `first` down, that make up NAME: one for a non-directory, several for a merged one. */
function layersHolding(layers: readonly Layer[], listings: readonly LayerListing[], name: string, first: number): Layer[] {
  const found: Layer[] = [];
  for (let i = first; i < layers.length; i++) {
    const listing = listings[i];
    const kind = listing.entries.get(name);
    if (kind === undefined) {
      if (listing.whiteouts.has(name)) break;
      continue;
    }
    if (kind === 'other') {
      if (found.length === 0) found.push(layers[i]);
      break;
    }
    found.push(layers[i]);
    if (listing.whiteouts.has(name)) break;
  }
  return found;
}

/** Marked opaque by xattr (trusted or user namespace) or by an AUFS `.wh..wh..opq` file. */
export function isOpaqueDir(dir: Buffer): boolean {
  for (const name of OPAQUE_XATTRS) {
    if (isOpaqueValue(lgetxattrOrNull(dir, name))) return true;
  }
  return lstatxOrNull(childPath(dir, OPAQUE_WHITEOUT)) !== null;
}
