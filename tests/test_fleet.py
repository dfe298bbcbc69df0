"""Capture workers and API replicas on NATS JetStream, through the loss of any one (issue 15).

One fleet for the whole module, as `make demo`'s users would run it on three machines, here on
loopback: the session's three-node JetStream cluster, three `pisa-pulse worker` processes, two
`pisa-pulse api` replicas, six sources on the shared PostgreSQL cluster (two of them polled). Each
case runs traffic with corrections and withdrawals, injects one fault, and ends with every chart
equal to the independent oracle (tests/independent_oracle.py) on both replicas, with identical
bodies and ETags on both; the over-time chart is compared with what it was before the fault
(traffic paused), since the moved checkpoints keep each row's arrival time, except in the case that
deletes a checkpoint and sees the fresh copy put that source's rows at the initial copy.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.cluster import EmbeddedCluster
from tests import independent_oracle as oracle
from tests.conftest import share_of, stop, wait_for
from tests.nats_cluster import NatsCluster
from tests.test_independent_oracle import assert_api_equals, traffic

pytestmark = pytest.mark.server

COUNTRIES = "alb,arg,aus,aut,bel,bra"
POLLED = {"aut", "bra"}
ROWS = 150
LEASE_S = 3
READY = {"streaming", "polling"}
WAIT = 120.0  # a failover on a loaded 2-core machine: leases, elections, restores


@dataclass
class Replica:
    process: subprocess.Popen[str]
    url: str


@dataclass
class Fleet:
    """The module's processes and what the cases need to check them."""

    nats: NatsCluster
    config: cfg.SourcesConfig
    config_path: Path
    sources: dict[str, str]  # CODE -> DSN, for the oracle
    initial: dict[str, list[int]]  # the ids seeded before capture started
    prefix: str
    logs: Path
    replica_settings: Path  # the sources' settings with a PostgreSQL history store
    history_dsn: str
    workers: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    replicas: dict[str, Replica] = field(default_factory=dict)

    def nats_options(self) -> list[str]:
        return ["--nats", ",".join(self.nats.urls), "--nats-prefix", self.prefix]

    def start_worker(self, name: str) -> None:
        log = (self.logs / f"worker-{name}.log").open("a")
        self.workers[name] = subprocess.Popen(
            [
                sys.executable, "-m", "pisa_pulse", "--log-level", "info", "worker", *self.nats_options(),
                "--config", str(self.config_path), "--name", name, "--lease", str(LEASE_S),
            ],
            stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def start_replica(self, name: str) -> None:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "pisa_pulse", "--log-level", "info", "api", *self.nats_options(),
                "--config", str(self.replica_settings), "--port", "0",
            ],
            stdout=subprocess.PIPE, stderr=(self.logs / f"api-{name}.log").open("a"), text=True,
        )  # fmt: skip
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        assert found, f"api {name} did not say where it serves: {line!r}"
        self.replicas[name] = Replica(process, found.group(1))

    def statuses(self, replica: str = "r1") -> list[dict[str, Any]]:
        """/api/status's sources at one replica (empty while it cannot answer)."""
        try:
            return list(get_json(self.replicas[replica].url + "api/status")["sources"])
        except OSError:
            return []

    def owners(self) -> dict[str, str]:
        """Source -> the worker reporting it streaming or polling (at replica r1)."""
        return {s["source"]: s["worker"] for s in self.statuses() if s["state"] in READY}

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text().splitlines()[-15:])
            for p in sorted(self.logs.glob("*.log"))
        )


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def charts_and_etags(url: str) -> dict[str, tuple[bytes, str]]:
    """Every chart's exact body and ETag at one replica."""
    result = {}
    for name in oracle.CHART_NAMES:
        with urllib.request.urlopen(f"{url}api/charts/{name}", timeout=10) as response:
            result[name] = (response.read(), response.headers["ETag"])
    return result


def over_time(url: str) -> dict[str, int]:
    """The over-time chart as hour label -> rows."""
    body = get_json(url + "api/charts/submissions-over-time")
    return {p["x"]: p["y"] for p in body["datasets"][0]["data"]}


