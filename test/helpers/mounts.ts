/**
 * Mounting in tests. ts-overlayfs always runs in a child process (the test process must
 * never serve the mount it reads). Every mount is registered and torn down even when a test
 * fails or the runner exits; a mount that does not go away is detached lazily.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { BIN } from './env';
import { eventually } from './processes';

export interface Mounted {
  readonly mountpoint: string;
  unmount(): Promise<void>;
}

const live = new Set<string>();

process.on('exit', () => {
  for (const mnt of live) spawnSync('umount', ['-l', mnt]);
});

export function isMounted(mountpoint: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((line) => line.split(' ')[4] === mountpoint);
}

function lazyUnmount(mountpoint: string): void {
  if (isMounted(mountpoint)) spawnSync('umount', ['-l', mountpoint]);
}

export interface LayerDirs {
  lowers: string[];
  upper?: string;
  work?: string;
}

export function optionString(dirs: LayerDirs, extra: string[] = []): string {
  const opts = [`lowerdir=${dirs.lowers.join(':')}`];
  if (dirs.upper) opts.push(`upperdir=${dirs.upper}`, `workdir=${dirs.work}`);
  return [...opts, ...extra].join(',');
}

export interface TsMounted extends Mounted {
  /** What the daemon wrote to stderr so far (its log, with DEBUG set in `env`). */
  stderr(): string;
}

/** Starts `ts-overlayfs -f` in a child and waits until the mount is in the mount table. */
export async function mountTs(dirs: LayerDirs, mountpoint: string, extra: string[] = [], env?: NodeJS.ProcessEnv): Promise<TsMounted> {
  const child: ChildProcess = spawn(BIN, ['-f', '-o', optionString(dirs, extra), mountpoint], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: env ?? process.env,
  });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => { stderr += c.toString(); });
  let exited = false;
  const exit = new Promise<void>((resolve) => child.on('exit', () => { exited = true; resolve(); }));
  live.add(mountpoint);
  const up = await eventually(() => exited || isMounted(mountpoint), 15000);
  if (!up || exited) {
    child.kill('SIGKILL');
    lazyUnmount(mountpoint);
    live.delete(mountpoint);
    throw new Error(`ts-overlayfs did not mount ${mountpoint}: ${stderr.trim() || 'timeout'}`);
  }
  return {
    mountpoint,
    stderr: () => stderr,
    async unmount() {
      if (!exited) child.kill('SIGTERM');
      const done = await Promise.race([exit.then(() => true), sleep(10000, undefined, { ref: false }).then(() => false)]);
      if (!done) child.kill('SIGKILL');
      lazyUnmount(mountpoint);
      live.delete(mountpoint);
      if (!done) throw new Error(`ts-overlayfs did not exit on SIGTERM: ${stderr}`);
    },
  };
}

/**
 * The kernel features ts-overlayfs lacks, pinned off so that the oracle does not depend on
 * the kernel's build defaults (CONFIG_OVERLAY_FS_REDIRECT_DIR, _INDEX, _METACOPY) or module
 * parameters. `redirect_dir=nofollow` rather than `off`: `off` still follows redirects when
 * the module's redirect_always_follow is set (Debian's default), and is then refused
 * together with `userxattr` ("conflicting options", kernel 6.18); `nofollow` neither makes
 * nor follows redirects, as ts-overlayfs, in every mode.
 */
export const KERNEL_PINNED_OPTIONS: readonly string[] = ['redirect_dir=nofollow', 'index=off', 'metacopy=off'];

/** Mounts kernel overlayfs on the same kind of layer set (extra options come after the pinned ones). */
export async function mountKernel(dirs: LayerDirs, mountpoint: string, extra: string[] = []): Promise<Mounted> {
  const opts = optionString(dirs, [...KERNEL_PINNED_OPTIONS, ...extra]);
  const r = spawnSync('mount', ['-t', 'overlay', 'overlay', '-o', opts, mountpoint], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`kernel overlay mount failed: ${r.stderr}`);
  live.add(mountpoint);
  return {
    mountpoint,
    async unmount() {
      const u = spawnSync('umount', [mountpoint]);
      if (u.status !== 0) lazyUnmount(mountpoint);
      live.delete(mountpoint);
    },
  };
}

/** Runs fuse-overlayfs in the foreground in a child, as an oracle for AUFS-style layers. */
export async function mountFuseOverlayfs(dirs: LayerDirs, mountpoint: string, extra: string[] = []): Promise<Mounted> {
  const child = spawn('fuse-overlayfs', ['-f', '-o', optionString(dirs, extra), mountpoint], { stdio: 'ignore' });
  live.add(mountpoint);
  if (!(await eventually(() => isMounted(mountpoint), 10000))) {
    child.kill('SIGKILL');
    live.delete(mountpoint);
    throw new Error('fuse-overlayfs did not mount');
  }
  return {
    mountpoint,
    async unmount() {
      spawnSync('fusermount3', ['-u', mountpoint]);
      lazyUnmount(mountpoint);
      child.kill('SIGKILL');
      live.delete(mountpoint);
    },
  };
}
