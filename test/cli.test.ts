/**
 * The command line as a user meets it: bad input is refused with one clear line on stderr
 * naming the culprit and a non-zero status, before anything is created, changed or mounted;
 * --help and --version; options that are ignored with a warning; odd but valid -o strings.
 */
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BIN, REPO, requires } from './helpers/env';
import { removeDir, tempDir } from './helpers/layers';
import { isMounted } from './helpers/mounts';
import { daemonsFor, eventually, tsProcesses } from './helpers/processes';

const VERSION = (JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }).version;

function run(...args: string[]): SpawnSyncReturns<string> {
  return spawnSync(BIN, [...args], { encoding: 'utf8', timeout: 20000 });
}

function show(r: SpawnSyncReturns<string>): string {
  return `status=${r.status} signal=${r.signal} error=${r.error?.message}\nstdout=${JSON.stringify(r.stdout)}\nstderr=${JSON.stringify(r.stderr)}`;
}

// ---------------------------------------------------------------------------------------------
// What the machine looks like: directory trees, mounts and processes.

/** Every path under `root` (root itself included) with type, owner, mode, size, inode and times. */
function listing(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (path: string, rel: string) => {
    const st = lstatSync(path, { bigint: true });
    const kind = st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : 'other';
    out[rel] = `${kind} ${st.uid}:${st.gid} ${(st.mode & 0o7777n).toString(8)} size=${st.size} ino=${st.ino} mtime=${st.mtimeNs} ctime=${st.ctimeNs}`;
    if (st.isDirectory()) {
      for (const name of readdirSync(path).sort()) walk(join(path, name), rel === '.' ? name : `${rel}/${name}`);
    }
  };
  walk(root, '.');
  return out;
}

function listings(roots: readonly string[]): Record<string, Record<string, string>> {
  return Object.fromEntries(roots.map((r) => [r, listing(r)]));
}

function unescapeOctal(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/**
 * The mountinfo lines (minus the mount id, which is per-mount anyway) of mounts at or under
 * one of `roots`. Other work on this machine mounts and unmounts elsewhere at the same time,
 * so only our own directories are compared.
 */
function mountsUnder(roots: readonly string[]): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((line) => {
      const mp = line.split(' ')[4];
      if (mp === undefined) return false;
      const p = unescapeOctal(mp);
      return roots.some((r) => p === r || p.startsWith(`${r}/`));
    })
    .sort();
}

/** Pids of ts-overlayfs processes (not this one) whose arguments mention `text`. */
/** ts-overlayfs processes with `text` anywhere in their arguments. */
function tsProcessesMentioning(text: string): number[] {
  return tsProcesses().filter((p) => p.args.join('\0').includes(text)).map((p) => p.pid);
}

// ---------------------------------------------------------------------------------------------
// Clean-up that survives failing tests and a dying runner.

/** Mountpoints this file may have caused (ts-overlayfs mounts, bind mounts, tmpfs). */
const ourMounts = new Set<string>();
const ourDirs: string[] = [];

function forceUnmount(mnt: string): void {
  if (!isMounted(mnt)) return;
  spawnSync('fusermount3', ['-u', mnt]);
  if (isMounted(mnt)) spawnSync('umount', [mnt]);
  if (isMounted(mnt)) spawnSync('umount', ['-l', mnt]);
}

