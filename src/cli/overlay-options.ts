/**
 * What each `-o` option means here, option by option as fuse-overlayfs reads them.
 * Options fuse-overlayfs uses only to tune its own internals are accepted and have no effect;
 * unknown ones are reported (`unknown argument ignored: NAME`) and dropped, as it does.
 */
import { parseIdMapping, type IdRange } from '../overlay/idmap';
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
  volatile: boolean;
  timeout?: number;
  fsname: string;
  uidRanges?: IdRange[];
  gidRanges?: IdRange[];
  squashToRoot: boolean;
  squashUid?: number;
  squashGid?: number;
  staticNlink: boolean;
  noacl: boolean;
  /** libfuse mount options passed through as given. */
  fuseFlags: string[];
}

/** libfuse 2.9 mount options passed through as given. */
const FUSE_FLAGS = new Set([
  'allow_other', 'allow_root', 'default_permissions', 'nonempty', 'auto_unmount',
  'suid', 'nosuid', 'dev', 'nodev', 'exec', 'noexec', 'atime', 'noatime',
  'sync', 'async', 'dirsync', 'rw',
]);

/** fuse-overlayfs tunes its own threads, caches and inode numbering with these; ours need no tuning. */
const ACCEPTED_WITHOUT_EFFECT = new Set(['threaded', 'writeback', 'fast_ino']);

type Handler = (s: OptionSettings, value: string | null, name: string) => void;

function required(name: string, value: string | null): string {
  if (value === null || value === '') throw new OptionError(`option ${name} needs a value`);
  return unescape(value);
}

function id(name: string, value: string | null): number {
  const v = required(name, value);
  if (!/^\d+$/.test(v)) throw new OptionError(`invalid ${name}: ${v}`);
  return Number(v);
}

function ranges(name: string, value: string | null): IdRange[] {
  try {
    return parseIdMapping(required(name, value));
  } catch (err) {
    throw new OptionError(`invalid ${name}: ${(err as Error).message}`);
  }
}

/** A 0/1 switch, as fuse-overlayfs writes them (`fsync=0`); a bare name means 1. */
function flag(name: string, value: string | null): boolean {
  if (value === null || value === '1') return true;
  if (value === '0') return false;
  throw new OptionError(`invalid ${name}: ${value} (expected 0 or 1)`);
}

const HANDLERS: Record<string, Handler> = {
  // Raw values: the lowerdir list is split later, escapes and all.
  lowerdir: (s, v) => { s.lowerdir = v ?? ''; },
  upperdir: (s, v, n) => { s.upperdir = required(n, v); },
  workdir: (s, v, n) => { s.workdir = required(n, v); },
  ro: (s) => { s.readOnly = true; },
  debug: (s) => { s.debug = true; },
  userxattr: (s) => { s.userxattr = true; },
  volatile: (s) => { s.volatile = true; },
  fsync: (s, v, n) => { s.volatile = !flag(n, v); },
  timeout: (s, v, n) => {
    const t = Number(required(n, v));
    if (!Number.isFinite(t) || t < 0) throw new OptionError(`invalid timeout: ${v}`);
    s.timeout = t;
  },
  fsname: (s, v, n) => { s.fsname = required(n, v); },
  uidmapping: (s, v, n) => { s.uidRanges = ranges(n, v); },
  gidmapping: (s, v, n) => { s.gidRanges = ranges(n, v); },
  squash_to_root: (s) => { s.squashToRoot = true; },
  squash_to_uid: (s, v, n) => { s.squashUid = id(n, v); },
  squash_to_gid: (s, v, n) => { s.squashGid = id(n, v); },
  static_nlink: (s) => { s.staticNlink = true; },
  noacl: (s) => { s.noacl = true; },
  xattr_permissions: (_s, v, n) => {
    // fuse-overlayfs can keep modes and owners in xattrs (1, 2); ours are always the real ones.
    if (required(n, v) !== '0') throw new OptionError(`xattr_permissions=${v} is not supported (only 0)`);
  },
  redirect_dir: (_s, v, n) => {
    const mode = required(n, v);
    if (mode !== 'off' && mode !== 'nofollow') throw new OptionError(`redirect_dir=${mode} is not supported (off, nofollow)`);
  },
  plugins: () => {
    throw new OptionError('plugins are not supported');
  },
};

export function interpretOptions(options: Iterable<ParsedOption>, warn: (message: string) => void): OptionSettings {
  const s: OptionSettings = {
    readOnly: false,
    debug: false,
    userxattr: false,
    volatile: false,
    fsname: 'ts-overlayfs',
    squashToRoot: false,
    staticNlink: false,
    noacl: false,
    fuseFlags: [],
  };
  for (const o of options) {
    const handler = HANDLERS[o.name];
    if (handler) handler(s, o.value, o.name);
    else if (FUSE_FLAGS.has(o.name) && o.value === null) {
      if (!s.fuseFlags.includes(o.name)) s.fuseFlags.push(o.name);
    } else if (!ACCEPTED_WITHOUT_EFFECT.has(o.name)) {
      warn(`unknown argument ignored: ${o.name}`);
    }
  }
  return s;
}
