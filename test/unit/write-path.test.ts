/** Copy-up and every mutating operation, on plain directories (no FUSE). */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { Errno, errorFor } from '../../src/errors';
import { isWhiteoutStat, OPAQUE_WHITEOUT } from '../../src/overlay/format';
import { probeOpaqueStyle } from '../../src/overlay/writes';
import type { OverlayConfig } from '../../src/overlay/overlay';
import { PathOverlay as Overlay } from '../helpers/path-overlay';
import { OVERRIDE_CONTAINERS } from '../../src/overlay/stat-override';
import { lgetxattr, lgetxattrOrNull, llistxattr } from '../../src/sys/libc';
import { requires } from '../helpers/env';
import { errno } from '../helpers/errors';
import { FILE_CAP } from '../helpers/fixtures';
import { buildLayer, makedev, removeDir, tempDir, type Tree } from '../helpers/layers';

const O_WRONLY = 1;
const O_RDWR = 2;
const O_TRUNC = 0o1000;
const dirs: string[] = [];
after(() => dirs.forEach(removeDir));

interface Fixture {
  ov: Overlay;
  lowers: string[];
  upper: string;
  work: string;
}

/** Overlay settings a test may add to the layer set (forced formats, options). */
type Extra = Omit<OverlayConfig, 'lowers' | 'upper' | 'work'>;

async function fixture(trees: Tree[], extra: Extra = {}): Promise<Fixture> {
  const dir = tempDir('writes');
  dirs.push(dir);
  const lowers = trees.map((tree, i) => {
    buildLayer(join(dir, `l${i}`), tree);
    return join(dir, `l${i}`);
  });
  const upper = join(dir, 'upper');
  const work = join(dir, 'work');
  mkdirSync(upper);
  mkdirSync(work);
  return { ov: await Overlay.open({ lowers, upper, work, ...extra }), lowers, upper, work };
}

async function names(ov: Overlay, path: string): Promise<string[]> {
  return (await ov.readdir(path)).map((e) => e.name).filter((n) => n !== '.' && n !== '..').sort();
}

async function writeAt(ov: Overlay, path: string, data: string, pos: number, flags = O_WRONLY): Promise<void> {
  const fd = await ov.open(path, flags);
  try {
    await ov.write(fd, Buffer.from(data), data.length, pos);
  } finally {
    await ov.release(fd);
  }
}

function isWhiteout(path: string): boolean {
  return isWhiteoutStat(lstatSync(path));
}

function opaque(path: string): string | undefined {
  return lgetxattrOrNull(path, 'trusted.overlay.opaque')?.toString();
}

const T = Date.UTC(2020, 1, 2, 3, 4, 5) + 678;

