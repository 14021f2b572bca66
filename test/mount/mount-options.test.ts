/**
 * The mount as the kernel sees it, next to fuse-overlayfs 1.10's over the same layers: the
 * mount options it adds itself as root (default_permissions, allow_other, suid, noatime),
 * what that means for a set-user-ID program run by an ordinary user, and the xattr options
 * (noxattrs, noacl) as a program meets them through the mount.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { errnoOf, Errno } from '../../src/errors';
import { lgetxattr, lsetxattr } from '../../src/sys/libc';
import { requires } from '../helpers/env';
import { buildLayer, removeDir, tempDir } from '../helpers/layers';
import { mountFuseOverlayfs, mountTs, type Mounted } from '../helpers/mounts';
import { NOBODY } from '../helpers/rootless';

const dirs: string[] = [];
const mounts: Mounted[] = [];
after(async () => {
  for (const m of mounts) await m.unmount();
  dirs.forEach(removeDir);
});

interface MountLine {
  source: string;
  fstype: string;
  options: string[];
}

/** The /proc/mounts line of a mountpoint. */
function mountLine(mnt: string): MountLine {
  const line = readFileSync('/proc/mounts', 'utf8').split('\n').map((l) => l.split(' ')).find((f) => f[1] === mnt);
  assert.ok(line, `${mnt} is mounted`);
  return { source: line[0], fstype: line[2], options: line[3].split(',') };
}

/** The options both implementations decide (ids and subtype-specific ones aside). */
const COMPARED = ['rw', 'ro', 'nosuid', 'nodev', 'noexec', 'noatime', 'relatime', 'default_permissions', 'allow_other'];

interface Side { mnt: string; upper: string }

/**
 * One lower with a set-user-ID copy of id(1), world-traversable (nobody runs it), mounted by
 * both implementations with the same extra options.
 */
async function both(extra: string[], tsOnly: string[] = []): Promise<{ ts: Side; fo: Side }> {
  const d = tempDir('mntopts');
  dirs.push(d);
  chmodSync(d, 0o755);
  const lower = join(d, 'lower');
  buildLayer(lower, { 'f': { kind: 'file', data: 'x', xattrs: { 'user.a': '1' } } });
  copyFileSync('/usr/bin/id', join(lower, 'id'));
  chmodSync(join(lower, 'id'), 0o4755);
  const side = async (name: string, mount: typeof mountFuseOverlayfs, opts: string[]): Promise<Side> => {
    const s = { mnt: join(d, `${name}-mnt`), upper: join(d, `${name}-upper`), work: join(d, `${name}-work`) };
    for (const p of Object.values(s)) mkdirSync(p);
    mounts.push(await mount({ lowers: [lower], upper: s.upper, work: s.work }, s.mnt, opts));
    return s;
  };
  return { fo: await side('fo', mountFuseOverlayfs, extra), ts: await side('ts', mountTs, [...extra, ...tsOnly]) };
}

/** Runs `argv` as nobody (no groups) and returns its stdout. */
function asNobody(argv: string[]): string {
  const r = spawnSync('setpriv', ['--reuid', String(NOBODY), '--regid', String(NOBODY), '--clear-groups', ...argv], { encoding: 'utf8' });
  assert.equal(r.status, 0, `${argv.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

function errnoFrom(run: () => unknown): number {
  try {
    run();
  } catch (err) {
    return errnoOf(err);
  }
  return 0;
}

describe('mount options as fuse-overlayfs 1.10 sets them', requires('root', 'fuse', 'fuse-overlayfs'), () => {
  test('as root: default_permissions, allow_other, suid (no nosuid), noatime; fsname is the source', async () => {
    const { ts, fo } = await both([], ['fsname=myfs']);
    const t = mountLine(ts.mnt);
    assert.equal(t.fstype, 'fuse.ts-overlayfs');
    assert.equal(t.source, 'myfs');
    for (const o of ['default_permissions', 'allow_other', 'noatime']) assert.ok(t.options.includes(o), `${o} in ${t.options}`);
    assert.ok(!t.options.includes('nosuid'), `suid: ${t.options}`);
    const pick = (l: MountLine) => l.options.filter((o) => COMPARED.includes(o));
    assert.deepEqual(pick(t), pick(mountLine(fo.mnt)));
  });

  test('a set-user-ID root program in the lower runs with euid 0 for an ordinary user', async () => {
    const { ts, fo } = await both([]);
    for (const s of [ts, fo]) assert.match(asNobody([join(s.mnt, 'id')]), /^uid=65534\S* gid=65534\S* euid=0\(/, s.mnt);
  });

  test("the caller's own nosuid and atime come after ours and win", async () => {
    const { ts, fo } = await both(['nosuid', 'atime']);
    const pick = (l: MountLine) => l.options.filter((o) => COMPARED.includes(o));
    assert.deepEqual(pick(mountLine(ts.mnt)), pick(mountLine(fo.mnt)));
    assert.ok(mountLine(ts.mnt).options.includes('nosuid'));
    assert.ok(!mountLine(ts.mnt).options.includes('noatime'));
    assert.doesNotMatch(asNobody([join(ts.mnt, 'id')]), /euid=0/);
  });

  test('noxattrs=1: getxattr, listxattr and setxattr give EOPNOTSUPP, as with fuse-overlayfs', async () => {
    const { ts, fo } = await both(['noxattrs=1']);
    const outcome = (s: Side) => [
      errnoFrom(() => lgetxattr(join(s.mnt, 'f'), 'user.a')),
      // llistxattr() here turns EOPNOTSUPP into an empty list: ask getfattr(1).
      spawnSync('getfattr', ['-d', join(s.mnt, 'f')], { encoding: 'utf8' }).stderr.includes('Operation not supported') ? Errno.EOPNOTSUPP : 0,
      errnoFrom(() => lsetxattr(join(s.mnt, 'f'), 'user.b', Buffer.from('2'))),
    ];
    assert.deepEqual(outcome(ts), [Errno.EOPNOTSUPP, Errno.EOPNOTSUPP, Errno.EOPNOTSUPP]);
    assert.deepEqual(outcome(ts), outcome(fo));
  });
});

describe('noacl through the mount', requires('root', 'fuse'), () => {
  test('system.posix_acl_access is not supported (EOPNOTSUPP); other xattrs still read', async () => {
    const d = tempDir('noacl');
    dirs.push(d);
    const s = { lower: join(d, 'lower'), upper: join(d, 'upper'), work: join(d, 'work'), mnt: join(d, 'mnt') };
    buildLayer(s.lower, { f: { kind: 'file', xattrs: { 'user.a': '1' } } });
    for (const p of [s.upper, s.work, s.mnt]) mkdirSync(p);
    mounts.push(await mountTs({ lowers: [s.lower], upper: s.upper, work: s.work }, s.mnt, ['noacl']));
    assert.equal(errnoFrom(() => lgetxattr(join(s.mnt, 'f'), 'system.posix_acl_access')), Errno.EOPNOTSUPP);
    assert.equal(lgetxattr(join(s.mnt, 'f'), 'user.a').toString(), '1');
  });
});
