/**
 * The kernel's side of a FUSE connection, for driving a real Session without /dev/fuse or
 * root: the session owns one end of a SOCK_SEQPACKET socket pair (one write is one message,
 * as on the device), the test writes requests to the other end and reads the answers.
 *
 * The session blocks this thread in poll(2) while no request is queued and nothing of its
 * own is outstanding (its serving mode, meant for a kernel in another thread). A test plays
 * the kernel from this same thread, so by default the kernel first sends a "hold" request
 * (an lseek on HOLD_NODE) that the session's FileSystem answers only when the test ends: with
 * it outstanding the session waits for requests on a pool thread, and the test keeps the
 * thread. Tests of serving mode send the hold last, or shut the kernel's writing side.
 *
 * Every answer is checked as it arrives: its length matches its header, it answers a request
 * that was sent, that wants an answer, and that has none yet. close() reports what went wrong.
 */
import koffi from 'koffi';
import { setTimeout as sleep } from 'node:timers/promises';
import { Init, Op, Size } from '../../src/fuse/protocol';
import { Session, type SessionOptions } from '../../src/fuse/session';
import type { FileSystem } from '../../src/fuse/types';
import { closeRaw, readRaw, setNonBlocking, writeRaw } from '../../src/sys/device';
import { libc } from '../../src/sys/ffi';
import { socketPair, SOCK_SEQPACKET } from '../../src/sys/mount';

const shutdown = libc.func('int shutdown(int fd, int how)');
const SHUT_WR = 1;
const EAGAIN = 11;

/** The node the hold request is about. */
export const HOLD_NODE = 0xf00d;

/** What a 7.38 kernel offers (flags 0-30; FUSE_SECURITY_CTX in flags2). */
export const KERNEL_FLAGS = 0x7fffffffn | (1n << 32n);

export interface Reply {
  readonly unique: number;
  /** The header's error: 0 or a negative errno. */
  readonly error: number;
  readonly body: Buffer;
}

export interface SendOptions {
  readonly nodeId?: number;
  readonly uid?: number;
  readonly gid?: number;
  readonly pid?: number;
  /** Extensions after the arguments (a multiple of 8 bytes), counted in total_extlen. */
  readonly ext?: Buffer;
  /** FORGET, INTERRUPT and the like: an answer to it is a fault. */
  readonly noReply?: boolean;
  /** A header len other than the message's (a malformed request). */
  readonly len?: number;
}

export interface InitFields {
  major?: number;
  minor?: number;
  maxReadahead?: number;
  /** All 64 bits: the high half goes in flags2 (read only with FUSE_INIT_EXT in flags). */
  flags?: bigint;
  /** Only the first 16 bytes, as kernels before 7.36 send. */
  short?: boolean;
}

export const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
};
export const u64 = (v: number | bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
};
/** A name as the kernel sends it: its bytes and a NUL. */
export const cstr = (s: string | Buffer): Buffer => Buffer.concat([Buffer.from(s), Buffer.alloc(1)]);
export const bytes = (...parts: Buffer[]): Buffer => Buffer.concat(parts);

export function initBody(f: InitFields = {}): Buffer {
  const flags = f.flags ?? KERNEL_FLAGS;
  const b = Buffer.alloc(f.short ? 16 : Size.INIT_IN);
  b.writeUInt32LE(f.major ?? 7, 0);
  b.writeUInt32LE(f.minor ?? 38, 4);
  b.writeUInt32LE(f.maxReadahead ?? 131072, 8);
  b.writeUInt32LE(Number(flags & 0xffffffffn), 12);
  if (!f.short) b.writeUInt32LE(Number(flags >> 32n), 16);
  return b;
}

export class FakeKernel {
  /** The kernel's end of the pair. */
  readonly fd: number;
  readonly session: Session;
  /** What went wrong with the answers: empty when all is well. */
  readonly faults: string[] = [];
  /** run()'s outcome once it settles: null while running, else the error it rejected with (or 'resolved'). */
  outcome: Error | 'resolved' | null = null;
  private ended: Promise<void> | null = null;
  private nextUnique = 2;
  private readonly due = new Set<number>();
  private readonly silent = new Set<number>();
  private readonly arrived = new Map<number, Reply>();
  /** Notifications the session sent, in order (read along with the answers). */
  readonly notifications: { code: number; body: Buffer }[] = [];
  private readonly readBuf = Buffer.alloc(1 << 20);
  private fdOpen = true;
  private releaseHold: (() => void) | null = null;
  private holdUnique = 0;

