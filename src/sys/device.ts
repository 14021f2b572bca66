/**
 * Raw descriptor I/O for the FUSE device. These return a negative errno instead of throwing:
 * EAGAIN, EINTR and ENODEV are the device's ordinary answers, met on every idle moment and at
 * every unmount, and an exception each time would cost more than the call.
 */
import { cPath, errno, fail, libc, type PathArg } from './ffi';

const c = {
  open: libc.func('int open(const char *path, int flags, int mode)'),
  close: libc.func('int close(int fd)'),
  read: libc.func('int64_t read(int fd, void *buf, size_t count)'),
  write: libc.func('int64_t write(int fd, const void *buf, size_t count)'),
  poll: libc.func('int poll(void *fds, uint64_t nfds, int timeout)'),
};

export const O_RDWR = 2;
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;
const POLLIN = 1;

/** Opens a device (or any file); throws with the errno on failure. */
export function openRaw(path: PathArg, flags: number): number {
  const fd = c.open(cPath(path), flags, 0) as number;
  if (fd < 0) fail('open', path);
  return fd;
}

export function closeRaw(fd: number): void {
  c.close(fd);
}

/** Bytes read into `buf`, or -errno. */
export function readRaw(fd: number, buf: Buffer, length = buf.length): number {
  const n = Number(c.read(fd, buf, length));
  return n < 0 ? -errno() : n;
}

/** Bytes written from the first `length` bytes of `buf`, or -errno. */
export function writeRaw(fd: number, buf: Buffer, length: number): number {
  const n = Number(c.write(fd, buf, length));
  return n < 0 ? -errno() : n;
}

/** One pollfd for reading `fd`; a buffer per caller, since an async poll keeps it in use. */
export function pollSet(fd: number): Buffer {
  const set = Buffer.alloc(8);
  set.writeInt32LE(fd, 0);
  set.writeInt16LE(POLLIN, 4);
  return set;
}

/** Waits up to `timeoutMs` for the descriptor of `set`: >0 ready (or in error), 0 timed out, or -errno. */
export function pollRaw(set: Buffer, timeoutMs: number): number {
  set.writeInt16LE(0, 6);
  const n = c.poll(set, 1, timeoutMs) as number;
  return n < 0 ? -errno() : n;
}

/**
 * The same wait on one of libuv's pool threads, calling back on the event loop. Its result
 * cannot carry an errno (that belongs to the pool thread): only ready, or not.
 */
export function pollRawAsync(set: Buffer, timeoutMs: number, done: (ready: boolean) => void): void {
  set.writeInt16LE(0, 6);
  (c.poll as unknown as { async(...args: unknown[]): void }).async(set, 1, timeoutMs, (err: unknown, n: number) => done(!err && n > 0));
}

const fcntl = libc.func('int fcntl(int fd, int cmd, int arg)');
const F_GETFL = 3;
const F_SETFL = 4;

/** Makes reads of `fd` answer EAGAIN instead of waiting. */
export function setNonBlocking(fd: number): void {
  const flags = fcntl(fd, F_GETFL, 0) as number;
  if (flags < 0 || (fcntl(fd, F_SETFL, flags | O_NONBLOCK) as number) < 0) fail('fcntl', `fd ${fd}`);
}

const ioctl = libc.func('int ioctl(int fd, unsigned long request, void *arg)');

/** An ioctl of the FUSE device that passes a struct: its answer (>= 0), or -errno. */
export function deviceIoctl(fd: number, request: number, arg: Buffer): number {
  const n = ioctl(fd, request, arg) as number;
  return n < 0 ? -errno() : n;
}
