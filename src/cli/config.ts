/**
 * From the command line to a checked mount configuration. Every check here only looks:
 * bad input is reported before anything is created, changed or mounted.
 */
import { promises as fsp } from 'node:fs';
import { dirname, resolve, sep } from 'node:path';
import { cacheOptions } from '../fuse/cache-policy';
import { readMountTable } from './mount-table';
import { parseOptionStrings, splitLowerdir, unescape, type ParsedOption } from './mount-options';

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
  readonly foreground: boolean;
  readonly debug: boolean;
  /** Options handed to libfuse (see fuse/native.ts for why each is there). */
  readonly fuseOptions: string[];
}

export interface CommandLine {
  readonly optionStrings: readonly string[];
  readonly mountpoint?: string;
  readonly foreground: boolean;
  readonly debug: boolean;
}

/** libfuse 2.9 mount options passed through as given. */
const FUSE_FLAGS = new Set([
  'allow_other', 'allow_root', 'default_permissions', 'nonempty', 'auto_unmount',
  'suid', 'nosuid', 'dev', 'nodev', 'exec', 'noexec', 'atime', 'noatime',
  'sync', 'async', 'dirsync', 'rw',
]);


export type Warn = (message: string) => void;

export async function buildConfig(cmd: CommandLine, warn: Warn): Promise<MountConfig> {
  const opts = new Map<string, ParsedOption>();
  for (const o of parseOptionStrings(cmd.optionStrings)) opts.set(o.name, o);

  const fuseOptions = [
    'use_ino', 'hard_remove', 'big_writes', 'subtype=ts-overlayfs', 'default_permissions',
    // libfuse 2 alone refuses a non-empty mountpoint; fuse-overlayfs (libfuse 3) and the kernel do not.
    'nonempty',
  ];
  // As root, let everyone in, as fuse-overlayfs does, unless asked for allow_root (the two exclude each other).
  const allowRoot = [...opts.values()].some((o) => o.name === 'allow_root');
  if (process.getuid?.() === 0 && !allowRoot) fuseOptions.push('allow_other');
  let fsname = 'ts-overlayfs';
  let readOnly = false;
  let debug = cmd.debug;
  let userxattr = process.getuid?.() !== 0;
  let volatile = false;
  let timeout: number | undefined;
  for (const o of opts.values()) {
    if (['lowerdir', 'upperdir', 'workdir'].includes(o.name)) continue;
    if (o.name === 'ro') readOnly = true;
    else if (o.name === 'userxattr') userxattr = true;
    else if (o.name === 'volatile') volatile = true;
    else if (o.name === 'timeout' && o.value !== null) timeout = parseTimeout(unescape(o.value));
    else if (o.name === 'debug') debug = true;
    else if (o.name === 'fsname' && o.value !== null) fsname = unescape(o.value);
    else if (FUSE_FLAGS.has(o.name) && o.value === null) {
      if (!fuseOptions.includes(o.name)) fuseOptions.push(o.name);
    } else warn(`unknown argument ignored: ${o.name}`);
  }
  fuseOptions.push(`fsname=${fsname.replace(/[\\,]/g, (c) => `\\${c}`)}`);

  const lowerOpt = opts.get('lowerdir');
  if (!lowerOpt || lowerOpt.value === null || splitLowerdir(lowerOpt.value).length === 0) {
    throw new CliError('no lowerdir specified');
  }
  const lowers = await Promise.all(splitLowerdir(lowerOpt.value).map((p) => existingDir('lowerdir', p)));

  const upperOpt = opts.get('upperdir')?.value ?? null;
  const workOpt = opts.get('workdir')?.value ?? null;
  if (upperOpt !== null && workOpt === null) throw new CliError('upperdir specified without workdir');
  if (workOpt !== null && upperOpt === null) throw new CliError('workdir specified without upperdir');
  const upper = upperOpt === null ? undefined : await existingDir('upperdir', unescape(upperOpt));
  const work = workOpt === null ? undefined : await existingDir('workdir', unescape(workOpt));
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

  const writable = !readOnly && upper !== undefined;
  // A read-only mount is read-only in the kernel too: every write is EROFS before reaching us.
  if (!writable) fuseOptions.push('ro');
  fuseOptions.push(...cacheOptions(writable, timeout));
  return {
    lowers,
    upper: readOnly ? undefined : upper,
    work: readOnly ? undefined : work,
    mountpoint,
    readOnly: readOnly || upper === undefined,
    xattrNamespace: userxattr ? 'user' : 'trusted',
    volatile,
    foreground: cmd.foreground || debug,
    debug,
    fuseOptions,
  };
}

/** `timeout=SECONDS` (fuse-overlayfs's option): how long the kernel keeps names and attributes. */
function parseTimeout(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0) throw new CliError(`invalid timeout: ${value}`);
  return n;
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
