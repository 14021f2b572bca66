/**
 * What a filesystem served over FUSE implements: one method per request the kernel sends,
 * addressed by node id (the kernel's inode), as libfuse's low-level API and fuser's
 * Filesystem trait are.
 *
 * A method answers by what it returns: its value (or the value its promise resolves to) is
 * the reply, and an error it throws (or rejects with) is an error reply with that error's
 * errno. So every request is answered exactly once, whatever a method does; a method that is
 * missing answers ENOSYS. Errors are values carrying a positive POSIX `errno` (Node's own
 * negative ones are accepted too); anything else is answered EIO and reported as a bug.
 *
 * Buffers a method is given (names, data, values) are views of the request the kernel sent:
 * they stay valid until the method's answer is sent, and no longer.
 */

export type Awaitable<T> = T | Promise<T>;

/** Who sent a request: from the request header. */
export interface Request {
  readonly opcode: number;
  readonly unique: number;
  readonly nodeId: number;
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
  /** Set once the kernel has sent an INTERRUPT for this request (the caller got a signal). */
  interrupted: boolean;
}

/** fuse_attr. Times are seconds and nanoseconds. */
export interface Attr {
  ino: number;
  size: number;
  blocks: number;
  atime: number;
  atimeNsec: number;
  mtime: number;
  mtimeNsec: number;
  ctime: number;
  ctimeNsec: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  /** In the kernel's new_encode_dev form (major << 8 | minor low byte | minor high bits << 12). */
  rdev: number;
  blksize: number;
}

/** A name's answer (fuse_entry_out). nodeId 0 is a negative entry, cached for entryTimeout. */
export interface Entry {
  nodeId: number;
  generation: number;
  /** Seconds the kernel may keep the name, and the attributes. */
  entryTimeout: number;
  attrTimeout: number;
  attr: Attr;
}

export interface AttrReply {
  attr: Attr;
  /** Seconds the kernel may keep the attributes. */
  timeout: number;
}

/**
 * An open file or directory (fuse_open_out): the handle the kernel passes back, and FOPEN_*
 * flags; with FOPEN_PASSTHROUGH, the id of the backing file (BackingFiles) the kernel reads
 * and writes instead of asking.
 */
export interface Opened {
  fh: number;
  flags: number;
  backingId?: number;
}

export type Created = Entry & { open: Opened };

/** fuse_setattr_in, decoded: `valid` says which fields count (Fattr bits). */
export interface SetAttr {
  valid: number;
  fh: number;
  size: number;
  atime: number;
  atimeNsec: number;
  mtime: number;
  mtimeNsec: number;
  ctime: number;
  ctimeNsec: number;
  mode: number;
  uid: number;
  gid: number;
}

export interface StatFs {
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  bsize: number;
  namelen: number;
  frsize: number;
}

/**
 * Where readdir puts its entries, in order. `add` returns false, taking nothing, once the
 * kernel's buffer is full: the method then stops, and the kernel asks again from the `next`
 * of the last entry taken. `next` is the cookie the kernel passes back to resume after it.
 */
export interface DirectorySink {
  add(name: Buffer, ino: number, type: number, next: number): boolean;
}

/**
 * readdirplus: each entry with the name's full answer, or null to give only the name. An
 * entry taken (add returned true) with a non-zero nodeId counts as one lookup of that node.
 */
export interface DirectoryPlusSink {
  add(name: Buffer, entry: Entry | null, ino: number, type: number, next: number): boolean;
}

/** What INIT settled on. */
export interface Connection {
  readonly major: number;
  readonly minor: number;
  /** Init flags the kernel offered, and those both sides use. */
  readonly offered: bigint;
  readonly flags: bigint;
  readonly maxWrite: number;
  readonly maxReadahead: number;
  readonly maxPages: number;
}

/**
 * What the server tells the kernel unasked, once INIT is answered. Each returns 0, or the
 * errno the kernel answered (ENOENT: it holds nothing of that node, so nothing was stale).
 */
export interface Notifier {
  /**
   * The kernel drops the attributes it keeps of `node`, and its cached data from `offset`
   * for `length` bytes (0: to the end); a negative offset (the default) keeps the data.
   */
  invalInode(node: number, offset?: number, length?: number): number;
}

/**
 * The files of passthrough opens (FUSE_PASSTHROUGH negotiated). The kernel checks the
 * server's rights here: only a server with CAP_SYS_ADMIN may register files (EPERM else).
 */