  /** A kernel and a session on `fs` that is not yet running; `hold` false serves `fs` as it is. */
  constructor(fs: FileSystem, options: SessionOptions, hold = true) {
    const [device, kernel] = socketPair(SOCK_SEQPACKET);
    setNonBlocking(device);
    setNonBlocking(kernel);
    this.fd = kernel;
    let served = fs;
    if (hold) {
      const held = new Promise<number>((resolve) => {
        this.releaseHold = () => resolve(0);
      });
      served = Object.create(fs) as FileSystem;
      served.lseek = (req, node, fh, offset, whence) => {
        if (node === HOLD_NODE) return held;
        if (!fs.lseek) throw Object.assign(new Error('ENOSYS'), { errno: 38 });
        return fs.lseek.call(fs, req, node, fh, offset, whence);
      };
    }
    this.session = new Session(device, served, options);
  }

  /** Starts the session (after the requests it should find queued are written). */
  start(): void {
    this.ended = this.session.run().then(
      () => {
        this.outcome = 'resolved';
      },
      (err: Error) => {
        this.outcome = err;
      },
    );
  }

  /** Writes one request; returns its unique. */
  send(opcode: number, body: Buffer = Buffer.alloc(0), o: SendOptions = {}): number {
    const unique = this.nextUnique;
    this.nextUnique += 2;
    const ext = o.ext ?? Buffer.alloc(0);
    const msg = Buffer.alloc(Size.IN_HEADER + body.length + ext.length);
    msg.writeUInt32LE(o.len ?? msg.length, 0);
    msg.writeUInt32LE(opcode, 4);
    msg.writeBigUInt64LE(BigInt(unique), 8);
    msg.writeBigUInt64LE(BigInt(o.nodeId ?? 1), 16);
    msg.writeUInt32LE(o.uid ?? 1000, 24);
    msg.writeUInt32LE(o.gid ?? 1000, 28);
    msg.writeUInt32LE(o.pid ?? 4242, 32);
    msg.writeUInt16LE(ext.length / 8, 36);
    body.copy(msg, Size.IN_HEADER);
    ext.copy(msg, Size.IN_HEADER + body.length);
    const n = writeRaw(this.fd, msg, msg.length);
    if (n !== msg.length) throw new Error(`writing a request: ${n}`);
    (o.noReply ? this.silent : this.due).add(unique);
    return unique;
  }

