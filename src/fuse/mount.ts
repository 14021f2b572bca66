/**
 * Mounting a FUSE filesystem and unmounting it, without libfuse:
 *  - with the privilege to mount (root, or root of a user namespace that owns the mount
 *    namespace): open /dev/fuse and mount(2) type `fuse.SUBTYPE` with the descriptor in the
 *    options (`fd=N,rootmode=...,user_id=...,group_id=...`);
 *  - otherwise through the setuid fusermount3, as libfuse does: it opens the device, mounts,
 *    and sends the descriptor back over the Unix socket named by `_FUSE_COMMFD`.
 * Either way the result is a descriptor to run a Session on.
 */
import { constants } from 'node:os';
import { closeRaw, O_CLOEXEC, O_NONBLOCK, O_RDWR, openRaw, setNonBlocking } from '../sys/device';
import {
  mount, MNT_DETACH, MS_DIRSYNC, MS_NOATIME, MS_NODEV, MS_NODIRATIME, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_RELATIME,
  MS_STRICTATIME, MS_SYNCHRONOUS, MS_LAZYTIME, receiveFd, socketPair, umount2,
} from '../sys/mount';

export interface MountSpec {
  readonly mountpoint: string;
  /** The source /proc/mounts shows. */
  readonly fsname: string;
  /** The type is `fuse.SUBTYPE`. */
  readonly subtype: string;
  /**
   * Mount options in mount(8)'s words: `ro`, `nosuid`/`suid`, `nodev`/`dev`, `noexec`/`exec`,
   * `noatime`/`atime`/`relatime`/`strictatime`, `nodiratime`, `lazytime`, `sync`, `dirsync`,
   * and FUSE's `allow_other`, `default_permissions`. Later ones win; suid and dev are off
   * unless asked for, as with libfuse.
   */
  readonly options: readonly string[];
}

export interface Mounted {
  /** The device descriptor, non-blocking, close-on-exec. */
  readonly fd: number;
  /** How the mount was made, which decides how it is unmounted. */
  readonly via: 'mount' | 'fusermount3';
}

/** Flags that each option sets, and clears. */
const FLAG_OPTIONS: Record<string, [number, number]> = {
  ro: [MS_RDONLY, 0],
  rw: [0, MS_RDONLY],
  nosuid: [MS_NOSUID, 0],
  suid: [0, MS_NOSUID],
  nodev: [MS_NODEV, 0],
  dev: [0, MS_NODEV],
  noexec: [MS_NOEXEC, 0],
  exec: [0, MS_NOEXEC],
  sync: [MS_SYNCHRONOUS, 0],
  async: [0, MS_SYNCHRONOUS],
  dirsync: [MS_DIRSYNC, 0],
  noatime: [MS_NOATIME, MS_RELATIME | MS_STRICTATIME],
  atime: [0, MS_NOATIME | MS_STRICTATIME],
  relatime: [MS_RELATIME, MS_NOATIME | MS_STRICTATIME],
  strictatime: [MS_STRICTATIME, MS_NOATIME | MS_RELATIME],
  nodiratime: [MS_NODIRATIME, 0],
  lazytime: [MS_LAZYTIME, 0],
};
/** Options the FUSE module itself reads from the mount data. */
const DATA_OPTIONS = new Set(['allow_other', 'default_permissions']);

export class MountError extends Error {}

/** mount(2)'s flags and FUSE data options for `options`; throws on an option it does not know. */
export function kernelMountArgs(options: readonly string[]): { flags: number; data: string[] } {
  let flags = MS_NOSUID | MS_NODEV;
  const data: string[] = [];
  for (const o of options) {
    const f = FLAG_OPTIONS[o];
    if (f) flags = (flags | f[0]) & ~f[1];
    else if (DATA_OPTIONS.has(o)) {
      if (!data.includes(o)) data.push(o);
    } else throw new MountError(`unknown mount option ${o}`);
  }
  return { flags, data };
}

function mayMount(): boolean {
  return process.geteuid?.() === 0;
}

/** Mounts `spec`, directly where this process may, else through fusermount3. */
export function mountFuse(spec: MountSpec): Mounted {
  if (mayMount()) {
    try {
      return { fd: mountDirect(spec), via: 'mount' };
    } catch (err) {
      // Root of a user namespace that does not own this mount namespace: fusermount3 may still.
      if ((err as NodeJS.ErrnoException).errno !== constants.errno.EPERM) throw err;
    }
  }
  return { fd: mountWithFusermount(spec), via: 'fusermount3' };
}

function mountDirect(spec: MountSpec): number {
  const { flags, data } = kernelMountArgs(spec.options);
  const fd = openRaw('/dev/fuse', O_RDWR | O_CLOEXEC | O_NONBLOCK);
  const uid = process.geteuid?.() ?? 0;
  const gid = process.getegid?.() ?? 0;
  try {
    mount(spec.fsname, spec.mountpoint, `fuse.${spec.subtype}`, flags, [`fd=${fd}`, 'rootmode=40000', `user_id=${uid}`, `group_id=${gid}`, ...data].join(','));
  } catch (err) {
    closeRaw(fd);
    throw err;
  }
  return fd;
}

/** fusermount3 reads fsname and subtype from its options, with `,` and `\` escaped. */
function escapeOption(value: string): string {
  return value.replace(/[\\,]/g, (c) => `\\${c}`);
}

function mountWithFusermount(spec: MountSpec): number {
  kernelMountArgs(spec.options);
  const opts = [...spec.options, `fsname=${escapeOption(spec.fsname)}`, `subtype=${escapeOption(spec.subtype)}`].join(',');
  const [ours, theirs] = socketPair();
  try {
    const r = childProcess().spawnSync('fusermount3', ['-o', opts, '--', spec.mountpoint], {
      stdio: ['ignore', 'ignore', 'pipe', theirs],
      env: { ...process.env, _FUSE_COMMFD: '3' },
      encoding: 'utf8',
    });
    if (r.error) throw new MountError(`cannot run fusermount3: ${r.error.message}`);
    const said = (r.stderr ?? '').trim().split('\n').filter(Boolean).join('; ');
    const fd = r.status === 0 ? receiveFd(ours, false) : null;
    if (fd === null) throw new MountError(`fusermount3 failed${said ? `: ${said}` : ''}`);
    setNonBlocking(fd);
    return fd;
  } finally {
    closeRaw(ours);
    closeRaw(theirs);
  }
}

/** Unmounts the way it was mounted; a busy mount is detached (lazily unmounted). */
export function unmountFuse(mountpoint: string, via: Mounted['via']): void {
  if (via === 'mount') {
    try {
      umount2(mountpoint, 0);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).errno !== constants.errno.EBUSY) throw err;
      umount2(mountpoint, MNT_DETACH);
    }
    return;
  }
  let said = '';
  for (const args of [['-u'], ['-u', '-z']]) {
    const r = childProcess().spawnSync('fusermount3', [...args, '--', mountpoint], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
    if (r.status === 0) return;
    said = (r.stderr ?? r.error?.message ?? '').trim();
  }
  throw new MountError(`cannot unmount ${mountpoint}${said ? `: ${said}` : ''}`);
}

/** Only unprivileged mounts run fusermount3: a root mount's start does not pay for loading child_process. */
function childProcess(): typeof import('node:child_process') {
  return require('node:child_process') as typeof import('node:child_process');
}