describe('copy-up', requires('root'), () => {
  test('opening for write copies data, mode, owner, times and xattrs into upper; the lower is untouched', async () => {
    const f = await fixture([{ 'd/f': { kind: 'file', data: 'lower data', mode: 0o640, uid: 12, gid: 34, mtime: T, xattrs: { 'user.a': '1', 'trusted.overlay.origin': 'x' } } }]);
    const before = await f.ov.getattr('/d/f');
    const lowerStat = lstatSync(join(f.lowers[0], 'd/f'), { bigint: true });
    await writeAt(f.ov, '/d/f', 'L', 0);
    const up = join(f.upper, 'd/f');
    // Before any read: reading updates atime (relatime).
    const st = lstatSync(up, { bigint: true });
    assert.equal(st.atimeNs, lowerStat.atimeNs);
    assert.equal(Number(st.mode) & 0o7777, 0o640);
    assert.deepEqual([st.uid, st.gid], [12n, 34n]);
    assert.equal(readFileSync(up, 'utf8'), 'Lower data');
    assert.equal(readFileSync(join(f.lowers[0], 'd/f'), 'utf8'), 'lower data');
    // The lower's trusted.overlay.origin is the overlay's own: not copied. The copy records the number it keeps.
    assert.deepEqual(llistxattr(up).sort(), ['trusted.overlay.tsovl.ino', 'user.a'], 'the overlay\'s own xattrs are not copied');
    assert.equal(lgetxattr(up, 'trusted.overlay.tsovl.ino').toString(), String(before.ino));
    const after = await f.ov.getattr('/d/f');
    assert.equal(after.ino, before.ino, 'st_ino survives the copy-up');
    assert.deepEqual(readdirSync(join(f.work, 'work')), [], 'nothing left in the work dir');
  });

  test('file capabilities and set-id bits survive copy-up (chown would drop them if done last)', async () => {
    const f = await fixture([{ f: { kind: 'file', data: 'x', mode: 0o6755, uid: 12, gid: 34, xattrs: { 'security.capability': FILE_CAP } } }]);
    // Not by a write, which drops capabilities itself (as on any filesystem).
    await f.ov.setxattr('/f', 'user.k', Buffer.from('v'), 0);
    const up = join(f.upper, 'f');
    const st = lstatSync(up);
    assert.deepEqual([st.mode & 0o7777, st.uid, st.gid], [0o6755, 12, 34]);
    assert.deepEqual(lgetxattrOrNull(up, 'security.capability'), FILE_CAP);
  });

  test('parents are copied up first with their attributes, and keep their times', async () => {
    const f = await fixture([{ 'a/b/f': { kind: 'file', data: 'x' }, 'a/b': { kind: 'dir', mode: 0o711, uid: 5, gid: 6, mtime: T }, a: { kind: 'dir', mtime: T + 1000 } }]);
    await writeAt(f.ov, '/a/b/f', 'y', 0);
    const b = lstatSync(join(f.upper, 'a/b'));
    assert.deepEqual([b.mode & 0o7777, b.uid, b.gid, Math.floor(b.mtimeMs)], [0o711, 5, 6, T]);
    assert.equal(Math.floor(lstatSync(join(f.upper, 'a')).mtimeMs), T + 1000);
    assert.equal(opaque(join(f.upper, 'a/b')), undefined, 'a copied-up directory still merges');
  });

  test('holes stay holes', async () => {
    const f = await fixture([{ s: { kind: 'sparse', size: 32 << 20, data: 'end', at: (32 << 20) - 3 } }]);
    await writeAt(f.ov, '/s', 'S', 0);
    const st = lstatSync(join(f.upper, 's'));
    assert.equal(st.size, 32 << 20);
    assert.ok(st.blocks * 512 < 1 << 20, `allocated ${st.blocks * 512} bytes`);
    const data = readFileSync(join(f.upper, 's'));
    assert.equal(data.subarray(-3).toString(), 'end');
    assert.equal(data[0], 0x53);
  });

  test('data from another filesystem (copy_file_range: EXDEV) is copied by read and write, holes kept', async () => {
    const shm = mkdtempSync('/dev/shm/tsovl-xdev-');
    dirs.push(shm);
    const data = randomBytes(3 << 20);
    buildLayer(shm, { f: { kind: 'file', data }, s: { kind: 'sparse', size: 32 << 20, data: 'end', at: (32 << 20) - 3 } });
    const dir = tempDir('xdev');
    dirs.push(dir);
    const [upper, work] = [join(dir, 'upper'), join(dir, 'work')];
    mkdirSync(upper);
    mkdirSync(work);
    const ov = await Overlay.open({ lowers: [shm], upper, work });
    await writeAt(ov, '/f', 'X', 0);
    await writeAt(ov, '/s', 'S', 0);
    ov.close();
    assert.deepEqual(readFileSync(join(upper, 'f')), Buffer.concat([Buffer.from('X'), data.subarray(1)]));
    const st = lstatSync(join(upper, 's'));
    assert.equal(st.size, 32 << 20);
    assert.ok(st.blocks * 512 < 1 << 20, `allocated ${st.blocks * 512} bytes`);
    assert.equal(readFileSync(join(upper, 's')).subarray(-3).toString(), 'end');
  });

  test('O_TRUNC and truncate to 0 copy no data; truncate to a size keeps the head', async () => {
    const f = await fixture([{ a: { kind: 'file', data: 'aaaa' }, b: { kind: 'file', data: 'bbbb' }, c: { kind: 'file', data: 'cccc' } }]);
    closeSync(await f.ov.open('/a', O_WRONLY | O_TRUNC));
    await f.ov.truncate('/b', 0);
    await f.ov.truncate('/c', 2);
    assert.equal(readFileSync(join(f.upper, 'a'), 'utf8'), '');
    assert.equal(readFileSync(join(f.upper, 'b'), 'utf8'), '');
    assert.equal(readFileSync(join(f.upper, 'c'), 'utf8'), 'cc');
  });

  test('a read-only open does not copy up', async () => {
    const f = await fixture([{ f: { kind: 'file', data: 'x' } }]);
    await f.ov.release(await f.ov.open('/f', 0));
    assert.ok(!existsSync(join(f.upper, 'f')));
  });

  test('a descriptor opened read-only before a copy-up reads the upper copy after it', async () => {
    const f = await fixture([{ f: { kind: 'file', data: 'lower' } }]);
    const reader = await f.ov.open('/f', 0);
    try {
      await writeAt(f.ov, '/f', 'UPPER!', 0);
      const buf = Buffer.alloc(16);
      const n = await f.ov.read(reader, buf, buf.length, 0);
      assert.equal(buf.subarray(0, n).toString(), 'UPPER!');
    } finally {
      await f.ov.release(reader);
    }
  });

  test('concurrent first writers copy up once', async () => {
    const f = await fixture([{ f: { kind: 'file', data: 'x'.repeat(4 << 20) } }]);
    const fds = await Promise.all(Array.from({ length: 8 }, () => f.ov.open('/f', O_RDWR)));
    for (const fd of fds) await f.ov.release(fd);
    assert.equal(lstatSync(join(f.upper, 'f')).size, 4 << 20);
    assert.deepEqual(readdirSync(join(f.work, 'work')), []);
  });

  test('symlinks and fifos are copied up by chown', async () => {
    const f = await fixture([{ l: { kind: 'symlink', target: 'somewhere' }, p: { kind: 'fifo' } }]);
    await f.ov.chown('/l', 7, 8);
    await f.ov.chown('/p', 7, 8);
    const l = lstatSync(join(f.upper, 'l'));
    assert.ok(l.isSymbolicLink() && l.uid === 7);
    assert.ok(lstatSync(join(f.upper, 'p')).isFIFO());
  });

  test('chmod copies up char devices, fifos and sockets as what they are', async () => {
    const f = await fixture([{
      null: { kind: 'device', type: 'char', rdev: makedev(1, 3), mode: 0o666, uid: 5, gid: 6 },
      p: { kind: 'fifo', mode: 0o644 },
      sock: { kind: 'socket', mode: 0o755 },
    }]);
    const inos = await Promise.all(['/null', '/p', '/sock'].map(async (p) => (await f.ov.getattr(p)).ino));
    for (const p of ['/null', '/p', '/sock']) await f.ov.chmod(p, 0o600);
    const dev = lstatSync(join(f.upper, 'null'));
    assert.ok(dev.isCharacterDevice());
    assert.deepEqual([dev.rdev, dev.mode & 0o7777, dev.uid, dev.gid], [makedev(1, 3), 0o600, 5, 6]);
    assert.ok(lstatSync(join(f.upper, 'p')).isFIFO());
    assert.ok(lstatSync(join(f.upper, 'sock')).isSocket());
    assert.equal(lstatSync(join(f.upper, 'sock')).mode & 0o7777, 0o600);
    assert.deepEqual(await Promise.all(['/null', '/p', '/sock'].map(async (p) => (await f.ov.getattr(p)).ino)), inos);
    assert.equal((await f.ov.getattr('/null')).rdev, makedev(1, 3));
  });

  test('chown copies a regular file up with its data, then sets the owner', async () => {
    const f = await fixture([{ f: { kind: 'file', data: 'lower data', mode: 0o640, uid: 1, gid: 2, mtime: T } }]);
    await f.ov.chown('/f', 7, 8);
    const st = lstatSync(join(f.upper, 'f'));
    assert.deepEqual([st.uid, st.gid, st.mode & 0o7777, Math.floor(st.mtimeMs)], [7, 8, 0o640, T]);
    assert.equal(readFileSync(join(f.upper, 'f'), 'utf8'), 'lower data');
    await f.ov.chown('/f', 0xffffffff, 9);
    assert.deepEqual([lstatSync(join(f.upper, 'f')).uid, lstatSync(join(f.upper, 'f')).gid], [7, 9], '-1 leaves the uid');
  });

  test('ftruncate through a descriptor opened for writing works on the upper copy', async () => {
    const f = await fixture([{ f: { kind: 'file', data: 'lower data' } }]);
    const fd = await f.ov.open('/f', O_RDWR);
    try {
      await f.ov.ftruncate(fd, 5);
      assert.equal(readFileSync(join(f.upper, 'f'), 'utf8'), 'lower');
      await f.ov.ftruncate(fd, 8);
    } finally {
      await f.ov.release(fd);
    }
    assert.equal(readFileSync(join(f.upper, 'f'), 'utf8'), 'lower\0\0\0');
    assert.equal(readFileSync(join(f.lowers[0], 'f'), 'utf8'), 'lower data');
  });

  test('a work dir in use by another mount is refused', async () => {
    const f = await fixture([{}]);
    const other = join(f.upper, '..', 'upper2');
    mkdirSync(other);
    assert.equal(await errno(Overlay.open({ lowers: f.lowers, upper: other, work: f.work })), Errno.EBUSY);
    f.ov.close();
    (await Overlay.open({ lowers: f.lowers, upper: other, work: f.work })).close();
  });

  test('a work dir released shortly after is waited for (podman unmounts, then mounts again)', async () => {
    const f = await fixture([{}]);
    setTimeout(() => f.ov.close(), 300);
    const started = Date.now();
    (await Overlay.open({ lowers: f.lowers, upper: f.upper, work: f.work })).close();
    assert.ok(Date.now() - started >= 250);
  });

  test('the work dir is emptied at mount', async () => {
    const dir = tempDir('workclean');
    dirs.push(dir);
    buildLayer(join(dir, 'l'), {});
    buildLayer(join(dir, 'work/work/#left-over'), { f: { kind: 'file', data: 'partial' } });
    mkdirSync(join(dir, 'u'));
    await Overlay.open({ lowers: [join(dir, 'l')], upper: join(dir, 'u'), work: join(dir, 'work') });
    assert.deepEqual(readdirSync(join(dir, 'work/work')), []);
  });
});

