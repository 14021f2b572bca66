/**
 * Command line of the differential fuzzer (scripts/fuzz runs it after building):
 *
 *   cli.js --seconds N [--seed S] [--ops K] [--lowers L]   seeds S, S+1, ... for N seconds
 *   cli.js --seed S [--ops K] [--lowers L] [--keep i,j,..]  one seed (a reproduction)
 *   cli.js --replay FILE                                     a sequence saved by an earlier run
 *
 * Prints one line per sequence, and each divergence (shrunk) with a reproduction command.
 * Exit status: 0 no divergence, 1 divergence(s), 2 bad usage or a harness failure.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describeOp, type LayerSpec, type Op } from './generate';
import { describeDifferences } from './differences';
import { KNOWN_BUGS, setAvoidKnownBugs } from './known-bugs';
import { inInitialUserNamespace, setUnprivileged } from './mode';
import { runUnprivileged } from './unprivileged';
import { formatReport, Fuzzer, leftoverMounts, reproCommand, type Divergence, type Report } from './runner';

interface Args {
  seconds?: number;
  seed?: number;
  ops: number;
  lowers?: number;
  keep?: number[];
  replay?: string;
  shrink: boolean;
  shrinkSeconds: number;
  verbose: boolean;
  out: string;
  includeKnown: boolean;
  keepGoing: boolean;
  jobs: number;
  /** Stop after this many sequences (with --seconds, whichever comes first). */
  count?: number;
  unprivileged: boolean;
  /** Seeds S, S+stride, S+2*stride, ... (a worker of --jobs). */
  stride: number;
  /** Print the summary as one JSON line (a worker of --jobs). */
  worker: boolean;
}

const USAGE = `usage: scripts/fuzz [--seconds N] [--seed S] [--ops K] [--lowers L] [--keep i,j,...]
                   [--replay FILE] [--no-shrink] [--shrink-seconds N] [--verbose] [--out DIR]
  --seconds N   run seeds S, S+1, ... for N seconds (S defaults to one from the clock)
  --seed S      the first (or only) seed
  --ops K       operations per sequence (default 40)
  --lowers L    number of lower layers (default: 1 to 5, from the seed)
  --keep LIST   run only these operations of the seed's sequence (as printed by a report)
  --replay FILE run the sequence saved in FILE (written for each divergence into --out)
  --verbose     print every operation and both outcomes
  --out DIR     where reproduction files go (default: the temp directory)
  --count N     run N seeds, S to S+N-1 (with --seconds: whichever ends first)
  --jobs J      with --seconds or --count: J fuzzer processes side by side (seeds S+k, S+k+J, ...)
  --unprivileged  run as an ordinary user in unshare -Urm: user.overlay.* layers, kernel oracle
                with userxattr, only id 0 mapped (started as root; /dev/fuse opened for the run)
  --keep-going  do not stop a sequence at a divergence: print each and go on (diagnosis; no shrinking)
  --include-known  stop steering around the known, unfixed bugs listed below
Deliberate differences the fuzzer avoids or leaves out:
${describeDifferences()}
Known ts-overlayfs bugs (unfixed) the generator steers around unless --include-known:
${KNOWN_BUGS.map((b) => `  ${b.name}: ${b.what}. Steering: ${b.avoidance}.`).join('\n')}`;

