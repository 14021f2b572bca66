/**
 * Translates fuse-native's callback operations into Overlay calls, and errors into the
 * negative errno values FUSE expects. No overlay logic lives here.
 */
import type { Operations } from 'fuse-native';
import { errnoOf, isKnownErrno } from '../errors';
import { log } from '../log';
import type { Overlay, OvlStat } from '../overlay/overlay';

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

export function fuseOperations(overlay: Overlay): Operations & {
  getxattr(path: string, name: string, position: number, cb: (err: number, value?: Buffer) => void): void;
  listxattr(path: string, cb: (err: number, names?: string[]) => void): void;
} {
  return {
    getattr(path, cb) {
      answer('getattr', path, async () => toFuseStat(await overlay.getattr(path)), cb);
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
        (n) => cb(n),
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
    ...refusedWrites(overlay),
  };
}

/** Until the write path exists, every mutating operation answers EROFS (not ENOSYS). */
function refusedWrites(overlay: Overlay): Operations {
  const ops: Operations = {};
  const names = ['create', 'mknod', 'mkdir', 'symlink', 'link', 'write', 'truncate', 'ftruncate', 'unlink',
    'rmdir', 'rename', 'chmod', 'chown', 'utimens', 'setxattr', 'removexattr'];
  for (const name of names) {
    ops[name] = (path: string, ...rest: unknown[]) => {
      const cb = rest[rest.length - 1] as (err: number) => void;
      answer(name, path, () => overlay.refuseWrite(path), cb);
    };
  }
  return ops;
}