export interface BackingFiles {
  /**
   * Registers an open descriptor as a backing file: its id (> 0), or a negative errno. The
   * kernel takes its own reference; it opens the file anew, with each open's flags, for every
   * open answered with the id. All passthrough opens of one node must name the same id.
   */
  open(fd: number): number;
  /** Drops an id (opens answered with it keep their file): 0, or a negative errno. */
  close(id: number): number;
}

export interface FileSystem {
  /**
   * Called once INIT is settled, before any other request; `notify` works once INIT is
   * answered. `backing` is there where passthrough was negotiated.
   */
  init?(connection: Connection, notify: Notifier, backing: BackingFiles | null): void;
  /**
   * The kernel ends the session (umount of a fuseblk mount); also called when the device
   * closes. Called once, and only after init.
   */
  destroy?(): void;

  lookup?(req: Request, parent: number, name: Buffer): Awaitable<Entry>;
  /** The kernel dropped `count` of its lookups of `node`. Never answered. */
  forget?(node: number, count: number): void;
  getattr?(req: Request, node: number, fh: number | null): Awaitable<AttrReply>;
  setattr?(req: Request, node: number, changes: SetAttr): Awaitable<AttrReply>;
  readlink?(req: Request, node: number): Awaitable<Buffer>;
  mknod?(req: Request, parent: number, name: Buffer, mode: number, rdev: number, umask: number): Awaitable<Entry>;
  mkdir?(req: Request, parent: number, name: Buffer, mode: number, umask: number): Awaitable<Entry>;
  unlink?(req: Request, parent: number, name: Buffer): Awaitable<void>;
  rmdir?(req: Request, parent: number, name: Buffer): Awaitable<void>;
  symlink?(req: Request, parent: number, name: Buffer, target: Buffer): Awaitable<Entry>;
  /** flags: RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT (0 for a plain rename). */
  rename?(req: Request, parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number): Awaitable<void>;
  link?(req: Request, node: number, newParent: number, newName: Buffer): Awaitable<Entry>;
  open?(req: Request, node: number, flags: number): Awaitable<Opened>;
  /**
   * Reads up to `size` bytes: into `into` (at least `size` long, valid until the answer),
   * answering how many bytes were put there, or as a Buffer of its own.
   */
  read?(req: Request, node: number, fh: number, offset: number, size: number, into: Buffer): Awaitable<number | Buffer>;
  write?(req: Request, node: number, fh: number, offset: number, data: Buffer, writeFlags: number, flags: number): Awaitable<number>;
  statfs?(req: Request, node: number): Awaitable<StatFs>;
  release?(req: Request, node: number, fh: number, flags: number, releaseFlags: number): Awaitable<void>;
  fsync?(req: Request, node: number, fh: number, datasync: boolean): Awaitable<void>;
  setxattr?(req: Request, node: number, name: Buffer, value: Buffer, flags: number): Awaitable<void>;
  /** The whole value; the session answers the kernel's size questions (0: the length; too small: ERANGE). */
  getxattr?(req: Request, node: number, name: Buffer): Awaitable<Buffer>;
  /** The names, each followed by a NUL; sizes as for getxattr. */
  listxattr?(req: Request, node: number): Awaitable<Buffer>;
  removexattr?(req: Request, node: number, name: Buffer): Awaitable<void>;
  flush?(req: Request, node: number, fh: number, lockOwner: bigint): Awaitable<void>;
  opendir?(req: Request, node: number, flags: number): Awaitable<Opened>;
  readdir?(req: Request, node: number, fh: number, offset: number, out: DirectorySink): Awaitable<void>;
  readdirplus?(req: Request, node: number, fh: number, offset: number, out: DirectoryPlusSink): Awaitable<void>;
  releasedir?(req: Request, node: number, fh: number, flags: number): Awaitable<void>;
  fsyncdir?(req: Request, node: number, fh: number, datasync: boolean): Awaitable<void>;
  access?(req: Request, node: number, mask: number): Awaitable<void>;
  create?(req: Request, parent: number, name: Buffer, mode: number, umask: number, flags: number): Awaitable<Created>;
  fallocate?(req: Request, node: number, fh: number, offset: number, length: number, mode: number): Awaitable<void>;
  copyFileRange?(req: Request, nodeIn: number, fhIn: number, offsetIn: number, nodeOut: number, fhOut: number, offsetOut: number, length: number, flags: number): Awaitable<number>;
  lseek?(req: Request, node: number, fh: number, offset: number, whence: number): Awaitable<number>;
}
