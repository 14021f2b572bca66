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
    name: 'userns-ino',
    kind: 'kernel-quirk',
    why: 'with userxattr (unprivileged mode) the kernel cannot record where a copied-up file came from (its user.overlay.origin is empty), so the file shows its lower st_ino while its dentry stays cached and the upper file\'s st_ino after: a hard link made to it shows another number, and after a remount every name does; ts-overlayfs keeps one number for all names. Renaming one of those names onto another fails there with ESTALE (POSIX: success, nothing changes, as on ts-overlayfs). The names are then separate overlay inodes, so a fifo\'s hard links are separate pipes there (a reader opened by one name is no reader for a writer opened by another: ENXIO), where ts-overlayfs has one',
    handling: 'in unprivileged mode the views\' hard-link groups are not compared (nlink still is, and the upper layers\' hard links are), and the generator does not rename a name with other links onto another such name, nor open a fifo that has other links (by any of its names, or through a symlink)',
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
    handling: 'generated and utimes times are all before 2022 (or UTIME_NOW, a clock time); an mtime is compared, to the nanosecond, unless both sides show a time from the clock (2022 or later)',
  },
  {
    name: 'atime-ctime',
    kind: 'inherent',
    why: 'atime moves with reads (relatime) depending on whether a read reached the layer file or the page cache; ctime is always the clock',
    handling: 'atime and ctime are not compared',
  },
  {
    name: 'inode-numbers',
    kind: 'inherent',
    why: 'both show the real inode number of an entry (a copied-up one keeps its lower number, except a file with other hard links below, as the kernel\'s overlay without index), but each mount has its own upper directory, so an entry made or copied (a hard-linked file) there has a different st_ino on each side; st_dev differs per mount; st_blocks depends on the copy-up method',
    handling: 'an entry showing a lower inode\'s number must show the same one on both sides, and other entries none; beyond that only which names share an st_ino (hard-link groups) is compared; st_blocks is not. The final and cross-mount views leave out which lower number is kept: neither implementation reads the other\'s record of it (the kernel\'s trusted.overlay.origin file handle, ts-overlayfs\'s trusted.overlay.tsovl.ino)',
  },
  {
    name: 'copy-up-holes',
    kind: 'deliberate',
    why: 'the kernel copies a sparse file up in 1 MiB chunks from each data extent it finds (holes inside a chunk become allocated zeros); ts-overlayfs copies each data extent exactly, so SEEK_DATA/SEEK_HOLE in a copied-up sparse file can answer differently (the data read is the same)',
    handling: 'sparse lower files have only layouts that both copies keep: a hole, then data to the end, or a whole 1 MiB chunk of data at a block boundary, then a hole to the end',
  },
  {
    name: 'unwritten-space',
    kind: 'inherent',
    why: 'space fallocate gave a file without writing it (ext4\'s unwritten extents) is a hole to SEEK_DATA/SEEK_HOLE, but data where the layer file\'s pages are in the page cache: kernel overlayfs reads the layer file for every read through it, ts-overlayfs\'s reads may be answered by the kernel\'s cache of the mount\'s own file and never reach the layer file, so where the answer lands depends on what was read before (and on memory pressure, on either)',
    handling: 'lseek with SEEK_DATA/SEEK_HOLE in a file that fallocate (not punching a hole) gave space is compared by outcome (ok or the errno), not by the offset found, and the descriptor is then set to the offset asked for, so that later reads at its offset read the same bytes',
  },
  {
    name: 'dir-seek',
    kind: 'inherent',
    why: 'lseek(SEEK_DATA/SEEK_HOLE) on a directory: the kernel\'s FUSE client answers it itself (generic_file_llseek against the directory\'s st_size: ENXIO past it), never asking ts-overlayfs; kernel overlayfs passes it to the real directory of an unmerged one (ext4: any offset is data) and answers EINVAL for a merged one',
    handling: 'the generator does not lseek with SEEK_DATA/SEEK_HOLE on a directory',
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
