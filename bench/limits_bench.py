"""Physical limits: what this machine does at best, with no pipeline, so our figures read as a fraction.

Three measurements, each on its own scratch sources (the 20 default countries, full schema, on the
embedded PostgreSQL cluster), none running pisa-pulse's own write, capture or chart code:

- `postgres_insert`: PostgreSQL's insert rate for full-width rows, with no Python generating rows.
  Bulk: on each source, one statement `INSERT INTO responses SELECT id + 2**62, ... FROM responses`
  copies the seeded rows with fresh ids (the seeded ids are random below 2**62, so the copies land
  at random points of the primary key, as the traffic's inserts do), as many sources at a time as
  there are cores: rows/s.
  Single-row transactions, as the traffic writes them: a few threads, each with an autocommit
  connection to its share of the sources, round robin, each transaction one prepared
  `INSERT ... SELECT` (planned once) copying a seeded row under a new random id: transactions/s.
- `static_http`: the floor of the HTTP stack. A minimal Starlette app (one route, fixed 1 KiB of
  JSON, no middleware) served by uvicorn with `serve`'s options (httptools and uvloop picked by
  "auto", no access log, lifespan on, the same connection limit), in a child process, loaded with
  wrk exactly as the API benchmark loads the chart.
- `pgoutput_decode`: logical decoding with no processing. Two publications on one source, the
  pipeline's own (`pisa_pulse`, the chart columns) and one of every column, then slots, then a backlog
  of single-row-copy inserts in transactions of 50 rows (the traffic's batch at high rates). The
  backlog is decoded through `pg_logical_slot_peek_binary_changes` (decode only; the function also
  materialises its result, which for full rows spills to a temporary file) and received over the
  streaming replication protocol by psycopg2's LogicalReplicationConnection, each message counted
  and dropped (decode + transfer). Peeking leaves the slot where it was, and each stream has its
  own slot, so every case decodes the same backlog from the same start; the slots are dropped after.
  One slot decodes in one process, so these are one core's rates; the pipeline reads 20 slots.

CPU is read from /proc as in the API benchmark: PostgreSQL's (the postmaster and its children), the
HTTP server's, and this process's (the client threads), in cores over the measured time. Autovacuum
is paused after seeding, as in the API benchmark.

    python bench/run.py --suite limits [--profile smoke|quick|full]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import random
import re
import resource
import select
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from psycopg2 import sql

from api_bench import ServeProcess, _settle, wrk_load
from capture_bench import _up
from cpu import cluster_cpu_s, postmaster_pid, self_cpu_s
from pisa_pulse.capture import replication
from pisa_pulse.sources.config import Source
from pisa_pulse.sources.databases import Connection, connected
from pisa_pulse.sources.schema import CHART_COLUMNS, TABLE, columns
from pisa_pulse.sources.seed import MAX_ID
from pisa_pulse.sources.traffic import MAX_BATCH
from sources_bench import scratch_dir, total_rows

TEMPLATES = 100  # seeded rows per source that the single-row inserts copy (they stay in cache)
DECODE_SEEDED = 100  # rows per country seeded before a decode backlog: its templates
# Which columns the decoder sends: the pipeline's publication (the chart columns) or every column.
PUBLICATIONS = {"chart": replication.PUBLICATION, "all": "limits_bench_all"}
# One slot for the SQL decodes (peeking leaves it where it was), one per stream (which may confirm).
SLOTS = {"sql": "limits_bench_sql", "chart": "limits_bench_stream_chart", "all": "limits_bench_stream_all"}
STATIC_BODY = b'{"static":"' + b"x" * 1011 + b'"}'  # 1 KiB
STATIC_CONNECTIONS = 32
IDLE_TIMEOUT_S = 30.0


def postgres_insert(students: int, seconds: float, writers: int | None = None) -> dict[str, Any]:
    """Full-width rows/s of server-side bulk copies, then single-row transactions/s for `seconds`."""
    threads = os.cpu_count() or 1
    writers = writers or 2 * threads
    with scratch_dir() as data_dir:
        config = _up(data_dir, "full", students // 20)
        seeded = total_rows(config)
        _settle(config)
        postmaster = postmaster_pid(config, data_dir)
        with contextlib.ExitStack() as stack:
            # Opened before and closed after each measurement: a backend that ends takes its CPU along.
            conns = [stack.enter_context(connected(s.dsn)) for s in config.sources]
            bulk = _measured(postmaster, lambda: _bulk_copy(conns, threads))
            templates = [_template_ids(conn, TEMPLATES) for conn in conns]
            for conn in conns:
                _prepare_copy_rows(conn)
            single = _measured(
                postmaster, lambda: _single_row_transactions(conns, templates, seconds, writers)
            )
    return {
        "schema": "full",
        "students": seeded,
        "bulk_connections": threads,
        "bulk_rows": bulk["count"],
        "bulk_seconds": bulk["seconds"],
        "bulk_rows_per_s": bulk["rate"],
        "bulk_postgres_cpu_cores": bulk["postgres_cpu_cores"],
        "bulk_postgres_cpu_us_per_row": _per(bulk["postgres_cpu_s"], bulk["count"]),
        "single_writers": writers,
        "single_transactions": single["count"],
        "single_seconds": single["seconds"],
        "single_transactions_per_s": single["rate"],
        "single_postgres_cpu_cores": single["postgres_cpu_cores"],
        "single_postgres_cpu_us_per_transaction": _per(single["postgres_cpu_s"], single["count"]),
        "single_client_cpu_cores": single["client_cpu_cores"],
    }


def _measured(postmaster: int | None, work: Callable[[], int]) -> dict[str, Any]:
    """Run `work()` (which returns a count): its seconds, rate, PostgreSQL's and this process's CPU."""
    pg0, own0, t0 = cluster_cpu_s(postmaster), self_cpu_s(), time.perf_counter()
    count = work()
    elapsed = time.perf_counter() - t0
    pg = max(0.0, cluster_cpu_s(postmaster) - pg0)  # a backend that ended takes its CPU along
    return {
        "count": count,
        "elapsed": elapsed,
        "seconds": round(elapsed, 2),
        "rate": round(count / elapsed),
        "postgres_cpu_s": pg,
        "postgres_cpu_cores": round(pg / elapsed, 2),
        "client_cpu_cores": round((self_cpu_s() - own0) / elapsed, 2),
    }


def _per(cpu_s: float, count: int) -> float | None:
    """CPU microseconds per item."""
    return round(cpu_s / count * 1e6, 1) if count else None


def _copy_rows_sql(new_id: sql.Composable, where: sql.Composable) -> sql.Composed:
    """`INSERT INTO responses SELECT <new_id>, <every other column> FROM responses WHERE <where>`."""
    names = sql.SQL(", ").join(sql.Identifier(v.name) for v in columns("full"))
    return sql.SQL("INSERT INTO {t} SELECT {new_id}, {names} FROM {t} WHERE {where}").format(
        t=sql.Identifier(TABLE), new_id=new_id, names=names, where=where
    )


def _prepare_copy_rows(conn: Connection) -> None:
    """`EXECUTE copy_rows(first_id, template_ids)`: copies of those rows, ids first_id, first_id + 1, ..."""
    copy = _copy_rows_sql(sql.SQL("$1 + row_number() OVER () - 1"), sql.SQL("id = ANY($2)"))
    with conn.cursor() as cur:
        # Planning an INSERT of 1,119 columns costs about 3 ms, ten times its execution; without
        # statistics, the plan cache would keep planning `id = ANY($2)` for each call.
        cur.execute("SET plan_cache_mode = force_generic_plan")
        cur.execute(sql.SQL("PREPARE copy_rows (bigint, bigint[]) AS {}").format(copy))


def _bulk_copy(conns: Sequence[Connection], threads: int) -> int:
    """Copy every source's rows under fresh ids, `threads` sources at a time; the rows inserted."""
    copy = _copy_rows_sql(sql.SQL("id + {}").format(sql.Literal(MAX_ID)), sql.SQL("true"))

    def one(conn: Connection) -> int:
        with conn.cursor() as cur:
            cur.execute(copy)
            return int(cur.rowcount)

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, conns))


