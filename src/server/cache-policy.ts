/**
 * How long the kernel may keep what the server answered.
 *
 * Nothing changes the layers behind the mount's back (the kernel's rule too), and names
 * change only through the mount, so names and negative lookups may be kept as long as the
 * kernel likes. A read-only mount never changes: attributes and file data are kept too. A
 * writable mount has the kernel ask for attributes each time and drop a file's cached data
 * at each open, since the overlay changes some of them behind the kernel's back (a copy-up
 * gives a lower hard link a number and link count of its own). `timeout=N` sets the names'
 * and the attributes' timeout.
 */
const FOREVER = 1e9;
const WRITABLE_ATTR_SECONDS = 0;

export interface CachePolicy {
  /** Seconds the kernel may keep a name, a name's absence, and attributes. */
  readonly entry: number;
  readonly negative: number;
  readonly attr: number;
  /** Keep a file's cached data across opens (FOPEN_KEEP_CACHE). */
  readonly keepCache: boolean;
}

export function cachePolicy(writable: boolean, timeout?: number, keepCache = false): CachePolicy {
  const names = timeout ?? FOREVER;
  return {
    entry: names,
    negative: names,
    attr: timeout ?? (writable ? WRITABLE_ATTR_SECONDS : FOREVER),
    keepCache: keepCache || !writable,
  };
}
