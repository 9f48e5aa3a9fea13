/** vnstore library API: open a store, run snapshot sessions, restore. See docs/API.md. */
export { Store, type OpenOptions, type RecoveryReport } from './store/store.js';
export { openStore } from './open-store.js'; // Store.open with gc as the sweeper
export { Session, type SessionOptions, type CommitOptions, type PreparedSnapshot, type SessionStats } from './store/session.js';
export { restoreSnapshot, type RestoreSink } from './store/restore.js';
export type { SnapshotRecord, GroupRecord, PackRecord } from './store/db.js';
export { VnstoreError, CorruptError, ERROR_CODES, type ErrorCode } from './util/errors.js';
export { PAGE_SIZE } from './format/pages.js';
export * from './maintenance/index.js'; // forget, gc, check, stats (docs/OPERATIONS.md)
export * from './agent/index.js'; // client of `vnstore serve` (docs/PROTOCOL.md)
export { VnServer, type ServerOptions } from './server/server.js';
export { ProtocolError, RemoteError, WIRE_CODES, type WireCode } from './protocol/errors.js';