def _single_row_transactions(
    conns: Sequence[Connection], templates: Sequence[list[int]], seconds: float, writers: int
) -> int:
    """Transactions committed by `writers` threads in `seconds`, each one inserted row."""
    stop = threading.Event()
    with ThreadPoolExecutor(writers) as pool:
        try:
            shares = [
                pool.submit(_write_single_rows, conns[i::writers], templates[i::writers], stop)
                for i in range(writers)
            ]
            time.sleep(seconds)
        finally:
            stop.set()
        return sum(f.result() for f in shares)


def _template_ids(conn: Connection, n: int) -> list[int]:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT id FROM {} ORDER BY id LIMIT %s").format(sql.Identifier(TABLE)), (n,))
        return [int(row[0]) for row in cur.fetchall()]


def _write_single_rows(
    conns: Sequence[Connection], templates: Sequence[list[int]], stop: threading.Event
) -> int:
    """One writer: round robin over its connections, one autocommit single-row insert each, until stop."""
    rng = random.Random()  # new ids at random points of the key, as the traffic draws them
    cursors = [conn.cursor() for conn in conns]
    done = 0
    while not stop.is_set():
        cur, ids = cursors[done % len(cursors)], templates[done % len(cursors)]
        cur.execute("EXECUTE copy_rows(%s, %s)", (rng.randrange(1, MAX_ID), [rng.choice(ids)]))
        done += 1
    return done


