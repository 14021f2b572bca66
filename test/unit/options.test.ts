import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseOptionStrings } from '../../src/cli/mount-options';
import { interpretOptions, OptionError } from '../../src/cli/overlay-options';
import { IdMap, OVERFLOW_ID, parseIdMapping } from '../../src/overlay/idmap';

function interpret(s: string) {
  const warnings: string[] = [];
  const settings = interpretOptions(parseOptionStrings([s]), (m) => warnings.push(m));
  return { settings, warnings };
}

describe('fuse-overlayfs options', () => {
  test('every fuse-overlayfs option is understood', () => {
    const { settings, warnings } = interpret(
      'lowerdir=/l,upperdir=/u,workdir=/w,uidmapping=0:100000:65536,gidmapping=:0:100000:65536,squash_to_root,' +
      'squash_to_uid=5,squash_to_gid=6,static_nlink,noacl,fsync=0,xattr_permissions=0,timeout=3,threaded=1,' +
      'writeback=1,fast_ino=1,redirect_dir=off,userxattr,volatile,ro,debug,fsname=x,allow_other,nodev,nosuid',
    );
    assert.deepEqual(warnings, []);
    assert.deepEqual(settings.uidRanges, [{ inside: 0, outside: 100000, count: 65536 }]);
    assert.deepEqual(settings.gidRanges, [{ inside: 0, outside: 100000, count: 65536 }]);
    assert.deepEqual([settings.squashToRoot, settings.squashUid, settings.squashGid], [true, 5, 6]);
    assert.deepEqual([settings.staticNlink, settings.noacl, settings.volatile, settings.timeout], [true, true, true, 3]);
    assert.deepEqual(settings.fuseFlags, ['allow_other', 'nodev', 'nosuid']);
  });

  test('unknown options are reported and dropped, as fuse-overlayfs does', () => {
    const { warnings } = interpret('lowerdir=/l,bogus,context="a,b",,');
    assert.deepEqual(warnings, ['unknown argument ignored: bogus', 'unknown argument ignored: context']);
  });

  test('unsupported modes are refused with a clear error', () => {
    for (const bad of ['plugins=/x.so', 'xattr_permissions=1', 'redirect_dir=on', 'timeout=-1', 'uidmapping=0:1', 'squash_to_uid=x', 'fsync=2']) {
      assert.throws(() => interpret(`lowerdir=/l,${bad}`), OptionError, bad);
    }
  });
});

describe('id mapping', () => {
  test('several ranges, with or without a leading colon', () => {
    assert.deepEqual(parseIdMapping(':0:1000:1:1:110000:65536'), [
      { inside: 0, outside: 1000, count: 1 },
      { inside: 1, outside: 110000, count: 65536 },
    ]);
  });

  test('stored ids are shown mapped, unmapped ones as the overflow id, and chown maps back', () => {
    const map = new IdMap({ uidRanges: parseIdMapping('0:100000:65536'), gidRanges: parseIdMapping('0:200000:10') });
    assert.deepEqual([map.shownUid(0), map.shownUid(5), map.shownUid(70000)], [100000, 100005, OVERFLOW_ID]);
    assert.deepEqual([map.shownGid(9), map.shownGid(10)], [200009, OVERFLOW_ID]);
    assert.deepEqual([map.storedUid(100007), map.storedUid(5)], [7, OVERFLOW_ID]);
  });

  test('squash wins over mapping', () => {
    const map = new IdMap({ uidRanges: parseIdMapping('0:100000:65536'), squashUid: 0, squashGid: 7 });
    assert.deepEqual([map.shownUid(5), map.shownGid(5)], [0, 7]);
  });
});
