"""`pisa-pulse sync --once` on real sources, replicated and polled: each run leaves the history store
equal to the independent oracle, through traffic with corrections and withdrawals; a run with no
new commits writes nothing; a state dir in use is refused with one line; `--drop-slots` drops the
slots a replicated run keeps."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pisa_pulse.api import charts
from pisa_pulse.capture.replicated import slot_name
from pisa_pulse.history.query import chart_at
from pisa_pulse.history.store import Store
from pisa_pulse.history.sync import exclusive
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.databases import connected
from tests import independent_oracle as oracle
from tests.conftest import SharedServer
from tests.test_independent_oracle import traffic


def sync(settings: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pisa_pulse", "sync", *more, "--config", str(settings)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def written(done: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    """Minutes written and sources unchanged, from the summary line."""
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"history: (\d+) minutes written, (\d+) unchanged", done.stdout)
    assert found, done.stdout
    return int(found.group(1)), int(found.group(2))


def store_equals_the_oracle(state: Path, config: cfg.SourcesConfig) -> None:
    """The charts of the last minute a DuckDB store in `state` holds equal the independent oracle's."""
    totals = oracle.all_totals({s.name.upper(): s.dsn for s in config.sources})
    expected = oracle.chart_bodies(totals, time.time(), {}, None)
    store = Store.open("duckdb", state)
    try:
        minute = max(m for s in config.sources if (m := store.last_minute(s.name)) is not None)
        for name in (*oracle.PER_COUNTRY, "submissions"):
            assert chart_at(store, charts.BY_NAME[name], minute, {}) == expected[name], name
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["replication", "poll"])
def test_each_run_leaves_the_store_equal_to_the_oracle_and_a_quiet_run_writes_nothing(
    mode: str, shared: SharedServer, new_dir: Path, tmp_path: Path
) -> None:
    config = shared.up(new_dir, countries="alb,arg", schema="slim", rows_per_country=120, messy=0.05)
    state = tmp_path / "state"
    settings = tmp_path / "sync.toml"
    settings.write_text(
        cfg.config_path(new_dir).read_text()
        + f'\n[capture]\nmode = "{mode}"\nslot_prefix = "{shared.slot_prefix}"\nstate_dir = "{state}"\n'
    )

    assert written(sync(settings, "--once")) == (2, 0)  # a fresh copy of each source
    store_equals_the_oracle(state, config)
    traffic(config, 200)  # corrections and withdrawals
    assert written(sync(settings, "--once"))[0] == 2  # from the checkpoint
    store_equals_the_oracle(state, config)
    assert written(sync(settings, "--once")) == (0, 2)  # no new commits: nothing written
    kept = settings.read_text()  # arg removed from the settings: from the next run on it shows nothing
    settings.write_text(re.sub(r'\[\[sources\]\]\nname = "arg"\n(?:\w+ = [^\n]*\n)*', "", kept))
    assert written(sync(settings, "--once")) == (1, 1)  # arg's minute with no countries
    store = Store.open("duckdb", state)
    try:
        assert store.shown_sources() == {"alb"}
    finally:
        store.close()
    assert written(sync(settings, "--once")) == (0, 1)
    settings.write_text(kept)
    with exclusive(state, "this test"):
        refused = sync(settings, "--once")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "is in use by this test" in refused.stderr
    if mode == "replication":
        slots = {slot_name(shared.slot_prefix, s) for s in config.sources}
        held = "SELECT slot_name FROM pg_replication_slots WHERE slot_name = ANY(%s)"

        def present() -> set[str]:
            with connected(shared.admin_dsn) as conn, conn.cursor() as cur:
                cur.execute(held, (list(slots),))
                return {row[0] for row in cur.fetchall()}

        assert present() == slots  # kept between runs
        dropped = sync(settings, "--drop-slots")
        assert dropped.returncode == 0 and "2 slots dropped" in dropped.stdout
        assert present() == set()
