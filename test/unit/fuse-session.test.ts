/**
 * src/fuse/session.ts driven over a SOCK_SEQPACKET socket pair, the test playing the kernel
 * (test/helpers/fuse-kernel.ts): INIT, the decoding of every request it dispatches, its
 * answers, errors, asynchronous methods, interrupts, directory listings and the end of the
 * connection. Every test also checks, through the helper, that each request wanting an
 * answer got exactly one, with its unique and the length its header says.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { readdirSync, statSync } from 'node:fs';
import { constants } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, test } from 'node:test';
import { OvlError } from '../../src/errors';
import { Fattr, FSYNC_FDATASYNC, GETATTR_FH, Init, Notify, Op, Passthrough, Size } from '../../src/fuse/protocol';
import type { SessionOptions } from '../../src/fuse/session';
import type { Attr, Connection, DirectoryPlusSink, DirectorySink, Entry, FileSystem, Notifier, Request, SetAttr } from '../../src/fuse/types';
import { direntPlusSize, direntSize } from '../../src/fuse/wire';
import { readRaw } from '../../src/sys/device';
import {
  bytes, cstr, DEFAULT_OPTIONS, FakeKernel, initBody, KERNEL_FLAGS, u32, u64, withSession, type InitFields, type Reply,
} from '../helpers/fuse-kernel';

const E = constants.errno;
const PAGE = 4096;

// No test leaves a descriptor open: each closes both ends of its pair, whatever happened.
const fdsBefore = readdirSync('/proc/self/fd').length;
after(() => assert.equal(readdirSync('/proc/self/fd').length, fdsBefore, 'descriptors left open'));

function attrOf(ino: number, mode = 0o100644): Attr {
  return {
    ino, size: ino * 10, blocks: 8, atime: 1_700_000_000, atimeNsec: 1, mtime: 1_700_000_001, mtimeNsec: 2,
    ctime: 1_700_000_002, ctimeNsec: 3, mode, nlink: 1, uid: 1000, gid: 1000, rdev: 0, blksize: 4096,
  };
}

function entryOf(nodeId: number, mode?: number): Entry {
  return { nodeId, generation: 7, entryTimeout: 1.5, attrTimeout: 2, attr: attrOf(nodeId, mode) };
}

function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void } {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

const errnoError = (errno: number): Error => new OvlError(errno);

// The kernel's request bodies, field by field (the layouts are checked against the header in fuse-wire.test.ts).
const Body = {
  getattr: (flags: number, fh: number) => bytes(u32(flags), u32(0), u64(fh)),
  mknod: (mode: number, rdev: number, umask: number, name: string) => bytes(u32(mode), u32(rdev), u32(umask), u32(0), cstr(name)),
  mkdir: (mode: number, umask: number, name: string) => bytes(u32(mode), u32(umask), cstr(name)),
  read: (fh: number, offset: number, size: number) => bytes(u64(fh), u64(offset), u32(size), u32(0), u64(0), u32(0), u32(0)),
  write: (fh: number, offset: number, data: Buffer, writeFlags = 0, flags = 0) =>
    bytes(u64(fh), u64(offset), u32(data.length), u32(writeFlags), u64(0), u32(flags), u32(0), data),
  release: (fh: number, flags: number, releaseFlags: number) => bytes(u64(fh), u32(flags), u32(releaseFlags), u64(0)),
  fsync: (fh: number, flags: number) => bytes(u64(fh), u32(flags), u32(0)),
  open: (flags: number) => bytes(u32(flags), u32(0)),
  create: (flags: number, mode: number, umask: number, name: string) => bytes(u32(flags), u32(mode), u32(umask), u32(0), cstr(name)),
  getxattr: (size: number, name?: string) => bytes(u32(size), u32(0), name === undefined ? Buffer.alloc(0) : cstr(name)),
  interrupt: (unique: number) => u64(unique),
  forget: (count: number) => u64(count),
};

/** A fuse_entry_out answer's fields. */
function entryReply(r: Reply) {
  assert.equal(r.error, 0);
  const b = r.body;
  return {
    nodeId: Number(b.readBigUInt64LE(0)), generation: Number(b.readBigUInt64LE(8)),
    entryValid: Number(b.readBigUInt64LE(16)), attrValid: Number(b.readBigUInt64LE(24)),
    entryValidNsec: b.readUInt32LE(32), attrValidNsec: b.readUInt32LE(36),
    ino: Number(b.readBigUInt64LE(40)), mode: b.readUInt32LE(40 + 60),
  };
}

/** A fuse_attr_out answer's fields. */
function attrReply(r: Reply) {
  assert.equal(r.error, 0);
  assert.equal(r.body.length, Size.ATTR_OUT);
  return { valid: Number(r.body.readBigUInt64LE(0)), validNsec: r.body.readUInt32LE(8), ino: Number(r.body.readBigUInt64LE(16)) };
}

interface Dirent { ino: number; off: number; type: number; name: string; nodeId?: number }

/** The records of a readdir (or readdirplus) answer. */
function dirents(body: Buffer, plus = false): Dirent[] {
  const out: Dirent[] = [];
  for (let off = 0; off < body.length;) {
    const nodeId = plus ? Number(body.readBigUInt64LE(off)) : undefined;
    const d = plus ? off + Size.ENTRY_OUT : off;
    const namelen = body.readUInt32LE(d + 16);
    const record = plus ? direntPlusSize(namelen) : direntSize(namelen);
    out.push({
      ino: Number(body.readBigUInt64LE(d)), off: Number(body.readBigUInt64LE(d + 8)), type: body.readUInt32LE(d + 20),
      name: body.subarray(d + 24, d + 24 + namelen).toString(), ...(plus ? { nodeId } : {}),
    });
    off += record;
  }
  return out;
}

/** A session that is INIT-ed with `init` and has the hold outstanding; closes it when `body` is done. */
async function negotiate(init: InitFields, options: Partial<SessionOptions>, body: (k: FakeKernel, answer: Reply, conns: Connection[]) => Promise<void>): Promise<void> {
  const conns: Connection[] = [];
  const k = new FakeKernel({ init: (c) => void conns.push(c) }, { ...DEFAULT_OPTIONS, ...options });
  try {
    const u = k.send(Op.INIT, initBody(init));
    k.hold();
    k.start();
    await body(k, await k.reply(u), conns);
  } finally {
    await k.close();
  }
}

function initReply(r: Reply) {
  assert.equal(r.error, 0);
  assert.equal(r.body.length, Size.INIT_OUT);
  const b = r.body;
  return {
    major: b.readUInt32LE(0), minor: b.readUInt32LE(4), maxReadahead: b.readUInt32LE(8),
    flags: BigInt(b.readUInt32LE(12)) | (BigInt(b.readUInt32LE(32)) << 32n),
    maxBackground: b.readUInt16LE(16), congestionThreshold: b.readUInt16LE(18), maxWrite: b.readUInt32LE(20),
    timeGran: b.readUInt32LE(24), maxPages: b.readUInt16LE(28), rest: b.subarray(36).every((x) => x === 0) && b.readUInt16LE(30) === 0,
  };
}

const bit = (v: number) => BigInt(v);

