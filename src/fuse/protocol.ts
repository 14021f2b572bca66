/**
 * Numbers of the FUSE kernel protocol, as `include/uapi/linux/fuse.h` defines them (protocol
 * 7.38 as Debian's linux-libc-dev ships it; the few later ones are marked with their version).
 * Only names this package uses are here; struct layouts are in wire.ts.
 */

export const KERNEL_VERSION = 7;
/** The oldest minor version we speak: 7.31 brought everything the session relies on (max_pages, flags). */
export const MIN_MINOR = 31;
/**
 * The newest minor version we speak. 7.39 and 7.40 change no struct the session reads; of
 * what they add, only passthrough (see Passthrough below) is used.
 */
export const MAX_MINOR = 40;
export const ROOT_ID = 1;
/** Read buffers must hold at least this, whatever max_write is. */
export const MIN_READ_BUFFER = 8192;

export const Op = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  GETLK: 31,
  SETLK: 32,
  SETLKW: 33,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  BMAP: 37,
  DESTROY: 38,
  IOCTL: 39,
  POLL: 40,
  NOTIFY_REPLY: 41,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  LSEEK: 46,
  COPY_FILE_RANGE: 47,
  SETUPMAPPING: 48,
  REMOVEMAPPING: 49,
  SYNCFS: 50,
  TMPFILE: 51,
} as const;

/** The opcode names, for logs. */
export const OP_NAMES: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(Op).map(([name, code]) => [code, name.toLowerCase()]),
);

/** fuse_init_in.flags / fuse_init_out.flags (bits 0-31; bits 32-63 travel in flags2). */
export const Init = {
  ASYNC_READ: 1 << 0,
  POSIX_LOCKS: 1 << 1,
  ATOMIC_O_TRUNC: 1 << 3,
  EXPORT_SUPPORT: 1 << 4,
  BIG_WRITES: 1 << 5,
  DONT_MASK: 1 << 6,
  FLOCK_LOCKS: 1 << 10,
  AUTO_INVAL_DATA: 1 << 12,
  DO_READDIRPLUS: 1 << 13,
  READDIRPLUS_AUTO: 1 << 14,
  ASYNC_DIO: 1 << 15,
  WRITEBACK_CACHE: 1 << 16,
  NO_OPEN_SUPPORT: 1 << 17,
  PARALLEL_DIROPS: 1 << 18,
  HANDLE_KILLPRIV: 1 << 19,
  POSIX_ACL: 1 << 20,
  ABORT_ERROR: 1 << 21,
  MAX_PAGES: 1 << 22,
  CACHE_SYMLINKS: 1 << 23,
  NO_OPENDIR_SUPPORT: 1 << 24,
  EXPLICIT_INVAL_DATA: 1 << 25,
  HANDLE_KILLPRIV_V2: 1 << 28,
  SETXATTR_EXT: 1 << 29,
  INIT_EXT: 1 << 30,
} as const;

/**
 * FUSE passthrough (protocol 7.40, kernel 6.9+; newer than Debian's header, so kept apart):
 * an open file's reads and writes go from the kernel straight to a file the server
 * registered with FUSE_DEV_IOC_BACKING_OPEN, which answers a backing id for fuse_open_out.
 */
export const Passthrough = {
  /** Init flag (flags2 bit 5). */
  INIT: 1n << 37n,
  /** fuse_open_out.open_flags. */
  FOPEN: 1 << 7,
  /** _IOW(229, 1, struct fuse_backing_map): registers a descriptor, answers its id. */
  IOC_BACKING_OPEN: 0x4010e501,
  /** _IOW(229, 2, uint32_t): drops an id. */
  IOC_BACKING_CLOSE: 0x4004e502,
  /** sizeof(struct fuse_backing_map): int32 fd, uint32 flags, uint64 padding. */
  BACKING_MAP_SIZE: 16,
} as const;

/** fuse_setattr_in.valid. */
export const Fattr = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  FH: 1 << 6,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8,
  LOCKOWNER: 1 << 9,
  CTIME: 1 << 10,
  KILL_SUIDGID: 1 << 11,
} as const;

/** fuse_open_out.open_flags. */
export const Fopen = {
  DIRECT_IO: 1 << 0,
  KEEP_CACHE: 1 << 1,
  NONSEEKABLE: 1 << 2,
  CACHE_DIR: 1 << 3,
  STREAM: 1 << 4,
  NOFLUSH: 1 << 5,
  PARALLEL_DIRECT_WRITES: 1 << 6,
} as const;

/** fuse_getattr_in.getattr_flags: fh is valid. */
export const GETATTR_FH = 1 << 0;
/** fuse_fsync_in.fsync_flags: only data. */
export const FSYNC_FDATASYNC = 1 << 0;
/** fuse_release_in.release_flags. */
export const RELEASE_FLUSH = 1 << 0;
/** fuse_write_in.write_flags. */
export const WRITE_CACHE = 1 << 0;
export const WRITE_KILL_SUIDGID = 1 << 2;

/** Notifications the server sends unasked (out header unique 0, error = the code). */
export const Notify = {
  POLL: 1,
  INVAL_INODE: 2,
  INVAL_ENTRY: 3,
  STORE: 4,
  RETRIEVE: 5,
  DELETE: 6,
} as const;

/** Struct sizes in bytes (checked against the header by the unit tests). */
export const Size = {
  IN_HEADER: 40,
  OUT_HEADER: 16,
  ATTR: 88,
  ENTRY_OUT: 128,
  ATTR_OUT: 104,
  OPEN_OUT: 16,
  WRITE_OUT: 8,
  STATFS_OUT: 80,
  INIT_IN: 64,
  INIT_OUT: 64,
  GETXATTR_OUT: 8,
  LSEEK_OUT: 8,
  DIRENT_HEADER: 24,
  FORGET_ONE: 16,
  NOTIFY_INVAL_INODE_OUT: 24,
  NOTIFY_INVAL_ENTRY_OUT: 16,
  NOTIFY_DELETE_OUT: 24,
} as const;
