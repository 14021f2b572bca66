/**
 * The byte layouts of src/fuse/wire.ts (and the bodies session.ts reads in place) and the
 * numbers of protocol.ts, against /usr/include/linux/fuse.h itself: every offset and size
 * here comes from the header's struct definitions, none from our own encoders.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as P from '../../src/fuse/protocol';
import type { Attr, Entry, StatFs } from '../../src/fuse/types';
import * as wire from '../../src/fuse/wire';
import { buildStruct, fuseHeader, readField, type CStruct } from '../helpers/c-structs';
import { requires } from '../helpers/env';
import { bytes, cstr, DEFAULT_OPTIONS, withSession } from '../helpers/fuse-kernel';

const needsHeader = requires('fuse-header');

const H = () => fuseHeader();
const S = (name: string): CStruct => H().struct(name);

/** What each field of a struct must hold: a number for a scalar (every element, for an array), an object for a nested struct. */
type Expect = { [field: string]: bigint | number | Expect };

const FILL = 0xa5;

/**
 * Checks every field of the header's `s` at `base` against `want`, which must name them all
 * (padding included: a writer leaves no byte of the struct unwritten, or it would be 0xa5).
 */
function expectLayout(s: CStruct, buf: Buffer, base: number, want: Expect, path = s.name): void {
  const named = s.fields.filter((f) => f.count !== 0).map((f) => f.name).sort();
  assert.deepEqual(Object.keys(want).sort(), named, `${path}: the expectation names every field of the header's struct`);
  for (const f of s.fields) {
    if (f.count === 0) continue;
    const w = want[f.name];
    if (f.struct) {
      expectLayout(f.struct, buf, base + f.offset, w as Expect, `${path}.${f.name}`);
      continue;
    }
    for (let i = 0; i < f.count; i++) {
      const label = `${path}.${f.name}${f.count > 1 ? `[${i}]` : ''} (offset ${f.offset + i * f.elementSize}, ${f.elementSize} bytes)`;
      assert.equal(readField(buf, base, f, i), BigInt(w as number | bigint), label);
    }
  }
}

/** Runs a writer at offset `base` of a 0xa5-filled buffer; checks its size is the header's and that it wrote nothing outside. */
function encode(s: CStruct, write: (buf: Buffer, off: number) => number | void, sizeConst?: number): { buf: Buffer; base: number } {
  const base = 24;
  const buf = Buffer.alloc(base + s.size + 16, FILL);
  const n = write(buf, base);
  if (typeof n === 'number') assert.equal(n, s.size, `${s.name}: the writer returns sizeof(struct ${s.name})`);
  if (sizeConst !== undefined) assert.equal(sizeConst, s.size, `${s.name}: protocol.ts's Size is sizeof(struct ${s.name})`);
  assert.ok(buf.subarray(0, base).every((b) => b === FILL), `${s.name}: nothing written before the struct`);
  assert.ok(buf.subarray(base + s.size).every((b) => b === FILL), `${s.name}: nothing written past the struct`);
  return { buf, base };
}

/** A u64 value with distinct, non-zero halves (and below 2^53, as wire.ts takes them). */
const u64v = (i: number): number => (0x100 + i) * 2 ** 32 + 0x01020300 + i;
const u32v = (i: number): number => 0xa0b0c000 + i;

const ATTR: Attr = {
  ino: u64v(1), size: u64v(2), blocks: u64v(3), atime: u64v(4), mtime: u64v(5), ctime: u64v(6),
  atimeNsec: 100_000_007, mtimeNsec: 200_000_008, ctimeNsec: 300_000_009,
  mode: 0o100644, nlink: u32v(10), uid: u32v(11), gid: u32v(12), rdev: u32v(13), blksize: u32v(14),
};

const attrFields = (a: Attr): Expect => ({
  ino: a.ino, size: a.size, blocks: a.blocks, atime: a.atime, mtime: a.mtime, ctime: a.ctime,
  atimensec: a.atimeNsec, mtimensec: a.mtimeNsec, ctimensec: a.ctimeNsec,
  mode: a.mode, nlink: a.nlink, uid: a.uid, gid: a.gid, rdev: a.rdev, blksize: a.blksize, flags: 0,
});

const ENTRY: Entry = { nodeId: u64v(20), generation: u64v(21), entryTimeout: 5.25, attrTimeout: 7.5, attr: ATTR };

