#!/usr/bin/env node
'use strict';
/*
 * Benchmark: kernel overlayfs vs fuse-overlayfs vs ts-overlayfs (and optionally ts-overlayfs
 * built from another commit) over one generated set of three lower layers: mount time, cold
 * and warm walks, reads, writes and namespace changes, in interleaved rounds, each result
 * checked, plus the daemons' peak memory. Plain CommonJS with no dependencies so it runs even
 * while the TypeScript build is broken. Run it through scripts/bench (which installs the tools).
 *
 * Safety rules this file follows:
 *  - node itself never touches a mountpoint (a hung FUSE daemon would hang a sync fs call
 *    forever); everything that goes through a mount is a child under `timeout`.
 *  - every exit path (normal, error, signal) goes through cleanup(), which unmounts, ends the
 *    daemons it started (by pid), removes the baseline worktree, and removes the temp dir only
 *    once nothing is mounted beneath it.
 */

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');

const REPO = path.resolve(__dirname, '..');
const MIB = 1024 * 1024;
// Overridable so an installed build (or a stub, when testing this script) can be measured.
const TS_BIN = process.env.TS_OVERLAYFS_BIN || path.join(REPO, 'bin', 'ts-overlayfs');
const KINDS = ['kernel', 'fuse-overlayfs', 'ts-overlayfs', 'baseline'];
// Pinned as in the tests (test/helpers/mounts.ts), so the reference does not depend on the
// module's build defaults; with redirect_dir=nofollow a rename of a lower dir is EXDEV.
const KERNEL_EXTRA = 'redirect_dir=nofollow,index=off,metacopy=off';
const TOUCH_EPOCH = 1600000000;
const META_UID = 4321;

// Rows of the table. A group mounts once and measures its rows in order.
const ROWS = {
  mount: 'mount (spawn → stat ok)',
  read_small: 'read all small files, tar | wc -c',
  find_cold: 'find + lstat walk, cold',
  find_warm: 'find + lstat walk, warm',
  read_big_cold: 'seq. read big file, cold',
  write_big: 'seq. write + fsync',
  create_unlink: 'create, then unlink',
  meta: 'chmod+chown+touch lower files',
  mv_dir: 'mv lower dir',
  rm_tree: 'rm -rf lower tree',
  untar: 'untar',
};

const HELP = `Usage: scripts/bench [options]

Benchmarks kernel overlayfs, fuse-overlayfs and ts-overlayfs (and, with --baseline, a
ts-overlayfs built from another commit) over one generated set of three lower layers.
Must run as root (kernel overlay mount, FUSE, drop_caches); --help works without.

Contenders (--only picks a subset; the order of columns is always this one):
  kernel          mount -t overlay, with ${KERNEL_EXTRA}
  fuse-overlayfs  the fuse-overlayfs on PATH
  ts-overlayfs    <repo>/bin/ts-overlayfs of this working tree (or env TS_OVERLAYFS_BIN)
  baseline        ts-overlayfs of --baseline REV, reported as ts@<short hash>: a temporary
                  git worktree of REV (a clone if that fails) in the temp dir, prepared by
                  that checkout's own ./scripts/setup (installs what that commit needs and
                  builds it); removed at the end, also on failure or signal
All FUSE contenders get -o lowerdir=L1:L2:L3,upperdir=U,workdir=W and run as daemons (no -f).

Workloads (rows; a group of rows shares one mount, every group gets a fresh mount with its
own new upper/work, so contenders never share state; all share the read-only lowers). Node
never touches a mount: every command is a child under timeout. Each result is checked:
  mount           from the spawn of the mount command until \`stat\` of a lower file in the
                  mount succeeds (lower page cache warm). Check: the mount is in mountinfo
                  with the contender's fs type.
  read_small      same mount: cd MNT && tar cf - --exclude=./big . | wc -c (every file but
                  the big one; fresh mount, lowers read just before so their page cache is
                  warm). Check: the byte count equals the tar size computed from the layers.
  find_cold       sync, echo 3 > /proc/sys/vm/drop_caches, fresh mount, then
                  find MNT -printf '%i %m %s %T@\\n' | wc -l. Check: the entry count.
  find_warm       the same walk again on that mount. Check: the entry count.
  read_big_cold   drop caches, fresh mount, dd if=MNT/big/file0 of=/dev/null bs=1M.
                  Check: dd's byte count.
  write_big       dd if=/dev/zero of=MNT/written bs=1M count=N conv=fsync.
                  Check: dd's byte count and the file's size through the mount.
  create_unlink   in a new dir: seq | xargs touch (N creates), then seq | xargs rm (no -f,
                  so a missing file fails). Check: both exit 0, the dir is empty after.
  meta            xargs chmod 600, chown ${META_UID}:${META_UID}, touch -d @${TOUCH_EPOCH} over a
                  precomputed list of N lower files (copy-ups). Check: every file has that
                  mode, owner and mtime, and the sizes add up.
  mv_dir          mv MNT/mv/src/tree MNT/mv/dst/ (a merged lower dir: the rename is EXDEV,
                  so mv copies and removes). Check: the listing under mv/ is the moved tree.
  rm_tree         rm -rf MNT/rm/tree (a merged lower tree). Check: nothing left under rm/.
  untar           tar xf TARBALL -C MNT/untar (a tarball outside the mount, made once).
                  Check: file and dir counts and the total size.
Before the rounds, each contender is mounted once and its whole merged view is compared
with the generated model (types and sizes); a difference counts as a failure.

Rounds: R rounds (--runs); in each round every group runs once per contender, the order of
the contenders rotating by one from group to group and round to round. The table shows the
median per contender (ms, wall clock from spawn to exit incl. ~2 ms of spawn) and ratios of
medians. Daemon peak RSS: VmHWM of the serving process (found by the mountpoint in its
argv, holding /dev/fuse) read just before each unmount; the maximum over the run.

Options:
  --only LIST        subset of: ${KINDS.join(',')}
                     (ts@REV is an alias of baseline); default: all, baseline only
                     with --baseline
  --baseline REV     also benchmark ts-overlayfs built from REV (see above)
  --workloads LIST   subset of rows (default all): ${Object.keys(ROWS).slice(0, 4).join(',')},
                     ${Object.keys(ROWS).slice(4).join(',')}
                     (the other rows of a selected row's group are measured too)
  --runs N           rounds (default 5; env BENCH_RUNS)
  --small            quick check with small sizes (env BENCH_SMALL=1): files 1000, meta 200,
                     mv 100, rm 300, create 500, untar 1000, big 16 MiB, write 16 MiB
  --files N          small files in small/ (default 16000; env BENCH_FILES)
  --meta-files N     lower files for meta (default 2000)
  --mv-files N       files in the moved lower dir (default 800)
  --rm-files N       files in the removed lower tree (default 2400)
  --create-files N   files created then unlinked (default 5000)
  --untar-files N    files in the tarball (default 10000)
  --big-mib N        size of the big lower file, MiB (default 256; env BENCH_BIG_MIB)
  --write-mib N      size of the written file, MiB (default 256)
  --timeout SEC      limit for any single command (default 300; env BENCH_TIMEOUT)
  --setup-timeout S  limit for the baseline's ./scripts/setup (default 1200)
  --tmpdir DIR       parent of the temp dir (default /var/tmp; env BENCH_TMPDIR)
  --readonly         mount the lowers only (no upper): only mount, read_small, find_*,
                     read_big_cold run
  --json             print one JSON object on stdout instead of the table
  --table-from FILE  print the table of a report saved with --json, and exit (no root)
  -h, --help         this text
The defaults give a merged view of ~23k entries (16000 small files, 2000 + 800 + 2400 more,
their dirs). Progress goes to stderr; the result (table or JSON) to stdout.
Exit status: 0 ok, 1 error (incl. a baseline that does not build), 2 a mount failed,
3 a workload failed or its check did (the table still shows the rest).
`;

// ---------------------------------------------------------------- options

