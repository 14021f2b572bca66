/**
 * From the command line to a checked mount configuration. Every check here only looks:
 * bad input is reported before anything is created, changed or mounted.
 */
import { promises as fsp } from 'node:fs';
import { dirname, resolve, sep } from 'node:path';
import { cachePolicy, type CachePolicy } from '../server/cache-policy';
import { readMountTable } from './mount-table';
import { isInitialRoot } from './privilege';
import type { IdMapOptions } from '../overlay/idmap';
import { parseOptionStrings, splitLowerdir } from './mount-options';
import { interpretOptions, OptionError, type OptionSettings } from './overlay-options';

/** A user error: one line on stderr and a non-zero exit. */
export class CliError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CliError';
  }
}

export interface MountConfig {
  readonly lowers: string[];
  readonly upper?: string;
  readonly work?: string;
  readonly mountpoint: string;
  readonly readOnly: boolean;
  /** Namespace of the opaque markers written to upper: `user` with userxattr or when unprivileged. */
  readonly xattrNamespace: 'trusted' | 'user';
  /** Skip fsync (of copy-ups and of fsync requests), for throw-away uppers. */
  readonly volatile: boolean;
  readonly idmap: IdMapOptions;
  readonly staticNlink: boolean;
  readonly noacl: boolean;
  /** getxattr, listxattr and setxattr answer ENOSYS, as fuse-overlayfs's noxattrs=1. */
  readonly noxattrs: boolean;
  /** Owners and modes kept in an xattr of the upper layer (xattr_permissions=1 or 2), or not (0). */
  readonly xattrPermissions: 0 | 1 | 2;
  readonly foreground: boolean;
  readonly debug: boolean;
  /** The mount's options in mount(8)'s words (src/fuse/mount.ts), ours first, the caller's after. */
  readonly mountOptions: string[];
  /** The source /proc/mounts shows. */
  readonly fsname: string;
  /** Only root and the mounter may use the mount (allow_root). */
  readonly allowRoot: boolean;
  readonly cache: CachePolicy;
  /**
   * Opens of upper files are read and written by the kernel itself (FUSE passthrough): only
   * a server with CAP_SYS_ADMIN may ask for it, and only an upper is written that way.
   */
  readonly passthrough: boolean;
}

export interface CommandLine {
  readonly optionStrings: readonly string[];
  readonly mountpoint?: string;
  readonly foreground: boolean;
  readonly debug: boolean;
}

export type Warn = (message: string) => void;

export async function buildConfig(cmd: CommandLine, warn: Warn): Promise<MountConfig> {
  let o: OptionSettings;
  try {
    o = interpretOptions(parseOptionStrings(cmd.optionStrings), warn);
  } catch (err) {
    if (err instanceof OptionError) throw new CliError(err.message);
    throw err;
  }

  const refused = o.fuseFlags.find((f) => REFUSED_FLAGS.has(f));
  if (refused !== undefined) throw new CliError(`mount option ${refused} is not supported (libfuse refuses it for fuse-overlayfs too)`);
  const allowRoot = o.fuseFlags.includes('allow_root');
  const mountOptions = [
    ...addedMountOptions(process.geteuid?.() === 0),
    // After ours, so that the caller's nosuid or atime wins (the last one counts).
    ...o.fuseFlags.filter((f) => MOUNT_FLAGS.has(f)),
  ];
  // allow_root is allow_other in the kernel, with the server turning away everyone else.
  if (allowRoot && !mountOptions.includes('allow_other')) mountOptions.push('allow_other');

  if (o.lowerdir === undefined || splitLowerdir(o.lowerdir).length === 0) throw new CliError('no lowerdir specified');
  const lowers = await Promise.all(splitLowerdir(o.lowerdir).map((p) => existingDir('lowerdir', p)));

  if (o.upperdir !== undefined && ![0, 1, 2].includes(o.xattrPermissions)) throw new CliError('invalid value for xattr_permissions');
  if (o.upperdir !== undefined && o.workdir === undefined) throw new CliError('upperdir specified without workdir');
  if (o.workdir !== undefined && o.upperdir === undefined) throw new CliError('workdir specified without upperdir');
  const upper = o.upperdir === undefined ? undefined : await existingDir('upperdir', o.upperdir);
  const work = o.workdir === undefined ? undefined : await existingDir('workdir', o.workdir);
  if (upper !== undefined && work !== undefined) {
    const [u, w] = await Promise.all([fsp.stat(upper), fsp.stat(work)]);
    if (u.dev !== w.dev) throw new CliError(`workdir ${work} and upperdir ${upper} must be on the same filesystem`);
  }

  if (cmd.mountpoint === undefined) throw new CliError('no mountpoint specified');
  const mountpoint = await existingDir('mountpoint', cmd.mountpoint);
  if (await isMountpoint(mountpoint)) throw new CliError(`mountpoint ${mountpoint} is already in use (something is mounted there)`);

  const named: [string, string][] = [
    ...lowers.map((p): [string, string] => ['lowerdir', p]),
    ...(upper !== undefined ? [['upperdir', upper] as [string, string]] : []),
    ...(work !== undefined ? [['workdir', work] as [string, string]] : []),
    ['mountpoint', mountpoint],
  ];
  checkNoOverlap(named);

  const writable = !o.readOnly && upper !== undefined;
  // A read-only mount is read-only in the kernel too: every write is EROFS before reaching us.
  if (!writable) mountOptions.push('ro');
  return {
    // With ro the upper is still part of the view (as with fuse-overlayfs and the kernel),
    // only never written: the top read-only layer.
    lowers: upper !== undefined && !writable ? [upper, ...lowers] : lowers,
    upper: writable ? upper : undefined,
    work: writable ? work : undefined,
    mountpoint,
    readOnly: !writable,
    xattrNamespace: o.userxattr || !isInitialRoot() ? 'user' : 'trusted',
    volatile: o.volatile || !o.fsync,
    idmap: {
      uidRanges: o.uidRanges,
      gidRanges: o.gidRanges,
      // squash_to_uid/gid win over squash_to_root, whatever their order.
      squashUid: o.squashUid ?? (o.squashToRoot ? 0 : undefined),
      squashGid: o.squashGid ?? (o.squashToRoot ? 0 : undefined),
    },
    staticNlink: o.staticNlink,
    noacl: o.noacl,
    noxattrs: o.noxattrs,
    xattrPermissions: writable ? (o.xattrPermissions as 0 | 1 | 2) : 0,
    // -d, like -o debug, implies -f: the log goes to the terminal that started the mount.
    foreground: cmd.foreground || cmd.debug || o.debug,
    debug: cmd.debug || o.debug,
    mountOptions,
    fsname: o.fsname,
    allowRoot,
    cache: cachePolicy(o.timeout === undefined ? undefined : cacheSeconds(o.timeout)),
    passthrough: writable && o.passthrough && isInitialRoot(),
  };
}