describe('namespace changes', requires('root'), () => {
  test('unlink of a lower name leaves a char 0/0 whiteout; of an upper-only name, nothing', async () => {
    const f = await fixture([{ low: { kind: 'file' } }]);
    await f.ov.unlink('/low');
    assert.ok(isWhiteout(join(f.upper, 'low')));
    closeSync(await f.ov.create('/new', 0o644));
    await f.ov.unlink('/new');
    assert.ok(!existsSync(join(f.upper, 'new')));
    assert.equal(await errno(f.ov.getattr('/low')), Errno.ENOENT);
    assert.deepEqual(await names(f.ov, '/'), []);
  });

  test('unlink of a copied-up file replaces it with a whiteout', async () => {
    const f = await fixture([{ low: { kind: 'file', data: 'x' } }]);
    await writeAt(f.ov, '/low', 'y', 0);
    await f.ov.unlink('/low');
    assert.ok(isWhiteout(join(f.upper, 'low')));
  });

  test('rmdir: ENOTEMPTY while the merged view has entries; then a whiteout', async () => {
    const f = await fixture([{ 'd/a': { kind: 'file' } }, { 'd/b': { kind: 'file' } }]);
    assert.equal(await errno(f.ov.rmdir('/d')), Errno.ENOTEMPTY);
    await f.ov.unlink('/d/a');
    await f.ov.unlink('/d/b');
    assert.deepEqual(await names(f.ov, '/d'), []);
    await f.ov.rmdir('/d');
    assert.ok(isWhiteout(join(f.upper, 'd')));
    assert.equal(await errno(f.ov.getattr('/d')), Errno.ENOENT);
  });

  test('mkdir where a whiteout stands makes an opaque directory', async () => {
    const f = await fixture([{ 'd/old': { kind: 'file' } }]);
    await f.ov.unlink('/d/old');
    await f.ov.rmdir('/d');
    await f.ov.mkdir('/d', 0o755);
    assert.equal(opaque(join(f.upper, 'd')), 'y');
    assert.deepEqual(await names(f.ov, '/d'), []);
    assert.equal((await f.ov.getattr('/d')).mode & 0o7777, 0o755);
  });

  test('mkdir where no lower name is hidden is a plain directory', async () => {
    const f = await fixture([{ other: { kind: 'file' } }]);
    await f.ov.mkdir('/d', 0o700);
    assert.equal(opaque(join(f.upper, 'd')), undefined);
    assert.equal(lstatSync(join(f.upper, 'd')).mode & 0o7777, 0o700);
  });

  test('a file created where a whiteout stands replaces it', async () => {
    const f = await fixture([{ f: { kind: 'file', data: 'old' } }]);
    await f.ov.unlink('/f');
    const fd = await f.ov.create('/f', 0o600);
    await f.ov.write(fd, Buffer.from('new'), 3, 0);
    await f.ov.release(fd);
    assert.ok(lstatSync(join(f.upper, 'f')).isFile());
    assert.equal(readFileSync(join(f.upper, 'f'), 'utf8'), 'new');
  });

  test('symlink, mknod and link where whiteouts stand', async () => {
    const f = await fixture([{ a: { kind: 'file' }, b: { kind: 'file' }, c: { kind: 'file' }, src: { kind: 'file', data: 's' } }]);
    for (const n of ['/a', '/b', '/c']) await f.ov.unlink(n);
    await f.ov.symlink('target', '/a');
    await f.ov.mknod('/b', 0o010644, 0);
    await f.ov.link('/src', '/c');
    assert.ok(lstatSync(join(f.upper, 'a')).isSymbolicLink());
    assert.ok(lstatSync(join(f.upper, 'b')).isFIFO());
    assert.equal((await f.ov.getattr('/c')).ino, (await f.ov.getattr('/src')).ino);
    assert.equal((await f.ov.getattr('/src')).nlink, 2);
  });

  test('rename of a lower file leaves a whiteout and moves a copy', async () => {
    const f = await fixture([{ 'a/f': { kind: 'file', data: 'moved' }, b: { kind: 'dir' } }]);
    const ino = (await f.ov.getattr('/a/f')).ino;
    await f.ov.rename('/a/f', '/b/g');
    assert.ok(isWhiteout(join(f.upper, 'a/f')));
    assert.equal(readFileSync(join(f.upper, 'b/g'), 'utf8'), 'moved');
    assert.equal((await f.ov.getattr('/b/g')).ino, ino);
    assert.equal(await errno(f.ov.getattr('/a/f')), Errno.ENOENT);
  });

  test('rename over an existing name replaces it; a lower target stays hidden', async () => {
    const f = await fixture([{ x: { kind: 'file', data: 'x' }, y: { kind: 'file', data: 'y' } }]);
    await f.ov.rename('/x', '/y');
    assert.deepEqual(await names(f.ov, '/'), ['y']);
    assert.equal(readFileSync(join(f.upper, 'y'), 'utf8'), 'x');
    assert.ok(isWhiteout(join(f.upper, 'x')));
  });

  test('rename of a directory with lower content is EXDEV; of an upper-only one works', async () => {
    const f = await fixture([{ 'low/f': { kind: 'file' } }]);
    assert.equal(await errno(f.ov.rename('/low', '/moved')), Errno.EXDEV);
    await f.ov.mkdir('/up', 0o755);
    closeSync(await f.ov.create('/up/f', 0o644));
    await f.ov.rename('/up', '/up2');
    assert.deepEqual(await names(f.ov, '/up2'), ['f']);
    assert.ok(!existsSync(join(f.upper, 'up')));
  });

  test('an upper directory renamed onto an emptied lower directory is opaque there', async () => {
    const f = await fixture([{ 'target/old': { kind: 'file' } }]);
    await f.ov.unlink('/target/old');
    await f.ov.mkdir('/src', 0o755);
    closeSync(await f.ov.create('/src/new', 0o644));
    await f.ov.rename('/src', '/target');
    assert.equal(opaque(join(f.upper, 'target')), 'y');
    assert.deepEqual(await names(f.ov, '/target'), ['new']);
  });

  test('names of 255 bytes work in create, mkdir, symlink, unlink over a lower name and rename; 256 bytes are ENAMETOOLONG', async () => {
    const name = (c: string) => c.repeat(255);
    const f = await fixture([{ [name('l')]: { kind: 'file', data: 'lower' } }]);
    await f.ov.release(await f.ov.create(`/${name('f')}`, 0o644));
    await f.ov.mkdir(`/${name('d')}`, 0o755);
    await f.ov.symlink('target', `/${name('s')}`);
    await f.ov.unlink(`/${name('l')}`);
    assert.ok(isWhiteout(join(f.upper, name('l'))), 'the lower name is whited out');
    await f.ov.rename(`/${name('f')}`, `/${name('l')}`);
    assert.deepEqual(await names(f.ov, '/'), [name('d'), name('l'), name('s')].sort());
    assert.equal(await errno(f.ov.getattr(`/${'x'.repeat(256)}`)), Errno.ENAMETOOLONG);
    assert.equal(await errno(f.ov.mkdir(`/${'x'.repeat(256)}`, 0o755)), Errno.ENAMETOOLONG);
  });

  test('names starting with .wh. cannot be made; the overlay\'s xattrs cannot be set', async () => {
    const f = await fixture([{ f: { kind: 'file' } }]);
    assert.equal(await errno(f.ov.create('/.wh.x', 0o644)), Errno.EINVAL);
    assert.equal(await errno(f.ov.mkdir('/.wh.d', 0o755)), Errno.EINVAL);
    assert.equal(await errno(f.ov.rename('/f', '/.wh.f')), Errno.EINVAL);
    assert.equal(await errno(f.ov.setxattr('/f', 'trusted.overlay.opaque', Buffer.from('y'), 0)), Errno.EPERM);
    assert.equal(await errno(f.ov.setxattr('/f', 'user.overlay.opaque', Buffer.from('y'), 0)), Errno.EPERM);
    assert.equal(await errno(f.ov.removexattr('/f', 'trusted.overlay.origin')), Errno.EPERM);
    assert.equal(await errno(f.ov.removexattr('/f', 'user.overlay.opaque')), Errno.EPERM);
    assert.ok(!existsSync(join(f.upper, 'f')), 'refused before any copy-up');
  });

  test('chmod, utimens and xattrs apply to the upper copy', async () => {
    const f = await fixture([{ f: { kind: 'file', data: 'x', mode: 0o600 } }]);
    await f.ov.chmod('/f', 0o4755);
    await f.ov.utimens('/f', T, T + 5);
    await f.ov.setxattr('/f', 'user.k', Buffer.from('v'), 0);
    const st = lstatSync(join(f.upper, 'f'));
    assert.deepEqual([st.mode & 0o7777, st.mtimeMs], [0o4755, T + 5]);
    assert.equal((await f.ov.getxattr('/f', 'user.k')).toString(), 'v');
    await f.ov.removexattr('/f', 'user.k');
    assert.deepEqual(await f.ov.listxattr('/f'), []);
  });

  test('mknod makes char and block devices, sockets, fifos and regular files in upper', async () => {
    const f = await fixture([{}]);
    await f.ov.mknod('/chr', 0o020620, makedev(1, 3));
    await f.ov.mknod('/blk', 0o060640, makedev(7, 0));
    await f.ov.mknod('/sock', 0o140755, 0);
    await f.ov.mknod('/fifo', 0o010600, 0);
    await f.ov.mknod('/reg', 0o100604, 0);
    const st = (n: string) => lstatSync(join(f.upper, n));
    assert.ok(st('chr').isCharacterDevice() && st('chr').rdev === makedev(1, 3) && (st('chr').mode & 0o7777) === 0o620);
    assert.ok(st('blk').isBlockDevice() && st('blk').rdev === makedev(7, 0) && (st('blk').mode & 0o7777) === 0o640);
    assert.ok(st('sock').isSocket() && (st('sock').mode & 0o7777) === 0o755);
    assert.ok(st('fifo').isFIFO());
    assert.ok(st('reg').isFile() && st('reg').size === 0 && (st('reg').mode & 0o7777) === 0o604);
    assert.equal((await f.ov.getattr('/blk')).rdev, makedev(7, 0));
    assert.deepEqual(await names(f.ov, '/'), ['blk', 'chr', 'fifo', 'reg', 'sock']);
  });

  test('mknod of a char device 0/0 (a whiteout) is refused with EPERM, as the kernel does', async () => {
    const f = await fixture([{ low: { kind: 'file' } }]);
    assert.equal(await errno(f.ov.mknod('/fake', 0o020644, 0)), Errno.EPERM);
    assert.equal(await errno(f.ov.mknod('/low', 0o020644, 0)), Errno.EEXIST, 'a taken name is EEXIST first');
    assert.ok(!existsSync(join(f.upper, 'fake')));
    assert.deepEqual(await names(f.ov, '/'), ['low']);
  });

  test('fsyncdir syncs an upper directory and leaves a lower-only one alone', async () => {
    const f = await fixture([{ 'low/f': { kind: 'file' }, file: { kind: 'file' } }]);
    await f.ov.mkdir('/d', 0o755);
    closeSync(await f.ov.create('/d/f', 0o644));
    await f.ov.fsyncdir('/d', false);
    await f.ov.fsyncdir('/', true);
    await f.ov.fsyncdir('/low', false);
    assert.ok(!existsSync(join(f.upper, 'low')), 'no copy-up');
    assert.equal(await errno(f.ov.fsyncdir('/file', false)), Errno.ENOTDIR);
    assert.equal(await errno(f.ov.fsyncdir('/nope', false)), Errno.ENOENT);
    const readOnly = await Overlay.open({ lowers: f.lowers });
    await readOnly.fsyncdir('/low', false);
    readOnly.close();
  });

  test('EEXIST for taken names, ENOENT for missing ones', async () => {
    const f = await fixture([{ f: { kind: 'file' }, d: { kind: 'dir' } }]);
    assert.equal(await errno(f.ov.mkdir('/d', 0o755)), Errno.EEXIST);
    assert.equal(await errno(f.ov.create('/f', 0o644)), Errno.EEXIST);
    assert.equal(await errno(f.ov.unlink('/nope')), Errno.ENOENT);
    assert.equal(await errno(f.ov.unlink('/d')), Errno.EISDIR);
    assert.equal(await errno(f.ov.rmdir('/f')), Errno.ENOTDIR);
  });

  test('new entries get exactly the requested mode, whatever the process umask', async () => {
    const f = await fixture([{}]);
    const old = process.umask(0o077);
    try {
      closeSync(await f.ov.create('/f', 0o666));
      await f.ov.mkdir('/d', 0o777);
    } finally {
      process.umask(old);
    }
    assert.equal(lstatSync(join(f.upper, 'f')).mode & 0o777, 0o666);
    assert.equal(lstatSync(join(f.upper, 'd')).mode & 0o777, 0o777);
  });
});

