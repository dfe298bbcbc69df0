"""The serve settings: one frozen, validated object, read from a TOML file.

```toml
[server]
host = "127.0.0.1"        # loopback unless told otherwise
port = 8000
max_connections = 1000    # beyond this many open connections, requests get 503 (not a collapse)

[capture]
mode = "replication"      # "poll" (SELECT only), "auto" (replication where allowed, else poll),
                          # or "direct": run the aggregate SQL on every source per request
slot_prefix = "pisa_pulse"
state_dir = "state"       # checkpoint; relative to this file (default: the file's folder)
poll_interval = 0.25      # poll mode: seconds between polls of a source
reconcile_interval = 30   # poll mode: seconds between reconciliations (they find updates)

[[sources]]
name = "alb"
dsn = "postgresql://reader@db.example.org/alb"
password_env = "ALB_PASSWORD"   # optional: the password comes from this environment variable
mode = "poll"                   # optional: this source's mode (replication, poll or auto)
```

The `sources.toml` that `pisa-pulse sources up` writes is a valid settings file as it is (its
`schema`, `seed`, `cluster` and `admin_dsn` keys are ignored here). Every problem names its key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from pisa_pulse.errors import PisaPulseError
from pisa_pulse.pisa2018 import countries
from pisa_pulse.sources.config import Source

SOURCE_MODES = ("replication", "poll", "auto")
MODES = (*SOURCE_MODES, "direct")
_WRITTEN_BY_SOURCES_UP = {"schema", "seed", "cluster", "admin_dsn"}


@dataclass(frozen=True)
class ServerSettings:
    """Where the HTTP server listens."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_connections: int = 1000


@dataclass(frozen=True)
class Settings:
    """Everything `serve` needs."""

    sources: tuple[Source, ...]
    mode: str  # the capture mode of the settings; each source says its own (`Source.mode`)
    state_dir: Path
    slot_prefix: str = "pisa_pulse"
    server: ServerSettings = ServerSettings()
    poll_interval: float = 0.25
    reconcile_interval: float = 30.0


