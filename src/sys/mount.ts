/** mount(2), umount2(2), and passing a descriptor over a Unix socket (fusermount3's way). */
import koffi from 'koffi';
import { cPath, errno, fail, libc, type PathArg } from './ffi';

const c = {
  mount: libc.func('int mount(const char *source, const char *target, const char *type, unsigned long flags, const char *data)'),
  umount2: libc.func('int umount2(const char *target, int flags)'),
  socketpair: libc.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)'),
};

export const MS_RDONLY = 1;
export const MS_NOSUID = 2;
export const MS_NODEV = 4;
export const MS_NOEXEC = 8;
export const MS_SYNCHRONOUS = 16;
export const MS_DIRSYNC = 128;
export const MS_NOATIME = 1024;
export const MS_NODIRATIME = 2048;
export const MS_RELATIME = 1 << 21;
export const MS_STRICTATIME = 1 << 24;
export const MS_LAZYTIME = 1 << 25;
export const MNT_DETACH = 2;

export function mount(source: string, target: PathArg, type: string, flags: number, data: string): void {
  if (c.mount(source, cPath(target), type, flags, data) < 0) fail('mount', target);
}

export function umount2(target: PathArg, flags: number): void {
  if (c.umount2(cPath(target), flags) < 0) fail('umount2', target);
}

const AF_UNIX = 1;
export const SOCK_STREAM = 1;
/** Keeps message boundaries: one write is one read, as on /dev/fuse. */
export const SOCK_SEQPACKET = 5;
const SOCK_CLOEXEC = 0o2000000;

/**
 * A connected pair of Unix stream sockets, close-on-exec: a child gets one only through its
 * stdio list (which dups it into place without the flag).
 */
export function socketPair(type = SOCK_STREAM): [number, number] {
  const sv = [0, 0];
  if (c.socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) < 0) fail('socketpair', 'AF_UNIX');
  return [sv[0], sv[1]];
}

const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_CMSG_CLOEXEC = 0x40000000;
const MSG_DONTWAIT = 0x40;
const CMSG_HEADER = 16;
const CMSG_SPACE_ONE_FD = 24;

koffi.struct('iovec', { iov_base: 'void *', iov_len: 'size_t' });
koffi.struct('msghdr', {
  msg_name: 'void *', msg_namelen: 'uint32_t', msg_iov: 'iovec *', msg_iovlen: 'size_t',
  msg_control: 'void *', msg_controllen: 'size_t', msg_flags: 'int',
});
const recvmsg = libc.func('int64_t recvmsg(int fd, _Inout_ msghdr *msg, int flags)');

/**
 * Receives one descriptor sent with SCM_RIGHTS on `sock` (waiting for it unless `wait` is
 * false); null if the peer closed the socket without sending one.
 */
export function receiveFd(sock: number, wait = true): number | null {
  const control = Buffer.alloc(CMSG_SPACE_ONE_FD);
  for (;;) {
    const msg = {
      msg_name: null, msg_namelen: 0, msg_iov: [{ iov_base: Buffer.alloc(1), iov_len: 1 }], msg_iovlen: 1,
      msg_control: control, msg_controllen: control.length, msg_flags: 0,
    };
    const n = Number(recvmsg(sock, msg, MSG_CMSG_CLOEXEC | (wait ? 0 : MSG_DONTWAIT)));
    if (n < 0) {
      if (errno() === 4) continue;
      fail('recvmsg', `fd ${sock}`);
    }
    if (n === 0 || msg.msg_controllen < CMSG_HEADER + 4) return null;
    // struct cmsghdr: len (size_t), level, type, then the descriptors.
    if (control.readInt32LE(8) !== SOL_SOCKET || control.readInt32LE(12) !== SCM_RIGHTS) return null;
    return control.readInt32LE(CMSG_HEADER);
  }
}