function parseArgs(argv) {
  const env = process.env;
  const small = env.BENCH_SMALL === '1' || argv.includes('--small');
  const opts = {
    only: null,
    baseline: null,
    workloads: Object.keys(ROWS),
    runs: intEnv('BENCH_RUNS', 5),
    files: intEnv('BENCH_FILES', small ? 1000 : 16000),
    metaFiles: small ? 200 : 2000,
    mvFiles: small ? 100 : 800,
    rmFiles: small ? 300 : 2400,
    createFiles: small ? 500 : 5000,
    untarFiles: small ? 1000 : 10000,
    bigMib: intEnv('BENCH_BIG_MIB', small ? 16 : 256),
    writeMib: small ? 16 : 256,
    timeout: intEnv('BENCH_TIMEOUT', 300),
    setupTimeout: 1200,
    tmpdir: env.BENCH_TMPDIR || '/var/tmp',
    json: false,
    readonly: false,
    small,
    help: false,
  };
  let onlyList = null;
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    const next = () => {
      if (value !== undefined) return value;
      if (i + 1 >= argv.length) throw usageError(`${arg} needs a value`);
      return argv[++i];
    };
    const list = () => next().split(',').map((s) => s.trim()).filter(Boolean);
    switch (arg) {
      case '-h': case '--help': opts.help = true; break;
      case '--json': opts.json = true; break;
      case '--table-from': opts.tableFrom = next(); break;
      case '--readonly': opts.readonly = true; break;
      case '--small': break; // already applied above, before the size defaults
      case '--runs': opts.runs = positiveInt(arg, next()); break;
      case '--files': opts.files = positiveInt(arg, next()); break;
      case '--meta-files': opts.metaFiles = positiveInt(arg, next()); break;
      case '--mv-files': opts.mvFiles = positiveInt(arg, next()); break;
      case '--rm-files': opts.rmFiles = positiveInt(arg, next()); break;
      case '--create-files': opts.createFiles = positiveInt(arg, next()); break;
      case '--untar-files': opts.untarFiles = positiveInt(arg, next()); break;
      case '--big-mib': opts.bigMib = positiveInt(arg, next()); break;
      case '--write-mib': opts.writeMib = positiveInt(arg, next()); break;
      case '--timeout': opts.timeout = positiveInt(arg, next()); break;
      case '--setup-timeout': opts.setupTimeout = positiveInt(arg, next()); break;
      case '--tmpdir': opts.tmpdir = next(); break;
      case '--baseline': opts.baseline = next(); break;
      case '--only': onlyList = list(); break;
      case '--workloads': {
        const l = list();
        const bad = l.filter((w) => !ROWS[w]);
        if (bad.length || !l.length) throw usageError(`--workloads: unknown row(s) ${bad.join(',')}; choose from ${Object.keys(ROWS).join(',')}`);
        opts.workloads = l;
        break;
      }
      default: throw usageError(`unknown argument: ${argv[i]}`);
    }
  }
  if (onlyList) {
    const norm = onlyList.map((n) => (n.startsWith('ts@') ? 'baseline' : n));
    const bad = norm.filter((n) => !KINDS.includes(n));
    if (bad.length || !norm.length) throw usageError(`--only: unknown contender(s) ${bad.join(',')}; choose from ${KINDS.join(',')}`);
    if (norm.includes('baseline') && !opts.baseline) throw usageError('--only baseline needs --baseline REV');
    opts.only = KINDS.filter((k) => norm.includes(k));
  } else {
    opts.only = KINDS.filter((k) => k !== 'baseline' || opts.baseline);
  }
  return opts;

  function intEnv(name, dflt) {
    return env[name] === undefined || env[name] === '' ? dflt : positiveInt(name, env[name]);
  }
}

function positiveInt(name, text) {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw usageError(`${name}: expected a positive integer, got ${JSON.stringify(text)}`);
  return n;
}

function usageError(message) {
  const err = new Error(message);
  err.usage = true;
  return err;
}

// ---------------------------------------------------------------- logging

const log = (msg) => process.stderr.write(`bench: ${msg}\n`);
const warnings = [];
function warn(msg) {
  warnings.push(msg);
  process.stderr.write(`bench: WARNING: ${msg}\n`);
}

// ---------------------------------------------------------------- child processes

const liveChildren = new Set();

/** Synchronous helper for short setup/cleanup commands; always bounded by `timeout`. */
function run(cmd, args, { timeoutSec = 60, allowFail = false, input, cwd = '/' } = {}) {
  const res = spawnSync('timeout', ['-k', '5', String(timeoutSec), cmd, ...args], {
    encoding: 'utf8',
    input,
    cwd,
    stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    maxBuffer: 256 * MIB,
  });
  if (res.error) throw res.error;
  if (res.status !== 0 && !allowFail) {
    throw new Error(`${cmd} ${args.join(' ')} failed (${describeExit(res.status, res.signal)}): ${(res.stderr || '').trim()}`);
  }
  return res;
}

function describeExit(code, signal) {
  if (code === 124) return 'timed out';
  if (code === 137) return 'killed after timing out';
  if (signal) return `signal ${signal}`;
  return `exit ${code}`;
}

/**
 * Runs one command under `timeout` and times it from spawn to exit with the monotonic clock.
 * Spawn cost is included, but it is identical for every contender (see spawn_overhead_ms).
 */
function runTimed(cmd, args, { timeoutSec, captureStdout = false, stdio } = {}) {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn('timeout', ['-k', '5', String(timeoutSec), cmd, ...args], {
      cwd: '/', // never inside a mount: a child's chdir happens before `timeout` can guard it
      stdio: stdio || ['ignore', captureStdout ? 'pipe' : 'ignore', 'pipe'],
    });
    liveChildren.add(child);
    let end = null;
    const out = [];
    let err = '';
    if (captureStdout && child.stdout) child.stdout.on('data', (c) => out.push(c));
    if (child.stderr) {
      child.stderr.on('data', (c) => {
        if (err.length < 16384) err += c.toString();
      });
    }
    child.on('error', (e) => {
      liveChildren.delete(child);
      reject(e);
    });
    child.on('exit', () => {
      end = process.hrtime.bigint();
    });
    child.on('close', (code, signal) => {
      liveChildren.delete(child);
      if (end === null) end = process.hrtime.bigint();
      resolve({
        ms: Number(end - start) / 1e6, start, end, code, signal, ok: code === 0,
        stderr: err.trim(), stdout: captureStdout ? Buffer.concat(out).toString() : null,
      });
    });
  });
}

/** bash -o pipefail -c SCRIPT with positional args $1.. (paths never go through quoting). */
const bashArgs = (script, args) => ['-o', 'pipefail', '-c', script, 'bench', ...args.map(String)];

function brief(res) {
  return `${describeExit(res.code, res.signal)}${res.stderr ? `: ${res.stderr.split('\n').slice(0, 4).join(' | ')}` : ''}`;
}

/** An untimed step (preparation or check) through bash; throws unless it exits 0. */
async function sh(script, args, opts, what) {
  const res = await runTimed('bash', bashArgs(script, args), { timeoutSec: opts.timeout, captureStdout: true });
  if (!res.ok) throw new Error(`${what || 'command'} failed (${brief(res)})`);
  return res.stdout;
}

/** `timeout` makes itself a process-group leader, so kill the group to reach find/cat/dd too. */
function killLiveChildren() {
  for (const child of liveChildren) {
    try { process.kill(-child.pid, 'SIGKILL'); } catch { /* already gone */ }
    try { process.kill(child.pid, 'SIGKILL'); } catch { /* already gone */ }
  }
}

// ---------------------------------------------------------------- /proc helpers

function readMountinfo() {
  const lines = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean);
  return lines.map((line) => {
    const [left, right] = line.split(' - ');
    const f = left.split(' ');
    const unescape = (s) => s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
    return { mountpoint: unescape(f[4]), fstype: right.split(' ')[0] };
  });
}

const mountEntry = (mnt) => readMountinfo().filter((m) => m.mountpoint === mnt).pop();
const isMounted = (mnt) => readMountinfo().some((m) => m.mountpoint === mnt);
const mountsUnder = (dir) => readMountinfo().filter((m) => m.mountpoint === dir || m.mountpoint.startsWith(dir + '/'));

function holdsDevFuse(pid) {
  let fds;
  try { fds = fs.readdirSync(`/proc/${pid}/fd`); } catch { return false; }
  for (const fd of fds) {
    try {
      if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === '/dev/fuse') return true;
    } catch { /* closed meanwhile */ }
  }
  return false;
}

