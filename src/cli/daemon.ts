/**
 * Daemonizing without fork: something detaches a process that mounts and reports "ready" or
 * the error over a pipe (fd 3), and the command exits only then, so a caller such as podman
 * can use the mount as soon as the command returns. The daemon holds none of the caller's
 * stdin/stdout/stderr afterwards (podman reads stderr to EOF).
 *
 * Two launchers do that: bin/ts-overlayfs, a shell script that starts the daemon with
 * `setsid -f` (one Node start for a mount; the daemon then reads the command line itself,
 * prints its own errors and says only "error"), and, for command lines that script leaves
 * to Node, Node itself, spawning a detached copy of itself with the configuration it read.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import type { MountConfig } from './config';

const CONFIG_ENV = 'TS_OVERLAYFS_DAEMON_CONFIG';
/** Set by bin/ts-overlayfs for the daemon it detached. */
const DETACHED_ENV = 'TS_OVERLAYFS_DETACHED';
const STATUS_FD = 3;
let statusOpen = true;

/** Whether bin/ts-overlayfs started this process detached, to mount and report on fd 3. */
export function detachedByLauncher(): boolean {
  const detached = process.env[DETACHED_ENV] === '1';
  delete process.env[DETACHED_ENV];
  return detached;
}

/** The configuration handed to us by the launcher, if this process is the daemon. */
export function daemonConfig(): MountConfig | null {
  const text = process.env[CONFIG_ENV];
  if (text === undefined) return null;
  delete process.env[CONFIG_ENV];
  return JSON.parse(text) as MountConfig;
}

/**
 * A daemon's garbage is almost all short-lived request buffers: a small young generation
 * keeps its footprint down at no measurable cost in speed (scripts/bench).
 */
const DAEMON_NODE_FLAGS = ['--max-semi-space-size=4'];

/**
 * Launcher side: starts the daemon and resolves with the exit code the launcher should use.
 * The daemon gets the launcher's arguments too, only so that `ps` shows what it serves.
 */
export function launchDaemon(config: MountConfig, entry: string, argv: readonly string[]): Promise<number> {
  return new Promise((resolve) => {
    // Loaded here: a daemon started by bin/ts-overlayfs spawns nothing.
    const { spawn } = require('node:child_process') as typeof import('node:child_process');
    const child = spawn(process.execPath, [...DAEMON_NODE_FLAGS, entry, ...argv], {
      detached: true,
      cwd: '/',
      stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
      env: { ...process.env, [CONFIG_ENV]: JSON.stringify(config) },
    });
    let status = '';
    // What the daemon says before it is ready becomes part of the one error line.
    let said = '';
    child.stderr!.on('data', (chunk: Buffer) => { said += chunk.toString(); });
    const statusPipe = child.stdio[STATUS_FD] as NodeJS.ReadableStream;
    statusPipe.on('data', (chunk: Buffer) => {
      status += chunk.toString();
    });
    const finish = (code: number) => {
      child.stderr!.destroy();
      (statusPipe as unknown as { destroy(): void }).destroy();
      child.unref();
      resolve(code);
    };
    statusPipe.on('end', () => {
      const details = said.split('\n').map((l) => l.trim()).filter(Boolean);
      if (status.startsWith('ready')) {
        for (const line of details) process.stderr.write(`${line}\n`);
        return finish(0);
      }
      const reason = status.startsWith('error ') ? status.slice(6).trim() : 'the daemon exited before the mount was ready';
      process.stderr.write(`ts-overlayfs: ${[reason, ...details].join(': ')}\n`);
      finish(1);
    });
  });
}

/** Daemon side: the mount is up; let go of the launcher's stdio and tell it. */
export function reportReady(): void {
  // Here, not at the top: the launcher, which loads this module too, has no use for libc.
  const { dup2 } = require('../sys/libc') as typeof import('../sys/libc');
  const devNull = openSync('/dev/null', 'r+');
  dup2(devNull, 1);
  dup2(devNull, 2);
  closeSync(devNull);
  report('ready');
}

/** Daemon side: the mount failed, for this reason (null: already told on stderr). */
export function reportFailure(message: string | null): void {
  report(message === null ? 'error' : `error ${message}`);
}

function report(status: string): void {
  if (!statusOpen) return;
  statusOpen = false;
  writeSync(STATUS_FD, `${status}\n`);
  closeSync(STATUS_FD);
}
