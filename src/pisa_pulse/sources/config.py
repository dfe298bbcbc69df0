"""The sources config file: where the country databases are, written by `sources up`.

`<data-dir>/sources.toml` lists one `[[sources]]` entry per country database (name, DSN, capture
mode) and, for the embedded cluster, a `[cluster]` table saying where its files are. Every later
command (traffic, the pipeline) reads it, so nobody copies DSNs by hand. The file is private
(mode 0600): a DSN given with `--dsn` may carry a password. The embedded cluster's DSNs carry none:
they name a libpq passfile beside the config instead, so they can be printed and pasted into psql.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import platformdirs
import tomli_w

from pisa_pulse.errors import PisaPulseError
from pisa_pulse.sources.schema import SCHEMAS, SchemaName

CONFIG_NAME = "sources.toml"
DATA_DIR_ENV = "PISA_PULSE_DATA_DIR"


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


@dataclass(frozen=True, repr=False)
class Source:
    """One country database: its name (lower-case country code), DSN and capture mode.

    The database is the one the DSN names: the name itself, or with the prefix of `sources up
    --db-prefix` (`t1_alb`), so that several sets of sources can share one server.
    """

    name: str
    dsn: str
    mode: str = "replication"

    @property
    def shown_dsn(self) -> str:
        """The DSN without its password (in the URL's user part or as a `password=` option)."""
        return _QUERY_PASSWORD.sub(r"\1***", redact(self.dsn))

    def __repr__(self) -> str:
        # The DSN may carry a password (`password_env`, `--dsn`): a repr (a log line, a traceback's
        # locals, an error message) shows it redacted.
        return f"Source(name={self.name!r}, dsn={self.shown_dsn!r}, mode={self.mode!r})"


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
    tmp = path.with_suffix(".tmp")
    body: dict[str, Any] = {
        "schema": config.schema,
        "seed": config.seed,
        "sources": [asdict(s) for s in config.sources],
    }
    if config.admin_dsn is not None:
        body["admin_dsn"] = config.admin_dsn
    if config.cluster is not None:
        body["cluster"] = {k: v for k, v in asdict(config.cluster).items() if v is not None}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("# Written by `pisa-pulse sources up`; read by traffic and the pipeline.\n")
        f.write(tomli_w.dumps(body))
    os.replace(tmp, path)
    return path


def _from_dict(raw: dict[str, Any]) -> SourcesConfig:
    schema = raw["schema"]
    if schema not in SCHEMAS:
        raise PisaPulseError(f"schema must be one of {', '.join(SCHEMAS)}")
    cluster = raw.get("cluster")
    return SourcesConfig(
        schema=schema,
        seed=int(raw["seed"]),
        sources=tuple(Source(**s) for s in raw["sources"]),
        cluster=ClusterSpec(**{"run_as": None, **cluster}) if cluster else None,
        admin_dsn=raw.get("admin_dsn"),
    )


def redact(dsn: str) -> str:
    """A DSN with any password replaced by `***`, safe to print or log."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]+:)\S*@")


def scrub(text: str) -> str:
    """Any text (an error message) with the passwords of DSNs in it replaced by `***`."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def first_line(exc: BaseException) -> str:
    """An error's first line, passwords scrubbed: what a status, a log line or a one-line error shows."""
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
            f"DSN {redact(dsn)!r} is not a URL",
            "write it as postgresql://user[:password]@host:port/dbname",
        )
    return urlunsplit(parts._replace(path=f"/{database}"))
