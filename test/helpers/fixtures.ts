/** Layer sets used by several tests. Trees are listed top layer first. */
import { randomBytes } from 'node:crypto';
import { makedev, type Tree } from './layers';

const T0 = Date.UTC(2021, 4, 6, 7, 8, 9) + 321;
/** A version 2 file capability (`setcap cap_net_raw+ep`): chown and writes drop it. */
export const FILE_CAP = Buffer.from('0100000200200000000000000000000000000000', 'hex');

/** Every read-path rule, in the kernel's own format (char 0/0 whiteouts, opaque xattrs). */
export function kernelFormatLayers(): Tree[] {
  const top: Tree = {
    'file-over-dir': { kind: 'file', data: 'a file hides the dir below\n' },
    'dir-over-file': { kind: 'dir' },
    'dir-over-file/inside': { kind: 'file', data: 'in' },
    'gone-file': { kind: 'whiteout' },
    'gone-dir': { kind: 'whiteout' },
    'opaque': { kind: 'dir', opaque: 'trusted', mtime: T0 },
    'opaque/mine': { kind: 'file', data: 'only this' },
    'merged/from-top': { kind: 'file', data: 'top' },
    'merged/both': { kind: 'file', data: 'top wins', mode: 0o600 },
    'merged/sub/t': { kind: 'file', data: 't' },
    'merged/gone': { kind: 'whiteout' },
    'modes/setuid': { kind: 'file', data: '#!/bin/sh\n', mode: 0o4755 },
    'modes/capable': { kind: 'file', data: 'cap', mode: 0o4755, uid: 1234, gid: 5678, xattrs: { 'security.capability': FILE_CAP } },
    'modes/none': { kind: 'file', data: 'x', mode: 0o000 },
    'modes/sticky': { kind: 'dir', mode: 0o1777 },
    'owners/odd': { kind: 'file', data: 'o', uid: 1234, gid: 5678, mtime: T0 + 1000 },
    'names/with space': { kind: 'file', data: 's' },
    'names/ünïcødé ✓': { kind: 'file', data: 'u' },
    'names/co:lon': { kind: 'file', data: 'c' },
    'names/-leading-dash': { kind: 'file', data: 'd' },
    'names/.hidden': { kind: 'file', data: 'h' },
    'links/rel': { kind: 'symlink', target: '../merged/both' },
    'links/abs': { kind: 'symlink', target: '/etc/hostname' },
    'links/dangling': { kind: 'symlink', target: 'nowhere/at/all' },
    'links/to-dir': { kind: 'symlink', target: '../deep' },
    'xattrs/f': { kind: 'file', data: 'x', xattrs: { 'user.color': 'blue', 'user.empty': '' } },
    'special/fifo': { kind: 'fifo' },
    'special/null': { kind: 'device', type: 'char', rdev: makedev(1, 3), mode: 0o666, uid: 1234, gid: 5678 },
  };
  const middle: Tree = {
    'file-over-dir/below': { kind: 'file', data: 'hidden' },
    'dir-over-file': { kind: 'file', data: 'hidden file' },
    'gone-file': { kind: 'file', data: 'hidden' },
    'gone-dir/x': { kind: 'file', data: 'hidden' },
    'opaque/hidden': { kind: 'file', data: 'hidden by opaque' },
    'merged/from-middle': { kind: 'file', data: 'middle' },
    'merged/both': { kind: 'file', data: 'middle loses' },
    'merged/sub/m': { kind: 'file', data: 'm' },
    'merged/gone': { kind: 'file', data: 'hidden' },
    'deep/a/b/c/d/e/f/g/h/leaf': { kind: 'file', data: 'deep leaf' },
    'hard/one': { kind: 'file', data: 'linked' },
    'hard/two': { kind: 'hardlink', to: 'hard/one' },
    'hard/sub/three': { kind: 'hardlink', to: 'hard/one' },
    'big/random': { kind: 'file', data: randomBytes(3 * 1024 * 1024 + 17) },
    'big/sparse': { kind: 'sparse', size: 64 * 1024 * 1024, data: 'tail', at: 40 * 1024 * 1024 },
    'big/empty': { kind: 'file', data: '' },
    'xattrs/g': { kind: 'file', data: 'g', xattrs: { 'user.k': 'v'.repeat(300) } },
    'special/sock': { kind: 'socket', mode: 0o755 },
  };
  const bottom: Tree = {
    'merged/from-bottom': { kind: 'file', data: 'bottom' },
    'merged/sub/b': { kind: 'file', data: 'b' },
    'opaque/deeper': { kind: 'file', data: 'hidden by opaque too' },
    'deep/a/b/c/other': { kind: 'file', data: 'merged deep' },
    'only-bottom': { kind: 'dir', mode: 0o750, uid: 42, gid: 43, mtime: T0 + 2000 },
    'only-bottom/f': { kind: 'file', data: 'bottom only', mtime: T0 + 3000 },
  };
  return [top, middle, bottom];
}
