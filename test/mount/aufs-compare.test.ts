/**
 * AUFS/OCI-style whiteouts (`.wh.NAME`, `.wh..wh..opq`), which kernel overlayfs does not read,
 * compared with fuse-overlayfs over the same layers.
 */
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { requires } from '../helpers/env';
import { buildLayer, removeDir, tempDir, type Tree } from '../helpers/layers';
import { mountFuseOverlayfs, mountTs, type Mounted } from '../helpers/mounts';
import { snapshot, type Snapshot } from '../helpers/snapshot';

const layers: Tree[] = [
  {
    '.wh.gone-file': { kind: 'file', mode: 0 },
    '.wh.gone-dir': { kind: 'file', mode: 0 },
    'opaque/.wh..wh..opq': { kind: 'file', mode: 0 },
    'opaque/mine': { kind: 'file', data: 'mine' },
    'merged/.wh.b': { kind: 'file', mode: 0 },
    'merged/top': { kind: 'file', data: 'top' },
    'kept/.wh.x': { kind: 'file', mode: 0 },
    'kept/x': { kind: 'file', data: 'same layer: still visible' },
  },
  {
    'gone-file': { kind: 'file', data: 'hidden' },
    'gone-dir/inner': { kind: 'file', data: 'hidden' },
    'opaque/hidden': { kind: 'file', data: 'hidden' },
    'merged/a': { kind: 'file', data: 'a' },
    'merged/b': { kind: 'file', data: 'hidden' },
    'kept/x': { kind: 'file', data: 'hidden below' },
    'kept/y': { kind: 'file', data: 'y' },
  },
];

/**
 * Where we knowingly differ from fuse-overlayfs:
 *  - directory link counts: fuse-overlayfs counts subdirectories, we report 1 for merged
 *    directories as the kernel does;
 *  - `kept/`: a `.wh.x` beside `x` in the same layer. The OCI image spec says a whiteout
 *    applies only to lower layers, so `x` of that layer stays visible; fuse-overlayfs hides it.
 */
function comparable(s: Snapshot): Snapshot {
  const entries = Object.fromEntries(
    Object.entries(s.entries)
      .filter(([p]) => !p.startsWith('kept/'))
      .map(([p, e]) => [p, e.type === 'dir' ? { ...e, nlink: 0 } : e]),
  );
  return { ...s, entries };
}

describe('AUFS-style whiteouts match fuse-overlayfs', requires('root', 'fuse', 'fuse-overlayfs'), () => {
  let dir: string;
  const mounts: Mounted[] = [];
  let ours: Snapshot;
  let theirs: Snapshot;
  let oursFull: Snapshot;

  before(async () => {
    dir = tempDir('aufs');
    const lowers = layers.map((tree, i) => {
      buildLayer(join(dir, `l${i}`), tree);
      return join(dir, `l${i}`);
    });
    for (const m of ['ts', 'fo']) mkdirSync(join(dir, m));
    mounts.push(await mountFuseOverlayfs({ lowers }, join(dir, 'fo')));
    mounts.push(await mountTs({ lowers }, join(dir, 'ts')));
    theirs = comparable(snapshot(join(dir, 'fo'), { xattrs: false }));
    ours = comparable(snapshot(join(dir, 'ts'), { xattrs: false }));
    oursFull = snapshot(join(dir, 'ts'), { xattrs: false });
  });

  after(async () => {
    for (const m of mounts.reverse()) await m.unmount();
    if (dir) removeDir(dir);
  });

  test('same view', () => {
    assert.deepEqual(ours.entries, theirs.entries);
    assert.deepEqual(ours.linkGroups, theirs.linkGroups);
  });

  test('the whiteouts took effect and are not shown', () => {
    const paths = Object.keys(oursFull.entries).sort();
    assert.deepEqual(paths, ['.', 'kept', 'kept/x', 'kept/y', 'merged', 'merged/a', 'merged/top', 'opaque', 'opaque/mine']);
  });

  test('a whiteout hides only the layers below its own (OCI image spec)', () => {
    assert.equal(oursFull.entries['kept/x'].size, 'same layer: still visible'.length);
  });
});
