/**
 * Translates fuse-native's callback operations into Overlay calls, and errors into the
 * negative errno values FUSE expects. No overlay logic lives here.
 */
import type { Operations } from 'fuse-native';
import { errnoOf, isKnownErrno } from '../errors';
import { log } from '../log';
import type { Overlay, OvlStat, TimeChange } from '../overlay/overlay';
import type { Owner } from '../overlay/writes';

/** The ids (as the kernel passed them) of the process whose request is being served, if known. */
export type CallerOf = () => { uid: number; gid: number } | null;

type Done<T> = (err: number, result?: T) => void;

/** fuse-native's stat shape; times in milliseconds are all it can carry. */
function toFuseStat(st: OvlStat): Record<string, number> {
  return {
    mode: st.mode,
    uid: st.uid,
    gid: st.gid,
    size: st.size,
    dev: 0,
    nlink: st.nlink,
    ino: st.ino,
    rdev: st.rdev,
    blksize: st.blksize,
    blocks: st.blocks,
    atime: Math.floor(st.atimeMs),
    mtime: Math.floor(st.mtimeMs),
    ctime: Math.floor(st.ctimeMs),
  };
}

/**
 * fuse-native turns each timespec into milliseconds, so UTIME_NOW and UTIME_OMIT (tv_sec 0,
 * tv_nsec 2^30-1 or 2^30-2) both arrive as 1073. The kernel never sends a setattr that omits
 * both, so two of them mean "now" for both (touch); one of them is the time left alone.
 */
const SPECIAL_TIME_MS = 1073;

function timesFromFuse(atime: number, mtime: number): [TimeChange, TimeChange] {
  const a = atime === SPECIAL_TIME_MS;
  const m = mtime === SPECIAL_TIME_MS;
  if (a && m) return ['now', 'now'];
  return [a ? 'omit' : atime, m ? 'omit' : mtime];
}

function failure(op: string, path: string, err: unknown): number {
  const errno = errnoOf(err);
  if (!isKnownErrno(err)) {
    // Not an errno-carrying error: a bug. Say so even without DEBUG.
    process.stderr.write(`ts-overlayfs: ${op} ${path}: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`);
  }
  if (log.op.enabled) log.op('%s %s -> -%d', op, path, errno);
  return -errno;
}

/** Runs an async operation and answers fuse-native with (0, result) or (-errno). */
function answer<T>(op: string, path: string, work: () => Promise<T>, done: Done<T>): void {
  work().then(
    (result) => {
      if (log.op.enabled) log.op('%s %s -> ok', op, path);
      done(0, result);
    },
    (err) => done(failure(op, path, err)),
  );
}

/**
 * `callerOf` tells who makes an entry (create, mknod, mkdir, symlink); it must be asked
 * synchronously, while libfuse holds that request's caller (src/sys/caller.ts).
 */
