/**
 * The work directory: where copies and new entries are built before one rename puts them
 * into the upper layer, so no reader and no crash ever sees a half-made entry there.
 * Like the kernel, the server owns `WORKDIR/work` and empties it at every mount, which
 * removes whatever a crash left behind.
 */
import { mkdirSync, rmSync, statSync } from 'node:fs';
import { errorFor } from '../errors';

export class Workdir {
  private counter = 0;

  private constructor(readonly dir: string) {}

  /** Empties (or creates) WORKDIR/work; refuses one on another filesystem than upper. */
  static prepare(workdir: string, upperDev: number): Workdir {
    const dir = `${workdir}/work`;
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { mode: 0o700 });
    if (statSync(dir).dev !== upperDev) throw errorFor('EXDEV', `workdir ${workdir} is not on the upper filesystem`);
    return new Workdir(dir);
  }

  /** A fresh name inside the work directory. */
  temp(): string {
    return `${this.dir}/#${process.pid.toString(16)}-${(this.counter++).toString(16)}`;
  }
}
