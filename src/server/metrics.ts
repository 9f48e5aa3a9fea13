/** Prometheus metrics of a server (prom-client, its own registry), served on --metrics. */
import http from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class ServerMetrics {
  readonly registry = new Registry();
  readonly connectionsOpen = new Gauge({ name: 'vnstore_connections_open', help: 'Agent connections open', registers: [this.registry] });
  readonly sessionsOpen = new Gauge({
    name: 'vnstore_sessions_open',
    help: 'Snapshot sessions open (begun, not yet prepared or ended)',
    registers: [this.registry],
  });
  readonly sessionsPrepared = new Gauge({
    name: 'vnstore_sessions_prepared',
    help: 'Prepared snapshots waiting for a commit',
    registers: [this.registry],
  });
  readonly pagesOffered = new Counter({ name: 'vnstore_pages_offered_total', help: 'Pages offered by digest', registers: [this.registry] });
  readonly pagesNew = new Counter({
    name: 'vnstore_pages_new_total',
    help: 'Offered pages the store lacked (their bytes were asked for)',
    registers: [this.registry],
  });
  readonly pagesDuplicate = new Counter({
    name: 'vnstore_pages_duplicate_total',
    help: 'Offered pages the store already held (no bytes sent)',
    registers: [this.registry],
  });
  readonly pagesReceived = new Counter({
    name: 'vnstore_pages_received_total',
    help: 'Pages received with their bytes (hashed and checked)',
    registers: [this.registry],
  });
  readonly wireBytes = new Counter({
    name: 'vnstore_wire_bytes_total',
    help: 'Bytes on agent connections',
    labelNames: ['direction'] as const,
    registers: [this.registry],
  });
  readonly storedBytes = new Counter({
    name: 'vnstore_stored_bytes_total',
    help: 'Bytes committed snapshots added to the store (chunks, pack entries, manifests)',
    registers: [this.registry],
  });
  readonly commits = new Counter({ name: 'vnstore_commits_total', help: 'Snapshots committed', registers: [this.registry] });
  readonly commitSeconds = new Histogram({
    name: 'vnstore_commit_seconds',
    help: 'Latency of prepare and commit requests',
    labelNames: ['step'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly errors = new Counter({
    name: 'vnstore_errors_total',
    help: 'Error frames sent, by code',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'vnstore_process_' });
  }

  /** An HTTP server answering GET /metrics (any path) with the exposition of this registry. */
  httpServer(): http.Server {
    return http.createServer((req, res) => {
      if (req.method !== 'GET') {
        res.writeHead(405).end();
        return;
      }
      this.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(text),
        (err: Error) => res.writeHead(500).end(err.message),
      );
    });
  }
}
