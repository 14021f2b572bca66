/**
 * The kernel's references to overlay nodes: a node id for each node the kernel has been
 * given (by lookup, create, mknod, mkdir, symlink or link), and how many lookups it holds.
 * FORGET gives them back; at zero the id is free for another node, with its generation
 * bumped so that (id, generation) never names two nodes. The root is id 1 and never goes.
 */
import { errorFor } from '../errors';
import type { OvlNode } from '../overlay/node';

export const ROOT_ID = 1;

export class NodeTable {
  private readonly slots: (OvlNode | undefined)[] = [undefined];
  private readonly generations: number[] = [0];
  private readonly free: number[] = [];

  constructor(root: OvlNode) {
    this.slots.push(root);
    this.generations.push(0);
    root.nodeId = ROOT_ID;
    root.lookups = 1;
  }

  /** The node of a node id the kernel sent. */
  get(id: number): OvlNode {
    const node = this.slots[id];
    // The kernel only names nodes it was given and has not forgotten.
    if (node === undefined) throw errorFor('ESTALE', `node ${id}`);
    return node;
  }

  /** The node of an id, if the kernel holds one. */
  peek(id: number): OvlNode | undefined {
    return this.slots[id];
  }

  /** One more lookup of `node` held by the kernel: its id and generation for the answer. */
  take(node: OvlNode): { nodeId: number; generation: number } {
    if (node.nodeId === 0) {
      const id = this.free.pop() ?? this.slots.length;
      if (id === this.slots.length) {
        this.slots.push(node);
        this.generations.push(0);
      } else {
        this.slots[id] = node;
        this.generations[id]++;
      }
      node.nodeId = id;
    }
    node.lookups++;
    return { nodeId: node.nodeId, generation: this.generations[node.nodeId] };
  }

  /** The kernel dropped `count` lookups of id; the node once it holds none (else null). */
  forget(id: number, count: number): OvlNode | null {
    const node = this.slots[id];
    if (node === undefined || id === ROOT_ID) return null;
    node.lookups = Math.max(0, node.lookups - count);
    if (node.lookups > 0) return null;
    this.slots[id] = undefined;
    this.free.push(id);
    node.nodeId = 0;
    return node;
  }

  /** How many nodes the kernel holds (the root included). */
  get size(): number {
    return this.slots.length - 1 - this.free.length;
  }
}