/** The libfuse options fuse-overlayfs passes on that are mount flags (the rest tune libfuse). */
const MOUNT_FLAGS = new Set(['default_permissions', 'allow_other', 'suid', 'nosuid', 'dev', 'nodev', 'exec', 'noexec', 'atime', 'noatime']);
/** Passed on by fuse-overlayfs, refused by libfuse 2 and 3 alike: its mount fails, so does ours. */
const REFUSED_FLAGS = new Set(['diratime', 'nodiratime', 'max_write']);

/**
 * The mount options fuse-overlayfs 1.10 puts before the caller's own: as root (its check is
 * the effective uid, so root of a user namespace too) `default_permissions,allow_other,suid,
 * noatime,lazytime`, else `default_permissions,noatime`. Without `suid` libfuse mounts nosuid,
 * and set-user-ID programs in containers would run without their privileges. `lazytime` is
 * left out: fuse-overlayfs's own option check drops it again ("unknown argument ignored").
 */
export function addedMountOptions(root: boolean): string[] {
  return root ? ['default_permissions', 'allow_other', 'suid', 'noatime'] : ['default_permissions', 'noatime'];
}

/**
 * A timeout as the kernel gets it: a negative (or unreadable) one is 0, as libfuse makes it,
 * and anything past ~30 years is forever in practice.
 */
function cacheSeconds(t: number): number {
  return Number.isNaN(t) || t < 0 ? 0 : Math.min(t, 1e9);
}

/** The real path of an existing directory, or a CliError naming the option. */
async function existingDir(what: string, path: string): Promise<string> {
  let real: string;
  try {
    real = await fsp.realpath(resolve(path));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CliError(code === 'ENOENT' ? `${what} ${path} does not exist` : `${what} ${path}: ${code ?? err}`);
  }
  const st = await fsp.stat(real);
  if (!st.isDirectory()) throw new CliError(`${what} ${path} is not a directory`);
  return real;
}

/** No directory may be another, or lie inside another: the overlay would see itself. */
function checkNoOverlap(dirs: readonly [string, string][]): void {
  const inside = (a: string, b: string) => a === b || a.startsWith(b === sep ? b : b + sep);
  for (let i = 0; i < dirs.length; i++) {
    for (let j = i + 1; j < dirs.length; j++) {
      const [na, a] = dirs[i];
      const [nb, b] = dirs[j];
      if (inside(a, b) || inside(b, a)) {
        throw new CliError(`${na} ${a} and ${nb} ${b} overlap`);
      }
    }
  }
}

/** Whether something is mounted on `dir` (it is a mount point other than `/`). */
async function isMountpoint(dir: string): Promise<boolean> {
  if (dir === sep) return true;
  const [st, parent] = await Promise.all([fsp.stat(dir), fsp.stat(dirname(dir))]);
  if (st.dev !== parent.dev) return true;
  // A bind mount of the same filesystem keeps st_dev: look it up in the mount table too.
  return (await readMountTable()).some((m) => m.mountpoint === dir);
}
