/**
 * fuse-overlayfs's uidmapping/gidmapping and squash options: ids stored in the layers are
 * shown through the mount as other ids, and ids given to chown are stored mapped back.
 * A range INSIDE:OUTSIDE:COUNT shows stored id INSIDE+k as OUTSIDE+k; rootful podman with
 * `--uidmap 0:100000:65536` passes `uidmapping=0:100000:65536`, so the container's root
 * (host uid 100000) owns the image's root-owned files without chown-ing the layers.
 *
 * Podman 4.3 also passes its lowers as id-mapped mounts with that same mapping: ids read
 * through them are in the shown form already. Those are shown as they are (squash still
 * applies), and mapped back where they are stored (copy-up), so the upper layer keeps the
 * unshifted ids podman's diff and commit expect.
 */
import { errorFor } from '../errors';

export interface IdRange {
  readonly inside: number;
  readonly outside: number;
  readonly count: number;
}

/** The id shown for stored ids outside every range, and stored for unmapped ids (as the kernel's overflow id). */
export const OVERFLOW_ID = 65534;

/** (uid_t)-1 / (gid_t)-1: the id chown is asked to leave as it is. */
export const NO_ID = 0xffffffff;

/** `0:100000:65536` or `:0:100000:65536`, several ranges joined by ':'. */
export function parseIdMapping(value: string): IdRange[] {
  const fields = value.replace(/^:/, '').split(':');
  const nums = fields.map((f) => (/^\d+$/.test(f) ? Number(f) : NaN));
  if (nums.length === 0 || nums.length % 3 !== 0 || nums.some((n) => !Number.isSafeInteger(n))) {
    throw errorFor('EINVAL', `invalid id mapping: ${value} (expected INSIDE:OUTSIDE:COUNT[:...])`);
  }
  const ranges: IdRange[] = [];
  for (let i = 0; i < nums.length; i += 3) ranges.push({ inside: nums[i], outside: nums[i + 1], count: nums[i + 2] });
  return ranges;
}

export interface IdMapOptions {
  readonly uidRanges?: readonly IdRange[];
  readonly gidRanges?: readonly IdRange[];
  /** Show every entry as owned by this uid / gid (squash_to_uid, squash_to_gid, squash_to_root). */
  readonly squashUid?: number;
  readonly squashGid?: number;
}

function shown(id: number, ranges: readonly IdRange[] | undefined): number {
  if (!ranges || ranges.length === 0) return id;
  for (const r of ranges) if (id >= r.inside && id < r.inside + r.count) return r.outside + (id - r.inside);
  return OVERFLOW_ID;
}

function stored(id: number, ranges: readonly IdRange[] | undefined): number {
  if (!ranges || ranges.length === 0) return id;
  for (const r of ranges) if (id >= r.outside && id < r.outside + r.count) return r.inside + (id - r.outside);
  return OVERFLOW_ID;
}

export class IdMap {
  constructor(private readonly opts: IdMapOptions = {}) {}

  get identity(): boolean {
    const o = this.opts;
    return !o.uidRanges?.length && !o.gidRanges?.length && o.squashUid === undefined && o.squashGid === undefined;
  }

  /** The uid shown for a stored one, or for one `alreadyShown` (read through an id-mapped mount). */
  shownUid(uid: number, alreadyShown = false): number {
    return this.opts.squashUid ?? (alreadyShown ? uid : shown(uid, this.opts.uidRanges));
  }

  shownGid(gid: number, alreadyShown = false): number {
    return this.opts.squashGid ?? (alreadyShown ? gid : shown(gid, this.opts.gidRanges));
  }

  storedUid(uid: number): number {
    return stored(uid, this.opts.uidRanges);
  }

  storedGid(gid: number): number {
    return stored(gid, this.opts.gidRanges);
  }
}
