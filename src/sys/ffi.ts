/**
 * The one handle on libc that every module of src/sys/ binds its functions from, and the
 * conventions they share: paths are JS strings (UTF-8, as Node's fs takes them) or Buffers
 * (the bytes of a name as they are, for names that are not UTF-8); failures carry the errno.
 */
import koffi from 'koffi';
import { OvlError } from '../errors';

export const libc = koffi.load('libc.so.6');

export type PathArg = string | Buffer;

const NUL = Buffer.alloc(1);

/** A path as a C string: koffi adds the NUL to strings, a Buffer needs one of its own. */
export function cPath(path: PathArg): string | Buffer {
  if (typeof path === 'string') return path;
  return path.length > 0 && path[path.length - 1] === 0 ? path : Buffer.concat([path, NUL]);
}

/** The errno of the call that just failed. */
export function errno(): number {
  return koffi.errno();
}

export function printable(path: PathArg): string {
  return typeof path === 'string' ? path : path.toString('latin1');
}

/** Throws the errno of the call that just failed, naming the call and what it was about. */
export function fail(call: string, what: PathArg): never {
  throw new OvlError(koffi.errno(), `${call} ${printable(what)}`);
}

export const Errno = koffi.os.errno as Readonly<Record<string, number>>;