/**
 * The serving process: one whose argv has the (unique, per run) mountpoint as an argument and
 * that holds /dev/fuse. fuse-overlayfs's daemon is its forked self; ts-overlayfs's is a
 * detached node process started with the launcher's arguments. Requiring both keeps us from
 * ever signalling someone else's process.
 */
function findDaemon(mnt) {
  const found = [];
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    let argv;
    try { argv = fs.readFileSync(`/proc/${pid}/cmdline`).toString().split('\0'); } catch { continue; }
    if (argv.includes(mnt) && holdsDevFuse(pid)) found.push(Number(pid));
  }
  return found.length ? Math.min(...found) : null;
}

function procMemory(pid) {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = (key) => {
      const m = status.match(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm'));
      return m ? Number(m[1]) : null;
    };
    return { comm: (status.match(/^Name:\s+(.*)$/m) || [])[1] || null, vmhwm_kib: kib('VmHWM'), vmrss_kib: kib('VmRSS') };
  } catch {
    return null;
  }
}

const alive = (pid) => {
  try { process.kill(pid, 0); return true; } catch { return false; }
};

function sleepSync(ms) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- layer generation

/** Deterministic PRNG (mulberry32) so every run of the bench builds the same tree. */
function makeRng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomBuffer(rng, size) {
  const buf = Buffer.alloc(size);
  for (let i = 0; i + 4 <= size; i += 4) buf.writeUInt32LE((rng() * 4294967296) >>> 0, i);
  return buf;
}

const pad = (n, w) => String(n).padStart(w, '0');

/**
 * Builds three lower layers (l1 = top, l3 = bottom) and returns a model of the merged view.
 *
 * small/ is a 3-level tree with 10 files per leaf dir. Each file lands in one layer
 * (50% l3, 30% l2, 20% l1); some l3 files are shadowed by a different copy in l2; some
 * l2/l3 files are hidden by 0/0 char-device whiteouts in l1 or l2; and every 50th leaf
 * dir is opaque in l1, hiding whatever l2/l3 have there (l1's own files there stay).
 * meta/, mv/src/tree and rm/tree are trees of 100 files per dir, each file in one layer and
 * each dir present in every layer that has a file in it (merged dirs). big/file0 is in l3.
 */
function generateLayers(root, opts) {
  const rng = makeRng(0x5eed);
  const pool = randomBuffer(rng, 64 * 1024);
  const layers = { l1: path.join(root, 'l1'), l2: path.join(root, 'l2'), l3: path.join(root, 'l3') };
  const stats = {
    small_files_written: { l1: 0, l2: 0, l3: 0 },
    shadowed_files: 0,
    whiteouts: { l1: 0, l2: 0 },
    opaque_dirs: 0,
    big_file_bytes: opts.bigMib * MIB,
  };
  const expected = new Map(); // relative path → 'd' | 'f <size>'
  const whiteouts = [];
  const opaqueDirs = [];
  const madeDirs = new Set();
  const ensureDir = (dir) => {
    if (!madeDirs.has(dir)) {
      fs.mkdirSync(dir, { recursive: true });
      madeDirs.add(dir);
    }
  };
  const addExpectedDir = (rel) => {
    for (let d = rel; d && d !== '.'; d = path.dirname(d)) expected.set(d, 'd');
  };
  const writeFile = (layer, rel, maxSize) => {
    const size = Math.floor(rng() * (maxSize + 1));
    const offset = Math.floor(rng() * (pool.length - size));
    ensureDir(path.join(layers[layer], path.dirname(rel)));
    fs.writeFileSync(path.join(layers[layer], rel), pool.subarray(offset, offset + size));
    return size;
  };
  const pickLayer = () => {
    const r = rng();
    return r < 0.5 ? 'l3' : r < 0.8 ? 'l2' : 'l1';
  };
  for (const l of Object.values(layers)) ensureDir(l);

  // small/
  const leafDirs = Math.ceil(opts.files / 10);
  const side = Math.max(2, Math.ceil(Math.cbrt(leafDirs)));
  let made = 0;
  for (let leaf = 0; made < opts.files; leaf++) {
    const a = Math.floor(leaf / (side * side));
    const b = Math.floor(leaf / side) % side;
    const c = leaf % side;
    const dirRel = `small/d${pad(a, 2)}/d${pad(b, 2)}/d${pad(c, 2)}`;
    addExpectedDir(dirRel);
    const opaque = leaf % 50 === 7 || (leafDirs <= 7 && leaf === 0);
    if (opaque) {
      ensureDir(path.join(layers.l1, dirRel));
      opaqueDirs.push(path.join(layers.l1, dirRel));
    }
    for (let k = 0; k < 10 && made < opts.files; k++, made++) {
      const rel = `${dirRel}/f${pad(made, 5)}`;
      const base = pickLayer();
      let size = writeFile(base, rel, 8192);
      stats.small_files_written[base]++;
      let top = base;
      if (base === 'l3' && rng() < 0.08) {
        size = writeFile('l2', rel, 8192); // the l2 copy is what the merged view must show
        stats.small_files_written.l2++;
        top = 'l2';
        stats.shadowed_files++;
      }
      // No whiteouts inside opaque dirs: kernel 6.18 lists such a whiteout in readdir but
      // fails its lookup with ENOENT, which would break the find walk on the reference mount.
      let hidden = false;
      if (opaque) {
        // nothing: the opaque l1 dir already hides the lower copies
      } else if (top !== 'l1' && rng() < 0.04) {
        whiteouts.push(path.join(layers.l1, rel));
        stats.whiteouts.l1++;
        hidden = true;
      } else if (top === 'l3' && rng() < 0.05) {
        whiteouts.push(path.join(layers.l2, rel));
        stats.whiteouts.l2++;
        hidden = true;
      }
      if (opaque && top !== 'l1') hidden = true;
      if (!hidden) expected.set(rel, `f ${size}`);
    }
  }
  for (const w of whiteouts) ensureDir(path.dirname(w));
  // mknod has no Node binding; one xargs call keeps this to a single spawn from here.
  if (whiteouts.length) run('xargs', ['-0', '-I{}', 'mknod', '{}', 'c', '0', '0'], { input: whiteouts.join('\0') });
  if (opaqueDirs.length) run('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', ...opaqueDirs]);
  stats.opaque_dirs = opaqueDirs.length;

  // meta/, mv/, rm/: merged trees of 100 files per dir.
  const tree = (prefix, count) => {
    const files = [];
    let bytes = 0;
    for (let i = 0; i < count; i++) {
      const rel = `${prefix}/s${pad(Math.floor(i / 100), 3)}/f${pad(i, 5)}`;
      const size = writeFile(pickLayer(), rel, 4096);
      addExpectedDir(path.dirname(rel));
      expected.set(rel, `f ${size}`);
      files.push(rel);
      bytes += size;
    }
    return { files, bytes };
  };
  const meta = tree('meta', opts.metaFiles);
  const mv = tree('mv/src/tree', opts.mvFiles);
  ensureDir(path.join(layers.l2, 'mv/dst'));
  addExpectedDir('mv/dst');
  const rm = tree('rm/tree', opts.rmFiles);

  // Big file only in the bottom layer: reads must fall through two layers.
  const chunk = randomBuffer(rng, MIB);
  ensureDir(path.join(layers.l3, 'big'));
  addExpectedDir('big');
  const fd = fs.openSync(path.join(layers.l3, 'big', 'file0'), 'w');
  try {
    for (let m = 0; m < opts.bigMib; m++) {
      chunk.writeUInt32LE(m, 0); // no two MiB identical, in case anything dedups
      fs.writeSync(fd, chunk);
    }
  } finally {
    fs.closeSync(fd);
  }
  expected.set('big/file0', `f ${opts.bigMib * MIB}`);
  // The mount probe: a plain lower file at the top, stat'ed to tell the mount is usable.
  fs.writeFileSync(path.join(layers.l3, 'probe'), 'probe\n');
  expected.set('probe', 'f 6');
  expected.set('', 'd'); // the mount root itself, as `find MNT` prints it

  // What `tar cf - --exclude=./big .` writes (GNU format, default blocking factor 20): a
  // 512-byte header per entry plus the data in 512-byte blocks, two zero blocks, then
  // padding to a 10240-byte record. All names are short, so no long-name headers.
  let tarBytes = 0;
  for (const [rel, kind] of expected) {
    if (rel === 'big' || rel.startsWith('big/')) continue;
    tarBytes += 512;
    if (kind.startsWith('f ')) tarBytes += Math.ceil(Number(kind.slice(2)) / 512) * 512;
  }
  tarBytes = Math.ceil((tarBytes + 1024) / 10240) * 10240;

  const smallVisible = [...expected.entries()].filter(([rel, kind]) => rel.startsWith('small/') && kind.startsWith('f')).length;
  const filesVisible = [...expected.values()].filter((k) => k.startsWith('f')).length;
  Object.assign(stats, {
    small_files_visible: smallVisible,
    meta_files: opts.metaFiles,
    mv_files: opts.mvFiles,
    rm_files: opts.rmFiles,
    files_visible: filesVisible,
    dirs_visible: expected.size - filesVisible,
    expected_entries: expected.size,
    tar_bytes: tarBytes,
  });
  return { layers, stats, expected, meta, mv, rm };
}

