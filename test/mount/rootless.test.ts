/**
 * Rootless: as an unprivileged user inside `unshare -Urm`, ts-overlayfs mounts, writes
 * whiteouts and `user.overlay.opaque` (trusted.* is refused there), and kernel overlayfs
 * mounted with `userxattr` in the same namespace gives the same view and the same upper.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { requires } from '../helpers/env';
import { buildLayer, removeDir, tempDir } from '../helpers/layers';
import { asNobodyInNamespaces, copyProgramForNobody, NOBODY, openDevFuse } from '../helpers/rootless';

/** Runs a shell script as an unprivileged user in new user and mount namespaces. */
function asRootlessUser(script: string, timeoutMs = 60000) {
  return spawnSync(...asNobodyInNamespaces(['bash', '-c', script]), {
    encoding: 'utf8',
    timeout: timeoutMs,
    killSignal: 'SIGKILL',
  });
}

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
      'lower-file': { kind: 'file', data: 'lower\n' },
      'lower-gone': { kind: 'file', data: 'gone' },
      'lower-dir/inside': { kind: 'file', data: 'in' },
      'lower-moved': { kind: 'file', data: 'moved' },
      'merged/from-lower': { kind: 'file', data: 'l' },
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
"$node" "$d/app/bin/ts-overlayfs" -f -o lowerdir=${lowers},upperdir=$d/ts-upper,workdir=$d/ts-work $d/ts-mnt 2>$d/logs/ts.log &
server=$!
for i in $(seq 200); do grep -q " $d/ts-mnt " /proc/self/mountinfo && break; sleep 0.05; done
mount -t overlay overlay -o userxattr,lowerdir=${lowers},upperdir=$d/k-upper,workdir=$d/k-work $d/k-mnt || echo "kernel mount failed"
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
    sections = Object.fromEntries(
      r.stdout.split(/^== /m).slice(1).map((chunk) => {
        const nl = chunk.indexOf('\n');
        return [chunk.slice(0, nl).trim(), chunk.slice(nl + 1).trim()];
      }),
    );
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
