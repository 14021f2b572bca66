/**
 * The command line of fuse-overlayfs: `[-f] [-d] -o OPTS MOUNTPOINT`, plus --help and
 * --version. Node's own parser reads it: the launcher runs at every mount, and loading a
 * command-line library cost it about a fifth of its start.
 */
import { parseArgs as parseCommandLine } from 'node:util';
import { CliError, type CommandLine } from './config';

export const USAGE = 'ts-overlayfs [-f] [-d] -o lowerdir=L1:L2...[,upperdir=U,workdir=W][,...] MOUNTPOINT';

const HELP = `Usage: ${USAGE}

Merges the lower directories (first on top) and the upper directory at MOUNTPOINT, as overlayfs does.

Options:
  -o OPTIONS     mount options, comma-separated; may repeat (see README)
  -f             stay in the foreground (do not daemonize)
  -d, --debug    log every operation (implies -f)
  -s             accepted for compatibility; ignored
  -h, --help     show this help
  -V, --version  print the version`;

export type Parsed = { kind: 'mount'; cmd: CommandLine } | { kind: 'exit'; output: string; code: number };

const OPTIONS = {
  o: { type: 'string', short: 'o', multiple: true },
  f: { type: 'boolean', short: 'f' },
  debug: { type: 'boolean', short: 'd' },
  s: { type: 'boolean', short: 's' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'V' },
} as const;

function parseStrictly(args: string[]) {
  try {
    return parseCommandLine({ args, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (err) {
    // Node's messages go on to advise about `--`: the first sentence says what is wrong.
    throw new CliError((err as Error).message.split(/(?<=\.) /)[0]);
  }
}

export function parseArgs(argv: readonly string[], version: string): Parsed {
  // libfuse style `-oOPTS` (no space) is the flag and its value.
  const { values, positionals } = parseStrictly(argv.flatMap((a) => (/^-o./.test(a) ? ['-o', a.slice(2)] : [a])));
  if (values.help) return { kind: 'exit', output: HELP, code: 0 };
  if (values.version) return { kind: 'exit', output: `ts-overlayfs ${version}`, code: 0 };
  if (positionals.length > 1) throw new CliError(`unexpected argument: ${positionals[1]}`);
  return {
    kind: 'mount',
    cmd: {
      optionStrings: values.o ?? [],
      mountpoint: positionals[0],
      foreground: Boolean(values.f),
      debug: Boolean(values.debug),
    },
  };
}
