/**
 * Where the fuzzer runs. Privileged: as real root, layers marked with trusted.overlay.*.
 * Unprivileged: as an ordinary user inside `unshare -Urm` (see unprivileged.ts), where only
 * id 0 is mapped, trusted.* cannot be written, and the kernel's oracle mount needs
 * `userxattr` (user.overlay.*), as ts-overlayfs then picks by itself.
 */
import { readFileSync } from 'node:fs';

export interface FuzzMode {
  readonly unprivileged: boolean;
  /** The overlay's private xattrs in the layers. */
  readonly overlayXattrs: 'trusted.overlay.' | 'user.overlay.';
  /** Extra options of the kernel's overlay mount. */
  readonly kernelOptions: readonly string[];
}

const PRIVILEGED: FuzzMode = { unprivileged: false, overlayXattrs: 'trusted.overlay.', kernelOptions: [] };
const UNPRIVILEGED: FuzzMode = { unprivileged: true, overlayXattrs: 'user.overlay.', kernelOptions: ['userxattr'] };

let current = PRIVILEGED;

export function fuzzMode(): FuzzMode {
  return current;
}

export function setUnprivileged(on: boolean): void {
  current = on ? UNPRIVILEGED : PRIVILEGED;
}

/** True in the machine's own user namespace (where uid 0 is the real root). */
export function inInitialUserNamespace(): boolean {
  const [inside, outside, count] = readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\s+/).map(Number);
  return inside === 0 && outside === 0 && count === 4294967295;
}