const entryFields = (e: Entry): Expect => ({
  nodeid: e.nodeId, generation: e.generation,
  entry_valid: Math.floor(e.entryTimeout), attr_valid: Math.floor(e.attrTimeout),
  entry_valid_nsec: Math.round((e.entryTimeout % 1) * 1e9), attr_valid_nsec: Math.round((e.attrTimeout % 1) * 1e9),
  attr: attrFields(e.attr),
});

/** FUSE_DIRENT_ALIGN / FUSE_REC_ALIGN: up to a multiple of sizeof(uint64_t). */
const recAlign = (x: number): number => (x + 7) & ~7;

describe('the header this is checked against', needsHeader, () => {
  test('is protocol 7.38 or later, and pads its structs itself', () => {
    assert.equal(H().constant('FUSE_KERNEL_VERSION'), BigInt(P.KERNEL_VERSION));
    // 7.39 and 7.40 change none of the structs checked here; what 7.40 adds that is used
    // (passthrough) is checked on the running kernel by the passthrough mount test.
    assert.ok(H().constant('FUSE_KERNEL_MINOR_VERSION') >= 38n, 'the header is 7.38 or newer');
    assert.ok(P.MAX_MINOR <= 40, 'MAX_MINOR is no newer than what protocol.ts knows');
    // No implicit padding: the fields fill each struct, so checking every field checks every byte.
    for (const s of H().structs.values()) {
      const filled = s.fields.reduce((n, f) => n + f.size, 0);
      if (s.name !== 'fuse_removemapping_in') assert.equal(filled, s.size, `struct ${s.name} has no hole`);
    }
  });
});

describe('protocol.ts numbers', needsHeader, () => {
  test('versions and limits', () => {
    assert.equal(BigInt(P.KERNEL_VERSION), H().constant('FUSE_KERNEL_VERSION'));
    assert.equal(BigInt(P.ROOT_ID), H().constant('FUSE_ROOT_ID'));
    assert.equal(BigInt(P.MIN_READ_BUFFER), H().constant('FUSE_MIN_READ_BUFFER'));
    assert.ok(P.MIN_MINOR <= P.MAX_MINOR);
  });

  test('every opcode is enum fuse_opcode\'s FUSE_<name>', () => {
    const ops = H().enums.get('fuse_opcode')!;
    for (const [name, code] of Object.entries(P.Op)) assert.equal(BigInt(code), ops.get(`FUSE_${name}`), `Op.${name}`);
    // And none of the header's is missing (CUSE ones and the byte-swap markers aside).
    const ours = new Set(Object.keys(P.Op).map((n) => `FUSE_${n}`));
    const missing = [...ops.keys()].filter((n) => n.startsWith('FUSE_') && !n.endsWith('_BSWAP_RESERVED') && !ours.has(n));
    assert.deepEqual(missing, []);
    assert.equal(P.OP_NAMES[P.Op.READDIRPLUS], 'readdirplus');
  });

  test('init flags are FUSE_<name>', () => {
    for (const [name, bit] of Object.entries(P.Init)) assert.equal(BigInt(bit), H().constant(`FUSE_${name}`), `Init.${name}`);
  });

  test('setattr valid bits are FATTR_<name>, open flags FOPEN_<name>', () => {
    for (const [name, bit] of Object.entries(P.Fattr)) assert.equal(BigInt(bit), H().constant(`FATTR_${name}`), `Fattr.${name}`);
    for (const [name, bit] of Object.entries(P.Fopen)) assert.equal(BigInt(bit), H().constant(`FOPEN_${name}`), `Fopen.${name}`);
  });

  test('the single flags, and the notify codes', () => {
    assert.equal(BigInt(P.GETATTR_FH), H().constant('FUSE_GETATTR_FH'));
    assert.equal(BigInt(P.FSYNC_FDATASYNC), H().constant('FUSE_FSYNC_FDATASYNC'));
    assert.equal(BigInt(P.RELEASE_FLUSH), H().constant('FUSE_RELEASE_FLUSH'));
    assert.equal(BigInt(P.WRITE_CACHE), H().constant('FUSE_WRITE_CACHE'));
    assert.equal(BigInt(P.WRITE_KILL_SUIDGID), H().constant('FUSE_WRITE_KILL_SUIDGID'));
    const codes = H().enums.get('fuse_notify_code')!;
    for (const [name, code] of Object.entries(P.Notify)) assert.equal(BigInt(code), codes.get(`FUSE_NOTIFY_${name}`), `Notify.${name}`);
  });

  test('every Size is the header\'s sizeof (or offsetof)', () => {
    const sizes: Record<keyof typeof P.Size, number> = {
      IN_HEADER: S('fuse_in_header').size,
      OUT_HEADER: S('fuse_out_header').size,
      ATTR: S('fuse_attr').size,
      ENTRY_OUT: S('fuse_entry_out').size,
      ATTR_OUT: S('fuse_attr_out').size,
      OPEN_OUT: S('fuse_open_out').size,
      WRITE_OUT: S('fuse_write_out').size,
      STATFS_OUT: S('fuse_statfs_out').size,
      INIT_IN: S('fuse_init_in').size,
      INIT_OUT: S('fuse_init_out').size,
      GETXATTR_OUT: S('fuse_getxattr_out').size,
      LSEEK_OUT: S('fuse_lseek_out').size,
      // FUSE_NAME_OFFSET: offsetof(struct fuse_dirent, name).
      DIRENT_HEADER: S('fuse_dirent').field('name').offset,
      FORGET_ONE: S('fuse_forget_one').size,
      NOTIFY_INVAL_INODE_OUT: S('fuse_notify_inval_inode_out').size,
      NOTIFY_INVAL_ENTRY_OUT: S('fuse_notify_inval_entry_out').size,
      NOTIFY_DELETE_OUT: S('fuse_notify_delete_out').size,
    };
    assert.deepEqual({ ...P.Size }, sizes);
  });
});

