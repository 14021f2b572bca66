/**
 * Running as an ordinary user (nobody) in new user and mount namespaces, the way rootless
 * podman and CI sandboxes run ts-overlayfs. Used by the rootless mount test and by the
 * fuzzer's unprivileged mode.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { REPO } from './env';

export const NOBODY = 65534;

/** The command line that runs `argv` as nobody, without groups, in `unshare -Urm`. */
export function asNobodyInNamespaces(argv: string[]): [string, string[]] {
  return asNobody(['unshare', '-Urm', ...argv]);
}

/** The command line that runs `argv` as nobody, without groups, in the initial namespaces. */
export function asNobody(argv: string[]): [string, string[]] {
  return ['setpriv', ['--reuid', String(NOBODY), '--regid', String(NOBODY), '--clear-groups', ...argv]];
}

/**
 * Copies the runnable program to `dir`/app, readable by everyone: nobody cannot read a
 * checkout under /root. Returns the copy's root.
 */
export function copyProgramForNobody(dir: string): string {
  const app = join(dir, 'app');
  for (const part of ['bin', 'dist', 'node_modules', 'package.json']) cpSync(join(REPO, part), join(app, part), { recursive: true });
  spawnSync('chmod', ['-R', 'a+rX', app]);
  return app;
}

/**
 * Opens /dev/fuse to everyone, as rootless podman setups do (an unprivileged user needs it);
 * returns what gives it back its mode.
 */
export function openDevFuse(): () => void {
  const mode = statSync('/dev/fuse').mode & 0o777;
  chmodSync('/dev/fuse', 0o666);
  return () => chmodSync('/dev/fuse', mode);
}
