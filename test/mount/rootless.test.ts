/**
 * Rootless: as an unprivileged user inside `unshare -Urm`, ts-overlayfs mounts, writes
 * whiteouts and `user.overlay.opaque` (trusted.* is refused there), and kernel overlayfs
 * mounted with `userxattr` in the same namespace gives the same view and the same upper.
 * Without a namespace, the same user mounts through the setuid fusermount3, as a daemon,
 * and the result is compared with fuse-overlayfs run the same way.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { requires } from '../helpers/env';
import { buildLayer, removeDir, tempDir, type Tree } from '../helpers/layers';
import { isMounted, KERNEL_PINNED_OPTIONS } from '../helpers/mounts';
import { daemonsFor, eventually } from '../helpers/processes';
import { asNobody, asNobodyInNamespaces, copyProgramForNobody, NOBODY, openDevFuse } from '../helpers/rootless';

/** Runs a shell script as an unprivileged user, by default in new user and mount namespaces. */
function asRootlessUser(script: string, timeoutMs = 60000, inNamespaces = true) {
  const argv = ['bash', '-c', script];
  return spawnSync(...(inNamespaces ? asNobodyInNamespaces(argv) : asNobody(argv)), {
    encoding: 'utf8',
    timeout: timeoutMs,
    killSignal: 'SIGKILL',
  });
}

/** Splits a script's output into its `== NAME` sections. */
function sectionsOf(stdout: string): Record<string, string> {
  return Object.fromEntries(
    stdout.split(/^== /m).slice(1).map((chunk) => {
      const nl = chunk.indexOf('\n');
      return [chunk.slice(0, nl).trim(), chunk.slice(nl + 1).trim()];
    }),
  );
}

/** What the scenario's steps work on, in the top lower layer. */
const SCENARIO_LOWER: Tree = {
  'lower-file': { kind: 'file', data: 'lower\n' },
  'lower-gone': { kind: 'file', data: 'gone' },
  'lower-dir/inside': { kind: 'file', data: 'in' },
  'lower-moved': { kind: 'file', data: 'moved' },
  'merged/from-lower': { kind: 'file', data: 'l' },
};

/** The scenario, the same on both mounts; prints the merged view, then the upper layer. */
const SCENARIO = `
set -u
step() { "$@" 2>/dev/null && echo "ok $*" || echo "fail $*"; }
run() { # $1 = mountpoint
  cd "$1"
  step sh -c 'echo appended >> lower-file'
  step rm lower-gone
  step rm -r lower-dir
  step mkdir lower-dir
  step sh -c 'echo new > lower-dir/new'
  step mkdir fresh
  step mv lower-moved moved
  step sh -c 'echo x > merged/added'
  step rm merged/from-lower
  cd /
}
view() { (cd "$1" && find . -printf '%p %y %m %s\\n' | LC_ALL=C sort && find . -type f -exec md5sum {} + | LC_ALL=C sort -k2); }
upper() { # whiteouts and opaque markers as a layer reader sees them
  (cd "$1" && find . -printf '%p %y %m %s\\n' | LC_ALL=C sort
   find . -type c -exec stat -c '%n whiteout %t:%T' {} + | LC_ALL=C sort
   find . -type d -exec getfattr --absolute-names -h -n user.overlay.opaque --only-values {} \\; -printf ' %p opaque\\n' 2>/dev/null | LC_ALL=C sort)
}
`;

