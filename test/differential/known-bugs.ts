/**
 * ts-overlayfs bugs the fuzzer has found and that are not fixed yet. These are NOT deliberate
 * differences (see differences.ts): each has a regression test in regressions.test.ts marked
 * `todo`. While a bug is listed here the generator steers around it, so that runs keep finding
 * new bugs instead of the same one; `scripts/fuzz --include-known` turns the steering off.
 * Whoever fixes a bug removes its entry here and the `todo` of its regression test.
 */
/** The bugs listed below; a name that is not listed (a fixed bug) does not compile where the generator still steers. */
export type KnownBugName = never;

export interface KnownBug {
  readonly name: KnownBugName;
  readonly what: string;
  /** How the generator steers around it. */
  readonly avoidance: string;
}

export const KNOWN_BUGS: readonly KnownBug[] = [
];

const steering = { on: true };

/** Whether the generator steers around bug `name` (all of them unless --include-known). */
export function avoidKnown(name: KnownBugName): boolean {
  return steering.on && KNOWN_BUGS.some((b) => b.name === name);
}

export function setAvoidKnownBugs(on: boolean): void {
  steering.on = on;
}
