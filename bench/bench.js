#!/usr/bin/env node
'use strict';
/*
 * Read-path benchmark: kernel overlayfs vs fuse-overlayfs vs ts-overlayfs over one shared
 * set of lower layers. Plain CommonJS with no dependencies so it runs even while the
 * TypeScript build is broken. Run it through scripts/bench (which installs the tools).
 *
 * Safety rules this file follows:
 *  - node itself never touches a mountpoint (a hung FUSE daemon would hang a sync fs call
 *    forever); everything that reads through a mount is a child under `timeout`.
 *  - every exit path (normal, error, signal) goes through cleanup(), which unmounts and only
 *    removes the temp dir once nothing is mounted beneath it.
 */

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');

const REPO = path.resolve(__dirname, '..');
const MOUNTS = ['kernel', 'fuse-overlayfs', 'ts-overlayfs'];
const MIB = 1024 * 1024;
// Overridable so an installed build (or a stub, when testing this script) can be measured.
const TS_BIN = process.env.TS_OVERLAYFS_BIN || path.join(REPO, 'bin', 'ts-overlayfs');

const HELP = `Usage: scripts/bench [options]

Benchmarks warm-cache read workloads on kernel overlayfs, fuse-overlayfs and ts-overlayfs,
all mounted over the same generated lower layers (each with its own empty upper/work).
Must run as root (kernel overlay mount, FUSE).

Options:
  --only LIST      comma-separated subset of: ${MOUNTS.join(',')} (default: all three)
  --runs N         measured runs per workload per mount (default 5; env BENCH_RUNS)
  --small          quick check: ~500 small files, 16 MiB big files (env BENCH_SMALL=1)
  --files N        number of small files (default 5000; env BENCH_FILES)
  --big-mib N      size of each big file in MiB (default 256; env BENCH_BIG_MIB)
  --big-count N    number of big files (default 3; env BENCH_BIG_COUNT)
  --timeout SEC    limit for any single command (default 120; env BENCH_TIMEOUT)
  --tmpdir DIR     parent of the temp dir (default /var/tmp; env BENCH_TMPDIR)
  --readonly       mount the lowers only (no upper): as image mounts run (default: with an
                   empty upper, as containers run)
  --json           print one JSON object on stdout instead of the table
  env TS_OVERLAYFS_BIN  ts-overlayfs command to run (default: <repo>/bin/ts-overlayfs)
  -h, --help       this text

Progress goes to stderr; the result (table or JSON) to stdout.
Exit status: 0 ok, 1 error, 2 a mount failed, 3 a workload failed on some mount.
`;

// ---------------------------------------------------------------- options

