/** The agent: a typed client of `vnstore serve` (docs/PROTOCOL.md). */
export { AgentClient, type ConnectOptions } from './client.js';
export { RemoteSession, type RemotePrepared, type WireStats } from './session.js';
export { openBackend, type BackendConfig, type SnapshotBackend, type SnapshotSession } from './backend.js';
