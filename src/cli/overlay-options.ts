/**
 * What each `-o` option means here, read option by option as fuse-overlayfs 1.10 reads it
 * (its libfuse option table, then its option callback):
 *  - its own options match only in their documented form: `name=VALUE` options need the `=`
 *    and switches must be bare, anything else is an unknown option (`fsync` alone, `noacl=1`);
 *  - numeric values are read like sscanf("%d"): the leading integer, junk after it ignored,
 *    no digits at all an error (`fsync=abc`);
 *  - the libfuse options it keeps for libfuse are kept here too, and config.ts turns them into
 *    mount options (or refuses them, as its libfuse 3 does);
 *  - anything else is reported (`unknown argument ignored: ARG`) and dropped, as it does.
 * Three options are ours alone: `fsname=`, `userxattr` and `passthrough=`.
 */
import { parseIdMapping, type IdRange } from '../overlay/idmap';
import { scanInt, strtod } from '../c-numbers';
import type { ParsedOption } from './mount-options';
import { unescape } from './mount-options';

export class OptionError extends Error {}

export interface OptionSettings {
  lowerdir?: string;
  upperdir?: string;
  workdir?: string;
  readOnly: boolean;
  debug: boolean;
  userxattr: boolean;
  /** `volatile`, or `fsync=0`: whichever order they come in, volatile wins. */
  volatile: boolean;
  fsync: boolean;
  timeout?: number;
  fsname: string;
  uidRanges?: IdRange[];
  gidRanges?: IdRange[];
  squashToRoot: boolean;
  squashUid?: number;
  squashGid?: number;
  staticNlink: boolean;
  noacl: boolean;
  noxattrs: boolean;
  /** As given; only 0, 1 and 2 mean something, and only with an upper layer (see config.ts). */
  xattrPermissions: number;
  /** `passthrough=off` turns the kernel's passthrough I/O off; on (the default) uses it where it can. */
  passthrough: boolean;
  /** libfuse mount options passed through as given, in order. */
  fuseFlags: string[];
}

/** The libfuse options fuse-overlayfs 1.10 keeps for libfuse, matched as whole bare words. */
const LIBFUSE_FLAGS = new Set([
  'allow_root', 'default_permissions', 'allow_other', 'suid', 'dev', 'nosuid', 'nodev', 'exec', 'noexec',
  'atime', 'noatime', 'diratime', 'nodiratime', 'splice_write', 'splice_read', 'splice_move', 'kernel_cache', 'max_write',
]);

/** fuse-overlayfs tunes its own threads, caches and inode numbering with these; ours need no tuning. */
const TUNING_WITHOUT_EFFECT = ['threaded', 'writeback', 'fast_ino'];

type ValueHandler = (s: OptionSettings, value: string, name: string) => void;
type SwitchHandler = (s: OptionSettings) => void;

function int(name: string, value: string): number {
  const n = scanInt(unescape(value));
  // libfuse's own wording for a `%d` option it cannot read.
  if (n === null) throw new OptionError(`invalid parameter in option \`${name}=${value}'`);
  return n;
}

function path(name: string, value: string): string {
  if (value === '') throw new OptionError(`option ${name} needs a value`);
  return unescape(value);
}

function ranges(name: string, value: string): IdRange[] {
  try {
    return parseIdMapping(unescape(value));
  } catch (err) {
    throw new OptionError(`invalid ${name}: ${(err as Error).message}`);
  }
}

/** squash_to_uid/gid: -1 is fuse-overlayfs's "not set"; other values are a uid_t. */
function squashId(name: string, value: string): number | undefined {
  const n = int(name, value);
  return n === -1 ? undefined : n >>> 0;
}

/** timeout= goes through strtod: a value it cannot read is 0, only overflow is an error. */
function timeout(value: string): number {
  const t = strtod(unescape(value));
  if (t.range) throw new OptionError(`cannot convert ${value}`);
  return t.value;
}

/** Options written `name=VALUE`; the bare name is an unknown option. */
const WITH_VALUE: Record<string, ValueHandler> = {
  // Raw value: the lowerdir list is split later, escapes and all.
  lowerdir: (s, v) => { s.lowerdir = v; },
  upperdir: (s, v, n) => { s.upperdir = path(n, v); },
  workdir: (s, v, n) => { s.workdir = path(n, v); },
  // The SELinux label podman passes on such hosts: fuse-overlayfs takes it and does nothing with it.
  context: () => undefined,
  fsync: (s, v, n) => { s.fsync = int(n, v) !== 0; },
  timeout: (s, v) => { s.timeout = timeout(v); },
  uidmapping: (s, v, n) => { s.uidRanges = ranges(n, v); },
  gidmapping: (s, v, n) => { s.gidRanges = ranges(n, v); },
  squash_to_uid: (s, v, n) => { s.squashUid = squashId(n, v); },
  squash_to_gid: (s, v, n) => { s.squashGid = squashId(n, v); },
  noxattrs: (s, v, n) => { s.noxattrs = int(n, v) !== 0; },
  xattr_permissions: (s, v, n) => { s.xattrPermissions = int(n, v); },
  redirect_dir: (_s, v) => {
    if (unescape(v) !== 'off') throw new OptionError('only redirect_dir=off is supported (as in fuse-overlayfs)');
  },
  plugins: () => {
    throw new OptionError('plugins are not supported');
  },
  ...Object.fromEntries(TUNING_WITHOUT_EFFECT.map((name): [string, ValueHandler] => [name, (_s, v, n) => { int(n, v); }])),
  // Ours alone.
  fsname: (s, v, n) => { s.fsname = path(n, v); },
  passthrough: (s, v) => {
    const value = unescape(v);
    if (value !== 'on' && value !== 'off') throw new OptionError(`invalid value for passthrough: ${v} (on or off)`);
    s.passthrough = value === 'on';
  },
};

/** Options written as a bare name; `name=VALUE` is an unknown option. */
const SWITCHES: Record<string, SwitchHandler> = {
  squash_to_root: (s) => { s.squashToRoot = true; },
  static_nlink: (s) => { s.staticNlink = true; },
  volatile: (s) => { s.volatile = true; },
  noacl: (s) => { s.noacl = true; },
  ro: (s) => { s.readOnly = true; },
  debug: (s) => { s.debug = true; },
  // Ours alone.
  userxattr: (s) => { s.userxattr = true; },
};

export function interpretOptions(options: Iterable<ParsedOption>, warn: (message: string) => void): OptionSettings {
  const s: OptionSettings = {
    readOnly: false,
    debug: false,
    userxattr: false,
    volatile: false,
    fsync: true,
    fsname: 'ts-overlayfs',
    squashToRoot: false,
    staticNlink: false,
    noacl: false,
    noxattrs: false,
    xattrPermissions: 0,
    passthrough: true,
    fuseFlags: [],
  };
  for (const o of options) {
    if (o.value !== null && Object.hasOwn(WITH_VALUE, o.name)) WITH_VALUE[o.name](s, o.value, o.name);
    else if (o.value === null && Object.hasOwn(SWITCHES, o.name)) SWITCHES[o.name](s);
    else if (o.value === null && LIBFUSE_FLAGS.has(o.name)) s.fuseFlags.push(o.name);
    else warn(`unknown argument ignored: ${o.value === null ? o.name : `${o.name}=${o.value}`}`);
  }
  return s;
}