describe('writers', needsHeader, () => {
  test('fuse_out_header', () => {
    const s = S('fuse_out_header');
    const { buf, base } = encode(s, (b, off) => wire.writeOutHeader(b.subarray(off), 4321, -2, u64v(30)));
    expectLayout(s, buf, base, { len: 4321, error: -2, unique: u64v(30) });
  });

  test('fuse_attr', () => {
    const s = S('fuse_attr');
    const { buf, base } = encode(s, (b, off) => wire.writeAttr(b, off, ATTR), P.Size.ATTR);
    expectLayout(s, buf, base, attrFields(ATTR));
  });

  test('fuse_entry_out, whole and fractional timeouts', () => {
    const s = S('fuse_entry_out');
    for (const e of [ENTRY, { ...ENTRY, entryTimeout: 3, attrTimeout: 0 }]) {
      const { buf, base } = encode(s, (b, off) => wire.writeEntryOut(b, off, e), P.Size.ENTRY_OUT);
      expectLayout(s, buf, base, entryFields(e));
    }
  });

  test('fuse_attr_out', () => {
    const s = S('fuse_attr_out');
    const { buf, base } = encode(s, (b, off) => wire.writeAttrOut(b, off, ATTR, 2.125), P.Size.ATTR_OUT);
    expectLayout(s, buf, base, { attr_valid: 2, attr_valid_nsec: 125_000_000, dummy: 0, attr: attrFields(ATTR) });
  });

  test('fuse_open_out: fh, open_flags, and 0 in the third u32 (padding in 7.38, backing_id from 7.40)', () => {
    const s = S('fuse_open_out');
    const flags = P.Fopen.KEEP_CACHE | P.Fopen.NOFLUSH;
    const { buf, base } = encode(s, (b, off) => wire.writeOpenOut(b, off, u64v(40), flags), P.Size.OPEN_OUT);
    const third = s.has('backing_id') ? 'backing_id' : 'padding';
    expectLayout(s, buf, base, { fh: u64v(40), open_flags: flags, [third]: 0 });
  });

  test('fuse_write_out and fuse_getxattr_out', () => {
    const w = S('fuse_write_out');
    const a = encode(w, (b, off) => wire.writeWriteOut(b, off, u32v(41)), P.Size.WRITE_OUT);
    expectLayout(w, a.buf, a.base, { size: u32v(41), padding: 0 });
    const g = S('fuse_getxattr_out');
    const c = encode(g, (b, off) => wire.writeGetxattrOut(b, off, u32v(42)), P.Size.GETXATTR_OUT);
    expectLayout(g, c.buf, c.base, { size: u32v(42), padding: 0 });
  });

  test('fuse_lseek_out', () => {
    const s = S('fuse_lseek_out');
    const { buf, base } = encode(s, (b, off) => wire.writeLseekOut(b, off, u64v(43)), P.Size.LSEEK_OUT);
    expectLayout(s, buf, base, { offset: u64v(43) });
  });

  test('fuse_notify_inval_inode_out: a negative offset (attributes only) and a range', () => {
    const s = S('fuse_notify_inval_inode_out');
    for (const [offset, length] of [[-1, 0], [u64v(45), u64v(46)]]) {
      const { buf, base } = encode(s, (b, off) => wire.writeNotifyInvalInodeOut(b, off, u64v(44), offset, length), P.Size.NOTIFY_INVAL_INODE_OUT);
      expectLayout(s, buf, base, { ino: u64v(44), off: offset, len: length });
    }
  });

  test('fuse_statfs_out (a fuse_kstatfs)', () => {
    const s = S('fuse_statfs_out');
    const st: StatFs = { blocks: u64v(50), bfree: u64v(51), bavail: u64v(52), files: u64v(53), ffree: u64v(54), bsize: u32v(55), namelen: u32v(56), frsize: u32v(57) };
    const { buf, base } = encode(s, (b, off) => wire.writeStatfsOut(b, off, st), P.Size.STATFS_OUT);
    expectLayout(s, buf, base, {
      st: { blocks: st.blocks, bfree: st.bfree, bavail: st.bavail, files: st.files, ffree: st.ffree, bsize: st.bsize, namelen: st.namelen, frsize: st.frsize, padding: 0, spare: 0 },
    });
  });

  test('fuse_init_out: flags split into flags and flags2, the rest zero', () => {
    const s = S('fuse_init_out');
    const o: wire.InitOut = {
      major: 7, minor: 38, maxReadahead: u32v(60), flags: 0x40401001n | (0x5n << 32n),
      maxBackground: 0xc061, congestionThreshold: 0xc062, maxWrite: u32v(63), timeGran: u32v(64), maxPages: 0xc065,
    };
    const { buf, base } = encode(s, (b, off) => wire.writeInitOut(b, off, o), P.Size.INIT_OUT);
    const want: Expect = {
      major: 7, minor: 38, max_readahead: o.maxReadahead, flags: 0x40401001, max_background: 0xc061, congestion_threshold: 0xc062,
      max_write: o.maxWrite, time_gran: o.timeGran, max_pages: 0xc065, map_alignment: 0, flags2: 5, unused: 0,
    };
    // Fields newer headers carve out of unused[] (7.40's max_stack_depth) are zero too.
    for (const f of s.fields) if (!(f.name in want)) want[f.name] = 0;
    expectLayout(s, buf, base, want);
  });

  test('fuse_dirent, padded to FUSE_DIRENT_ALIGN with zeros, for names of every length mod 8', () => {
    const s = S('fuse_dirent');
    const nameOffset = s.field('name').offset;
    for (let len = 1; len <= 17; len++) {
      const name = Buffer.from('abcdefghijklmnopq'.slice(0, len));
      const size = recAlign(nameOffset + len);
      assert.equal(wire.direntSize(len), size, `FUSE_DIRENT_SIZE for a ${len}-byte name`);
      const buf = Buffer.alloc(8 + size + 16, FILL);
      assert.equal(wire.writeDirent(buf, 8, name, u64v(70), 4, u64v(71)), size);
      expectLayout(s, buf, 8, { ino: u64v(70), off: u64v(71), namelen: len, type: 4 });
      assert.deepEqual(buf.subarray(8 + nameOffset, 8 + nameOffset + len), name, 'the name at offsetof(name)');
      assert.ok(buf.subarray(8 + nameOffset + len, 8 + size).every((b) => b === 0), 'zero padding');
      assert.ok(buf.subarray(8 + size).every((b) => b === FILL), 'nothing past the record');
      assert.ok(buf.subarray(0, 8).every((b) => b === FILL), 'nothing before the record');
    }
  });

  test('fuse_direntplus: a fuse_entry_out then a fuse_dirent, FUSE_DIRENTPLUS_SIZE long', () => {
    const s = S('fuse_direntplus');
    const nameOffset = s.field('dirent.name').offset; // FUSE_NAME_OFFSET_DIRENTPLUS
    for (const [name, entry] of [[Buffer.from('a-name'), ENTRY], [Buffer.from('x'), null]] as const) {
      const size = recAlign(nameOffset + name.length);
      assert.equal(wire.direntPlusSize(name.length), size);
      const buf = Buffer.alloc(size + 16, FILL);
      assert.equal(wire.writeDirentPlus(buf, 0, name, entry, u64v(72), 8, u64v(73)), size);
      // No entry: all of fuse_entry_out is zero (nodeid 0 tells the kernel to make nothing of it).
      const none: Expect = {
        nodeid: 0, generation: 0, entry_valid: 0, attr_valid: 0, entry_valid_nsec: 0, attr_valid_nsec: 0,
        attr: Object.fromEntries(S('fuse_attr').fields.map((f) => [f.name, 0])),
      };
      expectLayout(s, buf, 0, { entry_out: entry ? entryFields(entry) : none, dirent: { ino: u64v(72), off: u64v(73), namelen: name.length, type: 8 } });
      assert.deepEqual(buf.subarray(nameOffset, nameOffset + name.length), name);
      assert.ok(buf.subarray(nameOffset + name.length, size).every((b) => b === 0), 'zero padding');
      assert.ok(buf.subarray(size).every((b) => b === FILL), 'nothing past the record');
    }
  });
});

