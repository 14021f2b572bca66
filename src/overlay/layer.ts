import { promises as fsp } from 'node:fs';
import { errorFor } from '../errors';

/** One real directory of the overlay. Index 0 is the top; the upper, if any, is index 0. */
export interface Layer {
  readonly index: number;
  readonly root: string;
  readonly upper: boolean;
  readonly dev: number;
}

/** A layer path for a relative overlay path ('' is the layer root). */
export function layerPath(layer: Layer, rel: string): string {
  return rel === '' ? layer.root : `${layer.root}/${rel}`;
}

/** Opens the layer stack: upper first (if any), then lowers top to bottom. */
export async function openLayers(lowers: readonly string[], upper?: string): Promise<Layer[]> {
  const roots = upper === undefined ? [...lowers] : [upper, ...lowers];
  return Promise.all(
    roots.map(async (root, index) => {
      const st = await fsp.stat(root);
      if (!st.isDirectory()) throw errorFor('ENOTDIR', root);
      return { index, root, upper: upper !== undefined && index === 0, dev: st.dev };
    }),
  );
}
