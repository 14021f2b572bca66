/**
 * A FUSE session: reads requests from the device, hands each to the FileSystem method of
 * its opcode and writes the answer back.
 *
 * How the device is read decides the cost of every request, so the loop has two modes:
 *  - Serving (nothing outstanding): this thread reads the device itself, without the event
 *    loop; when no request is queued it blocks in poll(2). A request costs one wake of this
 *    thread, as in a C server. A synchronous method is answered before the next read.
 *  - Waiting (some method's promise is outstanding: a copy, an fsync in the thread pool):
 *    the event loop must run to complete it, so this thread returns to it and one pool thread
 *    polls the device instead; whatever is queued is then served in one go.
 * While requests keep coming the loop returns to the event loop at least every SLICE_MS; an
 * idle poll waits at most IDLE_POLL_MS, and a signal interrupts it: signal handlers and
 * timers run that late at worst.
 *
 * Every request is answered exactly once: the answer is the method's return value (or its
 * error), sent when it is known; FORGET, BATCH_FORGET, INTERRUPT and NOTIFY_REPLY are never
 * answered. An INTERRUPT marks its request (Request.interrupted); the request is still
 * answered when its method finishes, and a reply the kernel no longer wants (ENOENT) is
 * dropped. The session ends when the kernel says the connection is gone (ENODEV on read).
 */
import { constants } from 'node:os';
import { closeRaw, deviceIoctl, pollRaw, pollRawAsync, pollSet, readRaw, writeRaw } from '../sys/device';
import { FSYNC_FDATASYNC, GETATTR_FH, Init, KERNEL_VERSION, MAX_MINOR, MIN_MINOR, MIN_READ_BUFFER, Notify, OP_NAMES, Op, Passthrough, Size } from './protocol';
import type { Awaitable, BackingFiles, Connection, DirectoryPlusSink, DirectorySink, Entry, FileSystem, Notifier, Opened, Request } from './types';
import {
  direntPlusSize, direntSize, readCString, readInHeader, readInitIn, readSetattrIn, readU64, writeAttrOut,
  writeDirent, writeDirentPlus, writeEntryOut, writeGetxattrOut, writeInitOut, writeLseekOut, writeNotifyInvalInodeOut,
  writeOpenOut, writeOutHeader, writeStatfsOut, writeWriteOut,
} from './wire';

const E = constants.errno;

/** Longest the serving loop keeps the event loop waiting. */
const SLICE_MS = 20;
/** How long one poll waits before the loop lets the event loop run anyway. */
const IDLE_POLL_MS = 1000;
/**
 * A pool thread polling the device is joined when the process exits, so its wait is short:
 * an exit waits at most this long.
 */
const WATCH_POLL_MS = 250;
const PAGE = 4096;
/**
 * Passthrough's backing files may be on a stacked filesystem no deeper than this. 1: on plain
 * filesystems only, so that the mount itself stays stackable (a kernel overlay may use it
 * as a layer); a layer on an overlay gets ELOOP from BackingFiles.open.
 */
const MAX_STACK_DEPTH = 1;
/** Pages a request carries at most without FUSE_MAX_PAGES (the kernel's FUSE_DEFAULT_MAX_PAGES_PER_REQ). */
const DEFAULT_MAX_PAGES = 32;
/** The most pages a request can carry: max_pages is 16 bits, and kernels cap it at 256 by default. */
const MAX_PAGES_LIMIT = 256;

export interface SessionOptions {
  /** Init flags asked for; those the kernel offers are used. */
  readonly want: bigint;
  /** Largest write request, in bytes; reads come in up to the max_pages it implies (32 pages without FUSE_MAX_PAGES). */
  readonly maxWrite: number;
  /** Requests the kernel may have outstanding in the background (readahead, async reads). */
  readonly maxBackground?: number;
  /**
   * Only these users (and root) may send requests, as libfuse's allow_root: others get
   * EACCES, but for the requests on files they already hold open.
   */
  readonly allowedUids?: ReadonlySet<number>;
  /** One line per request and its answer. */
  readonly log?: (line: string) => void;
  /** How a node id is shown in those lines (a path, say). */
  readonly nodeName?: (node: number) => string;
  /** A method threw something that carries no errno: answered EIO, and reported here. */
  readonly onBug?: (op: string, err: unknown) => void;
}

/**
 * Errnos run from 1 to 511: from 512 on are the kernel's own (ERESTARTSYS...), and libuv's
 * codes (UNKNOWN -4094, EAI_* -3000...) that Node's errors carry are no errno at all. The
 * kernel refuses an answer with such an error, and the request would stay unanswered.
 */
const MAX_ERRNO = 511;

