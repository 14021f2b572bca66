/**
 * fuse-overlayfs's ownership options (uidmapping/gidmapping as rootful podman passes them,
 * squash_to_*, static_nlink) compared with fuse-overlayfs itself over the same layers.
 */
import assert from 'node:assert/strict';
import { chownSync, lstatSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { requires } from '../helpers/env';
import { buildLayer, removeDir, tempDir } from '../helpers/layers';
import { mountFuseOverlayfs, mountTs, type Mounted } from '../helpers/mounts';

const dirs: string[] = [];
const mounts: Mounted[] = [];
after(async () => {
  for (const m of mounts) await m.unmount();
  dirs.forEach(removeDir);
});

interface Side { mnt: string; upper: string }

/** Mounts both implementations with the same extra options over one lower layer. */
async function both(extra: string): Promise<{ ts: Side; fo: Side }> {
  const d = tempDir('opts');
  dirs.push(d);
  buildLayer(join(d, 'lower'), {
    'root-owned': { kind: 'file', data: 'r' },
    'user5': { kind: 'file', data: 'u', uid: 5, gid: 5 },
    'outside-range': { kind: 'file', data: 'o', uid: 70000, gid: 70000 },
    'dir/sub1/x': { kind: 'file' },
    'dir/sub2/y': { kind: 'file' },
  });
  const side = async (name: string, mount: typeof mountFuseOverlayfs) => {
    const s = { mnt: join(d, `${name}-mnt`), upper: join(d, `${name}-upper`), work: join(d, `${name}-work`) };
    for (const p of Object.values(s)) mkdirSync(p);
    mounts.push(await mount({ lowers: [join(d, 'lower')], upper: s.upper, work: s.work }, s.mnt, extra ? extra.split(',') : []));
    return s;
  };
  return { fo: await side('fo', mountFuseOverlayfs), ts: await side('ts', mountTs) };
}

function ids(mnt: string, names: string[]): string[] {
  return names.map((n) => {
    const st = lstatSync(join(mnt, n));
    return `${n} ${st.uid}:${st.gid}`;
  });
}

describe('ownership options match fuse-overlayfs', requires('root', 'fuse', 'fuse-overlayfs'), () => {
  test('uidmapping/gidmapping as rootful podman passes them: shown mapped, chown stored back', async () => {
    const { ts, fo } = await both('uidmapping=:0:100000:65536,gidmapping=:0:100000:65536');
    const names = ['.', 'root-owned', 'user5', 'outside-range'];
    assert.deepEqual(ids(ts.mnt, names), ids(fo.mnt, names));
    for (const s of [ts, fo]) chownSync(join(s.mnt, 'root-owned'), 100007, 100008);
    assert.deepEqual(ids(ts.mnt, ['root-owned']), ids(fo.mnt, ['root-owned']));
    const stored = (s: Side) => `${lstatSync(join(s.upper, 'root-owned')).uid}:${lstatSync(join(s.upper, 'root-owned')).gid}`;
    assert.equal(stored(ts), stored(fo));
    assert.equal(stored(ts), '7:8');
  });

  test('squash_to_root and squash_to_uid/gid', async () => {
    for (const opt of ['squash_to_root', 'squash_to_uid=42,squash_to_gid=43', 'squash_to_root,squash_to_uid=9']) {
      const { ts, fo } = await both(opt);
      const names = ['root-owned', 'user5'];
      assert.deepEqual(ids(ts.mnt, names), ids(fo.mnt, names), opt);
    }
  });

  test('static_nlink: directories report 1', async () => {
    const { ts, fo } = await both('static_nlink');
    for (const s of [ts, fo]) assert.equal(lstatSync(join(s.mnt, 'dir')).nlink, 1);
  });
});
