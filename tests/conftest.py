"""Shared fixtures: real PostgreSQL clusters that the tests start, own and remove.

Each data dir lives under a private /tmp folder that the unprivileged server user can traverse
(pytest's own tmp root is mode 0700, which `postgres` cannot enter when the tests run as root).

**One cluster, a database each.** Tests that never stop, kill or reconfigure their PostgreSQL share
one embedded cluster for the session (`shared_cluster`); the `shared` fixture gives each test its own
database-name prefix on it (`shared.up(data_dir, ...)` is `sources up --dsn ... --db-prefix t7_`)
and, when the test ends, drops the replication slots of its databases. Slots are cluster-wide and
named `<slot prefix>_<database>`: tests that make slots in-process pass `shared.slot_prefix`, and a
slot still on the cluster after that fails the test. The cluster runs with fsync off (its data is
thrown away). Tests that stop, SIGSTOP or kill a server keep their own cluster (`new_dir` +
`bring_up`).

**Which tests need a server** is decided here, not by each test: a test whose fixtures include
`scratch` (every cluster fixture depends on it), or that is marked `faults` or `bench`, is marked
`server`. `make test-fast` runs `pytest -m "not server"` with PISA_PULSE_TESTS_NO_SERVER=1, and under
that variable starting a cluster, a `serving` subprocess, a browser, any server subprocess or
listening on a socket fails the test, so a test that starts a server without saying so cannot hide
in the fast run.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg2
import psycopg2.errors
import pytest
from psycopg2 import sql

from pisa_pulse.sources import config as cfg
from pisa_pulse.sources import databases, lifecycle
from pisa_pulse.sources.cluster import EmbeddedCluster
from tests.nats_cluster import NatsCluster, running_cluster

# -- tests with and without servers -----------------------------------------------------------------

NO_SERVER_ENV = "PISA_PULSE_TESTS_NO_SERVER"
# Every fixture that starts PostgreSQL depends on scratch; moto (tests/test_aws.py) is AWS in server mode.
SERVER_FIXTURES = {"scratch", "nats_cluster", "moto"}
SERVER_MARKERS = {"faults", "bench"}
# Child processes that are, start or need servers: pisa-pulse commands, PostgreSQL's tools, browsers,
# wrk, and bench/run.py (the benchmarks bring up their own sources).
SERVER_COMMANDS = {"serve", "demo", "pipeline", "traffic", "sources", "check", "bench"}
SERVER_PROGRAMS = {"initdb", "pg_ctl", "postgres", "postmaster", "nats-server", "chromium", "wrk", "run.py"}
_refused: list[str] = []  # what a test started under NO_SERVER_ENV (threads cannot fail a test)


def no_servers() -> bool:
    """True in a run that must start no server (`make test-fast`)."""
    return os.environ.get(NO_SERVER_ENV) == "1"


def refuse_server(what: str) -> None:
    """Fail the running test loudly when it starts `what` in a run without servers."""
    if no_servers():
        message = (
            f"{what} started in a run without servers ({NO_SERVER_ENV}=1): "
            "give the test a server fixture (scratch, new_dir, shared, ...) or mark it `server`"
        )
        _refused.append(message)
        pytest.fail(message, pytrace=False)


def _starts_a_server(args: Any) -> bool:
    argv = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
    if "--help" in argv or "--version" in argv:
        return False
    if any(Path(a).name in SERVER_PROGRAMS for a in argv):
        return True
    for i, arg in enumerate(argv[:-1]):
        if Path(arg).name in ("pisa_pulse", "pisa-pulse"):
            commands = [a for a in argv[i + 1 :] if not a.startswith("-")]
            return bool(commands) and commands[0] in SERVER_COMMANDS
    return False


def _guard_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every way of starting a server fail under NO_SERVER_ENV."""

    def refused(what: str) -> Callable[..., Any]:
        def start(*args: Any, **kwargs: Any) -> Any:
            refuse_server(what)

        return start

    monkeypatch.setattr(EmbeddedCluster, "init", refused("a PostgreSQL cluster (initdb)"))
    monkeypatch.setattr(EmbeddedCluster, "start", refused("a PostgreSQL cluster"))
    monkeypatch.setattr(socket.socket, "listen", refused("a listening socket"))
    from playwright.sync_api import BrowserType  # only here: most runs never need it

    monkeypatch.setattr(BrowserType, "launch", refused("a browser"))
    popen_init = subprocess.Popen.__init__

    def checked_popen(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        if _starts_a_server(args):
            refuse_server(f"the server process {args!r}")
        popen_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", checked_popen)


@pytest.fixture(scope="session", autouse=True)
def _servers_refused_when_asked() -> Iterator[None]:
    if not no_servers():
        yield
        return
    with pytest.MonkeyPatch.context() as monkeypatch:
        _guard_servers(monkeypatch)
        yield


def _no_server_was_started() -> Generator[None, object, object]:
    """Under NO_SERVER_ENV, fail a test's setup or call that started a server even where the failure
    was swallowed (in a thread, by a broad `except`); one that failed with it is reported once."""
    _refused.clear()
    try:
        result = yield
    except BaseException:
        _refused.clear()
        raise
    if _refused:
        message = _refused[0]
        _refused.clear()
        pytest.fail(message, pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    """See `_no_server_was_started`."""
    return (yield from _no_server_was_started())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """See `_no_server_was_started`."""
    return (yield from _no_server_was_started())


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `server` every test that uses a server fixture or is marked faults or bench."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SERVER_FIXTURES or any(item.get_closest_marker(m) for m in SERVER_MARKERS):
            item.add_marker(pytest.mark.server)


# -- clusters -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """The session's NATS JetStream cluster: three `nats-server` nodes on 127.0.0.1 (tests/nats_cluster.py),
    stopped (every process reaped) at the session's end.

    Every test that needs NATS shares it and keeps to buckets of its own (unique names); a test that
    kills a node restarts it before it ends, so the next test finds all three running. The servers'
    logs stay in pytest's temporary folder (`.../nats0/n1/server.log`) for a failing test to be read.
    """
    with running_cluster(tmp_path_factory.mktemp("nats"), size=3) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def _nats_ready(request: pytest.FixtureRequest) -> None:
    """A test that uses the session's NATS cluster starts on a ready one: every node serving and one
    meta leader that sees the others current (streams are not compared: a module's fleet may be
    writing). A node found dead is started again, with a warning that carries its log, so one crash
    is reported where it happened rather than as a timeout in whichever test comes next."""
    if "nats_cluster" not in request.fixturenames:
        return
    cluster: NatsCluster = request.getfixturevalue("nats_cluster")
    for node in cluster.nodes.values():
        if not node.running:
            warnings.warn(
                f"NATS node {node.name} had exited; starting it again\n{cluster.report()}", stacklevel=1
            )
            node.start()
    cluster.wait_ready(timeout=120, streams=False)


@pytest.fixture(scope="session")
def scratch() -> Iterator[Path]:
    """A traversable scratch folder for the whole session, removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="pisa-pulse-tests-"))
    root.chmod(0o711)
    yield root
    for config_file in root.rglob("sources.toml"):  # every data dir, however deep
        config = cfg.load(config_file.parent)
        if config.cluster is not None:
            EmbeddedCluster(config.cluster, config_file.parent).remove()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def new_dir(scratch: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh, not yet created data dir path named after the test."""
    return Path(tempfile.mkdtemp(prefix=request.node.name[:40] + "-", dir=scratch)) / "data"


BringUp = Callable[..., cfg.SourcesConfig]


def _bring_up(data_dir: Path, **options: object) -> cfg.SourcesConfig:
    return lifecycle.up(lifecycle.UpRequest(data_dir=data_dir, **options))  # type: ignore[arg-type]


@pytest.fixture
def bring_up(scratch: Path) -> BringUp:
    """`sources up` in-process: bring_up(data_dir, **UpRequest options)."""
    return _bring_up


@pytest.fixture(scope="session")
def slim20(scratch: Path) -> cfg.SourcesConfig:
    """The 20 default countries, slim, 300 students each: shared by read-mostly tests."""
    return _bring_up(scratch / "slim20", schema="slim", rows_per_country=300, workers=2)


@pytest.fixture(scope="session")
def shared_cluster(scratch: Path) -> Iterator[EmbeddedCluster]:
    """One embedded cluster for the session, for tests that never stop, kill or reconfigure it."""
    data_dir = scratch / "shared"
    data_dir.mkdir(mode=0o711)
    cluster = EmbeddedCluster.plan(data_dir, port=None, run_as=None)
    try:
        cluster.init()
        cluster.start()
        # Its data is thrown away at the end, so nothing need reach the disk.
        with databases.connected(cluster.dsn()) as admin, admin.cursor() as cur:
            cur.execute("ALTER SYSTEM SET fsync = off")
            cur.execute("ALTER SYSTEM SET full_page_writes = off")
            cur.execute("SELECT pg_reload_conf()")
        yield cluster
    finally:
        cluster.remove()


@dataclass(frozen=True)
class SharedServer:
    """One test's share of the shared cluster: the databases whose names start with `prefix`."""

    cluster: EmbeddedCluster
    prefix: str  # e.g. "t7_"

    @property
    def admin_dsn(self) -> str:
        """The superuser's DSN of the shared cluster (password in its passfile)."""
        return self.cluster.dsn()

    @property
    def port(self) -> int:
        """The shared cluster's port on 127.0.0.1."""
        return self.cluster.spec.port

    @property
    def slot_prefix(self) -> str:
        """A replication-slot prefix of this test's own (slots are cluster-wide)."""
        return f"{self.prefix}pisa_pulse"

    def up(self, data_dir: Path, **options: object) -> cfg.SourcesConfig:
        """`sources up --dsn <shared cluster> --db-prefix <prefix>` in-process, into `data_dir`."""
        return _bring_up(data_dir, dsn=self.admin_dsn, db_prefix=self.prefix, **options)

    def create_database(self, name: str) -> str:
        """An empty database `<prefix><name>`; returns its DSN."""
        database = self.prefix + name
        with databases.connected(self.admin_dsn) as admin, admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        return self.cluster.dsn(database)


_shares = itertools.count(1)


@contextmanager
def share_of(cluster: EmbeddedCluster) -> Iterator[SharedServer]:
    """A new prefix on `cluster`. Afterwards the connections to its databases end and their slots are
    dropped; the databases stay until the cluster goes (DROP DATABASE would force a checkpoint). A slot
    elsewhere on the cluster then fails the test, as it would clash with a later test's."""
    share = SharedServer(cluster, f"t{next(_shares)}_")
    try:
        yield share
    finally:
        _end_share(share)


def _end_share(share: SharedServer) -> None:
    ours = "starts_with({}, %s)"
    with databases.connected(share.admin_dsn) as admin, admin.cursor() as cur:
        deadline = time.monotonic() + 30
        while True:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
                + ours.format("datname"),
                (share.prefix,),
            )
            try:
                cur.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE "
                    + ours.format("database"),
                    (share.prefix,),
                )
                break
            except psycopg2.errors.ObjectInUse:  # a walsender not gone yet
                assert time.monotonic() < deadline, "a slot of this test stayed in use"
                time.sleep(0.1)
        cur.execute("SELECT slot_name, database FROM pg_replication_slots")
        left = cur.fetchall()
        for slot, _ in left:
            cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    assert not left, f"replication slots left on the shared cluster (slots are cluster-wide): {left}"


