/**
 * The on-disk overlay format shared with kernel overlayfs and fuse-overlayfs:
 * how whiteouts and opaque directories are recognised in a layer.
 */
import type { Stats } from 'node:fs';
import type { Stat } from '../sys/stat';

/** AUFS/OCI-style whiteout: `.wh.NAME` beside (or instead of) NAME hides NAME below. */
export const WHITEOUT_PREFIX = '.wh.';
/** AUFS/OCI-style opaque marker: this file inside a directory hides everything below it. */
export const OPAQUE_WHITEOUT = '.wh..wh..opq';
/** Kernel opaque markers; `user.` is what the kernel's `userxattr` mode (rootless) uses. */
export const OPAQUE_XATTRS = ['trusted.overlay.opaque', 'user.overlay.opaque'] as const;
/**
 * The overlay's own xattr namespaces: never shown through the mount, never set through it,
 * never copied up. fuse-overlayfs's own (`user.fuseoverlayfs.`: origins, owner and mode
 * overrides) too, as it hides them; and its privileged override, which it shows but which
 * would let anyone who may set it fake an owner.
 */
const PRIVATE_XATTR_PREFIXES = ['trusted.overlay.', 'user.overlay.', 'user.fuseoverlayfs.', 'security.fuseoverlayfs.'] as const;

const S_IFMT = 0o170000;
const S_IFCHR = 0o020000;

/** A kernel whiteout: a character device with device number 0/0. */
export function isWhiteoutStat(st: Pick<Stats, 'mode' | 'rdev'>): boolean {
  return (st.mode & S_IFMT) === S_IFCHR && st.rdev === 0;
}

/** The same test on what statx says. */
export function isWhiteout(st: Stat): boolean {
  return (st.mode & S_IFMT) === S_IFCHR && st.rdevMajor === 0 && st.rdevMinor === 0;
}

/** Names with the `.wh.` prefix are overlay metadata in any layer, never user files. */
export function isWhiteoutName(name: string): boolean {
  return name.startsWith(WHITEOUT_PREFIX);
}

/** The name a `.wh.NAME` file hides, or null for other names (and for the opaque marker). */
export function whiteoutTarget(name: string): string | null {
  if (!isWhiteoutName(name) || name === OPAQUE_WHITEOUT) return null;
  const target = name.slice(WHITEOUT_PREFIX.length);
  return target.length > 0 ? target : null;
}

/** The kernel accepts only "y" as an opaque value ("x" means something else). */
export function isOpaqueValue(value: Buffer | null): boolean {
  return value !== null && value.length === 1 && value[0] === 0x79;
}

export function isPrivateXattr(name: string): boolean {
  return PRIVATE_XATTR_PREFIXES.some((p) => name.startsWith(p));
}
