"""`sources up/status/down/reset/empty` against real clusters the tests start."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import psycopg2
import pytest

from pisa_pulse.pisa2018 import DEFAULT_COUNTRIES
from pisa_pulse.secret import Secret
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources import lifecycle
from pisa_pulse.sources.cluster import EmbeddedCluster
from pisa_pulse.sources.databases import STORAGE_PARAMETERS
from pisa_pulse.sources.schema import column_names
from tests.conftest import BringUp, SharedServer


def _columns(dsn: str) -> list[tuple[str, str]]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'responses' ORDER BY ordinal_position"
        )
        return cur.fetchall()


def _count(dsn: str, password: Secret | None = None) -> int:
    secret = None if password is None else password.reveal()
    with psycopg2.connect(dsn, password=secret) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM responses")
        return int(cur.fetchone()[0])


def _assert_layout(config: cfg.SourcesConfig, min_columns: int) -> None:
    assert [s.name for s in config.sources] == [c.lower() for c in DEFAULT_COUNTRIES]
    for source in config.sources:
        cols = _columns(source.dsn)
        assert len(cols) >= min_columns
        assert cols[0] == ("id", "bigint")
        assert {t for _, t in cols[1:]} == {"text"}  # values as text, and so no timestamp column
        assert not any("time" in t or "date" in t for _, t in cols)


def test_up_slim_has_20_databases_with_responses(slim20: cfg.SourcesConfig) -> None:
    _assert_layout(slim20, min_columns=100)
    assert all(_count(s.dsn) == 300 for s in slim20.sources)


def test_up_full_width_has_over_1000_columns(new_dir: Path, shared: SharedServer) -> None:
    config = shared.up(new_dir, schema="full", rows_per_country=20)
    _assert_layout(config, min_columns=1001)
    assert [c for c, _ in _columns(config.sources[0].dsn)] == list(column_names("full"))
    # NA for missing, as the course databases stored it
    with psycopg2.connect(config.sources[0].dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM responses WHERE st004d01t IS NULL")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT count(*) FROM responses WHERE misced = 'NA' OR tmins = 'NA'")
        assert cur.fetchone()[0] > 0


def _statistics_and_options(dsn: str) -> tuple[list[str], list[str]]:
    """The columns of `responses` that have statistics, and the table's options."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT attname FROM pg_stats WHERE schemaname = 'public' AND tablename = 'responses'")
        analysed = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT reloptions FROM pg_class WHERE oid = 'responses'::regclass")
        return analysed, sorted(cur.fetchone()[0] or [])


def test_up_keeps_statistics_on_the_key_alone(new_dir: Path, shared: SharedServer) -> None:
    config = shared.up(new_dir, countries="alb", schema="full", rows_per_country=20)
    dsn = config.sources[0].dsn
    options = sorted(f"{k}={v}" for k, v in STORAGE_PARAMETERS.items())
    assert _statistics_and_options(dsn) == (["id"], options)
    # A table of ours from before: `sources up` sets what is missing, and only that.
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE responses RESET (autovacuum_analyze_threshold)")
    assert _statistics_and_options(dsn)[1] == options[1:]
    shared.up(new_dir)
    assert _statistics_and_options(dsn) == (["id"], options)


def test_status_counts_match_the_databases(slim20: cfg.SourcesConfig, scratch: Path) -> None:
    status = lifecycle.status(scratch / "slim20")
    assert status.cluster_running is True
    assert {d.name: d.rows for d in status.databases} == {s.name: _count(s.dsn) for s in slim20.sources}
    assert all(d.bytes and d.bytes > 0 for d in status.databases)


def test_down_then_up_reuses_cluster_and_data(new_dir: Path, bring_up: BringUp) -> None:
    first = bring_up(new_dir, countries="alb,arg", schema="slim", rows_per_country=50)
    assert lifecycle.down(new_dir) is True
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(first.sources[0].dsn)
    assert lifecycle.status(new_dir).cluster_running is False
    again = bring_up(new_dir, rows_per_country=50)  # tops up: already full, adds nothing
    assert again.cluster == first.cluster
    assert [_count(s.dsn) for s in again.sources] == [50, 50]
    bring_up(new_dir, rows_per_country=80)
    assert [_count(s.dsn) for s in again.sources] == [80, 80]


def test_reset_deletes_cluster_and_config(new_dir: Path, bring_up: BringUp) -> None:
    config = bring_up(new_dir, countries="alb", schema="slim")
    assert config.cluster is not None
    lifecycle.reset(new_dir)
    assert not Path(config.cluster.cluster_dir).exists()
    assert not cfg.config_path(new_dir).exists()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(config.sources[0].dsn)


def test_empty_truncates_only_the_named_countries(new_dir: Path, shared: SharedServer) -> None:
    config = shared.up(new_dir, countries="alb,arg,aus", schema="slim", rows_per_country=40)
    assert lifecycle.empty(new_dir, ["ALB"]) == ["alb"]
    assert [_count(s.dsn) for s in config.sources] == [0, 40, 40]
    lifecycle.empty(new_dir, None)
    assert [_count(s.dsn) for s in config.sources] == [0, 0, 0]


def test_dsn_mode_creates_databases_on_an_existing_server(
    slim20: cfg.SourcesConfig, new_dir: Path, bring_up: BringUp
) -> None:
    assert slim20.cluster is not None
    server = EmbeddedCluster(slim20.cluster, Path(slim20.cluster.cluster_dir)).spec
    passfile = Path(slim20.sources[0].dsn.split("passfile=")[1].split("&")[0])
    password = passfile.read_text().strip().rsplit(":", 1)[1]
    dsn = f"postgresql://{server.superuser}:{password}@127.0.0.1:{server.port}/postgres"
    config = bring_up(new_dir, dsn=dsn, countries="fra,ita", schema="slim", rows_per_country=10)
    assert config.cluster is None and [s.name for s in config.sources] == ["fra", "ita"]
    assert [_count(s.dsn, s.password) for s in config.sources] == [10, 10]
    assert password not in config.sources[0].dsn and password not in repr(config)
    assert config.admin_password and config.admin_password.reveal() == password
    assert (cfg.config_path(new_dir).stat().st_mode & 0o777) == 0o600
    lifecycle.reset(new_dir)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_database WHERE datname IN ('fra', 'ita')")
        assert cur.fetchone()[0] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the root case needs root (CI runs as root)")
def test_as_root_the_server_runs_as_an_unprivileged_user(slim20: cfg.SourcesConfig) -> None:
    assert slim20.cluster is not None and slim20.cluster.run_as == "postgres"
    pid = int((Path(slim20.cluster.cluster_dir) / "data" / "postmaster.pid").read_text().split()[0])
    owner = os.stat(f"/proc/{pid}").st_uid
    assert owner == pwd.getpwnam("postgres").pw_uid != 0