describe('owners of new entries', requires('root'), () => {
  const owner = { uid: 1000, gid: 1001 };
  const S_IFIFO = 0o010000;

  function ids(path: string): string {
    const st = lstatSync(path);
    return `${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid}`;
  }

  async function makeAll(ov: Overlay, dir: string): Promise<void> {
    closeSync(await ov.create(`${dir}/file`, 0o4755, owner));
    await ov.mknod(`${dir}/fifo`, S_IFIFO | 0o640, 0, owner);
    await ov.mkdir(`${dir}/dir`, 0o750, owner);
    await ov.symlink('file', `${dir}/link`, owner);
  }

  test('create, mknod, mkdir and symlink give the entry the owner, keeping the mode (S_ISUID too)', async () => {
    const f = await fixture([{ d: { kind: 'dir' } }]);
    await makeAll(f.ov, '/d');
    assert.equal(ids(join(f.upper, 'd/file')), '4755 1000:1001');
    assert.equal(ids(join(f.upper, 'd/fifo')), '640 1000:1001');
    assert.equal(ids(join(f.upper, 'd/dir')), '750 1000:1001');
    assert.match(ids(join(f.upper, 'd/link')), / 1000:1001$/);
    assert.equal((await f.ov.getattr('/d/file')).uid, 1000);
    assert.deepEqual(readdirSync(join(f.work, 'work')), [], 'built in the work dir, nothing left there');
  });

  test('in a set-group-ID directory the group is the directory\'s, and a new directory is set-group-ID', async () => {
    const f = await fixture([{ s: { kind: 'dir', mode: 0o2777, gid: 2000 } }]);
    await makeAll(f.ov, '/s');
    assert.equal(ids(join(f.upper, 's/file')), '4755 1000:2000');
    assert.equal(ids(join(f.upper, 's/dir')), '2750 1000:2000');
    assert.match(ids(join(f.upper, 's/link')), / 1000:2000$/);
  });

  test('over whiteouts: the owner, and the directory is opaque', async () => {
    const f = await fixture([{ 'd/file': { kind: 'file' }, 'd/dir/x': { kind: 'file' }, 'd/fifo': { kind: 'file' }, 'd/link': { kind: 'file' } }]);
    for (const n of ['file', 'fifo', 'link']) await f.ov.unlink(`/d/${n}`);
    await f.ov.unlink('/d/dir/x');
    await f.ov.rmdir('/d/dir');
    await makeAll(f.ov, '/d');
    assert.equal(ids(join(f.upper, 'd/file')), '4755 1000:1001');
    assert.equal(ids(join(f.upper, 'd/dir')), '750 1000:1001');
    assert.equal(opaque(join(f.upper, 'd/dir')), 'y');
    assert.deepEqual(await names(f.ov, '/d/dir'), []);
  });

  test('AUFS-style whiteouts: the owner, and the directory made over one is opaque', async () => {
    const f = await fixture([{ 'd/dir/x': { kind: 'file' } }], { whiteoutStyle: 'aufs' });
    await f.ov.unlink('/d/dir/x');
    await f.ov.rmdir('/d/dir');
    await f.ov.mkdir('/d/dir', 0o755, owner);
    assert.equal(ids(join(f.upper, 'd/dir')), '755 1000:1001');
    assert.equal(opaque(join(f.upper, 'd/dir')), 'y');
    assert.deepEqual(await names(f.ov, '/d/dir'), []);
  });

  test('an existing name is EEXIST, and nothing is left in the work dir', async () => {
    const f = await fixture([{ d: { kind: 'dir' }, f: { kind: 'file' } }]);
    assert.equal(await errno(f.ov.mkdir('/d', 0o755, owner)), Errno.EEXIST);
    assert.equal(await errno(f.ov.create('/f', 0o644, owner)), Errno.EEXIST);
    assert.deepEqual(readdirSync(join(f.work, 'work')), []);
  });

  test('without the right to chown (setOwners false), or without an owner, entries are the server\'s', async () => {
    const f = await fixture([{ d: { kind: 'dir' } }], { setOwners: false });
    await makeAll(f.ov, '/d');
    assert.equal(ids(join(f.upper, 'd/file')), '4755 0:0');
    assert.equal(ids(join(f.upper, 'd/dir')), '750 0:0');
    const g = await fixture([{ d: { kind: 'dir' } }]);
    await g.ov.mkdir('/d/dir', 0o755);
    assert.equal(ids(join(g.upper, 'd/dir')), '755 0:0');
  });

  test('storedOwner maps the caller\'s ids back through uidmapping/gidmapping', async () => {
    const f = await fixture([{}], {
      idmap: { uidRanges: [{ inside: 0, outside: 100000, count: 65536 }], gidRanges: [{ inside: 0, outside: 200000, count: 65536 }] },
    });
    assert.deepEqual(f.ov.storedOwner(101000, 200005), { uid: 1000, gid: 5 });
    assert.deepEqual(f.ov.storedOwner(5, 5), { uid: 65534, gid: 65534 });
    await f.ov.mkdir('/d', 0o755, f.ov.storedOwner(101000, 200005));
    assert.equal(ids(join(f.upper, 'd')), '755 1000:5');
    assert.deepEqual([(await f.ov.getattr('/d')).uid, (await f.ov.getattr('/d')).gid], [101000, 200005]);
  });
});