def static_http(seconds: float) -> dict[str, Any]:
    """Requests/s, p50/p99 and CPU of a fixed 1 KiB response from uvicorn + Starlette as `serve` runs them."""
    command = [sys.executable, str(Path(__file__).resolve()), "--serve-static"]
    log = Path(tempfile.gettempdir()) / f"limits-bench-static-{os.getpid()}.log"
    try:
        with ServeProcess(command, log) as server:
            wait_static(server)
            wrk0 = _children_cpu_s()
            figures = wrk_load(server, server.url, STATIC_CONNECTIONS, seconds)
            wrk_cpu = _children_cpu_s() - wrk0
    finally:
        log.unlink(missing_ok=True)
    figures.pop("postgres_cpu_cores")  # no PostgreSQL in this one
    return {
        "response_bytes": len(STATIC_BODY),
        **figures,
        "wrk_cpu_cores": round(wrk_cpu / figures["seconds"], 2),
    }


def _children_cpu_s() -> float:
    """CPU of this process's waited-for children (wrk, once it has ended)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_static(server: ServeProcess, timeout: float = 60.0) -> None:
    """Until the static server prints its URL and answers it."""
    deadline = time.monotonic() + timeout
    while not server.url:
        found = re.search(r"serving .* at (http://\S+/) ", server.log.read_text(errors="replace"))
        if found:
            server.url = found.group(1)
        elif time.monotonic() > deadline:
            raise TimeoutError(f"static server printed no URL: {server.log.read_text(errors='replace')}")
        else:
            time.sleep(0.05)
    with urllib.request.urlopen(server.url, timeout=timeout) as response:
        if response.read() != STATIC_BODY:
            raise RuntimeError("the static server answered another body")


def serve_static(stack: str = "hardened") -> None:
    """The child of `static_http`: the minimal app on a free port of 127.0.0.1, configured as `serve`
    (`stack` "hardened"), or as uvicorn's own protocol with the one cap `serve` had before issue 14
    ("uvicorn", for clients_bench)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from pisa_pulse.api.connections import server_config
    from pisa_pulse.api.settings import ServerSettings
    from pisa_pulse.cli_serve import listening_socket

    async def static(request: Request) -> Response:
        return Response(STATIC_BODY, media_type="application/json")

    sock = listening_socket("127.0.0.1", 0)
    app = Starlette(routes=[Route("/", static)])
    if stack == "hardened":
        config = server_config(app, ServerSettings())
    else:
        config = uvicorn.Config(
            app,
            http="httptools",
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
            limit_concurrency=1000,
        )
    host, port = sock.getsockname()[:2]
    print(f"serving static bytes at http://{host}:{port}/ (limits bench)", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


def pgoutput_decode(changes: int, rows_per_transaction: int = MAX_BATCH) -> dict[str, Any]:
    """Decoded messages/s and insert changes/s of a backlog of `changes` inserts, SQL and streamed."""
    with scratch_dir() as data_dir:
        config = _up(data_dir, "full", DECODE_SEEDED)
        _settle(config)
        postmaster = postmaster_pid(config, data_dir)
        source = config.sources[0]
        with connected(source.dsn, password=source.password) as conn:
            _create_publications(conn)
            try:
                for slot in SLOTS.values():
                    with conn.cursor() as cur:
                        cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
                t0 = time.perf_counter()
                transactions = _write_backlog(conn, changes, rows_per_transaction)
                write_s = time.perf_counter() - t0
                peeks = [_peek_case(conn, postmaster, sent, changes) for sent in PUBLICATIONS]
                least = changes + 2 * transactions  # an insert each, BEGIN and COMMIT each
                if any(p["messages"] < least for p in peeks):
                    raise RuntimeError(f"decoded {[p['messages'] for p in peeks]} messages, not {least}+")
                streams = [
                    _stream_case(source, postmaster, p["columns"], changes, p["messages"]) for p in peeks
                ]
            finally:
                for slot in SLOTS.values():
                    replication.drop_slot(conn, slot)
    return {
        "schema": "full",
        "changes": changes,
        "transactions": transactions,
        "rows_per_transaction": rows_per_transaction,
        "backlog_write_seconds": round(write_s, 2),
        "cases": peeks + streams,
    }


def _create_publications(conn: Connection) -> None:
    """The pipeline's own publication (the chart columns) and one of every column."""
    replication.ensure_publication(conn, CHART_COLUMNS)
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                sql.Identifier(PUBLICATIONS["all"]), sql.Identifier(TABLE)
            )
        )


