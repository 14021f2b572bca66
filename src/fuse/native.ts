/**
 * fuse-native, with what it lacks for an overlay filesystem.
 *
 * fuse-native builds libfuse's `-o` string in its `_fuseOptions()` method from a fixed set of
 * camel-case options; libfuse options outside that set (use_ino, hard_remove, big_writes,
 * subtype, ...) cannot be passed. This subclass overrides that one method to hand libfuse
 * the exact option list we computed (see fuse-options.ts), so:
 *  - use_ino: st_ino and d_ino come from us (one number per file, shared by hard links),
 *    not from libfuse's node ids;
 *  - hard_remove: unlinking an open file removes it at once instead of renaming it to a
 *    `.fuse_hidden*` file, which would land in the upper layer;
 *  - big_writes: writes arrive in 128 KiB pieces instead of 4 KiB ones.
 * It also replaces the getxattr/listxattr glue, which ignores the caller's buffer size
 * (a too-small buffer must give ERANGE, and a size query the exact size).
 * The overridden methods are those of fuse-native 2.2.6, pinned exactly in package.json.
 */
import Fuse, { type FuseOptions, type Operations } from 'fuse-native';

const ERANGE = 34;
const ENODATA = 61;

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
