"""Capture: every change of every source, handed to the engine as batches through one contract.

The contract (`contract.py`): a `CapturedSource` is started from a position, hands over `Batch`es
(whole source transactions, or the differences a poll found) with the position they reach, is told
which position the checkpoint holds (`confirm`), and reports a typed `SourceStatus`. `Mode`,
`State` and `HEALTHY` are the vocabulary every stage uses.

- `replicated`  logical replication: one select loop over every source's slot, copy and stream
- `polled`      read-only polling, a thread per source (`poll.py` has its queries)
- `sources`     one captured source per configured source, as its mode says
- `replication` the replication I/O: publication, slot, exported-snapshot copy, stream
- `pgoutput`, `changes`  pure decoding: pgoutput messages, then transactions of row changes
- `preflight`   what a source allows (`pisa-pulse check`), and the table check both modes make
- `exceptions`  the capture's errors, under the root `PisaPulseError`

Import contract (tests/test_boundaries.py checks it on the syntax tree): capture imports the
sources layer (DSNs, the table's layout and its chart columns) and the standard library, never the
engine, the API, the CLI or the web page, in any form, so that it can run wherever the engine runs.
"""