def _peek_case(conn: Connection, postmaster: int | None, sent: str, changes: int) -> dict[str, Any]:
    """Decode the backlog with the SQL function, for the publication of `sent` columns."""
    peek = functools.partial(_peek, conn, SLOTS["sql"], PUBLICATIONS[sent])
    return _decode_case("sql", sent, _measured(postmaster, peek), changes)


def _stream_case(
    source: Source, postmaster: int | None, sent: str, changes: int, expected: int
) -> dict[str, Any]:
    """Receive the backlog over the replication protocol, for the publication of `sent` columns."""
    stream = replication.ReplicationStream(source, SLOTS[sent])
    try:  # closed after the measurement, so the walsender's CPU is counted
        receive = functools.partial(_receive, stream, PUBLICATIONS[sent], expected)
        return _decode_case("stream", sent, _measured(postmaster, receive), changes)
    finally:
        stream.close()


def _decode_case(interface: str, sent: str, case: dict[str, Any], changes: int) -> dict[str, Any]:
    return {
        "interface": interface,
        "columns": sent,
        "messages": case["count"],
        "seconds": case["seconds"],
        "messages_per_s": case["rate"],
        "changes_per_s": round(changes / case["elapsed"]),
        "postgres_cpu_cores": case["postgres_cpu_cores"],
        "postgres_cpu_us_per_change": _per(case["postgres_cpu_s"], changes),
        "client_cpu_cores": case["client_cpu_cores"],
    }


def _write_backlog(conn: Connection, changes: int, rows_per_transaction: int) -> int:
    """`changes` inserts copying seeded rows, `rows_per_transaction` a transaction, flushed; transactions."""
    templates = _template_ids(conn, DECODE_SEEDED)
    if len(templates) < rows_per_transaction:
        raise ValueError(
            f"{len(templates)} seeded rows to copy, fewer than {rows_per_transaction} a transaction"
        )
    _prepare_copy_rows(conn)
    transactions = 0
    with conn.cursor() as cur:
        for first in range(0, changes, rows_per_transaction):
            n = min(rows_per_transaction, changes - first)
            rows = [templates[(first + i) % len(templates)] for i in range(n)]  # distinct: n <= templates
            cur.execute("EXECUTE copy_rows(%s, %s)", (MAX_ID + first, rows))
            if cur.rowcount != n:
                raise RuntimeError(f"a backlog transaction inserted {cur.rowcount} rows, not {n}")
            transactions += 1
        # Decoding reads only flushed WAL, and the cluster commits asynchronously: wait until all the
        # WAL inserted so far (not only what is written, which pg_current_wal_lsn() gives) is flushed.
        cur.execute("SELECT pg_current_wal_insert_lsn()")
        written = (cur.fetchone() or ("0/0",))[0]
        while True:
            cur.execute("SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn", (written,))
            if (cur.fetchone() or (False,))[0]:
                return transactions
            time.sleep(0.01)


def _peek(conn: Connection, slot: str, publication: str) -> int:
    """Messages pgoutput decodes from the slot for `publication`, leaving the slot where it was."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes("
            "%s, NULL, NULL, 'proto_version', '1', 'publication_names', %s)",
            (slot, publication),
        )
        return int((cur.fetchone() or (0,))[0])


def _receive(stream: replication.ReplicationStream, publication: str, expected: int) -> int:
    """Start the stream's slot and receive `expected` messages, dropping each one."""
    stream.cur.start_replication(
        slot_name=stream.slot,
        decode=False,
        options={"proto_version": "1", "publication_names": publication},
    )
    received, last = 0, time.monotonic()
    while received < expected:
        if stream.read() is not None:
            received, last = received + 1, time.monotonic()
        elif time.monotonic() - last > IDLE_TIMEOUT_S:
            raise TimeoutError(f"slot {stream.slot}: {received} of {expected} messages, then nothing")
        else:
            select.select([stream], [], [], 1.0)
    return received


def main() -> None:
    """The static server's child process (static_http starts it); the measurements run from run.py."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--serve-static", action="store_true", help="serve the static answer (for static_http)"
    )
    parser.add_argument(
        "--stack",
        choices=("hardened", "uvicorn"),
        default="hardened",
        help="serve's HTTP stack or uvicorn's own",
    )
    args = parser.parse_args()
    if args.serve_static:
        serve_static(args.stack)
    else:
        parser.error("run the limits through bench/run.py --suite limits")


if __name__ == "__main__":
    main()
