/**
 * The mounted view against kernel overlayfs over the same layers: same paths, types, modes,
 * owners, sizes, nlink, mtimes (to the nanosecond), symlink targets, contents, visible
 * xattrs and hard-link groups.
 */
import assert from 'node:assert/strict';
import { appendFileSync, chmodSync, mkdirSync, renameSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { lsetxattr, lutimens } from '../../src/sys/libc';
import { requires } from '../helpers/env';
import { kernelFormatLayers } from '../helpers/fixtures';
import { buildLayer, removeDir, tempDir } from '../helpers/layers';
import { mountKernel, mountTs, type Mounted } from '../helpers/mounts';
import { snapshot, type Snapshot } from '../helpers/snapshot';

function assertSameView(ours: Snapshot, kernel: Snapshot): void {
  assert.deepEqual(Object.keys(ours.entries).sort(), Object.keys(kernel.entries).sort(), 'same paths');
  for (const [path, k] of Object.entries(kernel.entries)) {
    assert.deepEqual(ours.entries[path], k, `same attributes and content for ${path}`);
  }
  assert.deepEqual(ours.linkGroups, kernel.linkGroups, 'hard links share st_ino');
  assert.equal(ours.distinctInodes, kernel.distinctInodes, 'different files have different st_ino');
}

for (const withUpper of [false, true]) {
  describe(`mounted view ${withUpper ? 'with an empty upper' : 'read-only'} matches kernel overlayfs`, requires('root', 'fuse', 'kernel-overlay'), () => {
    let dir: string;
    let lowers: string[];
    const mounts: Mounted[] = [];
    let ours: Snapshot;
    let kernel: Snapshot;
    let mnts: { kernel: string; ts: string };

    before(async () => {
      dir = tempDir('kcmp');
      lowers = kernelFormatLayers().map((tree, i) => {
        const root = join(dir, `lower${i}`);
        buildLayer(root, tree);
        return root;
      });
      const side = (name: string) => {
        const d = { upper: join(dir, `${name}-upper`), work: join(dir, `${name}-work`), mnt: join(dir, `${name}-mnt`) };
        for (const p of Object.values(d)) mkdirSync(p);
        // Both uppers get the same times: the merged root shows the upper root's mtime.
        lutimens(d.upper, { sec: 1600000000, nsec: 0 }, { sec: 1600000000, nsec: 5e8 });
        return d;
      };
      const k = side('kernel');
      const t = side('ts');
      mounts.push(await mountKernel(withUpper ? { lowers, ...k } : { lowers }, k.mnt));
      mounts.push(await mountTs(withUpper ? { lowers, ...t } : { lowers }, t.mnt));
      mnts = { kernel: k.mnt, ts: t.mnt };
      kernel = snapshot(k.mnt);
      ours = snapshot(t.mnt);
    });

    after(async () => {
      for (const m of mounts.reverse()) await m.unmount();
      if (dir) removeDir(dir);
    });

    test('same paths and attributes as the kernel', () => {
      assertSameView(ours, kernel);
    });

    if (!withUpper) {
      test('every change fails with EROFS, as on the kernel mount', () => {
        const changes: Record<string, (m: string) => void> = {
          create: (m) => writeFileSync(`${m}/new-file`, 'x'),
          append: (m) => appendFileSync(`${m}/merged/both`, 'x'),
          mkdir: (m) => mkdirSync(`${m}/new-dir`),
          unlink: (m) => unlinkSync(`${m}/merged/from-bottom`),
          chmod: (m) => chmodSync(`${m}/merged/both`, 0o777),
          rename: (m) => renameSync(`${m}/merged/both`, `${m}/merged/moved`),
          symlink: (m) => symlinkSync('x', `${m}/new-link`),
          setxattr: (m) => lsetxattr(`${m}/merged/both`, 'user.x', Buffer.from('1')),
        };
        for (const [name, change] of Object.entries(changes)) {
          const outcome = (m: string) => { try { change(m); return 'ok'; } catch (e) { return (e as { code: string }).code; } };
          assert.equal(outcome(mnts.ts), outcome(mnts.kernel), name);
          assert.equal(outcome(mnts.ts), 'EROFS', name);
        }
      });
    }

    test('the fixture exercises every rule (sanity of the oracle)', () => {
      const paths = Object.keys(kernel.entries);
      assert.ok(paths.includes('file-over-dir') && !paths.includes('file-over-dir/below'));
      assert.ok(!paths.includes('gone-file') && !paths.includes('gone-dir'));
      assert.deepEqual(paths.filter((p) => p.startsWith('opaque/')), ['opaque/mine']);
      assert.ok(paths.includes('deep/a/b/c/d/e/f/g/h/leaf') && paths.includes('deep/a/b/c/other'));
      assert.deepEqual(kernel.linkGroups, [['hard/one', 'hard/sub/three', 'hard/two']]);
      assert.equal(kernel.entries['xattrs/f'].xattrs['user.color'], Buffer.from('blue').toString('base64'));
    });
  });
}
