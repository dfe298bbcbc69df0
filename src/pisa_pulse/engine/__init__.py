"""Engine: turns captured row changes into exact per-country aggregates, incrementally.

Inserts add a row's contribution, deletes retract it, updates do both, so the aggregates always
equal what SQL over the sources' current rows would give (`oracle.py` is that SQL, and the tests
compare the two).

- `values`      the one place that says which text is a valid value and how it becomes an integer
- `ledger`      per source and primary key, what each row contributed (numpy int32 rows)
- `aggregates`  per-country exact sums and counts, mergeable across sources; means on demand
- `oracle`      the same aggregates computed directly by SQL on a source (tests, direct mode)
"""
