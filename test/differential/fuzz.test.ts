/**
 * Differential fuzzing against kernel overlayfs, a fixed set of seeds within a bounded time
 * (about 2 minutes on 2 cores). Each seed: random lower layers, a random operation sequence,
 * compared step by step, then the upper layers and the cross-mounts (see runner.ts).
 * A failure prints the sequence and the command that reproduces and shrinks it
 * (`scripts/fuzz --seed N --ops K`). Long runs: `scripts/fuzz --seconds N`.
 */
import assert from 'node:assert/strict';
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
