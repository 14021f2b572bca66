/**
 * Just enough of a C header parser to read the byte layouts of include/uapi/linux/fuse.h
 * from the header itself, so the wire tests compare our encoders with the kernel's structs
 * and not with themselves: `struct NAME { TYPE field; TYPE arr[N]; struct other sub; char
 * name[]; };` with natural alignment (as on every Linux ABI FUSE runs on: the header pads
 * its structs so that 32- and 64-bit layouts agree), `#define NAME (1 << N)`-style integer
 * constants, and `enum NAME { A = 1, B, };`.
 */
import { readFileSync } from 'node:fs';

export const FUSE_HEADER = '/usr/include/linux/fuse.h';

const PRIMITIVES: Record<string, { size: number; signed: boolean }> = {
  char: { size: 1, signed: true },
  uint8_t: { size: 1, signed: false },
  int8_t: { size: 1, signed: true },
  uint16_t: { size: 2, signed: false },
  int16_t: { size: 2, signed: true },
  uint32_t: { size: 4, signed: false },
  int32_t: { size: 4, signed: true },
  uint64_t: { size: 8, signed: false },
  int64_t: { size: 8, signed: true },
};

export interface CField {
  readonly name: string;
  /** The element type: a primitive name, or `struct NAME`. */
  readonly type: string;
  readonly offset: number;
  /** Bytes of one element. */
  readonly elementSize: number;
  /** Elements: 1 for a scalar, N for `[N]`, 0 for a flexible array member `[]`. */
  readonly count: number;
  /** Whole size (elementSize * count). */
  readonly size: number;
  readonly signed: boolean;
  /** The struct the field is, for `struct other sub`. */
  readonly struct?: CStruct;
}

export interface CStruct {
  readonly name: string;
  readonly size: number;
  readonly align: number;
  readonly fields: readonly CField[];
  /** A field by name; `a.b` reaches into a nested struct, with the offset from this struct's start. */
  field(path: string): CField;
  has(name: string): boolean;
}

export interface CHeader {
  readonly structs: ReadonlyMap<string, CStruct>;
  /** Integer #defines and enum members. */
  readonly constants: ReadonlyMap<string, bigint>;
  /** The members of each named enum, in order. */
  readonly enums: ReadonlyMap<string, ReadonlyMap<string, bigint>>;
  struct(name: string): CStruct;
  constant(name: string): bigint;
}

function stripComments(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, ' ').replace(/\/\/[^\n]*/g, ' ');
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

function makeStruct(name: string, size: number, align: number, fields: CField[]): CStruct {
  const byName = new Map(fields.map((f) => [f.name, f]));
  const self: CStruct = {
    name,
    size,
    align,
    fields,
    has: (n) => byName.has(n),
    field(path: string): CField {
      const [head, ...rest] = path.split('.');
      const f = byName.get(head);
      if (!f) throw new Error(`struct ${name} has no field ${head}`);
      if (rest.length === 0) return f;
      if (!f.struct) throw new Error(`${name}.${head} is not a struct`);
      const inner = f.struct.field(rest.join('.'));
      return { ...inner, offset: f.offset + inner.offset };
    },
  };
  return self;
}

/** Integer constant expressions of the header's #defines: literals, (a << b), |, and names already defined. */
function evaluate(expr: string, known: ReadonlyMap<string, bigint>): bigint | null {
  const tokens = expr.match(/0x[0-9a-fA-F]+|\d+|[A-Za-z_]\w*|<<|\||\(|\)|\S/g);
  if (!tokens) return null;
  let pos = 0;
  const peek = () => tokens[pos];
  const primary = (): bigint | null => {
    const t = tokens[pos++];
    if (t === undefined) return null;
    if (t === '(') {
      const v = or();
      if (tokens[pos++] !== ')') return null;
      return v;
    }
    if (/^(0x[0-9a-fA-F]+|\d+)$/.test(t)) {
      // Integer suffixes (1ULL, 1u) are their own tokens here: skip them.
      if (peek() !== undefined && /^[uUlL]+$/.test(peek())) pos++;
      return BigInt(t);
    }
    if (/^[A-Za-z_]\w*$/.test(t)) return known.get(t) ?? null;
    return null;
  };
  const shift = (): bigint | null => {
    let v = primary();
    while (v !== null && peek() === '<<') {
      pos++;
      const r = primary();
      if (r === null) return null;
      v <<= r;
    }
    return v;
  };
  const or = (): bigint | null => {
    let v = shift();
    while (v !== null && peek() === '|') {
      pos++;
      const r = shift();
      if (r === null) return null;
      v |= r;
    }
    return v;
  };
  const v = or();
  return pos === tokens.length ? v : null;
}

