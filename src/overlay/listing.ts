/**
 * What one layer's directory contributes to a merged directory: its visible candidate names
 * and the names it whites out. Read once per directory and kept, so a lookup in a merged
 * directory costs a map probe per layer instead of several stat calls.
 */
import { lstatSync, readdirSync } from 'node:fs';
import { hasCode } from '../errors';
import { isWhiteoutName, isWhiteoutStat, OPAQUE_WHITEOUT, whiteoutTarget } from './format';

export type EntryKind = 'dir' | 'other';

export interface LayerListing {
  /** Real entries of this layer directory, in its readdir order (whiteouts excluded). */
  readonly entries: Map<string, EntryKind>;
  /** Names this layer hides in the layers below it. */
  readonly whiteouts: Set<string>;
  /** Holds `.wh..wh..opq`: the directory hides everything below it. */
  readonly opaqueMarker: boolean;
}

/** A fresh, empty listing (a new directory); each is its own object, as listings change. */
export function emptyListing(): LayerListing {
  return { entries: new Map(), whiteouts: new Set(), opaqueMarker: false };
}

/** Reads a layer directory; a directory that vanished or is not one contributes nothing. */
export async function readListing(dir: string): Promise<LayerListing> {
  let dirents;
  try {
    dirents = readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    if (hasCode(err, 'ENOENT', 'ENOTDIR')) return emptyListing();
    throw err;
  }
  const entries = new Map<string, EntryKind>();
  const whiteouts = new Set<string>();
  let opaqueMarker = false;
  const unknown: string[] = [];
  for (const d of dirents) {
    const name = d.name;
    if (isWhiteoutName(name)) {
      if (name === OPAQUE_WHITEOUT) opaqueMarker = true;
      else {
        const target = whiteoutTarget(name);
        if (target !== null) whiteouts.add(target);
      }
    } else if (d.isDirectory()) {
      entries.set(name, 'dir');
    } else if (d.isCharacterDevice() || !(d.isFile() || d.isSymbolicLink() || d.isFIFO() || d.isSocket() || d.isBlockDevice())) {
      // Character devices may be kernel whiteouts; DT_UNKNOWN needs a stat too.
      unknown.push(name);
      entries.set(name, 'other');
    } else {
      entries.set(name, 'other');
    }
  }
  await Promise.all(
    unknown.map(async (name) => {
      try {
        const st = lstatSync(`${dir}/${name}`);
        if (isWhiteoutStat(st)) {
          entries.delete(name);
          whiteouts.add(name);
        } else if (st.isDirectory()) {
          entries.set(name, 'dir');
        }
      } catch (err) {
        if (!hasCode(err, 'ENOENT')) throw err;
        entries.delete(name);
      }
    }),
  );
  return { entries, whiteouts, opaqueMarker };
}
