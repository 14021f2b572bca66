/** The kernel's mount table of this process's namespace (/proc/self/mountinfo). */
import { readFile } from 'node:fs/promises';

export interface MountEntry {
  readonly mountpoint: string;
  readonly fstype: string;
}

export async function readMountTable(): Promise<MountEntry[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const entries: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    // Optional fields end with '-'; the filesystem type follows it.
    const dash = fields.indexOf('-', 6);
    if (dash < 0) continue;
    entries.push({ mountpoint: unescapeOctal(fields[4]), fstype: fields[dash + 1] });
  }
  return entries;
}

/** mountinfo writes space, tab, newline and backslash as \ooo. */
function unescapeOctal(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}
