/**
 * Every change to the merged tree, written to the upper layer in the kernel's format:
 * removing a name that a lower layer still holds leaves a whiteout (char 0/0), a directory
 * made where a whiteout stands is opaque, and entries replace whiteouts in one rename.
 *
 * The namespace steps are synchronous system calls, so each change is atomic with respect
 * to every other request this process serves; only copying file data waits.
 */
import {
  chmodSync, closeSync, constants as fsc, fchownSync, linkSync, lchownSync, lstatSync, mkdirSync, openSync, renameSync,
  existsSync, readdirSync, rmdirSync, rmSync, symlinkSync, truncateSync, unlinkSync, writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { errorFor, hasCode } from '../errors';
import { UTIME_NOW, UTIME_OMIT, type Timespec, lgetxattr, lremovexattr, lsetxattr, lutimens, mknod, renameat2, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, XATTR_CREATE, XATTR_REPLACE } from '../sys/libc';
import { copyUp, copyUpDirChain, type UpperContext } from './copy-up';
import { isPrivateXattr, isWhiteoutName, isWhiteoutStat, OPAQUE_WHITEOUT, WHITEOUT_PREFIX } from './format';
import { NO_ID } from './idmap';
import { layerPath } from './layer';
import type { Attrs } from './stat-override';
import type { TimeChange } from './overlay';
import { lowerPositive, type OvlNode } from './tree';

export interface WriteContext extends UpperContext {
  /** Where opaque markers are written: `trusted` as root, `user` unprivileged (the kernel's userxattr). */
  readonly xattrNamespace: 'trusted' | 'user';
  /**
   * How deletions are recorded: kernel whiteouts (char 0/0), or, where the kernel refuses
   * to make those (before Linux 5.8, unprivileged), `.wh.NAME` files as fuse-overlayfs does.
   */
  readonly whiteoutStyle: 'chardev' | 'aufs';
  /**
   * How directories are made opaque: the `overlay.opaque` xattr, or, where the upper
   * filesystem refuses that xattr, a `.wh..wh..opq` file inside, as fuse-overlayfs falls back.
   */
  readonly opaqueStyle: OpaqueStyle;
  /** New entries are given their creator's ids (the server may chown: root, here or in its user namespace). */
  readonly setOwners: boolean;
}

export type OpaqueStyle = 'xattr' | 'file';

type SetXattr = (path: string, name: string, value: Buffer) => void;

/** The opaque xattr's name in the namespace the upper layer is written in. */
function opaqueXattr(namespace: 'trusted' | 'user'): string {
  return `${namespace}.overlay.opaque`;
}

/**
 * Whether the upper filesystem takes the opaque xattr (probed once at mount, on a scratch
 * directory). It refuses with ENOTSUP/EOPNOTSUPP when it has no xattrs (of that namespace),
 * with EPERM when trusted.* needs privileges this process lacks.
 */
export function probeOpaqueStyle(scratch: string, namespace: 'trusted' | 'user', set: SetXattr = lsetxattr): OpaqueStyle {
  mkdirSync(scratch, { mode: 0o700 });
  try {
    set(scratch, opaqueXattr(namespace), Buffer.from('y'));
    return 'xattr';
  } catch (err) {
    if (hasCode(err, 'ENOTSUP', 'EOPNOTSUPP', 'EPERM')) return 'file';
    throw err;
  } finally {
    rmdirSync(scratch);
  }
}

/** Which whiteouts this process may make in `dir` (probed once at mount). */
export function probeWhiteoutStyle(scratch: string): 'chardev' | 'aufs' {
  try {
    makeWhiteout(scratch);
    unlinkSync(scratch);
    return 'chardev';
  } catch (err) {
    if (hasCode(err, 'EPERM', 'EOPNOTSUPP', 'ENOTSUP')) return 'aufs';
    throw err;
  }
}

const S_IFMT = 0o170000;
const S_IFCHR = 0o020000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_ISGID = 0o2000;

/** Gives a new upper entry its mode (type bits included): in its override where the upper keeps one, else for real. */
function giveMode(ctx: WriteContext, path: string, mode: number): void {
  if (ctx.overrides.recording) {
    const st = lstatSync(path);
    if (ctx.overrides.record(path, { uid: st.uid, gid: st.gid, mode })) return;
  }
  chmodSync(path, mode & 0o7777);
}

/** Changes the stored owner or mode of an upper entry in its override; false where it has none to change. */
function changeOverride(ctx: WriteContext, path: string, change: (current: Attrs) => Attrs): boolean {
  return ctx.overrides.recording && ctx.overrides.record(path, change(ctx.overrides.current(ctx.upper, path)));
}

/** Names starting `.wh.` are whiteouts to every layer reader: they cannot be made through the mount. */
export function checkNewName(name: string): void {
  if (isWhiteoutName(name)) throw errorFor('EINVAL', `${name}: names starting with .wh. are reserved`);
}

function upperPathOf(ctx: WriteContext, dir: OvlNode, name: string): string {
  const rel = dir.path === '' ? name : `${dir.path}/${name}`;
  return layerPath(ctx.upper, rel);
}

function isWhiteoutAt(path: string): boolean {
  try {
    return isWhiteoutStat(lstatSync(path));
  } catch (err) {
    if (hasCode(err, 'ENOENT')) return false;
    throw err;
  }
}

/** A kernel whiteout, owned like the kernel's (the mounter's ids, whatever the directory's group). */
function makeWhiteout(path: string): void {
  mknod(path, S_IFCHR, 0);
  lchownSync(path, process.getuid?.() ?? 0, process.getgid?.() ?? 0);
}

/** The AUFS-style whiteout of NAME in DIR's upper layer: an empty `.wh.NAME` file, mode 0. */
function makeAufsWhiteout(ctx: WriteContext, dir: OvlNode, name: string): void {
  try {
    writeFileSync(upperPathOf(ctx, dir, `${WHITEOUT_PREFIX}${name}`), '', { mode: 0, flag: 'wx' });
  } catch (err) {
    if (!hasCode(err, 'EEXIST')) throw err;
  }
}

function hasAufsWhiteout(ctx: WriteContext, dir: OvlNode, name: string): boolean {
  return existsSync(upperPathOf(ctx, dir, `${WHITEOUT_PREFIX}${name}`));
}

/**
 * Once NAME stands in DIR's upper layer, its `.wh.NAME` goes (as fuse-overlayfs does): left
 * there, the layer would both hold and delete NAME (an OCI layer diff would carry both).
 * Removed after NAME is in place, so a crash in between never shows the lower NAME again.
 */
function dropAufsWhiteout(ctx: WriteContext, dir: OvlNode, name: string): void {
  try {
    unlinkSync(upperPathOf(ctx, dir, `${WHITEOUT_PREFIX}${name}`));
  } catch (err) {
    if (!hasCode(err, 'ENOENT')) throw err;
  }
}

function setOpaque(ctx: WriteContext, path: string): void {
  if (ctx.opaqueStyle === 'xattr') lsetxattr(path, opaqueXattr(ctx.xattrNamespace), Buffer.from('y'));
  // fuse-overlayfs makes it 0700; it is never shown, only its name counts.
  else writeFileSync(join(path, OPAQUE_WHITEOUT), '', { mode: 0o700, flag: 'w' });
}

/** The listing cache of DIR's upper layer after NAME became `kind` there (or went). */
function noteUpper(dir: OvlNode, name: string, kind: 'dir' | 'other' | 'whiteout' | 'none'): void {
  const listing = dir.upperListing();
  dir.children.delete(name);
  if (!listing) return;
  listing.entries.delete(name);
  listing.whiteouts.delete(name);
  if (kind === 'dir' || kind === 'other') listing.entries.set(name, kind);
  else if (kind === 'whiteout') listing.whiteouts.add(name);
}

/** Who a new entry belongs to, in stored ids (the caller's, mapped back through the id mapping). */
export interface Owner {
  readonly uid: number;
  readonly gid: number;
}

/**
 * The ids to give a new entry, and where to build it. Made in place, an entry takes the
 * server's uid, and its gid, or the directory's in a set-group-ID directory (and a directory
 * its S_ISGID). An entry built in the work directory and renamed in (over a whiteout, or to
 * be given its owner before anyone sees it, as the kernel's is born with the caller's ids)
 * must be given those: `uid`/`gid` are what to chown it to (-1: leave).
 */
interface Placement {
  readonly elsewhere: boolean;
  readonly uid: number;
  readonly gid: number;
  readonly setgid: boolean;
}

function placementIn(ctx: WriteContext, parentPath: string, overWhiteout: boolean, owner: Owner | undefined): Placement {
  const st = lstatSync(parentPath);
  const setgid = (st.mode & S_ISGID) !== 0;
  if (!owner || !ctx.setOwners) {
    return { elsewhere: overWhiteout, uid: -1, gid: setgid && overWhiteout ? st.gid : -1, setgid };
  }
  const gid = setgid ? st.gid : owner.gid;
  const elsewhere = overWhiteout || owner.uid !== process.geteuid!() || gid !== (setgid ? st.gid : process.getegid!());
  return { elsewhere, uid: elsewhere ? owner.uid : -1, gid: elsewhere ? gid : -1, setgid };
}

/** Puts an entry built at `tmp` in the work directory at `target` (over a whiteout, or where nothing is). */
function moveIn(tmp: string, target: string, overWhiteout: boolean, isDir: boolean): void {
  if (overWhiteout && isDir) {
    // A directory cannot be renamed over a file: swap them, then drop the whiteout.
    renameat2(tmp, target, RENAME_EXCHANGE);
    unlinkSync(tmp);
  } else {
    renameat2(tmp, target, overWhiteout ? 0 : RENAME_NOREPLACE);
  }
}

/**
 * Makes a new non-directory NAME in DIR's upper layer with `make(path, uid, gid)`, which
 * chowns what it made to uid/gid (-1: leave): in place, or built in the work directory and
 * renamed into place in one step (over a whiteout, or to be given its owner first).
 */
function placeNew<T>(ctx: WriteContext, dir: OvlNode, name: string, owner: Owner | undefined, make: (path: string, uid: number, gid: number) => T): T {
  checkNewName(name);
  copyUpDirChain(ctx, dir);
  const target = upperPathOf(ctx, dir, name);
  const overWhiteout = isWhiteoutAt(target);
  const place = placementIn(ctx, upperPathOf(ctx, dir, ''), overWhiteout, owner);
  let result: T;
  if (place.elsewhere) {
    const tmp = ctx.work.temp();
    try {
      result = make(tmp, place.uid, place.gid);
      moveIn(tmp, target, overWhiteout, false);
    } catch (err) {
      rmSync(tmp, { force: true });
      throw err;
    }
  } else {
    result = make(target, -1, -1);
  }
  if (!overWhiteout) dropAufsWhiteout(ctx, dir, name);
  noteUpper(dir, name, 'other');
  return result;
}

/** Creates and opens a regular file; returns the descriptor. */
export function create(ctx: WriteContext, dir: OvlNode, name: string, mode: number, owner?: Owner): number {
  return placeNew(ctx, dir, name, owner, (path, uid, gid) => {
    const fd = openSync(path, fsc.O_RDWR | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
    try {
      // Before the mode: a chown clears S_ISUID and S_ISGID.
      if (uid !== -1 || gid !== -1) fchownSync(fd, uid, gid);
      // The kernel already applied the caller's umask; ours must not apply again.
      giveMode(ctx, path, S_IFREG | (mode & 0o7777));
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    return fd;
  });
}

export function mknodAt(ctx: WriteContext, dir: OvlNode, name: string, mode: number, rdev: number, owner?: Owner): void {
  // A char 0/0 device is a whiteout to every layer reader: made through the mount, it would
  // hide lower entries once the upper is a lower layer. The kernel refuses it (ovl_mknod).
  if (isWhiteoutStat({ mode, rdev })) throw errorFor('EPERM', `${name}: a char 0/0 device is a whiteout`);
  placeNew(ctx, dir, name, owner, (path, uid, gid) => {
    mknod(path, (mode & S_IFMT) | 0o600, rdev);
    if (uid !== -1 || gid !== -1) lchownSync(path, uid, gid);
    giveMode(ctx, path, mode);
  });
}

export function symlinkAt(ctx: WriteContext, dir: OvlNode, name: string, target: string, owner?: Owner): void {
  placeNew(ctx, dir, name, owner, (path, uid, gid) => {
    symlinkSync(target, path);
    if (uid !== -1 || gid !== -1) lchownSync(path, uid, gid);
  });
}

export async function linkAt(ctx: WriteContext, src: OvlNode, dir: OvlNode, name: string): Promise<void> {
  if (src.isDir) throw errorFor('EPERM', 'hard link to a directory');
  checkNewName(name);
  await copyUp(ctx, src);
  // A new name of the same inode: nothing to own.
  placeNew(ctx, dir, name, undefined, (path) => linkSync(src.realPath, path));
}

/** mkdir; where a whiteout stands the new directory is opaque, so what was deleted stays hidden. */
export function mkdirAt(ctx: WriteContext, dir: OvlNode, name: string, mode: number, owner?: Owner): void {
  checkNewName(name);
  copyUpDirChain(ctx, dir);
  const target = upperPathOf(ctx, dir, name);
  const overWhiteout = isWhiteoutAt(target);
  const aufsWhiteout = !overWhiteout && hasAufsWhiteout(ctx, dir, name);
  const place = placementIn(ctx, upperPathOf(ctx, dir, ''), overWhiteout, owner);
  // The VFS strips S_ISGID from the mode it passes; a set-group-ID parent gives it back.
  const finalMode = (mode & 0o7777) | (place.setgid ? S_ISGID : 0);
  if (place.elsewhere) {
    const tmp = ctx.work.temp();
    mkdirSync(tmp, { mode: 0o700 });
    try {
      if (place.uid !== -1 || place.gid !== -1) lchownSync(tmp, place.uid, place.gid);
      giveMode(ctx, tmp, S_IFDIR | finalMode);
      if (overWhiteout || aufsWhiteout) setOpaque(ctx, tmp);
      moveIn(tmp, target, overWhiteout, true);
    } catch (err) {
      rmSync(tmp, { recursive: true, force: true });
      throw err;
    }
  } else {
    mkdirSync(target, { mode: 0o700 });
    giveMode(ctx, target, S_IFDIR | finalMode);
    if (aufsWhiteout) setOpaque(ctx, target);
  }
  if (aufsWhiteout) dropAufsWhiteout(ctx, dir, name);
  noteUpper(dir, name, 'dir');
}

/** Takes an upper entry out of the way: into the work directory, then deleted. */
function discardUpper(ctx: WriteContext, path: string, isDir: boolean): void {
  if (!isDir) {
    unlinkSync(path);
    return;
  }
  // An upper directory may still hold whiteouts; move it out in one step, then empty it.
  const tmp = ctx.work.temp();
  renameSync(path, tmp);
  rmSync(tmp, { recursive: true, force: true });
}

/**
 * unlink and rmdir: NAME goes from the merged view, by a whiteout if a lower layer holds it.
 * With `keep`, a non-directory's upper file is not deleted but moved into the work
 * directory (an unlinked file that is still open); the return value says where its data
 * now is.
 */
export async function remove(ctx: WriteContext, dir: OvlNode, node: OvlNode, keep = false): Promise<string> {
  const name = node.name;
  const whiteout = await lowerPositive(dir, name);
  const target = upperPathOf(ctx, dir, name);
  let dataAt = node.realPath;
  const setAside = (): void => {
    dataAt = ctx.work.temp();
    renameSync(target, dataAt);
  };
  if (whiteout && ctx.whiteoutStyle === 'aufs') {
    if (node.layer.upper && keep && !node.isDir) setAside();
    else if (node.layer.upper) discardUpper(ctx, target, node.isDir);
    else copyUpDirChain(ctx, dir);
    makeAufsWhiteout(ctx, dir, name);
  } else if (node.layer.upper) {
    if (whiteout) {
      // The whiteout takes the entry's place in one step; the entry lands in the work dir.
      const tmp = ctx.work.temp();
      makeWhiteout(tmp);
      renameat2(tmp, target, RENAME_EXCHANGE);
      if (keep && !node.isDir) dataAt = tmp;
      else rmSync(tmp, { recursive: true, force: true });
    } else if (keep && !node.isDir) {
      setAside();
    } else {
      discardUpper(ctx, target, node.isDir);
    }
  } else {
    copyUpDirChain(ctx, dir);
    makeWhiteout(target);
  }
  node.removed = true;
  noteUpper(dir, name, whiteout ? 'whiteout' : 'none');
  dir.children.set(name, null);
  return dataAt;
}

/**
 * rename. Directories with content in a lower layer are refused with EXDEV, as the kernel
 * does without redirect_dir; `mv` then copies and deletes.
 */
/** A directory can move only if nothing of it lives in a lower layer (no redirect_dir). */
export function canMoveDir(node: OvlNode): boolean {
  return node.layer.upper && node.dirLayers.length === 1;
}

/**
 * rename, once the caller has checked it as the kernel does (types, then EXDEV for a
 * directory with lower content, which `mv` answers by copying, then ENOTEMPTY).
 */
export async function rename(ctx: WriteContext, src: OvlNode, dstDir: OvlNode, dstName: string, dst: OvlNode | null): Promise<void> {
  checkNewName(dstName);
  const srcDir = src.parent!;
  await copyUp(ctx, src);
  copyUpDirChain(ctx, dstDir);
  const srcWhiteout = await lowerPositive(srcDir, src.name);
  const from = src.realPath;
  const to = upperPathOf(ctx, dstDir, dstName);

  const existing = upperKind(to);
  if (src.isDir && existing === 'whiteout') {
    // A directory cannot replace a file: swap, and the whiteout lands where the source was.
    renameat2(from, to, RENAME_EXCHANGE);
    if (!srcWhiteout) unlinkSync(from);
  } else if (src.isDir && existing === 'dir' && !isEmptyDir(to)) {
    // The target is empty in the merged view but holds whiteouts: swap, then drop it.
    renameat2(from, to, RENAME_EXCHANGE);
    discardUpper(ctx, from, true);
    if (srcWhiteout) makeWhiteout(from);
  } else if (srcWhiteout && ctx.whiteoutStyle === 'aufs') {
    renameSync(from, to);
    makeAufsWhiteout(ctx, srcDir, src.name);
  } else if (srcWhiteout && existing === 'whiteout') {
    // As the kernel does: swap, so the target's whiteout becomes the source's (and keeps its owner).
    renameat2(from, to, RENAME_EXCHANGE);
  } else if (srcWhiteout) {
    // The filesystem makes this whiteout like any new entry (of a set-group-ID directory's
    // group), as it does for the kernel.
    renameWithWhiteout(from, to);
  } else {
    renameSync(from, to);
  }
  // As the kernel does: a directory moved into a merged directory is made opaque, so that
  // nothing of the same name below (now or in a later lower layer) merges into it.
  const opaqueNow = src.isDir && dstDir.isMergedDir;
  if (opaqueNow) setOpaque(ctx, to);
  if (existing === 'none') dropAufsWhiteout(ctx, dstDir, dstName);

  if (dst) dst.removed = true;
  noteUpper(srcDir, src.name, srcWhiteout ? 'whiteout' : 'none');
  srcDir.children.set(src.name, null);
  noteUpper(dstDir, dstName, src.isDir ? 'dir' : 'other');
  src.parent = dstDir;
  src.name = dstName;
  if (opaqueNow) src.dirLayers = [ctx.upper];
  dstDir.children.set(dstName, src);
}

function upperKind(path: string): 'none' | 'whiteout' | 'dir' | 'other' {
  try {
    const st = lstatSync(path);
    if (isWhiteoutStat(st)) return 'whiteout';
    return st.isDirectory() ? 'dir' : 'other';
  } catch (err) {
    if (hasCode(err, 'ENOENT')) return 'none';
    throw err;
  }
}

function isEmptyDir(path: string): boolean {
  return readdirSync(path).length === 0;
}

/** rename leaving a whiteout at the source, in one step where the filesystem can (RENAME_WHITEOUT). */
function renameWithWhiteout(from: string, to: string): void {
  try {
    renameat2(from, to, RENAME_WHITEOUT);
  } catch (err) {
    if (!hasCode(err, 'EINVAL', 'EPERM', 'ENOSYS')) throw err;
    renameSync(from, to);
    makeWhiteout(from);
  }
}

export async function truncate(ctx: WriteContext, node: OvlNode, size: number): Promise<void> {
  if (node.isDir) throw errorFor('EISDIR', node.path);
  await copyUp(ctx, node, { data: size > 0 });
  truncateSync(node.realPath, size);
}

export async function chmod(ctx: WriteContext, node: OvlNode, mode: number): Promise<void> {
  await copyUp(ctx, node);
  const perms = mode & 0o7777;
  if (changeOverride(ctx, node.realPath, (c) => ({ ...c, mode: (c.mode & S_IFMT) | perms }))) return;
  chmodSync(node.realPath, perms);
}

export async function chown(ctx: WriteContext, node: OvlNode, uid: number, gid: number): Promise<void> {
  await copyUp(ctx, node);
  // (uid_t)-1 leaves that id as it is.
  if (changeOverride(ctx, node.realPath, (c) => ({ ...c, uid: uid === NO_ID ? c.uid : uid, gid: gid === NO_ID ? c.gid : gid }))) return;
  lchownSync(node.realPath, uid === NO_ID ? -1 : uid, gid === NO_ID ? -1 : gid);
}

export async function utimens(ctx: WriteContext, node: OvlNode, atime: TimeChange, mtime: TimeChange): Promise<void> {
  await copyUp(ctx, node);
  lutimens(node.realPath, timespecOf(atime), timespecOf(mtime));
}

function timespecOf(t: TimeChange): Timespec {
  if (t === 'now') return { sec: 0, nsec: UTIME_NOW };
  if (t === 'omit') return { sec: 0, nsec: UTIME_OMIT };
  return { sec: Math.floor(t / 1000), nsec: Math.round((t % 1000) * 1e6) };
}

/** The overlay's own xattrs cannot be set or removed through the mount (as fuse-overlayfs). */
function checkXattrName(name: string): void {
  if (isPrivateXattr(name)) throw errorFor('EPERM', `${name} is reserved for the overlay`);
}

export async function setxattr(ctx: WriteContext, node: OvlNode, name: string, value: Buffer, flags: number): Promise<void> {
  checkXattrName(name);
  await copyUp(ctx, node);
  lsetxattr(node.realPath, name, value, flags & (XATTR_CREATE | XATTR_REPLACE));
}

export async function removexattr(ctx: WriteContext, node: OvlNode, name: string): Promise<void> {
  checkXattrName(name);
  // Removing what is not there fails without copying up, as in the kernel.
  if (!node.layer.upper) lgetxattr(node.realPath, name);
  await copyUp(ctx, node);
  lremovexattr(node.realPath, name);
}

/** Opening for writing copies up first; O_TRUNC spares copying data that would be dropped. */
export async function openForWrite(ctx: WriteContext, node: OvlNode, truncating: boolean): Promise<void> {
  await copyUp(ctx, node, { data: !truncating });
}
