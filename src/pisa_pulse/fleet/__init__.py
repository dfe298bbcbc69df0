"""Past one machine: capture workers and API replicas sharing the sources through NATS JetStream.

- `assign`: which live worker should own each source (counts differ by at most one, fewest moves).
- `leases`: who captures what, in JetStream key-value buckets, fenced by revision and epoch.
- `parts`: what a worker publishes of a source (state, never deltas; the bytes follow the changes),
  and how an API replica puts it back together, dropping what an older owner wrote.
- `bus`: those values written to NATS (retried through elections) and a replica's view of them.
- `checkpoints`: each source's ledger and position in JetStream (a log that follows the changes, and
  a snapshot it is compacted into), fenced by the log's sequence, so any worker can resume a source.
- `worker`: one leased source captured by the engine's pipeline and published under its epoch
  (`SourceWorker`), and a worker whose leases decide which sources it captures (`Worker`).
- `stores`: the buckets a worker writes; `retire`: sources removed from the settings, their slot
  dropped and their state deleted.
- `replica`: an API replica's snapshots, merged from the published parts.
- `connect`: the NATS connection of the `worker`, `api` and `fleet` commands (cli_fleet.py).

The constants the command line needs are here, so that `pisa-pulse` imports the NATS client only for
the commands that connect (it is 5 MB of a `serve` process that never uses it).
"""

PREFIX = "pisa_pulse"  # every bucket's name starts with it, so one NATS account can hold several deployments
LEASE_S = 6  # whole seconds (JetStream's age limits are): several, so a loaded 2-core machine does not flap