describe('INIT', () => {
  test('the minor version is the lower of the kernel\'s and 40; the answer and the Connection', async () => {
    for (const [kernelMinor, minor] of [[42, 40], [40, 40], [38, 38], [31, 31]]) {
      await negotiate({ minor: kernelMinor, maxReadahead: 65536 }, {}, async (k, answer, conns) => {
        const o = initReply(answer);
        assert.deepEqual(
          { major: o.major, minor: o.minor, maxReadahead: o.maxReadahead, timeGran: o.timeGran, maxBackground: o.maxBackground, congestionThreshold: o.congestionThreshold, rest: o.rest },
          { major: 7, minor, maxReadahead: 65536, timeGran: 1, maxBackground: 12, congestionThreshold: 9, rest: true },
        );
        assert.equal(conns.length, 1, 'init is called once');
        assert.deepEqual(conns[0], { major: 7, minor, offered: KERNEL_FLAGS, flags: o.flags, maxWrite: 65536, maxReadahead: 65536, maxPages: 16 });
        assert.deepEqual(k.session.negotiated, conns[0]);
      });
    }
  });

  test('passthrough, asked for and offered: max_stack_depth 1 in the answer, and init gets the backing files', async () => {
    for (const offered of [true, false]) {
      const backings: unknown[] = [];
      const k = new FakeKernel({ init: (_c, _n, backing) => void backings.push(backing) }, { ...DEFAULT_OPTIONS, want: DEFAULT_OPTIONS.want | Passthrough.INIT });
      try {
        const u = k.send(Op.INIT, initBody({ minor: 40, flags: KERNEL_FLAGS | (offered ? Passthrough.INIT : 0n) }));
        k.start();
        const answer = await k.reply(u);
        assert.equal(answer.error, 0);
        assert.equal(answer.body.readUInt32LE(36), offered ? 1 : 0, 'max_stack_depth');
        assert.equal((BigInt(answer.body.readUInt32LE(32)) << 32n & Passthrough.INIT) !== 0n, offered);
        assert.equal(backings.length, 1);
        assert.equal(backings[0] !== null, offered);
      } finally {
        await k.close();
      }
    }
  });

  test('a kernel older than 7.31 gets EPROTO, and run() rejects; init and destroy are not called', async () => {
    for (const [major, minor] of [[7, 30], [6, 40]]) {
      const called: string[] = [];
      const k = new FakeKernel({ init: () => void called.push('init'), destroy: () => void called.push('destroy') }, DEFAULT_OPTIONS, false);
      try {
        const u = k.send(Op.INIT, initBody({ major, minor }));
        k.start();
        assert.equal((await k.reply(u)).error, -E.EPROTO);
        await k.waitEnded();
        assert.ok(k.outcome instanceof Error, 'run() rejects');
        assert.match((k.outcome as Error).message, new RegExp(`${major}\\.${minor}`));
        assert.ok(k.session.isEnded);
        assert.deepEqual(called, []);
      } finally {
        await k.close();
      }
    }
  });

  test('an init that throws answers INIT with EIO and run() rejects; destroy is not called', async () => {
    const called: string[] = [];
    const k = new FakeKernel({ init: () => { throw new Error('cannot start'); }, destroy: () => void called.push('destroy') }, DEFAULT_OPTIONS, false);
    try {
      const u = k.send(Op.INIT, initBody({}));
      k.start();
      assert.equal((await k.reply(u)).error, -E.EIO);
      await k.waitEnded();
      assert.ok(k.outcome instanceof Error && /cannot start/.test(k.outcome.message), 'run() rejects with the reason');
      assert.deepEqual(called, []);
    } finally {
      await k.close();
    }
  });

  test('a newer major version gets ours in an 8-byte answer; the kernel then asks again', async () => {
    const conns: Connection[] = [];
    const k = new FakeKernel({ init: (c) => void conns.push(c), lookup: () => entryOf(2) }, DEFAULT_OPTIONS);
    try {
      const first = k.send(Op.INIT, initBody({ major: 8, minor: 1 }));
      const early = k.send(Op.LOOKUP, cstr('x'));
      const second = k.send(Op.INIT, initBody({ major: 7, minor: 38 }));
      k.hold();
      k.start();
      const a = await k.reply(first);
      assert.equal(a.error, 0);
      assert.equal(a.body.length, 8, 'only major and minor');
      assert.deepEqual([a.body.readUInt32LE(0), a.body.readUInt32LE(4)], [7, 40]);
      assert.equal((await k.reply(early)).error, -E.EIO, 'still no connection after the first');
      assert.equal(initReply(await k.reply(second)).minor, 38);
      assert.equal(conns.length, 1);
      assert.equal(entryReply(await k.call(Op.LOOKUP, cstr('x'))).nodeId, 2);
    } finally {
      await k.close();
    }
  });

  test('flags are those asked for and offered; FUSE_INIT_EXT goes with a flags2 bit', async () => {
    const SECURITY_CTX = 1n << 32n;
    const INODE_DAX = 1n << 33n;
    const want = bit(Init.ASYNC_READ | Init.DO_READDIRPLUS | Init.MAX_PAGES) | SECURITY_CTX | INODE_DAX;
    const offered = bit(Init.ASYNC_READ | Init.MAX_PAGES | Init.POSIX_ACL | Init.INIT_EXT) | SECURITY_CTX;
    await negotiate({ flags: offered }, { want }, async (_k, answer, conns) => {
      const expected = bit(Init.ASYNC_READ | Init.MAX_PAGES | Init.INIT_EXT) | SECURITY_CTX;
      assert.equal(initReply(answer).flags, expected);
      assert.equal(conns[0].flags, expected);
      assert.equal(conns[0].offered, offered);
    });
    // Without FUSE_INIT_EXT the kernel's flags2 is not its word: nothing of it is used.
    await negotiate({ flags: offered & ~bit(Init.INIT_EXT) }, { want }, async (_k, answer) => {
      assert.equal(initReply(answer).flags, bit(Init.ASYNC_READ | Init.MAX_PAGES));
    });
    // No flags2 bit in use: no FUSE_INIT_EXT either, though the kernel offers it.
    await negotiate({ flags: offered }, { want: want & 0xffffffffn }, async (_k, answer) => {
      assert.equal(initReply(answer).flags, bit(Init.ASYNC_READ | Init.MAX_PAGES));
    });
    // A 7.35 kernel sends 16 bytes: there is no flags2 to read.
    await negotiate({ minor: 35, short: true, flags: offered }, { want }, async (_k, answer) => {
      const o = initReply(answer);
      assert.equal(o.minor, 35);
      assert.equal(o.flags & ~bit(Init.INIT_EXT), bit(Init.ASYNC_READ | Init.MAX_PAGES));
    });
  });

  test('max_pages and max_write', async () => {
    const cases: [Partial<SessionOptions>, bigint, { maxWrite: number; maxPages: number }][] = [
      [{ maxWrite: 1 << 20 }, KERNEL_FLAGS, { maxWrite: 1 << 20, maxPages: 256 }],
      [{ maxWrite: 10000 }, KERNEL_FLAGS, { maxWrite: 10000, maxPages: 3 }],
      // Without FUSE_MAX_PAGES the kernel sends at most 32 pages.
      [{ maxWrite: 1 << 20 }, KERNEL_FLAGS & ~bit(Init.MAX_PAGES), { maxWrite: 32 * PAGE, maxPages: 0 }],
      [{ maxWrite: 1 << 20, want: DEFAULT_OPTIONS.want & ~bit(Init.MAX_PAGES) }, KERNEL_FLAGS, { maxWrite: 32 * PAGE, maxPages: 0 }],
    ];
    for (const [options, flags, expected] of cases) {
      await negotiate({ flags }, options, async (_k, answer, conns) => {
        const o = initReply(answer);
        assert.deepEqual({ maxWrite: o.maxWrite, maxPages: o.maxPages }, expected);
        assert.deepEqual({ maxWrite: conns[0].maxWrite, maxPages: conns[0].maxPages }, expected);
        assert.equal((o.flags & bit(Init.MAX_PAGES)) !== 0n, expected.maxPages > 0);
      });
    }
    await negotiate({}, { maxBackground: 20 }, async (_k, answer) => {
      assert.deepEqual([initReply(answer).maxBackground, initReply(answer).congestionThreshold], [20, 15]);
    });
  });

  test('a request before INIT is answered EIO (what wants no answer gets none), and INIT still works', async () => {
    const calls: string[] = [];
    const fs: FileSystem = { lookup: () => (calls.push('lookup'), entryOf(2)), forget: () => void calls.push('forget'), init: () => void calls.push('init') };
    const k = new FakeKernel(fs, DEFAULT_OPTIONS);
    try {
      const early = k.send(Op.LOOKUP, cstr('a'));
      k.send(Op.FORGET, Body.forget(1), { nodeId: 5, noReply: true });
      const init = k.send(Op.INIT, initBody());
      k.hold();
      k.start();
      assert.equal((await k.reply(early)).error, -E.EIO);
      initReply(await k.reply(init));
      assert.equal(entryReply(await k.call(Op.LOOKUP, cstr('a'))).nodeId, 2);
      assert.deepEqual(calls, ['init', 'lookup']);
      await k.settle();
      assert.deepEqual(k.faults, []);
    } finally {
      await k.close();
    }
  });
});