function killDaemons(mnt: string): void {
  for (const pid of daemonsFor(mnt)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

function cleanUpMount(mnt: string): void {
  forceUnmount(mnt);
  killDaemons(mnt);
  forceUnmount(mnt);
}

process.on('exit', () => {
  for (const mnt of ourMounts) cleanUpMount(mnt);
});

after(() => {
  // Deepest first: a mount inside another of ours must go before it.
  for (const mnt of [...ourMounts].sort((a, b) => b.length - a.length)) cleanUpMount(mnt);
  const stuck = [...ourMounts].filter((m) => isMounted(m));
  ourMounts.clear();
  for (const d of ourDirs.reverse()) {
    // Never delete through a mount that refused to go away: that would delete its source.
    if (stuck.some((m) => m === d || m.startsWith(`${d}/`))) continue;
    removeDir(d);
  }
  assert.deepEqual(stuck, [], 'every mount made by the CLI tests is gone');
});

function newRoot(prefix: string): string {
  const d = tempDir(prefix);
  ourDirs.push(d);
  return d;
}

function mkdirs(root: string, ...names: string[]): string[] {
  return names.map((n) => {
    const p = join(root, n);
    mkdirSync(p, { recursive: true });
    return p;
  });
}

// ---------------------------------------------------------------------------------------------
// Refusals.

/**
 * Runs the command and checks that it is refused: non-zero status, exactly one line on stderr
 * that starts with `ts-overlayfs: ` and names the culprit(s), nothing on stdout, nothing
 * created or changed in `roots`, no mount appeared there and no ts-overlayfs process is left.
 */
function assertRefused(args: string[], culprits: readonly string[], roots: readonly string[]): string {
  const trees = listings(roots);
  const mounts = mountsUnder(roots);
  const r = run(...args);
  assert.equal(r.error, undefined, `the command finishes\n${show(r)}`);
  assert.notEqual(r.status, 0, `non-zero exit status\n${show(r)}`);
  assert.notEqual(r.status, null, `exits rather than being killed\n${show(r)}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `exactly one line on stderr\n${show(r)}`);
  assert.ok(lines[0].startsWith('ts-overlayfs: '), `the line starts with "ts-overlayfs: "\n${show(r)}`);
  assert.ok(r.stderr.endsWith('\n'), `the line is terminated\n${show(r)}`);
  for (const c of culprits) assert.ok(lines[0].includes(c), `the error mentions ${JSON.stringify(c)}\n${show(r)}`);
  assert.equal(r.stdout, '', `nothing on stdout\n${show(r)}`);
  assert.deepEqual(listings(roots), trees, 'nothing created or changed');
  assert.deepEqual(mountsUnder(roots), mounts, 'no mount appeared');
  for (const root of roots) assert.deepEqual(tsProcessesMentioning(root), [], `no ts-overlayfs process left for ${root}`);
  return lines[0];
}

describe('ts-overlayfs refuses bad command lines with one line and changes nothing', () => {
  let root: string;
  let lower: string;
  let lower2: string;
  let upper: string;
  let work: string;
  let mnt: string;

  before(() => {
    root = newRoot('cli');
    [lower, lower2, upper, work, mnt] = mkdirs(root, 'lower', 'lower2', 'upper', 'work', 'mnt');
    writeFileSync(join(lower, 'file'), 'from the lower\n');
    writeFileSync(join(lower2, 'other'), 'from the second lower\n');
  });

  test('1. no lowerdir', () => {
    assertRefused(['-o', `upperdir=${upper},workdir=${work}`, mnt], ['lowerdir'], [root]);
  });

  test('1b. an empty lowerdir value', () => {
    assertRefused(['-o', `lowerdir=,upperdir=${upper},workdir=${work}`, mnt], ['lowerdir'], [root]);
  });

  test('2. a lowerdir that does not exist', () => {
    const missing = join(root, 'no-such-lower');
    const line = assertRefused(['-o', `lowerdir=${lower}:${missing}`, mnt], [missing], [root]);
    assert.match(line, /lowerdir/);
  });

  test('3. upperdir without workdir', () => {
    assertRefused(['-o', `lowerdir=${lower},upperdir=${upper}`, mnt], ['workdir'], [root]);
  });

  describe('4. workdir on another filesystem than upperdir', () => {
    const shm = statSync('/dev/shm', { throwIfNoEntry: false });
    const shmApart = shm !== undefined && shm.isDirectory() && shm.dev !== statSync(tmpdir()).dev;

    test('workdir on tmpfs, upperdir under the temporary directory', shmApart ? {} : requires('root'), () => {
      let otherFs: string;
      if (shmApart) {
        otherFs = mkdtempSync('/dev/shm/tsovl-cli-');
        ourDirs.push(otherFs);
      } else {
        // /dev/shm and the temporary directory share a device here: make a tmpfs of our own.
        [otherFs] = mkdirs(root, 'tmpfs');
        const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tsovl-cli', otherFs], { encoding: 'utf8' });
        assert.equal(m.status, 0, `mount -t tmpfs: ${m.stderr}`);
        ourMounts.add(otherFs);
      }
      const [otherWork] = mkdirs(otherFs, 'work');
      assert.notEqual(statSync(otherWork).dev, statSync(upper).dev, 'the test set-up: two filesystems');
      const line = assertRefused(['-o', `lowerdir=${lower},upperdir=${upper},workdir=${otherWork}`, mnt], ['same filesystem'], [root, otherFs]);
      assert.ok(line.includes(otherWork) || line.includes(upper), `the error names the directories: ${line}`);
    });
  });

  test('5. a mountpoint that does not exist', () => {
    const missing = join(root, 'no-such-mnt');
    assertRefused(['-o', `lowerdir=${lower}`, missing], [missing], [root]);
  });

  test('6. a mountpoint already in use', requires('root'), () => {
    const [busy, source] = mkdirs(root, 'busy-mnt', 'bind-source');
    writeFileSync(join(source, 'marker'), 'bound\n');
    ourMounts.add(busy);
    try {
      const m = spawnSync('mount', ['--bind', source, busy], { encoding: 'utf8' });
      assert.equal(m.status, 0, `mount --bind: ${m.stderr}`);
      assert.ok(isMounted(busy));
      assertRefused(['-o', `lowerdir=${lower}`, busy], ['in use', busy], [root]);
      assert.ok(isMounted(busy), 'the bind mount is still there');
    } finally {
      forceUnmount(busy);
      ourMounts.delete(busy);
    }
    assert.ok(!isMounted(busy));
  });

  test('7a. overlapping directories: upperdir inside a lowerdir', () => {
    const [inner] = mkdirs(lower2, 'upper-inside');
    try {
      assertRefused(['-o', `lowerdir=${lower}:${lower2},upperdir=${inner},workdir=${work}`, mnt], ['overlap', lower2, inner], [root]);
    } finally {
      removeDir(inner);
    }
  });

  test('7b. overlapping directories: the mountpoint is a lowerdir', () => {
    assertRefused(['-o', `lowerdir=${lower}:${lower2}`, lower2], ['overlap', lower2], [root]);
  });

  test('10. an unknown flag, in daemon mode (no -f)', () => {
    assertRefused(['--bogus', '-o', `lowerdir=${lower}`, mnt], ['bogus'], [root]);
  });
});

// ---------------------------------------------------------------------------------------------
// --help and --version.

describe('--help and --version', () => {
  test('8a. --help prints the usage on stdout and exits 0', () => {
    const r = run('--help');
    assert.equal(r.status, 0, show(r));
    assert.ok(r.stdout.startsWith('Usage:'), show(r));
    assert.match(r.stdout, /lowerdir/, show(r));
    assert.equal(r.stderr, '', show(r));
  });

  test('8b. --version prints the name and the version of package.json and exits 0', () => {
    const r = run('--version');
    assert.equal(r.status, 0, show(r));
    assert.equal(r.stdout.trim(), `ts-overlayfs ${VERSION}`, show(r));
    assert.equal(r.stderr, '', show(r));
  });
});

// ---------------------------------------------------------------------------------------------
// Mounting (daemonized: the command returns once the mount is ready).

/**
 * Mounts with `args` (no -f), checks the command's outcome with `check`, reads a lower file
 * through the mount, unmounts with fusermount3 -u and checks that mount and daemon are gone
 * within 3 s. Whatever fails, the mount and the daemon do not outlive the test.
 */
async function mountReadUnmount(
  args: string[],
  mnt: string,
  lowerFile: { rel: string; data: string },
  check: (r: SpawnSyncReturns<string>) => void,
): Promise<void> {
  ourMounts.add(mnt);
  try {
    assert.ok(!isMounted(mnt), 'nothing mounted there before');
    const r = run(...args);
    assert.equal(r.error, undefined, `the command returns once mounted\n${show(r)}`);
    assert.equal(r.status, 0, `exit status 0\n${show(r)}`);
    check(r);
    assert.ok(isMounted(mnt), `mounted when the command returns\n${show(r)}`);
    assert.equal(readFileSync(join(mnt, lowerFile.rel), 'utf8'), lowerFile.data, 'a lower file reads through the mount');
    assert.equal(daemonsFor(mnt).length, 1, 'one ts-overlayfs daemon, with the mountpoint among its arguments');

    const u = spawnSync('fusermount3', ['-u', mnt], { encoding: 'utf8' });
    assert.equal(u.status, 0, `fusermount3 -u: ${u.stderr}`);
    const gone = await eventually(() => !isMounted(mnt) && daemonsFor(mnt).length === 0, 3000);
    assert.ok(gone, `within 3 s: mounted=${isMounted(mnt)}, daemons=${JSON.stringify(daemonsFor(mnt))}`);
  } finally {
    cleanUpMount(mnt);
    ourMounts.delete(mnt);
  }
}

describe('mounting from the command line', { ...requires('root', 'fuse'), timeout: 120000 }, () => {
  let root: string;
  let lower: string;

  before(() => {
    root = newRoot('cli-mount');
    [lower] = mkdirs(root, 'lower');
    writeFileSync(join(lower, 'hello.txt'), 'hello from the lower\n');
  });

  test('9. an unknown option is ignored with a warning and the mount works', async () => {
    const [mnt] = mkdirs(root, 'mnt9');
    const lowerBefore = listing(lower);
    await mountReadUnmount(['-o', `lowerdir=${lower},bogus_opt=1`, mnt], mnt, { rel: 'hello.txt', data: 'hello from the lower\n' }, (r) => {
      // The whole argument, value and all, as fuse-overlayfs prints it.
      assert.ok(r.stderr.split('\n').includes('unknown argument ignored: bogus_opt=1'), show(r));
      assert.doesNotMatch(r.stderr, /error|ts-overlayfs:/i, show(r));
    });
    assert.deepEqual(listing(lower), lowerBefore, 'the lower is unchanged');
  });

  test('11. an empty option and a quoted comma in -o', async () => {
    const [mnt] = mkdirs(root, 'mnt11');
    const lowerBefore = listing(lower);
    await mountReadUnmount(['-o', `lowerdir=${lower},,ro,context="a,b"`, mnt], mnt, { rel: 'hello.txt', data: 'hello from the lower\n' }, (r) => {
      // context= is taken silently, as fuse-overlayfs takes it; `b"` is not an option of its
      // own, the empty one is skipped.
      assert.equal(r.stderr, '', show(r));
      const line = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === mnt);
      assert.ok(line !== undefined, 'mounted');
      assert.ok(line.split(' ')[5].split(',').includes('ro'), `ro after the empty option is honoured: ${line}`);
    });
    assert.deepEqual(listing(lower), lowerBefore, 'the lower is unchanged');
  });

  // fuse-overlayfs hands diratime and a bare max_write to libfuse, which refuses them (libfuse 2
  // and 3 alike): the mount fails, and nothing is left mounted or running.
  test('13. a libfuse option libfuse refuses fails the mount and leaves nothing', () => {
    const [mnt] = mkdirs(root, 'mnt13');
    for (const opt of ['diratime', 'max_write']) {
      assertRefused(['-o', `lowerdir=${lower},${opt}`, mnt], [opt], [root]);
      assert.ok(!isMounted(mnt), `${opt}: nothing left mounted`);
    }
  });

  test('14. ro with an upper: the upper is part of the view, read-only', async () => {
    const [mnt, upper, work] = mkdirs(root, 'mnt14', 'upper14', 'work14');
    writeFileSync(join(upper, 'up.txt'), 'from the upper\n');
    const before = listing(upper);
    await mountReadUnmount(['-o', `lowerdir=${lower},upperdir=${upper},workdir=${work},ro`, mnt], mnt, { rel: 'up.txt', data: 'from the upper\n' }, () => {
      assert.equal(readFileSync(join(mnt, 'hello.txt'), 'utf8'), 'hello from the lower\n');
      assert.throws(() => writeFileSync(join(mnt, 'new'), 'x'), /EROFS/);
    });
    assert.deepEqual(listing(upper), before, 'the upper is unchanged');
  });

  // Beyond the listed cases: fuse-overlayfs 1.10 run as root accepts allow_root and mounts;
  // libfuse refuses allow_root beside the allow_other we add for root, so we must not add it.
  test('12. allow_root, accepted by fuse-overlayfs as root, mounts', async () => {
    const [mnt] = mkdirs(root, 'mnt12');
    await mountReadUnmount(['-o', `lowerdir=${lower},allow_root`, mnt], mnt, { rel: 'hello.txt', data: 'hello from the lower\n' }, (r) => {
      assert.equal(r.stderr, '', show(r));
    });
  });
});