function parseArgs(argv) {
  const env = process.env;
  const small = env.BENCH_SMALL === '1' || argv.includes('--small');
  const opts = {
    only: MOUNTS.slice(),
    runs: intEnv('BENCH_RUNS', 5),
    files: intEnv('BENCH_FILES', small ? 500 : 5000),
    bigMib: intEnv('BENCH_BIG_MIB', small ? 16 : 256),
    bigCount: intEnv('BENCH_BIG_COUNT', 3),
    timeout: intEnv('BENCH_TIMEOUT', 120),
    tmpdir: env.BENCH_TMPDIR || '/var/tmp',
    json: false,
    readonly: false,
    small,
    help: false,
  };
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
    switch (arg) {
      case '-h': case '--help': opts.help = true; break;
      case '--json': opts.json = true; break;
      case '--readonly': opts.readonly = true; break;
      case '--small': break; // already applied above, before the size defaults
      case '--runs': opts.runs = positiveInt(arg, next()); break;
      case '--files': opts.files = positiveInt(arg, next()); break;
      case '--big-mib': opts.bigMib = positiveInt(arg, next()); break;
      case '--big-count': opts.bigCount = positiveInt(arg, next()); break;
      case '--timeout': opts.timeout = positiveInt(arg, next()); break;
      case '--tmpdir': opts.tmpdir = next(); break;
      case '--only': {
        const list = next().split(',').map((s) => s.trim()).filter(Boolean);
        const bad = list.filter((m) => !MOUNTS.includes(m));
        if (bad.length || !list.length) throw usageError(`--only: unknown mount(s) ${bad.join(',')}; choose from ${MOUNTS.join(',')}`);
        // Keep the canonical order so the round-robin is always kernel → fuse → ts.
        opts.only = MOUNTS.filter((m) => list.includes(m));
        break;
      }
      default: throw usageError(`unknown argument: ${argv[i]}`);
    }
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
function run(cmd, args, { timeoutSec = 60, allowFail = false, input } = {}) {
  const res = spawnSync('timeout', ['-k', '5', String(timeoutSec), cmd, ...args], {
    encoding: 'utf8',
    input,
    stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    maxBuffer: 256 * MIB,
  });
  if (res.error) throw res.error;
  if (res.status !== 0 && !allowFail) {
    throw new Error(`${cmd} ${args.join(' ')} failed (${describeExit(res.status, res.signal)}): ${res.stderr.trim()}`);
  }
  return res;
}

function describeExit(code, signal) {
  if (code === 124) return 'timed out';
  if (signal) return `signal ${signal}`;
  return `exit ${code}`;
}

/**
 * Runs one command under `timeout` and times it from spawn to exit with the monotonic clock.
 * Spawn cost is included, but it is identical for every mount (see spawn_overhead_ms).
 */
function runTimed(cmd, args, { timeoutSec, captureStdout = false }) {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn('timeout', ['-k', '5', String(timeoutSec), cmd, ...args], {
      cwd: '/', // never inside a mount: a child's chdir happens before `timeout` can guard it
      stdio: ['ignore', captureStdout ? 'pipe' : 'ignore', 'pipe'],
    });
    liveChildren.add(child);
    let ms = 0;
    const out = [];
    let err = '';
    if (captureStdout) child.stdout.on('data', (c) => out.push(c));
    child.stderr.on('data', (c) => {
      if (err.length < 4096) err += c.toString();
    });
    child.on('error', (e) => {
      liveChildren.delete(child);
      reject(e);
    });
    child.on('exit', () => {
      ms = Number(process.hrtime.bigint() - start) / 1e6;
    });
    child.on('close', (code, signal) => {
      liveChildren.delete(child);
      resolve({ ms, code, signal, ok: code === 0, stderr: err.trim(), stdout: captureStdout ? Buffer.concat(out) : null });
    });
  });
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

const isMounted = (mnt) => readMountinfo().some((m) => m.mountpoint === mnt);
const mountsUnder = (dir) => readMountinfo().filter((m) => m.mountpoint === dir || m.mountpoint.startsWith(dir + '/'));

