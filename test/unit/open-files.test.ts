/** Which opens go by passthrough, and the lifetime of each node's backing id (src/server/open-files.ts). */
import assert from 'node:assert/strict';
import { constants } from 'node:os';
import { describe, test } from 'node:test';
import { Fopen, Passthrough } from '../../src/fuse/protocol';
import type { BackingFiles } from '../../src/fuse/types';
import { OpenFiles } from '../../src/server/open-files';

function backing(answer: (fd: number) => number = (fd) => fd + 100): BackingFiles & { log: string[] } {
  const log: string[] = [];
  return {
    log,
    open: (fd) => { log.push(`open ${fd}`); return answer(fd); },
    close: (id) => { log.push(`close ${id}`); return 0; },
  };
}

describe('open files', () => {
  test('opens of an upper file share one backing id, dropped with the last release', () => {
    const b = backing();
    const files = new OpenFiles();
    files.usePassthrough(b);
    const node = {};
    assert.deepEqual(files.opened(node, 3, true), { fh: 3, flags: Passthrough.FOPEN, backingId: 103 });
    assert.deepEqual(files.opened(node, 4, true), { fh: 4, flags: Passthrough.FOPEN, backingId: 103 });
    files.released(3);
    files.released(4);
    assert.deepEqual(b.log, ['open 3', 'close 103']);
    assert.equal(files.opened(node, 5, true).backingId, 105, 'a later open registers anew');
  });

  test('a node open on a lower layer stays cached until its last cached open is released', () => {
    const b = backing();
    const files = new OpenFiles();
    files.usePassthrough(b);
    const node = {};
    assert.deepEqual(files.opened(node, 3, false), { fh: 3, flags: Fopen.KEEP_CACHE });
    // Copied up by this open: still cached, as the kernel holds a cached open of the inode.
    assert.deepEqual(files.opened(node, 4, true), { fh: 4, flags: Fopen.KEEP_CACHE });
    files.released(3);
    files.released(4);
    assert.equal(files.opened(node, 5, true).flags, Passthrough.FOPEN);
    assert.deepEqual(b.log, ['open 5']);
  });

  test('without backing files, or after EPERM, every open is cached; after ELOOP only that one', () => {
    const none = new OpenFiles();
    assert.equal(none.opened({}, 3, true).flags, Fopen.KEEP_CACHE);

    const refused = backing(() => -constants.errno.EPERM);
    const files = new OpenFiles();
    files.usePassthrough(refused);
    assert.equal(files.opened({}, 3, true).flags, Fopen.KEEP_CACHE);
    assert.equal(files.opened({}, 4, true).flags, Fopen.KEEP_CACHE);
    assert.deepEqual(refused.log, ['open 3'], 'EPERM is not asked again');

    let fail = true;
    const once = backing((fd) => (fail ? -constants.errno.ELOOP : fd + 100));
    const other = new OpenFiles();
    other.usePassthrough(once);
    assert.equal(other.opened({}, 3, true).flags, Fopen.KEEP_CACHE);
    fail = false;
    assert.equal(other.opened({}, 4, true).flags, Passthrough.FOPEN);
  });

  test('a cached open after passthrough ones drops the kernel\'s cached data', () => {
    let fail = false;
    const b = backing((fd) => (fail ? -constants.errno.EMFILE : fd + 100));
    const files = new OpenFiles();
    files.usePassthrough(b);
    const node = {};
    files.opened(node, 3, true);
    files.released(3);
    fail = true;
    assert.equal(files.opened(node, 4, true).flags, 0, 'no KEEP_CACHE: passthrough writes bypassed the cache');
  });
});