describe('rootless mounting (unshare -Urm as an unprivileged user)', requires('root', 'fuse', 'kernel-overlay'), () => {
  let dir: string;
  let restoreFuse: (() => void) | undefined;
  let out = '';
  let sections: Record<string, string> = {};

  before(() => {
    dir = tempDir('rootless');
    chmodSync(dir, 0o755);
    restoreFuse = openDevFuse();
    buildLayer(join(dir, 'lower'), {
      ...SCENARIO_LOWER,
      'opaque-in-lower': { kind: 'dir', opaque: 'user' },
      'opaque-in-lower/visible': { kind: 'file' },
    });
    buildLayer(join(dir, 'lower2'), { 'opaque-in-lower/hidden': { kind: 'file' }, 'merged/from-lower2': { kind: 'file' } });
    copyProgramForNobody(dir);
    const own = ['ts-upper', 'ts-work', 'ts-mnt', 'k-upper', 'k-work', 'k-mnt', 'logs'];
    for (const d of own) buildLayer(join(dir, d), {});
    spawnSync('chown', ['-R', `${NOBODY}:${NOBODY}`, join(dir, 'lower'), join(dir, 'lower2')]);
    for (const d of own) spawnSync('chown', [`${NOBODY}:${NOBODY}`, join(dir, d)]);
    const lowers = `${dir}/lower:${dir}/lower2`;
    const script = `${SCENARIO}
d=${dir}
node=${process.execPath}
TS_OVERLAYFS_NODE="$node" "$d/app/bin/ts-overlayfs" -f -o lowerdir=${lowers},upperdir=$d/ts-upper,workdir=$d/ts-work $d/ts-mnt 2>$d/logs/ts.log &
server=$!
for i in $(seq 200); do grep -q " $d/ts-mnt " /proc/self/mountinfo && break; sleep 0.05; done
mount -t overlay overlay -o userxattr,${KERNEL_PINNED_OPTIONS.join(',')},lowerdir=${lowers},upperdir=$d/k-upper,workdir=$d/k-work $d/k-mnt || echo "kernel mount failed"
fstype() { awk -v m="$1" '$5 == m { for (i = 7; i <= NF; i++) if ($i == "-") print $(i + 1) }' /proc/self/mountinfo; }
echo "== mounts"; fstype $d/ts-mnt; fstype $d/k-mnt
echo "== ts steps"; run $d/ts-mnt
echo "== kernel steps"; run $d/k-mnt
echo "== ts view"; view $d/ts-mnt
echo "== kernel view"; view $d/k-mnt
echo "== server"; kill -TERM $server; wait $server; echo "server exit $?"
umount $d/k-mnt
echo "== ts upper"; upper $d/ts-upper
echo "== kernel upper"; upper $d/k-upper
echo "== ts log"; cat $d/logs/ts.log
echo "== end"
`;
    writeFileSync(join(dir, 'scenario.sh'), script);
    const r = asRootlessUser(script);
    out = `${r.stdout}\n${r.stderr}\n(exit ${r.status}, signal ${r.signal})`;
    sections = sectionsOf(r.stdout);
  });

  after(() => {
    restoreFuse?.();
    if (dir) {
      for (const m of ['ts-mnt', 'k-mnt']) spawnSync('umount', ['-l', join(dir, m)]);
      removeDir(dir);
    }
  });

  test('both mounts come up in the namespace', () => {
    assert.equal(sections.mounts, 'fuse.ts-overlayfs\noverlay', out);
  });

  test('every step has the same outcome', () => {
    assert.equal(sections['ts steps'], sections['kernel steps'], out);
    assert.ok(!sections['ts steps'].includes('fail'), out);
  });

  test('the merged views are the same', () => {
    assert.equal(sections['ts view'], sections['kernel view'], out);
    assert.ok(!sections['ts view'].includes('hidden'), 'user.overlay.opaque in a lower layer is honoured');
  });

  test('the uppers are encoded the same way (char 0/0 whiteouts, user.overlay.opaque)', () => {
    assert.match(out, /server exit 0/);
    assert.equal(sections['ts upper'], sections['kernel upper'], out);
    assert.match(sections['ts upper'], / whiteout 0:0/);
    assert.match(sections['ts upper'], /opaque/);
  });
});