/** A FileSystem whose every method records its call (Buffers as strings, copied at once) and answers `answers[method]`. */
function recorder(answers: Record<string, unknown> = {}): { fs: FileSystem; calls: unknown[][] } {
  const calls: unknown[][] = [];
  const fs = new Proxy({}, {
    get(_t, name) {
      if (typeof name !== 'string' || name === 'init' || name === 'destroy' || name === 'then') return undefined;
      return (...args: unknown[]) => {
        const shown = args.map((a) => (Buffer.isBuffer(a) ? a.toString('latin1') : a));
        // The Request first (but for forget): only what identifies the call.
        calls.push(name === 'forget' ? [name, ...shown] : [name, ...shown.slice(1)]);
        const answer = answers[name];
        return typeof answer === 'function' ? answer(...args) : answer;
      };
    },
  }) as FileSystem;
  return { fs, calls };
}

describe('each request reaches its method with its arguments', () => {
  test('lookup: the Request, and the name as bytes without its NUL', async () => {
    let seen: Request | null = null;
    const names: Buffer[] = [];
    const fs: FileSystem = {
      lookup: (req, parent, name) => {
        seen = { ...req };
        names.push(Buffer.from(name));
        return entryOf(parent + 1, 0o40755);
      },
    };
    await withSession(fs, async (k) => {
      const u = k.send(Op.LOOKUP, cstr('file.txt'), { nodeId: 41, uid: 1001, gid: 1002, pid: 1003 });
      const r = await k.reply(u);
      assert.equal(r.body.length, Size.ENTRY_OUT);
      assert.deepEqual(entryReply(r), { nodeId: 42, generation: 7, entryValid: 1, attrValid: 2, entryValidNsec: 500_000_000, attrValidNsec: 0, ino: 42, mode: 0o40755 });
      assert.deepEqual(seen, { opcode: Op.LOOKUP, unique: u, nodeId: 41, uid: 1001, gid: 1002, pid: 1003, interrupted: false });
      // Names are bytes, not text: not UTF-8 is no matter.
      await k.call(Op.LOOKUP, bytes(Buffer.from([0xff, 0xfe, 0x41]), Buffer.alloc(1)));
      // The bytes before the first NUL; without one, up to the end of the arguments (not into extensions).
      await k.call(Op.LOOKUP, Buffer.from('abc\0junk\0'));
      await k.call(Op.LOOKUP, Buffer.from('tail'), { ext: Buffer.from('EXTENSNEXTENSION') });
      assert.deepEqual(names, [Buffer.from('file.txt'), Buffer.from([0xff, 0xfe, 0x41]), Buffer.from('abc'), Buffer.from('tail')]);
    });
  });

  test('getattr: the fh only with FUSE_GETATTR_FH; the attributes and their timeout answered', async () => {
    const { fs, calls } = recorder({ getattr: (_r: Request, node: number) => ({ attr: attrOf(node), timeout: 0.25 }) });
    await withSession(fs, async (k) => {
      assert.deepEqual(attrReply(await k.call(Op.GETATTR, Body.getattr(GETATTR_FH, 77), { nodeId: 5 })), { valid: 0, validNsec: 250_000_000, ino: 5 });
      attrReply(await k.call(Op.GETATTR, Body.getattr(0, 77), { nodeId: 6 }));
      assert.deepEqual(calls, [['getattr', 5, 77], ['getattr', 6, null]]);
    });
  });

  test('invalInode: a notification (unique 0, code FUSE_NOTIFY_INVAL_INODE) sent while a request is served, before its answer', async () => {
    let notify: Notifier | null = null;
    const sent: number[] = [];
    const fs: FileSystem = {
      init: (_c, n) => { notify = n; },
      getattr: (_r, node) => {
        sent.push(notify!.invalInode(node), notify!.invalInode(node + 1, 4096, 8192));
        return { attr: attrOf(node), timeout: 1 };
      },
    };
    await withSession(fs, async (k) => {
      attrReply(await k.call(Op.GETATTR, Body.getattr(0, 0), { nodeId: 9 }));
      assert.deepEqual(sent, [0, 0]);
      const fields = (b: Buffer) => [Number(b.readBigUInt64LE(0)), Number(b.readBigInt64LE(8)), Number(b.readBigInt64LE(16))];
      assert.deepEqual(k.notifications.map((n) => [n.code, ...fields(n.body)]), [[Notify.INVAL_INODE, 9, -1, 0], [Notify.INVAL_INODE, 10, 4096, 8192]]);
      assert.ok(k.notifications.every((n) => n.body.length === Size.NOTIFY_INVAL_INODE_OUT));
    });
  });

  test('setattr: valid and every field', async () => {
    let got: SetAttr | null = null;
    const fs: FileSystem = { setattr: (_r, node, changes) => ((got = changes), { attr: attrOf(node), timeout: 1 }) };
    await withSession(fs, async (k) => {
      const b = Buffer.alloc(88);
      const valid = Fattr.MODE | Fattr.UID | Fattr.GID | Fattr.SIZE | Fattr.ATIME | Fattr.MTIME | Fattr.FH | Fattr.CTIME;
      b.writeUInt32LE(valid, 0);
      b.writeBigUInt64LE(9n, 8); // fh
      b.writeBigUInt64LE(12345n, 16); // size
      b.writeBigUInt64LE(99n, 24); // lock_owner
      b.writeBigUInt64LE(1000n, 32);
      b.writeBigUInt64LE(2000n, 40);
      b.writeBigUInt64LE(3000n, 48);
      b.writeUInt32LE(11, 56);
      b.writeUInt32LE(22, 60);
      b.writeUInt32LE(33, 64);
      b.writeUInt32LE(0o104755, 68);
      b.writeUInt32LE(0xdead, 72); // unused4
      b.writeUInt32LE(501, 76);
      b.writeUInt32LE(502, 80);
      assert.equal(attrReply(await k.call(Op.SETATTR, b, { nodeId: 8 })).ino, 8);
      assert.deepEqual(got, { valid, fh: 9, size: 12345, atime: 1000, mtime: 2000, ctime: 3000, atimeNsec: 11, mtimeNsec: 22, ctimeNsec: 33, mode: 0o104755, uid: 501, gid: 502 });
    });
  });

  test('readlink: the target as the answer, short or longer than the shared reply buffer', async () => {
    const long = Buffer.alloc(20000, 'x');
    const { fs } = recorder({ readlink: (_r: Request, node: number) => (node === 1 ? Buffer.from('../target') : long) });
    await withSession(fs, async (k) => {
      assert.equal((await k.call(Op.READLINK, undefined, { nodeId: 1 })).body.toString(), '../target');
      assert.deepEqual((await k.call(Op.READLINK, undefined, { nodeId: 2 })).body, long);
    });
  });

  test('symlink, mknod, mkdir: names and modes; extensions after the arguments are not part of them', async () => {
    const { fs, calls } = recorder({ symlink: entryOf(10), mknod: entryOf(11), mkdir: entryOf(12) });
    await withSession(fs, async (k) => {
      // A fuse_secctx_header-like extension, as with FUSE_SECURITY_CTX.
      const ext = bytes(u32(16), u32(1), u32(0), u32(0));
      assert.equal(entryReply(await k.call(Op.SYMLINK, bytes(cstr('link'), cstr('/some/target')), { nodeId: 3, ext })).nodeId, 10);
      assert.equal(entryReply(await k.call(Op.MKNOD, Body.mknod(0o10644, 0x0801, 0o022, 'fifo'), { nodeId: 3, ext })).nodeId, 11);
      assert.equal(entryReply(await k.call(Op.MKDIR, Body.mkdir(0o40777, 0o002, 'dir'), { nodeId: 3, ext })).nodeId, 12);
      assert.deepEqual(calls, [
        ['symlink', 3, 'link', '/some/target'],
        ['mknod', 3, 'fifo', 0o10644, 0x0801, 0o022],
        ['mkdir', 3, 'dir', 0o40777, 0o002],
      ]);
    });
  });

  test('unlink, rmdir: the name, an empty answer', async () => {
    const { fs, calls } = recorder();
    await withSession(fs, async (k) => {
      for (const op of [Op.UNLINK, Op.RMDIR]) {
        const r = await k.call(op, cstr('gone'), { nodeId: 4 });
        assert.deepEqual([r.error, r.body.length], [0, 0]);
      }
      assert.deepEqual(calls, [['unlink', 4, 'gone'], ['rmdir', 4, 'gone']]);
    });
  });

  test('rename has flags 0; rename2 passes its own', async () => {
    const { fs, calls } = recorder();
    await withSession(fs, async (k) => {
      await k.call(Op.RENAME, bytes(u64(9), cstr('from'), cstr('to')), { nodeId: 4 });
      await k.call(Op.RENAME2, bytes(u64(10), u32(1), u32(0), cstr('a'), cstr('b')), { nodeId: 5 });
      await k.call(Op.RENAME2, bytes(u64(11), u32(2), u32(0), cstr('x'), cstr('y')), { nodeId: 6 });
      assert.deepEqual(calls, [['rename', 4, 'from', 9, 'to', 0], ['rename', 5, 'a', 10, 'b', 1], ['rename', 6, 'x', 11, 'y', 2]]);
    });
  });

  test('link: the node linked, the new parent (the header\'s node), the new name', async () => {
    const { fs, calls } = recorder({ link: entryOf(20) });
    await withSession(fs, async (k) => {
      assert.equal(entryReply(await k.call(Op.LINK, bytes(u64(20), cstr('hard')), { nodeId: 3 })).nodeId, 20);
      assert.deepEqual(calls, [['link', 20, 3, 'hard']]);
    });
  });

  test('open, opendir: the flags in; the handle and FOPEN flags out', async () => {
    const { fs, calls } = recorder({ open: { fh: 2 ** 40 + 3, flags: 2 }, opendir: { fh: 4, flags: 8 } });
    await withSession(fs, async (k) => {
      const o = await k.call(Op.OPEN, Body.open(0o100002), { nodeId: 7 });
      assert.deepEqual([o.body.length, Number(o.body.readBigUInt64LE(0)), o.body.readUInt32LE(8)], [Size.OPEN_OUT, 2 ** 40 + 3, 2]);
      assert.equal(o.body.readInt32LE(12), 0, 'no backing id');
      const d = await k.call(Op.OPENDIR, Body.open(0o200000), { nodeId: 8 });
      assert.deepEqual([Number(d.body.readBigUInt64LE(0)), d.body.readUInt32LE(8)], [4, 8]);
      assert.deepEqual(calls, [['open', 7, 0o100002], ['opendir', 8, 0o200000]]);
    });
  });

  test('a passthrough open carries its backing id', async () => {
    const { fs } = recorder({ open: { fh: 5, flags: Passthrough.FOPEN, backingId: 9 } });
    await withSession(fs, async (k) => {
      const o = await k.call(Op.OPEN, Body.open(0), { nodeId: 7 });
      assert.deepEqual([o.body.readUInt32LE(8), o.body.readInt32LE(12)], [Passthrough.FOPEN, 9]);
    });
  });

  test('create: the name, mode, umask and flags; the entry and the open file in one answer', async () => {
    const { fs, calls } = recorder({ create: { ...entryOf(30), open: { fh: 31, flags: 1 } } });
    await withSession(fs, async (k) => {
      const r = await k.call(Op.CREATE, Body.create(0o100101, 0o100640, 0o022, 'new'), { nodeId: 2 });
      assert.equal(r.body.length, Size.ENTRY_OUT + Size.OPEN_OUT);
      assert.equal(entryReply(r).nodeId, 30);
      assert.deepEqual([Number(r.body.readBigUInt64LE(Size.ENTRY_OUT)), r.body.readUInt32LE(Size.ENTRY_OUT + 8)], [31, 1]);
      assert.deepEqual(calls, [['create', 2, 'new', 0o100640, 0o022, 0o100101]]);
    });
  });

  test('write: the data, flags and offset; the count answered', async () => {
    const { fs, calls } = recorder({ write: (_r: Request, _n: number, _f: number, _o: number, data: Buffer) => data.length });
    await withSession(fs, async (k) => {
      const data = Buffer.from('hello, world');
      const r = await k.call(Op.WRITE, Body.write(5, 2 ** 33, data, 1, 0o2), { nodeId: 9 });
      assert.deepEqual([r.body.length, r.body.readUInt32LE(0)], [Size.WRITE_OUT, data.length]);
      const big = Buffer.alloc(65536, 'w');
      assert.equal((await k.call(Op.WRITE, Body.write(5, 0, big), { nodeId: 9 })).body.readUInt32LE(0), 65536);
      assert.deepEqual(calls[0], ['write', 9, 5, 2 ** 33, 'hello, world', 1, 0o2]);
      assert.equal((calls[1][4] as string).length, 65536);
    });
  });

  test('statfs, access, flush, fallocate, lseek, copy_file_range', async () => {
    const st = { blocks: 100, bfree: 50, bavail: 40, files: 10, ffree: 5, bsize: 4096, namelen: 255, frsize: 4096 };
    const { fs, calls } = recorder({ statfs: st, lseek: 2 ** 35, copyFileRange: 777 });
    await withSession(fs, async (k) => {
      const s = await k.call(Op.STATFS, undefined, { nodeId: 1 });
      assert.deepEqual([s.body.length, Number(s.body.readBigUInt64LE(0)), s.body.readUInt32LE(44)], [Size.STATFS_OUT, 100, 255]);
      await k.call(Op.ACCESS, bytes(u32(4), u32(0)), { nodeId: 2 });
      await k.call(Op.FLUSH, bytes(u64(3), u32(0), u32(0), u64(0xffffffffffffffffn)), { nodeId: 2 });
      await k.call(Op.FALLOCATE, bytes(u64(3), u64(4096), u64(8192), u32(1), u32(0)), { nodeId: 2 });
      const l = await k.call(Op.LSEEK, bytes(u64(3), u64(100), u32(3), u32(0)), { nodeId: 2 });
      assert.deepEqual([l.body.length, Number(l.body.readBigUInt64LE(0))], [Size.LSEEK_OUT, 2 ** 35]);
      const c = await k.call(Op.COPY_FILE_RANGE, bytes(u64(3), u64(10), u64(12), u64(13), u64(20), u64(1000), u64(0)), { nodeId: 2 });
      assert.deepEqual([c.body.length, c.body.readUInt32LE(0)], [Size.WRITE_OUT, 777]);
      assert.deepEqual(calls, [
        ['statfs', 1], ['access', 2, 4], ['flush', 2, 3, 0xffffffffffffffffn], ['fallocate', 2, 3, 4096, 8192, 1],
        ['lseek', 2, 3, 100, 3], ['copyFileRange', 2, 3, 10, 12, 13, 20, 1000, 0],
      ]);
    });
  });

  test('release, releasedir, fsync, fsyncdir', async () => {
    const { fs, calls } = recorder();
    await withSession(fs, async (k) => {
      for (const [op, b] of [
        [Op.RELEASE, Body.release(6, 0o2, 1)], [Op.RELEASEDIR, Body.release(7, 0o200000, 0)],
        [Op.FSYNC, Body.fsync(6, FSYNC_FDATASYNC)], [Op.FSYNC, Body.fsync(6, 0)], [Op.FSYNCDIR, Body.fsync(7, FSYNC_FDATASYNC)],
      ] as const) {
        const r = await k.call(op, b, { nodeId: 3 });
        assert.deepEqual([r.error, r.body.length], [0, 0]);
      }
      assert.deepEqual(calls, [['release', 3, 6, 0o2, 1], ['releasedir', 3, 7, 0o200000], ['fsync', 3, 6, true], ['fsync', 3, 6, false], ['fsyncdir', 3, 7, true]]);
    });
  });

  test('setxattr (with FUSE_SETXATTR_EXT, and without: the old 8-byte fuse_setxattr_in), removexattr', async () => {
    for (const ext of [true, false]) {
      const { fs, calls } = recorder();
      const want = ext ? DEFAULT_OPTIONS.want : DEFAULT_OPTIONS.want & ~bit(Init.SETXATTR_EXT);
      await withSession(fs, async (k) => {
        const head = ext ? bytes(u32(6), u32(1), u32(1), u32(0)) : bytes(u32(6), u32(1));
        // The value is binary and need not end in a NUL.
        await k.call(Op.SETXATTR, bytes(head, cstr('user.k'), Buffer.from('v\0a\0ue')), { nodeId: 2 });
        await k.call(Op.REMOVEXATTR, cstr('user.k'), { nodeId: 2 });
        assert.deepEqual(calls, [['setxattr', 2, 'user.k', 'v\0a\0ue', 1], ['removexattr', 2, 'user.k']]);
      }, { want });
    }
  });

  test('getxattr, listxattr: size 0 asks the length, too small is ERANGE, big enough gets the data', async () => {
    const value = Buffer.from('a value of 20 bytes!');
    const list = Buffer.from('user.a\0user.b\0');
    const { fs, calls } = recorder({ getxattr: value, listxattr: list });
    await withSession(fs, async (k) => {
      const len = await k.call(Op.GETXATTR, Body.getxattr(0, 'user.a'));
      assert.deepEqual([len.body.length, len.body.readUInt32LE(0)], [Size.GETXATTR_OUT, 20]);
      assert.equal((await k.call(Op.GETXATTR, Body.getxattr(19, 'user.a'))).error, -E.ERANGE);
      assert.deepEqual((await k.call(Op.GETXATTR, Body.getxattr(20, 'user.a'))).body, value);
      assert.deepEqual((await k.call(Op.GETXATTR, Body.getxattr(65536, 'user.a'))).body, value);
      const llen = await k.call(Op.LISTXATTR, Body.getxattr(0));
      assert.deepEqual([llen.body.length, llen.body.readUInt32LE(0)], [Size.GETXATTR_OUT, list.length]);
      assert.equal((await k.call(Op.LISTXATTR, Body.getxattr(list.length - 1))).error, -E.ERANGE);
      assert.deepEqual((await k.call(Op.LISTXATTR, Body.getxattr(list.length))).body, list);
      assert.deepEqual(calls[0], ['getxattr', 1, 'user.a']);
      assert.deepEqual(calls[4], ['listxattr', 1]);
    });
  });

  test('forget and batch_forget call forget, and are never answered; nor are INTERRUPT and NOTIFY_REPLY', async () => {
    const { fs, calls } = recorder();
    await withSession(fs, async (k) => {
      k.send(Op.FORGET, Body.forget(3), { nodeId: 12, noReply: true });
      k.send(Op.BATCH_FORGET, bytes(u32(2), u32(0), u64(13), u64(1), u64(14), u64(2 ** 40)), { noReply: true });
      // A count larger than the records sent reads only those there are.
      k.send(Op.BATCH_FORGET, bytes(u32(5), u32(0), u64(15), u64(1)), { noReply: true });
      k.send(Op.INTERRUPT, Body.interrupt(123456), { noReply: true });
      k.send(Op.NOTIFY_REPLY, bytes(u64(0), u64(0), u32(0), u32(0), u64(0), u64(0)), { noReply: true });
      await k.settle();
      assert.deepEqual(calls, [['forget', 12, 3], ['forget', 13, 1], ['forget', 14, 2 ** 40], ['forget', 15, 1]]);
    });
  });

  test('a forget that throws is reported, and the batch and the session go on', async () => {
    const bugs: string[] = [];
    const forgotten: number[] = [];
    const fs: FileSystem = {
      forget: (node) => {
        if (node === 13) throw new Error('forget failed');
        forgotten.push(node);
      },
      getattr: (_r, node) => ({ attr: attrOf(node), timeout: 1 }),
    };
    await withSession(fs, async (k) => {
      k.send(Op.BATCH_FORGET, bytes(u32(3), u32(0), u64(12), u64(1), u64(13), u64(1), u64(14), u64(1)), { noReply: true });
      k.send(Op.FORGET, Body.forget(1), { nodeId: 13, noReply: true });
      assert.equal(attrReply(await k.call(Op.GETATTR, Body.getattr(0, 0), { nodeId: 2 })).ino, 2);
      assert.deepEqual(forgotten, [12, 14]);
      assert.deepEqual(bugs, ['forget', 'forget']);
    }, { onBug: (op) => void bugs.push(op) });
  });

  test('opcodes the session does not serve are ENOSYS', async () => {
    const { fs, calls } = recorder();
    await withSession(fs, async (k) => {
      for (const op of [Op.GETLK, Op.SETLK, Op.SETLKW, Op.BMAP, Op.IOCTL, Op.POLL, Op.SETUPMAPPING, Op.REMOVEMAPPING, Op.SYNCFS, Op.TMPFILE, 4096, 9999]) {
        assert.equal((await k.call(op, Buffer.alloc(64))).error, -E.ENOSYS, `opcode ${op}`);
      }
      assert.deepEqual(calls, []);
    });
  });

  test('DESTROY calls destroy once and is answered; the device closing later does not call it again', async () => {
    let destroyed = 0;
    const k = new FakeKernel({ destroy: () => void destroyed++ }, DEFAULT_OPTIONS);
    try {
      k.send(Op.INIT, initBody());
      k.hold();
      k.start();
      const r = await k.call(Op.DESTROY);
      assert.deepEqual([r.error, r.body.length, destroyed], [0, 0, 1]);
    } finally {
      await k.close();
    }
    assert.equal(k.outcome, 'resolved');
    assert.equal(destroyed, 1);
  });
});

