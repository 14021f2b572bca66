/**
 * The byte layouts of the FUSE messages this package reads and writes: little-endian structs
 * of `include/uapi/linux/fuse.h`, every offset written out here (and checked against that
 * header by test/unit/fuse-wire.test.ts). Readers take a buffer and the offset of a struct;
 * writers fill a buffer at an offset and return the size they wrote.
 *
 * u64 fields that carry node ids, handles, offsets and sizes are read as JS numbers: ours
 * are small, and file offsets stay exact up to 2^53.
 */
import { Size } from './protocol';
import type { Attr, Entry, SetAttr, StatFs } from './types';

const TWO_32 = 2 ** 32;

export function readU64(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off) + buf.readUInt32LE(off + 4) * TWO_32;
}

/** Writes a non-negative integer (up to 2^53) as a u64; negative values as their two's complement. */
export function writeU64(buf: Buffer, off: number, value: number): void {
  if (value < 0) {
    buf.writeBigInt64LE(BigInt(value), off);
    return;
  }
  buf.writeUInt32LE(value % TWO_32, off);
  buf.writeUInt32LE(Math.floor(value / TWO_32), off + 4);
}

/** fuse_in_header (40 bytes). */
export interface InHeader {
  len: number;
  opcode: number;
  unique: number;
  nodeId: number;
  uid: number;
  gid: number;
  pid: number;
  /** Length of the extensions after the op's arguments, in bytes (7.36+). */
  extLen: number;
}

export function readInHeader(buf: Buffer): InHeader {
  return {
    len: buf.readUInt32LE(0),
    opcode: buf.readUInt32LE(4),
    unique: readU64(buf, 8),
    nodeId: readU64(buf, 16),
    uid: buf.readUInt32LE(24),
    gid: buf.readUInt32LE(28),
    pid: buf.readUInt32LE(32),
    extLen: buf.readUInt16LE(36) * 8,
  };
}

/** fuse_out_header (16 bytes): `error` is 0 or a negative errno. */
export function writeOutHeader(buf: Buffer, len: number, error: number, unique: number): void {
  buf.writeUInt32LE(len, 0);
  buf.writeInt32LE(error, 4);
  writeU64(buf, 8, unique);
}

/** A NUL-terminated string at `start` (not past `end`): the bytes without the NUL, and where the next field starts. */
export function readCString(buf: Buffer, start: number, end: number): { value: Buffer; next: number } {
  let nul = buf.indexOf(0, start);
  if (nul < 0 || nul >= end) nul = end;
  return { value: buf.subarray(start, nul), next: nul + 1 };
}

function splitSeconds(t: number): [number, number] {
  if (!(t > 0)) return [0, 0];
  const sec = Math.floor(t);
  return [sec, Math.min(999_999_999, Math.round((t - sec) * 1e9))];
}

/** fuse_attr (88 bytes): six u64 (ino, size, blocks, atime, mtime, ctime), then u32s. */
export function writeAttr(buf: Buffer, off: number, a: Attr): number {
  writeU64(buf, off, a.ino);
  writeU64(buf, off + 8, a.size);
  writeU64(buf, off + 16, a.blocks);
  writeU64(buf, off + 24, a.atime);
  writeU64(buf, off + 32, a.mtime);
  writeU64(buf, off + 40, a.ctime);
  buf.writeUInt32LE(a.atimeNsec, off + 48);
  buf.writeUInt32LE(a.mtimeNsec, off + 52);
  buf.writeUInt32LE(a.ctimeNsec, off + 56);
  buf.writeUInt32LE(a.mode >>> 0, off + 60);
  buf.writeUInt32LE(a.nlink >>> 0, off + 64);
  buf.writeUInt32LE(a.uid >>> 0, off + 68);
  buf.writeUInt32LE(a.gid >>> 0, off + 72);
  buf.writeUInt32LE(a.rdev >>> 0, off + 76);
  buf.writeUInt32LE(a.blksize >>> 0, off + 80);
  buf.writeUInt32LE(0, off + 84);
  return Size.ATTR;
}

