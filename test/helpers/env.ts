/**
 * What a test needs from the machine. Outside CI a test whose needs are missing is skipped
 * with the reason; with CI=true it fails instead, so CI never passes by skipping.
 */
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { FUSE_HEADER } from './c-structs';
import assert from 'node:assert/strict';

export const REPO = join(__dirname, '..', '..', '..');
export const BIN = join(REPO, 'bin', 'ts-overlayfs');

export type Need = 'root' | 'fuse' | 'kernel-overlay' | 'fuse-overlayfs' | 'fuse-header' | 'fuse-passthrough';

function has(need: Need): boolean {
  switch (need) {
    case 'root':
      return process.getuid?.() === 0;
    case 'fuse':
      try {
        accessSync('/dev/fuse', constants.R_OK | constants.W_OK);
        return true;
      } catch {
        return false;
      }
    case 'kernel-overlay':
      return readFileSync('/proc/filesystems', 'utf8').split('\n').some((l) => l.trim().endsWith('overlay')) ||
        existsSync('/sys/module/overlay');
    case 'fuse-overlayfs':
      return spawnSync('fuse-overlayfs', ['--version']).status === 0;
    case 'fuse-passthrough': {
      // FUSE passthrough came with Linux 6.9 (CONFIG_FUSE_PASSTHROUGH, on in distribution kernels).
      const [major, minor] = release().split('.').map((n) => parseInt(n, 10));
      return major > 6 || (major === 6 && minor >= 9);
    }
    case 'fuse-header':
      // include/uapi/linux/fuse.h as installed by linux-libc-dev: the layouts the wire tests check against.
      return existsSync(FUSE_HEADER);
  }
}

/**
 * Options for describe()/test(): `skip` with the reason outside CI; in CI a failing test
 * named after the missing needs is registered and the suite is skipped.
 */
export function requires(...needs: Need[]): { skip: string | false } {
  const missing = needs.filter((n) => !has(n));
  if (missing.length === 0) return { skip: false };
  const reason = `needs ${missing.join(', ')}`;
  if (process.env.CI === 'true') {
    test(`machine provides ${needs.join(', ')}`, () => assert.fail(`CI=true and this machine lacks: ${missing.join(', ')}`));
  }
  return { skip: reason };
}
