/**
 * Every change to the names of the merged tree, written to the upper layer in the kernel's
 * format: removing a name that a lower layer still holds leaves a whiteout (char 0/0), a
 * directory made where a whiteout stands is opaque, and entries replace whiteouts in one
 * rename.
 *
 * The namespace steps are synchronous system calls, so each change is atomic with respect
 * to every other request this process serves; only copying file data waits.
 */
import {
  chmodSync, closeSync, constants as fsc, fchownSync, linkSync, lchownSync, mkdirSync, openSync, renameSync,
  readdirSync, rmdirSync, rmSync, symlinkSync, unlinkSync, writeFileSync,
} from 'node:fs';
import { errorFor, hasCode } from '../errors';
import { lsetxattr, mknod, renameat2, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT } from '../sys/libc';
import { lstatx, lstatxOrNull, type Stat } from '../sys/stat';
import { copyUpDirChain, type UpperContext } from './copy-up';
import { isWhiteout, isWhiteoutName, OPAQUE_WHITEOUT, WHITEOUT_PREFIX } from './format';
import { childPath, layerPath } from './layer';
import { pathsMoved, type OvlNode } from './node';
import { lowerPositive } from './tree';

export interface WriteContext extends UpperContext {
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

/** A path in a layer or the work directory: bytes, or a plain string for names of our own. */
type RealPath = Buffer | string;

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
/** Flags of an open(2) that are passed on to the layer file; creation is the overlay's business. */
export const PASSED_OPEN_FLAGS = fsc.O_WRONLY | fsc.O_RDWR | fsc.O_APPEND | fsc.O_NONBLOCK | fsc.O_SYNC | fsc.O_DSYNC | fsc.O_TRUNC | fsc.O_NOATIME;

/** Gives a new upper entry its mode (type bits included): in its override where the upper keeps one, else for real. */
function giveMode(ctx: WriteContext, path: RealPath, mode: number): void {
  if (ctx.overrides.recording) {
    const st = lstatx(path);
    if (ctx.overrides.record(path, { uid: st.uid, gid: st.gid, mode })) return;
  }
  chmodSync(path, mode & 0o7777);
}

/** Names starting `.wh.` are whiteouts to every layer reader: they cannot be made through the mount. */
export function checkNewName(name: string): void {
  if (isWhiteoutName(name)) throw errorFor('EINVAL', `${name}: names starting with .wh. are reserved`);
}

export function upperPathOf(ctx: WriteContext, dir: OvlNode, name: string): Buffer {
  const rel = dir.path === '' ? name : `${dir.path}/${name}`;
  return layerPath(ctx.upper, rel);
}

function isWhiteoutAt(path: Buffer): boolean {
  const st = lstatxOrNull(path);
  return st !== null && isWhiteout(st);
}

/** A kernel whiteout, owned like the kernel's (the mounter's ids, whatever the directory's group). */
function makeWhiteout(path: RealPath): void {
  mknod(path, S_IFCHR, 0);
  lchownSync(path, process.getuid?.() ?? 0, process.getgid?.() ?? 0);
}

/** The longest name a directory entry may have (NAME_MAX). */
const NAME_MAX = 255;

/** `.wh.NAME`, or null where that is longer than any name can be (so no such file exists). */
function aufsWhiteoutName(name: string): string | null {
  return WHITEOUT_PREFIX.length + name.length > NAME_MAX ? null : `${WHITEOUT_PREFIX}${name}`;
}

/** The AUFS-style whiteout of NAME in DIR's upper layer: an empty `.wh.NAME` file, mode 0. */
function makeAufsWhiteout(ctx: WriteContext, dir: OvlNode, name: string): void {
  const wh = aufsWhiteoutName(name);
  if (wh === null) throw errorFor('ENAMETOOLONG', `${WHITEOUT_PREFIX}${name}`);
  try {
    writeFileSync(upperPathOf(ctx, dir, wh), '', { mode: 0, flag: 'wx' });
  } catch (err) {
    if (!hasCode(err, 'EEXIST')) throw err;
  }
}

function hasAufsWhiteout(ctx: WriteContext, dir: OvlNode, name: string): boolean {
  const wh = aufsWhiteoutName(name);
  return wh !== null && lstatxOrNull(upperPathOf(ctx, dir, wh)) !== null;
}

/**
 * Once NAME stands in DIR's upper layer, its `.wh.NAME` goes (as fuse-overlayfs does): left
 * there, the layer would both hold and delete NAME (an OCI layer diff would carry both).
 * Removed after NAME is in place, so a crash in between never shows the lower NAME again.
 */
function dropAufsWhiteout(ctx: WriteContext, dir: OvlNode, name: string): void {
  const wh = aufsWhiteoutName(name);
  if (wh === null) return;
  try {
    unlinkSync(upperPathOf(ctx, dir, wh));
  } catch (err) {
    if (!hasCode(err, 'ENOENT')) throw err;
  }
}

function setOpaque(ctx: WriteContext, path: RealPath): void {
  if (ctx.opaqueStyle === 'xattr') lsetxattr(path, opaqueXattr(ctx.xattrNamespace), Buffer.from('y'));
  // fuse-overlayfs makes it 0700; it is never shown, only its name counts.
  else writeFileSync(childPath(typeof path === 'string' ? Buffer.from(path, 'latin1') : path, OPAQUE_WHITEOUT), '', { mode: 0o700, flag: 'w' });
}

/** The listing cache of DIR's upper layer after NAME became `kind` there (or went). */
function noteUpper(dir: OvlNode, name: string, kind: 'dir' | 'other' | 'whiteout' | 'none'): void {
  const listing = dir.upperListing();
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

function placementIn(ctx: WriteContext, parentPath: Buffer, overWhiteout: boolean, owner: Owner | undefined): Placement {
  const st = lstatx(parentPath);
  const setgid = (st.mode & S_ISGID) !== 0;
  if (!owner || !ctx.setOwners) {
    return { elsewhere: overWhiteout, uid: -1, gid: setgid && overWhiteout ? st.gid : -1, setgid };
  }
  const gid = setgid ? st.gid : owner.gid;
  const elsewhere = overWhiteout || owner.uid !== process.geteuid!() || gid !== (setgid ? st.gid : process.getegid!());
  return { elsewhere, uid: elsewhere ? owner.uid : -1, gid: elsewhere ? gid : -1, setgid };
}

/** Puts an entry built at `tmp` in the work directory at `target` (over a whiteout, or where nothing is). */
function moveIn(tmp: string, target: Buffer, overWhiteout: boolean, isDir: boolean): void {
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
function placeNew<T>(ctx: WriteContext, dir: OvlNode, name: string, owner: Owner | undefined, make: (path: RealPath, uid: number, gid: number) => T): T {
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
  dir.children.delete(name);
  return result;
}

/** Creates and opens a regular file with the caller's open flags; returns the descriptor. */
export function create(ctx: WriteContext, dir: OvlNode, name: string, mode: number, flags: number, owner?: Owner): number {
  return placeNew(ctx, dir, name, owner, (path, uid, gid) => {
    const fd = openSync(path, (flags & PASSED_OPEN_FLAGS & ~fsc.O_TRUNC) | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
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

/** mknod; `rdev` as glibc's dev_t. */
export function mknodAt(ctx: WriteContext, dir: OvlNode, name: string, mode: number, rdev: number, owner?: Owner): void {
  // A char 0/0 device is a whiteout to every layer reader: made through the mount, it would
  // hide lower entries once the upper is a lower layer. The kernel refuses it (ovl_mknod).
  if ((mode & S_IFMT) === S_IFCHR && rdev === 0) throw errorFor('EPERM', `${name}: a char 0/0 device is a whiteout`);
  placeNew(ctx, dir, name, owner, (path, uid, gid) => {
    mknod(path, (mode & S_IFMT) | 0o600, rdev);
    if (uid !== -1 || gid !== -1) lchownSync(path, uid, gid);
    giveMode(ctx, path, mode);
  });
}

export function symlinkAt(ctx: WriteContext, dir: OvlNode, name: string, target: Buffer, owner?: Owner): void {
  placeNew(ctx, dir, name, owner, (path, uid, gid) => {
    symlinkSync(target, path);
    if (uid !== -1 || gid !== -1) lchownSync(path, uid, gid);
  });
}

/** A new name for an upper file (copy it up first): the same node, by one more name. */
export function linkAt(ctx: WriteContext, src: OvlNode, dir: OvlNode, name: string): void {
  if (src.isDir) throw errorFor('EPERM', 'hard link to a directory');
  if (!src.layer.upper) throw errorFor('EIO', 'link source not copied up');
  // A new name of the same inode: nothing to own.
  placeNew(ctx, dir, name, undefined, (path) => linkSync(src.realPath, path));
  src.addName(dir, name);
  dir.children.set(name, src);
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
    try {
      giveMode(ctx, target, S_IFDIR | finalMode);
      if (aufsWhiteout) setOpaque(ctx, target);
    } catch (err) {
      rmSync(target, { recursive: true, force: true });
      throw err;
    }
  }
  if (aufsWhiteout) dropAufsWhiteout(ctx, dir, name);
  noteUpper(dir, name, 'dir');
  dir.children.delete(name);
}

/** Takes an upper entry out of the way: into the work directory, then deleted. */
function discardUpper(ctx: WriteContext, path: RealPath, isDir: boolean): void {
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
 * What happens to a node's upper file when NAME, one of its names, goes: nothing more if the
 * file keeps other names; a file still open keeps its data by a name in the work directory
 * (`keepAt`); anything else goes, and what it looked like is kept for whoever still asks.
 */
interface Departure {
  readonly last: boolean;
  readonly keepAt: string | null;
  readonly before: Stat | null;
}

function departureOf(ctx: WriteContext, node: OvlNode, path: Buffer): Departure {
  if (!node.layer.upper) return { last: node.names().length === 1, keepAt: null, before: null };
  const before = lstatx(path);
  const last = node.names().length === 1 && (node.isDir || before.nlink <= 1);
  const keepAt = last && !node.isDir && node.isOpen ? ctx.work.temp() : null;
  // A second name in the work directory keeps the inode alive whatever the upper does next.
  if (keepAt !== null) linkSync(path, keepAt);
  return { last, keepAt, before };
}

/** Records in the node that NAME in DIR is gone (see Departure). */
function depart(ctx: WriteContext, node: OvlNode, dir: OvlNode, name: string, d: Departure): void {
  node.dropName(dir, name);
  if (!d.last || !node.layer.upper) return;
  if (d.keepAt !== null) {
    node.detachedAt = Buffer.from(d.keepAt);
  } else if (d.before) {
    node.lastStat = { ...d.before, nlink: 0 };
    ctx.tree.upperGone(node);
  }
}

/**
 * unlink and rmdir: NAME goes from the merged view, by a whiteout if a lower layer holds it.
 * A file still open keeps its data (see Departure).
 */
export function remove(ctx: WriteContext, dir: OvlNode, name: string, node: OvlNode): void {
  const whiteout = lowerPositive(dir, name);
  const target = upperPathOf(ctx, dir, name);
  const d = departureOf(ctx, node, target);
  try {
    if (whiteout && ctx.whiteoutStyle === 'aufs') {
      if (node.layer.upper) discardUpper(ctx, target, node.isDir);
      else copyUpDirChain(ctx, dir);
      makeAufsWhiteout(ctx, dir, name);
    } else if (node.layer.upper) {
      if (whiteout) {
        // The whiteout takes the entry's place in one step; the entry lands in the work dir.
        const tmp = ctx.work.temp();
        makeWhiteout(tmp);
        renameat2(tmp, target, RENAME_EXCHANGE);
        rmSync(tmp, { recursive: true, force: true });
      } else {
        discardUpper(ctx, target, node.isDir);
      }
    } else {
      copyUpDirChain(ctx, dir);
      makeWhiteout(target);
    }
  } catch (err) {
    if (d.keepAt !== null) rmSync(d.keepAt, { force: true });
    throw err;
  }
  depart(ctx, node, dir, name, d);
  noteUpper(dir, name, whiteout ? 'whiteout' : 'none');
  dir.children.set(name, null);
}

/** A directory can move only if nothing of it lives in a lower layer (no redirect_dir). */
export function canMoveDir(node: OvlNode): boolean {
  return node.layer.upper && node.dirLayers.length === 1;
}

/**
 * rename, once the caller has checked it as the kernel does (types, then EXDEV for a
 * directory with lower content, which `mv` answers by copying, then ENOTEMPTY), and copied
 * the source up.
 */
export function rename(ctx: WriteContext, srcDir: OvlNode, srcName: string, src: OvlNode, dstDir: OvlNode, dstName: string, dst: OvlNode | null): void {
  checkNewName(dstName);
  copyUpDirChain(ctx, dstDir);
  const srcWhiteout = lowerPositive(srcDir, srcName);
  const from = upperPathOf(ctx, srcDir, srcName);
  const to = upperPathOf(ctx, dstDir, dstName);
  const existing = upperKind(to);
  const replaced = dst && existing !== 'none' && existing !== 'whiteout' ? departureOf(ctx, dst, to) : null;
  try {
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
      makeAufsWhiteout(ctx, srcDir, srcName);
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
  } catch (err) {
    if (replaced?.keepAt) rmSync(replaced.keepAt, { force: true });
    throw err;
  }
  // As the kernel does: a directory moved into a merged directory is made opaque, so that
  // nothing of the same name below (now or in a later lower layer) merges into it.
  const opaqueNow = src.isDir && dstDir.isMergedDir;
  if (opaqueNow) setOpaque(ctx, to);
  if (existing === 'none') dropAufsWhiteout(ctx, dstDir, dstName);

  if (dst && replaced) depart(ctx, dst, dstDir, dstName, replaced);
  else if (dst) dst.dropName(dstDir, dstName);
  noteUpper(srcDir, srcName, srcWhiteout ? 'whiteout' : 'none');
  noteUpper(dstDir, dstName, src.isDir ? 'dir' : 'other');
  src.moveName(srcDir, srcName, dstDir, dstName);
  if (opaqueNow) src.dirLayers = [ctx.upper];
  srcDir.children.set(srcName, null);
  dstDir.children.set(dstName, src);
}

/**
 * RENAME_EXCHANGE of two entries, both already copied up (the caller checked that neither is
 * a directory with lower content). Both names stay taken, so no whiteout is needed; a
 * directory that lands in a merged directory is made opaque, as the kernel does.
 */
export function exchange(ctx: WriteContext, aDir: OvlNode, aName: string, a: OvlNode, bDir: OvlNode, bName: string, b: OvlNode): void {
  checkNewName(aName);
  checkNewName(bName);
  const aPath = upperPathOf(ctx, aDir, aName);
  const bPath = upperPathOf(ctx, bDir, bName);
  renameat2(aPath, bPath, RENAME_EXCHANGE);
  const aOpaque = a.isDir && bDir.isMergedDir;
  const bOpaque = b.isDir && aDir.isMergedDir;
  if (aOpaque) setOpaque(ctx, bPath);
  if (bOpaque) setOpaque(ctx, aPath);
  // Two moves at once: through a name neither has, so the first move cannot confuse the second.
  a.moveName(aDir, aName, aDir, '\0');
  b.moveName(bDir, bName, aDir, aName);
  a.moveName(aDir, '\0', bDir, bName);
  if (aOpaque) a.dirLayers = [ctx.upper];
  if (bOpaque) b.dirLayers = [ctx.upper];
  noteUpper(aDir, aName, b.isDir ? 'dir' : 'other');
  noteUpper(bDir, bName, a.isDir ? 'dir' : 'other');
  aDir.children.set(aName, b);
  bDir.children.set(bName, a);
  pathsMoved();
}

function upperKind(path: Buffer): 'none' | 'whiteout' | 'dir' | 'other' {
  const st = lstatxOrNull(path);
  if (st === null) return 'none';
  if (isWhiteout(st)) return 'whiteout';
  return (st.mode & S_IFMT) === S_IFDIR ? 'dir' : 'other';
}

function isEmptyDir(path: Buffer): boolean {
  return readdirSync(path).length === 0;
}

/** rename leaving a whiteout at the source, in one step where the filesystem can (RENAME_WHITEOUT). */
function renameWithWhiteout(from: Buffer, to: Buffer): void {
  try {
    renameat2(from, to, RENAME_WHITEOUT);
  } catch (err) {
    if (!hasCode(err, 'EINVAL', 'EPERM', 'ENOSYS')) throw err;
    renameSync(from, to);
    makeWhiteout(from);
  }
}