/** The positive errno an error carries: ours (positive), Node's (negative), or a code only. */
export function errnoOf(err: unknown): number | null {
  if (err && typeof err === 'object') {
    const e = err as { errno?: unknown; code?: unknown };
    if (typeof e.errno === 'number' && e.errno !== 0 && Math.abs(e.errno) <= MAX_ERRNO) return Math.abs(e.errno);
    if (typeof e.code === 'string' && typeof (E as Record<string, number>)[e.code] === 'number') return (E as Record<string, number>)[e.code];
  }
  return null;
}

function isPromise<T>(v: Awaitable<T>): v is Promise<T> {
  return typeof (v as { then?: unknown } | null)?.then === 'function';
}

/** Requests allowed from anyone under allowedUids: they act on files already open (libfuse's list). */
const OPEN_FILE_OPS = new Set<number>([Op.INIT, Op.READ, Op.WRITE, Op.FSYNC, Op.RELEASE, Op.READDIR, Op.FSYNCDIR, Op.RELEASEDIR, Op.READDIRPLUS, Op.NOTIFY_REPLY, Op.FORGET, Op.BATCH_FORGET, Op.INTERRUPT]);

/** Requests the kernel expects no answer to. */
const NO_ANSWER = new Set<number>([Op.FORGET, Op.BATCH_FORGET, Op.INTERRUPT, Op.NOTIFY_REPLY]);

/** A request with what the log says of its arguments. */
type Traced = Request & { detail?: string };

/** A reply in a buffer of its own (header space included), and what to do with the buffer once sent. */
interface OwnReply {
  readonly buf: Buffer;
  readonly length: number;
  readonly sent?: () => void;
}

/** Encodes an answer after the header of `out`, returning the body's length, or a reply of its own. */
type Encode<T> = (out: Buffer, value: T) => number | OwnReply;

/** A directory listing being filled, in a buffer of its own (the method may finish later). */
class Listing implements DirectorySink, DirectoryPlusSink {
  readonly buf: Buffer;
  length = Size.OUT_HEADER;
  /** The readdirplus entries taken, for the lookups they count. */
  readonly taken: Entry[] = [];

  constructor(size: number, private readonly plus: boolean) {
    this.buf = Buffer.allocUnsafe(Size.OUT_HEADER + size);
  }

  add(name: Buffer, ...rest: unknown[]): boolean {
    if (this.plus) {
      const [entry, ino, type, next] = rest as [Entry | null, number, number, number];
      if (this.length + direntPlusSize(name.length) > this.buf.length) return false;
      this.length += writeDirentPlus(this.buf, this.length, name, entry, ino, type, next);
      if (entry && entry.nodeId !== 0) this.taken.push(entry);
      return true;
    }
    const [ino, type, next] = rest as [number, number, number];
    if (this.length + direntSize(name.length) > this.buf.length) return false;
    this.length += writeDirent(this.buf, this.length, name, ino, type, next);
    return true;
  }
}

export class Session implements Notifier {
  private inBuf: Buffer;
  /** Request buffers free for reuse (one is swapped out whenever a method goes asynchronous). */
  private readonly spareIn: Buffer[] = [];
  /** Replies are encoded here and written at once, so one buffer serves every answer but reads. */
  private readonly out: Buffer;
  private readonly spareRead: Buffer[] = [];
  /** Notifications have a buffer of their own: one may be sent while a reply is being encoded in `out`. */
  private readonly notifyBuf = Buffer.alloc(Size.OUT_HEADER + Size.NOTIFY_INVAL_INODE_OUT);
  /** fuse_backing_map for BACKING_OPEN (the fd, then flags and padding, always 0), and BACKING_CLOSE's id. */
  private readonly backingMap = Buffer.alloc(Passthrough.BACKING_MAP_SIZE);
  private readonly backingIdArg = Buffer.alloc(4);
  private readonly pollFds: Buffer;
  private readonly pending = new Map<number, Request>();
  private connection: Connection | null = null;
  private maxWrite: number;
  /**
   * Largest read the kernel sends: max_pages pages, whatever max_write is (reads are not
   * bound by it), so a read is never cut short, which the kernel would take for end of file.
   */
  private maxRead = DEFAULT_MAX_PAGES * PAGE;
  private scheduled = false;
  private watching = false;
  private ended = false;
  private destroyed = false;
  private readonly endedPromise: Promise<void>;
  private resolveEnded!: () => void;
  private rejectEnded!: (err: Error) => void;

  constructor(private readonly fd: number, private readonly fs: FileSystem, private readonly options: SessionOptions) {
    this.maxWrite = options.maxWrite;
    this.inBuf = this.newInBuffer();
    this.out = Buffer.alloc(Size.OUT_HEADER + 2 * PAGE);
    this.pollFds = pollSet(fd);
    this.endedPromise = new Promise((resolve, reject) => {
      this.resolveEnded = resolve;
      this.rejectEnded = reject;
    });
  }

