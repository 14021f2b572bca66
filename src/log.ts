import type { Debugger } from 'debug';

/**
 * Debug output, off unless DEBUG=ts-overlayfs:* (or -d) turns it on. The `debug` package is
 * loaded only then: loading it is ~10 ms of every mount's start, for output that is off.
 */
type Logger = ((format: string, ...args: unknown[]) => void) & { enabled: boolean };

const off: Logger = Object.assign(() => undefined, { enabled: false });
const NAMES = { op: 'ts-overlayfs:op', mount: 'ts-overlayfs:mount', error: 'ts-overlayfs:error' } as const;

export const log: Record<keyof typeof NAMES, Logger> = { op: off, mount: off, error: off };

function loadDebug(): typeof import('debug') {
  const createDebug = require('debug') as typeof import('debug');
  for (const key of Object.keys(NAMES) as (keyof typeof NAMES)[]) log[key] = createDebug(NAMES[key]) as Debugger & Logger;
  return createDebug;
}

if (process.env.DEBUG) loadDebug();

export function enableDebug(): void {
  loadDebug().enable([process.env.DEBUG, 'ts-overlayfs:*'].filter(Boolean).join(','));
}
