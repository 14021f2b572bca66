/** The ts-overlayfs command. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { enableDebug, log } from '../log';
import type { MountConfig } from './config';
import { daemonConfig, detachedByLauncher, launchDaemon, reportFailure, reportReady } from './daemon';
import type { Served } from './serve';

// Where Node launches the daemon (see daemon.ts), a mount starts two processes, the launcher
// and the daemon, each loading only what it runs (the command line's parser, or the
// server): module loading is much of a mount's time.
const loadServer = (): typeof import('./serve') => require('./serve') as typeof import('./serve');
const loadCommandLine = (): typeof import('./args') & typeof import('./config') => ({
  ...(require('./args') as typeof import('./args')),
  ...(require('./config') as typeof import('./config')),
});

const PACKAGE_ROOT = join(__dirname, '..', '..', '..');

function version(): string {
  return (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
}

function fail(message: string): number {
  process.stderr.write(`ts-overlayfs: ${message}\n`);
  return 1;
}

/** Mounts, then stays until SIGTERM/SIGINT or an outside unmount. */
async function runServer(config: MountConfig, onReady: () => void): Promise<number> {
  if (config.debug) enableDebug();
  // The handlers go in before the mount: the kernel lists the mount before INIT is answered,
  // and a signal in that gap would otherwise kill the process and leave it mounted.
  let served: Served | undefined;
  let pending: string | undefined;
  let stopping = false;
  const stop = (signal: string) => {
    if (!served) {
      pending ??= signal;
      return;
    }
    if (stopping) return;
    stopping = true;
    log.mount('%s: unmounting %s', signal, config.mountpoint);
    served.stop().catch((err: Error) => {
      process.stderr.write(`ts-overlayfs: ${err.message}\n`);
      process.exit(1);
    });
  };
  const signals = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;
  for (const signal of signals) process.on(signal, () => stop(signal));
  served = await loadServer().serve(config);
  onReady();
  if (pending) stop(pending);
  await served.gone;
  log.mount('unmounted %s', config.mountpoint);
  return 0;
}

async function main(argv: string[]): Promise<number> {
  const inherited = daemonConfig();
  if (inherited) {
    try {
      return await runServer(inherited, reportReady);
    } catch (err) {
      reportFailure((err as Error).message);
      return 1;
    }
  }
  const detached = detachedByLauncher();
  const { parseArgs, buildConfig, CliError } = loadCommandLine();
  try {
    const parsed = parseArgs(argv, version());
    if (parsed.kind === 'exit') {
      // Detached, stdout is /dev/null (bin/ts-overlayfs leaves such command lines to Node anyway).
      (detached ? process.stderr : process.stdout).write(`${parsed.output}\n`);
      if (detached) reportFailure(null);
      return parsed.code;
    }
    const config = await buildConfig(parsed.cmd, (m) => process.stderr.write(`${m}\n`));
    if (detached) {
      // Paths are resolved by now; the daemon must not hold the caller's directory busy.
      process.chdir('/');
      return await runServer(config, reportReady);
    }
    if (!config.foreground) return await launchDaemon(config, process.argv[1], argv);
    return await runServer(config, () => undefined);
  } catch (err) {
    const code = fail(err instanceof CliError ? err.message : (err as Error).message ?? String(err));
    if (detached) reportFailure(null);
    return code;
  }
}

main(process.argv.slice(2)).then(
  // A pool thread may still be polling the device (its poll ends within a fraction of a second).
  (code) => process.exit(code),
  (err) => process.exit(fail(String(err))),
);
