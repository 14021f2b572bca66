/**
 * Numbers in option values, read the way fuse-overlayfs reads them: libfuse's `%d` templates
 * go through sscanf, `timeout=` through strtod. Both take the longest numeric prefix and
 * ignore what follows (`fsync=2x` is 2), so drop-in callers see the same values here.
 */

/** sscanf("%d"): a leading integer, stored in a C int (wrapping like glibc), or null if none. */
export function scanInt(text: string): number | null {
  const m = /^\s*([+-]?)(\d+)/.exec(text);
  if (!m) return null;
  // glibc reads a long (saturating at its limits), then stores its low 32 bits.
  const LONG_MAX = (1n << 63n) - 1n;
  let n = BigInt(m[2]);
  if (n > LONG_MAX) n = m[1] === '-' ? LONG_MAX + 1n : LONG_MAX;
  return Number(BigInt.asIntN(32, m[1] === '-' ? -n : n));
}

export interface Strtod {
  readonly value: number;
  /** strtod set ERANGE: the value over- or underflowed a double. */
  readonly range: boolean;
}

/** strtod: the leading decimal, hex-integer, inf or nan; 0 when there is none. */
export function strtod(text: string): Strtod {
  const s = text.replace(/^\s+/, '');
  const special = /^([+-]?)(inf(inity)?|nan)/i.exec(s);
  if (special) {
    const sign = special[1] === '-' ? -1 : 1;
    return { value: /^nan/i.test(special[2]) ? NaN : sign * Infinity, range: false };
  }
  const hex = /^([+-]?)0x([0-9a-f]+)/i.exec(s);
  if (hex) return { value: (hex[1] === '-' ? -1 : 1) * parseInt(hex[2], 16), range: false };
  const dec = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?/i.exec(s);
  if (!dec) return { value: 0, range: false };
  const value = Number(dec[0]);
  const digits = dec[1].replace('.', '');
  const underflow = value === 0 && /[1-9]/.test(digits);
  return { value, range: !Number.isFinite(value) || underflow };
}
