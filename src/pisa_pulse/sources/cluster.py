"""The embedded PostgreSQL cluster that holds the country databases on a laptop.

pisa-pulse owns this cluster: it lives in the data dir (`<data-dir>/cluster/data`), listens on
127.0.0.1 only (no Unix socket), requires a password (kept in a libpq passfile, never printed) and is
configured for logical replication with room for 80 sources. It uses the machine's server binaries
(`pg_config --bindir`, PATH, /usr/lib/postgresql/*/bin) and falls back to the `pgserver` wheel.

PostgreSQL refuses to run as root. Invoked as root, pisa-pulse runs the server as an unprivileged
user (`postgres` by default, `--run-as` to choose) that owns the cluster directory. When that user
cannot reach the data dir (root's home is private), the cluster directory goes under that user's
home instead, and the config records where.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

from pisa_pulse.errors import PisaPulseError
from pisa_pulse.secret import write_private
from pisa_pulse.sources.config import ClusterSpec

log = logging.getLogger(__name__)

SUPERUSER = "pisa"
PASSFILE = "pgpass"
HOST = "127.0.0.1"

# Enough walsenders and slots for 80 sources (the 79 PISA countries and a spare) plus tests;
# synchronous_commit=off because a simulated source does not need each commit on disk before the
# client hears back (WAL still reaches disk within wal_writer_delay, and logical decoding only ever
# sends flushed WAL, so the pipeline never sees a commit a crash could undo).
SERVER_SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "unix_socket_directories": "''",
    "wal_level": "logical",
    "max_wal_senders": "100",
    "max_replication_slots": "100",
    "max_connections": "300",
    "shared_buffers": "'256MB'",
    "synchronous_commit": "off",
    # Logical decoding sends only flushed WAL, so with asynchronous commits the walwriter's cycle
    # (200 ms by default) would be added to every change's commit-to-chart latency.
    "wal_writer_delay": "'10ms'",
    "max_wal_size": "'4GB'",
    "checkpoint_timeout": "'15min'",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %d '",
}


def find_bindir() -> Path:
    """A directory holding `initdb`, `pg_ctl` and `postgres` of PostgreSQL 15 or newer."""
    candidates: list[Path] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
        candidates.append(Path(out.stdout.strip()))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _major(p.parent.name))
    candidates.extend(reversed(installed))
    with contextlib.suppress(ImportError):
        import pgserver

        candidates.append(Path(pgserver.__file__).parent / "pginstall" / "bin")
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PisaPulseError(
        "no PostgreSQL server binaries found (initdb, pg_ctl, postgres)",
        "install PostgreSQL 15+ (apt-get install postgresql) or `pip install 'pisa-pulse[pgserver]'`, "
        "or pass --dsn to use an existing server",
    )


def _major(name: str) -> int:
    return int(name) if name.isdigit() else 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    """True when something already listens on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _run_as_user() -> str | None:
    return None if os.geteuid() != 0 else "postgres"


