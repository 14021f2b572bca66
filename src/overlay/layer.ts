/**
 * The real directories of the overlay, and how their files are named. Names inside the
 * overlay are byte strings: JS strings of one char per byte (latin1), so any name a layer
 * holds, UTF-8 or not, round-trips; a path becomes a Buffer of those bytes only where it is
 * handed to a system call (layerPath).
 */
import { closeSync, openSync, readFileSync } from 'node:fs';
import { errorFor } from '../errors';
import { lstatx, lstatxAt, type Stat } from '../sys/stat';

/** One real directory of the overlay. Index 0 is the top; the upper, if any, is index 0. */
export interface Layer {
  readonly index: number;
  /** Where the layer's files are reached: through a descriptor held open, see openLayers. */
  readonly root: string;
  /** The directory as it was named on the command line. */
  readonly source: string;
  readonly upper: boolean;
  /** The filesystem the layer is on, as statx names it (`major:minor`). */
  readonly dev: string;
  /** The descriptor holding the layer directory. */
  readonly fd: number;
  /**
   * A lower layer reached through an id-mapped mount: the ids read from it are the ones the
   * overlay shows already (rootful podman 4.3 with --uidmap passes such lowers, and
   * uidmapping= with the same mapping besides). Always false for the upper.
   */
  readonly idmapped: boolean;
}

/** A byte string (one char per byte) as the bytes a system call takes. */
export function bytes(name: string): Buffer {
  return Buffer.from(name, 'latin1');
}

/**
 * The real path of relative overlay path `rel` in a layer. The root itself is `root/.`:
 * `root` is a /proc/self/fd magic link, which lstat would describe as a symlink.
 */
export function layerPath(layer: Layer, rel: string): Buffer {
  return Buffer.from(`${layer.root}/${rel === '' ? '.' : rel}`, 'latin1');
}

/** lstat of relative overlay path `rel` in a layer, through the layer's descriptor; null if nothing is there. */
export function statInLayer(layer: Layer, rel: string): Stat | null {
  return lstatxAt(layer.fd, rel === '' ? '' : Buffer.from(rel, 'latin1'));
}

/** A real path and one more name below it. */
export function childPath(dir: Buffer, name: string): Buffer {
  const out = Buffer.allocUnsafe(dir.length + 1 + name.length);
  dir.copy(out);
  out[dir.length] = 0x2f;
  out.write(name, dir.length + 1, 'latin1');
  return out;
}

/** O_PATH | O_DIRECTORY: a handle on the directory itself, needing no read permission. */
const O_PATH_DIRECTORY = 0o10000000 | 0o200000;

/** The mount id of the mount a descriptor is on (fdinfo's `mnt_id:`, Linux >= 3.15), or null. */
function mountIdOf(fd: number): number | null {
  // /proc is needed anyway: the layers are reached through /proc/self/fd.
  const m = /^mnt_id:\s*(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return m ? Number(m[1]) : null;
}

/**
 * The ids of the id-mapped mounts of this mount namespace: mountinfo lists `idmapped` among
 * a mount's own options (field 6; Linux >= 5.12, which brought id-mapped mounts).
 */
function idmappedMountIds(): Set<number> {
  const ids = new Set<number>();
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ');
    if (fields.length > 5 && fields[5].split(',').includes('idmapped')) ids.add(Number(fields[0]));
  }
  return ids;
}

/**
 * Opens the layer stack: upper first (if any), then lowers top to bottom. Each layer is held
 * by a descriptor and reached through /proc/self/fd/N from then on, never by its name again:
 * podman hands over id-mapped mounts of the lower layers and detaches them as soon as the
 * mount program returns, so the names would lead to empty directories (fuse-overlayfs holds
 * its layers open the same way). Whether each lower is on an id-mapped mount is found out
 * here, while the mount is still attached (a detached mount is in no mountinfo), unless
 * `idmappedLowers` (top first) says so (tests).
 */
export function openLayers(lowers: readonly string[], upper?: string, idmappedLowers?: readonly boolean[]): Layer[] {
  const sources = upper === undefined ? [...lowers] : [upper, ...lowers];
  const first = upper === undefined ? 0 : 1;
  const layers: Layer[] = [];
  let idmappedMounts: Set<number> | undefined;
  const onIdmappedMount = (fd: number): boolean => {
    const id = mountIdOf(fd);
    return id !== null && (idmappedMounts ??= idmappedMountIds()).has(id);
  };
  try {
    for (const [index, source] of sources.entries()) {
      const fd = openSync(source, O_PATH_DIRECTORY);
      const isUpper = upper !== undefined && index === 0;
      const idmapped = !isUpper && (idmappedLowers ? idmappedLowers[index - first] === true : onIdmappedMount(fd));
      const root = `/proc/self/fd/${fd}`;
      layers.push({ index, root, source, upper: isUpper, dev: lstatx(`${root}/.`).dev, fd, idmapped });
    }
  } catch (err) {
    closeLayers(layers);
    throw (err as NodeJS.ErrnoException).code === 'ENOTDIR' ? errorFor('ENOTDIR', String((err as NodeJS.ErrnoException).path)) : err;
  }
  return layers;
}

export function closeLayers(layers: readonly Layer[]): void {
  for (const l of layers) closeSync(l.fd);
}