@pytest.fixture(scope="module")
def fleet(
    nats_cluster: NatsCluster, shared_cluster: EmbeddedCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    from tests.conftest import _bring_up  # the shared cluster's `sources up`, in-process

    root = tmp_path_factory.mktemp("fleet")
    with share_of(shared_cluster) as shared:
        config = _bring_up(
            root / "data", dsn=shared.admin_dsn, db_prefix=shared.prefix, countries=COUNTRIES,
            schema="slim", rows_per_country=ROWS, messy=0.05,
        )  # fmt: skip
        config_path = root / "data" / "sources.toml"
        text = config_path.read_text()
        for name in POLLED:
            text = re.sub(
                rf'(name = "{name}"\ndsn = "[^"]*"\n)mode = "replication"', r'\1mode = "poll"', text
            )
        config_path.write_text(
            text + f'\n[capture]\nslot_prefix = "{shared.slot_prefix}"\npoll_interval = 0.25\n'
            "reconcile_interval = 1\n"
        )
        sources = {s.name.upper(): s.dsn for s in config.sources}
        logs = root / "logs"
        logs.mkdir()
        history_dsn = shared.create_database("fleet_history")
        replica_settings = root / "replica.toml"
        replica_settings.write_text(config_path.read_text() + f'\n[history]\nstore = "{history_dsn}"\n')
        made = Fleet(
            nats_cluster, config, config_path, sources,
            {code: oracle.ids_of(dsn) for code, dsn in sources.items()},
            f"f{uuid.uuid4().hex[:8]}", logs, replica_settings, history_dsn,
        )  # fmt: skip
        try:
            for name in ("w1", "w2", "w3"):
                made.start_worker(name)
            for name in ("r1", "r2"):
                made.start_replica(name)
            wait_for(
                lambda: len(made.owners()) == 6 and set(made.owners().values()) == {"w1", "w2", "w3"},
                WAIT,
                what="six sources captured, two by each worker",
                detail=lambda: made.statuses(),
            )
            yield made
        finally:
            for replica in made.replicas.values():
                stop(replica.process)
            for worker in made.workers.values():
                with contextlib.suppress(ProcessLookupError):
                    worker.send_signal(signal.SIGCONT)
                stop(worker)


# -- what every case ends with --------------------------------------------------------------------------


def expected_new_rows(fleet: Fleet, copied_afresh: set[str] = frozenset()) -> int:  # type: ignore[assignment]
    """Rows that arrived after the initial copy (the over-time chart's total): none of a source copied
    afresh since."""
    return sum(
        oracle.rows_not_in(dsn, fleet.initial[code])
        for code, dsn in fleet.sources.items()
        if code.lower() not in copied_afresh
    )


def settle(
    fleet: Fleet, stopped: float, before: dict[str, int] | None = None, new_rows: int | None = None
) -> None:
    """Both replicas equal the oracle (the over-time chart equal to `before`, where given, else by its
    total), then give identical bodies and ETags."""
    totals = oracle.all_totals(fleet.sources)
    rows = expected_new_rows(fleet) if new_rows is None else new_rows
    for name, replica in fleet.replicas.items():

        def expected(asked: str | None, now: float) -> dict[str, Any]:
            bodies = oracle.chart_bodies(
                totals, now, {int(now // 3600): rows}, asked.split(",") if asked else None
            )
            if before is not None:
                bodies["submissions-over-time"]["datasets"][0]["data"] = [
                    {"x": x, "y": before.get(x, 0)}
                    for x in (p["x"] for p in bodies["submissions-over-time"]["datasets"][0]["data"])
                ]
            return bodies

        assert_api_equals(
            replica.url, "replication", stopped, expected, by_total=before is None, timeout=WAIT,
            explain=lambda r=name: f"replica {r}; statuses {fleet.statuses(r)}\n{fleet.log_tail()}",
        )  # fmt: skip
    wait_for(
        lambda: (
            len({json.dumps(charts_and_etags(r.url), default=repr) for r in fleet.replicas.values()}) == 1
        ),
        30,
        what="identical bodies and ETags on both replicas",
    )


def paused_traffic(fleet: Fleet, operations: int = 200) -> float:
    """Traffic until `operations`, then paused; returns when it stopped."""
    traffic(fleet.config, operations)
    return time.time()


# -- the cases ------------------------------------------------------------------------------------------


def test_replicas_give_what_serve_gives_byte_for_byte(fleet: Fleet, tmp_path: Path) -> None:
    # Before any traffic: every row is in the initial copy, in serve as in the fleet.
    settle(fleet, time.time())
    settings = tmp_path / "serve.toml"
    settings.write_text(fleet.config_path.read_text().replace('slot_prefix = "', 'slot_prefix = "serve_'))
    with subprocess.Popen(
        [sys.executable, "-m", "pisa_pulse", "serve", "--config", str(settings), "--port", "0"],
        stdout=subprocess.PIPE, text=True,
    ) as serve:  # fmt: skip
        try:
            assert serve.stdout is not None
            url = re.search(r"at (http://127\.0\.0\.1:\d+/)", serve.stdout.readline())
            assert url
            wait_for(
                lambda: (
                    [s["state"] in READY for s in get_json(url.group(1) + "api/status")["sources"]]
                    == [True] * 6
                ),
                WAIT,
                what="serve capturing every source",
            )
            wait_for(
                lambda: charts_and_etags(url.group(1)) == charts_and_etags(fleet.replicas["r1"].url),
                30,
                what="serve's bodies and ETags equal to the replica's",
                detail=lambda: (charts_and_etags(url.group(1)), charts_and_etags(fleet.replicas["r1"].url)),
            )
        finally:
            assert stop(serve) == 0


def test_sigkill_of_a_worker_moves_its_sources_with_their_state(fleet: Fleet) -> None:
    settle(fleet, paused_traffic(fleet))
    before = over_time(fleet.replicas["r1"].url)
    victim = "w1"
    owned = {s for s, w in fleet.owners().items() if w == victim}
    assert owned
    fleet.workers[victim].kill()
    fleet.workers[victim].wait()
    wait_for(
        lambda: len(fleet.owners()) == 6 and not set(fleet.owners().values()) & {victim},
        WAIT,
        what=f"{sorted(owned)} streaming again under another worker",
        detail=fleet.statuses,
    )
    resumed = {s["source"]: s["resumed"]["from"] for s in fleet.statuses() if s["source"] in owned}
    assert set(resumed.values()) == {"checkpoint"}, resumed
    settle(fleet, time.time(), before)
    fleet.start_worker(victim)
    wait_for(lambda: victim in set(fleet.owners().values()), WAIT, what=f"{victim} back with a share")


def test_a_worker_paused_past_its_lease_neither_double_counts_nor_overwrites(fleet: Fleet) -> None:
    settle(fleet, paused_traffic(fleet))
    victim = "w2"
    owned = {s for s, w in fleet.owners().items() if w == victim}
    assert owned
    fleet.workers[victim].send_signal(signal.SIGSTOP)
    try:
        wait_for(
            lambda: len(fleet.owners()) == 6 and victim not in set(fleet.owners().values()),
            WAIT,
            what=f"{sorted(owned)} taken over from the paused worker",
            detail=fleet.statuses,
        )
        settle(fleet, paused_traffic(fleet))  # the new owners moved on while it slept
        before = over_time(fleet.replicas["r1"].url)
    finally:
        fleet.workers[victim].send_signal(signal.SIGCONT)
    time.sleep(4 * LEASE_S)  # it wakes, writes what it had, finds its leases gone, lets go
    settle(fleet, time.time(), before)
    # Awake, it is a live worker again and gets its share back, with the state its successors left.
    wait_for(lambda: victim in set(fleet.owners().values()), WAIT, what=f"{victim} back with a share")
    settle(fleet, time.time(), before)


def test_sigkill_of_a_nats_server_then_its_restart(fleet: Fleet) -> None:
    settle(fleet, paused_traffic(fleet))
    node = sorted(fleet.nats.nodes)[0]
    fleet.nats.kill(node)
    try:
        settle(fleet, paused_traffic(fleet))  # two of three servers: writes go on
        before = over_time(fleet.replicas["r1"].url)
    finally:
        fleet.nats.restart(node)
    settle(fleet, time.time(), before)
    settle(fleet, paused_traffic(fleet, 100))


def test_sigkill_of_an_api_replica_leaves_the_other_serving(fleet: Fleet) -> None:
    settle(fleet, paused_traffic(fleet))
    fleet.replicas["r1"].process.kill()
    fleet.replicas["r1"].process.wait()
    survivor = fleet.replicas["r2"].url
    failures = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the survivor answers throughout, under traffic too
        for name in oracle.CHART_NAMES:
            try:
                with urllib.request.urlopen(f"{survivor}api/charts/{name}", timeout=10) as response:
                    assert response.status == 200
            except (OSError, urllib.error.HTTPError) as exc:
                failures.append(f"{name}: {exc}")
    assert not failures
    del fleet.replicas["r1"]
    settle(fleet, paused_traffic(fleet))
    fleet.start_replica("r1")
    settle(fleet, time.time())


def test_a_fourth_worker_joins_then_leaves(fleet: Fleet) -> None:
    settle(fleet, paused_traffic(fleet))
    before = over_time(fleet.replicas["r1"].url)

    def counts() -> list[int]:
        owners = list(fleet.owners().values())
        return sorted(owners.count(w) for w in fleet.workers if fleet.workers[w].poll() is None)

    fleet.start_worker("w4")
    wait_for(
        lambda: counts() == [1, 1, 2, 2], WAIT, what="six sources over four workers", detail=fleet.statuses
    )
    settle(fleet, time.time(), before)
    fleet.workers["w4"].send_signal(signal.SIGTERM)
    assert fleet.workers["w4"].wait(60) == 0
    wait_for(lambda: counts() == [2, 2, 2], WAIT, what="back to two sources each", detail=fleet.statuses)
    settle(fleet, time.time(), before)
    del fleet.workers["w4"]


def history_of(fleet: Fleet, replica: str) -> dict[str, Any]:
    """/api/status's history at one replica ({} while it cannot answer)."""
    try:
        return dict(get_json(fleet.replicas[replica].url + "api/status").get("history") or {})
    except OSError:
        return {}


def written_minutes(fleet: Fleet) -> dict[str, list[int]]:
    """Source -> the minutes the PostgreSQL history store holds for it, in order."""
    from pisa_pulse.sources.databases import connected

    with connected(fleet.history_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT source, minute FROM minutes ORDER BY source, minute")
        found: dict[str, list[int]] = {}
        for source, minute in cur.fetchall():
            found.setdefault(source, []).append(int(minute))
        return found


def test_one_replica_writes_the_history_and_another_takes_over_without_a_gap(fleet: Fleet) -> None:
    from tests.test_history import get, iso

    wait_for(
        lambda: sorted(str(history_of(fleet, r).get("writer")) for r in fleet.replicas) == ["False", "True"],
        WAIT,
        what="one replica writing the history, the other not",
        detail=lambda: {r: history_of(fleet, r) for r in fleet.replicas},
    )
    writer = next(r for r in fleet.replicas if history_of(fleet, r)["writer"])
    other = next(r for r in fleet.replicas if r != writer)
    settle(fleet, paused_traffic(fleet))
    quiet = int(time.time() // 60) + 1  # a minute that starts after the traffic paused
    live = charts_and_etags(fleet.replicas[other].url)
    wait_for(
        lambda: (
            all(quiet in minutes for minutes in written_minutes(fleet).values())
            and len(written_minutes(fleet)) == 6
        ),
        150,
        what=f"minute {quiet} written for every source",
        detail=lambda: (written_minutes(fleet), {r: history_of(fleet, r) for r in fleet.replicas}),
    )
    for chart in oracle.CHART_NAMES:  # as shown live then, by either replica
        first, second = (get(f"{r.url}api/history/{chart}?at={iso(quiet)}") for r in fleet.replicas.values())
        assert first == second and first[0] == 200, (chart, first, second)
        if chart != "submissions-over-time":  # its window ends at the minute asked, not now
            assert first[1] == json.loads(live[chart][0]), chart
    assert history_of(fleet, other)["written"] == 0  # only the lease holder writes

    fleet.replicas[writer].process.kill()
    fleet.replicas[writer].process.wait()
    killed = int(time.time() // 60)
    del fleet.replicas[writer]
    wait_for(lambda: history_of(fleet, other).get("writer") is True, WAIT, what=f"{other} writing now")
    wait_for(
        lambda: min(minutes[-1] for minutes in written_minutes(fleet).values()) > killed,
        150,
        what="a minute after the kill written for every source",
    )
    for source, minutes in written_minutes(fleet).items():  # no minute lost over the takeover
        assert minutes == list(range(minutes[0], minutes[-1] + 1)), (source, minutes)
    fleet.start_replica(writer)
    settle(fleet, time.time())


def test_a_lost_checkpoint_means_a_fresh_copy_said_in_the_status(fleet: Fleet) -> None:
    import asyncio

    from tests.nats_cluster import connected

    settle(fleet, paused_traffic(fleet))
    source = "alb"
    owner = fleet.owners()[source]

    async def delete_checkpoint() -> None:
        async with connected(*fleet.nats.urls) as client:
            js = client.jetstream(timeout=30)
            await js.purge_stream(
                f"{fleet.prefix}_checkpoints", subject=f"{fleet.prefix}.checkpoints.{source}"
            )
            objects = await js.object_store(f"{fleet.prefix}_snapshots")
            with contextlib.suppress(Exception):
                await objects.delete(source)

    fleet.workers[owner].send_signal(signal.SIGSTOP)  # no checkpoint of its own meanwhile
    asyncio.run(delete_checkpoint())
    fleet.workers[owner].kill()
    fleet.workers[owner].wait()
    wait_for(
        lambda: fleet.owners().get(source) not in (None, owner),
        WAIT,
        what=f"{source} under another worker",
        detail=fleet.statuses,
    )
    status = next(s for s in fleet.statuses() if s["source"] == source)
    assert status["resumed"]["from"] == "copy" and "checkpoint" in status["resumed"]["why"], status
    settle(fleet, time.time(), new_rows=expected_new_rows(fleet, {source}))
    fleet.start_worker(owner)
