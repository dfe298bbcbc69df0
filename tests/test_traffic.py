"""Live traffic against real databases: random ids, shares of corrections, steering, clean stop."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest

from pisa_pulse.api.traffic import TOKEN_FILE
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources import control
from pisa_pulse.sources.traffic import Traffic
from tests.conftest import BringUp, SharedServer, serving, stop, wait_for
from tests.test_pipeline import running, traffic_made


def _total(config: cfg.SourcesConfig) -> int:
    total = 0
    for s in config.sources:
        with psycopg2.connect(s.dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM responses")
            total += cur.fetchone()[0]
    return total


def _tuple_stats(config: cfg.SourcesConfig) -> tuple[int, int, int]:
    """Rows inserted, updated, deleted as PostgreSQL's own statistics count them."""
    ins = upd = dele = 0
    for s in config.sources:
        with psycopg2.connect(s.dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_stat_force_next_flush()")
            cur.execute(
                "SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE relname = 'responses'"
            )
            i, u, d = cur.fetchone()
            ins, upd, dele = ins + i, upd + u, dele + d
    return ins, upd, dele


def test_ids_are_random_not_increasing(new_dir: Path, shared: SharedServer) -> None:
    config = shared.up(new_dir, countries="alb,arg", schema="slim")
    traffic = Traffic(config, rate=400, seed=7)
    with running(traffic.run):
        traffic_made(traffic, 600)
    for s in config.sources:
        with psycopg2.connect(s.dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT id FROM responses ORDER BY ctid")  # heap order = insertion order here
            ids = [r[0] for r in cur.fetchall()]
        assert len(ids) > 50
        drops = sum(b < a for a, b in itertools.pairwise(ids))
        assert 0.3 < drops / (len(ids) - 1) < 0.7  # about half: random, neither sorted nor reversed


def test_a_second_run_with_the_same_seed_still_inserts(new_dir: Path, shared: SharedServer) -> None:
    config = shared.up(new_dir, countries="alb", schema="slim")
    inserted = []
    for _ in range(2):
        traffic = Traffic(config, rate=300, seed=11)
        with running(traffic.run):
            traffic_made(traffic, 300)  # inserts that collided would not count: this would time out
        inserted.append(traffic.counts.inserted)
    assert min(inserted) > 100 and _total(config) == sum(inserted)


def test_updates_and_deletes_at_the_requested_shares(new_dir: Path, shared: SharedServer) -> None:
    config = shared.up(new_dir, countries="alb,arg,aus,aut,bel", schema="full", rows_per_country=200)
    before = _tuple_stats(config)
    traffic = Traffic(config, rate=1500, updates=0.2, deletes=0.1, seed=11)
    with running(traffic.run):
        # Shares over a count of operations, whatever the machine's pace: with 1,500 the tolerances
        # below are about 4 standard deviations of the shares drawn.
        traffic_made(traffic, 1500, timeout=120)
    counts = traffic.counts

    reported = (counts.inserted, counts.updated, counts.deleted)

    def counted() -> tuple[int, ...]:
        return tuple(a - b for a, b in zip(_tuple_stats(config), before, strict=True))

    def agreeing() -> tuple[int, ...] | None:
        found = counted()
        return found if found == reported else None

    # PostgreSQL's statistics count what the traffic reports, once its backends have flushed them.
    ins, upd, dele = wait_for(
        agreeing,
        what="PostgreSQL's row statistics equal to the traffic's counts",
        detail=lambda: (counted(), reported),
    )
    total = ins + upd + dele
    assert total >= 1500
    assert abs(upd / total - 0.2) < 0.04
    assert abs(dele / total - 0.1) < 0.03
    assert _total(config) == 5 * 200 + ins - dele


@contextmanager
def traffic_process(data_dir: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`pisa-pulse traffic` once its control endpoint is up, until the block ends; then `stop` (a no-op
    when the block has ended it)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pisa_pulse", "traffic", "--data-dir", str(data_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def up() -> bool:
            assert proc.poll() is None, proc.communicate()
            return (data_dir / control.STATE_FILE).exists()

        wait_for(up, what="the traffic's control endpoint")
        yield proc
    finally:
        stop(proc)


def _rate_of(config: cfg.SourcesConfig, rows: int) -> float:
    """Rows per second while the sources gain `rows` more rows: a window of a count rather than of a
    time, as long on a slow machine as its pace needs."""
    start, since = _total(config), time.monotonic()

    def reached() -> int | None:
        total = _total(config)
        return total if total >= start + rows else None

    gained = wait_for(reached, timeout=60, what=f"{rows} more rows in the sources") - start
    return gained / (time.monotonic() - since)


def _rows_over(config: cfg.SourcesConfig, seconds: float) -> int:
    """Rows the sources gained over `seconds` (a window that is not a wait: nothing may happen in it)."""
    start = _total(config)
    time.sleep(seconds)
    return _total(config) - start


def test_rate_change_pause_resume_while_running(new_dir: Path, shared: SharedServer) -> None:
    config = shared.up(new_dir, countries="alb,arg,aus", schema="slim")
    with traffic_process(new_dir, "--rate", "40") as proc:
        slow = _rate_of(config, 100)  # about 2.5 s
        control.send(new_dir, "rate", {"rate": 400})
        fast = _rate_of(config, 1200)  # about 3 s
        assert 20 < slow < 60 and 300 < fast < 500, (slow, fast)
        control.send(new_dir, "pause")
        # A transaction under way when the pause came may still land; then nothing does.
        wait_for(lambda: _rows_over(config, 1.0) == 0, what="a second without writes once paused")
        assert _rows_over(config, 1.0) == 0
        control.send(new_dir, "resume")
        assert _rate_of(config, 400) > 200
        status = control.send(new_dir, "status")
        assert status["rate"] == 400 and status["paused"] is False
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def _post_rate(port: int, token: str) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/rate",
        data=b'{"rate": 10000}',
        headers={"Authorization": f"Bearer {token}"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=5).close()


def test_control_endpoint_needs_the_token(new_dir: Path, shared: SharedServer) -> None:
    shared.up(new_dir, countries="alb", schema="slim")
    with traffic_process(new_dir, "--rate", "5"):
        state = json.loads((new_dir / control.STATE_FILE).read_text())
        assert (new_dir / control.STATE_FILE).stat().st_mode & 0o777 == 0o600
        for token in ("", "wrong", state["token"][:-1]):
            with pytest.raises(urllib.error.HTTPError) as refused:
                _post_rate(state["port"], token)
            assert refused.value.code == 401
        assert control.send(new_dir, "status")["rate"] == 5
        _post_rate(state["port"], state["token"])
        assert control.send(new_dir, "status")["rate"] == 10000
    # `stop` sent SIGTERM: the traffic has removed its state file.
    assert not (new_dir / control.STATE_FILE).exists()


def test_ctrl_c_stops_cleanly_with_nothing_half_written(new_dir: Path, shared: SharedServer) -> None:
    config = shared.up(new_dir, countries="alb,arg", schema="full")
    with traffic_process(new_dir, "--rate", "300") as proc:
        wait_for(lambda: _total(config) >= 300, what="300 rows written")
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    inserted = int(stdout.rsplit("inserted ", 1)[1].split(",", 1)[0])
    assert inserted > 100
    assert _total(config) == inserted  # every reported transaction landed whole, no partial one
    assert not (new_dir / control.STATE_FILE).exists()
    assert os.path.exists(cfg.config_path(new_dir))


def test_the_achieved_rate_is_over_the_last_ten_seconds(new_dir: Path, shared: SharedServer) -> None:
    config = shared.up(new_dir, countries="alb,arg", schema="slim")
    traffic = Traffic(config, rate=300, seed=3)
    stop = threading.Event()
    writer = threading.Thread(target=traffic.run, args=(stop,))
    writer.start()
    try:
        # These sleeps are the spans under test, timed by the clock the rate uses: not waits for anything.
        time.sleep(3.0)
        writing = traffic.achieved_rate()  # since the start: the window is not full yet
        assert writing > 150
        traffic.pause()
        time.sleep(2.0)
        # 3 s of writing, then 2 s paused: the last ten seconds (all five of them) average 3/5 of the
        # rate; a rate over the last instants would say 0 and jump back at once.
        status = traffic.status()
        assert 0.5 * writing < status["achieved_rate"] < 0.7 * writing and status["achieved_over_s"] == 10
    finally:
        stop.set()
        writer.join()


def test_the_control_endpoint_empties_only_its_sources(new_dir: Path, bring_up: BringUp) -> None:
    # Its own embedded cluster: `empty` truncates only those (a --dsn server's are refused).
    config = bring_up(new_dir, countries="alb,arg", schema="slim", rows_per_country=30)
    with control.ControlEndpoint(Traffic(config, rate=0), new_dir):
        assert control.running_pid(new_dir) == os.getpid()
        assert control.send(new_dir, "empty", {"country": "ALB"}) == {"emptied": ["alb"]}
        for body in ({"country": "fra"}, {"country": 7}, {}):
            with pytest.raises(control.TrafficRefused):
                control.send(new_dir, "empty", body)
    assert control.running_pid(new_dir) is None
    counts = []
    for s in config.sources:
        with psycopg2.connect(s.dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM responses")
            counts.append(cur.fetchone()[0])
    assert counts == [0, 30]
    with pytest.raises(PisaPulseError, match="no traffic is running"):
        control.send(new_dir, "empty", {"country": "arg"})


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return found


def test_demo_writes_its_traffic_from_a_child_process(scratch: Path) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="demo-child-", dir=scratch)) / "data"
    args = ("--data-dir", str(data_dir), "--countries", "alb", "--schema", "slim", "--rows-per-country", "10")
    with serving(*args, "--rate", "50", command="demo") as live:
        child = control.running_pid(data_dir)
        assert child is not None and child != live.process.pid and child in _children(live.process.pid)
        token = (data_dir / TOKEN_FILE).read_text().strip()
        request = urllib.request.Request(
            live.url + "api/traffic/empty",
            data=b'{"country": "alb"}',
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read()) == {"emptied": ["alb"]}
        wait_for(lambda: control.send(data_dir, "status")["inserted"] > 0, what="the demo's traffic writing")
    assert control.running_pid(data_dir) is None  # stopped with the server, and its state file gone
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
