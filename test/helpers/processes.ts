/** Finding ts-overlayfs processes, and waiting for conditions, in tests. */
import { readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

export interface TsProcess {
  readonly pid: number;
  readonly args: readonly string[];
}

/** Running ts-overlayfs processes (launcher or daemon), other than this one. */
export function tsProcesses(): TsProcess[] {
  const found: TsProcess[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    let args: string[];
    try {
      args = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
    } catch {
      continue; // The process ended while we looked.
    }
    if (args.some((a) => a.endsWith('ts-overlayfs') || a.endsWith('cli/main.js'))) found.push({ pid: Number(entry), args });
  }
  return found;
}

/** Daemons serving `mnt`: the mountpoint is one of their arguments, as with fuse-overlayfs. */
export function daemonsFor(mnt: string): number[] {
  return tsProcesses().filter((p) => p.args.includes(mnt)).map((p) => p.pid);
}

/** Polls `cond` until it holds or `ms` have passed; its last answer. */
export async function eventually(cond: () => boolean, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return true;
    await sleep(20);
  }
  return cond();
}