/** The tarball for untar, made once outside every mount: 100 files per dir. */
function generateTarball(root, opts) {
  const rng = makeRng(0x7a7);
  const pool = randomBuffer(rng, 64 * 1024);
  const src = path.join(root, 'untar-src');
  let bytes = 0;
  let dirs = 0;
  for (let i = 0; i < opts.untarFiles; i++) {
    const dir = path.join(src, `u${pad(Math.floor(i / 100), 3)}`);
    if (i % 100 === 0) {
      fs.mkdirSync(dir, { recursive: true });
      dirs++;
    }
    const size = Math.floor(rng() * 4097);
    const offset = Math.floor(rng() * (pool.length - size));
    fs.writeFileSync(path.join(dir, `f${pad(i, 5)}`), pool.subarray(offset, offset + size));
    bytes += size;
  }
  const tarball = path.join(root, 'untar.tar');
  run('tar', ['cf', tarball, '-C', src, '.'], { timeoutSec: 600 });
  run('rm', ['-rf', '--one-file-system', src], { timeoutSec: 600 });
  return { tarball, files: opts.untarFiles, dirs, bytes, tar_bytes: fs.statSync(tarball).size };
}

// ---------------------------------------------------------------- contenders

function lowerdirOption(layers) {
  return `lowerdir=${layers.l1}:${layers.l2}:${layers.l3}`;
}

function mountCommand(c, m, layers, readonly) {
  const o = readonly ? lowerdirOption(layers) : `${lowerdirOption(layers)},upperdir=${m.upper},workdir=${m.work}`;
  if (c.kind === 'kernel') return ['mount', ['-t', 'overlay', 'overlay', '-o', `${o},${KERNEL_EXTRA}`, m.mnt]];
  return [c.bin, ['-o', o, m.mnt]];
}

function toolVersion(cmd, args) {
  const res = spawnSync('timeout', ['10', cmd, ...args], { encoding: 'utf8' });
  // fuse-overlayfs also prints fusermount3's version; prefer the line naming the tool itself.
  const lines = `${res.stdout || ''}${res.stderr || ''}`.split('\n').filter((l) => /\d+\.\d+/.test(l));
  const text = lines.find((l) => l.startsWith(path.basename(cmd))) || lines[0];
  return res.status === 0 && text ? text.trim() : null;
}

let baselineCheckout = null; // { dir, kind: 'worktree' | 'clone' } while it exists

function runInherit(cmd, args, { cwd, timeoutSec }) {
  return new Promise((resolve, reject) => {
    const child = spawn('timeout', ['-k', '10', String(timeoutSec), cmd, ...args], { cwd, stdio: ['ignore', 2, 2] });
    liveChildren.add(child);
    child.on('error', (e) => {
      liveChildren.delete(child);
      reject(e);
    });
    child.on('close', (code, signal) => {
      liveChildren.delete(child);
      resolve({ code, signal });
    });
  });
}

