/**
 * The user whose request creates an entry, from libfuse's fuse_get_context(), which
 * fuse-native does not pass on. src/sys/caller.c, built into dist/native/libtsovl-caller.so,
 * defines a `fuse_new` that wraps the creating operations to publish their caller; loaded
 * here with RTLD_GLOBAL before fuse-native's addon, it is the `fuse_new` the addon binds to.
 * This module must therefore be imported before 'fuse-native' (src/fuse/native.ts does).
 */
import { join } from 'node:path';
import koffi from 'koffi';

export const CALLER_LIBRARY = join(__dirname, '../../native/libtsovl-caller.so');

export interface Caller {
  readonly uid: number;
  readonly gid: number;
}

let loadError: string | null = null;
let getCaller: ((out: Uint32Array) => number) | null = null;
let getWrapped: (() => number) | null = null;
try {
  const lib = koffi.load(CALLER_LIBRARY, { global: true });
  getCaller = lib.func('int tsovl_caller(uint32_t *out)') as (out: Uint32Array) => number;
  getWrapped = lib.func('int tsovl_wrapped(void)') as () => number;
} catch (err) {
  loadError = `cannot load ${CALLER_LIBRARY}: ${(err as Error).message}`;
}

/** Why the library could not be loaded, or null. */
export function callerLibraryError(): string | null {
  return loadError;
}

/** How many mounts made in this process have their creating operations wrapped. */
export function wrappedMounts(): number {
  return getWrapped ? getWrapped() : 0;
}

const callerOut = new Uint32Array(4);

/**
 * The caller (uid, gid as the kernel passed them) of the creating operation JS is serving;
 * null outside one, or without the library. Call it synchronously in that operation's handler.
 */
export function currentCaller(): Caller | null {
  if (!getCaller) return null;
  if (getCaller(callerOut) !== 1) return null;
  return { uid: callerOut[0], gid: callerOut[1] };
}