describe('readers', needsHeader, () => {
  test('fuse_in_header: total_extlen counts 8-byte units', () => {
    const s = S('fuse_in_header');
    const b = buildStruct(s, { len: u32v(1), opcode: u32v(2), unique: u64v(3), nodeid: u64v(4), uid: u32v(5), gid: u32v(6), pid: u32v(7), total_extlen: 3, padding: 0xffff });
    assert.deepEqual(wire.readInHeader(b), { len: u32v(1), opcode: u32v(2), unique: u64v(3), nodeId: u64v(4), uid: u32v(5), gid: u32v(6), pid: u32v(7), extLen: 24 });
  });

  test('fuse_init_in: flags2 counts only with FUSE_INIT_EXT and a body long enough for it', () => {
    const s = S('fuse_init_in');
    const ext = Number(H().constant('FUSE_INIT_EXT'));
    const flags = 0x00401001;
    const at = 40;
    const read = (f: number, len = s.size) => {
      const body = buildStruct(s, { major: 7, minor: u32v(8), max_readahead: u32v(9), flags: f, flags2: 0x3, unused: 0x77 });
      return wire.readInitIn(Buffer.concat([Buffer.alloc(at, FILL), body]), at, len);
    };
    assert.deepEqual(read(flags | ext), { major: 7, minor: u32v(8), maxReadahead: u32v(9), flags: BigInt(flags | ext) | (3n << 32n) });
    assert.equal(read(flags).flags, BigInt(flags), 'no FUSE_INIT_EXT: flags2 is not read');
    // Kernels before 7.36 send only up to flags; whatever follows is not theirs.
    assert.equal(read(flags | ext, s.field('flags2').offset).flags, BigInt(flags | ext));
  });

  test('fuse_setattr_in', () => {
    const s = S('fuse_setattr_in');
    const values = {
      valid: u32v(1), padding: u32v(2), fh: u64v(3), size: u64v(4), lock_owner: u64v(5), atime: u64v(6), mtime: u64v(7), ctime: u64v(8),
      atimensec: u32v(9), mtimensec: u32v(10), ctimensec: u32v(11), mode: u32v(12), unused4: u32v(13), uid: u32v(14), gid: u32v(15), unused5: u32v(16),
    };
    assert.deepEqual(Object.keys(values).sort(), s.fields.map((f) => f.name).sort());
    const b = Buffer.concat([Buffer.alloc(40, FILL), buildStruct(s, values)]);
    assert.deepEqual(wire.readSetattrIn(b, 40), {
      valid: values.valid, fh: values.fh, size: values.size, atime: values.atime, mtime: values.mtime, ctime: values.ctime,
      atimeNsec: values.atimensec, mtimeNsec: values.mtimensec, ctimeNsec: values.ctimensec, mode: values.mode, uid: values.uid, gid: values.gid,
    });
  });
});

