/**
 * statx(2) into one reused buffer: nanosecond times and the full 64-bit inode number in about
 * half the time of `fs.lstatSync(path, { bigint: true })`.
 */
import { cPath, errno, fail, libc, type PathArg } from './ffi';

const statx = libc.func('int statx(int dirfd, const char *path, int flags, unsigned int mask, void *buf)');

const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;
const AT_EMPTY_PATH = 0x1000;
const STATX_BASIC_STATS = 0x7ff;
const TWO_32 = 2 ** 32;

/** What stat tells of an inode; times in seconds and nanoseconds. */
export interface Stat {
  /** The device, as `major:minor`, and the inode number: together the file's identity. */
  dev: string;
  ino: number;
  /** The inode number's high and low 32 bits (ino is exact only below 2^53). */
  inoHigh: number;
  inoLow: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdevMajor: number;
  rdevMinor: number;
  size: number;
  blocks: number;
  blksize: number;
  atime: number;
  atimeNsec: number;
  mtime: number;
  mtimeNsec: number;
  ctime: number;
  ctimeNsec: number;
}

const buf = Buffer.alloc(256);

function u64(off: number): number {
  return buf.readUInt32LE(off) + buf.readUInt32LE(off + 4) * TWO_32;
}

function decode(): Stat {
  const inoLow = buf.readUInt32LE(32);
  const inoHigh = buf.readUInt32LE(36);
  return {
    dev: `${buf.readUInt32LE(136)}:${buf.readUInt32LE(140)}`,
    ino: inoHigh * TWO_32 + inoLow,
    inoHigh,
    inoLow,
    blksize: buf.readUInt32LE(4),
    nlink: buf.readUInt32LE(16),
    uid: buf.readUInt32LE(20),
    gid: buf.readUInt32LE(24),
    mode: buf.readUInt16LE(28),
    size: u64(40),
    blocks: u64(48),
    atime: Number(buf.readBigInt64LE(64)),
    atimeNsec: buf.readUInt32LE(72),
    ctime: Number(buf.readBigInt64LE(96)),
    ctimeNsec: buf.readUInt32LE(104),
    mtime: Number(buf.readBigInt64LE(112)),
    mtimeNsec: buf.readUInt32LE(120),
    rdevMajor: buf.readUInt32LE(128),
    rdevMinor: buf.readUInt32LE(132),
  };
}

/** lstat: the entry at `path` itself, never a symlink's target. */
export function lstatx(path: PathArg): Stat {
  if (statx(AT_FDCWD, cPath(path), AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, buf) < 0) fail('statx', path);
  return decode();
}

/** lstat, or null where nothing is there (ENOENT, ENOTDIR). */
export function lstatxOrNull(path: PathArg): Stat | null {
  if (statx(AT_FDCWD, cPath(path), AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, buf) === 0) return decode();
  const e = errno();
  if (e === 2 || e === 20) return null;
  fail('statx', path);
}

/**
 * lstat of `rel` below the directory descriptor `dirfd` ('' for the directory itself):
 * resolving a /proc/self/fd/N path costs several times the stat itself.
 */
export function lstatxAt(dirfd: number, rel: PathArg): Stat | null {
  const empty = rel.length === 0;
  if (statx(dirfd, empty ? '' : cPath(rel), AT_SYMLINK_NOFOLLOW | (empty ? AT_EMPTY_PATH : 0), STATX_BASIC_STATS, buf) === 0) return decode();
  const e = errno();
  if (e === 2 || e === 20) return null;
  fail('statx', rel);
}

/** fstat: the file an open descriptor refers to. */
export function fstatx(fd: number): Stat {
  if (statx(fd, '', AT_EMPTY_PATH, STATX_BASIC_STATS, buf) < 0) fail('statx', `fd ${fd}`);
  return decode();
}
