import { constants } from 'node:os';

const errnoByCode = constants.errno as Record<string, number>;
const codeByErrno = new Map<number, string>(
  Object.entries(errnoByCode).map(([code, no]) => [no, code]),
);

/** An error that carries a positive POSIX errno, as the FUSE adapter needs it. */
export class OvlError extends Error {
  readonly errno: number;
  readonly code: string;

  constructor(errno: number, message?: string) {
    const code = codeByErrno.get(errno) ?? `E${errno}`;
    super(message ? `${code}: ${message}` : code);
    this.name = 'OvlError';
    this.errno = errno;
    this.code = code;
  }
}

export const Errno = errnoByCode as Readonly<Record<
  'EPERM' | 'ENOENT' | 'EIO' | 'EBADF' | 'EACCES' | 'EEXIST' | 'EXDEV' | 'ENOTDIR' | 'EISDIR' |
  'EINVAL' | 'ENOSPC' | 'EROFS' | 'ERANGE' | 'ENOTEMPTY' | 'ENODATA' | 'ENOTSUP' | 'ELOOP' |
  'ENAMETOOLONG' | 'ENOSYS' | 'EOPNOTSUPP' | 'EBUSY' | 'ENOTCONN' | 'ESTALE', number>>;

export function errorFor(code: keyof typeof Errno, message?: string): OvlError {
  return new OvlError(Errno[code], message);
}

/**
 * The positive errno of any error: ours, Node's (whose `errno` is negative on POSIX) or
 * a code-only one. Unknown errors map to EIO; the caller decides whether to log them.
 */
export function errnoOf(err: unknown): number {
  if (err && typeof err === 'object') {
    const e = err as { errno?: unknown; code?: unknown };
    if (typeof e.errno === 'number' && e.errno !== 0) return Math.abs(e.errno);
    if (typeof e.code === 'string' && errnoByCode[e.code] !== undefined) return errnoByCode[e.code];
  }
  return Errno.EIO;
}

/** True when `err` carries one of the given errno codes. */
export function hasCode(err: unknown, ...codes: (keyof typeof Errno)[]): boolean {
  const no = errnoOf(err);
  return codes.some((c) => Errno[c] === no);
}

export function isKnownErrno(err: unknown): boolean {
  if (!err || typeof err !== 'object') return false;
  const e = err as { errno?: unknown; code?: unknown };
  return typeof e.errno === 'number' || (typeof e.code === 'string' && e.code in errnoByCode);
}
