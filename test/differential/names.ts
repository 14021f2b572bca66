/**
 * Paths of the fuzzer as strings that can hold any bytes: a name that is not UTF-8 keeps each
 * byte that is not part of a valid UTF-8 sequence as the lone surrogate U+DC80..U+DCFF
 * (Python's "surrogateescape"). Such strings survive JSON (sequences and replay files), print
 * readably ("\udcff"), and turn back into exactly the same bytes, so the generator, the views
 * and the reports keep working with strings while every call on a mount gets the real bytes.
 */

/** The bytes a fuzzer path stands for. */
export function bytesOf(s: string): Buffer {
  const out: number[] = [];
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (c >= 0xdc80 && c <= 0xdcff) out.push(c - 0xdc00);
    else out.push(...Buffer.from(ch, 'utf8'));
  }
  return Buffer.from(out);
}

/** The length of the valid UTF-8 sequence at `i`, or 0. */
function utf8Length(b: Buffer, i: number): number {
  const c = b[i];
  const cont = (k: number) => i + k < b.length && (b[i + k] & 0xc0) === 0x80;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    if (!cont(1) || !cont(2)) return 0;
    const c1 = b[i + 1];
    if (c === 0xe0 && c1 < 0xa0) return 0; // overlong
    if (c === 0xed && c1 >= 0xa0) return 0; // a surrogate
    return 3;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    const c1 = b[i + 1];
    if (c === 0xf0 && c1 < 0x90) return 0;
    if (c === 0xf4 && c1 >= 0x90) return 0;
    return 4;
  }
  return 0;
}

/** A name or path read from the filesystem (bytes) as a fuzzer string. */
export function stringOf(b: Buffer): string {
  let out = '';
  for (let i = 0; i < b.length;) {
    const n = utf8Length(b, i);
    if (n === 0) {
      out += String.fromCharCode(0xdc00 + b[i]);
      i++;
    } else {
      out += b.toString('utf8', i, i + n);
      i += n;
    }
  }
  return out;
}

/** `root` (a plain directory path) joined with fuzzer path `rel` ('' for root itself), as bytes. */
export function under(root: string, rel: string): Buffer {
  return rel === '' ? Buffer.from(root) : Buffer.concat([Buffer.from(`${root}/`), bytesOf(rel)]);
}

/** Whether a fuzzer string stands for bytes that are not UTF-8. */
export function isRawName(s: string): boolean {
  return /[\udc80-\udcff]/.test(s);
}