describe('AUFS-style whiteouts, where char 0/0 devices cannot be made', requires('root'), () => {
  test('unlink, rmdir and rename leave .wh.NAME files that hide the lower names', async () => {
    const f = await fixture([{ a: { kind: 'file' }, 'd/x': { kind: 'file' }, m: { kind: 'file', data: 'm' } }], { whiteoutStyle: 'aufs' });
    await f.ov.unlink('/a');
    await f.ov.unlink('/d/x');
    await f.ov.rmdir('/d');
    await f.ov.rename('/m', '/n');
    const upper = readdirSync(f.upper).sort();
    assert.deepEqual(upper, ['.wh.a', '.wh.d', '.wh.m', 'n']);
    assert.equal(lstatSync(join(f.upper, '.wh.a')).mode & 0o7777, 0);
    assert.deepEqual(await names(f.ov, '/'), ['n']);
    // A fresh view of the same layers (a remount) agrees.
    f.ov.close();
    const again = await Overlay.open({ lowers: f.lowers, upper: f.upper, work: f.work, whiteoutStyle: 'aufs' });
    assert.deepEqual(await names(again, '/'), ['n']);
  });

  test('a name made where .wh.NAME stands takes its place: create, mkdir, symlink, mknod, link, rename', async () => {
    const old = { kind: 'file', data: 'old' } as const;
    const f = await fixture([{ c: old, 'd/x': old, s: old, n: old, l: old, r: old, src: { kind: 'file', data: 's' } }], { whiteoutStyle: 'aufs' });
    await f.ov.unlink('/d/x');
    await f.ov.rmdir('/d');
    for (const n of ['c', 's', 'n', 'l', 'r']) await f.ov.unlink(`/${n}`);
    assert.deepEqual(readdirSync(f.upper).sort(), ['.wh.c', '.wh.d', '.wh.l', '.wh.n', '.wh.r', '.wh.s']);
    closeSync(await f.ov.create('/c', 0o644));
    await f.ov.mkdir('/d', 0o755);
    await f.ov.symlink('t', '/s');
    await f.ov.mknod('/n', 0o010644, 0);
    await f.ov.link('/src', '/l');
    closeSync(await f.ov.create('/new', 0o644));
    await f.ov.rename('/new', '/r');
    assert.deepEqual(readdirSync(f.upper).sort(), ['c', 'd', 'l', 'n', 'r', 's', 'src']);
    assert.equal(opaque(join(f.upper, 'd')), 'y', 'the directory still hides what was deleted');
    f.ov.close();
    const again = await Overlay.open({ lowers: f.lowers, upper: f.upper, work: f.work, whiteoutStyle: 'aufs' });
    assert.deepEqual(await names(again, '/'), ['c', 'd', 'l', 'n', 'r', 's', 'src']);
    assert.deepEqual(await names(again, '/d'), []);
    assert.equal((await again.getattr('/c')).size, 0);
  });

  test('names come back over .wh.NAME; a directory made there is opaque', async () => {
    const f = await fixture([{ a: { kind: 'file', data: 'old' }, 'd/x': { kind: 'file' } }], { whiteoutStyle: 'aufs' });
    await f.ov.unlink('/a');
    closeSync(await f.ov.create('/a', 0o644));
    await f.ov.unlink('/d/x');
    await f.ov.rmdir('/d');
    await f.ov.mkdir('/d', 0o755);
    assert.deepEqual(await names(f.ov, '/'), ['a', 'd']);
    assert.equal((await f.ov.getattr('/a')).size, 0);
    assert.deepEqual(await names(f.ov, '/d'), []);
    f.ov.close();
    const again = await Overlay.open({ lowers: f.lowers, upper: f.upper, work: f.work, whiteoutStyle: 'aufs' });
    assert.deepEqual(await names(again, '/d'), []);
    assert.equal((await again.getattr('/a')).size, 0);
  });
});