@pytest.fixture
def shared(shared_cluster: EmbeddedCluster) -> Iterator[SharedServer]:
    """This test's own database-name prefix on the session's shared cluster."""
    with share_of(shared_cluster) as share:
        yield share


# -- waiting and stopping -------------------------------------------------------------------------------

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T],
    timeout: float = 30,
    what: str = "the condition",
    detail: Callable[[], object] | None = None,
    pause: Callable[[float], object] = time.sleep,
) -> T:
    """Call `condition` until it returns something truthy, and return that; past `timeout` seconds, fail
    the test naming `what` (and showing `detail()`, the state at the deadline). Between calls,
    `pause(seconds)` (a browser test passes the page's own wait, so that its events keep coming in).

    Tests wait for what they need to see instead of sleeping or timing it: the machines the suite runs
    on differ 3 to 4 times in speed, so deadlines are generous (30 s for anything a server does, 60 s
    and more for copies and restarts), and how fast things happen is the benchmarks' business (bench/).
    """
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}" + (f"; {detail()}" if detail is not None else ""))
        pause(0.05)
    return value


def stop(proc: subprocess.Popen[Any], timeout: float = 60) -> int:
    """End a process a test started, whatever state it is in; returns its exit code.

    SIGCONT (a test may have left it stopped) and SIGTERM, up to `timeout` seconds for it to exit, then
    SIGKILL. Its pipes, if any, are drained meanwhile (so that a full one cannot keep it from exiting),
    then closed. Call it in a `finally` right after starting the process: a failing line in between
    leaks it.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    code = proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return code


LOCAL = "http://127.0.0.1"  # TestClient's base URL: a Host the API serves (not its default, testserver)


# -- servers --------------------------------------------------------------------------------------------


@dataclass
class Server:
    """A `pisa-pulse serve` (or `demo`) subprocess and its base URL."""

    url: str
    process: subprocess.Popen[str]


@contextmanager
def serving(*args: str, command: str = "serve") -> Iterator[Server]:
    """`pisa-pulse COMMAND ARGS --port 0` until the block ends, then `stop` and, if the block passed, a
    clean exit (0).

    Waits for the line naming the URL (`demo` first brings its sources up and says so).
    """
    refuse_server(f"`pisa-pulse {command}`")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pisa_pulse", command, *args, "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        printed: list[str] = []
        while not (found := re.search(r"serving .* at (http://127\.0\.0\.1:\d+/)", "".join(printed))):
            line = proc.stdout.readline()
            assert line, f"{command} ended before serving: {''.join(printed)!r}"
            printed.append(line)
        yield Server(found.group(1), proc)
    finally:
        code = stop(proc)
    assert code == 0, f"`pisa-pulse {command}` exited with {code} when stopped"
