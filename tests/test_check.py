"""`pisa-pulse check` against real servers: it finds what would stop logical replication, changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from pisa_pulse.capture.preflight import check_source
from pisa_pulse.cli import main
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.cluster import EmbeddedCluster
from pisa_pulse.sources.config import Source
from pisa_pulse.sources.databases import connected
from pisa_pulse.sources.schema import CHART_COLUMNS
from tests.conftest import BringUp, SharedServer


def _failed(source: Source) -> dict[str, str]:
    """The failed checks of a source: name -> fix."""
    return {c.name: c.fix for c in check_source(source, "pisa_pulse_x", CHART_COLUMNS) if not c.ok}


def _objects(dsn: str) -> tuple[int, int]:
    """Publications and replication slots of this database."""
    with connected(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT (SELECT count(*) FROM pg_publication), "
            "(SELECT count(*) FROM pg_replication_slots WHERE database = current_database())"
        )
        row = cur.fetchone()
    return int(row[0]), int(row[1])


def test_a_ready_source_passes_and_nothing_is_created(
    new_dir: Path, shared: SharedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = shared.up(new_dir, countries="alb,arg", schema="slim")
    assert main(["check", "--data-dir", str(new_dir)]) == 0
    assert "every source is ready" in capsys.readouterr().out
    assert _objects(config.sources[0].dsn) == (0, 0)


def test_each_problem_is_named_with_its_fix(new_dir: Path, bring_up: BringUp) -> None:
    config = bring_up(new_dir, countries="alb,arg", schema="slim")
    alb, arg = config.sources
    with connected(arg.dsn) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE responses DROP COLUMN escs")
        cur.execute("DROP ROLE IF EXISTS reader")
        cur.execute("CREATE ROLE reader LOGIN PASSWORD 'reader-pw'")
        cur.execute("GRANT SELECT ON responses TO reader")
    assert set(_failed(arg)) == {"table", "recommended mode"}  # both modes need the columns
    assert "escs" in next(c.detail for c in check_source(arg, "s", CHART_COLUMNS) if c.name == "table")

    assert config.cluster is not None
    reader = Source("alb", f"postgresql://reader:reader-pw@127.0.0.1:{config.cluster.port}/alb")
    failed = _failed(reader)
    assert set(failed) == {"replication role", "publication", "poll: select", "recommended mode"}
    assert "ALTER ROLE reader REPLICATION" in failed["replication role"]
    assert "GRANT SELECT ON responses TO reader" in failed["poll: select"]
    with connected(alb.dsn) as conn, conn.cursor() as cur:
        cur.execute("GRANT SELECT ON responses TO reader")
    assert set(_failed(reader)) == {"replication role", "publication"}  # polling will do
    assert check_source(reader, "s", CHART_COLUMNS)[-1].detail.startswith("poll")

    with connected(alb.dsn) as conn, conn.cursor() as cur:
        cur.execute("ALTER SYSTEM SET wal_level = replica")
    cluster = EmbeddedCluster(config.cluster, Path(config.cluster.cluster_dir))
    cluster.stop()
    cluster.start()
    try:
        assert "wal_level" in _failed(alb) and "postgresql.conf" in _failed(alb)["wal_level"]
    finally:
        with connected(alb.dsn) as conn, conn.cursor() as cur:
            cur.execute("ALTER SYSTEM RESET wal_level")
        cluster.stop()
        cluster.start()
    assert _failed(alb) == {}


def test_an_unreachable_source_fails_the_connect_check_without_its_password(
    new_dir: Path, bring_up: BringUp
) -> None:
    bring_up(new_dir, countries="alb", schema="slim")
    config = cfg.load(new_dir)
    assert config.cluster is not None
    EmbeddedCluster(config.cluster, Path(config.cluster.cluster_dir)).stop()
    source = Source("alb", f"postgresql://pisa:hunter2@127.0.0.1:{config.cluster.port}/alb")
    [check] = check_source(source, "s", CHART_COLUMNS)
    assert check.name == "connect" and not check.ok and "hunter2" not in check.detail