describe('lowers on id-mapped mounts (podman 4.3 with --uidmap)', requires('root'), () => {
  const idmap = {
    uidRanges: [{ inside: 0, outside: 100000, count: 65536 }],
    gidRanges: [{ inside: 0, outside: 200000, count: 65536 }],
  };
  /**
   * l0 stands for a lower read through an id-mapped mount with the same mapping: on-disk 0
   * appears as 100000 (gid 200000) there, an on-disk id outside the mapping as 65534.
   */
  const trees: Tree[] = [
    {
      a: { kind: 'file', data: 'a', uid: 100000, gid: 200000 },
      d: { kind: 'dir', uid: 101000, gid: 200005 },
      'd/x': { kind: 'file', uid: 101000, gid: 200005 },
      n: { kind: 'file', uid: 65534, gid: 65534 },
    },
    { b: { kind: 'file', data: 'b', uid: 0, gid: 0 } },
  ];

  async function owner(ov: Overlay, path: string): Promise<string> {
    const st = await ov.getattr(path);
    return `${st.uid}:${st.gid}`;
  }

  function real(path: string): string {
    const st = lstatSync(path);
    return `${st.uid}:${st.gid}`;
  }

  test('their ids are shown as they are, without uidmapping/gidmapping again; other lowers are mapped', async () => {
    const f = await fixture(trees, { idmap, idmappedLowers: [true, false] });
    assert.equal(await owner(f.ov, '/a'), '100000:200000');
    assert.equal(await owner(f.ov, '/d/x'), '101000:200005');
    assert.equal(await owner(f.ov, '/n'), '65534:65534');
    assert.equal(await owner(f.ov, '/b'), '100000:200000');
    const plain = await fixture(trees, { idmap, idmappedLowers: [false, false] });
    assert.equal(await owner(plain.ov, '/a'), '65534:65534', 'mapped twice where the flag is off');
  });

  test('squash options still apply', async () => {
    const f = await fixture(trees, { idmap: { ...idmap, squashUid: 0, squashGid: 7 }, idmappedLowers: [true, false] });
    assert.equal(await owner(f.ov, '/a'), '0:7');
    assert.equal(await owner(f.ov, '/b'), '0:7');
  });

  test('a copy-up stores the ids mapped back, and shows the same owner', async () => {
    const f = await fixture(trees, { idmap, idmappedLowers: [true, false] });
    await writeAt(f.ov, '/a', 'A', 0);
    await f.ov.mkdir('/d/new', 0o755);
    await writeAt(f.ov, '/b', 'B', 0);
    assert.equal(real(join(f.upper, 'a')), '0:0');
    assert.equal(real(join(f.upper, 'd')), '1000:5');
    assert.equal(real(join(f.upper, 'b')), '0:0');
    assert.equal(await owner(f.ov, '/a'), '100000:200000');
    assert.equal(await owner(f.ov, '/d'), '101000:200005');
    assert.equal(await owner(f.ov, '/b'), '100000:200000');
    await f.ov.chown('/d/x', 102000, 0xffffffff);
    assert.equal(real(join(f.upper, 'd/x')), '2000:5');
    assert.equal(await owner(f.ov, '/d/x'), '102000:200005');
  });

  test('their override xattrs hold stored ids (an id-mapped mount maps no xattr)', async () => {
    const f = await fixture([{
      '.': { kind: 'dir', xattrs: { [OVERRIDE_CONTAINERS]: '0:0:755' } },
      o: { kind: 'file', uid: 100000, gid: 200000, xattrs: { [OVERRIDE_CONTAINERS]: '5:6:640' } },
      p: { kind: 'file', uid: 100007, gid: 200008 },
    }], { idmap, idmappedLowers: [true] });
    assert.equal(await owner(f.ov, '/o'), '100005:200006');
    assert.equal(await owner(f.ov, '/p'), '100007:200008');
    await writeAt(f.ov, '/o', 'O', 0);
    await writeAt(f.ov, '/p', 'P', 0);
    assert.equal(real(join(f.upper, 'o')), '5:6');
    assert.equal(real(join(f.upper, 'p')), '7:8');
  });
});

