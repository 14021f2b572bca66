/**
 * Divergences the differential fuzzer found, each as a short sequence on hand-made layers, run
 * on kernel overlayfs and ts-overlayfs. Each asserts the kernel's behaviour (its outcome of
 * every step) and that ts-overlayfs shows the same outcomes, view and upper layer.
 *
 * Unfixed ones are marked `todo` (the suite passes; the fixing engineer removes the todo and
 * the bug's entry in known-bugs.ts). The comparator is strict here: no steering.
 * Fixed (commit 0ce0420) and now enforced: setgid-mkdir, rename-exdev-order, mtime-rounds-up,
 * whiteout-gid, setgid-create-over-whiteout, rename-same-inode.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { requires } from '../helpers/env';
import type { LayerEntry, LayerSpec, Op, Timespec } from './generate';
import { setAvoidKnownBugs } from './known-bugs';
import { formatReport, Fuzzer } from './runner';

const T: Timespec = { sec: 1600000000, nsec: 123456789 };

function file(size = 10, o: Partial<Extract<LayerEntry, { kind: 'file' }>> = {}): LayerEntry {
  return { kind: 'file', size, data: 7, mode: 0o644, uid: 0, gid: 0, mtime: T, xattrs: {}, ...o };
}

function dir(o: Partial<Extract<LayerEntry, { kind: 'dir' }>> = {}): LayerEntry {
  return { kind: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: T, xattrs: {}, opaque: false, ...o };
}

/**
 * Runs `steps` ([operation, the kernel's outcome or its start]) on both implementations and
 * asserts the kernel's outcomes, then that ts-overlayfs matched it everywhere.
 */
async function sameAsKernel(layers: LayerSpec[], steps: [Op, string][]): Promise<void> {
  const fz = new Fuzzer(0, { layers });
  try {
    const kernel: string[] = [];
    const r = await fz.run({ ops: steps.map(([op]) => op), keepGoing: true, onStep: (_i, _op, k) => kernel.push(k) });
    steps.forEach(([, expected], i) => {
      assert.ok(kernel[i]?.startsWith(expected), `the kernel's outcome of step ${i} is ${kernel[i]}, expected ${expected}`);
    });
    if (r.divergence) {
      const keep = r.ops.map((_, i) => i);
      assert.fail(formatReport({ seed: 0, generated: 0, ops: r.ops, keep, divergence: r.divergence }));
    }
  } finally {
    await fz.dispose();
  }
}

