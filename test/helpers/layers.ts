/** Building layer trees on plain directories, including the overlay format's markers. */
import { chmodSync, chownSync, closeSync, ftruncateSync, lchownSync, linkSync, mkdirSync, mkdtempSync, openSync, rmSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { lsetxattr, lutimens, mknod } from '../../src/sys/libc';

const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFIFO = 0o010000;
const S_IFSOCK = 0o140000;

/** glibc's makedev for the small numbers tests use (major < 4096, minor < 256). */
export function makedev(major: number, minor: number): number {
  return (major << 8) | minor;
}

export type Entry =
  | { kind: 'file'; data?: string | Buffer; mode?: number; uid?: number; gid?: number; mtime?: number; xattrs?: Record<string, string | Buffer> }
  | { kind: 'dir'; mode?: number; uid?: number; gid?: number; opaque?: 'trusted' | 'user'; mtime?: number; xattrs?: Record<string, string | Buffer> }
  | { kind: 'symlink'; target: string }
  | { kind: 'hardlink'; to: string }
  | { kind: 'fifo'; mode?: number }
  | { kind: 'device'; type: 'char' | 'block'; rdev: number; mode?: number; uid?: number; gid?: number }
  | { kind: 'socket'; mode?: number }
  | { kind: 'whiteout' }
  | { kind: 'sparse'; size: number; data: string; at: number };

/** Paths relative to the layer root, created in order (parents implicitly). */
export type Tree = Record<string, Entry>;

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `tsovl-${prefix}-`));
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

export function buildLayer(root: string, tree: Tree): void {
  mkdirSync(root, { recursive: true });
  const mtimes: [string, number][] = [];
  for (const [rel, e] of Object.entries(tree)) {
    const p = join(root, rel);
    mkdirSync(dirname(p), { recursive: true });
    switch (e.kind) {
      case 'file':
        writeFileSync(p, e.data ?? '');
        break;
      case 'dir':
        mkdirSync(p, { recursive: true });
        if (e.opaque) lsetxattr(p, `${e.opaque}.overlay.opaque`, Buffer.from('y'));
        break;
      case 'symlink':
        symlinkSync(e.target, p);
        break;
      case 'hardlink':
        linkSync(join(root, e.to), p);
        break;
      case 'fifo':
        mknod(p, S_IFIFO | (e.mode ?? 0o644), 0);
        break;
      case 'device':
        mknod(p, (e.type === 'char' ? S_IFCHR : S_IFBLK) | (e.mode ?? 0o644), e.rdev);
        if (e.uid !== undefined || e.gid !== undefined) lchownSync(p, e.uid ?? 0, e.gid ?? 0);
        break;
      case 'socket':
        mknod(p, S_IFSOCK | (e.mode ?? 0o755), 0);
        break;
      case 'whiteout':
        mknod(p, S_IFCHR, 0);
        break;
      case 'sparse':
        {
          const fd = openSync(p, 'w');
          writeSync(fd, e.data, e.at);
          ftruncateSync(fd, e.size);
          closeSync(fd);
        }
        break;
    }
    if (e.kind === 'file' || e.kind === 'dir') {
      // chown drops security.capability and set-id bits: owner first, then mode, then xattrs.
      if (e.uid !== undefined || e.gid !== undefined) chownSync(p, e.uid ?? 0, e.gid ?? 0);
      if (e.mode !== undefined) chmodSync(p, e.mode);
      for (const [name, value] of Object.entries(e.xattrs ?? {})) lsetxattr(p, name, Buffer.from(value));
      if (e.mtime !== undefined) mtimes.push([p, e.mtime]);
    }
    if (e.kind === 'symlink') lchownSync(p, 0, 0);
  }
  // Set after everything is created: adding children changes a directory's mtime.
  for (const [p, ms] of mtimes.reverse()) {
    lutimens(p, { sec: Math.floor(ms / 1000), nsec: (ms % 1000) * 1e6 + 123 }, { sec: Math.floor(ms / 1000), nsec: (ms % 1000) * 1e6 + 456 });
  }
}
