/** Whether this process is root of the initial user namespace, or root only inside its own. */
import { readFileSync } from 'node:fs';

/**
 * True for real root. Root inside a user namespace (rootless podman, `unshare -Ur`) may not
 * set trusted.* xattrs, so there the overlay writes the kernel's userxattr format instead.
 */
export function isInitialRoot(): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    const map = readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\s+/);
    return map.length === 3 && map[0] === '0' && map[1] === '0' && map[2] === '4294967295';
  } catch {
    return true;
  }
}
