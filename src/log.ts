import createDebug from 'debug';

/** Debug output, off unless DEBUG=ts-overlayfs:* (or -d) turns it on. */
export const log = {
  op: createDebug('ts-overlayfs:op'),
  mount: createDebug('ts-overlayfs:mount'),
  error: createDebug('ts-overlayfs:error'),
};

export function enableDebug(): void {
  createDebug.enable([process.env.DEBUG, 'ts-overlayfs:*'].filter(Boolean).join(','));
}
