"""Past one machine: capture workers and API replicas sharing the sources through NATS JetStream.

- `assign`: which live worker should own each source (counts differ by at most one, fewest moves).
- `leases`: who captures what, in JetStream key-value buckets, fenced by revision and epoch.
- `parts`: what a worker publishes of a source (state, never deltas; the bytes follow the changes),
  and how an API replica puts it back together, dropping what an older owner wrote.

Still to come (issue 15): the worker command (capture of the leased sources through the capture
contract, checkpoints in JetStream), the API replica (`api`), and docs/deploy.md.
"""