describe('rootless mounting without a namespace (setuid fusermount3), daemonized', requires('root', 'fuse', 'kernel-overlay', 'fuse-overlayfs'), () => {
  let dir: string;
  let restoreFuse: (() => void) | undefined;
  let out = '';
  let sections: Record<string, string> = {};

  before(() => {
    dir = tempDir('rootless-plain');
    chmodSync(dir, 0o755);
    restoreFuse = openDevFuse();
    buildLayer(join(dir, 'lower'), SCENARIO_LOWER);
    copyProgramForNobody(dir);
    const own = ['ts-upper', 'ts-work', 'ts-mnt', 'fo-upper', 'fo-work', 'fo-mnt'];
    for (const d of own) buildLayer(join(dir, d), {});
    spawnSync('chown', ['-R', `${NOBODY}:${NOBODY}`, join(dir, 'lower'), ...own.map((d) => join(dir, d))]);
    const script = `${SCENARIO}
d=${dir}
TS_OVERLAYFS_NODE="${process.execPath}" "$d/app/bin/ts-overlayfs" -o lowerdir=$d/lower,upperdir=$d/ts-upper,workdir=$d/ts-work $d/ts-mnt
rc=$?
echo "== ts mount"; echo "exit $rc"; awk -v m="$d/ts-mnt" '$5 == m { for (i = 7; i <= NF; i++) if ($i == "-") print $(i + 1) }' /proc/self/mountinfo
fuse-overlayfs -o lowerdir=$d/lower,upperdir=$d/fo-upper,workdir=$d/fo-work $d/fo-mnt || echo "fuse-overlayfs mount failed"
echo "== ts steps"; run $d/ts-mnt
echo "== fuse-overlayfs steps"; run $d/fo-mnt
echo "== ts view"; view $d/ts-mnt
echo "== fuse-overlayfs view"; view $d/fo-mnt
echo "== unmount"; fusermount3 -u $d/ts-mnt && echo "ts unmounted"; fusermount3 -u $d/fo-mnt
echo "== ts upper"; upper $d/ts-upper
echo "== end"
`;
    const r = asRootlessUser(script, 60000, false);
    out = `${r.stdout}\n${r.stderr}\n(exit ${r.status}, signal ${r.signal})`;
    sections = sectionsOf(r.stdout);
  });

  after(() => {
    restoreFuse?.();
    if (dir) {
      for (const m of ['ts-mnt', 'fo-mnt', 'k-mnt']) if (isMounted(join(dir, m))) spawnSync('umount', ['-l', join(dir, m)]);
      removeDir(dir);
    }
  });

  test('the command returns 0 once mounted, and the mount is fuse.ts-overlayfs', () => {
    assert.equal(sections['ts mount'], 'exit 0\nfuse.ts-overlayfs', out);
  });

  test('every step has the outcome it has on fuse-overlayfs, and the views are the same', () => {
    assert.equal(sections['ts steps'], sections['fuse-overlayfs steps'], out);
    assert.ok(!sections['ts steps'].includes('fail'), out);
    assert.equal(sections['ts view'], sections['fuse-overlayfs view'], out);
  });

  test('fusermount3 -u by the user unmounts and ends the daemon', async () => {
    assert.match(sections.unmount ?? '', /ts unmounted/, out);
    assert.ok(!isMounted(join(dir, 'ts-mnt')));
    assert.ok(await eventually(() => daemonsFor(join(dir, 'ts-mnt')).length === 0), 'the daemon exits');
  });

  test('the upper holds char 0/0 whiteouts and user.overlay.opaque, and kernel overlayfs with userxattr reads it as the same view', () => {
    assert.match(sections['ts upper'], / whiteout 0:0/, out);
    assert.match(sections['ts upper'], /opaque/, out);
    buildLayer(join(dir, 'k-mnt'), {});
    const opts = `userxattr,${KERNEL_PINNED_OPTIONS.join(',')},lowerdir=${dir}/lower,upperdir=${dir}/ts-upper,workdir=${dir}/ts-work`;
    const m = spawnSync('mount', ['-t', 'overlay', 'overlay', '-o', opts, join(dir, 'k-mnt')], { encoding: 'utf8' });
    assert.equal(m.status, 0, m.stderr);
    try {
      const view = spawnSync('bash', ['-c', `${SCENARIO}\nview ${dir}/k-mnt`], { encoding: 'utf8' });
      assert.equal(view.stdout.trim(), sections['ts view'], out);
    } finally {
      spawnSync('umount', [join(dir, 'k-mnt')]);
    }
  });
});