describe('read', () => {
  test('into the buffer given, answering a count: that many bytes go out', async () => {
    const fs: FileSystem = {
      read: (_r, _n, _fh, offset, size, into) => {
        assert.ok(into.length >= size);
        return into.write(`at ${offset} of ${size}`.slice(0, size));
      },
    };
    await withSession(fs, async (k) => {
      assert.equal((await k.call(Op.READ, Body.read(1, 100, 4096))).body.toString(), 'at 100 of 4096');
      assert.equal((await k.call(Op.READ, Body.read(1, 0, 5))).body.toString(), 'at 0 ');
      // A count past size is cut to size; none is an empty answer (end of file).
      const over: FileSystem = { read: (_r, _n, _fh, _o, size, into) => (into.fill(0x61, 0, size), size + 100) };
      Object.assign(fs, over);
      assert.equal((await k.call(Op.READ, Body.read(1, 0, 10))).body.toString(), 'aaaaaaaaaa');
      Object.assign(fs, { read: () => 0 });
      assert.equal((await k.call(Op.READ, Body.read(1, 0, 10))).body.length, 0);
    });
  });

  test('a Buffer of its own, cut to the size asked', async () => {
    const data = Buffer.alloc(30000, 'r');
    const fs: FileSystem = { read: (_r, node) => (node === 1 ? Buffer.from('small') : data) };
    await withSession(fs, async (k) => {
      assert.equal((await k.call(Op.READ, Body.read(1, 0, 4096), { nodeId: 1 })).body.toString(), 'small');
      assert.deepEqual((await k.call(Op.READ, Body.read(1, 0, 20000), { nodeId: 2 })).body, data.subarray(0, 20000));
    });
  });

  test('as much as the kernel may ask: max_pages pages, though max_write is no multiple of a page', async () => {
    const sizes: number[] = [];
    const fs: FileSystem = { read: (_r, _n, _fh, _o, size, into) => (sizes.push(size, into.length), into.fill(1, 0, size), size) };
    await withSession(fs, async (k) => {
      assert.equal(k.session.negotiated?.maxPages, 3);
      assert.equal((await k.call(Op.READ, Body.read(1, 0, 3 * PAGE))).body.length, 3 * PAGE);
      assert.deepEqual(sizes, [3 * PAGE, 3 * PAGE]);
    }, { maxWrite: 10000 });
  });

  test('without FUSE_MAX_PAGES the kernel reads up to 32 pages, whatever max_write is', async () => {
    const sizes: number[] = [];
    const fs: FileSystem = { read: (_r, _n, _fh, _o, size, into) => (sizes.push(size), into.fill(2, 0, size), size) };
    await withSession(fs, async (k) => {
      assert.equal(k.session.negotiated?.maxPages, 0);
      assert.equal((await k.call(Op.READ, Body.read(1, 0, 32 * PAGE))).body.length, 32 * PAGE);
      assert.deepEqual(sizes, [32 * PAGE]);
    }, { maxWrite: 16384, want: DEFAULT_OPTIONS.want & ~bit(Init.MAX_PAGES) });
  });

  test('asynchronous reads into their own buffers, answered in any order', async () => {
    const pending = new Map<number, () => void>();
    const fs: FileSystem = {
      read: (_r, node, _fh, _o, size, into) => new Promise<number>((resolve) => {
        pending.set(node, () => resolve(into.fill(String(node), 0, size).length));
      }),
    };
    await withSession(fs, async (k) => {
      const us = [1, 2, 3].map((n) => k.send(Op.READ, Body.read(1, 0, 1000), { nodeId: n }));
      await k.settle();
      for (const n of [3, 1, 2]) pending.get(n)!();
      for (const [i, u] of us.entries()) assert.deepEqual((await k.reply(u)).body, Buffer.alloc(1000, String(i + 1)));
    });
  });
});

