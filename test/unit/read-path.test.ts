/** The overlay's read path on plain directories, without FUSE. */
import assert from 'node:assert/strict';
import { lstatSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { Errno } from '../../src/errors';
import { PathOverlay as Overlay } from '../helpers/path-overlay';
import { requires } from '../helpers/env';
import { errno } from '../helpers/errors';
import { kernelFormatLayers } from '../helpers/fixtures';
import { buildLayer, removeDir, tempDir, type Tree } from '../helpers/layers';

const dirs: string[] = [];
after(() => dirs.forEach(removeDir));

/** An overlay over fresh layers built from `trees` (top first). */
async function overlayOf(trees: Tree[], withUpper = false): Promise<Overlay> {
  const dir = tempDir('unit');
  dirs.push(dir);
  const lowers = trees.map((tree, i) => {
    const root = join(dir, `l${i}`);
    buildLayer(root, tree);
    return root;
  });
  if (!withUpper) return Overlay.open({ lowers });
  const upper = join(dir, 'upper');
  const work = join(dir, 'work');
  buildLayer(upper, {});
  buildLayer(work, {});
  return Overlay.open({ lowers, upper, work });
}

async function names(ov: Overlay, path: string): Promise<string[]> {
  return (await ov.readdir(path)).map((e) => e.name).filter((n) => n !== '.' && n !== '..').sort();
}

async function content(ov: Overlay, path: string): Promise<string> {
  const fd = await ov.open(path, 0);
  try {
    const buf = Buffer.alloc(1 << 16);
    const n = await ov.read(fd, buf, buf.length, 0);
    return buf.subarray(0, n).toString();
  } finally {
    await ov.release(fd);
  }
}

describe('lookup', () => {
  test('the top layer wins for a name in several layers', async () => {
    const ov = await overlayOf([{ f: { kind: 'file', data: 'top' } }, { f: { kind: 'file', data: 'bottom' } }]);
    assert.equal(await content(ov, '/f'), 'top');
  });

  test('a name only in a lower layer is found there', async () => {
    const ov = await overlayOf([{}, {}, { 'a/b/c': { kind: 'file', data: 'deep' } }]);
    assert.equal(await content(ov, '/a/b/c'), 'deep');
  });

  test('a char 0/0 whiteout hides the name in all layers below', async () => {
    const ov = await overlayOf([{ f: { kind: 'whiteout' } }, { f: { kind: 'file' } }, { f: { kind: 'file' } }]);
    assert.equal(await errno(ov.getattr('/f')), Errno.ENOENT);
    assert.deepEqual(await names(ov, '/'), []);
  });

  test('a .wh.NAME file hides NAME below, and is never shown itself', async () => {
    const ov = await overlayOf([{ '.wh.f': { kind: 'file', mode: 0 } }, { f: { kind: 'file' }, g: { kind: 'file' } }]);
    assert.equal(await errno(ov.getattr('/f')), Errno.ENOENT);
    assert.equal(await errno(ov.getattr('/.wh.f')), Errno.ENOENT);
    assert.deepEqual(await names(ov, '/'), ['g']);
  });

  test('a whiteout does not hide an entry of its own layer or above', async () => {
    const ov = await overlayOf([{ f: { kind: 'file', data: 'top' } }, { '.wh.f': { kind: 'file' } }, { f: { kind: 'file', data: 'low' } }]);
    assert.equal(await content(ov, '/f'), 'top');
  });

  test('a whiteout hides a whole directory below', async () => {
    const ov = await overlayOf([{ d: { kind: 'whiteout' } }, { 'd/x': { kind: 'file' } }]);
    assert.equal(await errno(ov.getattr('/d/x')), Errno.ENOENT);
  });

  for (const [how, top] of [
    ['trusted.overlay.opaque=y', { d: { kind: 'dir', opaque: 'trusted' }, 'd/mine': { kind: 'file' } }],
    ['user.overlay.opaque=y', { d: { kind: 'dir', opaque: 'user' }, 'd/mine': { kind: 'file' } }],
    ['.wh..wh..opq', { 'd/.wh..wh..opq': { kind: 'file' }, 'd/mine': { kind: 'file' } }],
  ] as [string, Tree][]) {
    test(`an opaque directory (${how}) hides everything below it`, async () => {
      const ov = await overlayOf([top, { 'd/lower': { kind: 'file' }, 'd/sub/x': { kind: 'file' } }, { 'd/lowest': { kind: 'file' } }]);
      assert.deepEqual(await names(ov, '/d'), ['mine']);
      assert.equal(await errno(ov.getattr('/d/lower')), Errno.ENOENT);
      assert.equal(await errno(ov.getattr('/d/sub/x')), Errno.ENOENT);
      assert.equal(await errno(ov.getattr('/d/lowest')), Errno.ENOENT);
    });
  }

  test('an opaque directory in a middle layer still merges with the layers above', async () => {
    const ov = await overlayOf([{ 'd/top': { kind: 'file' } }, { d: { kind: 'dir', opaque: 'trusted' }, 'd/mid': { kind: 'file' } }, { 'd/low': { kind: 'file' } }]);
    assert.deepEqual(await names(ov, '/d'), ['mid', 'top']);
  });

  test('opaque=x is not opaque', async () => {
    const ov = await overlayOf([{ d: { kind: 'dir', xattrs: { 'trusted.overlay.opaque': 'x' } } }, { 'd/low': { kind: 'file' } }]);
    assert.deepEqual(await names(ov, '/d'), ['low']);
  });

  test('a file on top hides a directory below (file over dir)', async () => {
    const ov = await overlayOf([{ x: { kind: 'file', data: 'file' } }, { 'x/inner': { kind: 'file' } }]);
    assert.equal((await ov.getattr('/x')).mode & 0o170000, 0o100000);
    assert.equal(await errno(ov.getattr('/x/inner')), Errno.ENOTDIR);
    assert.equal(await errno(ov.readdir('/x')), Errno.ENOTDIR);
  });

  test('a directory on top hides a file below and stops the merge there (dir over file)', async () => {
    const ov = await overlayOf([{ 'x/a': { kind: 'file' } }, { x: { kind: 'file' } }, { 'x/b': { kind: 'file' } }]);
    assert.equal((await ov.getattr('/x')).mode & 0o170000, 0o040000);
    assert.deepEqual(await names(ov, '/x'), ['a']);
  });

  test('deep nesting merges at every level', async () => {
    const deep = 'a/b/c/d/e/f/g/h/i/j';
    const ov = await overlayOf([{ [`${deep}/top`]: { kind: 'file' } }, { [`${deep}/mid`]: { kind: 'file' } }, { [`${deep}/low`]: { kind: 'file' }, 'a/b/other': { kind: 'file' } }]);
    assert.deepEqual(await names(ov, `/${deep}`), ['low', 'mid', 'top']);
    assert.deepEqual(await names(ov, '/a/b'), ['c', 'other']);
  });

  test('symlinks are returned, never followed', async () => {
    const ov = await overlayOf([{ s: { kind: 'symlink', target: '/etc/passwd' }, r: { kind: 'symlink', target: '../../outside' } }]);
    assert.equal(await ov.readlink('/s'), '/etc/passwd');
    assert.equal(await ov.readlink('/r'), '../../outside');
    assert.equal((await ov.getattr('/s')).mode & 0o170000, 0o120000);
    assert.equal(await errno(ov.open('/s', 0)), Errno.ELOOP);
  });

  test('a symlinked directory in a layer is not descended into', async () => {
    const ov = await overlayOf([{ 'link': { kind: 'symlink', target: '/etc' } }]);
    assert.equal(await errno(ov.getattr('/link/passwd')), Errno.ENOTDIR);
  });

  test('a directory that shadows a symlink below is a plain directory', async () => {
    const ov = await overlayOf([{ 'd/own': { kind: 'file' } }, { d: { kind: 'symlink', target: '/etc' } }]);
    assert.deepEqual(await names(ov, '/d'), ['own']);
  });
});

describe('readdir', () => {
  test('is the union of the layers, with . and .., each name once', async () => {
    const ov = await overlayOf([{ 'd/a': { kind: 'file' }, 'd/both': { kind: 'file' } }, { 'd/b': { kind: 'file' }, 'd/both': { kind: 'file' } }]);
    const entries = await ov.readdir('/d');
    assert.deepEqual(entries.map((e) => e.name).slice(0, 2), ['.', '..']);
    assert.deepEqual(await names(ov, '/d'), ['a', 'b', 'both']);
  });

  test('keeps one stable order across calls', async () => {
    const tree: Tree = {};
    for (let i = 0; i < 50; i++) tree[`d/f${(i * 7919) % 101}`] = { kind: 'file' };
    const ov = await overlayOf([tree, { 'd/zz': { kind: 'file' } }]);
    const first = (await ov.readdir('/d')).map((e) => e.name);
    const second = (await ov.readdir('/d')).map((e) => e.name);
    assert.deepEqual(second, first);
  });

  test('never shows whiteouts, .wh. names or the opaque marker', async () => {
    const ov = await overlayOf([
      { 'd/.wh.x': { kind: 'file' }, 'd/y': { kind: 'whiteout' }, 'd/.wh..wh..opq': { kind: 'file' }, 'd/keep': { kind: 'file' } },
      { 'd/x': { kind: 'file' } },
    ]);
    assert.deepEqual(await names(ov, '/d'), ['keep']);
  });

  test('opendir accepts a merged directory and refuses a file, a whiteout and a missing name', async () => {
    const ov = await overlayOf([{ 'd/a': { kind: 'file' }, gone: { kind: 'whiteout' } }, { 'd/b': { kind: 'file' }, gone: { kind: 'dir' } }]);
    await ov.opendir('/d');
    await ov.opendir('/');
    assert.equal(await errno(ov.opendir('/d/a')), Errno.ENOTDIR);
    assert.equal(await errno(ov.opendir('/gone')), Errno.ENOENT);
    assert.equal(await errno(ov.opendir('/missing')), Errno.ENOENT);
  });

  test('d_ino and type match getattr', async () => {
    const ov = await overlayOf([{ 'd/f': { kind: 'file' }, 'd/s': { kind: 'symlink', target: 'f' }, 'd/sub': { kind: 'dir' } }]);
    for (const e of await ov.readdir('/d')) {
      const path = e.name === '.' ? '/d' : e.name === '..' ? '/' : `/d/${e.name}`;
      const st = await ov.getattr(path);
      assert.equal(e.ino, st.ino, path);
      assert.equal(e.type, st.mode & 0o170000, path);
    }
  });
});

describe('attributes', () => {
  test('st_ino is stable, shared by hard links, distinct for different files', async () => {
    const ov = await overlayOf([{ a: { kind: 'file', data: 'a' } }, { h1: { kind: 'file', data: 'h' }, h2: { kind: 'hardlink', to: 'h1' }, b: { kind: 'file' } }]);
    const ino = async (p: string) => (await ov.getattr(p)).ino;
    assert.equal(await ino('/h1'), await ino('/h2'));
    assert.equal((await ov.getattr('/h1')).nlink, 2);
    const all = await Promise.all(['/', '/a', '/b', '/h1'].map(ino));
    assert.equal(new Set(all).size, 4);
    // As the kernel's: the root shows its top layer's inode number.
    assert.equal(await ino('/'), lstatSync(ov.config.lowers[0]).ino);
    assert.equal(await ino('/a'), await ino('/a'));
  });

  test('a directory merged from several layers has nlink 1, as in the kernel', async () => {
    const ov = await overlayOf([{ 'm/a': { kind: 'dir' } }, { 'm/b': { kind: 'dir' } }, { 'single/x': { kind: 'dir' } }]);
    assert.equal((await ov.getattr('/m')).nlink, 1);
    assert.equal((await ov.getattr('/single')).nlink, 3);
  });

  test('attributes come from the topmost layer', async () => {
    const ov = await overlayOf([{ f: { kind: 'file', data: '12345', mode: 0o640, uid: 7, gid: 8, mtime: 1e12 } }, { f: { kind: 'file', data: 'x' } }]);
    const st = await ov.getattr('/f');
    assert.deepEqual([st.mode & 0o7777, st.uid, st.gid, st.size, Math.floor(st.mtimeMs)], [0o640, 7, 8, 5, 1e12]);
  });

  test('concurrent lookups of one path resolve to one node', async () => {
    const ov = await overlayOf([{ 'a/b/c': { kind: 'file' } }, { 'a/b/d': { kind: 'file' } }]);
    const stats = await Promise.all(Array.from({ length: 20 }, () => ov.getattr('/a/b/c')));
    assert.equal(new Set(stats.map((s) => s.ino)).size, 1);
  });
});

describe('xattrs', { ...requires('root') }, () => {
  test('the overlay\'s private xattrs are hidden, others shown', async () => {
    const ov = await overlayOf([
      { d: { kind: 'dir', opaque: 'trusted', xattrs: { 'user.overlay.origin': 'o', 'user.mine': 'v', 'trusted.other': 't' } } },
    ]);
    assert.deepEqual((await ov.listxattr('/d')).sort(), ['trusted.other', 'user.mine']);
    assert.equal((await ov.getxattr('/d', 'user.mine')).toString(), 'v');
    assert.equal(await errno(ov.getxattr('/d', 'trusted.overlay.opaque')), Errno.ENODATA);
    assert.equal(await errno(ov.getxattr('/d', 'user.overlay.origin')), Errno.ENODATA);
    assert.equal(await errno(ov.getxattr('/d', 'user.absent')), Errno.ENODATA);
  });
});

describe('read-only mount', () => {
  test('opening for write or asking for write access gives EROFS', async () => {
    const ov = await overlayOf([{ f: { kind: 'file' } }]);
    assert.equal(await errno(ov.open('/f', 1)), Errno.EROFS);
    assert.equal(await errno(ov.open('/f', 2)), Errno.EROFS);
    assert.equal(await errno(ov.access('/f', 2)), Errno.EROFS);
    await ov.access('/f', 4);
  });

  test('statfs describes the top layer\'s filesystem', async () => {
    const ov = await overlayOf([{ f: { kind: 'file' } }]);
    const st = await ov.statfs();
    assert.ok(st.bsize > 0 && st.blocks > 0 && st.namemax === 255);
  });
});

describe('the full fixture', { ...requires('root') }, () => {
  test('reads every rule of the kernel-format fixture', async () => {
    const ov = await overlayOf(kernelFormatLayers());
    assert.deepEqual(await names(ov, '/merged'), ['both', 'from-bottom', 'from-middle', 'from-top', 'sub']);
    assert.deepEqual(await names(ov, '/merged/sub'), ['b', 'm', 't']);
    assert.equal(await content(ov, '/merged/both'), 'top wins');
    assert.deepEqual(await names(ov, '/opaque'), ['mine']);
    assert.equal(await content(ov, '/deep/a/b/c/d/e/f/g/h/leaf'), 'deep leaf');
  });
});

