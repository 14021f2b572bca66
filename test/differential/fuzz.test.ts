/**
 * Differential fuzzing against kernel overlayfs, a fixed set of seeds within a bounded time
 * (about 2 minutes on 2 cores). Each seed: random lower layers, a random operation sequence,
 * compared step by step, then the upper layers and the cross-mounts (see runner.ts).
 * A failure prints the sequence and the command that reproduces and shrinks it
 * (`scripts/fuzz --seed N --ops K`). Long runs: `scripts/fuzz --seconds N`.
 * The unprivileged mode (an ordinary user in unshare -Urm, kernel oracle with userxattr) runs
 * through the command line, which sets up the user and namespaces.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { requires } from '../helpers/env';
import { setAvoidKnownBugs } from './known-bugs';
import { formatReport, Fuzzer, leftoverMounts } from './runner';

/** Seeds and sequence length: about 3 s per seed here, and every lower count from 1 to 5. */
const SEEDS = Array.from({ length: 30 }, (_, i) => 1 + i);
const OPS = 40;

describe('differential fuzzing against kernel overlayfs (fixed seeds)', requires('root', 'fuse', 'kernel-overlay'), () => {
  let umask = 0;
  before(() => {
    setAvoidKnownBugs(true);
    umask = process.umask(0);
  });
  after(() => {
    process.umask(umask);
    assert.deepEqual(leftoverMounts(), [], 'no mount of the fuzzer is left behind');
  });

  for (const seed of SEEDS) {
    test(`seed ${seed}`, { timeout: 60_000 }, async () => {
      const fz = new Fuzzer(seed);
      try {
        const r = await fz.run({ ops: { generate: OPS } });
        if (r.divergence) {
          const d = r.divergence;
          const keep = r.ops.map((_, i) => i).slice(0, d.step >= 0 && d.step < r.ops.length ? d.step + 1 : r.ops.length);
          assert.fail(`${formatReport({ seed, generated: OPS, ops: r.ops, keep, divergence: d })}\n  (shrink it: scripts/fuzz --seed ${seed} --ops ${OPS})`);
        }
      } finally {
        await fz.dispose();
      }
    });
  }
});

/** Runs the fuzzer's command line (scripts/fuzz without the set-up); its exit status and output. */
function fuzzCommand(args: string[], timeoutMs: number) {
  // Without NODE_TEST_CONTEXT, which tells cli.js it was loaded as a test file.
  const { NODE_TEST_CONTEXT: _, ...env } = process.env;
  const r = spawnSync(process.execPath, [join(__dirname, 'cli.js'), ...args], { encoding: 'utf8', env, timeout: timeoutMs, killSignal: 'SIGINT' });
  return { status: r.status, stdout: r.stdout, out: `${r.stdout}\n${r.stderr}` };
}

/** Seeds of the unprivileged run: about 2 s each here. */
const UNPRIVILEGED_SEEDS = 20;

describe('the fuzzer\'s command line', requires('root', 'fuse', 'kernel-overlay'), () => {
  test('--jobs 2 --count 3 splits seeds 7, 8, 9 between two workers and adds up their summaries', { timeout: 120_000 }, () => {
    const r = fuzzCommand(['--seed', '7', '--count', '3', '--jobs', '2', '--ops', '10'], 100_000);
    assert.equal(r.status, 0, r.out);
    const seeds = [...r.stdout.matchAll(/^seed (\d+): ok/gm)].map((m) => Number(m[1])).sort();
    assert.deepEqual(seeds, [7, 8, 9], r.out);
    assert.match(r.stdout, /fuzz: 3 sequences, 30 operations .*; 0 divergent sequences/, r.out);
  });

  test(`--unprivileged: seeds 1 to ${UNPRIVILEGED_SEEDS} as an ordinary user in unshare -Urm`, { timeout: 300_000 }, () => {
    const r = fuzzCommand(['--unprivileged', '--seed', '1', '--count', String(UNPRIVILEGED_SEEDS), '--ops', String(OPS)], 280_000);
    assert.equal(r.status, 0, r.out);
    assert.match(r.stdout, new RegExp(`fuzz: ${UNPRIVILEGED_SEEDS} sequences, \\d+ operations .*; 0 divergent sequences`), r.out);
  });
});