describe('errors', () => {
  test('a missing method is ENOSYS; missing release and releasedir are success', async () => {
    // Served as is (no hold): requests queued, then the end of file, as a batch in serving mode.
    const k = new FakeKernel({}, DEFAULT_OPTIONS, false);
    try {
      const init = k.send(Op.INIT, initBody());
      const requests: [number, Buffer][] = [
        [Op.LOOKUP, cstr('a')], [Op.GETATTR, Body.getattr(0, 0)], [Op.SETATTR, Buffer.alloc(88)], [Op.READLINK, Buffer.alloc(0)],
        [Op.SYMLINK, bytes(cstr('a'), cstr('b'))], [Op.MKNOD, Body.mknod(0o10644, 0, 0, 'a')], [Op.MKDIR, Body.mkdir(0o755, 0, 'a')],
        [Op.UNLINK, cstr('a')], [Op.RMDIR, cstr('a')], [Op.RENAME, bytes(u64(1), cstr('a'), cstr('b'))],
        [Op.RENAME2, bytes(u64(1), u32(0), u32(0), cstr('a'), cstr('b'))], [Op.LINK, bytes(u64(2), cstr('a'))],
        [Op.OPEN, Body.open(0)], [Op.READ, Body.read(1, 0, 10)], [Op.WRITE, Body.write(1, 0, Buffer.from('x'))], [Op.STATFS, Buffer.alloc(0)],
        [Op.FSYNC, Body.fsync(1, 0)], [Op.SETXATTR, bytes(u32(1), u32(0), u32(0), u32(0), cstr('user.a'), Buffer.from('v'))],
        [Op.GETXATTR, Body.getxattr(0, 'user.a')], [Op.LISTXATTR, Body.getxattr(0)], [Op.REMOVEXATTR, cstr('user.a')],
        [Op.FLUSH, bytes(u64(1), u64(0), u64(0))], [Op.OPENDIR, Body.open(0)], [Op.READDIR, Body.read(1, 0, 4096)],
        [Op.READDIRPLUS, Body.read(1, 0, 4096)], [Op.FSYNCDIR, Body.fsync(1, 0)], [Op.ACCESS, bytes(u32(0), u32(0))],
        [Op.CREATE, Body.create(0, 0o644, 0, 'a')], [Op.FALLOCATE, Buffer.alloc(32)], [Op.LSEEK, Buffer.alloc(24)], [Op.COPY_FILE_RANGE, Buffer.alloc(56)],
      ];
      const sent = requests.map(([op, b]) => [op, k.send(op, b)] as const);
      const released = [k.send(Op.RELEASE, Body.release(1, 0, 0)), k.send(Op.RELEASEDIR, Body.release(1, 0, 0))];
      k.send(Op.FORGET, Body.forget(1), { nodeId: 2, noReply: true });
      k.send(Op.BATCH_FORGET, bytes(u32(1), u32(0), u64(2), u64(1)), { noReply: true });
      k.shutWrite();
      k.start();
      await k.waitEnded();
      assert.equal(k.outcome, 'resolved');
      for (const [op, u] of sent) assert.equal((await k.reply(u)).error, -E.ENOSYS, `opcode ${op}`);
      for (const u of released) assert.deepEqual(await k.reply(u), { unique: u, error: 0, body: Buffer.alloc(0) });
      initReply(await k.reply(init));
      assert.deepEqual(k.unclaimed(), { arrived: [], unanswered: [] });
      assert.deepEqual(k.faults, []);
    } finally {
      await k.close();
    }
  });

  test('thrown errors carrying an errno answer it: ours (positive), Node\'s (negative), a code only', async () => {
    const bugs: unknown[] = [];
    const throwers: Record<string, () => never> = {
      ours: () => {
        throw errnoError(E.EEXIST);
      },
      node: () => {
        statSync('/nonexistent/for/this/test');
        throw new Error('unreachable');
      },
      code: () => {
        throw Object.assign(new Error('no entry'), { code: 'ENOTEMPTY' });
      },
    };
    const fs: FileSystem = { lookup: (_r, _p, name) => throwers[name.toString()]() };
    await withSession(fs, async (k) => {
      assert.equal((await k.call(Op.LOOKUP, cstr('ours'))).error, -E.EEXIST);
      assert.equal((await k.call(Op.LOOKUP, cstr('node'))).error, -E.ENOENT);
      assert.equal((await k.call(Op.LOOKUP, cstr('code'))).error, -E.ENOTEMPTY);
      assert.deepEqual(bugs, []);
    }, { onBug: (op, err) => void bugs.push([op, err]) });
  });

  test('rejections carry their errno the same way', async () => {
    const fs: FileSystem = {
      readlink: async () => {
        await readFile('/nonexistent/for/this/test');
        return Buffer.alloc(0);
      },
      getattr: () => Promise.reject(errnoError(E.EACCES)),
    };
    await withSession(fs, async (k) => {
      assert.equal((await k.call(Op.READLINK)).error, -E.ENOENT);
      assert.equal((await k.call(Op.GETATTR, Body.getattr(0, 0))).error, -E.EACCES);
    });
  });

  test('anything without an errno is EIO, and reported to onBug with the op', async () => {
    const bugs: [string, unknown][] = [];
    const plain = new Error('a bug');
    const fs: FileSystem = {
      lookup: () => {
        throw plain;
      },
      unlink: () => {
        throw 'a string';
      },
      rmdir: () => Promise.reject(new TypeError('async bug')),
      // errno values the kernel refuses in an answer (it takes only -1 to -511): libuv's own codes, as Node's errors can carry.
      mkdir: (_r, _p, name) => {
        throw name.toString() === 'uv'
          ? Object.assign(new Error('unknown error'), { errno: -4094, code: 'UNKNOWN' })
          : Object.assign(new Error('getaddrinfo ENOTFOUND'), { errno: -3008, code: 'ENOTFOUND' });
      },
    };
    await withSession(fs, async (k) => {
      assert.equal((await k.call(Op.LOOKUP, cstr('a'))).error, -E.EIO);
      assert.equal((await k.call(Op.UNLINK, cstr('a'))).error, -E.EIO);
      assert.equal((await k.call(Op.RMDIR, cstr('a'))).error, -E.EIO);
      assert.equal((await k.call(Op.MKDIR, Body.mkdir(0o755, 0, 'uv'))).error, -E.EIO);
      assert.equal((await k.call(Op.MKDIR, Body.mkdir(0o755, 0, 'dns'))).error, -E.EIO);
      assert.deepEqual(bugs.map(([op]) => op), ['lookup', 'unlink', 'rmdir', 'mkdir', 'mkdir']);
      assert.equal(bugs[0][1], plain);
      assert.equal(bugs[1][1], 'a string');
    }, { onBug: (op, err) => void bugs.push([op, err]) });
  });

  test('an answer that cannot be encoded is EIO, reported', async () => {
    const bugs: string[] = [];
    // An entry without attributes: the encoder throws.
    const fs: FileSystem = { lookup: () => ({ nodeId: 2 }) as unknown as Entry, getattr: (_r, node) => ({ attr: attrOf(node), timeout: 1 }) };
    await withSession(fs, async (k) => {
      assert.equal((await k.call(Op.LOOKUP, cstr('a'))).error, -E.EIO);
      assert.equal(attrReply(await k.call(Op.GETATTR, Body.getattr(0, 0), { nodeId: 3 })).ino, 3);
      assert.deepEqual(bugs, ['lookup']);
    }, { onBug: (op) => void bugs.push(op) });
  });

  test('a request whose header length is not the message\'s is reported and not answered', async () => {
    const bugs: string[] = [];
    const { fs, calls } = recorder({ lookup: entryOf(2) });
    await withSession(fs, async (k) => {
      k.send(Op.LOOKUP, cstr('a'), { len: 1000, noReply: true });
      assert.equal(entryReply(await k.call(Op.LOOKUP, cstr('b'))).nodeId, 2);
      assert.deepEqual(calls, [['lookup', 1, 'b']]);
      assert.deepEqual(bugs, ['request']);
    }, { onBug: (op) => void bugs.push(op) });
  });
});

