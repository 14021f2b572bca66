/**
 * The inode numbers the mount shows. As kernel overlayfs does, a file shows the number of its
 * real inode, so numbers are stable across mounts of the same layers; layers on different
 * filesystems are told apart by the filesystem's place among the layers' filesystems, in the
 * high bits (as the kernel's xino does). A copied-up file keeps the number it had below:
 * copy-up records it on the copy (ORIGIN_INO), and a lookup in the upper layer reads it back.
 */
import type { Stat } from '../sys/stat';

/** Bits left to the real inode number: the rest says which filesystem (JS numbers are exact to 2^53). */
const INO_BITS = 48;
const MAX_FILESYSTEMS = 2 ** (53 - INO_BITS);
const TWO_INO_BITS = 2 ** INO_BITS;
/** Numbers given to inodes too large to show as they are start here (never a real shown number). */
const OVERFLOW_BASE = (MAX_FILESYSTEMS - 1) * TWO_INO_BITS;

/** The xattr (in the overlay's own namespace) holding the number a copied-up entry keeps. */
export function originInoXattr(namespace: 'trusted' | 'user'): string {
  return `${namespace}.overlay.tsovl.ino`;
}

export class InodeNumbers {
  private readonly filesystems = new Map<string, number>();
  private readonly overflow = new Map<string, number>();

  /** `devs`: the layers' filesystems, top first; their order fixes the numbers. */
  constructor(devs: readonly string[]) {
    for (const dev of devs) if (!this.filesystems.has(dev)) this.filesystems.set(dev, this.filesystems.size);
  }

  /** The number shown for the real inode `st`. */
  of(st: Stat): number {
    let fs = this.filesystems.get(st.dev);
    if (fs === undefined) {
      fs = this.filesystems.size;
      this.filesystems.set(st.dev, fs);
    }
    if (st.inoHigh < TWO_INO_BITS / 2 ** 32 && fs < MAX_FILESYSTEMS - 1) return fs * TWO_INO_BITS + st.ino;
    // Beyond what the scheme can show: a number of its own for the life of the mount.
    const key = `${st.dev}:${st.inoHigh}:${st.inoLow}`;
    let n = this.overflow.get(key);
    if (n === undefined) {
      n = OVERFLOW_BASE + this.overflow.size + 1;
      this.overflow.set(key, n);
    }
    return n;
  }
}

/** The number recorded in an ORIGIN_INO xattr value, or null if it holds none. */
export function parseOriginIno(value: Buffer | null): number | null {
  if (value === null) return null;
  const text = value.toString('latin1');
  if (!/^\d{1,16}$/.test(text)) return null;
  const n = Number(text);
  return Number.isSafeInteger(n) && n > 0 ? n : null;
}