export function fuseOperations(overlay: Overlay, callerOf: CallerOf = () => null): Operations & {
  getxattr(path: string, name: string, position: number, cb: (err: number, value?: Buffer) => void): void;
  listxattr(path: string, cb: (err: number, names?: string[]) => void): void;
} {
  const owner = (): Owner | undefined => {
    const caller = callerOf();
    return caller ? overlay.storedOwner(caller.uid, caller.gid) : undefined;
  };
  return {
    getattr(path, cb) {
      answer('getattr', path, async () => toFuseStat(await overlay.getattr(path)), cb);
    },
    opendir(path: string, _flags: number, cb: Done<number>) {
      answer('opendir', path, async () => {
        await overlay.opendir(path);
        return 0;
      }, cb);
    },
    releasedir(path: string, _fd: number, cb: Done<void>) {
      answer('releasedir', path, async () => undefined, cb);
    },
    readdir(path, cb) {
      answer('readdir', path, () => overlay.readdir(path), (err, entries) => {
        if (err || !entries) return cb(err);
        cb(0, entries.map((e) => e.name), entries.map((e) => ({ ino: e.ino, mode: e.type })));
      });
    },
    readlink(path, cb) {
      answer('readlink', path, () => overlay.readlink(path), cb);
    },
    open(path, flags, cb) {
      answer('open', path, () => overlay.open(path, flags), cb);
    },
    read(path, fd, buf, len, pos, cb) {
      overlay.read(fd, buf, len, pos).then(
        (n) => {
          if (log.op.enabled) log.op('read %s %d@%d -> %d', path, len, pos, n);
          cb(n);
        },
        (err) => cb(failure('read', path, err)),
      );
    },
    release(path, fd, cb) {
      answer('release', path, () => overlay.release(fd), cb);
    },
    statfs(path, cb) {
      answer('statfs', path, async () => ({ ...(await overlay.statfs()), fsid: 0, flag: 0 }), cb);
    },
    access(path, mode, cb) {
      answer('access', path, () => overlay.access(path, mode), cb);
    },
    getxattr(path, name, _position, cb) {
      answer(`getxattr ${name}`, path, () => overlay.getxattr(path, name), cb);
    },
    listxattr(path, cb) {
      answer('listxattr', path, () => overlay.listxattr(path), cb);
    },
    create(path: string, mode: number, cb: Done<number>) {
      const by = owner();
      answer('create', path, () => overlay.create(path, mode, by), cb);
    },
    mknod(path: string, mode: number, dev: number, cb: Done<void>) {
      const by = owner();
      answer('mknod', path, () => overlay.mknod(path, mode, dev, by), cb);
    },
    mkdir(path: string, mode: number, cb: Done<void>) {
      const by = owner();
      answer('mkdir', path, () => overlay.mkdir(path, mode, by), cb);
    },
    symlink(target: string, path: string, cb: Done<void>) {
      const by = owner();
      answer('symlink', path, () => overlay.symlink(target, path, by), cb);
    },
    link(from: string, to: string, cb: Done<void>) {
      answer('link', `${from} -> ${to}`, () => overlay.link(from, to), cb);
    },
    unlink(path: string, cb: Done<void>) {
      answer('unlink', path, () => overlay.unlink(path), cb);
    },
    rmdir(path: string, cb: Done<void>) {
      answer('rmdir', path, () => overlay.rmdir(path), cb);
    },
    rename(from: string, to: string, cb: Done<void>) {
      answer('rename', `${from} -> ${to}`, () => overlay.rename(from, to), cb);
    },
    truncate(path: string, size: number, cb: Done<void>) {
      answer('truncate', path, () => overlay.truncate(path, size), cb);
    },
    ftruncate(path: string, fd: number, size: number, cb: Done<void>) {
      answer('ftruncate', path, () => overlay.ftruncate(fd, size), cb);
    },
    chmod(path: string, mode: number, cb: Done<void>) {
      answer('chmod', path, () => overlay.chmod(path, mode), cb);
    },
    chown(path: string, uid: number, gid: number, cb: Done<void>) {
      answer('chown', path, () => overlay.chown(path, uid, gid), cb);
    },
    utimens(path: string, atime: number, mtime: number, cb: Done<void>) {
      const [a, m] = timesFromFuse(atime, mtime);
      answer('utimens', path, () => overlay.utimens(path, a, m), cb);
    },
    setxattr(path: string, name: string, value: Buffer, _position: number, flags: number, cb: Done<void>) {
      answer(`setxattr ${name}`, path, () => overlay.setxattr(path, name, Buffer.from(value), flags), cb);
    },
    removexattr(path: string, name: string, cb: Done<void>) {
      answer(`removexattr ${name}`, path, () => overlay.removexattr(path, name), cb);
    },
    write(path, fd, buf, len, pos, cb) {
      overlay.write(fd, buf, len, pos).then(
        (n) => {
          if (log.op.enabled) log.op('write %s %d@%d -> %d', path, len, pos, n);
          cb(n);
        },
        (err) => cb(failure('write', path, err)),
      );
    },
    fsync(path: string, datasync: number, fd: number, cb: Done<void>) {
      answer('fsync', path, () => overlay.fsync(fd, datasync !== 0), cb);
    },
    fsyncdir(path: string, datasync: number, _fd: number, cb: Done<void>) {
      answer('fsyncdir', path, () => overlay.fsyncdir(path, datasync !== 0), cb);
    },
    flush(path: string, _fd: number, cb: Done<void>) {
      // Writes reach the layer file as they arrive; there is nothing to flush on close.
      answer('flush', path, async () => undefined, cb);
    },
  };
}