/** fuse_entry_out (128 bytes). */
export function writeEntryOut(buf: Buffer, off: number, e: Entry): number {
  const [entrySec, entryNsec] = splitSeconds(e.entryTimeout);
  const [attrSec, attrNsec] = splitSeconds(e.attrTimeout);
  writeU64(buf, off, e.nodeId);
  writeU64(buf, off + 8, e.generation);
  writeU64(buf, off + 16, entrySec);
  writeU64(buf, off + 24, attrSec);
  buf.writeUInt32LE(entryNsec, off + 32);
  buf.writeUInt32LE(attrNsec, off + 36);
  writeAttr(buf, off + 40, e.attr);
  return Size.ENTRY_OUT;
}

/** fuse_attr_out (104 bytes). */
export function writeAttrOut(buf: Buffer, off: number, attr: Attr, timeout: number): number {
  const [sec, nsec] = splitSeconds(timeout);
  writeU64(buf, off, sec);
  buf.writeUInt32LE(nsec, off + 8);
  buf.writeUInt32LE(0, off + 12);
  writeAttr(buf, off + 16, attr);
  return Size.ATTR_OUT;
}

/** fuse_open_out (16 bytes): fh, open_flags, and backing_id (7.40; padding before, and 0 where no passthrough). */
export function writeOpenOut(buf: Buffer, off: number, fh: number, flags: number, backingId = 0): number {
  writeU64(buf, off, fh);
  buf.writeUInt32LE(flags >>> 0, off + 8);
  // backing_id since 7.40, padding before.
  buf.writeInt32LE(backingId, off + 12);
  return Size.OPEN_OUT;
}

/** fuse_write_out (8 bytes), also copy_file_range's answer. */
export function writeWriteOut(buf: Buffer, off: number, size: number): number {
  buf.writeUInt32LE(size >>> 0, off);
  buf.writeUInt32LE(0, off + 4);
  return Size.WRITE_OUT;
}

/** fuse_getxattr_out (8 bytes): the size asked for with size 0. */
export function writeGetxattrOut(buf: Buffer, off: number, size: number): number {
  return writeWriteOut(buf, off, size);
}

/** fuse_lseek_out (8 bytes). */
export function writeLseekOut(buf: Buffer, off: number, offset: number): number {
  writeU64(buf, off, offset);
  return Size.LSEEK_OUT;
}

/** fuse_notify_inval_inode_out: the node, and the byte range of its cached data to drop (offset < 0: none). */
export function writeNotifyInvalInodeOut(buf: Buffer, off: number, node: number, offset: number, length: number): number {
  writeU64(buf, off, node);
  buf.writeBigInt64LE(BigInt(offset), off + 8);
  buf.writeBigInt64LE(BigInt(length), off + 16);
  return Size.NOTIFY_INVAL_INODE_OUT;
}

/** fuse_statfs_out = fuse_kstatfs (80 bytes). */
export function writeStatfsOut(buf: Buffer, off: number, s: StatFs): number {
  writeU64(buf, off, s.blocks);
  writeU64(buf, off + 8, s.bfree);
  writeU64(buf, off + 16, s.bavail);
  writeU64(buf, off + 24, s.files);
  writeU64(buf, off + 32, s.ffree);
  buf.writeUInt32LE(s.bsize >>> 0, off + 40);
  buf.writeUInt32LE(s.namelen >>> 0, off + 44);
  buf.writeUInt32LE(s.frsize >>> 0, off + 48);
  buf.fill(0, off + 52, off + Size.STATFS_OUT);
  return Size.STATFS_OUT;
}

/** fuse_init_in: flags 32-63 come in flags2, and only when the kernel sets FUSE_INIT_EXT. */
export interface InitIn {
  major: number;
  minor: number;
  maxReadahead: number;
  flags: bigint;
}

const INIT_EXT = 1 << 30;

export function readInitIn(buf: Buffer, off: number, len: number): InitIn {
  const flags = buf.readUInt32LE(off + 12);
  const hasFlags2 = (flags & INIT_EXT) !== 0 && len >= 20;
  const flags2 = hasFlags2 ? buf.readUInt32LE(off + 16) : 0;
  return {
    major: buf.readUInt32LE(off),
    minor: buf.readUInt32LE(off + 4),
    maxReadahead: buf.readUInt32LE(off + 8),
    flags: BigInt(flags >>> 0) | (BigInt(flags2 >>> 0) << 32n),
  };
}

