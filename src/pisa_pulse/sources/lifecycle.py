"""What `pisa-pulse sources up|down|status|reset|empty` do, with no terminal I/O.

`up` is idempotent: it starts (or reuses) the embedded cluster, or uses the server given with
`--dsn`; creates the missing country databases; tops each up to `--rows-per-country` students; and
writes the config that every later command reads. Run again, it changes only what is missing.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pisa_pulse.errors import PisaPulseError
from pisa_pulse.pisa2018 import Country, select_countries
from pisa_pulse.secret import Secret, split_password
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources import databases, seed
from pisa_pulse.sources.cluster import EmbeddedCluster, free_port, port_in_use
from pisa_pulse.sources.config import Source, SourcesConfig
from pisa_pulse.sources.control import STATE_FILE, send
from pisa_pulse.sources.schema import SchemaName

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpRequest:
    """The options of `sources up`; None means "what the data dir has, else the default"."""

    data_dir: Path
    countries: str | None = None
    schema: SchemaName | None = None
    port: int | None = None
    dsn: str | None = None
    rows_per_country: int = 0
    seed: int | None = None
    messy: float = 0.01
    run_as: str | None = None
    workers: int | None = None
    db_prefix: str | None = None  # database names are this + the country code (t1_alb); default none


@dataclass(frozen=True)
class Status:
    """What `sources status` shows."""

    config: SourcesConfig
    cluster_running: bool | None  # None for a server given with --dsn
    databases: list[databases.DatabaseState]


def up(
    request: UpRequest,
    on_plan: Callable[[int], None] = lambda rows: None,
    on_rows: Callable[[str, int], None] = lambda code, rows: None,
) -> SourcesConfig:
    """Bring the sources up; `on_plan(total rows to seed)` then `on_rows` report seeding progress."""
    if request.rows_per_country < 0:
        raise PisaPulseError(f"--rows-per-country {request.rows_per_country} is negative", "pass 0 or more")
    if not 0 <= request.messy <= 1:
        raise PisaPulseError(f"--messy {request.messy} is not a share", "pass a number between 0 and 1")
    if request.db_prefix is not None and not _DB_PREFIX.fullmatch(request.db_prefix):
        raise PisaPulseError(
            f"--db-prefix {request.db_prefix!r} is not a database-name prefix",
            "use up to 40 lower-case letters, digits and underscores, not starting with a digit (t1_)",
        )
    data_dir = cfg.ensure_data_dir(request.data_dir)
    existing = cfg.load_optional(data_dir)
    chosen = _countries(request.countries, existing)
    schema: SchemaName = request.schema or (existing.schema if existing else "full")
    seed_value = request.seed if request.seed is not None else (existing.seed if existing else 42)
    prefix = _db_prefix(request.db_prefix, existing, data_dir)
    cluster, admin_dsn, password = _server(request, data_dir, existing)
    if cluster is not None:
        cfg.save(data_dir, _config(schema, seed_value, existing, [], cluster, admin_dsn, password))
    for country in chosen:
        databases.ensure(admin_dsn, prefix + country.database, schema, password)
    dsns = [cfg.with_database(admin_dsn, prefix + c.database) for c in chosen]
    sources = [Source(c.database, dsn, password=password) for c, dsn in zip(chosen, dsns)]
    config = _config(schema, seed_value, existing, sources, cluster, admin_dsn, password)
    cfg.save(data_dir, config)
    if request.rows_per_country:
        counts = [(c, s, databases.state(s).rows or 0) for c, s in zip(chosen, sources)]
        chunks = seed.plan(counts, schema, seed_value, request.messy, request.rows_per_country)
        on_plan(sum(ch.rows for ch in chunks))
        seed.seed_all(chunks, on_rows, request.workers)
        for source in sources:
            databases.analyze_key(source)
    return config


def _countries(spec: str | None, existing: SourcesConfig | None) -> list[Country]:
    if spec is None and existing is not None:
        return select_countries([s.name for s in existing.sources])
    return select_countries(spec)


_DB_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,39}")


def _db_prefix(requested: str | None, existing: SourcesConfig | None, data_dir: Path) -> str:
    """The database-name prefix: the one asked for, else the one the data dir's sources have."""
    used = {cfg.database_of(s.dsn).removesuffix(s.name) for s in existing.sources} if existing else set()
    if not used:
        return requested or ""
    if len(used) > 1 or requested not in (None, *used):
        have = ", ".join(repr(u) if u else "none" for u in sorted(used))
        raise PisaPulseError(
            f"the sources of {data_dir} have database prefix {have}"
            + ("" if requested is None else f", not {requested!r}"),
            "omit --db-prefix to keep theirs, or pass another --data-dir",
        )
    return used.pop()


