/**
 * The few system calls Node's fs lacks, through koffi (prebuilt FFI, no build at install).
 *
 * These are synchronous on purpose: koffi's async calls run on worker threads whose errno
 * cannot be read back, and callers need the real errno (ENODATA vs ENOTSUP vs EPERM ...).
 * Each call is a single metadata syscall of a few microseconds on a local filesystem, except
 * copy_file_range, whose callers bound the bytes per call.
 */
import koffi from 'koffi';
import { OvlError } from '../errors';
import { cPath, fail, libc, printable, type PathArg } from './ffi';

const c = {
  lgetxattr: libc.func('int64_t lgetxattr(const char *path, const char *name, void *value, size_t size)'),
  llistxattr: libc.func('int64_t llistxattr(const char *path, void *list, size_t size)'),
  lsetxattr: libc.func('int lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags)'),
  lremovexattr: libc.func('int lremovexattr(const char *path, const char *name)'),
  mknodat: libc.func('int mknodat(int dirfd, const char *path, uint32_t mode, uint64_t dev)'),
  renameat2: libc.func('int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags)'),
  utimensat: libc.func('int utimensat(int dirfd, const char *path, const void *times, int flags)'),
  dup2: libc.func('int dup2(int oldfd, int newfd)'),
  lseek: libc.func('int64_t lseek(int fd, int64_t offset, int whence)'),
  ioctl: libc.func('int ioctl(int fd, unsigned long request, unsigned long arg)'),
  flock: libc.func('int flock(int fd, int operation)'),
  fallocate: libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)'),
  copy_file_range: libc.func('int64_t copy_file_range(int fd_in, void *off_in, int fd_out, void *off_out, size_t len, unsigned int flags)'),
};

export const AT_FDCWD = -100;
export const AT_SYMLINK_NOFOLLOW = 0x100;
export const RENAME_NOREPLACE = 1 << 0;
export const RENAME_EXCHANGE = 1 << 1;
export const RENAME_WHITEOUT = 1 << 2;
export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;
/** Largest xattr value Linux allows (XATTR_SIZE_MAX) and largest name list (XATTR_LIST_MAX). */
const XATTR_MAX = 65536;

// One scratch buffer serves every call: the calls are synchronous on the JS thread.
const scratch = Buffer.alloc(XATTR_MAX);

/** The value of xattr `name` on `path` itself (never a symlink's target). */
export function lgetxattr(path: PathArg, name: string): Buffer {
  const n = Number(c.lgetxattr(cPath(path), name, scratch, scratch.length));
  if (n < 0) fail('lgetxattr', path);
  return Buffer.from(scratch.subarray(0, n));
}

/** Like lgetxattr, but null where the attribute is absent or the filesystem has none. */
export function lgetxattrOrNull(path: PathArg, name: string): Buffer | null {
  const n = Number(c.lgetxattr(cPath(path), name, scratch, scratch.length));
  if (n >= 0) return Buffer.from(scratch.subarray(0, n));
  const errno = koffi.errno();
  if (errno === koffi.os.errno.ENODATA || errno === koffi.os.errno.ENOTSUP) return null;
  throw new OvlError(errno, `lgetxattr ${printable(path)}`);
}

export function llistxattr(path: PathArg): string[] {
  const n = Number(c.llistxattr(cPath(path), scratch, scratch.length));
  if (n < 0) {
    if (koffi.errno() === koffi.os.errno.ENOTSUP) return [];
    fail('llistxattr', path);
  }
  const names: string[] = [];
  let start = 0;
  for (let i = 0; i < n; i++) {
    if (scratch[i] === 0) {
      if (i > start) names.push(scratch.toString('utf8', start, i));
      start = i + 1;
    }
  }
  return names;
}

export function lsetxattr(path: PathArg, name: string, value: Buffer, flags = 0): void {
  if (c.lsetxattr(cPath(path), name, value, value.length, flags) < 0) fail('lsetxattr', path);
}

export function lremovexattr(path: PathArg, name: string): void {
  if (c.lremovexattr(cPath(path), name) < 0) fail('lremovexattr', path);
}

export function mknod(path: PathArg, mode: number, dev: number): void {
  if (c.mknodat(AT_FDCWD, cPath(path), mode, dev) < 0) fail('mknod', path);
}

