/**
 * How long the kernel may keep what the server answered.
 *
 * Nothing changes the layers behind the mount's back (the kernel's rule too), and one node
 * id stands for one overlay inode, so what the kernel is told stays true but where the
 * overlay itself changes it: a copy-up (a new ctime, and for a lower hard link a number and
 * link count of its own), which the server tells the kernel of (FUSE_NOTIFY_INVAL_INODE).
 * Names, negative lookups and attributes are therefore kept as long as the kernel likes
 * (file data and listings too: see src/server/overlay-fs.ts). `timeout=N` sets the names'
 * and the attributes' timeout.
 */
const FOREVER = 1e9;

export interface CachePolicy {
  /** Seconds the kernel may keep a name, a name's absence, and attributes. */
  readonly entry: number;
  readonly negative: number;
  readonly attr: number;
}

export function cachePolicy(timeout?: number): CachePolicy {
  const seconds = timeout ?? FOREVER;
  return { entry: seconds, negative: seconds, attr: seconds };
}