export function parseHeader(source: string): CHeader {
  const text = stripComments(source);
  const structs = new Map<string, CStruct>();
  const constants = new Map<string, bigint>();
  const enums = new Map<string, Map<string, bigint>>();

  // Definitions in the order they appear: a struct may use the ones before it, as in C.
  const definition = /^#define[ \t]+(\w+)[ \t]+([^\n]*)$|\bstruct\s+(\w+)\s*\{([^}]*)\}\s*;|\benum\s+(\w+)\s*\{([^}]*)\}\s*;/gm;
  for (const m of text.matchAll(definition)) {
    if (m[1] !== undefined) {
      // Function-like macros never match (a '(' follows the name); others that are not integers evaluate to null.
      const v = evaluate(m[2].trim(), constants);
      if (v !== null) constants.set(m[1], v);
    } else if (m[3] !== undefined) {
      structs.set(m[3], parseStruct(m[3], m[4], structs));
    } else {
      const members = new Map<string, bigint>();
      let next = 0n;
      for (const item of m[6].split(',').map((s) => s.trim()).filter(Boolean)) {
        const [name, value] = item.split('=').map((s) => s.trim());
        const v = value === undefined ? next : evaluate(value, constants);
        if (v === null) throw new Error(`enum ${m[5]}: cannot evaluate ${item}`);
        members.set(name, v);
        constants.set(name, v);
        next = v + 1n;
      }
      enums.set(m[5], members);
    }
  }
  return {
    structs,
    constants,
    enums,
    struct(name) {
      const s = structs.get(name);
      if (!s) throw new Error(`no struct ${name} in the header`);
      return s;
    },
    constant(name) {
      const v = constants.get(name);
      if (v === undefined) throw new Error(`no constant ${name} in the header`);
      return v;
    },
  };
}

function parseStruct(name: string, body: string, known: ReadonlyMap<string, CStruct>): CStruct {
  const fields: CField[] = [];
  let offset = 0;
  let align = 1;
  for (const decl of body.split(';').map((s) => s.replace(/\s+/g, ' ').trim()).filter(Boolean)) {
    const m = /^(struct \w+|\w+) (\w+)(?:\[(\d*)\])?$/.exec(decl);
    if (!m) throw new Error(`struct ${name}: cannot parse "${decl}"`);
    const [, type, fieldName, dim] = m;
    let elementSize: number;
    let elementAlign: number;
    let signed = false;
    let struct: CStruct | undefined;
    if (type.startsWith('struct ')) {
      struct = known.get(type.slice(7));
      if (!struct) throw new Error(`struct ${name}: ${type} is not defined before it`);
      elementSize = struct.size;
      elementAlign = struct.align;
    } else {
      const p = PRIMITIVES[type];
      if (!p) throw new Error(`struct ${name}: unknown type ${type}`);
      elementSize = elementAlign = p.size;
      signed = p.signed;
    }
    const count = dim === undefined ? 1 : dim === '' ? 0 : Number(dim);
    offset = alignUp(offset, elementAlign);
    align = Math.max(align, elementAlign);
    fields.push({ name: fieldName, type, offset, elementSize, count, size: elementSize * count, signed, struct });
    offset += elementSize * count;
  }
  return makeStruct(name, alignUp(offset, align), align, fields);
}

let cached: CHeader | null = null;

/** The FUSE header of this machine, parsed once. */
export function fuseHeader(): CHeader {
  cached ??= parseHeader(readFileSync(FUSE_HEADER, 'utf8'));
  return cached;
}

/** The value of a field (element `index` of an array field) at `base` in `buf`, as a bigint; signed fields sign-extended. */
export function readField(buf: Buffer, base: number, f: CField, index = 0): bigint {
  if (f.struct || index >= f.count) throw new Error(`${f.name}[${index}] is no scalar of the struct`);
  const off = base + f.offset + index * f.elementSize;
  switch (f.elementSize) {
    case 1:
      return BigInt(f.signed ? buf.readInt8(off) : buf.readUInt8(off));
    case 2:
      return BigInt(f.signed ? buf.readInt16LE(off) : buf.readUInt16LE(off));
    case 4:
      return BigInt(f.signed ? buf.readInt32LE(off) : buf.readUInt32LE(off));
    default:
      return f.signed ? buf.readBigInt64LE(off) : buf.readBigUInt64LE(off);
  }
}

/** Writes a scalar field (or every element of an array field) at `base`, little-endian, as the kernel does. */
export function writeField(buf: Buffer, base: number, f: CField, value: bigint | number): void {
  if (f.struct) throw new Error(`${f.name} is a struct`);
  const v = BigInt(value);
  for (let i = 0; i < f.count; i++) {
    const off = base + f.offset + i * f.elementSize;
    // BigInt.asUintN wraps a negative value into its two's complement, whatever the signedness.
    const u = BigInt.asUintN(f.elementSize * 8, v);
    switch (f.elementSize) {
      case 1:
        buf.writeUInt8(Number(u), off);
        break;
      case 2:
        buf.writeUInt16LE(Number(u), off);
        break;
      case 4:
        buf.writeUInt32LE(Number(u), off);
        break;
      default:
        buf.writeBigUInt64LE(u, off);
    }
  }
}

/**
 * The bytes of `struct` with the given field values at the header's offsets; fields not
 * given are zero. Values may name nested fields with `a.b`.
 */
export function buildStruct(s: CStruct, values: Readonly<Record<string, bigint | number>>): Buffer {
  const buf = Buffer.alloc(s.size);
  for (const [path, value] of Object.entries(values)) writeField(buf, 0, s.field(path), value);
  return buf;
}
