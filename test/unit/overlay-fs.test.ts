/**
 * src/server/overlay-fs.ts on plain directories, called as the session would call it: which
 * lookups readdirplus counts, and which nodes the kernel is told to drop after a copy-up.
 */
import assert from 'node:assert/strict';
import { constants as fsc } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import type { Connection, DirectoryPlusSink, Entry, Notifier, Request } from '../../src/fuse/types';
import { Overlay } from '../../src/overlay/overlay';
import { cachePolicy } from '../../src/server/cache-policy';
import { OverlayFs } from '../../src/server/overlay-fs';
import { buildLayer, removeDir, tempDir, type Tree } from '../helpers/layers';

const dirs: string[] = [];
after(() => dirs.forEach(removeDir));

const REQ: Request = { opcode: 0, unique: 2, nodeId: 1, uid: 0, gid: 0, pid: 1, interrupted: false };
const CONNECTION: Connection = { major: 7, minor: 38, offered: 0n, flags: 0n, maxWrite: 1 << 20, maxReadahead: 1 << 17, maxPages: 256 };

/** An OverlayFs over one lower built from `tree`, with an upper, that records the notifications it sends. */
async function served(tree: Tree): Promise<{ fs: OverlayFs; overlay: Overlay; told: number[]; dropped: number[] }> {
  const dir = tempDir('ofs');
  dirs.push(dir);
  buildLayer(join(dir, 'lower'), tree);
  buildLayer(join(dir, 'upper'), {});
  buildLayer(join(dir, 'work'), {});
  const overlay = await Overlay.open({ lowers: [join(dir, 'lower')], upper: join(dir, 'upper'), work: join(dir, 'work') });
  const told: number[] = [];
  const dropped: number[] = [];
  const notifier: Notifier = {
    invalInode: (node, offset = -1) => {
      told.push(node);
      if (offset >= 0) dropped.push(node);
      return 0;
    },
  };
  const fs = new OverlayFs(overlay, { cache: cachePolicy() });
  fs.init(CONNECTION, notifier, null);
  return { fs, overlay, told, dropped };
}

/** A sink that takes `room` entries, then refuses. */
function sink(room: number): DirectoryPlusSink & { taken: { name: string; entry: Entry | null }[] } {
  const taken: { name: string; entry: Entry | null }[] = [];
  return {
    taken,
    add(name, entry) {
      if (taken.length === room) return false;
      taken.push({ name: name.toString(), entry });
      return true;
    },
  };
}

describe('readdirplus', () => {
  test('an entry taken counts one lookup of its node; one the sink refused counts none', async () => {
    const { fs, overlay } = await served({ a: { kind: 'file' }, b: { kind: 'file' }, c: { kind: 'file' } });
    try {
      const fh = fs.opendir(REQ, 1).fh;
      const first = sink(3);
      fs.readdirplus(REQ, 1, fh, 0, first);
      assert.deepEqual(first.taken.map((t) => [t.name, t.entry === null]), [['.', true], ['..', true], ['a', false]]);
      const a = first.taken[2].entry!;
      assert.equal(fs.nodes.get(a.nodeId).lookups, 1);
      // b was answered, refused, and given back: the kernel holds the root and a only.
      assert.equal(fs.nodes.size, 2);
      const rest = sink(10);
      fs.readdirplus(REQ, 1, fh, 3, rest);
      assert.deepEqual(rest.taken.map((t) => t.name), ['b', 'c']);
      assert.equal(fs.nodes.size, 4);
      fs.releasedir(REQ, 1, fh);
    } finally {
      overlay.close();
    }
  });

  test('an entry the kernel holds goes as a name alone, its lookups unchanged', async () => {
    const { fs, overlay } = await served({ a: { kind: 'file' }, b: { kind: 'file' } });
    try {
      const a = fs.lookup(REQ, 1, Buffer.from('a')).nodeId;
      const fh = fs.opendir(REQ, 1).fh;
      const all = sink(10);
      fs.readdirplus(REQ, 1, fh, 0, all);
      assert.deepEqual(all.taken.map((t) => [t.name, t.entry?.nodeId ?? null]), [['.', null], ['..', null], ['a', null], ['b', all.taken[3].entry!.nodeId]]);
      assert.notEqual(all.taken[3].entry!.nodeId, a);
      assert.equal(fs.nodes.get(a).lookups, 1);
      fs.releasedir(REQ, 1, fh);
    } finally {
      overlay.close();
    }
  });
});

describe('after a copy-up the kernel drops what it keeps', () => {
  const tree: Tree = { 'd/e/f': { kind: 'file', data: 'x' }, 'd/g': { kind: 'file', data: 'y' } };

  test('of the copied nodes and their parents that it holds, and only those', async () => {
    const { fs, overlay, told, dropped } = await served(tree);
    try {
      const d = fs.lookup(REQ, 1, Buffer.from('d')).nodeId;
      const e = fs.lookup(REQ, d, Buffer.from('e')).nodeId;
      const f = fs.lookup(REQ, e, Buffer.from('f')).nodeId;
      const g = fs.lookup(REQ, d, Buffer.from('g')).nodeId;
      const opened = await fs.open(REQ, f, fsc.O_WRONLY);
      fs.release(REQ, f, opened.fh);
      // d (and the root, its parent), e (and d), f (and e); never g, which stays below.
      assert.deepEqual([...new Set(told)].sort(), [1, d, e, f].sort());
      assert.ok(!told.includes(g));
      // Directories' cached listings too (an entry's number may change), files' data never.
      assert.deepEqual([...new Set(dropped)].sort(), [1, d, e].sort());
    } finally {
      overlay.close();
    }
  });

  test('a node the kernel let go is not named', async () => {
    const { fs, overlay, told } = await served(tree);
    try {
      const d = fs.lookup(REQ, 1, Buffer.from('d')).nodeId;
      const g = fs.lookup(REQ, d, Buffer.from('g')).nodeId;
      fs.forget(d, 1);
      const opened = await fs.open(REQ, g, fsc.O_RDWR);
      fs.release(REQ, g, opened.fh);
      assert.deepEqual([...new Set(told)].sort(), [1, g].sort());
    } finally {
      overlay.close();
    }
  });
});
