"""Past one machine: capture workers and API replicas sharing the sources through NATS JetStream.

- `assign`: which live worker should own each source (counts differ by at most one, fewest moves).
- `leases`: who captures what, in JetStream key-value buckets, fenced by revision and epoch.
- `parts`: what a worker publishes of a source (state, never deltas; the bytes follow the changes),
  and how an API replica puts it back together, dropping what an older owner wrote.
- `bus`: those values written to NATS (retried through elections) and a replica's view of them.
- `worker`: one leased source captured by the engine's pipeline and published under its epoch
  (`SourceWorker`), and a worker whose leases decide which sources it captures (`Worker`).

Still to come (issue 15): the `worker` and `api` commands, checkpoints in JetStream (a new owner
makes a fresh copy until then), per-source status, and docs/deploy.md.
"""
