// The part of fuse-native 2.2.6 this project uses (the package ships no types).
declare module 'fuse-native' {
  type Cb<T extends unknown[] = []> = (err: number, ...result: T) => void;
  export interface Operations {
    init?(cb: Cb): void;
    getattr?(path: string, cb: Cb<[unknown?]>): void;
    fgetattr?(path: string, fd: number, cb: Cb<[unknown?]>): void;
    readdir?(path: string, cb: Cb<[string[]?, unknown[]?]>): void;
    readlink?(path: string, cb: Cb<[string?]>): void;
    open?(path: string, flags: number, cb: Cb<[number?]>): void;
    opendir?(path: string, flags: number, cb: Cb<[number?]>): void;
    read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (res: number) => void): void;
    write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (res: number) => void): void;
    release?(path: string, fd: number, cb: Cb): void;
    releasedir?(path: string, fd: number, cb: Cb): void;
    statfs?(path: string, cb: Cb<[unknown?]>): void;
    access?(path: string, mode: number, cb: Cb): void;
    getxattr?(path: string, name: string, position: number, cb: Cb<[Buffer?]>): void;
    listxattr?(path: string, cb: Cb<[string[]?]>): void;
    [op: string]: unknown;
  }
  export interface FuseOptions {
    timeout?: number | false;
    [opt: string]: unknown;
  }
  class Fuse {
    constructor(mnt: string, ops: Operations, opts?: FuseOptions);
    readonly mnt: string;
    readonly opts: FuseOptions;
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    static readonly ENOENT: number;
  }
  export default Fuse;
}
