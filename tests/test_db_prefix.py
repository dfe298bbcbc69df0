"""`sources up --db-prefix`: several sets of sources on one server, as the shared test cluster uses it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pisa_pulse.cli import main
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources import databases, lifecycle
from tests.conftest import SharedServer


def _databases(share: SharedServer) -> list[str]:
    with databases.connected(share.admin_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1", (share.prefix,)
        )
        return [row[0] for row in cur.fetchall()]


def test_the_prefix_names_the_databases_not_the_sources(
    new_dir: Path, shared: SharedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sources", "up", "--data-dir", str(new_dir), "--dsn", shared.admin_dsn, "--schema", "slim"]
    assert (
        main([*argv, "--countries", "alb,arg", "--db-prefix", shared.prefix, "--rows-per-country", "5"]) == 0
    )
    config = cfg.load(new_dir)
    assert [s.name for s in config.sources] == ["alb", "arg"]  # the country codes, as the capture needs
    assert [cfg.database_of(s.dsn) for s in config.sources] == [f"{shared.prefix}alb", f"{shared.prefix}arg"]
    assert _databases(shared) == [f"{shared.prefix}alb", f"{shared.prefix}arg"]
    assert {d.name: d.rows for d in lifecycle.status(new_dir).databases} == {"alb": 5, "arg": 5}

    # A later `sources up` of the same data dir keeps its prefix; another one is refused.
    capsys.readouterr()
    assert main(["sources", "up", "--data-dir", str(new_dir), "--countries", "alb,arg,aus"]) == 0
    assert _databases(shared) == [f"{shared.prefix}{c}" for c in ("alb", "arg", "aus")]
    with pytest.raises(PisaPulseError, match="database prefix"):
        lifecycle.up(lifecycle.UpRequest(data_dir=new_dir, db_prefix="other_"))

    lifecycle.reset(new_dir)  # drops the prefixed databases, and only those
    assert _databases(shared) == []


@pytest.mark.parametrize("prefix", ["T1_", "1t_", "t-1", "t1_; drop", "x" * 41])
def test_a_prefix_that_is_not_part_of_a_name_is_refused(tmp_path: Path, prefix: str) -> None:
    new_dir = tmp_path / "data"
    with pytest.raises(PisaPulseError, match="--db-prefix"):
        lifecycle.up(
            lifecycle.UpRequest(data_dir=new_dir, dsn="postgresql://nobody@127.0.0.1:1/x", db_prefix=prefix)
        )
    assert not new_dir.exists()  # refused before anything was made