function parse(argv: string[]): Args {
  const a: Args = { ops: 40, shrink: true, shrinkSeconds: 300, verbose: false, out: tmpdir(), includeKnown: false, keepGoing: false, jobs: 1, stride: 1, worker: false, unprivileged: false };
  const num = (v: string | undefined, name: string): number => {
    const n = Number(v);
    if (v === undefined || !Number.isInteger(n) || n < 0) throw new Error(`${name} needs a whole number`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    switch (arg) {
      case '--seconds': a.seconds = num(argv[++i], arg); break;
      case '--seed': a.seed = num(argv[++i], arg); break;
      case '--ops': a.ops = num(argv[++i], arg); break;
      case '--lowers': a.lowers = num(argv[++i], arg); if (a.lowers < 1) throw new Error('--lowers needs at least 1'); break;
      case '--keep': a.keep = (argv[++i] ?? '').split(',').filter((s) => s !== '').map((s) => num(s, arg)); break;
      case '--replay': a.replay = argv[++i]; break;
      case '--no-shrink': a.shrink = false; break;
      case '--include-known': a.includeKnown = true; break;
      case '--keep-going': a.keepGoing = true; break;
      case '--jobs': a.jobs = num(argv[++i], arg); if (a.jobs < 1) throw new Error('--jobs needs at least 1'); break;
      case '--stride': a.stride = num(argv[++i], arg); if (a.stride < 1) throw new Error('--stride needs at least 1'); break;
      case '--worker': a.worker = true; break;
      case '--count': a.count = num(argv[++i], arg); break;
      case '--unprivileged': a.unprivileged = true; break;
      case '--shrink-seconds': a.shrinkSeconds = num(argv[++i], arg); break;
      case '--verbose': case '-v': a.verbose = true; break;
      case '--out': a.out = argv[++i] ?? ''; break;
      case '--help': case '-h': process.stdout.write(`${USAGE}\n`); process.exit(0); break;
      default: throw new Error(`unknown argument ${arg}`);
    }
  }
  return a;
}

/** A saved sequence; `layers` makes the replay exact even after the generator changes. */
interface Saved { seed: number; lowers?: number; generated: number; keep: number[]; ops: Op[]; layers?: LayerSpec[] }

function save(out: string, r: Report, layers: LayerSpec[]): string {
  mkdirSync(out, { recursive: true });
  const file = join(out, `fuzz-repro-${r.seed}-${r.divergence.stage}.json`);
  const saved: Saved = { seed: r.seed, lowers: r.lowers, generated: r.generated, keep: r.keep, ops: r.keep.map((k) => r.ops[k]), layers };
  writeFileSync(file, `${JSON.stringify(saved, null, 1)}\n`);
  return file;
}

let stopping = false;

async function main(): Promise<number> {
  let args: Args;
  try {
    args = parse(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`fuzz: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write('fuzz: needs root (kernel overlayfs mounts)\n');
    return 2;
  }
  if (args.unprivileged && inInitialUserNamespace()) {
    const argv = process.argv.slice(2);
    const outAt = argv.indexOf('--out');
    if (outAt >= 0) argv.splice(outAt, 2);
    return runUnprivileged(argv, args.out);
  }
  setUnprivileged(args.unprivileged);
  if (args.jobs > 1) {
    if (args.seconds === undefined && args.count === undefined) {
      process.stderr.write(`fuzz: --jobs needs --seconds or --count\n${USAGE}\n`);
      return 2;
    }
    return runJobs(process.argv.slice(2), args);
  }
  setAvoidKnownBugs(!args.includeKnown);
  // Modes given to open/mkdir reach both implementations unmasked.
  process.umask(0);
  // Stop after the current sequence, whose mounts are then unmounted; a second signal exits
  // at once (mounts.ts's exit handler still detaches what is mounted).
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      if (stopping) process.exit(130);
      stopping = true;
      process.stderr.write(`fuzz: ${sig}: stopping after this sequence (again to quit now)\n`);
    });
  }
  const log = (s: string) => process.stdout.write(`${s}\n`);
  const verbose = args.verbose
    ? (i: number, op: Op, k: string, t: string) => log(`    ${String(i).padStart(3)} ${describeOp(op)}\n          kernel: ${k}${k === t ? '' : `\n          ts:     ${t}`}`)
    : undefined;

  const onDiverge = (d: Divergence) => log(`  -- divergence ${d.signature} at operation ${d.step}:\n${d.detail}`);
  const reports: Report[] = [];
  const seenSignatures = new Map<string, number[]>();
  let sequences = 0;
  let operations = 0;
  let harnessFailures = 0;
  const started = Date.now();

  const runSeed = async (seed: number, replay?: Saved) => {
    const lowers = replay ? replay.lowers : args.lowers;
    const fz = new Fuzzer(seed, { lowers, layers: replay?.layers });
    try {
      let ops: Op[];
      let keep: number[];
      let generated: number;
      let result;
      if (replay) {
        ops = replay.ops;
        keep = ops.map((_, i) => i);
        generated = replay.generated;
        result = await fz.run({ ops, onStep: verbose, keepGoing: args.keepGoing, onDiverge });
      } else if (args.keep) {
        const all = await fz.materialize(args.ops);
        keep = args.keep.filter((k) => k < all.length);
        ops = all;
        generated = args.ops;
        result = await fz.run({ ops: keep.map((k) => all[k]), onStep: verbose, keepGoing: args.keepGoing, onDiverge });
        result = { ...result, ops: all };
      } else {
        result = await fz.run({ ops: { generate: args.ops }, onStep: verbose, keepGoing: args.keepGoing, onDiverge });
        ops = result.ops;
        keep = ops.map((_, i) => i);
        generated = args.ops;
      }
      sequences++;
      operations += result.divergence ? result.divergence.step + 1 : (replay || args.keep ? keep.length : result.ops.length);
      const d = result.divergence;
      const layerInfo = `${fz.layers.length} lowers, ${fz.layers.reduce((n, l) => n + l.length, 0)} layer entries`;
      if (!d) {
        log(`seed ${seed}: ok (${keep.length} operations, ${layerInfo})`);
        return;
      }
      if (d.stage === 'harness') {
        harnessFailures++;
        log(`seed ${seed}: HARNESS FAILURE\n${d.detail}`);
        return;
      }
      const known = seenSignatures.get(d.signature);
      if (known) {
        known.push(seed);
        log(`seed ${seed}: divergence ${d.signature} at operation ${d.step} (seen before, with seed ${known[0]}; not shrunk)`);
        reports.push({ seed, lowers, generated, ops, keep: keep.slice(0, d.step + 1), divergence: d });
        return;
      }
      seenSignatures.set(d.signature, [seed]);
      let report: Report = { seed, lowers, generated, ops, keep: replay || args.keep ? keep : keep.slice(0, Math.min(keep.length, d.step + 1)), divergence: d };
      if (d.step >= keep.length) report.keep = keep;
      if (args.shrink && !replay && !args.keepGoing) {
        log(`seed ${seed}: divergence ${d.signature} at operation ${d.step}; shrinking`);
        const sub = report.keep.map((k) => ops[k]);
        const s = await fz.shrink(sub, { ...d, step: d.step >= keep.length ? sub.length : d.step }, args.shrinkSeconds * 1000, log);
        report = { ...report, keep: s.keep.map((i) => report.keep[i]), divergence: s.divergence };
      }
      reports.push(report);
      log(formatReport(report));
      try {
        log(`  saved: ${save(args.out, report, fz.layers)} (run it with --replay FILE)`);
      } catch (err) {
        log(`  not saved: ${String((err as Error).message)}`);
      }
    } finally {
      await fz.dispose();
    }
  };

  if (args.replay) {
    const saved = JSON.parse(readFileSync(args.replay, 'utf8')) as Saved;
    await runSeed(saved.seed, saved);
  } else if (args.seconds === undefined && args.count === undefined) {
    await runSeed(args.seed ?? 1);
  } else {
    const seconds = args.seconds ?? Infinity;
    const count = args.count ?? Infinity;
    let seed = args.seed ?? defaultSeed();
    for (let n = 0; n < count && !stopping && Date.now() - started < seconds * 1000; n++, seed += args.stride) await runSeed(seed);
  }

  const summary: Summary = {
    sequences, operations, divergent: reports.length, harnessFailures, leftovers: leftoverMounts(),
    signatures: [...seenSignatures].map(([signature, seeds]) => {
      const r = reports.find((x) => x.seed === seeds[0] && x.divergence.signature === signature) ?? reports.find((x) => x.seed === seeds[0]);
      return { signature, seeds, repro: r ? reproCommand(r) : '' };
    }),
  };
  if (args.worker) log(`${SUMMARY_TAG}${JSON.stringify(summary)}`);
  else printSummary(summary, Date.now() - started);
  return exitCode(summary);
}

function defaultSeed(): number {
  return Date.now() % 1000000000;
}

const SUMMARY_TAG = 'FUZZ-SUMMARY ';

interface Summary {
  sequences: number;
  operations: number;
  divergent: number;
  harnessFailures: number;
  leftovers: string[];
  signatures: { signature: string; seeds: number[]; repro: string }[];
}

function printSummary(s: Summary, ms: number): void {
  const log = (line: string) => process.stdout.write(`${line}\n`);
  log(`\nfuzz: ${s.sequences} sequences, ${s.operations} operations in ${Math.round(ms / 1000)} s; ` +
    `${s.divergent} divergent sequences, ${s.signatures.length} distinct${s.harnessFailures ? `, ${s.harnessFailures} harness failures` : ''}`);
  for (const { signature, seeds, repro } of s.signatures) {
    log(`  ${signature}: ${seeds.length} sequence(s), seeds ${seeds.slice(0, 8).join(' ')}${seeds.length > 8 ? ' ...' : ''}${repro ? `; ${repro}` : ''}`);
  }
  if (s.leftovers.length > 0) log(`fuzz: mounts left behind: ${s.leftovers.join(' ')}`);
}

function exitCode(s: Summary): number {
  if (s.leftovers.length > 0 || s.harnessFailures > 0) return 2;
  return s.divergent > 0 ? 1 : 0;
}

/**
 * --jobs J: J copies of this command, each on every J-th seed, their lines passed through as
 * they come and their summaries added up. The runs are independent (own directories, mounts).
 */
async function runJobs(argv: string[], args: Args): Promise<number> {
  const first = args.seed ?? defaultSeed();
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--jobs' || argv[i] === '--seed' || argv[i] === '--count') i++;
    else rest.push(argv[i]);
  }
  const started = Date.now();
  const children = Array.from({ length: args.jobs }, (_, k) =>
    spawn(process.execPath, [
      __filename, ...rest, '--seed', String(first + k), '--stride', String(args.jobs), '--worker',
      // Worker k takes seeds first+k, first+k+J, ... below first+count.
      ...(args.count === undefined ? [] : ['--count', String(Math.ceil(Math.max(0, args.count - k) / args.jobs))]),
    ], { stdio: ['ignore', 'pipe', 'inherit'], detached: true }));
  // The workers have their own process group, so a terminal's Ctrl-C reaches them once, from here.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => { for (const c of children) c.kill(sig); });
  }
  const summaries = await Promise.all(children.map((child) => new Promise<Summary | null>((resolve) => {
    let summary: Summary | null = null;
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line.startsWith(SUMMARY_TAG)) summary = JSON.parse(line.slice(SUMMARY_TAG.length)) as Summary;
      else process.stdout.write(`${line}\n`);
    });
    child.on('close', () => resolve(summary));
  })));
  const total: Summary = { sequences: 0, operations: 0, divergent: 0, harnessFailures: 0, leftovers: [], signatures: [] };
  for (const s of summaries) {
    if (!s) {
      process.stderr.write('fuzz: a worker ended without a summary\n');
      total.harnessFailures++;
      continue;
    }
    total.sequences += s.sequences;
    total.operations += s.operations;
    total.divergent += s.divergent;
    total.harnessFailures += s.harnessFailures;
    total.leftovers.push(...s.leftovers);
    for (const sig of s.signatures) {
      const known = total.signatures.find((x) => x.signature === sig.signature);
      if (known) known.seeds.push(...sig.seeds);
      else total.signatures.push({ ...sig, seeds: [...sig.seeds] });
    }
  }
  printSummary(total, Date.now() - started);
  return exitCode(total);
}

// `node --test dist/test/` loads every file under test/ as a test: run only when started directly.
if (require.main === module && process.env.NODE_TEST_CONTEXT === undefined) {
  main().then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`fuzz: ${(err as Error)?.stack ?? String(err)}\n`);
      process.exit(2);
    },
  );
}