/** A checkout of REV beside the layers, built by its own scripts/setup. */
async function prepareBaseline(rev, opts) {
  const git = (args, o = {}) => run('git', ['-C', REPO, ...args], { timeoutSec: 300, ...o });
  const full = git(['rev-parse', '--verify', '--quiet', `${rev}^{commit}`], { allowFail: true }).stdout.trim();
  if (!full) throw new Error(`--baseline ${rev}: not a commit in ${REPO}`);
  const short = git(['rev-parse', '--short', full]).stdout.trim();
  const dir = path.join(tempRoot, `baseline-${short}`);
  log(`baseline: git worktree add ${dir} ${short}`);
  const wt = git(['worktree', 'add', '--detach', dir, full], { allowFail: true });
  if (wt.status === 0) {
    baselineCheckout = { dir, kind: 'worktree' };
  } else {
    log(`baseline: git worktree add failed (${wt.stderr.trim()}); cloning instead`);
    baselineCheckout = { dir, kind: 'clone' };
    run('git', ['clone', '--quiet', '--no-checkout', REPO, dir], { timeoutSec: 600 });
    run('git', ['-C', dir, 'checkout', '--quiet', '--detach', full], { timeoutSec: 300 });
  }
  const setup = path.join(dir, 'scripts', 'setup');
  if (!fs.existsSync(setup)) throw new Error(`baseline ${short}: has no scripts/setup`);
  log(`baseline: running ${short}'s ./scripts/setup (output below)`);
  const t0 = Date.now();
  const res = await runInherit('./scripts/setup', [], { cwd: dir, timeoutSec: opts.setupTimeout });
  if (res.code !== 0) throw new Error(`baseline ${short}: ./scripts/setup failed (${describeExit(res.code, res.signal)})`);
  const bin = path.join(dir, 'bin', 'ts-overlayfs');
  if (!fs.existsSync(bin)) throw new Error(`baseline ${short}: ${bin} does not exist after setup`);
  log(`baseline: ${short} built in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  return { id: `ts@${short}`, kind: 'baseline', bin, commit: full, short };
}

function removeBaseline() {
  if (!baselineCheckout) return;
  const { dir, kind } = baselineCheckout;
  baselineCheckout = null;
  if (kind === 'worktree') {
    spawnSync('timeout', ['120', 'git', '-C', REPO, 'worktree', 'remove', '--force', '--force', dir], { stdio: 'ignore' });
  }
  if (fs.existsSync(dir) && !mountsUnder(dir).length) spawnSync('timeout', ['120', 'rm', '-rf', '--one-file-system', dir], { stdio: 'ignore' });
  if (kind === 'worktree') spawnSync('timeout', ['60', 'git', '-C', REPO, 'worktree', 'prune'], { stdio: 'ignore' });
}

// ---------------------------------------------------------------- mounting

const activeMounts = new Map(); // mountpoint → { contender id, kernel: bool, pid }
let runCounter = 0;

function newRunDir(c, label) {
  const dir = path.join(tempRoot, 'runs', `${pad(++runCounter, 4)}-${c.id.replace(/[^\w.-]/g, '_')}-${label}`);
  const m = { dir, upper: path.join(dir, 'upper'), work: path.join(dir, 'work'), mnt: path.join(dir, 'mnt'), log: path.join(dir, 'mount.log') };
  for (const d of [m.upper, m.work, m.mnt]) fs.mkdirSync(d, { recursive: true });
  return m;
}

/**
 * Mounts and returns the time from the spawn of the mount command until a stat of a lower
 * file through the mount succeeds. The command runs detached (own session) so a Ctrl-C on the
 * terminal reaches only this driver, which then unmounts in order; its output goes to a log
 * file, not a pipe, because a daemon that inherits a pipe would keep it open.
 */
async function mount(c, m, gen, opts) {
  const [cmd, args] = mountCommand(c, m, gen.layers, opts.readonly);
  m.command = [cmd, ...args].join(' ');
  const failure = (why) => {
    const out = fs.existsSync(m.log) ? fs.readFileSync(m.log, 'utf8').trim() : '';
    return Object.assign(new Error(`mount failed: ${why}\n  command: ${m.command}${out ? `\n  output:\n    ${out.split('\n').slice(-20).join('\n    ')}` : ''}`), { mountFailure: true });
  };
  const logFd = fs.openSync(m.log, 'a');
  const start = process.hrtime.bigint();
  const child = spawn('timeout', ['-k', '5', String(Math.min(opts.timeout, 60)), cmd, ...args], { cwd: '/', detached: true, stdio: ['ignore', logFd, logFd] });
  fs.closeSync(logFd);
  liveChildren.add(child);
  activeMounts.set(m.mnt, { id: c.id, kernel: c.kind === 'kernel', pid: null });
  const limit = Math.min(opts.timeout, 60);
  const { code, signal } = await new Promise((resolve) => {
    // `timeout` ends the command; this guard is for a `timeout` that cannot (stopped, say).
    const guard = setTimeout(() => {
      try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ }
      resolve({ code: 124, signal: null });
    }, (limit + 15) * 1000);
    child.on('error', () => { clearTimeout(guard); resolve({ code: 127, signal: null }); });
    child.on('exit', (cd, s) => { clearTimeout(guard); resolve({ code: cd, signal: s }); });
  });
  liveChildren.delete(child);
  if (code !== 0) throw failure(code === 124 ? 'the command did not return within the time limit (does it daemonize?)' : describeExit(code, signal));
  // Usable = a stat of a lower file through the mountpoint succeeds (the empty dir beneath has none).
  const probe = path.join(m.mnt, 'probe');
  let end = null;
  for (let i = 0; i < 500; i++) {
    const res = await runTimed('stat', ['-c', '%i', probe], { timeoutSec: 30 });
    if (res.ok) {
      end = res.end;
      break;
    }
    if (res.code === 124 || res.code === 137) throw failure('stat of a file in the mount timed out');
    await sleep(10);
  }
  if (end === null) throw failure(`command exited 0 but ${probe} did not appear within 5 s`);
  const ms = Number(end - start) / 1e6;
  const entry = mountEntry(m.mnt);
  if (!entry) throw failure('stat worked but nothing is mounted there');
  m.fstype = entry.fstype;
  const want = c.kind === 'kernel' ? /^overlay$/ : /^fuse/;
  if (!want.test(entry.fstype)) throw failure(`mounted as ${entry.fstype}`);
  if (c.kind !== 'kernel') {
    m.pid = findDaemon(m.mnt);
    activeMounts.get(m.mnt).pid = m.pid;
    if (!m.pid) warn(`${c.id}: could not identify the daemon serving ${m.mnt}; no RSS figure for it`);
  }
  return ms;
}

/** Reads the daemon's peak RSS, unmounts, waits for the daemon to go (ends it if it stays). */
function unmount(c, m) {
  const state = activeMounts.get(m.mnt);
  const pid = state ? state.pid : null;
  const mem = pid ? procMemory(pid) : null;
  unmountPath(c.id, m.mnt, pid, c.kind !== 'kernel');
  return mem;
}

function unmountPath(id, mnt, pid, fuse = true) {
  // A mount that failed half-way has no pid yet: look for its daemon before it is detached.
  if (!pid && fuse) pid = findDaemon(mnt);
  for (let attempt = 0; attempt < 3 && isMounted(mnt); attempt++) {
    let res = spawnSync('timeout', ['-k', '5', '30', 'umount', mnt], { stdio: 'ignore' });
    if (res.status !== 0 && isMounted(mnt)) {
      res = spawnSync('timeout', ['-k', '5', '20', 'umount', '-l', mnt], { stdio: 'ignore' });
      if (res.status === 0) process.stderr.write(`bench: ${id}: ${mnt} needed umount -l\n`);
    }
  }
  if (pid) reapDaemon(id, pid);
  activeMounts.delete(mnt);
}

/** A daemon should exit once unmounted; if it lingers, end it (by its pid only). */
function reapDaemon(id, pid) {
  for (let i = 0; i < 100 && alive(pid); i++) sleepSync(50);
  if (!alive(pid)) return;
  process.stderr.write(`bench: ${id}: daemon ${pid} still running after unmount; sending SIGTERM\n`);
  try { process.kill(pid, 'SIGTERM'); } catch { return; }
  for (let i = 0; i < 30 && alive(pid); i++) sleepSync(100);
  if (alive(pid)) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
}

function removeRunDir(m) {
  if (mountsUnder(m.dir).length) return; // never remove beneath a live mount
  spawnSync('timeout', ['300', 'rm', '-rf', '--one-file-system', m.dir], { stdio: 'ignore' });
}

// ---------------------------------------------------------------- cleanup

let tempRoot = null;
let cleanedUp = false;

/**
 * Synchronous on purpose: it runs from signal handlers and process 'exit' too. Unmounts FUSE
 * first, then kernel; removes the temp dir only when nothing is mounted under it, and even
 * then with --one-file-system.
 */
function cleanup() {
  if (cleanedUp) return;
  cleanedUp = true;
  killLiveChildren();
  const entries = [...activeMounts.entries()].sort((a, b) => Number(a[1].kernel) - Number(b[1].kernel));
  for (const [mnt, s] of entries) unmountPath(s.id, mnt, s.pid, !s.kernel);
  if (tempRoot) {
    for (const m of mountsUnder(tempRoot).reverse()) unmountPath('cleanup', m.mountpoint, null);
  }
  removeBaseline();
  if (!tempRoot) return;
  const left = mountsUnder(tempRoot);
  if (left.length) {
    process.stderr.write(`bench: ERROR: still mounted, NOT removing ${tempRoot}: ${left.map((x) => x.mountpoint).join(' ')}\n`);
    process.exitCode = process.exitCode || 1;
    return;
  }
  spawnSync('timeout', ['300', 'rm', '-rf', '--one-file-system', tempRoot], { stdio: 'ignore' });
}

function installExitHandlers() {
  const onSignal = (sig, num) => () => {
    process.stderr.write(`\nbench: got ${sig}, cleaning up\n`);
    cleanup();
    process.exit(128 + num);
  };
  process.on('SIGINT', onSignal('SIGINT', 2));
  process.on('SIGTERM', onSignal('SIGTERM', 15));
  process.on('SIGHUP', onSignal('SIGHUP', 1));
  process.on('exit', cleanup); // last resort; cleanup() is idempotent
}

// ---------------------------------------------------------------- workloads

async function dropCaches(opts) {
  await sh('sync -f "$1" && echo 3 > /proc/sys/vm/drop_caches', [tempRoot], opts, 'dropping caches');
}

/** Runs a timed step; a non-zero exit is the workload's failure. */
async function timedStep(what, cmd, args, opts, { capture = false } = {}) {
  const res = await runTimed(cmd, args, { timeoutSec: opts.timeout, captureStdout: capture });
  if (!res.ok) throw new Error(`${what} failed (${brief(res)})`);
  return res;
}
const timedBash = (what, script, args, opts, o) => timedStep(what, 'bash', bashArgs(script, args), opts, o);

function expectEqual(what, got, want) {
  if (got !== want) throw new Error(`check failed: ${what}: expected ${want}, got ${got}`);
}

function ddBytes(res) {
  const m = res.stderr.match(/^(\d+) bytes/m);
  return m ? Number(m[1]) : null;
}

/** Parses `find -printf '%P\t%y\t%s\n'` into rel → 'd' | 'f <size>' | type letter. */
function parseListing(text) {
  const entries = new Map();
  for (const line of text.split('\n')) {
    if (!line) continue;
    const [rel, type, size] = line.split('\t');
    entries.set(rel, type === 'd' ? 'd' : type === 'f' ? `f ${size}` : type);
  }
  return entries;
}

function diffListing(expected, actual) {
  const problems = [];
  for (const [rel, kind] of expected) {
    if (!actual.has(rel)) problems.push(`missing /${rel}`);
    else if (actual.get(rel) !== kind) problems.push(`/${rel}: expected ${kind}, got ${actual.get(rel)}`);
  }
  for (const [rel, kind] of actual) if (!expected.has(rel)) problems.push(`unexpected /${rel} (${kind})`);
  return problems;
}

const listing = (dir, opts) => sh('find "$1" -printf \'%P\\t%y\\t%s\\n\'', [dir], opts, 'listing');

function countFiles(dir) {
  let n = 0;
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(d, e.name));
      else if (e.isFile() && !e.name.startsWith('.wh.')) n++; // fuse-overlayfs adds .wh..wh..opq files
    }
  };
  try { walk(dir); } catch { return null; }
  return n;
}

/**
 * Groups of rows. Each body gets a fresh run dir (new upper/work, unique mountpoint), mounts
 * through ctx.mount() and returns { row: ms }. What it checks throws on a mismatch.
 */
function groups(gen, tar, opts) {
  const st = gen.stats;
  return [
    {
      id: 'mount_tar', rows: ['mount', 'read_small'], writes: false,
      labels: { mount: ROWS.mount, read_small: `${ROWS.read_small} (${st.expected_entries - 3}, ${(st.tar_bytes / MIB).toFixed(0)} MiB)` },
      async body(ctx) {
        // The lowers' page cache warm, the mount's own caches new.
        await sh('tar -C "$1" --exclude=./l3/big -cf - . | wc -c >/dev/null', [path.dirname(gen.layers.l1)], opts, 'reading the lowers');
        const mountMs = await ctx.mount();
        const res = await timedBash('tar', 'cd "$1" && tar cf - --exclude=./big . | wc -c', [ctx.m.mnt], opts, { capture: true });
        expectEqual('tar byte count', Number(res.stdout.trim()), st.tar_bytes);
        return { mount: mountMs, read_small: res.ms };
      },
    },
    {
      id: 'find', rows: ['find_cold', 'find_warm'], writes: false,
      labels: { find_cold: `${ROWS.find_cold} (${st.expected_entries})`, find_warm: `${ROWS.find_warm} (${st.expected_entries})` },
      async body(ctx) {
        await dropCaches(opts);
        await ctx.mount();
        const out = {};
        for (const row of ['find_cold', 'find_warm']) {
          const res = await timedBash('find', 'find "$1" -printf \'%i %m %s %T@\\n\' | wc -l', [ctx.m.mnt], opts, { capture: true });
          expectEqual('find entry count', Number(res.stdout.trim()), st.expected_entries);
          out[row] = res.ms;
        }
        return out;
      },
    },
    {
      id: 'read_big', rows: ['read_big_cold'], writes: false,
      labels: { read_big_cold: `${ROWS.read_big_cold} (${opts.bigMib} MiB)` },
      async body(ctx) {
        await dropCaches(opts);
        await ctx.mount();
        const res = await timedStep('dd', 'dd', [`if=${ctx.m.mnt}/big/file0`, 'of=/dev/null', 'bs=1M'], opts);
        expectEqual('bytes read', ddBytes(res), opts.bigMib * MIB);
        return { read_big_cold: res.ms };
      },
    },
    {
      id: 'write_big', rows: ['write_big'], writes: true,
      labels: { write_big: `${ROWS.write_big} (${opts.writeMib} MiB)` },
      async body(ctx) {
        await ctx.mount();
        const res = await timedStep('dd', 'dd', ['if=/dev/zero', `of=${ctx.m.mnt}/written`, 'bs=1M', `count=${opts.writeMib}`, 'conv=fsync'], opts);
        expectEqual('bytes written', ddBytes(res), opts.writeMib * MIB);
        const size = await sh('stat -c %s "$1/written"', [ctx.m.mnt], opts, 'stat');
        expectEqual('size of the written file', Number(size.trim()), opts.writeMib * MIB);
        return { write_big: res.ms };
      },
    },
    {
      id: 'create_unlink', rows: ['create_unlink'], writes: true,
      labels: { create_unlink: `${ROWS.create_unlink} ${opts.createFiles} files` },
      async body(ctx) {
        await ctx.mount();
        await sh('mkdir "$1/created"', [ctx.m.mnt], opts, 'mkdir');
        const res = await timedBash('create/unlink',
          'cd "$1/created" && seq -f "f%06g" 1 "$2" | xargs touch && seq -f "f%06g" 1 "$2" | xargs rm', [ctx.m.mnt, opts.createFiles], opts);
        const left = await sh('ls -A "$1/created" | wc -l', [ctx.m.mnt], opts, 'ls');
        expectEqual('entries left after unlinking', Number(left.trim()), 0);
        return { create_unlink: res.ms };
      },
    },
    {
      id: 'meta', rows: ['meta'], writes: true,
      labels: { meta: `chmod+chown+touch ${opts.metaFiles} lower files` },
      async body(ctx) {
        await ctx.mount();
        const res = await timedBash('chmod/chown/touch',
          `cd "$1" && xargs -0 -a "$2" chmod 600 && xargs -0 -a "$2" chown ${META_UID}:${META_UID} && xargs -0 -a "$2" touch -d @${TOUCH_EPOCH}`,
          [ctx.m.mnt, ctx.lists.meta], opts);
        const out = await sh('find "$1/meta" -type f -printf \'%m %U %G %T@ %s\\n\'', [ctx.m.mnt], opts, 'find');
        const lines = out.split('\n').filter(Boolean);
        expectEqual('files under meta/', lines.length, opts.metaFiles);
        let bytes = 0;
        for (const line of lines) {
          const [mode, uid, gid, mtime, size] = line.split(' ');
          if (mode !== '600' || Number(uid) !== META_UID || Number(gid) !== META_UID || Math.abs(Number(mtime) - TOUCH_EPOCH) > 1e-6) {
            throw new Error(`check failed: a file under meta/ shows mode ${mode} owner ${uid}:${gid} mtime ${mtime}`);
          }
          bytes += Number(size);
        }
        expectEqual('bytes under meta/', bytes, gen.meta.bytes);
        return { meta: res.ms };
      },
    },
    {
      id: 'mv_dir', rows: ['mv_dir'], writes: true,
      labels: { mv_dir: `mv lower dir of ${opts.mvFiles} files` },
      async body(ctx) {
        await ctx.mount();
        const res = await timedStep('mv', 'mv', [`${ctx.m.mnt}/mv/src/tree`, `${ctx.m.mnt}/mv/dst/`], opts);
        const want = new Map([['', 'd'], ['src', 'd'], ['dst', 'd']]);
        for (const [rel, kind] of gen.expected) {
          if (rel === 'mv/src/tree' || rel.startsWith('mv/src/tree/')) want.set(`dst/${rel.slice('mv/src/'.length)}`, kind);
        }
        const problems = diffListing(want, parseListing(await listing(`${ctx.m.mnt}/mv`, opts)));
        if (problems.length) throw new Error(`check failed: mv/ after the move differs in ${problems.length} entries, e.g. ${problems.slice(0, 3).join('; ')}`);
        ctx.after = () => {
          // After the unmount: did mv copy (EXDEV), or did the rename go through?
          ctx.note.mv_upper_files = opts.readonly ? null : countFiles(path.join(ctx.m.upper, 'mv', 'dst', 'tree'));
        };
        return { mv_dir: res.ms };
      },
    },
    {
      id: 'rm_tree', rows: ['rm_tree'], writes: true,
      labels: { rm_tree: `rm -rf lower tree of ${opts.rmFiles} files` },
      async body(ctx) {
        await ctx.mount();
        const res = await timedStep('rm -rf', 'rm', ['-rf', `${ctx.m.mnt}/rm/tree`], opts);
        const left = await listing(`${ctx.m.mnt}/rm`, opts);
        expectEqual('entries under rm/ after rm -rf', left.split('\n').filter(Boolean).length, 1);
        return { rm_tree: res.ms };
      },
    },
    {
      id: 'untar', rows: ['untar'], writes: true,
      labels: { untar: `untar ${tar.files} files (${(tar.bytes / MIB).toFixed(0)} MiB)` },
      async body(ctx) {
        await ctx.mount();
        await sh('mkdir "$1/untar"', [ctx.m.mnt], opts, 'mkdir');
        const res = await timedStep('tar xf', 'tar', ['xf', tar.tarball, '-C', `${ctx.m.mnt}/untar`], opts);
        const out = await sh('find "$1/untar" -printf \'%y %s\\n\'', [ctx.m.mnt], opts, 'find');
        let files = 0; let dirs = 0; let bytes = 0;
        for (const line of out.split('\n')) {
          if (!line) continue;
          const [type, size] = line.split(' ');
          if (type === 'f') {
            files++;
            bytes += Number(size);
          } else if (type === 'd') dirs++;
        }
        expectEqual('files extracted', files, tar.files);
        expectEqual('dirs (incl. untar/)', dirs, tar.dirs + 1);
        expectEqual('bytes extracted', bytes, tar.bytes);
        return { untar: res.ms };
      },
    },
  ].filter((g) => (!opts.readonly || !g.writes) && g.rows.some((r) => opts.workloads.includes(r)));
}

/** Mounts each contender once and compares the whole merged view with the model. */
async function verify(c, gen, opts) {
  const m = newRunDir(c, 'verify');
  try {
    await mount(c, m, gen, opts);
    const problems = diffListing(gen.expected, parseListing(await listing(m.mnt, opts)));
    if (problems.length) throw new Error(`merged view differs from the generated one in ${problems.length} entr${problems.length === 1 ? 'y' : 'ies'}, e.g. ${problems.slice(0, 4).join('; ')}`);
    return m.fstype;
  } finally {
    unmount(c, m);
    removeRunDir(m);
  }
}

async function runGroup(c, g, gen, opts, lists) {
  const m = newRunDir(c, g.id);
  const ctx = { m, lists, note: {}, after: null, mount: () => mount(c, m, gen, opts) };
  let result;
  let error = null;
  let mem = null;
  try {
    result = await g.body(ctx);
  } catch (e) {
    error = e;
  } finally {
    mem = unmount(c, m);
    if (ctx.after && !error) ctx.after();
    removeRunDir(m);
  }
  return { result, error, mem, note: ctx.note };
}

// ---------------------------------------------------------------- reporting

function median(xs) {
  const s = xs.slice().sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

const round = (x, d) => (x === null || x === undefined ? null : Math.round(x * 10 ** d) / 10 ** d);

function fmtMs(v) {
  return v >= 10000 ? v.toFixed(0) : v.toFixed(1);
}

function printTable(report) {
  const md = report.metadata;
  const ids = md.contenders.map((c) => c.id);
  const baseId = (md.contenders.find((c) => c.kind === 'baseline') || {}).id;
  const tsId = ids.includes('ts-overlayfs') ? 'ts-overlayfs' : null;
  const cols = [];
  if (tsId) {
    cols.push(['ts/kernel', tsId, 'kernel'], ['ts/fuse', tsId, 'fuse-overlayfs']);
    if (baseId) cols.push(['ts/base', tsId, baseId]);
  }
  if (baseId) cols.push(['base/kernel', baseId, 'kernel'], ['base/fuse', baseId, 'fuse-overlayfs']);
  cols.push(['fuse/kernel', 'fuse-overlayfs', 'kernel']);
  const usable = cols.filter(([, a, b]) => ids.includes(a) && ids.includes(b));
  const cell = (v, w, fmt) => (v === null || v === undefined ? '-' : fmt(v)).padStart(w);
  const lines = [];
  lines.push(`ts-overlayfs benchmark — kernel ${md.kernel}, ${md.cpus} CPUs, node ${md.node}, temp fs ${md.temp_fs}, ${md.date}`);
  for (const c of md.contenders) lines.push(`  ${c.id}: ${c.version || ''}${c.bin ? ` (${c.bin})` : ''}${c.commit ? ` commit ${c.commit}` : ''}`);
  const f = md.layers;
  lines.push(`layers: 3 lowers, merged view ${f.expected_entries} entries (${f.files_visible} files, ${f.dirs_visible} dirs): small/ ${f.small_files_visible} visible ` +
    `(${f.shadowed_files} shadowed, ${f.whiteouts.l1 + f.whiteouts.l2} whiteouts, ${f.opaque_dirs} opaque dirs), meta/ ${f.meta_files}, mv/ ${f.mv_files}, rm/ ${f.rm_files}, big/file0 ${f.big_file_bytes / MIB} MiB; ` +
    `tarball ${md.tarball.files} files`);
  lines.push(`${md.readonly ? 'read-only mounts (lowers only)' : 'writable mounts (a new empty upper for every group)'}; ${md.rounds} rounds, contender order rotating; ` +
    `median ms of ${md.rounds} (wall clock from spawn, ~${md.spawn_overhead_ms} ms of it spawn); ratios of medians`);
  lines.push('');
  const rowIds = Object.keys(report.workloads);
  const labelW = Math.max(...rowIds.map((r) => report.workloads[r].label.length), 'daemon peak RSS, MiB'.length);
  const colW = Math.max(8, ...ids.map((n) => n.length));
  lines.push(`${'median ms'.padEnd(labelW)}  ${ids.map((n) => n.padStart(colW)).join('  ')}  ${usable.map(([n]) => n.padStart(10)).join(' ')}`);
  for (const r of rowIds) {
    const w = report.workloads[r];
    const med = (n) => (w.contenders[n] ? w.contenders[n].median_ms : null);
    lines.push(`${w.label.padEnd(labelW)}  ${ids.map((n) => cell(med(n), colW, fmtMs)).join('  ')}  ` +
      `${usable.map(([, a, b]) => cell(report.ratios[r][`${a}/${b}`], 10, (v) => v.toFixed(2) + 'x')).join(' ')}`);
  }
  const rss = report.daemon_peak_rss_kib;
  const rssOf = (n) => (rss[n] && rss[n].max !== null ? rss[n].max / 1024 : null);
  lines.push(`${'daemon peak RSS, MiB'.padEnd(labelW)}  ${ids.map((n) => cell(rssOf(n), colW, (v) => v.toFixed(1))).join('  ')}  ` +
    `${usable.map(([, a, b]) => cell(rssOf(a) && rssOf(b) ? rssOf(a) / rssOf(b) : null, 10, (v) => v.toFixed(2) + 'x')).join(' ')}`);
  lines.push('');
  const fuseIds = ids.filter((n) => rss[n]);
  if (fuseIds.length) {
    lines.push('daemon peak RSS per group, MiB (max over rounds, VmHWM just before unmount):');
    for (const g of Object.keys(rss[fuseIds[0]].per_group)) {
      lines.push(`  ${g.padEnd(14)} ${fuseIds.map((n) => `${n} ${rss[n].per_group[g] ? (rss[n].per_group[g] / 1024).toFixed(1) : '-'}`).join(', ')}`);
    }
  }
  for (const w of report.warnings) lines.push(`WARNING: ${w}`);
  for (const x of report.failures) lines.push(`FAILED: ${x.contender}: ${x.group}${x.round ? ` (round ${x.round})` : ''}: ${x.error}`);
  process.stdout.write(lines.join('\n') + '\n');
}

// ---------------------------------------------------------------- main

function preflight(opts) {
  if (process.getuid() !== 0) throw new Error('must run as root (kernel overlay mount, FUSE and drop_caches need it)');
  if (!fs.existsSync('/dev/fuse')) run('modprobe', ['fuse'], { allowFail: true });
  const need = ['mount', 'umount', 'mknod', 'setfattr', 'find', 'xargs', 'dd', 'timeout', 'tar', 'wc', 'stat', 'seq', 'mv', 'rm', 'chmod', 'chown', 'touch', 'bash', 'sync'];
  if (opts.only.includes('fuse-overlayfs')) need.push('fuse-overlayfs');
  if (opts.baseline) need.push('git');
  for (const tool of need) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status !== 0) throw new Error(`${tool} not found (scripts/bench installs the apt packages)`);
  }
  if (opts.only.includes('ts-overlayfs') && !fs.existsSync(TS_BIN)) {
    throw Object.assign(new Error(`ts-overlayfs: ${TS_BIN} does not exist (use --only kernel,fuse-overlayfs to skip it)`), { exitCode: 2 });
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (opts.tableFrom) {
    printTable(JSON.parse(fs.readFileSync(opts.tableFrom, 'utf8')));
    return 0;
  }
  preflight(opts);
  installExitHandlers();
  const tStart = Date.now();

  fs.mkdirSync(opts.tmpdir, { recursive: true });
  tempRoot = fs.mkdtempSync(path.join(opts.tmpdir, 'ts-overlayfs-bench-'));
  const tempFs = run('findmnt', ['-no', 'FSTYPE', '-T', tempRoot], { allowFail: true }).stdout.trim() || 'unknown';
  log(`temp dir ${tempRoot} (${tempFs})`);

  const contenders = [];
  for (const kind of opts.only) {
    if (kind === 'kernel') contenders.push({ id: 'kernel', kind, bin: null, version: os.release() });
    if (kind === 'fuse-overlayfs') contenders.push({ id: 'fuse-overlayfs', kind, bin: 'fuse-overlayfs', version: toolVersion('fuse-overlayfs', ['--version']) });
    if (kind === 'ts-overlayfs') contenders.push({ id: 'ts-overlayfs', kind, bin: TS_BIN, version: toolVersion(TS_BIN, ['--version']) });
    if (kind === 'baseline') {
      const b = await prepareBaseline(opts.baseline, opts);
      b.version = toolVersion(b.bin, ['--version']);
      contenders.push(b);
    }
  }
  if (!opts.only.includes('ts-overlayfs')) {
    const head = run('git', ['-C', REPO, 'rev-parse', 'HEAD'], { allowFail: true }).stdout.trim();
    if (head) log(`working tree at ${head.slice(0, 9)} is not a contender`);
  } else {
    contenders.find((c) => c.kind === 'ts-overlayfs').commit = run('git', ['-C', REPO, 'rev-parse', 'HEAD'], { allowFail: true }).stdout.trim() || null;
  }

  let t0 = Date.now();
  const gen = generateLayers(path.join(tempRoot, 'layers'), opts);
  const tar = generateTarball(tempRoot, opts);
  const lists = { meta: path.join(tempRoot, 'meta.list') };
  fs.writeFileSync(lists.meta, gen.meta.files.join('\0'));
  // Flush now so background writeback does not disturb the measurements.
  run('sync', ['-f', tempRoot], { timeoutSec: opts.timeout });
  log(`generated layers in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${gen.stats.expected_entries} entries in the merged view ` +
    `(${gen.stats.small_files_visible} visible small files), big file ${opts.bigMib} MiB; tarball of ${tar.files} files`);

  const spawnSamples = [];
  for (let i = 0; i < 5; i++) spawnSamples.push((await runTimed('true', [], { timeoutSec: 10 })).ms);
  const spawnOverhead = round(median(spawnSamples), 2);

  const failures = [];
  const failedGroups = new Set(); // `${contender}\0${group}`: skipped in later rounds
  let mountFailed = false;
  const fstypes = {};
  for (const c of contenders) {
    log(`verify ${c.id}: mounting and comparing the merged view with the model`);
    try {
      fstypes[c.id] = await verify(c, gen, opts);
    } catch (e) {
      mountFailed = mountFailed || !!e.mountFailure;
      failures.push({ contender: c.id, group: 'verify', round: null, error: e.message });
      process.stderr.write(`bench: ${c.id}: verify failed: ${e.message}\n`);
    }
  }

  const gs = groups(gen, tar, opts);
  const rowIds = gs.flatMap((g) => g.rows);
  const results = {};
  const labels = {};
  for (const g of gs) Object.assign(labels, g.labels);
  for (const r of rowIds) results[r] = Object.fromEntries(contenders.map((c) => [c.id, []]));
  const rss = Object.fromEntries(contenders.filter((c) => c.kind !== 'kernel').map((c) => [c.id, { max: null, per_group: Object.fromEntries(gs.map((g) => [g.id, null])) }]));
  const mvUpper = {};
  const orders = [];
  t0 = Date.now();
  for (let r = 0; r < opts.runs; r++) {
    const roundStart = Date.now();
    for (let gi = 0; gi < gs.length; gi++) {
      const g = gs[gi];
      const shift = (r + gi) % contenders.length;
      const order = contenders.slice(shift).concat(contenders.slice(0, shift));
      orders.push({ round: r + 1, group: g.id, order: order.map((c) => c.id) });
      for (const c of order) {
        const key = `${c.id}\0${g.id}`;
        if (failedGroups.has(key)) continue;
        const { result, error, mem, note } = await runGroup(c, g, gen, opts, lists);
        if (mem && mem.vmhwm_kib !== null && rss[c.id]) {
          const cur = rss[c.id];
          cur.max = Math.max(cur.max || 0, mem.vmhwm_kib);
          cur.per_group[g.id] = Math.max(cur.per_group[g.id] || 0, mem.vmhwm_kib);
        }
        if (note.mv_upper_files !== undefined) mvUpper[c.id] = note.mv_upper_files;
        if (error) {
          mountFailed = mountFailed || !!error.mountFailure;
          failedGroups.add(key);
          failures.push({ contender: c.id, group: g.id, round: r + 1, error: error.message });
          process.stderr.write(`bench: round ${r + 1}/${opts.runs} ${g.id} [${c.id}]: FAILED: ${error.message}; skipping it in later rounds\n`);
          continue;
        }
        for (const row of g.rows) results[row][c.id].push(round(result[row], 3));
        log(`round ${r + 1}/${opts.runs} ${g.id} [${c.id}]: ${g.rows.map((row) => `${row} ${result[row].toFixed(1)} ms`).join(', ')}` +
          `${mem && mem.vmhwm_kib ? `, peak RSS ${(mem.vmhwm_kib / 1024).toFixed(1)} MiB` : ''}`);
      }
    }
    const per = (Date.now() - t0) / (r + 1);
    log(`round ${r + 1}/${opts.runs} took ${((Date.now() - roundStart) / 1000).toFixed(0)} s` +
      (r + 1 < opts.runs ? `; about ${((per * (opts.runs - r - 1)) / 60000).toFixed(1)} min to go` : ''));
  }

  const workloadsOut = {};
  const ratios = {};
  const ids = contenders.map((c) => c.id);
  const baseId = (contenders.find((c) => c.kind === 'baseline') || {}).id;
  for (const row of rowIds) {
    const per = {};
    for (const id of ids) {
      const xs = results[row][id];
      per[id] = { runs_ms: xs, median_ms: xs.length === opts.runs ? round(median(xs), 3) : null };
    }
    workloadsOut[row] = { label: labels[row], contenders: per };
    ratios[row] = {};
    for (const a of ids) {
      for (const b of ['kernel', 'fuse-overlayfs', baseId]) {
        if (!b || a === b || !ids.includes(b)) continue;
        const x = per[a].median_ms;
        const y = per[b].median_ms;
        ratios[row][`${a}/${b}`] = x && y ? round(x / y, 3) : null;
      }
    }
  }

  const report = {
    tool: 'ts-overlayfs bench',
    metadata: {
      date: new Date().toISOString(),
      kernel: os.release(),
      node: process.version,
      cpus: os.cpus().length,
      cpu_model: (os.cpus()[0] || {}).model || null,
      temp_fs: tempFs,
      contenders: contenders.map((c) => ({ id: c.id, kind: c.kind, bin: c.bin, version: c.version || null, commit: c.commit || null })),
      mount_fstypes: fstypes,
      kernel_mount_options: KERNEL_EXTRA,
      readonly: opts.readonly,
      rounds: opts.runs,
      order: 'contenders rotate by one per group and per round',
      orders,
      timing: 'wall clock from spawn to exit (monotonic), includes process spawn',
      spawn_overhead_ms: spawnOverhead,
      sizes: {
        files: opts.files, meta_files: opts.metaFiles, mv_files: opts.mvFiles, rm_files: opts.rmFiles,
        create_files: opts.createFiles, untar_files: opts.untarFiles, big_mib: opts.bigMib, write_mib: opts.writeMib,
      },
      layers: gen.stats,
      tarball: { files: tar.files, dirs: tar.dirs, bytes: tar.bytes, tar_bytes: tar.tar_bytes },
      mv_upper_files: mvUpper,
      elapsed_s: Math.round((Date.now() - tStart) / 1000),
    },
    workloads: workloadsOut,
    ratios,
    daemon_peak_rss_kib: rss,
    warnings,
    failures,
  };
  for (const [id, v] of Object.entries(mvUpper)) {
    if (v !== null && v !== opts.mvFiles) warn(`${id}: after mv, the upper layer held ${v} of ${opts.mvFiles} files of the moved dir: the rename was not EXDEV?`);
  }

  if (opts.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  else printTable(report);
  log(`done in ${(report.metadata.elapsed_s / 60).toFixed(1)} min`);
  if (mountFailed) return 2;
  return failures.length ? 3 : 0;
}

main().then(
  (code) => {
    cleanup();
    process.exit(process.exitCode || code);
  },
  (err) => {
    if (err.usage) process.stderr.write(`bench: ${err.message}\n\n${HELP}`);
    else process.stderr.write(`bench: ERROR: ${err.message}\n`);
    cleanup();
    process.exit(err.exitCode || (err.mountFailure ? 2 : 1));
  },
);
