/**
 * The `-o` option string, parsed the way fuse-overlayfs and mount(8) read it:
 *  - options are separated by commas; a comma inside double quotes or after a backslash
 *    belongs to the value (podman passes `context="system_u:...:c1,c2"`);
 *  - empty options (`a,,b`, which rootless podman passes) are skipped;
 *  - the value of lowerdir is a `:`-separated list where `\:` and `\,` are literal.
 */

export interface ParsedOption {
  readonly name: string;
  /** The raw value with escapes kept, or null for a flag such as `ro`. */
  readonly value: string | null;
}

/** Splits one or more `-o` strings into options; later ones win when a name repeats. */
export function parseOptionStrings(strings: readonly string[]): ParsedOption[] {
  const out: ParsedOption[] = [];
  for (const s of strings) {
    for (const item of splitUnescaped(s, ',', true)) {
      if (item === '') continue;
      const eq = item.indexOf('=');
      out.push(eq < 0 ? { name: item, value: null } : { name: item.slice(0, eq), value: item.slice(eq + 1) });
    }
  }
  return out;
}

/** The lowerdir list: `:`-separated, with `\:` `\,` `\\` standing for themselves. */
export function splitLowerdir(value: string): string[] {
  return splitUnescaped(value, ':', false).filter((p) => p !== '').map(unescape);
}

/** Removes backslash escapes (and the quotes of a quoted value). */
export function unescape(value: string): string {
  let out = '';
  for (let i = 0; i < value.length; i++) {
    const ch = value[i];
    if (ch === '\\' && i + 1 < value.length) out += value[++i];
    else if (ch !== '"') out += ch;
  }
  return out;
}

/** Splits on `sep` outside quotes (when honoured) and not after a backslash; escapes are kept. */
function splitUnescaped(s: string, sep: string, honourQuotes: boolean): string[] {
  const parts: string[] = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < s.length; i++) {
    const ch = s[i];
    if (ch === '\\' && i + 1 < s.length) {
      cur += ch + s[++i];
    } else if (ch === '"' && honourQuotes) {
      quoted = !quoted;
      cur += ch;
    } else if (ch === sep && !quoted) {
      parts.push(cur);
      cur = '';
    } else {
      cur += ch;
    }
  }
  parts.push(cur);
  return parts;
}