describe('noxattrs=1', requires('root'), () => {
  test('getxattr, listxattr and setxattr answer ENOSYS (the kernel shows EOPNOTSUPP); removexattr works', async () => {
    const f = await fixture([{ f: { kind: 'file', xattrs: { 'user.a': '1' } } }], { noxattrs: true });
    assert.equal(await errno(f.ov.getxattr('/f', 'user.a')), Errno.ENOSYS);
    assert.equal(await errno(f.ov.listxattr('/f')), Errno.ENOSYS);
    assert.equal(await errno(f.ov.setxattr('/f', 'user.b', Buffer.from('2'), 0)), Errno.ENOSYS);
    assert.ok(!existsSync(join(f.upper, 'f')), 'refused before any copy-up');
    await f.ov.removexattr('/f', 'user.a');
    assert.deepEqual(llistxattr(join(f.upper, 'f')).filter((n) => !n.startsWith('trusted.overlay.')), []);
  });
});

describe('opaque markers where the upper refuses the opaque xattr', requires('root'), () => {
  test('mkdir over a whiteout and a directory moved into a merged one get a .wh..wh..opq file', async () => {
    const f = await fixture([{ 'd/old': { kind: 'file' }, 'm/below': { kind: 'file' } }], { opaqueStyle: 'file' });
    await f.ov.unlink('/d/old');
    await f.ov.rmdir('/d');
    await f.ov.mkdir('/d', 0o755);
    await f.ov.mkdir('/new', 0o755);
    await f.ov.rename('/new', '/m/moved');
    for (const d of ['d', 'm/moved']) {
      assert.deepEqual(readdirSync(join(f.upper, d)), [OPAQUE_WHITEOUT], d);
      assert.equal(opaque(join(f.upper, d)), undefined, `${d}: no xattr`);
    }
    assert.deepEqual(await names(f.ov, '/d'), []);
    f.ov.close();
    const again = await Overlay.open({ lowers: f.lowers, upper: f.upper, work: f.work, opaqueStyle: 'file' });
    assert.deepEqual(await names(again, '/d'), [], 'a remount reads the file as opaque');
    assert.deepEqual(await names(again, '/m'), ['below', 'moved']);
    await again.rmdir('/d');
    assert.ok(isWhiteout(join(f.upper, 'd')), 'the marker does not keep an empty directory from going');
  });

  test('the probe: the xattr where it is taken, the file where it is refused (ENOTSUP, EOPNOTSUPP, EPERM)', () => {
    const d = tempDir('probe');
    dirs.push(d);
    const refusing = (code: 'ENOTSUP' | 'EOPNOTSUPP' | 'EPERM' | 'EIO') => () => { throw errorFor(code); };
    assert.equal(probeOpaqueStyle(join(d, 'a'), 'trusted'), 'xattr');
    for (const code of ['ENOTSUP', 'EOPNOTSUPP', 'EPERM'] as const) assert.equal(probeOpaqueStyle(join(d, code), 'trusted', refusing(code)), 'file', code);
    assert.throws(() => probeOpaqueStyle(join(d, 'b'), 'user', refusing('EIO')), /EIO/);
    assert.deepEqual(readdirSync(d), [], 'the scratch directories are gone');
  });
});
