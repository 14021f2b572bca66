/**
 * Serving a mount in this process: mount, answer until unmounted, then exit.
 * Never touches the mountpoint's contents itself: the process that serves a FUSE mount
 * would deadlock waiting for its own answer.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { errnoOf, Errno } from '../errors';
import { fuseOperations } from '../fuse/adapter';
import { NativeFuse } from '../fuse/native';
import { log } from '../log';
import { Overlay } from '../overlay/overlay';
import { callerLibraryError, currentCaller, wrappedMounts } from '../sys/caller';
import { MNT_DETACH, umount2 } from '../sys/libc';
import type { MountConfig } from './config';
import { readMountTable } from './mount-table';

const FSTYPE = 'fuse.ts-overlayfs';
const WATCH_INTERVAL_MS = 200;

export interface Served {
  /** Unmounts (lazily if busy) and resolves once the mount is gone. */
  stop(): Promise<void>;
  /** Resolves when the mount disappears, whoever unmounted it. */
  readonly gone: Promise<void>;
}

export async function serve(config: MountConfig): Promise<Served> {
  // Without the caller library, entries made by other users would silently be root's.
  const libraryError = callerLibraryError();
  if (libraryError !== null) throw new Error(`cannot mount on ${config.mountpoint}: ${libraryError} (run npm run build)`);
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
  const wrappedBefore = wrappedMounts();
  const fuse = new NativeFuse(config.mountpoint, fuseOperations(overlay, currentCaller), config.fuseOptions, {
    // fuse-native would answer ETIMEDOUT after 15 s; a large copy-up or read may take longer.
    timeout: false,
  });
  try {
    await new Promise<void>((resolve, reject) => {
      fuse.mount((err) => (err ? reject(new Error(`cannot mount on ${config.mountpoint}: ${err.message}`)) : resolve()));
    });
  } catch (err) {
    // libfuse 2 mounts before it reads its own options: one it refuses (diratime, a bare
    // max_write) fails the start but leaves a dead mount behind. The mountpoint was checked
    // free, so a mount of ours there now is that one.
    if (await isMounted(config.mountpoint)) await unmount(config.mountpoint);
    throw err;
  }
  if (wrappedMounts() === wrappedBefore) {
    await unmount(config.mountpoint);
    throw new Error(`cannot mount on ${config.mountpoint}: fuse-native did not take the caller library's fuse_new, so new entries would not get their creator's owner`);
  }
  const entryTimeout = Number(config.fuseOptions.find((o) => o.startsWith('entry_timeout='))?.split('=')[1]);
  if (!fuse.enableUtimeOmit(entryTimeout)) {
    log.mount('libfuse layout not recognised: setting only one of atime/mtime will be dropped');
  }
  log.mount('mounted %s on %s with %s', config.lowers.join(':'), config.mountpoint, config.fuseOptions.join(','));
  let unmounted!: () => void;
  const gone = new Promise<void>((resolve) => { unmounted = resolve; });
  const watch = watchUntilUnmounted(config.mountpoint, unmounted);
  return {
    gone,
    async stop() {
      await unmount(config.mountpoint);
      clearInterval(watch);
      unmounted();
    },
  };
}

/** Unmounts directly when root (umount2), else through fusermount3/fusermount. */
export async function unmount(mountpoint: string): Promise<void> {
  if (process.getuid?.() === 0) {
    try {
      umount2(mountpoint, 0);
    } catch (err) {
      if (errnoOf(err) !== Errno.EBUSY) throw err;
      umount2(mountpoint, MNT_DETACH);
    }
    return;
  }
  const run = promisify(execFile);
  for (const args of [['-u'], ['-uz']]) {
    for (const prog of ['fusermount3', 'fusermount']) {
      try {
        await run(prog, [...args, mountpoint]);
        return;
      } catch {
        // Try the next program or the lazy form; the last failure is reported below.
      }
    }
  }
  throw new Error(`cannot unmount ${mountpoint}`);
}

async function isMounted(mountpoint: string): Promise<boolean> {
  return (await readMountTable()).some((m) => m.fstype === FSTYPE && m.mountpoint === mountpoint);
}

/**
 * fuse-native gives no word when the kernel ends the session (fusermount -u, umount from a
 * container engine), so the mount table is polled.
 */
function watchUntilUnmounted(mountpoint: string, onGone: () => void): NodeJS.Timeout {
  const timer = setInterval(() => {
    isMounted(mountpoint).then(
      (mounted) => {
        if (!mounted) {
          clearInterval(timer);
          onGone();
        }
      },
      (err) => log.error('reading the mount table: %s', (err as Error).message),
    );
  }, WATCH_INTERVAL_MS);
  return timer;
}
