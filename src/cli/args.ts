/** The command line of fuse-overlayfs: `[-f] [-d] -o OPTS MOUNTPOINT`, plus --help and --version. */
import yargs from 'yargs';
import { CliError, type CommandLine } from './config';

export const USAGE = 'ts-overlayfs [-f] [-d] -o lowerdir=L1:L2...[,upperdir=U,workdir=W][,...] MOUNTPOINT';

export type Parsed = { kind: 'mount'; cmd: CommandLine } | { kind: 'exit'; output: string; code: number };

export function parseArgs(argv: readonly string[], version: string): Parsed {
  let output = '';
  let exitCode: number | null = null;
  let failure: string | null = null;
  // libfuse style `-oOPTS` (no space) is one flag with its value; yargs would see `-oOPTS`.
  const args0 = argv.flatMap((a) => (/^-o./.test(a) ? ['-o', a.slice(2)] : [a]));
  const parser = yargs(args0)
    .scriptName('ts-overlayfs')
    .usage(`Usage: ${USAGE}\n\nMerges the lower directories (first on top) and the upper directory at MOUNTPOINT, as overlayfs does.`)
    .option('o', { type: 'string', description: 'mount options, comma-separated; may repeat (see README)', requiresArg: true })
    .option('f', { type: 'boolean', description: 'stay in the foreground (do not daemonize)' })
    .option('d', { alias: 'debug', type: 'boolean', description: 'log every operation (implies -f)' })
    .option('s', { type: 'boolean', description: 'accepted for compatibility; ignored' })
    .help('help')
    .alias('help', 'h')
    .version('version', 'print the version', `ts-overlayfs ${version}`)
    .alias('version', 'V')
    .strictOptions()
    .parserConfiguration({ 'short-option-groups': false, 'camel-case-expansion': false, 'dot-notation': false })
    .exitProcess(false)
    .fail((msg, err) => {
      failure = msg ?? err?.message ?? 'invalid arguments';
    });
  const args = parser.parse(args0, {}, (err, _argv, out) => {
    if (out) output = out;
    if (err && failure === null) failure = err.message;
  }) as Record<string, unknown>;
  if (failure !== null) throw new CliError(String(failure).split('\n')[0]);
  if (args.help || args.version) {
    exitCode = 0;
    return { kind: 'exit', output, code: exitCode };
  }
  const positional = (args._ as (string | number)[]).map(String);
  if (positional.length > 1) throw new CliError(`unexpected argument: ${positional[1]}`);
  return {
    kind: 'mount',
    cmd: {
      optionStrings: ([] as unknown[]).concat(args.o ?? []).map(String),
      mountpoint: positional[0],
      foreground: Boolean(args.f),
      debug: Boolean(args.d),
    },
  };
}
