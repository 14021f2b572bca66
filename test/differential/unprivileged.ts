/**
 * `scripts/fuzz --unprivileged`, started as root: runs the fuzzer again as an ordinary user
 * (nobody) inside `unshare -Urm`, the way rootless podman and CI sandboxes use ts-overlayfs.
 * That user cannot read a checkout under /root, so the program is copied to a directory it
 * can read; /dev/fuse is opened to everyone for the run (rootless setups do the same) and
 * given its mode back afterwards.
 */
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { asNobodyInNamespaces, copyProgramForNobody, NOBODY, openDevFuse } from '../helpers/rootless';

/** Runs `cli.js ARGS` as nobody in new user and mount namespaces; resolves to its exit code. */
export async function runUnprivileged(args: string[], out: string): Promise<number> {
  const dir = mkdtempSync('/tmp/tsovl-fuzz-rootless-');
  let restoreFuse: (() => void) | undefined;
  try {
    chmodSync(dir, 0o755);
    const app = copyProgramForNobody(dir);
    const tmp = join(dir, 'tmp');
    mkdirSync(tmp);
    chownSync(tmp, NOBODY, NOBODY);
    if (!existsSync(out)) {
      mkdirSync(out, { recursive: true });
      chownSync(out, NOBODY, NOBODY);
    }
    restoreFuse = openDevFuse();
    const child = spawn(...asNobodyInNamespaces([process.execPath, join(app, 'dist', 'test', 'differential', 'cli.js'), ...args, '--out', out]),
      { stdio: 'inherit', env: { ...process.env, TMPDIR: tmp }, detached: true });
    // Its own process group: a terminal's Ctrl-C reaches it once, from here (a second one quits at once).
    const forward = (sig: NodeJS.Signals) => child.kill(sig);
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, forward);
    return await new Promise<number>((resolve) => child.on('close', (code, signal) => resolve(code ?? (signal ? 2 : 0))));
  } finally {
    restoreFuse?.();
    rmSync(dir, { recursive: true, force: true });
  }
}
