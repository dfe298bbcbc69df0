"""Sources: the country databases that everything else reads, and the traffic that feeds them.

- `schema`     the `responses` table, full (1,118 questionnaire columns) or slim
- `students`   deterministic synthetic students calibrated to published PISA 2018 figures
- `cluster`    the embedded PostgreSQL cluster (run as an unprivileged user when invoked as root)
- `databases`  create, check, count, empty and drop country databases on a server
- `seed`       bulk COPY of students with worker processes
- `traffic`    live inserts, corrections and withdrawals at a rate that can change while it runs
- `control`    the traffic's loopback control endpoint (token-protected) and its client
- `config`     `sources.toml`, which every later command reads
- `lifecycle`  what `sources up|down|status|reset|empty` do
"""