def _server(
    request: UpRequest, data_dir: Path, existing: SourcesConfig | None
) -> tuple[EmbeddedCluster | None, str, Secret | None]:
    """The embedded cluster (started) and its admin DSN, or None and the given server's DSN; and the
    server's password (taken out of the DSN), if any."""
    if request.dsn is not None:
        if existing is not None and existing.cluster is not None:
            raise PisaPulseError(
                f"{data_dir} holds an embedded cluster",
                "pass another --data-dir for sources on an existing server",
            )
        dsn, password = split_password(request.dsn)
        databases.connect(dsn, password=password).close()  # fail early and clearly if it is unreachable
        return None, dsn, password
    if existing is not None and existing.cluster is None and existing.admin_dsn:
        return None, existing.admin_dsn, existing.admin_password
    if existing is not None and existing.cluster is not None:
        cluster = EmbeddedCluster(existing.cluster, data_dir)
        if not cluster.running():
            port = request.port or existing.cluster.port
            if request.port is None and port_in_use(port):
                port = free_port()  # the old one was taken meanwhile; the config records the new one
            if port != existing.cluster.port:
                cluster = EmbeddedCluster(dataclasses.replace(existing.cluster, port=port), data_dir)
                cluster.write_settings()
            cluster.start()
        elif request.port is not None and request.port != existing.cluster.port:
            raise PisaPulseError(
                f"the cluster of {data_dir} already runs on port {existing.cluster.port}",
                "omit --port, or run `pisa-pulse sources down` first to move it",
            )
    else:
        cluster = EmbeddedCluster.plan(data_dir, request.port, request.run_as)
        if not cluster.exists():
            log.info("initialising cluster dir=%s", cluster.spec.cluster_dir)
            cluster.init()
        cluster.start()
    return cluster, cluster.dsn(), None


def _config(
    schema: SchemaName,
    seed_value: int,
    existing: SourcesConfig | None,
    sources: list[Source],
    cluster: EmbeddedCluster | None,
    admin_dsn: str,
    admin_password: Secret | None,
) -> SourcesConfig:
    merged = {s.name: s for s in (existing.sources if existing else ())}
    merged.update({s.name: s for s in sources})
    return SourcesConfig(
        schema=schema,
        seed=seed_value,
        sources=tuple(merged.values()),
        cluster=cluster.spec if cluster else None,
        admin_dsn=None if cluster else admin_dsn,
        admin_password=None if cluster else admin_password,
    )


def _cluster(data_dir: Path, config: SourcesConfig) -> EmbeddedCluster | None:
    return EmbeddedCluster(config.cluster, data_dir) if config.cluster else None


def down(data_dir: Path) -> bool:
    """Stop the embedded cluster; False when the sources are on a server we do not own."""
    config = cfg.load(data_dir)
    cluster = _cluster(data_dir, config)
    if cluster is None:
        return False
    cluster.stop()
    return True


def status(data_dir: Path) -> Status:
    """The cluster's state and every country database's rows and size."""
    config = cfg.load(data_dir)
    cluster = _cluster(data_dir, config)
    running = cluster.running() if cluster else None
    states = [
        databases.state(s)
        if running is not False
        else databases.DatabaseState(s.name, None, None, "cluster is stopped")
        for s in config.sources
    ]
    return Status(config, running, states)


def _refuse_while_traffic(data_dir: Path) -> None:
    if (data_dir / STATE_FILE).exists():
        try:
            send(data_dir, "status")
        except PisaPulseError:
            return  # a stale file: no traffic answers
        raise PisaPulseError(
            f"traffic is running on the sources of {data_dir}", "stop it (Ctrl+C) before resetting"
        )


def reset(data_dir: Path) -> None:
    """Delete the sources: the embedded cluster's files, or the country databases we created."""
    data_dir = data_dir.expanduser().absolute()
    config = cfg.load(data_dir)
    _refuse_while_traffic(data_dir)
    cluster = _cluster(data_dir, config)
    if cluster is not None:
        cluster.remove()
    elif config.admin_dsn:
        for s in config.sources:
            databases.drop(config.admin_dsn, cfg.database_of(s.dsn), config.admin_password)
    cfg.config_path(data_dir).unlink()


def empty(data_dir: Path, names: list[str] | None) -> list[str]:
    """TRUNCATE `responses` of the named sources (all when `names` is None); returns their names."""
    config = cfg.load(data_dir)
    chosen = list(config.sources) if names is None else [config.source(n) for n in names]
    for s in chosen:
        databases.empty(s)
    return [s.name for s in chosen]
