/**
 * What one layer's directory contributes to a merged directory: its visible candidate names
 * and the names it whites out. Read once per directory and kept, so a lookup in a merged
 * directory costs a map probe per layer instead of several stat calls.
 */
import { readdirSync } from 'node:fs';
import { hasCode } from '../errors';
import { lstatxOrNull } from '../sys/stat';
import { isWhiteout, isWhiteoutName, OPAQUE_WHITEOUT, whiteoutTarget } from './format';
import { childPath } from './layer';

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

/** Reads a layer directory (names as byte strings); one that vanished or is not one contributes nothing. */
export function readListing(dir: Buffer): LayerListing {
  let dirents;
  try {
    dirents = readdirSync(dir, { withFileTypes: true, encoding: 'latin1' });
  } catch (err) {
    if (hasCode(err, 'ENOENT', 'ENOTDIR')) return emptyListing();
    throw err;
  }
  const entries = new Map<string, EntryKind>();
  const whiteouts = new Set<string>();
  let opaqueMarker = false;
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
      const st = lstatxOrNull(childPath(dir, name));
      if (st === null) continue;
      if (isWhiteout(st)) whiteouts.add(name);
      else entries.set(name, (st.mode & 0o170000) === 0o040000 ? 'dir' : 'other');
    } else {
      entries.set(name, 'other');
    }
  }
  return { entries, whiteouts, opaqueMarker };
}
