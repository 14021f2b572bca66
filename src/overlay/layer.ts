import { closeSync, fstatSync, openSync } from 'node:fs';
import { errorFor } from '../errors';

/** One real directory of the overlay. Index 0 is the top; the upper, if any, is index 0. */
export interface Layer {
  readonly index: number;
  /** Where the layer's files are reached: through a descriptor held open, see openLayers. */
  readonly root: string;
  /** The directory as it was named on the command line. */
  readonly source: string;
  readonly upper: boolean;
  readonly dev: number;
  /** The descriptor holding the layer directory. */
  readonly fd: number;
}

/**
 * A layer path for a relative overlay path. The root itself is `root/.`: `root` is a
 * /proc/self/fd magic link, which lstat would describe as a symlink.
 */
export function layerPath(layer: Layer, rel: string): string {
  return `${layer.root}/${rel === '' ? '.' : rel}`;
}

/** O_PATH | O_DIRECTORY: a handle on the directory itself, needing no read permission. */
const O_PATH_DIRECTORY = 0o10000000 | 0o200000;

/**
 * Opens the layer stack: upper first (if any), then lowers top to bottom. Each layer is held
 * by a descriptor and reached through /proc/self/fd/N from then on, never by its name again:
 * podman hands over id-mapped mounts of the lower layers and detaches them as soon as the
 * mount program returns, so the names would lead to empty directories (fuse-overlayfs holds
 * its layers open the same way).
 */
export function openLayers(lowers: readonly string[], upper?: string): Layer[] {
  const sources = upper === undefined ? [...lowers] : [upper, ...lowers];
  const layers: Layer[] = [];
  try {
    for (const [index, source] of sources.entries()) {
      const fd = openSync(source, O_PATH_DIRECTORY);
      layers.push({ index, root: `/proc/self/fd/${fd}`, source, upper: upper !== undefined && index === 0, dev: fstatSync(fd).dev, fd });
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
