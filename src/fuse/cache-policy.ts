/**
 * How long the kernel may keep what we answered, as libfuse options.
 *
 * Every request that reaches us costs ~0.2 ms in fuse-native's thread hand-offs (a kernel or
 * fuse-overlayfs request costs a few microseconds), so caching decides speed. Nothing changes
 * the layers behind the mount's back (the kernel's rule too), and names change only through
 * the mount, so names and negative lookups may be kept as long as the kernel likes.
 *
 * Attributes and data are the catch on a writable mount: libfuse 2's path API gives each name
 * of a hard link its own kernel inode, so a change made through one name (a write, a chmod, a
 * new link) would reach the other names' cached attributes and pages only when these expire,
 * and programs would read stale sizes and data. A writable mount therefore has the kernel ask
 * for attributes every time and re-validate cached data at each open (auto_cache); a
 * read-only mount never changes and keeps everything. `timeout=N` overrides both.
 */
const FOREVER = 1000000;
const WRITABLE_ATTR_SECONDS = 0;

export function cacheOptions(writable: boolean, timeout?: number): string[] {
  const names = timeout ?? FOREVER;
  const attrs = timeout ?? (writable ? WRITABLE_ATTR_SECONDS : FOREVER);
  const options = [`entry_timeout=${names}`, `negative_timeout=${names}`, `attr_timeout=${attrs}`];
  if (writable) options.push('auto_cache', `ac_attr_timeout=${attrs}`);
  else options.push('kernel_cache');
  return options;
}