describe('fuzzer-found divergences from kernel overlayfs', requires('root', 'fuse', 'kernel-overlay'), () => {
  let umask = 0;
  before(() => {
    setAvoidKnownBugs(false);
    umask = process.umask(0);
  });
  after(() => {
    process.umask(umask);
  });

  test('read, write, ftruncate and fstat work through a descriptor whose name was unlinked', async () => {
    await sameAsKernel([[['keep', file()]]], [
      [{ t: 'writeFile', path: 'tmpf', data: { s: 1, n: 99 }, mode: 0o644 }, 'ok 99'],
      [{ t: 'open', slot: 0, path: 'tmpf', flags: ['RDWR'], mode: 0 }, 'ok file'],
      [{ t: 'unlink', path: 'tmpf' }, 'ok'],
      [{ t: 'read', slot: 0, pos: 0, len: 100 }, 'ok 99'],
      [{ t: 'write', slot: 0, pos: 0, data: { s: 2, n: 10 } }, 'ok 10'],
      [{ t: 'ftruncate', slot: 0, size: 5 }, 'ok'],
      [{ t: 'fstat', slot: 0 }, 'ok file 644 0:0 nlink=0 size=5'],
      [{ t: 'close', slot: 0 }, 'ok'],
    ]);
  });

  test('a descriptor reads on after its name is renamed over or one of its hard links is unlinked', async () => {
    await sameAsKernel([[['d', dir()], ['d/a', file(20)], ['d/b', { kind: 'hardlink', to: 'd/a' }], ['d/c', file(30, { data: 9 })]]], [
      [{ t: 'open', slot: 0, path: 'd/c', flags: ['RDONLY'], mode: 0 }, 'ok file'],
      [{ t: 'rename', from: 'd/b', to: 'd/c' }, 'ok'],
      [{ t: 'read', slot: 0, pos: 0, len: 100 }, 'ok 30'],
      [{ t: 'open', slot: 1, path: 'd/a', flags: ['RDWR'], mode: 0 }, 'ok file'],
      [{ t: 'unlink', path: 'd/a' }, 'ok'],
      [{ t: 'read', slot: 1, pos: 0, len: 100 }, 'ok 20'],
      [{ t: 'fstat', slot: 1 }, 'ok file 644 0:0 nlink=0 size=20'],
    ]);
  });

  test('a descriptor opened read-only before a copy-up reads what is written after it', async () => {
    // The unlink keeps the per-step views from reading the file into the kernel's page cache.
    await sameAsKernel([[['sub', file(51)], ['keep', file()]]], [
      [{ t: 'open', slot: 0, path: 'sub', flags: ['RDONLY'], mode: 0 }, 'ok file'],
      [{ t: 'open', slot: 1, path: 'sub', flags: ['WRONLY', 'APPEND'], mode: 0 }, 'ok file'],
      [{ t: 'unlink', path: 'sub' }, 'ok'],
      [{ t: 'write', slot: 1, pos: null, data: { s: 3, n: 68587 } }, 'ok 68587'],
      [{ t: 'read', slot: 0, pos: 5915, len: 70000 }, 'ok 62723'],
      [{ t: 'fstat', slot: 0 }, 'ok file 644 0:0 nlink=0 size=68638'],
    ]);
  });

  test('a lower file unlinked or renamed over while open keeps its link count; an upper one drops to 0', async () => {
    await sameAsKernel([[['x', file(20)], ['b', file(30, { data: 9 })], ['y', file()]]], [
      [{ t: 'open', slot: 0, path: 'x', flags: ['RDONLY'], mode: 0 }, 'ok file'],
      [{ t: 'rename', from: 'b', to: 'x' }, 'ok'],
      [{ t: 'fstat', slot: 0 }, 'ok file 644 0:0 nlink=1 size=20'],
      [{ t: 'open', slot: 1, path: 'y', flags: ['RDONLY'], mode: 0 }, 'ok file'],
      [{ t: 'unlink', path: 'y' }, 'ok'],
      [{ t: 'fstat', slot: 1 }, 'ok file 644 0:0 nlink=1 size=10'],
      [{ t: 'writeFile', path: 'up', data: { s: 5, n: 7 }, mode: 0o644 }, 'ok 7'],
      [{ t: 'open', slot: 2, path: 'up', flags: ['RDONLY'], mode: 0 }, 'ok file'],
      [{ t: 'rename', from: 'x', to: 'up' }, 'ok'],
      [{ t: 'fstat', slot: 2 }, 'ok file 644 0:0 nlink=0 size=7'],
    ]);
  });

  test('mkdir in a set-group-ID directory makes a set-group-ID directory', async () => {
    await sameAsKernel([[['sg', dir({ mode: 0o2775, gid: 1000 })], ['sg/f', file()]]], [
      [{ t: 'mkdir', path: 'sg/new', mode: 0o755 }, 'ok'],
      [{ t: 'stat', path: 'sg/new' }, 'ok dir 2755 0:1000'],
      [{ t: 'mkdir', path: 'top', mode: 0o755 }, 'ok'],
      [{ t: 'chmod', path: 'top', mode: 0o2755 }, 'ok'],
      [{ t: 'mkdir', path: 'top/inner', mode: 0o700 }, 'ok'],
      [{ t: 'stat', path: 'top/inner' }, 'ok dir 2700'],
    ]);
  });

  test('renaming a directory with lower content over a non-empty directory is EXDEV, as in the kernel', async () => {
    await sameAsKernel([[['a', dir()], ['a/f', file()], ['b', dir()], ['b/g', file()]]], [
      [{ t: 'rename', from: 'a', to: 'b' }, 'EXDEV'],
    ]);
  });


  test('a time just before a whole second is not shown as the next second', async () => {
    await sameAsKernel([[['f', file(10, { mtime: { sec: 1600000000, nsec: 999999999 } })]]], [
      [{ t: 'stat', path: 'f' }, 'ok file 644 0:0 nlink=1 size=10 mtime=1600000000999999999'],
      [{ t: 'utimes', path: 'f', atime: T, mtime: { sec: 1500000000, nsec: 999999900 }, follow: false }, 'ok'],
      [{ t: 'stat', path: 'f' }, 'ok file 644 0:0 nlink=1 size=10 mtime=1500000000999999900'],
    ]);
  });

  test('a whiteout in a set-group-ID directory belongs to root:root, as the kernel makes it', async () => {
    await sameAsKernel([[['sg', dir({ mode: 0o2775, gid: 65534 })], ['sg/f', file()]]], [
      [{ t: 'unlink', path: 'sg/f' }, 'ok'],
    ]);
  });

  test('a rename onto a whiteout leaves that whiteout at its source; onto a free name, a new one of a set-group-ID directory\'s group', async () => {
    await sameAsKernel([[['sg', dir({ mode: 0o2775, gid: 1000 })], ['sg/x', file()], ['sg/y', file()], ['d', dir()], ['d/x', file()]]], [
      [{ t: 'unlink', path: 'd/x' }, 'ok'],
      [{ t: 'rename', from: 'sg/x', to: 'd/x' }, 'ok'],
      [{ t: 'rename', from: 'sg/y', to: 'sg/z' }, 'ok'],
    ]);
  });

  test('a file made where a whiteout stands in a set-group-ID directory takes the directory\'s group', async () => {
    await sameAsKernel([[['sg', dir({ mode: 0o2775, gid: 1000 })], ['sg/f', file()], ['sg/g', file()]]], [
      [{ t: 'unlink', path: 'sg/f' }, 'ok'],
      [{ t: 'writeFile', path: 'sg/f', data: { s: 3, n: 5 }, mode: 0o644 }, 'ok 5'],
      [{ t: 'stat', path: 'sg/f' }, 'ok file 644 0:1000'],
    ]);
  });

  test('rename between two hard links of one file changes nothing', async () => {
    await sameAsKernel([[['d', dir()], ['d/f', file()]]], [
      [{ t: 'writeFile', path: 'd/x', data: { s: 4, n: 8 }, mode: 0o644 }, 'ok 8'],
      [{ t: 'link', from: 'd/x', to: 'd/y' }, 'ok'],
      [{ t: 'rename', from: 'd/x', to: 'd/y' }, 'ok'],
      [{ t: 'stat', path: 'd/x' }, 'ok file 644 0:0 nlink=2'],
    ]);
  });


  test('descriptors of files unlinked while open work on after their directory is renamed', async () => {
    // Seed 900974 (100 operations): the hidden names moved with the directory; ts-overlayfs
    // went on looking for them under the old path.
    await sameAsKernel([[['sub', file(5)], ['keep', file()]]], [
      [{ t: 'mkdir', path: 'a', mode: 0o755 }, 'ok'],
      [{ t: 'mkdir', path: 'a/d', mode: 0o755 }, 'ok'],
      [{ t: 'open', slot: 0, path: 'a/f', flags: ['RDWR', 'CREAT'], mode: 0o644 }, 'ok file'],
      [{ t: 'open', slot: 1, path: 'a/d/g', flags: ['RDWR', 'CREAT'], mode: 0o644 }, 'ok file'],
      [{ t: 'write', slot: 1, pos: 0, data: { s: 6, n: 12 } }, 'ok 12'],
      [{ t: 'unlink', path: 'a/f' }, 'ok'],
      [{ t: 'unlink', path: 'a/d/g' }, 'ok'],
      [{ t: 'unlink', path: 'sub' }, 'ok'],
      [{ t: 'rename', from: 'a', to: 'sub' }, 'ok'],
      [{ t: 'rename', from: 'sub/d', to: 'e' }, 'ok'],
      [{ t: 'read', slot: 0, pos: 0, len: 100 }, 'ok 0'],
      [{ t: 'write', slot: 0, pos: 3, data: { s: 7, n: 4 } }, 'ok 4'],
      [{ t: 'fstat', slot: 0 }, 'ok file 644 0:0 nlink=0 size=7'],
      [{ t: 'read', slot: 1, pos: 0, len: 100 }, 'ok 12'],
      [{ t: 'fstat', slot: 1 }, 'ok file 644 0:0 nlink=0 size=12'],
      [{ t: 'close', slot: 0 }, 'ok'],
      [{ t: 'close', slot: 1 }, 'ok'],
    ]);
  });

  test('rename between two lower hard links of one file renames, as in the kernel', async () => {
    await sameAsKernel([[['c', file()], ['x', { kind: 'hardlink', to: 'c' }], ['keep', file()]]], [
      [{ t: 'rename', from: 'c', to: 'x' }, 'ok'],
      [{ t: 'stat', path: 'c' }, 'ENOENT'],
      [{ t: 'stat', path: 'x' }, 'ok file 644 0:0 nlink=1'],
    ]);
  });

  // What libfuse 2 kept the fuzzer from comparing (differences it listed until the transport
  // was replaced), and the operations added with the new one.

  test('the hard links of a fifo are one pipe', async () => {
    await sameAsKernel([[['keep', file()]]], [
      [{ t: 'mkfifo', path: 'p', mode: 0o644 }, 'ok'],
      [{ t: 'link', from: 'p', to: 'q' }, 'ok'],
      [{ t: 'open', slot: 0, path: 'p', flags: ['RDONLY'], mode: 0 }, 'ok fifo 644 0:0 nlink=2'],
      [{ t: 'writeFile', path: 'q', data: { s: 3, n: 5 }, mode: 0o644 }, 'ok 5'],
      [{ t: 'read', slot: 0, pos: null, len: 4096 }, 'ok 5'],
    ]);
  });

  test('chown(path, -1, -1) copies a lower file up, apart from its lower hard link', async () => {
    await sameAsKernel([[['a', file()], ['b', { kind: 'hardlink', to: 'a' }]]], [
      [{ t: 'chown', path: 'a', uid: -1, gid: -1, follow: false }, 'ok'],
      [{ t: 'stat', path: 'a' }, 'ok file 644 0:0 nlink=1'],
    ]);
  });

  test('renameat2: NOREPLACE onto a name is EEXIST, EXCHANGE swaps a lower and a new file, WHITEOUT is EINVAL', async () => {
    await sameAsKernel([[['a', file(10)], ['b', file(20, { data: 9 })]]], [
      [{ t: 'rename2', from: 'a', to: 'b', flag: 'NOREPLACE' }, 'EEXIST'],
      [{ t: 'rename2', from: 'a', to: 'c', flag: 'NOREPLACE' }, 'ok'],
      [{ t: 'writeFile', path: 'n', data: { s: 4, n: 7 }, mode: 0o600 }, 'ok 7'],
      [{ t: 'rename2', from: 'c', to: 'n', flag: 'EXCHANGE' }, 'ok'],
      [{ t: 'stat', path: 'n' }, 'ok file 644 0:0 nlink=1 size=10'],
      [{ t: 'stat', path: 'c' }, 'ok file 600 0:0 nlink=1 size=7'],
      [{ t: 'rename2', from: 'n', to: 'b', flag: 'EXCHANGE' }, 'ok'],
      [{ t: 'rename2', from: 'b', to: 'z', flag: 'EXCHANGE' }, 'ENOENT'],
      [{ t: 'rename2', from: 'b', to: 'a', flag: 'WHITEOUT' }, 'EINVAL'],
    ]);
  });

  test('utimensat: UTIME_OMIT keeps a time, UTIME_NOW takes the clock, and times keep their nanoseconds', async () => {
    await sameAsKernel([[['f', file()]]], [
      [{ t: 'utimes', path: 'f', atime: { sec: 1000000000, nsec: 5 }, mtime: 'omit', follow: true }, 'ok'],
      [{ t: 'stat', path: 'f' }, 'ok file 644 0:0 nlink=1 size=10 mtime=1600000000123456789'],
      [{ t: 'utimes', path: 'f', atime: 'omit', mtime: { sec: 1400000000, nsec: 1 }, follow: false }, 'ok'],
      [{ t: 'stat', path: 'f' }, 'ok file 644 0:0 nlink=1 size=10 mtime=1400000000000000001'],
      [{ t: 'utimes', path: 'f', atime: 'omit', mtime: 'now', follow: true }, 'ok'],
      [{ t: 'stat', path: 'f' }, 'ok file 644 0:0 nlink=1 size=10 mtime=fresh'],
    ]);
  });

  test('a directory holding a file unlinked while open can be removed; the descriptor works on', async () => {
    await sameAsKernel([[['d', dir()], ['d/f', file(20)], ['keep', file()]]], [
      [{ t: 'open', slot: 0, path: 'd/f', flags: ['RDWR'], mode: 0 }, 'ok file'],
      [{ t: 'unlink', path: 'd/f' }, 'ok'],
      [{ t: 'rmdir', path: 'd' }, 'ok'],
      [{ t: 'write', slot: 0, pos: 0, data: { s: 5, n: 3 } }, 'ok 3'],
      [{ t: 'read', slot: 0, pos: 0, len: 100 }, 'ok 20'],
      [{ t: 'fstat', slot: 0 }, 'ok file 644 0:0 nlink=0 size=20'],
      [{ t: 'close', slot: 0 }, 'ok'],
    ]);
  });

  test('fallocate and SEEK_DATA/SEEK_HOLE through a descriptor', async () => {
    await sameAsKernel([[['keep', file()]]], [
      [{ t: 'open', slot: 0, path: 'h', flags: ['RDWR', 'CREAT'], mode: 0o644 }, 'ok file'],
      [{ t: 'write', slot: 0, pos: 1 << 20, data: { s: 6, n: 4096 } }, 'ok 4096'],
      [{ t: 'seek', slot: 0, whence: 'DATA', offset: 0 }, 'ok 1048576'],
      [{ t: 'seek', slot: 0, whence: 'HOLE', offset: 0 }, 'ok 0'],
      [{ t: 'fallocate', slot: 0, mode: 'PUNCH_HOLE', offset: 1 << 20, len: 4096 }, 'ok'],
      [{ t: 'seek', slot: 0, whence: 'DATA', offset: 0 }, 'ENXIO'],
      [{ t: 'fallocate', slot: 0, mode: 'KEEP_SIZE', offset: 0, len: 2 << 20 }, 'ok'],
      [{ t: 'fstat', slot: 0 }, 'ok file 644 0:0 nlink=1 size=1052672'],
      [{ t: 'fallocate', slot: 0, mode: 'ALLOC', offset: 0, len: 3 << 20 }, 'ok'],
      [{ t: 'fstat', slot: 0 }, 'ok file 644 0:0 nlink=1 size=3145728'],
    ]);
  });

  test('names that are not UTF-8, in the layers and made through the mount', async () => {
    await sameAsKernel([[['l\udce4t', dir()], ['l\udce4t/\udcc3\udcff', file()], ['keep', file()]]], [
      [{ t: 'readdir', path: 'l\udce4t' }, 'ok ["\\udcc3\\udcff"]'],
      [{ t: 'rename', from: 'l\udce4t/\udcc3\udcff', to: 'r\udce9s\udc80' }, 'ok'],
      [{ t: 'symlink', target: '\udcff', path: 'l\udce4t/s' }, 'ok'],
      [{ t: 'mkdir', path: 'l\udce4t/\udcff', mode: 0o755 }, 'ok'],
      [{ t: 'stat', path: 'l\udce4t/s' }, 'ok dir 755'],
    ]);
  });
});
