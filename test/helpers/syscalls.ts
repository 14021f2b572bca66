/**
 * System calls Node's fs lacks, for tests: fallocate, lseek with any whence and renameat2
 * with any flags (those of src/sys/libc.ts), and utimensat with UTIME_NOW/UTIME_OMIT and a
 * choice of following symlinks. Each throws an error whose `code` is the errno's name (as
 * Node's fs errors), so a test records outcomes the same way for both.
 */
import koffi from 'koffi';
import { constants } from 'node:os';
import { cPath, libc, type PathArg } from '../../src/sys/ffi';
import { fallocate, renameat2, seek } from '../../src/sys/libc';

export { fallocate, renameat2 };

const utimensatC = libc.func('int utimensat(int dirfd, const char *path, const void *times, int flags)');

const AT_FDCWD = -100;
export const AT_SYMLINK_NOFOLLOW = 0x100;

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

export const SEEK_SET = 0;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

export const RENAME_NOREPLACE = 1 << 0;
export const RENAME_EXCHANGE = 1 << 1;
export const RENAME_WHITEOUT = 1 << 2;

export const UTIME_NOW = (1 << 30) - 1;
export const UTIME_OMIT = (1 << 30) - 2;

const codeByErrno = new Map<number, string>(Object.entries(constants.errno as Record<string, number>).map(([k, v]) => [v, k]));

/** Throws the errno of the call that just failed as `code`, like Node's fs errors. */
function fail(call: string): never {
  const no = koffi.errno();
  const code = codeByErrno.get(no) ?? `E${no}`;
  throw Object.assign(new Error(`${call}: ${code}`), { code, errno: -no });
}

/** lseek with any whence; the new offset. */
export const lseek = seek;

/** A time for utimensat: seconds and nanoseconds, or UTIME_NOW / UTIME_OMIT as `nsec`. */
export interface Ts { sec: number | bigint; nsec: number }

/** utimensat(AT_FDCWD, path, [atime, mtime], flags): nanoseconds, UTIME_NOW and UTIME_OMIT as they are. */
export function utimensat(path: PathArg, atime: Ts, mtime: Ts, flags = 0): void {
  const times = Buffer.alloc(32);
  times.writeBigInt64LE(BigInt(atime.sec), 0);
  times.writeBigInt64LE(BigInt(atime.nsec), 8);
  times.writeBigInt64LE(BigInt(mtime.sec), 16);
  times.writeBigInt64LE(BigInt(mtime.nsec), 24);
  if (utimensatC(AT_FDCWD, cPath(path), times, flags) < 0) fail('utimensat');
}

/**
 * The data extents of `fd` as the filesystem reports them (SEEK_DATA/SEEK_HOLE from 0 to the
 * end), as "start-end" strings. A filesystem without hole reporting gives one extent.
 */
export function dataExtents(fd: number): string[] {
  const out: string[] = [];
  let at = 0;
  for (;;) {
    let start: number;
    try {
      start = lseek(fd, at, SEEK_DATA);
    } catch (err) {
      if ((err as { code?: string }).code === 'ENXIO') return out;
      throw err;
    }
    const end = lseek(fd, start, SEEK_HOLE);
    out.push(`${start}-${end}`);
    at = end;
  }
}
