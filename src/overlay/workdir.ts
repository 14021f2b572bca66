/**
 * The work directory: where copies and new entries are built before one rename puts them
 * into the upper layer, so no reader and no crash ever sees a half-made entry there.
 * Like the kernel, the server owns `WORKDIR/work` and empties it at every mount, which
 * removes whatever a crash left behind.
 */
import { closeSync, constants as fsc, mkdirSync, openSync, rmSync } from 'node:fs';
import { errorFor } from '../errors';
import { setTimeout as sleep } from 'node:timers/promises';
import { tryLockExclusive } from '../sys/libc';
import { lstatx } from '../sys/stat';

const LOCK_WAIT_MS = 5000;
const LOCK_RETRY_MS = 50;

export class Workdir {
  private counter = 0;

  private constructor(readonly dir: string, private lock: number | null) {}

  /**
   * Locks the work directory for this mount (held until the process ends), then empties (or
   * creates) WORKDIR/work. Refuses a workdir another mount uses, whose copies in progress
   * would be deleted, and one on another filesystem than upper. A mount that has just been
   * unmounted may hold the lock a moment longer (its server notices the unmount by polling),
   * so podman's unmount-then-mount of a container is waited for, up to LOCK_WAIT_MS.
   */
  static async prepare(workdir: string, upperDev: string): Promise<Workdir> {
    const lock = openSync(workdir, fsc.O_RDONLY | fsc.O_DIRECTORY);
    const until = Date.now() + LOCK_WAIT_MS;
    while (!tryLockExclusive(lock)) {
      if (Date.now() > until) {
        closeSync(lock);
        throw errorFor('EBUSY', `workdir ${workdir} is in use by another mount`);
      }
      await sleep(LOCK_RETRY_MS);
    }
    const dir = `${workdir}/work`;
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { mode: 0o700 });
    if (lstatx(dir).dev !== upperDev) throw errorFor('EXDEV', `workdir ${workdir} is not on the upper filesystem`);
    return new Workdir(dir, lock);
  }

  /** Lets another mount use the work directory. */
  release(): void {
    if (this.lock !== null) closeSync(this.lock);
    this.lock = null;
  }

  /** A fresh name inside the work directory. */
  temp(): string {
    return `${this.dir}/#${process.pid.toString(16)}-${(this.counter++).toString(16)}`;
  }
}