  /** Serves until the connection ends; resolves then (rejects if the device fails otherwise). */
  run(): Promise<void> {
    this.schedule();
    return this.endedPromise;
  }

  /** What INIT settled on, once it has. */
  get negotiated(): Connection | null {
    return this.connection;
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /**
   * Stops serving and closes the device, which ends the connection for every mount of it
   * (requests still waiting fail with ENOTCONN).
   */
  close(): void {
    this.finish(null);
  }

  private newInBuffer(): Buffer {
    return Buffer.allocUnsafe(Math.max(MIN_READ_BUFFER, Size.IN_HEADER + 40 + this.maxWrite + PAGE));
  }

  private schedule(): void {
    if (this.scheduled || this.ended) return;
    this.scheduled = true;
    setImmediate(this.pump);
  }

  private readonly pump = (): void => {
    this.scheduled = false;
    const start = Date.now();
    let served = 0;
    while (!this.ended) {
      const n = readRaw(this.fd, this.inBuf);
      if (n > 0) {
        const wasInitialised = this.connection !== null;
        this.dispatch(n);
        // Whoever waits for the mount to be usable runs now, not after the next request.
        if (!wasInitialised && this.connection !== null) return this.schedule();
        if ((++served & 63) === 0 && Date.now() - start > SLICE_MS) return this.schedule();
        continue;
      }
      if (n === -E.EAGAIN) {
        if (this.pending.size > 0) return this.watch();
        const ready = pollRaw(this.pollFds, IDLE_POLL_MS);
        if (ready > 0) continue;
        // Timed out, or a signal: the event loop runs its handlers, then we come back.
        return this.schedule();
      }
      if (n === -E.EINTR) return this.schedule();
      // ENODEV: unmounted or aborted. End of file: the other end of a socket standing in for the device closed.
      if (n === -E.ENODEV || n === 0) return this.finish(null);
      return this.finish(new Error(`reading /dev/fuse: errno ${-n}`));
    }
  };

  /** Waiting mode: a pool thread polls the device while the event loop completes the outstanding work. */
  private watch(): void {
    if (this.watching) return;
    this.watching = true;
    pollRawAsync(this.pollFds, WATCH_POLL_MS, () => {
      this.watching = false;
      this.schedule();
    });
  }

  private finish(err: Error | null): void {
    if (this.ended) return;
    this.ended = true;
    closeRaw(this.fd);
    this.destroy();
    if (err) this.rejectEnded(err);
    else this.resolveEnded();
  }

  /**
   * destroy pairs with init, as in libfuse: once, after a DESTROY or when the device closes,
   * whichever comes first. What it throws is reported: the session ends all the same (from
   * the serving loop it would be an uncaught exception).
   */
  private destroy(): void {
    if (this.destroyed || this.connection === null) return;
    this.destroyed = true;
    try {
      this.fs.destroy?.();
    } catch (err) {
      this.options.onBug?.('destroy', err);
    }
  }

  private send(unique: number, error: number, buf: Buffer, length: number): void {
    if (this.ended) return;
    writeOutHeader(buf, length, -error, unique);
    const n = writeRaw(this.fd, buf, length);
    if (n >= 0) return;
    // ENOENT: the request was interrupted and the kernel has stopped waiting for it.
    if (n === -E.ENOENT) return;
    if (n === -E.ENODEV) return this.finish(null);
    this.options.onBug?.(`reply to ${unique}`, new Error(`writing /dev/fuse: errno ${-n}`));
  }

  private readonly backing: BackingFiles = {
    open: (fd) => {
      this.backingMap.writeInt32LE(fd, 0);
      const id = deviceIoctl(this.fd, Passthrough.IOC_BACKING_OPEN, this.backingMap);
      this.options.log?.(`backing open fd ${fd} -> ${id >= 0 ? id : errnoName(-id)}`);
      return id;
    },
    close: (id) => {
      this.backingIdArg.writeUInt32LE(id, 0);
      const n = deviceIoctl(this.fd, Passthrough.IOC_BACKING_CLOSE, this.backingIdArg);
      this.options.log?.(`backing close ${id} -> ${n >= 0 ? 'ok' : errnoName(-n)}`);
      return Math.min(n, 0);
    },
  };

  invalInode(node: number, offset = -1, length = 0): number {
    if (this.ended || this.connection === null) return E.ENOTCONN;
    const n = Size.OUT_HEADER + writeNotifyInvalInodeOut(this.notifyBuf, Size.OUT_HEADER, node, offset, length);
    // A notification is unique 0, its code where a reply's error goes.
    writeOutHeader(this.notifyBuf, n, Notify.INVAL_INODE, 0);
    const written = writeRaw(this.fd, this.notifyBuf, n);
    this.options.log?.(`notify inval_inode ${this.options.nodeName?.(node) ?? `#${node}`} -> ${written >= 0 ? 'ok' : errnoName(-written)}`);
    if (written >= 0) return 0;
    if (written === -E.ENODEV) this.finish(null);
    return -written;
  }

  private sendError(req: Request, errno: number): void {
    this.trace(req, errnoName(errno));
    this.send(req.unique, errno, this.out, Size.OUT_HEADER);
  }

  private trace(req: Request, result: string): void {
    const log = this.options.log;
    if (!log) return;
    const node = this.options.nodeName?.(req.nodeId) ?? `#${req.nodeId}`;
    const detail = (req as Traced).detail;
    log(`${OP_NAMES[req.opcode] ?? req.opcode} ${node}${detail ? ` ${detail}` : ''} -> ${result}`);
  }

  private fail(req: Request, err: unknown): void {
    let errno = errnoOf(err);
    if (errno === null) {
      this.options.onBug?.(OP_NAMES[req.opcode] ?? String(req.opcode), err);
      errno = E.EIO;
    }
    this.sendError(req, errno);
  }

  /**
   * Runs a method and answers with what it gives. `failed` runs when no answer with the
   * method's data goes out (it threw, or its answer could not be encoded).
   */
  private call<T>(req: Request, run: (() => Awaitable<T>) | null, encode: Encode<T>, failed?: () => void): void {
    if (run === null) {
      this.sendError(req, E.ENOSYS);
      return;
    }
    let result: Awaitable<T>;
    try {
      result = run();
    } catch (err) {
      failed?.();
      this.fail(req, err);
      return;
    }
    if (!isPromise(result)) {
      this.answer(req, result, encode, failed);
      return;
    }
    // The request's buffer stays with it until it is answered; reads go on in a fresh one.
    const held = this.inBuf;
    this.inBuf = this.spareIn.pop() ?? this.newInBuffer();
    this.pending.set(req.unique, req);
    result.then(
      (value) => this.answer(req, value, encode, failed),
      (err) => {
        failed?.();
        this.fail(req, err);
      },
    ).finally(() => {
      this.pending.delete(req.unique);
      if (held.length >= this.inBuf.length) this.spareIn.push(held);
      // Nothing left outstanding: back to serving from this thread.
      if (this.pending.size === 0) this.schedule();
    });
  }

  private answer<T>(req: Request, value: T, encode: Encode<T>, failed?: () => void): void {
    let encoded: number | OwnReply;
    try {
      encoded = encode(this.out, value);
    } catch (err) {
      failed?.();
      this.fail(req, err);
      return;
    }
    if (this.options.log) this.trace(req, summary(value));
    if (typeof encoded === 'number') {
      this.send(req.unique, 0, this.out, Size.OUT_HEADER + encoded);
      return;
    }
    this.send(req.unique, 0, encoded.buf, encoded.length);
    encoded.sent?.();
  }

  /**
   * forget has no answer to carry an error: one it throws is reported, and the rest of a
   * batch is still forgotten (thrown from here it would end the serving loop).
   */
  private forget(node: number, count: number): void {
    try {
      this.fs.forget?.(node, count);
    } catch (err) {
      this.options.onBug?.('forget', err);
    }
  }

  private readBufferSize(): number {
    return Size.OUT_HEADER + this.maxRead;
  }

  private dispatch(n: number): void {
    const buf = this.inBuf;
    const h = readInHeader(buf);
    if (h.len !== n) {
      this.options.onBug?.('request', new Error(`request length ${h.len} but ${n} bytes read`));
      return;
    }
    const req: Traced = { opcode: h.opcode, unique: h.unique, nodeId: h.nodeId, uid: h.uid, gid: h.gid, pid: h.pid, interrupted: false };
    const body = Size.IN_HEADER;
    const end = n - h.extLen;
    if (this.options.log) req.detail = describeArgs(h.opcode, buf, body, end);
    const fs = this.fs;
    const node = h.nodeId;
    if (this.connection === null && h.opcode !== Op.INIT) {
      // Even before INIT, what wants no answer gets none.
      if (!NO_ANSWER.has(h.opcode)) this.sendError(req, E.EIO);
      return;
    }
    const allowed = this.options.allowedUids;
    if (allowed && h.uid !== 0 && !allowed.has(h.uid) && !OPEN_FILE_OPS.has(h.opcode)) {
      this.sendError(req, E.EACCES);
      return;
    }
    switch (h.opcode) {
      case Op.INIT:
        return this.init(req, buf, body, end - body);
      case Op.DESTROY:
        return this.call(req, () => this.destroy(), () => 0);
      case Op.FORGET:
        this.forget(node, readU64(buf, body));
        return;
      case Op.BATCH_FORGET: {
        const count = buf.readUInt32LE(body);
        for (let i = 0, off = body + 8; i < count && off + Size.FORGET_ONE <= end; i++, off += Size.FORGET_ONE) {
          this.forget(readU64(buf, off), readU64(buf, off + 8));
        }
        return;
      }
      case Op.INTERRUPT: {
        const target = this.pending.get(readU64(buf, body));
        if (target) target.interrupted = true;
        return;
      }
      case Op.NOTIFY_REPLY:
        return;
      case Op.LOOKUP: {
        const name = readCString(buf, body, end).value;
        return this.call(req, fs.lookup ? () => fs.lookup!(req, node, name) : null, entryOut);
      }
      case Op.GETATTR: {
        const flags = buf.readUInt32LE(body);
        const fh = (flags & GETATTR_FH) !== 0 ? readU64(buf, body + 8) : null;
        return this.call(req, fs.getattr ? () => fs.getattr!(req, node, fh) : null, attrOut);
      }
      case Op.SETATTR: {
        const changes = readSetattrIn(buf, body);
        return this.call(req, fs.setattr ? () => fs.setattr!(req, node, changes) : null, attrOut);
      }
      case Op.READLINK:
        return this.call(req, fs.readlink ? () => fs.readlink!(req, node) : null, (out, target: Buffer) => this.data(out, target));
      case Op.SYMLINK: {
        const name = readCString(buf, body, end);
        const target = readCString(buf, name.next, end).value;
        return this.call(req, fs.symlink ? () => fs.symlink!(req, node, name.value, target) : null, entryOut);
      }
      case Op.MKNOD: {
        const mode = buf.readUInt32LE(body);
        const rdev = buf.readUInt32LE(body + 4);
        const umask = buf.readUInt32LE(body + 8);
        const name = readCString(buf, body + 16, end).value;
        return this.call(req, fs.mknod ? () => fs.mknod!(req, node, name, mode, rdev, umask) : null, entryOut);
      }
      case Op.MKDIR: {
        const mode = buf.readUInt32LE(body);
        const umask = buf.readUInt32LE(body + 4);
        const name = readCString(buf, body + 8, end).value;
        return this.call(req, fs.mkdir ? () => fs.mkdir!(req, node, name, mode, umask) : null, entryOut);
      }
      case Op.UNLINK: {
        const name = readCString(buf, body, end).value;
        return this.call(req, fs.unlink ? () => fs.unlink!(req, node, name) : null, empty);
      }
      case Op.RMDIR: {
        const name = readCString(buf, body, end).value;
        return this.call(req, fs.rmdir ? () => fs.rmdir!(req, node, name) : null, empty);
      }
      case Op.RENAME:
      case Op.RENAME2: {
        const newParent = readU64(buf, body);
        const flags = h.opcode === Op.RENAME2 ? buf.readUInt32LE(body + 8) : 0;
        const name = readCString(buf, body + (h.opcode === Op.RENAME2 ? 16 : 8), end);
        const newName = readCString(buf, name.next, end).value;
        return this.call(req, fs.rename ? () => fs.rename!(req, node, name.value, newParent, newName, flags) : null, empty);
      }
      case Op.LINK: {
        const oldNode = readU64(buf, body);
        const name = readCString(buf, body + 8, end).value;
        return this.call(req, fs.link ? () => fs.link!(req, oldNode, node, name) : null, entryOut);
      }
      case Op.OPEN:
      case Op.OPENDIR: {
        const flags = buf.readUInt32LE(body);
        const method = h.opcode === Op.OPEN ? fs.open : fs.opendir;
        // No open method: the kernel is told there is no open support, and opens on its own.
        return this.call(req, method ? () => method.call(fs, req, node, flags) : null, openOut);
      }
      case Op.READ:
        return this.read(req, buf, body);
      case Op.WRITE: {
        const fh = readU64(buf, body);
        const offset = readU64(buf, body + 8);
        const size = buf.readUInt32LE(body + 16);
        const writeFlags = buf.readUInt32LE(body + 20);
        const flags = buf.readUInt32LE(body + 32);
        const data = buf.subarray(body + 40, Math.min(body + 40 + size, end));
        return this.call(req, fs.write ? () => fs.write!(req, node, fh, offset, data, writeFlags, flags) : null, writeOut);
      }
      case Op.STATFS:
        return this.call(req, fs.statfs ? () => fs.statfs!(req, node) : null, (out, s) => writeStatfsOut(out, Size.OUT_HEADER, s));
      case Op.RELEASE:
      case Op.RELEASEDIR: {
        const fh = readU64(buf, body);
        const flags = buf.readUInt32LE(body + 8);
        const releaseFlags = buf.readUInt32LE(body + 12);
        const run = h.opcode === Op.RELEASE
          ? fs.release && (() => fs.release!(req, node, fh, flags, releaseFlags))
          : fs.releasedir && (() => fs.releasedir!(req, node, fh, flags));
        // Nothing to release is no error: the kernel sends these whatever open answered.
        return this.call(req, run ?? (() => undefined), empty);
      }
      case Op.FSYNC:
      case Op.FSYNCDIR: {
        const fh = readU64(buf, body);
        const datasync = (buf.readUInt32LE(body + 8) & FSYNC_FDATASYNC) !== 0;
        const method = h.opcode === Op.FSYNC ? fs.fsync : fs.fsyncdir;
        return this.call(req, method ? () => method.call(fs, req, node, fh, datasync) : null, empty);
      }
      case Op.SETXATTR: {
        const size = buf.readUInt32LE(body);
        const flags = buf.readUInt32LE(body + 4);
        const extended = this.connection !== null && (this.connection.flags & BigInt(Init.SETXATTR_EXT)) !== 0n;
        const name = readCString(buf, body + (extended ? 16 : 8), end);
        const value = buf.subarray(name.next, Math.min(name.next + size, end));
        return this.call(req, fs.setxattr ? () => fs.setxattr!(req, node, name.value, value, flags) : null, empty);
      }
      case Op.GETXATTR: {
        const size = buf.readUInt32LE(body);
        const name = readCString(buf, body + 8, end).value;
        return this.call(req, fs.getxattr ? () => fs.getxattr!(req, node, name) : null, (out, value: Buffer) => this.sized(out, value, size));
      }
      case Op.LISTXATTR: {
        const size = buf.readUInt32LE(body);
        return this.call(req, fs.listxattr ? () => fs.listxattr!(req, node) : null, (out, list: Buffer) => this.sized(out, list, size));
      }
      case Op.REMOVEXATTR: {
        const name = readCString(buf, body, end).value;
        return this.call(req, fs.removexattr ? () => fs.removexattr!(req, node, name) : null, empty);
      }
      case Op.FLUSH: {
        const fh = readU64(buf, body);
        const lockOwner = buf.readBigUInt64LE(body + 16);
        return this.call(req, fs.flush ? () => fs.flush!(req, node, fh, lockOwner) : null, empty);
      }
      case Op.READDIR:
      case Op.READDIRPLUS:
        return this.readdir(req, buf, body);
      case Op.ACCESS: {
        const mask = buf.readUInt32LE(body);
        return this.call(req, fs.access ? () => fs.access!(req, node, mask) : null, empty);
      }
      case Op.CREATE: {
        const flags = buf.readUInt32LE(body);
        const mode = buf.readUInt32LE(body + 4);
        const umask = buf.readUInt32LE(body + 8);
        const name = readCString(buf, body + 16, end).value;
        return this.call(req, fs.create ? () => fs.create!(req, node, name, mode, umask, flags) : null, (out, c) => {
          writeEntryOut(out, Size.OUT_HEADER, c);
          return Size.ENTRY_OUT + writeOpenOut(out, Size.OUT_HEADER + Size.ENTRY_OUT, c.open.fh, c.open.flags, c.open.backingId);
        });
      }
      case Op.FALLOCATE: {
        const fh = readU64(buf, body);
        const offset = readU64(buf, body + 8);
        const length = readU64(buf, body + 16);
        const mode = buf.readUInt32LE(body + 24);
        return this.call(req, fs.fallocate ? () => fs.fallocate!(req, node, fh, offset, length, mode) : null, empty);
      }
      case Op.LSEEK: {
        const fh = readU64(buf, body);
        const offset = readU64(buf, body + 8);
        const whence = buf.readUInt32LE(body + 16);
        return this.call(req, fs.lseek ? () => fs.lseek!(req, node, fh, offset, whence) : null, (out, o: number) => writeLseekOut(out, Size.OUT_HEADER, o));
      }
      case Op.COPY_FILE_RANGE: {
        const fhIn = readU64(buf, body);
        const offIn = readU64(buf, body + 8);
        const nodeOut = readU64(buf, body + 16);
        const fhOut = readU64(buf, body + 24);
        const offOut = readU64(buf, body + 32);
        const len = readU64(buf, body + 40);
        const flags = Number(buf.readBigUInt64LE(body + 48) & 0xffffffffn);
        return this.call(req, fs.copyFileRange ? () => fs.copyFileRange!(req, node, fhIn, offIn, nodeOut, fhOut, offOut, len, flags) : null, writeOut);
      }
      default:
        return this.sendError(req, E.ENOSYS);
    }
  }

  private init(req: Request, buf: Buffer, body: number, length: number): void {
    const k = readInitIn(buf, body, length);
    if (k.major > KERNEL_VERSION) {
      // The kernel will ask again with our major version: say only which one that is.
      this.out.writeUInt32LE(KERNEL_VERSION, Size.OUT_HEADER);
      this.out.writeUInt32LE(MAX_MINOR, Size.OUT_HEADER + 4);
      this.send(req.unique, 0, this.out, Size.OUT_HEADER + 8);
      return;
    }
    if (k.major < KERNEL_VERSION || k.minor < MIN_MINOR) {
      this.sendError(req, E.EPROTO);
      return this.finish(new Error(`the kernel speaks FUSE ${k.major}.${k.minor}; ${KERNEL_VERSION}.${MIN_MINOR} or later is needed`));
    }
    const minor = Math.min(k.minor, MAX_MINOR);
    let flags = this.options.want & k.flags;
    let maxPages = 0;
    if ((flags & BigInt(Init.MAX_PAGES)) !== 0n) {
      // The kernel takes no more than its fuse_max_pages_limit (256 by default) anyway.
      maxPages = Math.min(MAX_PAGES_LIMIT, Math.max(1, Math.ceil(this.maxWrite / PAGE)));
      this.maxWrite = Math.min(this.maxWrite, maxPages * PAGE);
    } else {
      // Without max_pages the kernel sends at most 32 pages a request.
      this.maxWrite = Math.min(this.maxWrite, DEFAULT_MAX_PAGES * PAGE);
    }
    this.maxRead = (maxPages || DEFAULT_MAX_PAGES) * PAGE;
    // flags2 is read only with FUSE_INIT_EXT on both sides.
    if (flags >> 32n !== 0n) flags |= BigInt(Init.INIT_EXT);
    const maxBackground = this.options.maxBackground ?? 12;
    const passthrough = (flags & Passthrough.INIT) !== 0n;
    const length2 = writeInitOut(this.out, Size.OUT_HEADER, {
      major: KERNEL_VERSION,
      minor,
      maxReadahead: k.maxReadahead,
      flags,
      maxBackground,
      congestionThreshold: Math.floor((maxBackground * 3) / 4),
      maxWrite: this.maxWrite,
      timeGran: 1,
      maxPages,
      maxStackDepth: passthrough ? MAX_STACK_DEPTH : 0,
    });
    const connection = { major: KERNEL_VERSION, minor, offered: k.flags, flags, maxWrite: this.maxWrite, maxReadahead: k.maxReadahead, maxPages };
    try {
      this.fs.init?.(connection, this, passthrough ? this.backing : null);
    } catch (err) {
      // A file system that cannot start refuses the mount: the kernel fails every access.
      this.sendError(req, E.EIO);
      return this.finish(err instanceof Error ? err : new Error(String(err)));
    }
    this.connection = connection;
    this.options.log?.(`init 7.${minor} flags ${flags.toString(16)} max_write ${this.maxWrite}`);
    this.send(req.unique, 0, this.out, Size.OUT_HEADER + length2);
  }

  private read(req: Request, buf: Buffer, body: number): void {
    const fs = this.fs;
    const fh = readU64(buf, body);
    const offset = readU64(buf, body + 8);
    const size = Math.min(buf.readUInt32LE(body + 16), this.maxRead);
    if (!fs.read) return this.sendError(req, E.ENOSYS);
    // The data is read straight into its reply, in a buffer the request keeps until answered.
    const own = this.spareRead.pop() ?? Buffer.allocUnsafe(this.readBufferSize());
    const recycle = () => {
      if (own.length === this.readBufferSize()) this.spareRead.push(own);
    };
    const into = own.subarray(Size.OUT_HEADER, Size.OUT_HEADER + size);
    this.call(req, () => fs.read!(req, req.nodeId, fh, offset, size, into), (out, got: number | Buffer) => {
      if (typeof got === 'number') return { buf: own, length: Size.OUT_HEADER + Math.max(0, Math.min(got, size)), sent: recycle };
      recycle();
      return this.data(out, got.length > size ? got.subarray(0, size) : got);
    }, recycle);
  }

  private readdir(req: Request, buf: Buffer, body: number): void {
    const fs = this.fs;
    const fh = readU64(buf, body);
    const offset = readU64(buf, body + 8);
    const size = buf.readUInt32LE(body + 16);
    const plus = req.opcode === Op.READDIRPLUS;
    const method = plus ? fs.readdirplus : fs.readdir;
    if (!method) return this.sendError(req, E.ENOSYS);
    const listing = new Listing(size, plus);
    this.call(req, () => method.call(fs, req, req.nodeId, fh, offset, listing as DirectorySink & DirectoryPlusSink), () => ({
      buf: listing.buf,
      length: listing.length,
    }), () => {
      // Entries taken for an answer that is not sent count no lookup in the kernel.
      for (const e of listing.taken) this.forget(e.nodeId, 1);
    });
  }

  /** A variable-length answer: in the shared buffer when it fits, else in one of its own. */
  private data(out: Buffer, data: Buffer): number | OwnReply {
    if (Size.OUT_HEADER + data.length <= out.length) {
      data.copy(out, Size.OUT_HEADER);
      return data.length;
    }
    const own = Buffer.allocUnsafe(Size.OUT_HEADER + data.length);
    data.copy(own, Size.OUT_HEADER);
    return { buf: own, length: own.length };
  }

  /** getxattr/listxattr: size 0 asks for the length, a smaller size than needed is ERANGE. */
  private sized(out: Buffer, value: Buffer, size: number): number | OwnReply {
    if (size === 0) return writeGetxattrOut(out, Size.OUT_HEADER, value.length);
    if (value.length > size) throw Object.assign(new Error('ERANGE'), { errno: E.ERANGE });
    return this.data(out, value);
  }
}

const entryOut: Encode<Entry> = (out, e) => writeEntryOut(out, Size.OUT_HEADER, e);
const attrOut: Encode<{ attr: import('./types').Attr; timeout: number }> = (out, a) => writeAttrOut(out, Size.OUT_HEADER, a.attr, a.timeout);
const openOut: Encode<Opened> = (out, o) => writeOpenOut(out, Size.OUT_HEADER, o.fh, o.flags, o.backingId);
const writeOut: Encode<number> = (out, n) => writeWriteOut(out, Size.OUT_HEADER, n);
const empty: Encode<unknown> = () => 0;

/** What the log says of a request's arguments: names, sizes and offsets. */
function describeArgs(opcode: number, buf: Buffer, body: number, end: number): string {
  const name = (off: number) => readCString(buf, off, end).value.toString('latin1');
  switch (opcode) {
    case Op.LOOKUP:
    case Op.UNLINK:
    case Op.RMDIR:
    case Op.REMOVEXATTR:
      return name(body);
    case Op.MKDIR:
      return `${name(body + 8)} mode ${buf.readUInt32LE(body).toString(8)}`;
    case Op.MKNOD:
      return `${name(body + 16)} mode ${buf.readUInt32LE(body).toString(8)}`;
    case Op.CREATE:
      return `${name(body + 16)} mode ${buf.readUInt32LE(body + 4).toString(8)} flags ${buf.readUInt32LE(body).toString(8)}`;
    case Op.SYMLINK: {
      const first = readCString(buf, body, end);
      return `${first.value.toString('latin1')} -> ${name(first.next)}`;
    }
    case Op.RENAME:
    case Op.RENAME2: {
      const two = opcode === Op.RENAME2;
      const from = readCString(buf, body + (two ? 16 : 8), end);
      return `${from.value.toString('latin1')} -> #${readU64(buf, body)}/${name(from.next)}${two ? ` flags ${buf.readUInt32LE(body + 8)}` : ''}`;
    }
    case Op.LINK:
      return `#${readU64(buf, body)} as ${name(body + 8)}`;
    case Op.OPEN:
    case Op.OPENDIR:
      return `flags ${buf.readUInt32LE(body).toString(8)}`;
    case Op.READ:
    case Op.WRITE:
    case Op.READDIR:
    case Op.READDIRPLUS:
      return `${buf.readUInt32LE(body + 16)}@${readU64(buf, body + 8)}`;
    case Op.SETATTR:
      return `valid ${buf.readUInt32LE(body).toString(16)}`;
    case Op.SETXATTR:
    case Op.GETXATTR:
      return name(body + 8);
    case Op.FORGET:
      return `${readU64(buf, body)}`;
    default:
      return '';
  }
}

/** What the log says of an answer. */
function summary(value: unknown): string {
  if (value === undefined || value === null) return 'ok';
  if (typeof value === 'number') return String(value);
  if (Buffer.isBuffer(value)) return `${value.length} bytes`;
  const v = value as { nodeId?: number; fh?: number; open?: { fh: number } };
  if (v.nodeId !== undefined) return v.nodeId === 0 ? 'none' : `#${v.nodeId}${v.open ? ` fh ${v.open.fh}` : ''}`;
  if (v.fh !== undefined) return `ok fh ${v.fh}`;
  return 'ok';
}

const ERRNO_NAMES = new Map<number, string>(Object.entries(E).map(([name, no]) => [no as number, name]));

function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}
