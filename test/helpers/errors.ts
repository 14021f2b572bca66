import assert from 'node:assert/strict';
import { errnoOf } from '../../src/errors';

/** The errno a promise rejects with; fails the test if it resolves. */
export async function errno(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (err) {
    return errnoOf(err);
  }
  assert.fail('expected an error');
}