class EmbeddedCluster:
    """Create, start, stop and locate one pisa-pulse-owned PostgreSQL cluster."""

    def __init__(self, spec: ClusterSpec, data_dir: Path) -> None:
        self.spec = spec
        self.data_dir = data_dir

    @property
    def pgdata(self) -> Path:
        """The PGDATA directory."""
        return Path(self.spec.cluster_dir) / "data"

    @property
    def logfile(self) -> Path:
        """The server's log file."""
        return Path(self.spec.cluster_dir) / "server.log"

    @property
    def passfile(self) -> Path:
        """The libpq passfile holding the superuser's password."""
        return self.data_dir / PASSFILE

    def dsn(self, database: str = "postgres") -> str:
        """A password-free DSN for a database of this cluster (the password comes from the passfile)."""
        return (
            f"postgresql://{self.spec.superuser}@{HOST}:{self.spec.port}/{database}"
            f"?passfile={self.passfile}&connect_timeout=10"
        )

    # -- creation ---------------------------------------------------------------------------------

    @classmethod
    def plan(cls, data_dir: Path, port: int | None, run_as: str | None) -> EmbeddedCluster:
        """A new cluster's spec: binaries, port, the user that runs it and where its files go."""
        run_as = run_as or _run_as_user()
        if run_as is not None:
            try:
                pwd.getpwnam(run_as)
            except KeyError:
                raise PisaPulseError(
                    f"PostgreSQL refuses to run as root and there is no user {run_as!r} to run it as",
                    "create an unprivileged user (useradd postgres) or pass --run-as USER",
                ) from None
        cluster_dir = data_dir / "cluster"
        if run_as is not None and not _reachable_by(run_as, data_dir):
            home = Path(pwd.getpwnam(run_as).pw_dir)
            digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
            cluster_dir = home / "pisa-pulse" / digest
        spec = ClusterSpec(
            cluster_dir=str(cluster_dir),
            bindir=str(find_bindir()),
            port=_checked_port(port),
            superuser=SUPERUSER,
            run_as=run_as,
        )
        return cls(spec, data_dir)

    def exists(self) -> bool:
        """True when initdb has run for this cluster."""
        return (self.pgdata / "PG_VERSION").exists()

    def init(self) -> None:
        """Run initdb with a random superuser password, then write our server settings."""
        cluster_dir = Path(self.spec.cluster_dir)
        cluster_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._chown(cluster_dir)
        password = secrets.token_urlsafe(24)
        pwfile = cluster_dir / "initdb.pw"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        try:
            self._tool(
                "initdb",
                "-D", str(self.pgdata),
                "-U", self.spec.superuser,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        write_private(self.passfile, f"{HOST}:*:*:{self.spec.superuser}:{password}\n")
        self.write_settings()

    def write_settings(self) -> None:
        """Write pisa-pulse's server settings (port included) into postgresql.auto.conf's neighbour."""
        settings = {**SERVER_SETTINGS, "port": str(self.spec.port)}
        conf = self.pgdata / "pisa-pulse.conf"
        conf.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        self._chown(conf)
        main_conf = self.pgdata / "postgresql.conf"
        include = "include_if_exists = 'pisa-pulse.conf'\n"
        if include not in main_conf.read_text():
            with main_conf.open("a") as f:
                f.write(include)

    # -- running ----------------------------------------------------------------------------------

    def running(self) -> bool:
        """True when the server of this cluster is up."""
        if not self.exists():
            return False
        result = self._tool("pg_ctl", "status", "-D", str(self.pgdata), check=False)
        return result.returncode == 0

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if port_in_use(self.spec.port):
            raise PisaPulseError(
                f"port {self.spec.port} on {HOST} is in use",
                "pass another --port, or omit --port to pick a free one",
            )
        result = self._tool(
            "pg_ctl", "start", "-D", str(self.pgdata), "-l", str(self.logfile), "-w", "-t", "60",
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise PisaPulseError(
                f"PostgreSQL did not start: {self._log_tail()}",
                f"see {self.logfile}",
            )
        log.info("cluster started port=%s pgdata=%s", self.spec.port, self.pgdata)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast` rolls back open transactions; `immediate` is a crash)."""
        if self.running():
            self._tool("pg_ctl", "stop", "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60")

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would (the next start runs recovery)."""
        pidfile = self.pgdata / "postmaster.pid"
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text().split("\n", 1)[0]), 9)

    def remove(self) -> None:
        """Stop the server and delete the cluster's files and passfile."""
        self.stop("immediate")
        shutil.rmtree(self.spec.cluster_dir, ignore_errors=True)
        self.passfile.unlink(missing_ok=True)

    # -- helpers ----------------------------------------------------------------------------------

    def _tool(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(Path(self.spec.bindir) / name), *args]
        user = self.spec.run_as
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            user=user,
            group=pwd.getpwnam(user).pw_gid if user else None,
            extra_groups=[] if user else None,
            cwd="/",
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            timeout=120,
        )
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise PisaPulseError(
                f"{name} failed: {detail[-1] if detail else 'exit ' + str(result.returncode)}",
                f"see {self.logfile}" if name == "pg_ctl" else "check the data dir and binaries",
            )
        return result

    def _chown(self, path: Path) -> None:
        if self.spec.run_as is not None:
            entry = pwd.getpwnam(self.spec.run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _log_tail(self) -> str:
        try:
            lines = [ln for ln in self.logfile.read_text().splitlines() if ln.strip()]
        except OSError:
            return "no server log"
        return lines[-1] if lines else "empty server log"


def _checked_port(port: int | None) -> int:
    if port is None:
        return free_port()
    if not 1 <= port <= 65535:
        raise PisaPulseError(f"port {port} is out of range", "pass --port between 1024 and 65535")
    if port_in_use(port):
        raise PisaPulseError(
            f"port {port} on {HOST} is in use", "pass another --port, or omit --port to pick a free one"
        )
    return port


def _reachable_by(user: str, data_dir: Path) -> bool:
    """Whether `user` can traverse every directory down to `data_dir`."""
    result = subprocess.run(
        ["test", "-x", str(data_dir)], user=user, cwd="/", capture_output=True, timeout=10
    )
    return result.returncode == 0
