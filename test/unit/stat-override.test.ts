/** Owners and modes kept in xattrs (fuse-overlayfs's xattr_permissions and override layers), on plain directories. */
import assert from 'node:assert/strict';
import { closeSync, lchownSync, lstatSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { Errno } from '../../src/errors';
import { PathOverlay as Overlay } from '../helpers/path-overlay';
import {
  OVERRIDE_CONTAINERS, OVERRIDE_PRIVILEGED, OVERRIDE_USER, formatOverride, parseOverride, type XattrPermissions,
} from '../../src/overlay/stat-override';
import { lgetxattrOrNull, lsetxattr } from '../../src/sys/libc';
import { requires } from '../helpers/env';
import { errno } from '../helpers/errors';
import { buildLayer, removeDir, tempDir, type Tree } from '../helpers/layers';

const S_IFIFO = 0o010000;
const O_WRONLY = 1;
const dirs: string[] = [];
after(() => dirs.forEach(removeDir));

interface Fixture {
  ov: Overlay;
  lower: string;
  upper: string;
  work: string;
  reopen(xattrPermissions: XattrPermissions): Promise<Overlay>;
}

/** One lower built from `tree` (its root's xattrs from `rootXattrs`), an empty upper. */
async function fixture(tree: Tree, xattrPermissions: XattrPermissions, rootXattrs: Record<string, string> = {}): Promise<Fixture> {
  const dir = tempDir('override');
  dirs.push(dir);
  const [lower, upper, work] = ['lower', 'upper', 'work'].map((n) => join(dir, n));
  buildLayer(lower, tree);
  for (const [name, value] of Object.entries(rootXattrs)) lsetxattr(lower, name, Buffer.from(value));
  mkdirSync(upper);
  mkdirSync(work);
  const reopen = (x: XattrPermissions) => Overlay.open({ lowers: [lower], upper, work, xattrPermissions: x });
  return { ov: await reopen(xattrPermissions), lower, upper, work, reopen };
}

async function attrs(ov: Overlay, path: string): Promise<string> {
  const st = await ov.getattr(path);
  return `${st.uid}:${st.gid}:${st.mode.toString(8)}`;
}

function real(path: string): string {
  const st = lstatSync(path);
  return `${st.uid}:${st.gid}:${st.mode.toString(8)}`;
}

function xattr(path: string, name: string): string | undefined {
  return lgetxattrOrNull(path, name)?.toString();
}

describe('override values', () => {
  test('UID:GID:MODE is read as sscanf("%d:%d:%o") reads it', () => {
    assert.deepEqual(parseOverride('5:6:100640'), { uid: 5, gid: 6, perms: 0o640 });
    assert.deepEqual(parseOverride('0:0:0755\n'), { uid: 0, gid: 0, perms: 0o755 });
    assert.deepEqual(parseOverride(' 1: 2:4755x'), { uid: 1, gid: 2, perms: 0o4755 });
    assert.equal(parseOverride('-1:9:40755')?.uid, 0xffffffff);
    for (const bad of ['', '1:2', '1:2:9', 'a:b:c', '1 :2:3']) assert.equal(parseOverride(bad), null, bad);
  });

  test('written with decimal ids and the octal mode, type bits included', () => {
    assert.equal(formatOverride({ uid: 7, gid: 8, mode: 0o100640 }), '7:8:100640');
  });
});

describe('xattr_permissions=2 (user.fuseoverlayfs.override_stat)', requires('root'), () => {
  test('the upper root gets its override at mount: its own owner and mode', async () => {
    const f = await fixture({}, 2);
    assert.equal(xattr(f.upper, OVERRIDE_USER), formatOverride({ uid: 0, gid: 0, mode: lstatSync(f.upper).mode }));
  });

  test("or the first lower root's, containers/storage's name included", async () => {
    const f = await fixture({}, 2, { [OVERRIDE_CONTAINERS]: '0:0:555' });
    assert.equal(xattr(f.upper, OVERRIDE_USER), '0:0:555');
    assert.equal(await attrs(f.ov, '/'), '0:0:40555');
  });

  test('new entries record owner and mode in the override; their real mode lets the mounter in', async () => {
    const f = await fixture({}, 2);
    closeSync(await f.ov.create('/f', 0o100640));
    await f.ov.mkdir('/d', 0o700);
    assert.equal(await attrs(f.ov, '/f'), '0:0:100640');
    assert.equal(xattr(join(f.upper, 'f'), OVERRIDE_USER), '0:0:100640');
    assert.equal(real(join(f.upper, 'f')), '0:0:100755');
    assert.equal(await attrs(f.ov, '/d'), '0:0:40700');
    assert.equal(real(join(f.upper, 'd')), '0:0:40755');
  });

  test('chmod and chown change the override, not the inode; -1 keeps an id', async () => {
    const f = await fixture({}, 2);
    closeSync(await f.ov.create('/f', 0o100644));
    await f.ov.chmod('/f', 0o4711);
    await f.ov.chown('/f', 7, 8);
    await f.ov.chown('/f', 0xffffffff, 9);
    assert.equal(await attrs(f.ov, '/f'), '7:9:104711');
    assert.equal(real(join(f.upper, 'f')), '0:0:100755', 'set-id bits stay out of the real mode');
  });

  test("copy-up keeps the lower's owner and mode in the override; the copy belongs to the mounter", async () => {
    const f = await fixture({ 'd/f': { kind: 'file', data: 'x', mode: 0o600, uid: 5, gid: 6 } }, 2);
    lchownSync(join(f.lower, 'd'), 3, 4);
    const fd = await f.ov.open('/d/f', O_WRONLY);
    await f.ov.release(fd);
    assert.equal(await attrs(f.ov, '/d/f'), '5:6:100600');
    assert.equal(real(join(f.upper, 'd/f')), '0:0:100755');
    assert.equal(await attrs(f.ov, '/d'), '3:4:40755');
    assert.equal(real(join(f.upper, 'd')), '0:0:40755');
  });

  test('a fifo and a symlink, which cannot carry user.* xattrs, keep real owner and mode', async () => {
    const f = await fixture({}, 2);
    await f.ov.mknod('/p', S_IFIFO | 0o640, 0);
    await f.ov.symlink('target', '/l');
    await f.ov.chown('/l', 7, 8);
    assert.equal(real(join(f.upper, 'p')), '0:0:10640');
    assert.equal(await attrs(f.ov, '/p'), '0:0:10640');
    assert.equal((await attrs(f.ov, '/l')).split(':').slice(0, 2).join(':'), '7:8');
  });

  test('the override xattr is not shown, nor settable, through the mount', async () => {
    const f = await fixture({}, 2);
    closeSync(await f.ov.create('/f', 0o100644));
    assert.deepEqual(await f.ov.listxattr('/f'), []);
    assert.equal(await errno(f.ov.getxattr('/f', OVERRIDE_USER)), Errno.ENODATA);
    assert.equal(await errno(f.ov.setxattr('/f', OVERRIDE_USER, Buffer.from('0:0:777'), 0)), Errno.EPERM);
  });

  test('a remount shows the same, with or without the option (the upper root announces its overrides)', async () => {
    const f = await fixture({}, 2);
    closeSync(await f.ov.create('/f', 0o100640));
    await f.ov.chown('/f', 7, 8);
    f.ov.close();
    for (const x of [2, 0] as const) {
      const again = await f.reopen(x);
      assert.equal(await attrs(again, '/f'), '7:8:100640', `xattr_permissions=${x}`);
      again.close();
    }
  });
});

describe('xattr_permissions=1 (security.fuseoverlayfs.override_stat)', requires('root'), () => {
  test('recorded in the privileged xattr, special files included', async () => {
    const f = await fixture({}, 1);
    closeSync(await f.ov.create('/f', 0o100640));
    await f.ov.mknod('/p', S_IFIFO | 0o600, 0);
    await f.ov.chown('/p', 7, 8);
    assert.equal(xattr(join(f.upper, 'f'), OVERRIDE_PRIVILEGED), '0:0:100640');
    assert.equal(await attrs(f.ov, '/p'), '7:8:10600');
    assert.equal(real(join(f.upper, 'p')), '0:0:10755');
  });
});

describe('lower layers with overrides (containers/storage)', requires('root'), () => {
  const tree: Tree = {
    'sbin/su': { kind: 'file', mode: 0o644, uid: 1000, gid: 1000, xattrs: { [OVERRIDE_CONTAINERS]: '0:0:4755' } },
    'plain': { kind: 'file', mode: 0o640, uid: 1000, gid: 1000 },
  };

  test('entries show their override, entries without one their own attributes', async () => {
    const f = await fixture(tree, 0, { [OVERRIDE_CONTAINERS]: '0:0:755' });
    assert.equal(await attrs(f.ov, '/sbin/su'), '0:0:104755');
    assert.equal(await attrs(f.ov, '/plain'), '1000:1000:100640');
  });

  test('without xattr_permissions a copy-up makes the shown owner and mode real', async () => {
    const f = await fixture(tree, 0, { [OVERRIDE_CONTAINERS]: '0:0:755' });
    const fd = await f.ov.open('/sbin/su', O_WRONLY);
    await f.ov.release(fd);
    assert.equal(real(join(f.upper, 'sbin/su')), '0:0:104755');
    assert.equal(await attrs(f.ov, '/sbin/su'), '0:0:104755');
  });

  test('an unreadable override is an error (EINVAL), as in fuse-overlayfs', async () => {
    const f = await fixture({ bad: { kind: 'file', xattrs: { [OVERRIDE_CONTAINERS]: 'garbage' } } }, 0, { [OVERRIDE_CONTAINERS]: '0:0:755' });
    assert.equal(await errno(f.ov.getattr('/bad')), Errno.EINVAL);
  });
});