describe('asynchronous methods', () => {
  test('are answered when they settle, and requests after them are served meanwhile', async () => {
    const slow = deferred<Entry>();
    const fs: FileSystem = {
      lookup: (_r, _p, name) => (name.toString() === 'slow' ? slow.promise : entryOf(3)),
      getattr: (_r, node) => ({ attr: attrOf(node), timeout: 1 }),
    };
    await withSession(fs, async (k) => {
      const first = k.send(Op.LOOKUP, cstr('slow'));
      assert.equal(attrReply(await k.call(Op.GETATTR, Body.getattr(0, 0), { nodeId: 9 })).ino, 9);
      assert.equal(entryReply(await k.call(Op.LOOKUP, cstr('fast'))).nodeId, 3);
      assert.equal(k.hasAnswer(first), false);
      slow.resolve(entryOf(4));
      assert.equal(entryReply(await k.reply(first)).nodeId, 4);
    });
  });

  test('the Buffers they were given stay intact while later requests arrive', async () => {
    const held: { name?: Buffer; data?: Buffer; target?: Buffer; value?: Buffer } = {};
    const done = { lookup: deferred<Entry>(), write: deferred<number>(), symlink: deferred<Entry>(), setxattr: deferred<void>() };
    const fs: FileSystem = {
      lookup: (_r, _p, name) => {
        if (name.toString() !== 'held-name') return entryOf(5);
        held.name = name;
        return done.lookup.promise;
      },
      write: (_r, _n, _fh, _o, data) => {
        if (data[0] !== 0x41) return data.length;
        held.data = data;
        return done.write.promise.then(() => {
          // Still the bytes the kernel sent, when the method finishes.
          assert.deepEqual(data, Buffer.alloc(50000, 'A'));
          return data.length;
        });
      },
      symlink: (_r, _p, _name, target) => {
        held.target = target;
        return done.symlink.promise;
      },
      setxattr: (_r, _n, _name, value) => {
        held.value = value;
        return done.setxattr.promise;
      },
    };
    await withSession(fs, async (k) => {
      const us = [
        k.send(Op.LOOKUP, cstr('held-name')),
        k.send(Op.WRITE, Body.write(1, 0, Buffer.alloc(50000, 'A'))),
        k.send(Op.SYMLINK, bytes(cstr('l'), cstr('held-target'))),
        k.send(Op.SETXATTR, bytes(u32(10), u32(0), u32(0), u32(0), cstr('user.x'), Buffer.from('held-value'))),
      ];
      // Later requests overwrite whatever buffer they are read into.
      for (let i = 0; i < 20; i++) {
        await k.call(Op.LOOKUP, cstr(`other-name-${i}-`.repeat(20)));
        await k.call(Op.WRITE, Body.write(1, 0, Buffer.alloc(60000, 'B')));
      }
      assert.equal(held.name?.toString(), 'held-name');
      assert.deepEqual(held.data, Buffer.alloc(50000, 'A'));
      assert.equal(held.target?.toString(), 'held-target');
      assert.equal(held.value?.toString(), 'held-value');
      done.setxattr.resolve();
      done.symlink.resolve(entryOf(8));
      done.write.resolve(0);
      done.lookup.resolve(entryOf(6));
      assert.equal(entryReply(await k.reply(us[0])).nodeId, 6);
      assert.equal((await k.reply(us[1])).body.readUInt32LE(0), 50000);
      assert.equal(entryReply(await k.reply(us[2])).nodeId, 8);
      assert.equal((await k.reply(us[3])).error, 0);
    });
  });

  test('many pending at once, settled in reverse order, each answered once with its own answer', async () => {
    const waiting = new Map<number, (r: { attr: Attr; timeout: number }) => void>();
    const fs: FileSystem = { getattr: (_r, node) => new Promise((resolve) => void waiting.set(node, resolve)) };
    await withSession(fs, async (k) => {
      const us = Array.from({ length: 30 }, (_, i) => k.send(Op.GETATTR, Body.getattr(0, 0), { nodeId: 100 + i }));
      await k.settle();
      assert.equal(waiting.size, 30);
      for (let i = 29; i >= 0; i--) waiting.get(100 + i)!({ attr: attrOf(100 + i), timeout: 1 });
      for (const [i, u] of us.entries()) assert.equal(attrReply(await k.reply(u)).ino, 100 + i);
    });
  });

  test('INTERRUPT marks the pending request; it is still answered, once', async () => {
    const reqs = new Map<number, Request>();
    const waits = new Map<number, ReturnType<typeof deferred<void>>>();
    const fs: FileSystem = {
      fsync: (req, node) => {
        reqs.set(node, req);
        const d = deferred<void>();
        waits.set(node, d);
        return d.promise;
      },
      access: (req) => void reqs.set(0, req),
    };
    await withSession(fs, async (k) => {
      const a = k.send(Op.FSYNC, Body.fsync(1, 0), { nodeId: 1 });
      const b = k.send(Op.FSYNC, Body.fsync(1, 0), { nodeId: 2 });
      await k.settle();
      k.send(Op.INTERRUPT, Body.interrupt(a), { noReply: true });
      await k.settle();
      assert.equal(reqs.get(1)?.interrupted, true);
      assert.equal(reqs.get(2)?.interrupted, false);
      // The method gives up on the signal, as it may.
      waits.get(1)!.reject(errnoError(E.EINTR));
      assert.equal((await k.reply(a)).error, -E.EINTR);
      // An INTERRUPT for what is already answered (or unknown) changes nothing.
      k.send(Op.INTERRUPT, Body.interrupt(a), { noReply: true });
      const c = await k.call(Op.ACCESS, bytes(u32(0), u32(0)));
      assert.equal(c.error, 0);
      assert.equal(reqs.get(0)?.interrupted, false);
      waits.get(2)!.resolve();
      assert.equal((await k.reply(b)).error, 0);
    });
  });
});

