"""Past one machine: capture workers and API replicas sharing the sources through NATS JetStream.

- `assign`: which live worker should own each source (counts differ by at most one, fewest moves).
"""
