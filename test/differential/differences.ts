/**
 * Where ts-overlayfs and kernel overlayfs are allowed to differ, and what the fuzzer does about
 * each: the generator avoids it, or the comparator leaves it out. Nothing else is excused: any
 * other difference the fuzzer sees is reported.
 */

export interface Difference {
  /** Short name, used in reports. */
  readonly name: string;
  /** Deliberate (a documented choice or limit of ts-overlayfs), a kernel quirk, or inherent to comparing two mounts. */
  readonly kind: 'deliberate' | 'kernel-quirk' | 'inherent';
  readonly why: string;
  /** How the fuzzer accounts for it. */
  readonly handling: string;
}

export const DIFFERENCES: readonly Difference[] = [
  {
    name: 'wh-names',
    kind: 'deliberate',
    why: 'names starting with `.wh.` cannot be created through ts-overlayfs (EINVAL, as fuse-overlayfs); the kernel allows them',
    handling: 'the generator never makes such names',
  },
  {
    name: 'overlay-xattrs',
    kind: 'deliberate',
    why: 'setxattr/removexattr of trusted.overlay.* and user.overlay.* is EPERM on ts-overlayfs; kernel 6.7+ stores them escaped',
    handling: 'the generator only uses user.a, user.color, user.empty, user.long',
  },
  {
    name: 'ms-times',
    kind: 'deliberate',
    why: 'fuse-native carries times as milliseconds (README limits); the layers keep nanoseconds',
    handling: 'times are compared floored to the millisecond',
  },
  {
    name: 'utime-now-omit',
    kind: 'deliberate',
    why: 'fuse-native turns UTIME_NOW and UTIME_OMIT into the same value, so `touch -a`/`touch -m` without a date also set the other time to now (README limits)',
    handling: 'utimes always sets both times to given values',
  },
  {
    name: 'noop-chown',
    kind: 'deliberate',
    why: 'chown(path, -1, -1) copies the entry up in the kernel (breaking a lower hard link); libfuse 2 drops a setattr that changes nothing, so ts-overlayfs never sees it (README limits)',
    handling: 'chown never leaves both ids unchanged',
  },
  {
    name: 'open-unlinked-links',
    kind: 'deliberate',
    why: 'a file unlinked (or renamed over) while open waits in the workdir until its last close (libfuse 2 renames it to .fuse_hidden*; README), so its other hard links show one link more until then',
    handling: 'the generator does not unlink or rename over the open name of a file that has other hard links',
  },
  {
    name: 'orphan-in-removed-dir',
    kind: 'deliberate',
    why: 'a file unlinked while open lives on as a hidden libfuse 2 node in its directory; once that directory is removed, libfuse can no longer name the file and answers ENOENT for I/O and fstat through the descriptor (close still works) (README)',
    handling: 'the generator does not remove (rmdir, or rename over) a directory that holds a file unlinked while open',
  },
  {
    name: 'removed-open-nonfile',
    kind: 'deliberate',
    why: 'libfuse 2 keeps only regular files it opened alive under a hidden name; a directory or fifo removed (or renamed over) while open can no longer be named by its path API, so fstat through the descriptor fails with ENOENT where the kernel answers (nlink 0, or the lower fifo\'s own) (README)',
    handling: 'the generator does not remove or rename over the open name of anything but a regular file',
  },
  {
    name: 'fifo-links',
    kind: 'deliberate',
    why: 'the hard links of a fifo are separate pipes through ts-overlayfs: the kernel keeps a fifo\'s pipe on its inode, and libfuse 2 gives each name its own inode, so a reader opened through one name is no reader for another (a non-blocking writer gets ENXIO) and data does not pass between the names (README)',
    handling: 'the generator does not open a fifo that has other links (by any of its names, or a symlink to one)',
  },
  {
    name: 'hidden-target-whiteout-owner',
    kind: 'deliberate',
    why: 'rename(a, b) over an open b: libfuse 2 first hides b, which leaves a whiteout at b where a lower b exists; the rename then moves that whiteout to a\'s place, owned root:root, where the kernel makes a new one, of the directory\'s group in a set-group-ID directory (only the owner of a whiteout in the upper layer differs)',
    handling: 'the generator does not rename over an open name from a set-group-ID directory',
  },
  {
    name: 'open-target-hardlink-rename',
    kind: 'deliberate',
    why: 'rename(a, b) where a and b are hard links of one file and b is open: libfuse 2 first hides the open b (.fuse_hidden*), so a then moves onto b; the kernel leaves both names (README)',
    handling: 'the generator does not rename onto an open name of the same file',
  },
  {
    name: 'userns-ino',
    kind: 'kernel-quirk',
    why: 'with userxattr (unprivileged mode) the kernel cannot record where a copied-up file came from (its user.overlay.origin is empty), so the file shows its lower st_ino while its dentry stays cached and the upper file\'s st_ino after: a hard link made to it shows another number, and after a remount every name does; ts-overlayfs keeps one number for all names. Renaming one of those names onto another fails there with ESTALE (POSIX: success, nothing changes, as on ts-overlayfs)',
    handling: 'in unprivileged mode the views\' hard-link groups are not compared (nlink still is, and the upper layers\' hard links are), and the generator does not rename a name with other links onto another such name',
  },
  {
    name: 'whiteout-in-unmerged-dir',
    kind: 'kernel-quirk',
    why: 'kernel 6.18 lists a whiteout that sits in a lower directory it does not merge (a directory of one layer only, or an opaque one) in readdir, while lookup gives ENOENT; ts-overlayfs hides it',
    handling: 'the generator puts whiteouts only in lower directories that the kernel merges with a layer below',
  },
  {
    name: 'failed-rename-opaque',
    kind: 'kernel-quirk',
    why: 'a rename of an upper directory into a merged directory that fails because the target is a non-empty directory (ENOTEMPTY from the upper filesystem) still leaves the source marked opaque in the kernel\'s upper layer; ts-overlayfs changes nothing on failure',
    handling: 'the generator does not rename a directory over a non-empty directory (rmdir exercises ENOTEMPTY)',
  },
  {
    name: 'fresh-times',
    kind: 'inherent',
    why: 'times taken from the clock during a run (a create, a write, a change in a directory) differ between two mounts a moment apart',
    handling: 'generated and utimes times are all before 2022; an mtime is compared unless both sides show a time from the clock (2022 or later)',
  },
  {
    name: 'atime-ctime',
    kind: 'inherent',
    why: 'atime moves with reads (relatime) depending on whether a read reached the layer file or the page cache; ctime is always the clock',
    handling: 'atime and ctime are not compared',
  },
  {
    name: 'inode-numbers',
    kind: 'deliberate',
    why: 'st_ino values are ts-overlayfs\'s own 32-bit numbers (README); st_dev differs per mount; st_blocks depends on the copy-up method',
    handling: 'only which names share an st_ino (hard-link groups) is compared; st_blocks is not',
  },
  {
    name: 'readdir-during-change',
    kind: 'inherent',
    why: 'POSIX leaves unspecified whether a name added or removed while a directory stream is open is reported',
    handling: 'readdir around a change must report every name present both before and after it, nothing that was in neither, and no duplicates',
  },
  {
    name: 'kernel-bookkeeping-xattrs',
    kind: 'deliberate',
    why: 'the kernel records trusted.overlay.origin, .impure, ... in its upper layer for its own use; ts-overlayfs writes none (no index/redirect/xino)',
    handling: 'upper layers are compared without trusted.overlay.* xattrs other than opaque',
  },
  {
    name: 'shared-whiteout-inode',
    kind: 'inherent',
    why: 'the kernel makes whiteouts as hard links of one shared whiteout inode; ts-overlayfs makes each with mknod',
    handling: 'whiteouts are left out of the upper layer\'s hard-link groups and nlink',
  },
];

/** Switches the generator and comparator read; each names an entry above. */
export const AVOID = {
  /** whiteout-in-unmerged-dir */
  whiteoutInUnmergedDir: true,
  /** failed-rename-opaque */
  failedRenameOpaque: true,
} as const;

/** One line per difference, for --help and reports. */
export function describeDifferences(): string {
  return DIFFERENCES.map((d) => `  ${d.name} (${d.kind}): ${d.why}. Fuzzer: ${d.handling}.`).join('\n');
}
