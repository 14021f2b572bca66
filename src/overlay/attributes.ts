/**
 * Changes to an entry's attributes and xattrs: the entry is copied up first (a lower file's
 * data only where it is kept), then the change is made on the upper copy, in the order the
 * kernel's own setattr makes them: owner (which drops set-id bits and file capabilities),
 * mode, size, times.
 */
import { chmodSync, ftruncateSync, lchownSync, truncateSync } from 'node:fs';
import { errorFor } from '../errors';
import { lgetxattr, lremovexattr, lsetxattr, lutimens, UTIME_NOW, UTIME_OMIT, XATTR_CREATE, XATTR_REPLACE, type Timespec } from '../sys/libc';
import { copyUp } from './copy-up';
import { isPrivateXattr } from './format';
import { NO_ID } from './idmap';
import type { OvlNode } from './node';
import type { Attrs } from './stat-override';
import type { WriteContext } from './writes';

const S_IFMT = 0o170000;

/** A new time, the current time, or no change. */
export type TimeChange = Timespec | 'now' | 'omit';

/** What a setattr changes; absent fields stay. Ids are stored ones; NO_ID leaves that id. */
export interface AttrChanges {
  readonly mode?: number;
  readonly uid?: number;
  readonly gid?: number;
  readonly size?: number;
  readonly atime?: TimeChange;
  readonly mtime?: TimeChange;
}

/** Runs `then` after the copy-up: at once when it was done at once. */
function afterCopyUp<T>(copying: void | Promise<void>, then: () => T): T | Promise<T> {
  return copying ? copying.then(then) : then();
}

/**
 * Applies `changes`; `fd` is a descriptor open for writing on the entry, if the change came
 * through one (ftruncate).
 */
export function setattr(ctx: WriteContext, node: OvlNode, changes: AttrChanges, fd?: number): void | Promise<void> {
  if (changes.size !== undefined && node.isDir) throw errorFor('EISDIR', node.path);
  // Truncating to nothing, and changing nothing else, needs none of the data below.
  const onlyEmptied = changes.size === 0 && changes.mode === undefined && changes.uid === undefined && changes.gid === undefined && changes.atime === undefined && changes.mtime === undefined;
  return afterCopyUp(copyUp(ctx, node, { data: !onlyEmptied }), () => apply(ctx, node, changes, fd));
}

function apply(ctx: WriteContext, node: OvlNode, c: AttrChanges, fd?: number): void {
  const path = node.realPath;
  if (c.uid !== undefined || c.gid !== undefined) {
    const uid = c.uid ?? NO_ID;
    const gid = c.gid ?? NO_ID;
    if (!changeOverride(ctx, path, (o) => ({ ...o, uid: uid === NO_ID ? o.uid : uid, gid: gid === NO_ID ? o.gid : gid }))) {
      lchownSync(path, uid === NO_ID ? -1 : uid, gid === NO_ID ? -1 : gid);
    }
  }
  if (c.mode !== undefined) {
    const perms = c.mode & 0o7777;
    if (!changeOverride(ctx, path, (o) => ({ ...o, mode: (o.mode & S_IFMT) | perms }))) chmodSync(path, perms);
  }
  if (c.size !== undefined) {
    if (fd !== undefined) ftruncateSync(fd, c.size);
    else truncateSync(path, c.size);
  }
  if (c.atime !== undefined || c.mtime !== undefined) lutimens(path, timespecOf(c.atime ?? 'omit'), timespecOf(c.mtime ?? 'omit'));
}

/** Changes the stored owner or mode of an upper entry in its override; false where it has none to change. */
function changeOverride(ctx: WriteContext, path: Buffer, change: (current: Attrs) => Attrs): boolean {
  return ctx.overrides.recording && ctx.overrides.record(path, change(ctx.overrides.current(ctx.upper, path)));
}

function timespecOf(t: TimeChange): Timespec {
  if (t === 'now') return { sec: 0, nsec: UTIME_NOW };
  if (t === 'omit') return { sec: 0, nsec: UTIME_OMIT };
  return t;
}

/** The overlay's own xattrs cannot be set or removed through the mount (as fuse-overlayfs). */
function checkXattrName(name: string): void {
  if (isPrivateXattr(name)) throw errorFor('EPERM', `${name} is reserved for the overlay`);
}

export function setxattr(ctx: WriteContext, node: OvlNode, name: string, value: Buffer, flags: number): void | Promise<void> {
  checkXattrName(name);
  return afterCopyUp(copyUp(ctx, node), () => lsetxattr(node.realPath, name, value, flags & (XATTR_CREATE | XATTR_REPLACE)));
}

export function removexattr(ctx: WriteContext, node: OvlNode, name: string): void | Promise<void> {
  checkXattrName(name);
  // Removing what is not there fails without copying up, as in the kernel.
  if (!node.layer.upper) lgetxattr(node.realPath, name);
  return afterCopyUp(copyUp(ctx, node), () => lremovexattr(node.realPath, name));
}
