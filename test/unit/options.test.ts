import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseOptionStrings } from '../../src/cli/mount-options';
import { scanInt, strtod } from '../../src/c-numbers';
import { addedMountOptions } from '../../src/cli/config';
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
      'writeback=1,fast_ino=1,redirect_dir=off,noxattrs=1,context="system_u:object_r:container_file_t:s0:c1,c2",' +
      'userxattr,volatile,ro,debug,fsname=x,allow_other,nodev,nosuid',
    );
    assert.deepEqual(warnings, []);
    assert.deepEqual(settings.uidRanges, [{ inside: 0, outside: 100000, count: 65536 }]);
    assert.deepEqual(settings.gidRanges, [{ inside: 0, outside: 100000, count: 65536 }]);
    assert.deepEqual([settings.squashToRoot, settings.squashUid, settings.squashGid], [true, 5, 6]);
    assert.deepEqual([settings.staticNlink, settings.noacl, settings.volatile, settings.fsync, settings.timeout], [true, true, true, false, 3]);
    assert.deepEqual([settings.noxattrs, settings.xattrPermissions], [true, 0]);
    assert.deepEqual(settings.fuseFlags, ['allow_other', 'nodev', 'nosuid']);
  });

  test('context= is taken without a word, as fuse-overlayfs takes it (podman passes it on SELinux hosts)', () => {
    assert.deepEqual(interpret('lowerdir=/l,context=system_u:object_r:container_file_t:s0').warnings, []);
  });

  test('unknown options are reported whole and dropped, as fuse-overlayfs does', () => {
    const { warnings, settings } = interpret('lowerdir=/l,bogus,max_write=4096,rw,sync,,');
    assert.deepEqual(warnings, [
      'unknown argument ignored: bogus', 'unknown argument ignored: max_write=4096',
      'unknown argument ignored: rw', 'unknown argument ignored: sync',
    ]);
    assert.deepEqual(settings.fuseFlags, []);
  });

  test('the libfuse options fuse-overlayfs keeps for libfuse are passed on, in order', () => {
    const flags = 'allow_root,default_permissions,allow_other,suid,dev,nosuid,nodev,exec,noexec,atime,noatime,diratime,nodiratime,' +
      'splice_write,splice_read,splice_move,kernel_cache,max_write';
    const { warnings, settings } = interpret(`lowerdir=/l,${flags}`);
    assert.deepEqual(warnings, []);
    assert.deepEqual(settings.fuseFlags, flags.split(','));
  });

  test('its own options match only in their documented form', () => {
    const { warnings, settings } = interpret('lowerdir=/l,fsync,threaded,noxattrs,squash_to_root=1,static_nlink=1,volatile=1,noacl=1,debug=1');
    assert.deepEqual(warnings, ['fsync', 'threaded', 'noxattrs', 'squash_to_root=1', 'static_nlink=1', 'volatile=1', 'noacl=1', 'debug=1']
      .map((a) => `unknown argument ignored: ${a}`));
    assert.deepEqual([settings.fsync, settings.noxattrs, settings.squashToRoot, settings.volatile, settings.noacl], [true, false, false, false, false]);
  });

  test('numbers are read as sscanf("%d") reads them: any non-zero switch is on', () => {
    const read = (o: string) => interpret(`lowerdir=/l,${o}`).settings;
    assert.equal(read('fsync=2').fsync, true);
    assert.equal(read('fsync=-1').fsync, true);
    assert.equal(read('fsync=0x').fsync, false);
    assert.equal(read('fsync=2x').fsync, true);
    assert.equal(read('noxattrs=7').noxattrs, true);
    assert.equal(read('squash_to_uid=-1').squashUid, undefined);
    assert.equal(read('squash_to_uid=-2').squashUid, 4294967294);
    assert.equal(read('xattr_permissions=3').xattrPermissions, 3);
  });

  test('volatile wins over fsync=1 whatever the order', () => {
    for (const o of ['volatile,fsync=1', 'fsync=1,volatile']) {
      const { settings } = interpret(`lowerdir=/l,${o}`);
      assert.equal(settings.volatile || !settings.fsync, true, o);
    }
  });

  test('timeout= is read by strtod: unreadable is 0, only overflow is an error', () => {
    assert.equal(interpret('lowerdir=/l,timeout=abc').settings.timeout, 0);
    assert.equal(interpret('lowerdir=/l,timeout=2.5s').settings.timeout, 2.5);
    assert.throws(() => interpret('lowerdir=/l,timeout=1e999'), OptionError);
  });

  test('unsupported modes are refused with a clear error', () => {
    for (const bad of ['plugins=/x.so', 'redirect_dir=on', 'redirect_dir=nofollow', 'redirect_dir=', 'uidmapping=0:1', 'squash_to_uid=x', 'fsync=abc', 'threaded=', 'noxattrs=y']) {
      assert.throws(() => interpret(`lowerdir=/l,${bad}`), OptionError, bad);
    }
  });
});

describe('C number parsing', () => {
  test('scanInt: leading integer, 32-bit wrap, null without digits', () => {
    assert.deepEqual(['12', ' +3', '-4z', '4294967295', 'x1', ''].map(scanInt), [12, 3, -4, -1, null, null]);
  });

  test('strtod: prefix, inf, nan, hex, overflow', () => {
    assert.equal(strtod('1.5e1x').value, 15);
    assert.equal(strtod('-inf').value, -Infinity);
    assert.ok(Number.isNaN(strtod('nan').value));
    assert.equal(strtod('0x10').value, 16);
    assert.deepEqual(strtod('junk'), { value: 0, range: false });
    assert.equal(strtod('1e400').range, true);
    assert.equal(strtod('1e-400').range, true);
  });
});

describe('mount options added as fuse-overlayfs adds them', () => {
  test('as root: default_permissions, allow_other, suid, noatime; otherwise default_permissions, noatime', () => {
    assert.deepEqual(addedMountOptions(true), ['default_permissions', 'allow_other', 'suid', 'noatime']);
    assert.deepEqual(addedMountOptions(false), ['default_permissions', 'noatime']);
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
    assert.deepEqual([map.shownUid(100005, true), map.shownGid(100005, true)], [0, 7]);
  });

  test('ids read through an id-mapped mount are shown as they are', () => {
    const map = new IdMap({ uidRanges: parseIdMapping('0:100000:65536'), gidRanges: parseIdMapping('0:200000:10') });
    assert.deepEqual([map.shownUid(100005, true), map.shownGid(200003, true), map.shownUid(OVERFLOW_ID, true)], [100005, 200003, OVERFLOW_ID]);
  });
});