  /** The answer to `unique`, waiting up to `timeoutMs` for it. */
  async reply(unique: number, timeoutMs = 2000): Promise<Reply> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const got = this.arrived.get(unique);
      if (got) {
        this.arrived.delete(unique);
        return got;
      }
      if (!this.readOne()) {
        if (Date.now() > deadline) throw new Error(`no answer to request ${unique}`);
        await sleep(1);
      }
    }
  }

  /** Whether the answer to `unique` has come (and is not yet taken by reply()). */
  hasAnswer(unique: number): boolean {
    while (this.readOne());
    return this.arrived.has(unique);
  }

  /** Sends a request and waits for its answer. */
  async call(opcode: number, body?: Buffer, o?: SendOptions): Promise<Reply> {
    return this.reply(this.send(opcode, body, o));
  }

  /**
   * Waits until the session has dispatched everything sent so far: it serves requests in
   * order, so once a request that no method sees (BMAP: ENOSYS) is answered, every earlier
   * synchronous method has run and answered.
   */
  async settle(): Promise<void> {
    await this.call(Op.BMAP, Buffer.alloc(16));
  }

  /** Sends the hold request (the constructor's `hold` must have been true). */
  hold(): void {
    this.holdUnique = this.send(Op.LSEEK, Buffer.alloc(24), { nodeId: HOLD_NODE });
  }

  /** Sends INIT and returns the answer. */
  async init(f?: InitFields): Promise<Reply> {
    return this.call(Op.INIT, initBody(f));
  }

  /** Answers that arrived but nobody asked for, and requests still without one (the hold aside). */
  unclaimed(): { arrived: number[]; unanswered: number[] } {
    while (this.readOne());
    return {
      arrived: [...this.arrived.keys()].filter((u) => u !== this.holdUnique),
      unanswered: [...this.due].filter((u) => u !== this.holdUnique),
    };
  }

  /** Shuts the kernel's writing side: the session reads end of file once it has served what is queued. */
  shutWrite(): void {
    if (shutdown(this.fd, SHUT_WR) < 0) throw new Error(`shutdown: errno ${koffi.errno()}`);
  }

  /** Resolves when run() has settled (see `outcome`); throws if it does not within `timeoutMs`. */
  async waitEnded(timeoutMs = 2000): Promise<void> {
    if (!this.ended) throw new Error('the session was not started');
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('the session did not end')), timeoutMs);
    });
    try {
      await Promise.race([this.ended, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Closes the kernel's end (the session ends on the end of file), waits for run() to settle
   * and releases the hold. Idempotent; safe in finally.
   */
  async close(): Promise<void> {
    if (this.fdOpen) {
      while (this.readOne());
      this.fdOpen = false;
      closeRaw(this.fd);
    }
    try {
      if (this.ended && this.outcome === null) await this.waitEnded();
    } finally {
      // Whatever happened, the session's end of the pair is closed.
      this.session.close();
      this.releaseHold?.();
    }
  }

  /** Reads one message if one is there: false if none. */
  private readOne(): boolean {
    if (!this.fdOpen) return false;
    const n = readRaw(this.fd, this.readBuf);
    if (n === -EAGAIN || n === 0) return false;
    if (n < 0) throw new Error(`reading an answer: errno ${-n}`);
    if (n < Size.OUT_HEADER) {
      this.faults.push(`an answer of ${n} bytes`);
      return true;
    }
    const len = this.readBuf.readUInt32LE(0);
    const error = this.readBuf.readInt32LE(4);
    const unique = Number(this.readBuf.readBigUInt64LE(8));
    if (len !== n) this.faults.push(`answer to ${unique}: header says ${len} bytes, ${n} came`);
    if (unique === 0) {
      // A notification: its code travels in the error field.
      if (error <= 0) this.faults.push(`a notification with code ${error}`);
      this.notifications.push({ code: error, body: Buffer.from(this.readBuf.subarray(Size.OUT_HEADER, n)) });
      return true;
    }
    if (error > 0 || error <= -512) this.faults.push(`answer to ${unique}: error ${error} is no negative errno`);
    if (error !== 0 && n !== Size.OUT_HEADER) this.faults.push(`answer to ${unique}: error ${error} with ${n - Size.OUT_HEADER} bytes of data`);
    if (this.silent.has(unique)) this.faults.push(`answer to ${unique}, which wants none`);
    else if (!this.due.has(unique)) this.faults.push(`answer to ${unique}, which was not asked or is answered already`);
    this.due.delete(unique);
    this.arrived.set(unique, { unique, error, body: Buffer.from(this.readBuf.subarray(Size.OUT_HEADER, n)) });
    return true;
  }
}

/** Everything a 7.38 kernel offers that the session may use. */
export const WANT_ALL = KERNEL_FLAGS & ~BigInt(Init.INIT_EXT);

export const DEFAULT_OPTIONS: SessionOptions = { want: WANT_ALL, maxWrite: 65536 };

/**
 * A running session on `fs` after INIT (with the hold outstanding): runs `body`, then closes
 * and checks that every request that wants an answer got exactly one.
 */
export async function withSession(
  fs: FileSystem,
  body: (k: FakeKernel) => Promise<void>,
  options: Partial<SessionOptions> = {},
): Promise<void> {
  const k = new FakeKernel(fs, { ...DEFAULT_OPTIONS, ...options });
  try {
    k.send(Op.INIT, initBody());
    k.hold();
    k.start();
    await k.settle();
    await body(k);
    await k.settle();
    const left = k.unclaimed();
    if (k.faults.length > 0 || left.unanswered.length > 0) {
      throw new Error(`faults: ${k.faults.join('; ') || 'none'}; unanswered: ${left.unanswered.join(', ') || 'none'}`);
    }
  } finally {
    await k.close();
  }
}
