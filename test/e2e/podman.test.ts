/**
 * End to end: rootful podman 4.3 (overlay driver) with ts-overlayfs as its mount_program.
 *
 * test/e2e/podman-scenario.sh does the work, in a private mount namespace with private storage
 * under a temporary directory (nothing written to /var/lib/containers, /run or /etc): it
 * imports a busybox image built from busybox-static (no registry), runs containers that read,
 * write and delete lower files and directories, checks `podman diff`, the upper layer left on
 * disk, `podman commit`, `podman build` (twice: the second is cached), `podman image mount`,
 * `podman export`, four containers at once and `--uidmap` (id-mapped lowers, whose ids are shown
 * as they are), and that no mount or daemon is left.
 * Each step reports `RESULT name ok|fail detail`; each becomes a test here.
 *
 * Podman calls a wrapper that logs every mount (argv, cwd, environment, exit status, stderr)
 * before running ts-overlayfs: a failing test prints its step's commands, their output and the
 * mount calls; the whole output is kept in $TMPDIR/ts-overlayfs-e2e-podman.log, and
 * KEEP_E2E=1 keeps the temporary directory.
 *
 * Machine notes: crun fails on hybrid cgroups (runc, cgroupfs); root cannot raise rlimits
 * (default_ulimits); no network (netns none). `./scripts/setup-podman` installs what this needs.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BIN, REPO, requires } from '../helpers/env';
import { tsProcesses } from '../helpers/processes';

const SCENARIO = join(REPO, 'test', 'e2e', 'podman-scenario.sh');
const LOG = join(tmpdir(), 'ts-overlayfs-e2e-podman.log');

/** What the scenario reports, in order. `X/opaque-dir`: the checks of a directory removed and made again. */
const STEPS = [
  'version', 'import', 'run-read', 'run-write/opaque-dir', 'run-write', 'run-image-unchanged',
  'diff/opaque-dir', 'diff', 'upper-layer/opaque-dir', 'upper-layer', 'commit/opaque-dir', 'commit',
  'build/opaque-dir', 'build', 'build-cached', 'image-mount', 'export/opaque-dir', 'export',
  'parallel', 'uidmap-mount', 'uidmap-mount/owner', 'uidmap', 'cleanup',
] as const;

/**
 * Steps known to fail, with the reason (node's `todo`: reported, not failing the run). None now:
 * with `--uidmap`, rootful podman 4.3 gives the mount program id-mapped mounts of the lower
 * layers (LAYER/mapped/N/l/ID), detaches them as soon as it has returned, and passes
 * uidmapping=:0:100000:65536 as well; ts-overlayfs finds those lowers id-mapped when it opens
 * them and does not map their ids a second time (fuse-overlayfs 1.10 does: 65534).
 */
const TODO: Partial<Record<(typeof STEPS)[number], string>> = {};

/** podman and what the scenario runs besides it; skipped outside CI, failing in CI, as requires() does. */
function requiresPodman(): { skip: string | false } {
  const tools: [string, string[]][] = [
    ['podman', ['--version']], ['runc', ['--version']], ['conmon', ['--version']],
    ['unshare', ['--version']], ['getfattr', ['--version']], ['fusermount3', ['--version']],
  ];
  const missing = tools.filter(([cmd, args]) => spawnSync(cmd, args, { stdio: 'ignore' }).status !== 0).map(([c]) => c);
  if (!existsSync('/bin/busybox')) missing.push('busybox-static');
  if (missing.length === 0) return { skip: false };
  const reason = `needs podman (missing: ${missing.join(', ')}; ./scripts/setup-podman installs them)`;
  if (process.env.CI === 'true') {
    test('machine provides podman, runc, conmon, busybox-static', () =>
      assert.fail(`CI=true and this machine lacks: ${missing.join(', ')}`));
  }
  return { skip: reason };
}

interface StepResult {
  ok: boolean;
  detail: string;
  block: string;
}

/** Pids of the processes in the mount namespace with this inode. */
function processesInNamespace(ns: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (String(statSync(`/proc/${entry}/ns/mnt`).ino) === ns) pids.push(Number(entry));
    } catch {
      // Gone while we looked.
    }
  }
  return pids;
}

/** ts-overlayfs processes whose arguments name something under `dir`. */
function daemonsUnder(dir: string): string[] {
  return tsProcesses().filter((p) => p.args.some((a) => a.includes(dir))).map((p) => `${p.pid}: ${p.args.join(' ')}`);
}

const skip = requires('root', 'fuse', 'kernel-overlay').skip || requiresPodman().skip;

describe('podman with ts-overlayfs as mount_program', { skip }, () => {
  let dir = '';
  let ns = '';
  let output = '';
  const results = new Map<string, StepResult>();

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'tsovl-e2e-podman-'));
    const r = spawnSync('bash', [SCENARIO, dir, BIN], {
      encoding: 'utf8',
      // The scenario bounds itself (PODMAN_BUDGET); this only guards against a hang of its own.
      timeout: 290_000,
      killSignal: 'SIGKILL',
      maxBuffer: 64 * 1024 * 1024,
      env: { ...process.env, PODMAN_BUDGET: '200', PODMAN_STEP_TIMEOUT: '90' },
    });
    output = `${r.stdout ?? ''}${r.stderr ? `\n--- stderr of the scenario:\n${r.stderr}` : ''}`;
    if (r.error) output += `\n--- ${r.error.message}`;
    if (r.status !== 0) output += `\n--- the scenario exited with ${r.status ?? r.signal}`;
    writeFileSync(LOG, output);
    ns = /^NS (\d+)$/m.exec(output)?.[1] ?? '';
    let block: string[] = [];
    for (const line of output.split('\n')) {
      if (line.startsWith('=== STEP ')) block = [];
      block.push(line);
      const m = /^RESULT (\S+) (ok|fail) ?(.*)$/.exec(line);
      if (m) results.set(m[1], { ok: m[2] === 'ok', detail: m[3], block: block.join('\n') });
    }
  }, { timeout: 300_000 });

  after(() => {
    if (!dir) return;
    // conmon and anything else podman left behind in the namespace: only ours are there.
    if (ns) {
      for (const pid of processesInNamespace(ns)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // Already gone.
        }
      }
    }
    for (const d of daemonsUnder(dir)) {
      try {
        process.kill(Number(d.split(':')[0]), 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
    for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
      const mnt = line.split(' ')[4];
      if (mnt?.startsWith(dir)) spawnSync('umount', ['-l', mnt]);
    }
    if (process.env.KEEP_E2E !== '1') rmSync(dir, { recursive: true, force: true });
  });

  for (const step of STEPS) {
    const todo = TODO[step];
    test(step, todo ? { todo } : {}, () => {
      const r = results.get(step);
      if (!r) assert.fail(`step ${step} reported nothing (full output in ${LOG}):\n${output.slice(-4000)}`);
      assert.ok(r.ok, `${step}: ${r.detail}\n(full output in ${LOG})\n${r.block}`);
    });
  }

  test('nothing of ts-overlayfs is left outside the namespace', () => {
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
      .filter((l) => / - fuse\.ts-overlayfs /.test(l) && l.includes(dir));
    assert.deepEqual(mounts, [], 'fuse.ts-overlayfs mounts of the scenario seen from outside its namespace');
    assert.deepEqual(daemonsUnder(dir), [], 'ts-overlayfs daemons of the scenario still running');
  });

  test('the scenario ran to its end', () => {
    assert.ok(output.includes('\nSUMMARY '), `the scenario did not finish (full output in ${LOG}):\n${output.slice(-4000)}`);
  });
});
