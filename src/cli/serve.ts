/**
 * Serving a mount in this process: open the overlay, mount, answer until unmounted.
 * Never touches the mountpoint's contents itself: the process that serves a FUSE mount
 * would deadlock waiting for its own answer.
 */
import { Init, Passthrough } from '../fuse/protocol';
import { MountError, mountFuse, unmountFuse, type Mounted } from '../fuse/mount';
import { Session } from '../fuse/session';
import { log } from '../log';
import { Overlay } from '../overlay/overlay';
import { OverlayFs } from '../server/overlay-fs';
import type { MountConfig } from './config';

const SUBTYPE = 'ts-overlayfs';
/** Requests of up to 1 MiB (FUSE_MAX_PAGES), as fuse-overlayfs's libfuse 3 asks for. */
const MAX_WRITE = 1 << 20;
/**
 * After our unmount, the kernel ends the connection unless another mount namespace still
 * holds a copy of the mount (made by `unshare -m` or a container start while we were
 * mounted). That copy would keep us waiting forever: after this long the connection is cut.
 */
const UNMOUNT_WAIT_MS = 1000;
/**
 * What the server asks of the kernel; those it offers are used. Directory listings carry
 * each entry's answer (READDIRPLUS, for the first part of a listing and where the kernel saw
 * its entries looked up), sparing a lookup per entry; symlink targets, which never change
 * for a node, stay in the kernel's cache; lookups in one directory need not wait for each other.
 * Not HANDLE_KILLPRIV_V2, though it would spare the GETATTR before each chown: with it, a
 * passthrough write by a user without CAP_FSETID reaches the server as a SETATTR with no
 * field set (the kernel strips the set-id kill it means), so a set-user-ID file would keep
 * its bit where the kernel's overlay drops it (tried on 6.18).
 */
const WANTED = BigInt(
  Init.ASYNC_READ | Init.ATOMIC_O_TRUNC | Init.BIG_WRITES | Init.MAX_PAGES | Init.DO_READDIRPLUS | Init.READDIRPLUS_AUTO
  | Init.CACHE_SYMLINKS | Init.PARALLEL_DIROPS,
);

export interface Served {
  /** Unmounts (lazily if busy) and resolves once the session is over. */
  stop(): Promise<void>;
  /** Resolves when the mount is gone, whoever unmounted it. */
  readonly gone: Promise<void>;
}

export async function serve(config: MountConfig): Promise<Served> {
  const overlay = await Overlay.open({
    lowers: config.lowers,
    upper: config.upper,
    work: config.work,
    xattrNamespace: config.xattrNamespace,
    volatile: config.volatile,
    idmap: config.idmap,
    staticNlink: config.staticNlink,
    noacl: config.noacl,
    noxattrs: config.noxattrs,
    xattrPermissions: config.xattrPermissions,
  });
  let ready!: () => void;
  const initialised = new Promise<void>((resolve) => { ready = resolve; });
  const fs = new OverlayFs(overlay, { cache: config.cache, passthrough: config.passthrough, onInit: () => ready() });
  let mounted: Mounted;
  try {
    mounted = mountFuse({ mountpoint: config.mountpoint, fsname: config.fsname, subtype: SUBTYPE, options: config.mountOptions });
  } catch (err) {
    overlay.close();
    const why = err instanceof MountError ? err.message : (err as Error).message;
    throw new Error(`cannot mount on ${config.mountpoint}: ${why}`);
  }
  const session = new Session(mounted.fd, fs, {
    want: config.passthrough ? WANTED | Passthrough.INIT : WANTED,
    maxWrite: MAX_WRITE,
    allowedUids: config.allowRoot ? new Set([process.geteuid?.() ?? 0]) : undefined,
    log: log.op.enabled ? (line) => log.op('%s', line) : undefined,
    nodeName: (id) => fs.nodeName(id),
    onBug: (op, err) => process.stderr.write(`ts-overlayfs: ${op}: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`),
  });
  const gone = session.run().finally(() => overlay.close());
  // The mount is usable once the kernel's INIT is answered; until then every access would wait.
  await Promise.race([initialised, gone]);
  if (session.isEnded) throw new Error(`cannot mount on ${config.mountpoint}: the kernel ended the session before it began`);
  log.mount('mounted %s on %s (%s) with %s', config.lowers.join(':'), config.mountpoint, mounted.via, config.mountOptions.join(','));
  return {
    gone,
    async stop() {
      unmountFuse(config.mountpoint, mounted.via);
      const timer = setTimeout(() => session.close(), UNMOUNT_WAIT_MS);
      await gone.finally(() => clearTimeout(timer));
    },
  };
}