/**
 * Request bodies the session reads in place: each built from the header's layout with a
 * distinct value in every field (padding and unused ones too, so a field read from the
 * wrong offset shows), sent to a real Session, and compared with what its method is given.
 */
describe('request bodies the session reads', needsHeader, () => {
  /** Each field of `name` with a distinct value, and the values by field. */
  function body(name: string, values: Record<string, number>): Buffer {
    const s = S(name);
    s.fields.forEach((f, i) => {
      if (f.count !== 0 && !(f.name in values)) values[f.name] = u32v(90 + i);
    });
    return buildStruct(s, values);
  }

  // Names and data are views of the request, valid until it is answered: copied as strings at once.
  const str = (x: unknown) => (Buffer.isBuffer(x) ? x.toString() : x);
  const OK = { nodeId: 0, generation: 0, entryTimeout: 0, attrTimeout: 0, attr: ATTR };
  const calls: unknown[][] = [];
  const record = (name: string) => (...args: unknown[]): void => {
    calls.push([name, ...args.slice(1).map(str)]);
  };
  const entry = (name: string) => (...args: unknown[]) => {
    calls.push([name, ...args.slice(1).map(str)]);
    return OK;
  };
  const fs = {
    getattr: (...a: unknown[]) => (calls.push(['getattr', ...a.slice(1).map(str)]), { attr: ATTR, timeout: 1 }),
    mknod: entry('mknod'),
    mkdir: entry('mkdir'),
    rename: record('rename'),
    link: entry('link'),
    open: (...a: unknown[]) => (calls.push(['open', ...a.slice(1).map(str)]), { fh: 1, flags: 0 }),
    opendir: (...a: unknown[]) => (calls.push(['opendir', ...a.slice(1).map(str)]), { fh: 1, flags: 0 }),
    create: (...a: unknown[]) => (calls.push(['create', ...a.slice(1).map(str)]), { ...OK, open: { fh: 1, flags: 0 } }),
    read: (...a: unknown[]) => (calls.push(['read', ...a.slice(1, 5)]), 0),
    write: (...a: unknown[]) => (calls.push(['write', ...a.slice(1).map(str)]), 3),
    release: record('release'),
    releasedir: record('releasedir'),
    flush: record('flush'),
    fsync: record('fsync'),
    fsyncdir: record('fsyncdir'),
    setxattr: (...a: unknown[]): void => {
      calls.push(['setxattr', a[1], String(a[2]), String(a[3]), a[4]]);
    },
    getxattr: (...a: unknown[]) => (calls.push(['getxattr', a[1], String(a[2])]), Buffer.from('v')),
    listxattr: (...a: unknown[]) => (calls.push(['listxattr', a[1]]), Buffer.from('n\0')),
    access: record('access'),
    forget: (node: number, count: number): void => {
      calls.push(['forget', node, count]);
    },
    fallocate: record('fallocate'),
    lseek: (...a: unknown[]) => (calls.push(['lseek', ...a.slice(1)]), 0),
    copyFileRange: (...a: unknown[]) => (calls.push(['copyFileRange', ...a.slice(1)]), 0),
  };
  const N = 0x1234;

  /** Sends one request and returns the calls it made (names as strings). */
  async function sent(k: import('../helpers/fuse-kernel').FakeKernel, opcode: number, payload: Buffer, noReply = false): Promise<unknown[][]> {
    calls.length = 0;
    if (noReply) k.send(opcode, payload, { nodeId: N, noReply });
    else assert.equal((await k.call(opcode, payload, { nodeId: N })).error, 0);
    await k.settle();
    return calls.map((c) => [...c]);
  }

  test('getattr_in: fh only with FUSE_GETATTR_FH', async () => {
    await withSession(fs, async (k) => {
      const fh = Number(H().constant('FUSE_GETATTR_FH'));
      assert.deepEqual(await sent(k, P.Op.GETATTR, body('fuse_getattr_in', { getattr_flags: fh, fh: u64v(1) })), [['getattr', N, u64v(1)]]);
      assert.deepEqual(await sent(k, P.Op.GETATTR, body('fuse_getattr_in', { getattr_flags: 0, fh: u64v(1) })), [['getattr', N, null]]);
    });
  });

  test('mknod_in, mkdir_in and the name after them', async () => {
    await withSession(fs, async (k) => {
      const mk = body('fuse_mknod_in', { mode: 0o20644, rdev: u32v(1), umask: 0o022 });
      assert.deepEqual(await sent(k, P.Op.MKNOD, bytes(mk, cstr('dev'))), [['mknod', N, 'dev', 0o20644, u32v(1), 0o022]]);
      const md = body('fuse_mkdir_in', { mode: 0o40755, umask: 0o027 });
      assert.deepEqual(await sent(k, P.Op.MKDIR, bytes(md, cstr('dir'))), [['mkdir', N, 'dir', 0o40755, 0o027]]);
    });
  });

  test('rename_in and rename2_in, each followed by the two names', async () => {
    await withSession(fs, async (k) => {
      const r = body('fuse_rename_in', { newdir: u64v(2) });
      assert.deepEqual(await sent(k, P.Op.RENAME, bytes(r, cstr('old'), cstr('new'))), [['rename', N, 'old', u64v(2), 'new', 0]]);
      const r2 = body('fuse_rename2_in', { newdir: u64v(3), flags: 4 });
      assert.deepEqual(await sent(k, P.Op.RENAME2, bytes(r2, cstr('a'), cstr('b'))), [['rename', N, 'a', u64v(3), 'b', 4]]);
    });
  });

  test('link_in: the old node, the new parent in the header, the new name', async () => {
    await withSession(fs, async (k) => {
      const l = body('fuse_link_in', { oldnodeid: u64v(4) });
      assert.deepEqual(await sent(k, P.Op.LINK, bytes(l, cstr('hard'))), [['link', u64v(4), N, 'hard']]);
    });
  });

  test('open_in (open, opendir) and create_in', async () => {
    await withSession(fs, async (k) => {
      const o = body('fuse_open_in', { flags: 0o100002 });
      assert.deepEqual(await sent(k, P.Op.OPEN, o), [['open', N, 0o100002]]);
      assert.deepEqual(await sent(k, P.Op.OPENDIR, o), [['opendir', N, 0o100002]]);
      const c = body('fuse_create_in', { flags: 0o101, mode: 0o100600, umask: 0o077 });
      assert.deepEqual(await sent(k, P.Op.CREATE, bytes(c, cstr('new'))), [['create', N, 'new', 0o100600, 0o077, 0o101]]);
    });
  });

  test('read_in and write_in (with its data after the 40 bytes)', async () => {
    await withSession(fs, async (k) => {
      const r = body('fuse_read_in', { fh: u64v(5), offset: u64v(6), size: 4096 });
      assert.deepEqual(await sent(k, P.Op.READ, r), [['read', N, u64v(5), u64v(6), 4096]]);
      const w = body('fuse_write_in', { fh: u64v(7), offset: u64v(8), size: 3, write_flags: 5, flags: 0o2 });
      assert.deepEqual(await sent(k, P.Op.WRITE, bytes(w, Buffer.from('xyz'))), [['write', N, u64v(7), u64v(8), 'xyz', 5, 0o2]]);
    });
  });

  test('release_in (release, releasedir), flush_in, fsync_in (fsync, fsyncdir)', async () => {
    await withSession(fs, async (k) => {
      const r = body('fuse_release_in', { fh: u64v(9), flags: 0o2, release_flags: 1 });
      assert.deepEqual(await sent(k, P.Op.RELEASE, r), [['release', N, u64v(9), 0o2, 1]]);
      assert.deepEqual(await sent(k, P.Op.RELEASEDIR, r), [['releasedir', N, u64v(9), 0o2]]);
      const f = buildStruct(S('fuse_flush_in'), { fh: u64v(10), unused: 0xffffffff, padding: 0xeeeeeeee, lock_owner: 0xfedcba9876543210n });
      assert.deepEqual(await sent(k, P.Op.FLUSH, f), [['flush', N, u64v(10), 0xfedcba9876543210n]]);
      const datasync = Number(H().constant('FUSE_FSYNC_FDATASYNC'));
      for (const op of [P.Op.FSYNC, P.Op.FSYNCDIR]) {
        const method = op === P.Op.FSYNC ? 'fsync' : 'fsyncdir';
        assert.deepEqual(await sent(k, op, body('fuse_fsync_in', { fh: u64v(11), fsync_flags: datasync })), [[method, N, u64v(11), true]]);
        assert.deepEqual(await sent(k, op, body('fuse_fsync_in', { fh: u64v(11), fsync_flags: 0 })), [[method, N, u64v(11), false]]);
      }
    });
  });

  test('setxattr_in: the old 8-byte form (FUSE_COMPAT_SETXATTR_IN_SIZE) without FUSE_SETXATTR_EXT', async () => {
    const want = DEFAULT_OPTIONS.want & ~BigInt(P.Init.SETXATTR_EXT);
    await withSession(fs, async (k) => {
      const compat = Number(H().constant('FUSE_COMPAT_SETXATTR_IN_SIZE'));
      const x = body('fuse_setxattr_in', { size: 5, flags: 2 }).subarray(0, compat);
      assert.deepEqual(await sent(k, P.Op.SETXATTR, bytes(x, cstr('user.a'), Buffer.from('value'))), [['setxattr', N, 'user.a', 'value', 2]]);
    }, { want });
  });

  test('setxattr_in: the whole struct with FUSE_SETXATTR_EXT', async () => {
    await withSession(fs, async (k) => {
      const x = body('fuse_setxattr_in', { size: 5, flags: 1, setxattr_flags: 1 });
      assert.deepEqual(await sent(k, P.Op.SETXATTR, bytes(x, cstr('user.b'), Buffer.from('VALUE'))), [['setxattr', N, 'user.b', 'VALUE', 1]]);
    });
  });

  test('getxattr_in (getxattr, listxattr), access_in', async () => {
    await withSession(fs, async (k) => {
      const g = body('fuse_getxattr_in', { size: 100 });
      assert.deepEqual(await sent(k, P.Op.GETXATTR, bytes(g, cstr('user.c'))), [['getxattr', N, 'user.c']]);
      assert.deepEqual(await sent(k, P.Op.LISTXATTR, g), [['listxattr', N]]);
      assert.deepEqual(await sent(k, P.Op.ACCESS, body('fuse_access_in', { mask: 6 })), [['access', N, 6]]);
    });
  });

  test('forget_in, batch_forget_in with its fuse_forget_one records', async () => {
    await withSession(fs, async (k) => {
      assert.deepEqual(await sent(k, P.Op.FORGET, body('fuse_forget_in', { nlookup: u64v(12) }), true), [['forget', N, u64v(12)]]);
      const one = (n: number, c: number) => buildStruct(S('fuse_forget_one'), { nodeid: n, nlookup: c });
      const batch = bytes(body('fuse_batch_forget_in', { count: 3 }), one(u64v(13), 1), one(u64v(14), u64v(15)), one(7, 2));
      assert.deepEqual(await sent(k, P.Op.BATCH_FORGET, batch, true), [['forget', u64v(13), 1], ['forget', u64v(14), u64v(15)], ['forget', 7, 2]]);
    });
  });

  test('interrupt_in names the request', async () => {
    let release!: () => void;
    const seen: { req?: { interrupted: boolean } } = {};
    const statfs = (req: { interrupted: boolean }) => {
      seen.req = req;
      return new Promise<never>((_, reject) => {
        release = () => reject(Object.assign(new Error('EINTR'), { errno: 4 }));
      });
    };
    await withSession({ statfs }, async (k) => {
      const target = k.send(P.Op.STATFS, Buffer.alloc(0));
      await k.settle();
      k.send(P.Op.INTERRUPT, buildStruct(S('fuse_interrupt_in'), { unique: target }), { noReply: true });
      await k.settle();
      assert.equal(seen.req?.interrupted, true);
      release();
      assert.equal((await k.reply(target)).error, -4);
    });
  });

  test('fallocate_in, lseek_in, copy_file_range_in', async () => {
    await withSession(fs, async (k) => {
      const fa = body('fuse_fallocate_in', { fh: u64v(16), offset: u64v(17), length: u64v(18), mode: 3 });
      assert.deepEqual(await sent(k, P.Op.FALLOCATE, fa), [['fallocate', N, u64v(16), u64v(17), u64v(18), 3]]);
      const ls = body('fuse_lseek_in', { fh: u64v(19), offset: u64v(20), whence: 3 });
      assert.deepEqual(await sent(k, P.Op.LSEEK, ls), [['lseek', N, u64v(19), u64v(20), 3]]);
      const cf = buildStruct(S('fuse_copy_file_range_in'), { fh_in: u64v(21), off_in: u64v(22), nodeid_out: u64v(23), fh_out: u64v(24), off_out: u64v(25), len: u64v(26), flags: 2 });
      assert.deepEqual(await sent(k, P.Op.COPY_FILE_RANGE, cf), [['copyFileRange', N, u64v(21), u64v(22), u64v(23), u64v(24), u64v(25), u64v(26), 2]]);
    });
  });
});
