/** The agent protocol (docs/PROTOCOL.md): frames, messages, limits and wire error codes. Pure: no I/O. */
export * from './limits.js';
export * from './errors.js';
export * from './frames.js';
export * from './messages.js';
export { negotiateVersion } from './version.js';
