"""The sources config file: where the country databases are, written by `sources up`.

`<data-dir>/sources.toml` lists one `[[sources]]` entry per country database (name, DSN, capture
mode) and, for the embedded cluster, a `[cluster]` table saying where its files are. Every later
command (traffic, the pipeline) reads it, so nobody copies DSNs by hand. The file is private
(mode 0600): the password of a server given with `--dsn` is kept there, beside the DSN (`password`,
`admin_password`), never inside it. The embedded cluster's DSNs need none: they name a libpq
passfile beside the config instead, so they can be printed and pasted into psql.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import platformdirs
import tomli_w

from pisa_pulse.errors import PisaPulseError
from pisa_pulse.secret import Secret, scrub, split_password, write_private
from pisa_pulse.sources.schema import SCHEMAS, SchemaName

CONFIG_NAME = "sources.toml"
DATA_DIR_ENV = "PISA_PULSE_DATA_DIR"


@dataclass(frozen=True)
class Source:
    """One country database: its name (lower-case country code), DSN, capture mode and password.

    The database is the one the DSN names: the name itself, or with the prefix of `sources up
    --db-prefix` (`t1_alb`), so that several sets of sources can share one server. A password
    written in the DSN is taken out of it into `password` (a `Secret`, which no repr shows), and
    `databases.connect` passes it to the driver on its own.
    """

    name: str
    dsn: str
    mode: str = "replication"
    password: Secret | None = None

    def __post_init__(self) -> None:
        dsn, password = split_password(self.dsn)
        if password is not None:
            object.__setattr__(self, "dsn", dsn)
            object.__setattr__(self, "password", self.password or password)


@dataclass(frozen=True)
class ClusterSpec:
    """Where the embedded PostgreSQL cluster lives and how it is reached."""

    cluster_dir: str  # holds data/ (PGDATA) and server.log
    bindir: str
    port: int
    superuser: str
    run_as: str | None  # the unprivileged OS user that runs the server when invoked as root


@dataclass(frozen=True)
class SourcesConfig:
    """Everything `sources up` wrote: the sources, their layout and the seed of their students."""

    schema: SchemaName
    seed: int
    sources: tuple[Source, ...]
    cluster: ClusterSpec | None = None
    admin_dsn: str | None = field(default=None)  # server-level DSN used to create/drop databases
    admin_password: Secret | None = None

    def __post_init__(self) -> None:
        if self.admin_dsn is not None:
            dsn, password = split_password(self.admin_dsn)
            object.__setattr__(self, "admin_dsn", dsn)
            object.__setattr__(self, "admin_password", self.admin_password or password)

    def source(self, name: str) -> Source:
        """The source named `name` (a country code in any case)."""
        for s in self.sources:
            if s.name == name.lower():
                return s
        raise PisaPulseError(
            f"no source named {name.lower()} in this data dir",
            f"choose one of {', '.join(s.name for s in self.sources)}",
        )


def default_data_dir() -> Path:
    """`$PISA_PULSE_DATA_DIR`, else the user's data dir (e.g. ~/.local/share/pisa-pulse)."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path(platformdirs.user_data_dir("pisa-pulse"))


def ensure_data_dir(data_dir: Path) -> Path:
    """Create the data dir if needed; refuse one that belongs to another user."""
    data_dir = data_dir.expanduser().absolute()
    if data_dir.exists():
        if not data_dir.is_dir():
            raise PisaPulseError(f"data dir {data_dir} is a file", "pass --data-dir with a directory")
        owner = data_dir.stat().st_uid
        if owner != os.getuid():
            raise PisaPulseError(
                f"data dir {data_dir} belongs to another user (uid {owner})",
                "pass --data-dir with a directory of your own",
            )
    else:
        # Traversable but not listable, so that the unprivileged user running the embedded server
        # (when invoked as root) can reach its cluster directory; the files in it are private.
        data_dir.mkdir(parents=True, mode=0o711)
    return data_dir


def config_path(data_dir: Path) -> Path:
    """The config file of a data dir."""
    return data_dir / CONFIG_NAME


def load(data_dir: Path) -> SourcesConfig:
    """Read the config that `sources up` wrote in `data_dir`."""
    path = config_path(data_dir.expanduser().absolute())
    if not path.exists():
        raise PisaPulseError(
            f"no sources in {path.parent}",
            "run `pisa-pulse sources up` first, or pass the --data-dir it used",
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        return _from_dict(raw)
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError, PisaPulseError) as exc:
        raise PisaPulseError(
            f"{path} is not a valid sources config ({exc})",
            "fix it, or run `pisa-pulse sources up` to write it again",
        ) from None


def load_optional(data_dir: Path) -> SourcesConfig | None:
    """The config of `data_dir`, or None when there is none yet."""
    return load(data_dir) if config_path(data_dir).exists() else None


def save(data_dir: Path, config: SourcesConfig) -> Path:
    """Write the config atomically with mode 0600 and return its path."""
    path = config_path(data_dir)
    body: dict[str, Any] = {
        "schema": config.schema,
        "seed": config.seed,
        "sources": [_with_password(asdict(s), s.password) for s in config.sources],
    }
    if config.admin_dsn is not None:
        body |= _with_password({"admin_dsn": config.admin_dsn}, config.admin_password, "admin_password")
    if config.cluster is not None:
        body["cluster"] = {k: v for k, v in asdict(config.cluster).items() if v is not None}
    header = "# Written by `pisa-pulse sources up`; read by traffic and the pipeline.\n"
    write_private(path, header + tomli_w.dumps(body))
    return path


def _with_password(entry: dict[str, Any], password: Secret | None, key: str = "password") -> dict[str, Any]:
    """A TOML table of a DSN, with its password (if any) under `key`: the file is private (0600)."""
    entry.pop("password", None)
    return entry | ({key: password.reveal()} if password is not None else {})


def _secret(value: object) -> Secret | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("a password must be a string")
    return Secret(value)


def _from_dict(raw: dict[str, Any]) -> SourcesConfig:
    schema = raw["schema"]
    if schema not in SCHEMAS:
        raise PisaPulseError(f"schema must be one of {', '.join(SCHEMAS)}")
    cluster = raw.get("cluster")
    return SourcesConfig(
        schema=schema,
        seed=int(raw["seed"]),
        sources=tuple(Source(**{**s, "password": _secret(s.get("password"))}) for s in raw["sources"]),
        cluster=ClusterSpec(**{"run_as": None, **cluster}) if cluster else None,
        admin_dsn=raw.get("admin_dsn"),
        admin_password=_secret(raw.get("admin_password")),
    )


def first_line(exc: BaseException) -> str:
    """An error's first line, secrets scrubbed: what a status, a log line or a one-line error shows."""
    text = str(exc).strip()
    return scrub(text.splitlines()[0]) if text else type(exc).__name__


def database_of(dsn: str) -> str:
    """The database a URL DSN names (`postgresql://host/alb?...` -> `alb`)."""
    return urlsplit(dsn).path.lstrip("/")


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointing at another database."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise PisaPulseError(
            f"DSN {scrub(dsn)!r} is not a URL",
            "write it as postgresql://user[:password]@host:port/dbname",
        )
    return urlunsplit(parts._replace(path=f"/{database}"))
