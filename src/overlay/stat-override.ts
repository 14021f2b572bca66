/**
 * fuse-overlayfs's owner and mode overrides (`xattr_permissions=1|2`, and layers prepared by
 * containers/storage): an entry's owner and permission bits are kept in an xattr,
 * `UID:GID:MODE` (decimal ids, octal mode), instead of in the inode, so that an unprivileged
 * mounter can store any owner and a mode that would lock itself out.
 *
 * A layer keeps overrides when its root directory carries one of the xattrs below (checked in
 * this order, as fuse-overlayfs checks them); with xattr_permissions the upper layer does, in
 * the namespace chosen (1: security.*, needing privileges; 2: user.*). Entries of such a layer
 * are shown with the owner and mode of their xattr; new entries of the upper layer record
 * theirs there, and their real mode then lets the mounter in.
 */
import { chmodSync } from 'node:fs';
import { scanInt } from '../c-numbers';
import { errorFor, hasCode } from '../errors';
import type { PathArg } from '../sys/ffi';
import { lgetxattrOrNull, lsetxattr } from '../sys/libc';
import { lstatx } from '../sys/stat';
import { layerPath, type Layer } from './layer';

export const OVERRIDE_PRIVILEGED = 'security.fuseoverlayfs.override_stat';
export const OVERRIDE_CONTAINERS = 'user.containers.override_stat';
export const OVERRIDE_USER = 'user.fuseoverlayfs.override_stat';
const DETECTED = [OVERRIDE_PRIVILEGED, OVERRIDE_CONTAINERS, OVERRIDE_USER] as const;

/** xattr_permissions: 0 off, 1 security.*, 2 user.*. */
export type XattrPermissions = 0 | 1 | 2;

/** The stored owner and mode of an entry (ids before uid/gid mapping; mode with its type bits). */
export interface Attrs {
  readonly uid: number;
  readonly gid: number;
  readonly mode: number;
}

const S_IFMT = 0o170000;
const S_IFLNK = 0o120000;

/** `UID:GID:MODE` read as sscanf("%d:%d:%o") reads it; null where it does not match. */
export function parseOverride(text: string): Omit<Attrs, 'mode'> & { perms: number } | null {
  const m = /^(\s*[+-]?\d+):(\s*[+-]?\d+):\s*([+-]?[0-7]+)/.exec(text);
  if (!m) return null;
  return { uid: scanInt(m[1])! >>> 0, gid: scanInt(m[2])! >>> 0, perms: parseInt(m[3], 8) & 0o7777 };
}

export function formatOverride(a: Attrs): string {
  return `${a.uid}:${a.gid}:${a.mode.toString(8)}`;
}

/** The override xattr a layer's root announces, if any. */
function detect(layer: Layer): string | null {
  const root = layerPath(layer, '');
  return DETECTED.find((name) => {
    try {
      return lgetxattrOrNull(root, name) !== null;
    } catch (err) {
      // user.* xattrs need read permission, which an unprivileged mounter may lack on a lower root.
      if (hasCode(err, 'EACCES', 'EPERM')) return false;
      throw err;
    }
  }) ?? null;
}

/** The real mode of an entry whose mode lives in its override: the mounter may always enter. */
function backingMode(mode: number): number {
  // Set-id bits stay in the override only: the real file belongs to the mounter.
  return (mode & 0o1777) | 0o755;
}

export class StatOverrides {
  private constructor(
    /** The override xattr of each layer, by layer index (null: none). */
    private readonly names: readonly (string | null)[],
    /** Where new upper attributes are recorded (xattr_permissions), or null. */
    private readonly upperName: string | null,
  ) {}

  /**
   * Finds which layers keep overrides; with xattr_permissions, makes sure the upper root has
   * its own (taken from the first lower root that has one, else its real owner and mode), as
   * fuse-overlayfs does at mount.
   */
  static open(layers: readonly Layer[], xattrPermissions: XattrPermissions): StatOverrides {
    const names = layers.map(detect);
    const upper = layers[0]?.upper ? layers[0] : undefined;
    if (!upper || xattrPermissions === 0) return new StatOverrides(names, null);
    const name = xattrPermissions === 1 ? OVERRIDE_PRIVILEGED : OVERRIDE_USER;
    const root = layerPath(upper, '');
    if (lgetxattrOrNull(root, name) === null) lsetxattr(root, name, rootOverride(layers.slice(1), name, root));
    names[0] = name;
    return new StatOverrides(names, name);
  }

  static none(): StatOverrides {
    return new StatOverrides([], null);
  }

  /** Whether new upper attributes go to override xattrs. */
  get recording(): boolean {
    return this.upperName !== null;
  }

  /** The stored owner and mode of the entry at `path` in `layer`: its override where the layer keeps them. */
  stored(layer: Layer, path: PathArg, real: Attrs): Attrs {
    return this.override(layer, path, real.mode) ?? real;
  }

  /**
   * The owner and mode in the override of the entry at `path` (of type `realMode`'s), or null
   * where it has none. Its ids are stored ones even on an id-mapped mount, which maps no xattr.
   */
  override(layer: Layer, path: PathArg, realMode: number): Attrs | null {
    const name = this.names[layer.index];
    if (!name) return null;
    const value = lgetxattrOrNull(path, name);
    // An entry without one (made before the layer got overrides, or a symlink) shows its own.
    if (value === null) return null;
    const o = parseOverride(value.toString('latin1'));
    if (!o) throw errorFor('EINVAL', `${typeof path === 'string' ? path : path.toString('latin1')}: unreadable ${name}`);
    return { uid: o.uid, gid: o.gid, mode: (realMode & S_IFMT) | o.perms };
  }

  /**
   * Records new owner and mode of an upper entry in its override and gives it its backing
   * mode. Returns false where there is nothing to record them in (no xattr_permissions; a
   * user.* xattr on a symlink or special file, which Linux refuses): the caller then changes
   * the real ones, as fuse-overlayfs does for symlinks.
   */
  record(path: PathArg, attrs: Attrs): boolean {
    if (this.upperName === null) return false;
    const isLink = (attrs.mode & S_IFMT) === S_IFLNK;
    if (isLink) return false;
    try {
      lsetxattr(path, this.upperName, Buffer.from(formatOverride(attrs)));
    } catch (err) {
      if (this.upperName.startsWith('user.') && hasCode(err, 'EPERM')) return false;
      throw err;
    }
    // record() never gets a symlink, so chmod (which follows links) is safe here.
    chmodSync(path, backingMode(attrs.mode));
    return true;
  }

  /** The stored attributes of an upper entry as they are now (override or real). */
  current(upper: Layer, path: PathArg): Attrs {
    const st = lstatx(path);
    return this.stored(upper, path, { uid: st.uid, gid: st.gid, mode: st.mode });
  }
}

/** The upper root's first override: a lower root's (same name, or containers/storage's for user.*), else its real attributes. */
function rootOverride(lowers: readonly Layer[], name: string, upperRoot: Buffer): Buffer {
  const candidates = name === OVERRIDE_USER ? [name, OVERRIDE_CONTAINERS] : [name];
  for (const lower of lowers) {
    for (const candidate of candidates) {
      const value = lgetxattrOrNull(layerPath(lower, ''), candidate);
      if (value !== null) return value;
    }
  }
  const st = lstatx(upperRoot);
  return Buffer.from(formatOverride({ uid: st.uid, gid: st.gid, mode: st.mode }));
}
