/** A comparable picture of a directory tree as seen through a mount (or any directory). */
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { lgetxattr, llistxattr } from '../../src/sys/libc';

export interface EntryView {
  type: string;
  mode: string;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  /** Nanoseconds since the epoch, in decimal (a bigint as text, so that it compares and prints as JSON). */
  mtimeNs: string;
  target?: string;
  /** Device number of a char or block device. */
  rdev?: number;
  sha256?: string;
  xattrs: Record<string, string>;
}

export interface Snapshot {
  entries: Record<string, EntryView>;
  /** Paths grouped by st_ino, only groups of more than one (hard links). */
  linkGroups: string[][];
  /** Number of distinct st_ino values among non-directories, for "different files differ". */
  distinctInodes: number;
  fileCount: number;
}

/** The file type of a mode, as a word. */
export function typeOf(mode: number): string {
  switch (mode & 0o170000) {
    case 0o040000: return 'dir';
    case 0o100000: return 'file';
    case 0o120000: return 'symlink';
    case 0o010000: return 'fifo';
    case 0o020000: return 'chr';
    case 0o060000: return 'blk';
    case 0o140000: return 'sock';
    default: return 'unknown';
  }
}

export function snapshot(root: string, opts: { xattrs?: boolean } = {}): Snapshot {
  const entries: Record<string, EntryView> = {};
  const byIno = new Map<number, string[]>();
  const walk = (rel: string) => {
    const p = rel === '' ? root : join(root, rel);
    const st = lstatSync(p);
    const { mtimeNs } = lstatSync(p, { bigint: true });
    const type = typeOf(st.mode);
    const view: EntryView = {
      type,
      mode: (st.mode & 0o7777).toString(8),
      uid: st.uid,
      gid: st.gid,
      size: st.size,
      nlink: st.nlink,
      mtimeNs: String(mtimeNs),
      xattrs: {},
    };
    if (type === 'symlink') view.target = readlinkSync(p);
    if (type === 'chr' || type === 'blk') view.rdev = st.rdev;
    if (type === 'file') view.sha256 = createHash('sha256').update(readFileSync(p)).digest('hex');
    if (opts.xattrs !== false && type !== 'symlink') {
      for (const name of llistxattr(p).sort()) view.xattrs[name] = lgetxattr(p, name).toString('base64');
    }
    entries[rel === '' ? '.' : rel] = view;
    if (type !== 'dir') {
      const group = byIno.get(st.ino) ?? [];
      group.push(rel);
      byIno.set(st.ino, group);
    }
    if (type === 'dir') {
      for (const name of readdirSync(p).sort()) walk(rel === '' ? name : `${rel}/${name}`);
    }
  };
  walk('');
  const linkGroups = [...byIno.values()].filter((g) => g.length > 1).map((g) => g.sort()).sort();
  const fileCount = [...byIno.values()].reduce((n, g) => n + g.length, 0);
  return { entries, linkGroups, distinctInodes: byIno.size, fileCount };
}
