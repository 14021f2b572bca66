import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseOptionStrings, splitLowerdir, unescape } from '../../src/cli/mount-options';

describe('-o option strings', () => {
  test('plain options and flags', () => {
    assert.deepEqual(parseOptionStrings(['lowerdir=/a:/b,upperdir=/u,workdir=/w,ro']), [
      { name: 'lowerdir', value: '/a:/b' },
      { name: 'upperdir', value: '/u' },
      { name: 'workdir', value: '/w' },
      { name: 'ro', value: null },
    ]);
  });

  test('empty options, as rootless podman passes them, are skipped', () => {
    assert.deepEqual(parseOptionStrings(['lowerdir=/a,,volatile,']).map((o) => o.name), ['lowerdir', 'volatile']);
  });

  test('a comma inside double quotes belongs to the value', () => {
    const opts = parseOptionStrings(['lowerdir=/l,context="system_u:object_r:container_file_t:s0:c1,c2",upperdir=/u']);
    assert.deepEqual(opts.map((o) => o.name), ['lowerdir', 'context', 'upperdir']);
    assert.equal(unescape(opts[1].value!), 'system_u:object_r:container_file_t:s0:c1,c2');
  });

  test('several -o strings are concatenated', () => {
    assert.deepEqual(parseOptionStrings(['lowerdir=/a', 'upperdir=/u,workdir=/w']).map((o) => o.name), ['lowerdir', 'upperdir', 'workdir']);
  });

  test('a value may contain "="', () => {
    assert.deepEqual(parseOptionStrings(['fsname=a=b']), [{ name: 'fsname', value: 'a=b' }]);
  });
});

describe('lowerdir lists', () => {
  test('split on ":" with the first layer on top', () => {
    assert.deepEqual(splitLowerdir('/top:/mid:/bottom'), ['/top', '/mid', '/bottom']);
  });

  test('backslash escapes ":" and ","', () => {
    const [opt] = parseOptionStrings(['lowerdir=/a\\:b:/c\\,d:/e\\\\f']);
    assert.deepEqual(splitLowerdir(opt.value!), ['/a:b', '/c,d', '/e\\f']);
  });

  test('empty elements are dropped', () => {
    assert.deepEqual(splitLowerdir('/a::/b:'), ['/a', '/b']);
  });
});
