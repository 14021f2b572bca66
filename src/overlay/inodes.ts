/**
 * Inode numbers shown through the mount. FUSE (through fuse-native) carries st_ino as 32 bits,
 * so real inode numbers of several layers cannot be passed on as they are; instead each real
 * file, identified by (st_dev, st_ino), gets a small number of its own for the life of the
 * mount. All names of a hard-linked file therefore share one number, and different files
 * never do. A copied-up file keeps its number by aliasing the new identity to the old one.
 */
export const ROOT_INO = 1;

export class InodeTable {
  private readonly byIdentity = new Map<string, number>();
  private next = ROOT_INO + 1;

  private static key(dev: number, ino: number): string {
    return `${dev}:${ino}`;
  }

  /** The number of the real file (dev, ino), assigning a new one on first sight. */
  numberOf(dev: number, ino: number): number {
    const key = InodeTable.key(dev, ino);
    let n = this.byIdentity.get(key);
    if (n === undefined) {
      n = this.next++;
      this.byIdentity.set(key, n);
    }
    return n;
  }

  /** Pins (dev, ino) to an existing number: a file replaced by its copy keeps its number. */
  alias(dev: number, ino: number, number: number): void {
    this.byIdentity.set(InodeTable.key(dev, ino), number);
  }

  /** Gives the root directory its fixed number, whatever layer it comes from. */
  pinRoot(dev: number, ino: number): void {
    this.alias(dev, ino, ROOT_INO);
  }
}