describe('readdir and readdirplus', () => {
  test('readdir: entries go in until the kernel\'s size is full; add() then says no', async () => {
    const added: boolean[] = [];
    let offsetSeen = -1;
    const fs: FileSystem = {
      readdir: (_r, _n, _fh, offset, out: DirectorySink) => {
        offsetSeen = offset;
        for (const [i, name] of ['alpha', 'bet', 'gamma', 'd'].entries()) {
          const ok = out.add(Buffer.from(name), 10 + i, i === 0 ? 4 : 8, offset + i + 1);
          added.push(ok);
          if (!ok) break;
        }
      },
    };
    await withSession(fs, async (k) => {
      const size = direntSize(5) + direntSize(3) + direntSize(5) - 1;
      const r = await k.call(Op.READDIR, Body.read(3, 40, size), { nodeId: 2 });
      assert.equal(offsetSeen, 40);
      assert.deepEqual(added, [true, true, false]);
      assert.equal(r.body.length, direntSize(5) + direntSize(3));
      assert.deepEqual(dirents(r.body), [{ ino: 10, off: 41, type: 4, name: 'alpha' }, { ino: 11, off: 42, type: 8, name: 'bet' }]);
      // Too small for even one entry: an empty answer (the end of the directory, for the kernel).
      added.length = 0;
      assert.equal((await k.call(Op.READDIR, Body.read(3, 0, direntSize(5) - 1), { nodeId: 2 })).body.length, 0);
      assert.deepEqual(added, [false]);
    });
  });

  test('readdirplus: each entry with its answer, or none (null); the sink fills the same way', async () => {
    const added: boolean[] = [];
    const fs: FileSystem = {
      readdirplus: (_r, _n, _fh, _off, out: DirectoryPlusSink) => {
        added.push(out.add(Buffer.from('one'), entryOf(21), 21, 8, 1));
        added.push(out.add(Buffer.from('two'), null, 22, 8, 2));
        added.push(out.add(Buffer.from('three'), entryOf(23), 23, 8, 3));
      },
    };
    await withSession(fs, async (k) => {
      const r = await k.call(Op.READDIRPLUS, Body.read(3, 0, direntPlusSize(3) * 2 + 10));
      assert.deepEqual(added, [true, true, false]);
      assert.deepEqual(dirents(r.body, true), [
        { ino: 21, off: 1, type: 8, name: 'one', nodeId: 21 },
        { ino: 22, off: 2, type: 8, name: 'two', nodeId: 0 },
      ]);
      assert.equal(entryReply({ ...r, body: r.body.subarray(0, Size.ENTRY_OUT) }).mode, 0o100644);
      assert.ok(r.body.subarray(direntPlusSize(3), direntPlusSize(3) + Size.ENTRY_OUT).every((b) => b === 0), 'no entry: zeros');
    });
  });

  test('readdirplus entries taken before the method fails are forgotten (the kernel never saw them)', async () => {
    const forgotten: [number, number][] = [];
    const fs: FileSystem = {
      forget: (node, count) => void forgotten.push([node, count]),
      readdirplus: (_r, node, _fh, _off, out: DirectoryPlusSink) => {
        out.add(Buffer.from('a'), entryOf(31), 31, 8, 1);
        out.add(Buffer.from('b'), null, 32, 8, 2);
        out.add(Buffer.from('c'), { ...entryOf(33), nodeId: 0 }, 33, 8, 3);
        out.add(Buffer.from('d'), entryOf(34), 34, 8, 4);
        if (node === 1) throw errnoError(E.EIO);
        return Promise.reject(errnoError(E.ENOMEM));
      },
    };
    await withSession(fs, async (k) => {
      assert.equal((await k.call(Op.READDIRPLUS, Body.read(3, 0, 4096), { nodeId: 1 })).error, -E.EIO);
      assert.deepEqual(forgotten, [[31, 1], [34, 1]]);
      forgotten.length = 0;
      assert.equal((await k.call(Op.READDIRPLUS, Body.read(3, 0, 4096), { nodeId: 2 })).error, -E.ENOMEM);
      assert.deepEqual(forgotten, [[31, 1], [34, 1]]);
    });
  });

  test('an asynchronous readdir fills its listing later', async () => {
    const go = deferred<void>();
    const fs: FileSystem = {
      readdir: async (_r, _n, _fh, _off, out) => {
        await go.promise;
        out.add(Buffer.from('late'), 5, 8, 1);
      },
    };
    await withSession(fs, async (k) => {
      const u = k.send(Op.READDIR, Body.read(3, 0, 4096));
      await k.settle();
      go.resolve();
      assert.deepEqual(dirents((await k.reply(u)).body), [{ ino: 5, off: 1, type: 8, name: 'late' }]);
    });
  });
});

