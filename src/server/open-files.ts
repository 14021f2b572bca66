/**
 * How each open file reaches its data: through the server (the kernel's page cache in front,
 * every miss a READ request), or by passthrough, the kernel reading and writing the upper
 * layer's file itself.
 *
 * Passthrough is only for files in the upper layer. A file open on a lower layer may be
 * copied up while it is open, and the kernel could not be told to follow: its reads would go
 * on showing the lower data after writes to the copy. Served opens follow a copy-up (the
 * overlay points their descriptors at the copy).
 *
 * The kernel's rules for one inode: its opens are all cached or all passthrough, never both
 * at once (an open of the other kind fails with EIO), and all its passthrough opens name the
 * same backing file. So a node open for cached I/O (opened while on a lower layer) has its
 * later opens cached too until the last one is released, and a node's backing id lives from
 * its first passthrough open to the release of its last. The server learns of a release
 * after the kernel does, so what it believes open is never less than what the kernel holds.
 */
import { constants } from 'node:os';
import { Fopen, Passthrough } from '../fuse/protocol';
import type { BackingFiles, Opened } from '../fuse/types';
import { log } from '../log';

const E = constants.errno;

/**
 * Cached opens keep the kernel's page cache across opens: every write and change of names
 * passes through it, and a copy-up keeps the data. Not so after passthrough writes, which
 * bypass that cache: a node that has had passthrough opens gets its cache dropped on a
 * cached open (a fallback where no backing file could be registered).
 */
const CACHED = Fopen.KEEP_CACHE;
const CACHED_AFTER_PASSTHROUGH = 0;

/** The opens of one node. */
interface NodeOpens {
  cached: number;
  passthrough: number;
  /** Its backing file's id while it has passthrough opens, else 0. */
  backingId: number;
  hadPassthrough: boolean;
}

interface OpenFile {
  readonly opens: NodeOpens;
  readonly passthrough: boolean;
}

export class OpenFiles {
  private readonly byNode = new WeakMap<object, NodeOpens>();
  private readonly byHandle = new Map<number, OpenFile>();
  private backing: BackingFiles | null = null;

  /** Passthrough from now on, through these backing files (null: every open is cached). */
  usePassthrough(backing: BackingFiles | null): void {
    this.backing = backing;
  }

  /**
   * The answer for handle `fh`, just opened on `node`: passthrough where `inUpper` says the
   * descriptor is the upper layer's file and the kernel's rules allow it.
   */
  opened(node: object, fh: number, inUpper: boolean): Opened {
    let opens = this.byNode.get(node);
    if (opens === undefined) {
      opens = { cached: 0, passthrough: 0, backingId: 0, hadPassthrough: false };
      this.byNode.set(node, opens);
    }
    if (inUpper && opens.cached === 0 && this.backing !== null && (opens.backingId > 0 || this.register(opens, fh))) {
      opens.passthrough++;
      opens.hadPassthrough = true;
      this.byHandle.set(fh, { opens, passthrough: true });
      return { fh, flags: Passthrough.FOPEN, backingId: opens.backingId };
    }
    opens.cached++;
    this.byHandle.set(fh, { opens, passthrough: false });
    return { fh, flags: opens.hadPassthrough ? CACHED_AFTER_PASSTHROUGH : CACHED };
  }

  /** Handle `fh` is released (the kernel sent RELEASE for it). */
  released(fh: number): void {
    const file = this.byHandle.get(fh);
    if (file === undefined) return;
    this.byHandle.delete(fh);
    const opens = file.opens;
    if (!file.passthrough) {
      opens.cached--;
      return;
    }
    if (--opens.passthrough > 0) return;
    const errno = this.backing?.close(opens.backingId) ?? 0;
    if (errno < 0) log.error('cannot drop backing file %d: errno %d', opens.backingId, -errno);
    opens.backingId = 0;
  }

  private register(opens: NodeOpens, fd: number): boolean {
    const id = this.backing!.open(fd);
    if (id > 0) {
      opens.backingId = id;
      return true;
    }
    // EPERM: the server lacks CAP_SYS_ADMIN (rootless); no later open would do better.
    if (id === -E.EPERM) {
      log.mount('passthrough is off: the kernel refuses backing files to this process (EPERM)');
      this.backing = null;
    } else {
      // ELOOP (a layer on a stacked filesystem), EMFILE...: this open is served instead.
      log.op('no backing file for fd %d: errno %d; served instead', fd, -id);
    }
    return false;
  }
}
