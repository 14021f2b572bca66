/**
 * fuse-native, with what it lacks for an overlay filesystem.
 *
 * fuse-native builds libfuse's `-o` string in its `_fuseOptions()` method from a fixed set of
 * camel-case options; libfuse options outside that set (use_ino, big_writes, subtype, the
 * cache timeouts, ...) cannot be passed. This subclass overrides that one method to hand
 * libfuse the exact option list we computed (cli/config.ts, fuse/cache-policy.ts), so:
 *  - use_ino: st_ino and d_ino come from us (one number per file, shared by hard links),
 *    not from libfuse's node ids;
 *  - big_writes: writes arrive in 128 KiB pieces instead of 4 KiB ones.
 * It also replaces the getxattr/listxattr glue, which ignores the caller's buffer size
 * (a too-small buffer must give ERANGE, and a size query the exact size), and mends utimens,
 * whose C glue hands JS the access time twice and never the modification time.
 * The overridden methods are those of fuse-native 2.2.6, pinned exactly in package.json.
 */
// Before fuse-native: its addon must bind to the library's fuse_new (src/sys/caller.ts).
import '../sys/caller';
import Fuse, { type FuseOptions, type Operations } from 'fuse-native';
import { peek, poke } from '../sys/libc';

const ERANGE = 34;
const ENODATA = 61;
/** fuse-native's op number for utimens (op_utimens in fuse-native.c). */
const OP_UTIMENS = 12;
/**
 * Where fuse-native's per-thread `fuse_thread_locals_t` keeps the mtime (ms, size_t) it
 * computed but did not pass on. Its handlers receive that struct as their first argument,
 * a Buffer over its memory. Offset for x86-64/aarch64 (LP64) and fuse-native 2.2.6.
 */
const LOCALS_ATIME_OFFSET = 104;
const LOCALS_MTIME_OFFSET = 112;

type NativeHandler = (locals: Buffer, op: number, ...args: unknown[]) => unknown;

/**
 * Where things sit in fuse-native 2.2.6's `fuse_thread_t` (its `_thread` Buffer) and in
 * libfuse 2.9's `struct fuse` (x86-64). Each is checked against known values before use.
 */
const THREAD_FUSE_PTR = 368;
const THREAD_MNT = 384;
const FUSE_STRUCT_BYTES = 304;
const FUSE_CONF_ENTRY_TIMEOUT = 160;
const FUSE_CONF_HARD_REMOVE = 208;
const FUSE_CONF_USE_INO = 212;
const FUSE_CONF_INTR_SIGNAL = 248;
const FUSE_FS_PTR = 272;
const FUSE_UTIME_OMIT_OK = 284;
const FUSE_PAGESIZE = 296;
const SIGUSR1 = 10;

type Signal = (result: number, ...rest: unknown[]) => void;
interface XattrOps {
  getxattr(path: string, name: string, position: number, cb: (err: number, value?: Buffer) => void): void;
  listxattr(path: string, cb: (err: number, names?: string[]) => void): void;
}

export class NativeFuse extends Fuse {
  constructor(
    mountpoint: string,
    private readonly handlers: Operations & XattrOps,
    private readonly libfuseOptions: readonly string[],
    opts: FuseOptions,
  ) {
    super(mountpoint, handlers, opts);
  }

  /**
   * Lets a setattr that sets only one of atime and mtime through (touch -m, GNU tar's
   * extraction). libfuse 2 drops such a request unless the filesystem declares
   * flag_utime_omit_ok, which fuse-native's C glue does not; the flag lives on as
   * `utime_omit_ok` in libfuse's `struct fuse`, which is set here after checking that the
   * memory around it holds exactly what this mount configured. Returns false, changing
   * nothing, if anything does not match (another libfuse or fuse-native build).
   */
  enableUtimeOmit(entryTimeout: number): boolean {
    const thread = (this as unknown as { _thread?: Buffer })._thread;
    if (!thread || thread.length < THREAD_MNT + this.mnt.length + 1) return false;
    if (thread.toString('utf8', THREAD_MNT, thread.indexOf(0, THREAD_MNT)) !== this.mnt) return false;
    const fuse = thread.readBigUInt64LE(THREAD_FUSE_PTR);
    if (fuse === 0n) return false;
    const f = peek(fuse, FUSE_STRUCT_BYTES);
    const matches =
      f.readDoubleLE(FUSE_CONF_ENTRY_TIMEOUT) === entryTimeout &&
      f.readInt32LE(FUSE_CONF_HARD_REMOVE) === 0 &&
      f.readInt32LE(FUSE_CONF_USE_INO) === 1 &&
      f.readInt32LE(FUSE_CONF_INTR_SIGNAL) === SIGUSR1 &&
      f.readBigUInt64LE(FUSE_FS_PTR) !== 0n &&
      f.readInt32LE(FUSE_UTIME_OMIT_OK) === 0 &&
      f.readInt32LE(FUSE_PAGESIZE) === 4096;
    if (!matches) return false;
    const one = Buffer.alloc(4);
    one.writeInt32LE(1);
    poke(fuse + BigInt(FUSE_UTIME_OMIT_OK), one);
    return true;
  }

  _makeHandlerArray(): NativeHandler[] {
    const handlers = (Fuse.prototype as unknown as { _makeHandlerArray(this: Fuse): NativeHandler[] })._makeHandlerArray.call(this);
    const original = handlers[OP_UTIMENS];
    handlers[OP_UTIMENS] = (locals, op, path, atimeLow, atimeHigh, ...rest) => {
      // The atime beside it must be the one passed, or this is not the layout we know.
      const atime = Number(locals.readBigUInt64LE(LOCALS_ATIME_OFFSET));
      if (atime !== (atimeLow as number) + (atimeHigh as number) * 2 ** 32) return original(locals, op, path, atimeLow, atimeHigh, ...rest);
      const mtime = Number(locals.readBigUInt64LE(LOCALS_MTIME_OFFSET));
      return original(locals, op, path, atimeLow, atimeHigh, mtime % 2 ** 32, Math.floor(mtime / 2 ** 32));
    };
    return handlers;
  }

  _fuseOptions(): string {
    return this.libfuseOptions.length > 0 ? `-o${this.libfuseOptions.join(',')}` : '';
  }

  _op_getxattr(signal: Signal, path: string, name: string, valueBuf: Buffer, position: number): void {
    this.handlers.getxattr(path, name, position, (err, value) => {
      if (err) return signal(err, valueBuf.buffer);
      if (!value) return signal(-ENODATA, valueBuf.buffer);
      if (valueBuf.length === 0) return signal(value.length, valueBuf.buffer);
      if (value.length > valueBuf.length) return signal(-ERANGE, valueBuf.buffer);
      value.copy(valueBuf);
      return signal(value.length, valueBuf.buffer);
    });
  }

  _op_listxattr(signal: Signal, path: string, listBuf: Buffer): void {
    this.handlers.listxattr(path, (err, names) => {
      if (err) return signal(err, listBuf.buffer);
      const list = Buffer.from((names ?? []).map((n) => `${n}\0`).join(''));
      if (listBuf.length === 0) return signal(list.length, listBuf.buffer);
      if (list.length > listBuf.length) return signal(-ERANGE, listBuf.buffer);
      list.copy(listBuf);
      return signal(list.length, listBuf.buffer);
    });
  }
}