/** PIDs holding /dev/fuse open: a FUSE daemon's identity does not depend on its argv. */
function fuseDevHolders() {
  const pids = new Set();
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    let fds;
    try { fds = fs.readdirSync(`/proc/${pid}/fd`); } catch { continue; }
    for (const fd of fds) {
      let target;
      try { target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`); } catch { continue; }
      if (target === '/dev/fuse') {
        pids.add(Number(pid));
        break;
      }
    }
  }
  return pids;
}

/** Mentions of the mountpoint in argv or environ (ts-overlayfs passes its config via env). */
function procMentions(pid, needle) {
  for (const file of ['cmdline', 'environ']) {
    try {
      if (fs.readFileSync(`/proc/${pid}/${file}`).includes(needle)) return true;
    } catch { /* gone or unreadable */ }
  }
  return false;
}

function procMemory(pid) {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = (key) => {
      const m = status.match(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm'));
      return m ? Number(m[1]) : null;
    };
    const comm = (status.match(/^Name:\s+(.*)$/m) || [])[1] || null;
    return { comm, vmhwm_kib: kib('VmHWM'), vmrss_kib: kib('VmRSS') };
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
 * Builds three lower layers (l1 = top, l3 = bottom) and returns a model of the merged view
 * that the sanity check compares each mount against.
 *
 * small/ is a 3-level tree with 10 files per leaf dir. Each file lands in one layer
 * (50% l3, 30% l2, 20% l1); some l3 files are shadowed by a different copy in l2; some
 * l2/l3 files are hidden by 0/0 char-device whiteouts in l1 or l2; and every 50th leaf
 * dir is opaque in l1, hiding whatever l2/l3 have there (l1's own files there stay).
 */
function generateLayers(root, opts) {
  const rng = makeRng(0x5eed);
  const pool = randomBuffer(rng, 64 * 1024);
  const layers = { l1: path.join(root, 'l1'), l2: path.join(root, 'l2'), l3: path.join(root, 'l3') };
  const stats = {
    small_files_written: { l1: 0, l2: 0, l3: 0 },
    small_bytes_written: 0,
    shadowed_files: 0,
    whiteouts: { l1: 0, l2: 0 },
    opaque_dirs: 0,
    big_files: opts.bigCount,
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
  const writeSmall = (layer, rel) => {
    const size = Math.floor(rng() * 8193); // 0..8 KiB inclusive
    const offset = Math.floor(rng() * (pool.length - size));
    ensureDir(path.join(layers[layer], path.dirname(rel)));
    fs.writeFileSync(path.join(layers[layer], rel), pool.subarray(offset, offset + size));
    stats.small_files_written[layer]++;
    stats.small_bytes_written += size;
    return size;
  };

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
      const r = rng();
      const base = r < 0.5 ? 'l3' : r < 0.8 ? 'l2' : 'l1';
      let size = writeSmall(base, rel);
      let top = base;
      if (base === 'l3' && rng() < 0.08) {
        size = writeSmall('l2', rel); // the l2 copy is what the merged view must show
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

  // Big files live only in the bottom layer: reads must fall through two layers.
  const chunk = randomBuffer(rng, MIB);
  ensureDir(path.join(layers.l3, 'big'));
  addExpectedDir('big');
  for (let i = 0; i < opts.bigCount; i++) {
    const fd = fs.openSync(path.join(layers.l3, 'big', `file${i}`), 'w');
    try {
      for (let m = 0; m < opts.bigMib; m++) {
        chunk.writeUInt32LE(i * 100003 + m, 0); // no two MiB identical, in case anything dedups
        fs.writeSync(fd, chunk);
      }
    } finally {
      fs.closeSync(fd);
    }
    expected.set(`big/file${i}`, `f ${opts.bigMib * MIB}`);
  }
  expected.set('', 'd'); // the mount root itself, as `find MNT` prints it

  const visibleSmall = [...expected.entries()]
    .filter(([rel, kind]) => rel.startsWith('small/') && kind.startsWith('f'))
    .map(([rel]) => rel)
    .sort();
  stats.small_files_visible = visibleSmall.length;
  stats.expected_entries = expected.size;
  return { layers, stats, expected, visibleSmall };
}

// ---------------------------------------------------------------- mounting

function lowerdirOption(layers) {
  return `lowerdir=${layers.l1}:${layers.l2}:${layers.l3}`;
}

function mountCommand(name, m, layers, readonly) {
  // Read-only (lowers only) is how image mounts run; with an upper, how containers run.
  const o = readonly ? lowerdirOption(layers) : `${lowerdirOption(layers)},upperdir=${m.upper},workdir=${m.work}`;
  switch (name) {
    case 'kernel': return ['mount', ['-t', 'overlay', 'overlay', '-o', o, m.mnt]];
    case 'fuse-overlayfs': return ['fuse-overlayfs', ['-o', o, m.mnt]];
    case 'ts-overlayfs': return [TS_BIN, ['-o', o, m.mnt]];
    default: throw new Error(name);
  }
}

/**
 * Mounts one variant. The mount command runs detached (own session) so a Ctrl-C on the
 * terminal reaches only this driver, which then unmounts in order instead of the daemons
 * dying under a live mount. Its output goes to a log file, not a pipe, because a daemon
 * that inherits a pipe would keep it open and we could never tell the command finished.
 */
async function mountOne(name, m, layers, opts) {
  const [cmd, args] = mountCommand(name, m, layers, opts.readonly);
  m.command = [cmd, ...args].join(' ');
  const before = name === 'kernel' ? null : fuseDevHolders();
  const logFd = fs.openSync(m.log, 'a');
  const child = spawn('timeout', ['-k', '5', String(Math.min(opts.timeout, 60)), cmd, ...args], {
    cwd: '/',
    detached: true,
    stdio: ['ignore', logFd, logFd],
  });
  fs.closeSync(logFd);
  liveChildren.add(child);
  const { code, signal } = await new Promise((resolve) => {
    child.on('error', (e) => resolve({ code: 127, signal: null, error: e }));
    child.on('exit', (c, s) => resolve({ code: c, signal: s }));
  });
  liveChildren.delete(child);
  const failure = (why) => {
    const out = fs.existsSync(m.log) ? fs.readFileSync(m.log, 'utf8').trim() : '';
    return new Error(`${name}: mount failed: ${why}\n  command: ${m.command}${out ? `\n  output:\n    ${out.split('\n').slice(-20).join('\n    ')}` : ''}`);
  };
  if (code !== 0) {
    throw failure(code === 124 ? 'the command did not return within the time limit (does it daemonize?)' : describeExit(code, signal));
  }
  // A daemonizing command should only return once mounted; allow a short grace anyway.
  for (let i = 0; i < 50 && !isMounted(m.mnt); i++) await sleep(100);
  if (!isMounted(m.mnt)) throw failure('command exited 0 but nothing is mounted there');
  m.fstype = readMountinfo().filter((x) => x.mountpoint === m.mnt).pop().fstype;
  if (before) m.pid = findDaemon(before, m.mnt);
  if (before && !m.pid) warn(`${name}: could not identify the daemon process; no RSS figure`);
}

/**
 * The daemon is a process that newly holds /dev/fuse and names our mountpoint in its argv
 * (fuse-overlayfs) or environment (ts-overlayfs hands its config to the daemon that way).
 * Requiring both keeps us from ever signalling someone else's FUSE daemon in cleanup.
 */
function findDaemon(before, mnt) {
  const fresh = [...fuseDevHolders()].filter((p) => !before.has(p) && p !== process.pid);
  const ours = fresh.filter((p) => procMentions(p, mnt));
  return ours.length ? Math.min(...ours) : null;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- cleanup

let tempRoot = null;
const mountState = {};
let cleanedUp = false;

/**
 * Synchronous on purpose: it runs from signal handlers and process 'exit' too. Unmounts
 * FUSE first (their daemons hold the lowers open), then kernel; removes the temp dir only
 * when nothing is mounted under it, and even then with --one-file-system.
 */
function cleanup() {
  if (cleanedUp || !tempRoot) return;
  cleanedUp = true;
  killLiveChildren();
  for (const name of MOUNTS.slice().reverse()) {
    const m = mountState[name];
    if (!m) continue;
    for (let attempt = 0; attempt < 3 && isMounted(m.mnt); attempt++) {
      const first = name === 'kernel' ? ['umount', [m.mnt]] : ['fusermount3', ['-u', m.mnt]];
      let res = spawnSync('timeout', ['-k', '5', '20', first[0], ...first[1]], { stdio: 'ignore' });
      if (res.status !== 0 && isMounted(m.mnt)) {
        res = spawnSync('timeout', ['-k', '5', '20', 'umount', '-l', m.mnt], { stdio: 'ignore' });
        if (res.status === 0) process.stderr.write(`bench: ${name}: needed umount -l\n`);
      }
    }
    if (m.pid) reapDaemon(name, m.pid);
  }
  const left = mountsUnder(tempRoot);
  if (left.length) {
    process.stderr.write(`bench: ERROR: still mounted, NOT removing ${tempRoot}: ${left.map((x) => x.mountpoint).join(' ')}\n`);
    process.exitCode = process.exitCode || 1;
    return;
  }
  spawnSync('timeout', ['120', 'rm', '-rf', '--one-file-system', tempRoot], { stdio: 'ignore' });
}

/** A daemon should exit once unmounted; if it lingers, end it (by its pid only). */
function reapDaemon(name, pid) {
  for (let i = 0; i < 50 && alive(pid); i++) sleepSync(100);
  if (!alive(pid)) return;
  process.stderr.write(`bench: ${name}: daemon ${pid} still running after unmount; sending SIGTERM\n`);
  try { process.kill(pid, 'SIGTERM'); } catch { return; }
  for (let i = 0; i < 30 && alive(pid); i++) sleepSync(100);
  if (alive(pid)) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
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

function workloads(gen, opts) {
  return [
    {
      id: 'find_stat',
      label: `find + lstat walk (${gen.stats.expected_entries} entries)`,
      // -printf with these fields forces an lstat() of every entry.
      command: (m) => ['find', [m.mnt, '-printf', '%i %m %s %T@\n']],
    },
    {
      id: 'read_small',
      label: `read all small files (${gen.stats.small_files_visible} files)`,
      // The file list is precomputed (same for every mount) so this measures
      // lookup+open+read+close; directory enumeration is already find_stat's job.
      command: (m) => ['xargs', ['-0', '-a', m.smallList, 'cat']],
    },
    {
      id: 'read_big',
      label: `sequential read big/file0 (${opts.bigMib} MiB)`,
      command: (m) => ['dd', [`if=${m.mnt}/big/file0`, 'of=/dev/null', 'bs=1M']],
    },
  ];
}

/** find output normalised so it can be compared across mounts (dir sizes differ by fs). */
async function listMount(m, opts) {
  const res = await runTimed('find', [m.mnt, '-printf', '%P\t%y\t%s\n'], { timeoutSec: opts.timeout, captureStdout: true });
  if (!res.ok) throw new Error(`find failed (${describeExit(res.code, res.signal)}): ${res.stderr}`);
  const entries = new Map();
  for (const line of res.stdout.toString().split('\n')) {
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

async function sanityCheck(active, gen, opts) {
  const counts = {};
  for (const name of active) {
    const m = mountState[name];
    let listing;
    try {
      listing = await listMount(m, opts);
    } catch (e) {
      warn(`${name}: listing the mount failed: ${e.message}`);
      counts[name] = null;
      continue;
    }
    counts[name] = listing.size;
    const problems = diffListing(gen.expected, listing);
    if (problems.length) {
      warn(`${name}: merged view differs from the expected one in ${problems.length} entr${problems.length === 1 ? 'y' : 'ies'}, e.g. ${problems.slice(0, 5).join('; ')}`);
    }
  }
  const distinct = new Set(Object.values(counts));
  log(`entry count (find | wc -l): expected ${gen.stats.expected_entries}; ${active.map((n) => `${n} ${counts[n]}`).join(', ')}`);
  if (distinct.size > 1) warn(`entry counts differ between mounts: ${JSON.stringify(counts)}`);
  return counts;
}

async function measure(active, gen, opts) {
  const results = {};
  const failed = {};
  for (const w of workloads(gen, opts)) {
    results[w.id] = {};
    for (const name of active) results[w.id][name] = { runs_ms: [], median_ms: null };
    log(`${w.id}: 1 warm-up + ${opts.runs} measured runs per mount, round-robin`);
    for (let rep = 0; rep <= opts.runs; rep++) {
      for (const name of active) {
        if (failed[name]) continue;
        const [cmd, args] = w.command(mountState[name]);
        const res = await runTimed(cmd, args, { timeoutSec: opts.timeout });
        if (!res.ok) {
          failed[name] = `${w.id} run ${rep === 0 ? 'warm-up' : rep} failed (${describeExit(res.code, res.signal)})${res.stderr ? `: ${res.stderr.split('\n').slice(0, 5).join(' | ')}` : ''}`;
          // Not a warn(): the report lists failures separately.
          process.stderr.write(`bench: ${name}: ${failed[name]}; dropping ${name} from the remaining runs\n`);
          continue;
        }
        if (rep > 0) results[w.id][name].runs_ms.push(round(res.ms, 3));
      }
    }
    for (const name of active) {
      const r = results[w.id][name];
      r.median_ms = r.runs_ms.length === opts.runs ? round(median(r.runs_ms), 3) : null;
    }
  }
  return { results, failed };
}

async function spawnOverhead(opts) {
  const samples = [];
  for (let i = 0; i < 5; i++) samples.push((await runTimed('true', [], { timeoutSec: opts.timeout })).ms);
  return round(median(samples), 3);
}

// ---------------------------------------------------------------- reporting

function median(xs) {
  const s = xs.slice().sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

const round = (x, d) => (x === null || x === undefined ? null : Math.round(x * 10 ** d) / 10 ** d);

const RATIOS = [
  ['ts-overlayfs/kernel', 'ts-overlayfs', 'kernel'],
  ['ts-overlayfs/fuse-overlayfs', 'ts-overlayfs', 'fuse-overlayfs'],
  ['fuse-overlayfs/kernel', 'fuse-overlayfs', 'kernel'],
];

function ratios(results) {
  const out = {};
  for (const [id, r] of Object.entries(results)) {
    out[id] = {};
    for (const [key, a, b] of RATIOS) {
      const x = r[a] && r[a].median_ms;
      const y = r[b] && r[b].median_ms;
      out[id][key] = x && y ? round(x / y, 3) : null;
    }
  }
  return out;
}

function printTable(report) {
  const mounts = MOUNTS;
  const cell = (v, w, fmt) => (v === null || v === undefined ? '-' : fmt(v)).padStart(w);
  const md = report.metadata;
  const lines = [];
  lines.push(`ts-overlayfs read benchmark — kernel ${md.kernel}, ${md.cpus} CPUs, node ${md.node}, temp fs ${md.temp_fs}`);
  lines.push(`layers: 3 lowers; ${md.files.small_files_written_total} small files written (l1 ${md.files.small_files_written.l1}, l2 ${md.files.small_files_written.l2}, l3 ${md.files.small_files_written.l3}), ` +
    `${md.files.shadowed_files} shadowed, ${md.files.whiteouts.l1 + md.files.whiteouts.l2} whiteouts, ${md.files.opaque_dirs} opaque dirs; ` +
    `${md.files.big_files} × ${md.files.big_file_bytes / MIB} MiB big files`);
  lines.push(`merged view: ${md.expected_entries} entries expected; find | wc -l: ${md.mounts.map((n) => `${n} ${md.entry_counts[n]}`).join(', ')}`);
  lines.push(md.readonly ? 'mounts: read-only (lowers only)' : 'mounts: writable (empty upper)');
  lines.push(`warm cache: 1 unmeasured warm-up pass per mount, then ${md.runs} runs round-robin (${md.mounts.join(' → ')}); median ms, wall clock incl. ~${md.spawn_overhead_ms} ms spawn`);
  lines.push('');
  const labels = md.workload_labels;
  const labelW = Math.max(...Object.values(labels).map((l) => l.length), 8);
  lines.push(`${'median ms'.padEnd(labelW)}  ${mounts.map((n) => n.padStart(14)).join('  ')}  ${'ts/kernel'.padStart(9)}  ${'ts/fuse'.padStart(8)}  ${'fuse/kernel'.padStart(11)}`);
  for (const [id, w] of Object.entries(report.workloads)) {
    const med = (n) => (w[n] ? w[n].median_ms : null);
    const r = report.ratios[id];
    lines.push(`${labels[id].padEnd(labelW)}  ${mounts.map((n) => cell(med(n), 14, (v) => v.toFixed(1))).join('  ')}  ` +
      `${cell(r['ts-overlayfs/kernel'], 9, (v) => v.toFixed(2) + 'x')}  ${cell(r['ts-overlayfs/fuse-overlayfs'], 8, (v) => v.toFixed(2) + 'x')}  ${cell(r['fuse-overlayfs/kernel'], 11, (v) => v.toFixed(2) + 'x')}`);
  }
  lines.push('');
  const rss = Object.entries(report.daemon_memory);
  if (rss.length) {
    lines.push('daemon memory before unmount: ' + rss.map(([n, v]) => (v ? `${n} peak ${(v.vmhwm_kib / 1024).toFixed(1)} MiB (now ${(v.vmrss_kib / 1024).toFixed(1)} MiB, pid ${v.pid} ${v.comm})` : `${n} unknown`)).join('; '));
  }
  for (const w of report.warnings) lines.push(`WARNING: ${w}`);
  for (const [n, e] of Object.entries(report.failed)) lines.push(`FAILED: ${n}: ${e}`);
  process.stdout.write(lines.join('\n') + '\n');
}

// ---------------------------------------------------------------- main

function preflight(opts) {
  if (process.getuid() !== 0) throw new Error('must run as root (kernel overlay mount and FUSE need it)');
  if (!fs.existsSync('/dev/fuse')) run('modprobe', ['fuse'], { allowFail: true });
  const need = ['mount', 'mknod', 'setfattr', 'find', 'xargs', 'dd', 'timeout'];
  if (opts.only.includes('fuse-overlayfs')) need.push('fuse-overlayfs');
  if (opts.only.some((n) => n !== 'kernel')) need.push('fusermount3');
  for (const tool of need) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status !== 0) throw new Error(`${tool} not found (scripts/bench installs the apt packages)`);
  }
  if (opts.only.includes('ts-overlayfs') && !fs.existsSync(TS_BIN)) {
    throw Object.assign(new Error(`ts-overlayfs: ${TS_BIN} does not exist (use --only kernel,fuse-overlayfs to skip it)`), { exitCode: 2 });
  }
}

function toolVersion(cmd, args) {
  const res = spawnSync('timeout', ['10', cmd, ...args], { encoding: 'utf8' });
  // fuse-overlayfs also prints fusermount3's version; prefer the line naming the tool itself.
  const lines = `${res.stdout || ''}${res.stderr || ''}`.split('\n').filter((l) => /\d+\.\d+/.test(l));
  const text = lines.find((l) => l.startsWith(path.basename(cmd))) || lines[0];
  return res.status === 0 && text ? text.trim() : null;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.help) {
    process.stdout.write(HELP);
    return 0;
  }
  preflight(opts);
  installExitHandlers();

  fs.mkdirSync(opts.tmpdir, { recursive: true });
  tempRoot = fs.mkdtempSync(path.join(opts.tmpdir, 'ts-overlayfs-bench-'));
  const tempFs = run('findmnt', ['-no', 'FSTYPE', '-T', tempRoot], { allowFail: true }).stdout.trim() || 'unknown';
  log(`temp dir ${tempRoot} (${tempFs})`);

  const t0 = Date.now();
  const gen = generateLayers(path.join(tempRoot, 'layers'), opts);
  // Flush the big files now so background writeback does not disturb the measurements.
  run('sync', ['-f', tempRoot], { timeoutSec: opts.timeout });
  log(`generated layers in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${gen.stats.small_files_visible} visible small files, ` +
    `${gen.stats.whiteouts.l1 + gen.stats.whiteouts.l2} whiteouts, ${gen.stats.opaque_dirs} opaque dirs, ${opts.bigCount} × ${opts.bigMib} MiB`);

  for (const name of opts.only) {
    const dir = path.join(tempRoot, name);
    const m = { dir, upper: path.join(dir, 'upper'), work: path.join(dir, 'work'), mnt: path.join(dir, 'mnt'), log: path.join(dir, 'mount.log'), smallList: path.join(dir, 'small.list') };
    for (const d of [m.upper, m.work, m.mnt]) fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(m.smallList, gen.visibleSmall.map((rel) => `${m.mnt}/${rel}`).join('\0'));
    mountState[name] = m;
  }
  for (const name of opts.only) {
    log(`mounting ${name}`);
    await mountOne(name, mountState[name], gen.layers, opts);
    log(`${name}: mounted (${mountState[name].fstype}${mountState[name].pid ? `, daemon pid ${mountState[name].pid}` : ''})`);
  }

  const counts = await sanityCheck(opts.only, gen, opts);
  const overhead = await spawnOverhead(opts);
  log('measuring warm-cache overlay overhead: each workload gets one unmeasured warm-up pass per mount');
  const { results, failed } = await measure(opts.only, gen, opts);

  // VmHWM is the daemon's lifetime peak, so read it after all workloads, before unmounting.
  const daemonMemory = {};
  for (const name of opts.only.filter((n) => n !== 'kernel')) {
    const m = mountState[name];
    const mem = m.pid ? procMemory(m.pid) : null;
    daemonMemory[name] = mem ? { pid: m.pid, ...mem } : null;
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
      mounts: opts.only,
      ts_overlayfs_bin: opts.only.includes('ts-overlayfs') ? TS_BIN : null,
      readonly: opts.readonly,
      mount_commands: Object.fromEntries(opts.only.map((n) => [n, mountState[n].command])),
      mount_fstypes: Object.fromEntries(opts.only.map((n) => [n, mountState[n].fstype])),
      versions: {
        'fuse-overlayfs': opts.only.includes('fuse-overlayfs') ? toolVersion('fuse-overlayfs', ['--version']) : null,
        'ts-overlayfs': opts.only.includes('ts-overlayfs') ? toolVersion(TS_BIN, ['--version']) : null,
      },
      workload_labels: Object.fromEntries(workloads(gen, opts).map((w) => [w.id, w.label])),
      runs: opts.runs,
      warmup_runs: 1,
      cache: 'warm',
      timing: 'wall clock from spawn to exit (monotonic), includes process spawn',
      spawn_overhead_ms: overhead,
      files: { ...gen.stats, small_files_written_total: gen.stats.small_files_written.l1 + gen.stats.small_files_written.l2 + gen.stats.small_files_written.l3 },
      expected_entries: gen.stats.expected_entries,
      entry_counts: counts,
    },
    workloads: results,
    ratios: ratios(results),
    daemon_memory: daemonMemory,
    warnings,
    failed,
  };

  if (opts.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  else printTable(report);
  return Object.keys(failed).length ? 3 : 0;
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
    const mountFailure = /mount failed|does not exist/.test(err.message) ? 2 : 1;
    process.exit(err.exitCode || mountFailure);
  },
);