def load(path: Path, host: str | None = None, port: int | None = None, mode: str | None = None) -> Settings:
    """Read and validate a settings file; `host`/`port` override its [server] table, `mode` every
    capture mode in it."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PisaPulseError(
            f"settings file {path} not found", "pass --config with an existing file"
        ) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PisaPulseError(f"settings file {path} is not readable TOML: {exc}", "fix the file") from None
    _only(raw, {"server", "capture", "sources"} | _WRITTEN_BY_SOURCES_UP, "")
    server_raw = _table(raw, "server")
    capture_raw = _table(raw, "capture")
    _only(server_raw, {"host", "port", "max_connections"}, "server.")
    _only(
        capture_raw,
        {"mode", "slot_prefix", "state_dir", "poll_interval", "reconcile_interval"},
        "capture.",
    )
    server = ServerSettings(
        host=host or _typed(server_raw, "host", str, "server.", "127.0.0.1"),
        port=port if port is not None else _typed(server_raw, "port", int, "server.", 8000),
        max_connections=_typed(server_raw, "max_connections", int, "server.", 1000),
    )
    if not 1 <= server.max_connections <= 100_000:
        raise PisaPulseError(
            f"server.max_connections {server.max_connections} is out of range", "use 1 to 100000"
        )
    if not 0 <= server.port <= 65535:
        raise PisaPulseError(f"server.port {server.port} is not a port", "use 1-65535, or 0 for a free one")
    sources = _sources(raw.get("sources"))
    modes = {s.mode for s in sources}
    shared = modes.pop() if len(modes) == 1 and None not in modes else "replication"
    default = mode or _typed(capture_raw, "mode", str, "capture.", shared)
    if default not in MODES:
        where = "--mode" if mode else "capture.mode"
        raise PisaPulseError(f"{where} {default!r} is unknown", f"use one of {', '.join(MODES)}")
    for i, s in enumerate(sources):
        if s.mode is not None and s.mode not in SOURCE_MODES and s.mode != default:
            raise PisaPulseError(
                f"sources[{i}].mode {s.mode!r} is unknown", f"use one of {', '.join(SOURCE_MODES)}"
            )
    # --mode and direct mode apply to every source; otherwise a source's own mode wins.
    every = bool(mode) or default == "direct"
    state = Path(_typed(capture_raw, "state_dir", str, "capture.", "."))
    return Settings(
        sources=tuple(Source(s.name, s.dsn, default if every or s.mode is None else s.mode) for s in sources),
        mode=default,
        state_dir=state if state.is_absolute() else (path.parent / state).resolve(),
        slot_prefix=_typed(capture_raw, "slot_prefix", str, "capture.", "pisa_pulse"),
        server=server,
        poll_interval=_seconds(capture_raw, "poll_interval", 0.25, 0.05),
        reconcile_interval=_seconds(capture_raw, "reconcile_interval", 30.0, 1.0),
    )


def _seconds(raw: dict[str, Any], key: str, default: float, least: float) -> float:
    value = raw.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not least <= value <= 86_400:
        raise PisaPulseError(
            f"capture.{key} = {value!r} is not a number of seconds from {least} to 86400",
            f"write e.g. {key} = {default}",
        )
    return float(value)


@dataclass(frozen=True)
class _Entry:
    name: str
    dsn: str
    mode: str | None


def _sources(raw: object) -> list[_Entry]:
    if not isinstance(raw, list) or not raw:
        raise PisaPulseError(
            "the settings list no [[sources]]", "add one [[sources]] table per country database"
        )
    known = countries()
    result = []
    for i, entry in enumerate(raw):
        where = f"sources[{i}]."
        if not isinstance(entry, dict):
            raise PisaPulseError(f"{where[:-1]} is not a table", "write each source as a [[sources]] table")
        _only(entry, {"name", "dsn", "mode", "password_env"}, where)
        name = _typed(entry, "name", str, where, None).lower()
        if name.upper() not in known:
            raise PisaPulseError(f"{where}name {name!r} is not a PISA 2018 country code", "use e.g. alb")
        dsn = _typed(entry, "dsn", str, where, None)
        if urlsplit(dsn).scheme not in ("postgresql", "postgres"):
            raise PisaPulseError(
                f"{where}dsn is not a postgresql:// URL", "write it as postgresql://user@host/db"
            )
        env = entry.get("password_env")
        if env is not None:
            dsn = _with_password(dsn, str(env), where)
        own = entry.get("mode")
        result.append(_Entry(name, dsn, None if own is None else _typed(entry, "mode", str, where, None)))
    names = [s.name for s in result]
    if len(set(names)) != len(names):
        raise PisaPulseError("[[sources]] names a country twice", "keep one entry per country database")
    return result


def _with_password(dsn: str, env: str, where: str) -> str:
    password = os.environ.get(env)
    if password is None:
        raise PisaPulseError(
            f"{where}password_env names {env}, which is not set", f"export {env} before serving"
        )
    parts = urlsplit(dsn)
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"))


def _table(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise PisaPulseError(f"{key} is not a table", f"write it as [{key}]")
    return value


def _only(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise PisaPulseError(
            f"unknown setting {where}{unknown[0]}", f"remove it; known here: {', '.join(sorted(allowed))}"
        )


def _typed(raw: dict[str, Any], key: str, kind: type, where: str, default: Any) -> Any:
    if key not in raw:
        if default is None:
            raise PisaPulseError(f"{where}{key} is missing", f"add {key} = ... to the settings")
        return default
    value = raw[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        what = {int: "an integer", str: "a string"}.get(kind, kind.__name__)
        raise PisaPulseError(f"{where}{key} = {value!r} is not {what}", f"write {key} as {what}")
    return value