export function renameat2(from: PathArg, to: PathArg, flags: number): void {
  if (c.renameat2(AT_FDCWD, cPath(from), AT_FDCWD, cPath(to), flags) < 0) fail('renameat2', `${printable(from)} -> ${printable(to)}`);
}

export interface Timespec { sec: number; nsec: number }
/** utimensat's UTIME_OMIT: leave that time as it is; UTIME_NOW: set it to the current time. */
export const UTIME_OMIT = (1 << 30) - 2;
export const UTIME_NOW = (1 << 30) - 1;

/** Sets atime and mtime with nanosecond precision, on `path` itself (never a symlink's target). */
export function lutimens(path: PathArg, atime: Timespec, mtime: Timespec): void {
  const times = Buffer.alloc(32);
  times.writeBigInt64LE(BigInt(atime.sec), 0);
  times.writeBigInt64LE(BigInt(atime.nsec), 8);
  times.writeBigInt64LE(BigInt(mtime.sec), 16);
  times.writeBigInt64LE(BigInt(mtime.nsec), 24);
  if (c.utimensat(AT_FDCWD, cPath(path), times, AT_SYMLINK_NOFOLLOW) < 0) fail('utimensat', path);
}

/** Points descriptor `target` at what `source` refers to (Node has no dup2). */
export function dup2(source: number, target: number): void {
  if (c.dup2(source, target) < 0) fail('dup2', String(target));
}

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const FICLONE = 0x40049409;

/**
 * The next data extent of `fd` at or after `from`: [start, end), or null past the last one.
 * Filesystems without hole reporting answer with one extent for the whole file.
 */
export function nextDataExtent(fd: number, from: number): [number, number] | null {
  const start = Number(c.lseek(fd, from, SEEK_DATA));
  if (start < 0) {
    if (koffi.errno() === koffi.os.errno.ENXIO) return null;
    fail('lseek', `fd ${fd}`);
  }
  const end = Number(c.lseek(fd, start, SEEK_HOLE));
  if (end < 0) fail('lseek', `fd ${fd}`);
  return [start, end];
}

/** Shares the data of `src` with `dst` (reflink); false where the filesystem cannot. */
export function reflink(dst: number, src: number): boolean {
  if (c.ioctl(dst, FICLONE, src) === 0) return true;
  return false;
}

/**
 * Copies up to `length` bytes from `src` at `srcPos` to `dst` at `dstPos` inside the kernel
 * (no trip through our memory; some filesystems share or offload the data). Returns the
 * count copied, 0 at the end of `src`. Neither descriptor's file position moves.
 */
export function copyFileRange(src: number, srcPos: number, dst: number, dstPos: number, length: number): number {
  const offsets = Buffer.alloc(16);
  offsets.writeBigInt64LE(BigInt(srcPos), 0);
  offsets.writeBigInt64LE(BigInt(dstPos), 8);
  const n = Number(c.copy_file_range(src, offsets.subarray(0, 8), dst, offsets.subarray(8), length, 0));
  if (n < 0) fail('copy_file_range', `fd ${src} -> fd ${dst}`);
  return n;
}

/** fallocate(2) on an open descriptor: mode 0 allocates, FALLOC_FL_* flags keep the size, punch holes, ... */
export function fallocate(fd: number, mode: number, offset: number, length: number): void {
  if (c.fallocate(fd, mode, offset, length) < 0) fail('fallocate', `fd ${fd}`);
}

/** lseek(2): the new offset (SEEK_DATA and SEEK_HOLE answer ENXIO past the last data or hole). */
export function seek(fd: number, offset: number, whence: number): number {
  const n = Number(c.lseek(fd, offset, whence));
  if (n < 0) fail('lseek', `fd ${fd}`);
  return n;
}

const LOCK_EX = 2;
const LOCK_NB = 4;

/** Takes an exclusive lock on `fd` without waiting; false if another holder has it. */
export function tryLockExclusive(fd: number): boolean {
  if (c.flock(fd, LOCK_EX | LOCK_NB) === 0) return true;
  if (koffi.errno() === koffi.os.errno.EWOULDBLOCK) return false;
  fail('flock', `fd ${fd}`);
}