export interface InitOut {
  major: number;
  minor: number;
  maxReadahead: number;
  flags: bigint;
  maxBackground: number;
  congestionThreshold: number;
  maxWrite: number;
  /** Granularity of the times we report, in ns. */
  timeGran: number;
  maxPages: number;
  /** How deep the backing files of passthrough may be stacked (7.40; 0 without passthrough). */
  maxStackDepth?: number;
}

/** fuse_init_out (64 bytes). */
export function writeInitOut(buf: Buffer, off: number, o: InitOut): number {
  buf.fill(0, off, off + Size.INIT_OUT);
  buf.writeUInt32LE(o.major, off);
  buf.writeUInt32LE(o.minor, off + 4);
  buf.writeUInt32LE(o.maxReadahead, off + 8);
  buf.writeUInt32LE(Number(o.flags & 0xffffffffn), off + 12);
  buf.writeUInt16LE(o.maxBackground, off + 16);
  buf.writeUInt16LE(o.congestionThreshold, off + 18);
  buf.writeUInt32LE(o.maxWrite, off + 20);
  buf.writeUInt32LE(o.timeGran, off + 24);
  buf.writeUInt16LE(o.maxPages, off + 28);
  buf.writeUInt16LE(0, off + 30);
  buf.writeUInt32LE(Number((o.flags >> 32n) & 0xffffffffn), off + 32);
  buf.writeUInt32LE(o.maxStackDepth ?? 0, off + 36);
  return Size.INIT_OUT;
}

/** fuse_setattr_in (88 bytes). */
export function readSetattrIn(buf: Buffer, off: number): SetAttr {
  return {
    valid: buf.readUInt32LE(off),
    fh: readU64(buf, off + 8),
    size: readU64(buf, off + 16),
    atime: readU64(buf, off + 32),
    mtime: readU64(buf, off + 40),
    ctime: readU64(buf, off + 48),
    atimeNsec: buf.readUInt32LE(off + 56),
    mtimeNsec: buf.readUInt32LE(off + 60),
    ctimeNsec: buf.readUInt32LE(off + 64),
    mode: buf.readUInt32LE(off + 68),
    uid: buf.readUInt32LE(off + 76),
    gid: buf.readUInt32LE(off + 80),
  };
}

/** fuse_dirent: ino, off, namelen, type, name, padded to 8 bytes. */
export function direntSize(nameLen: number): number {
  return (Size.DIRENT_HEADER + nameLen + 7) & ~7;
}

export function writeDirent(buf: Buffer, off: number, name: Buffer, ino: number, type: number, next: number): number {
  const size = direntSize(name.length);
  writeU64(buf, off, ino);
  writeU64(buf, off + 8, next);
  buf.writeUInt32LE(name.length, off + 16);
  buf.writeUInt32LE(type, off + 20);
  name.copy(buf, off + 24);
  buf.fill(0, off + 24 + name.length, off + size);
  return size;
}

/** fuse_direntplus: a fuse_entry_out, then a fuse_dirent. */
export function direntPlusSize(nameLen: number): number {
  return Size.ENTRY_OUT + direntSize(nameLen);
}

/** Attributes of nothing: what a negative entry, or a name-only readdirplus entry, carries. */
export const NO_ATTR: Attr = Object.freeze({
  ino: 0, size: 0, blocks: 0, atime: 0, atimeNsec: 0, mtime: 0, mtimeNsec: 0, ctime: 0, ctimeNsec: 0, mode: 0, nlink: 0, uid: 0, gid: 0, rdev: 0, blksize: 0,
});

const NO_ENTRY: Entry = { nodeId: 0, generation: 0, entryTimeout: 0, attrTimeout: 0, attr: NO_ATTR };

export function writeDirentPlus(buf: Buffer, off: number, name: Buffer, entry: Entry | null, ino: number, type: number, next: number): number {
  writeEntryOut(buf, off, entry ?? NO_ENTRY);
  return Size.ENTRY_OUT + writeDirent(buf, off + Size.ENTRY_OUT, name, ino, type, next);
}