describe('log', () => {
  test('a line for INIT, and one for each answer', async () => {
    const lines: string[] = [];
    const fs: FileSystem = { lookup: (_r, _p, name) => (name.toString() === 'a' ? entryOf(2) : Promise.reject(errnoError(E.ENOENT))) };
    await withSession(fs, async (k) => {
      await k.call(Op.LOOKUP, cstr('a'), { nodeId: 1 });
      await k.call(Op.LOOKUP, cstr('b'), { nodeId: 1 });
    }, { log: (line) => void lines.push(line) });
    assert.match(lines[0], /^init 7\.38 flags [0-9a-f]+ max_write 65536$/);
    // The node, the name looked up, and the answer: the node id given, or the error.
    assert.ok(lines.includes('lookup #1 a -> #2'), lines.join('\n'));
    assert.ok(lines.includes('lookup #1 b -> ENOENT'), lines.join('\n'));
  });
});

describe('allowedUids', () => {
  test('others get EACCES, but for the requests on files they hold open; root and the allowed pass', async () => {
    const { fs, calls } = recorder({
      lookup: entryOf(2), getattr: { attr: attrOf(2), timeout: 1 }, open: { fh: 1, flags: 0 }, read: 0, write: 1,
      readdir: undefined, readdirplus: undefined,
    });
    await withSession(fs, async (k) => {
      const stranger = { uid: 2000 };
      for (const [op, b] of [[Op.LOOKUP, cstr('a')], [Op.GETATTR, Body.getattr(0, 0)], [Op.OPEN, Body.open(0)], [Op.FLUSH, Buffer.alloc(24)]] as const) {
        assert.equal((await k.call(op, b, stranger)).error, -E.EACCES, `opcode ${op}`);
      }
      assert.deepEqual(calls, []);
      for (const [op, b] of [
        [Op.READ, Body.read(1, 0, 10)], [Op.WRITE, Body.write(1, 0, Buffer.from('x'))], [Op.FSYNC, Body.fsync(1, 0)], [Op.RELEASE, Body.release(1, 0, 0)],
        [Op.READDIR, Body.read(1, 0, 4096)], [Op.READDIRPLUS, Body.read(1, 0, 4096)], [Op.FSYNCDIR, Body.fsync(1, 0)], [Op.RELEASEDIR, Body.release(1, 0, 0)],
      ] as const) {
        assert.equal((await k.call(op, b, stranger)).error, 0, `opcode ${op}`);
      }
      k.send(Op.FORGET, Body.forget(1), { ...stranger, noReply: true });
      k.send(Op.INTERRUPT, Body.interrupt(1), { ...stranger, noReply: true });
      await k.settle();
      assert.deepEqual(calls.map((c) => c[0]), ['read', 'write', 'fsync', 'release', 'readdir', 'readdirplus', 'fsyncdir', 'releasedir', 'forget']);
      calls.length = 0;
      assert.equal(entryReply(await k.call(Op.LOOKUP, cstr('a'), { uid: 0 })).nodeId, 2);
      assert.equal(entryReply(await k.call(Op.LOOKUP, cstr('a'), { uid: 1000 })).nodeId, 2);
      assert.deepEqual(calls.map((c) => c[0]), ['lookup', 'lookup']);
    }, { allowedUids: new Set([1000]) });
  });
});

describe('the end of the connection', () => {
  /** A session that is initialised, then sees the kernel's end close. */
  async function closedAfterInit(fs: FileSystem, options: SessionOptions): Promise<FakeKernel> {
    const k = new FakeKernel(fs, options);
    try {
      k.send(Op.INIT, initBody());
      k.hold();
      k.start();
      await k.settle();
    } finally {
      await k.close();
    }
    return k;
  }

  test('closing the kernel\'s end: run() resolves and destroy is called once', async () => {
    let destroyed = 0;
    const k = await closedAfterInit({ destroy: () => void destroyed++ }, DEFAULT_OPTIONS);
    assert.equal(k.outcome, 'resolved');
    assert.ok(k.session.isEnded);
    assert.equal(destroyed, 1);
  });

  test('a destroy that throws is reported; run() still resolves', async () => {
    const bugs: [string, unknown][] = [];
    const oops = new Error('destroy failed');
    const k = await closedAfterInit({ destroy: () => { throw oops; } }, { ...DEFAULT_OPTIONS, onBug: (op, err) => void bugs.push([op, err]) });
    assert.equal(k.outcome, 'resolved');
    assert.deepEqual(bugs, [['destroy', oops]]);
  });

  test('close(): run() resolves, the device is closed (the kernel reads end of file), later answers are dropped', async () => {
    const late = deferred<Entry>();
    const bugs: string[] = [];
    const k = new FakeKernel({ lookup: () => late.promise }, { ...DEFAULT_OPTIONS, onBug: (op) => void bugs.push(op) });
    try {
      k.send(Op.INIT, initBody());
      k.hold();
      k.start();
      await k.settle();
      k.send(Op.LOOKUP, cstr('a'));
      await k.settle();
      k.session.close();
      await k.waitEnded();
      assert.equal(k.outcome, 'resolved');
      late.resolve(entryOf(2));
      // The socket outlives its descriptor while the session's pool thread still polls it (up to 250 ms).
      const buf = Buffer.alloc(64);
      let n = readRaw(k.fd, buf);
      for (const deadline = Date.now() + 1000; n === -E.EAGAIN && Date.now() < deadline; n = readRaw(k.fd, buf)) await sleep(5);
      assert.equal(n, 0, 'end of file, and no answer after the close');
      assert.deepEqual(bugs, []);
    } finally {
      await k.close();
    }
  });

  test('serving mode: requests queued before the session starts are all answered, in order, then the end of file ends it', async () => {
    const order: string[] = [];
    const fs: FileSystem = { lookup: (_r, _p, name) => (order.push(name.toString()), entryOf(2)) };
    const k = new FakeKernel(fs, DEFAULT_OPTIONS, false);
    try {
      k.send(Op.INIT, initBody());
      const us = Array.from({ length: 100 }, (_, i) => k.send(Op.LOOKUP, cstr(`n${i}`)));
      k.shutWrite();
      k.start();
      await k.waitEnded();
      assert.equal(k.outcome, 'resolved');
      for (const u of us) assert.equal(entryReply(await k.reply(u)).nodeId, 2);
      assert.deepEqual(order, us.map((_, i) => `n${i}`));
      assert.deepEqual(k.faults, []);
    } finally {
      await k.close();
    }
  });
});
