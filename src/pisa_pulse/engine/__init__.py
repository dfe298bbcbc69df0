"""Engine: turns captured batches into exact per-country aggregates, incrementally, exactly once.

Inserts add a row's contribution, deletes retract it, updates do both, so the aggregates always
equal what SQL over the sources' current rows would give (`oracle.py` is that SQL, and the tests
compare the two).

- `values`      the one place that says which text is a valid value and how it becomes an integer
- `ledger`      per source and primary key, what each row contributed (numpy int32 rows)
- `keyindex`    the ledger's primary key -> slot map: a hash table in numpy arrays
- `aggregates`  per-country exact sums and counts, mergeable across sources; means on demand
- `checkpoint`  ledger rows and positions in one SQLite transaction
- `pipeline`    the sink of every captured source: applies batches, checkpoints, confirms
- `process`     capture and engine in a process of their own, publishing on the `feed`
- `feed`        what crosses to the HTTP process: per-source aggregates, freshness, status
- `oracle`      the same aggregates computed directly by SQL on a source (tests, direct mode)

The engine imports capture's contract and the sources layer, never the API (tests/test_boundaries.py).
"""
