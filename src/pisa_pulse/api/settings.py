"""The serve settings: one table (`SETTINGS`), one frozen validated object (`Settings`), one TOML file.

```toml
[server]
host = "127.0.0.1"        # loopback unless told otherwise
port = 8000

[capture]
mode = "poll"

[publish]                 # optional: also write the charts to DynamoDB and S3 (aws/)
to = ["dynamodb://pisa-pulse-charts", "s3://my-bucket/dashboard"]

[history]                 # optional: where each minute's aggregates go (default: DuckDB in state_dir)
store = "duckdb"
retention_days = 30

[[sources]]
name = "alb"
dsn = "postgresql://reader@db.example.org/alb"
password_env = "ALB_PASSWORD"   # optional: the password comes from this environment variable
```

Every setting is one `Setting` row of `SETTINGS`: its name, type, default, help and the `serve` option
or environment variable that sets it. `load` validates a file against the table, `serve --help` takes
its help and defaults from it, `/api/status` echoes the effective values of the settings that are no
secret (`echo`), and the README's settings reference is tested against it (tests/test_docs.py).

The `sources.toml` that `pisa-pulse sources up` writes is a valid settings file as it is (its
`schema`, `seed`, `cluster` and `admin_dsn` keys are ignored here). Every problem names its key.
Passwords never appear in a repr: a `Source` keeps its password apart from its DSN, as a `Secret`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pisa_pulse.aws.targets import target_of
from pisa_pulse.capture.contract import MODES, SOURCE_MODES
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.pisa2018 import countries
from pisa_pulse.secret import Secret, scrub
from pisa_pulse.sources.config import Source

_WRITTEN_BY_SOURCES_UP = {"schema", "seed", "cluster", "admin_dsn", "admin_password"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
Kind = Literal["string", "integer", "seconds", "mode", "path", "list"]


@dataclass(frozen=True)
class Setting:
    """One setting: everything validation, `--help`, `/api/status` and the README say about it."""

    name: str  # `server.port`; `sources[].dsn` for a key of every [[sources]] entry
    kind: Kind
    default: str | int | float | tuple[str, ...] | None  # None: required, or computed (`default_text`)
    help: str
    least: float | None = None  # numbers: the range allowed
    most: float | None = None
    choices: tuple[str, ...] = ()
    option: str | None = None  # the `serve` option that overrides it
    env: str | None = None  # the environment variable that sets it
    default_text: str | None = None  # the default in words, where it is not a plain value
    echo: Literal["value", "redacted", "hidden"] = "value"  # what /api/status shows of it

    @property
    def table(self) -> str:
        """`server`, `capture` or `sources`."""
        return self.name.split(".", 1)[0].removesuffix("[]")

    @property
    def key(self) -> str:
        """Its key inside its table."""
        return self.name.split(".", 1)[1]

    @property
    def shown_default(self) -> str:
        """The default as the README and `--help` write it."""
        if self.default_text is not None:
            return self.default_text
        if self.default is None:
            return "required"
        if isinstance(self.default, tuple):
            return ", ".join(f"`{item}`" for item in self.default) or "none"
        return f"`{self.default:g}`" if isinstance(self.default, float) else f"`{self.default}`"

    @property
    def valid(self) -> str:
        """What a valid value is, in words (error messages)."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        nouns = {"integer": "an integer", "seconds": "a number of seconds", "path": "a path"}
        noun = nouns.get(self.kind, "a list of strings" if self.kind == "list" else "a string")
        if self.least is None:
            return noun
        return f"{noun} from {self.least:g} to {self.most:g}"


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "server.host",
        "string",
        "127.0.0.1",
        "address to listen on: 127.0.0.1 serves this machine only, 0.0.0.0 every network",
        option="--host",
    ),
    Setting(
        "server.port", "integer", 8000, "HTTP port; 0 picks a free one", least=0, most=65535, option="--port"
    ),
    Setting(
        "server.max_requests",
        "integer",
        1000,
        "past this many requests in progress, a new one gets 503 at once (open connections that have "
        "not sent a whole request do not count)",
        least=1,
        most=100_000,
    ),
    Setting(
        "server.max_connections",
        "integer",
        10_000,
        "past this many open connections, a new one is closed at once; serve raises its open-file "
        "limit to fit them",
        least=16,
        most=1_000_000,
    ),
    Setting(
        "server.max_streams",
        "integer",
        1000,
        "past this many live streams open at once (/api/live, one per dashboard page), a new one gets "
        "503 and its page polls; they do not count against server.max_requests; 0 turns the route off",
        least=0,
        most=100_000,
    ),
    Setting(
        "server.request_timeout",
        "seconds",
        10.0,
        "a client has this long to send a whole request (line, headers, body) from connecting or from "
        "the request's first byte; past it the connection is closed",
        least=0.5,
        most=3600,
    ),
    Setting(
        "server.allowed_hosts",
        "list",
        LOOPBACK_HOSTS,
        "the names requests may give in their Host header (no port), besides the address serve listens "
        "on; add the names a load balancer, CDN or API Gateway uses; `*` allows any (no DNS-rebinding "
        "protection)",
    ),
    Setting(
        "server.chart_origins",
        "list",
        (),
        "other servers whose charts the dashboard may poll (its Content-Security-Policy connect-src), "
        "e.g. https://pisa.example.org",
    ),
    Setting(
        "server.metrics_token_env",
        "string",
        None,
        "the environment variable holding a token that /metrics then requires (Authorization: Bearer)",
        default_text="none: /metrics answers any same-origin request",
    ),
    Setting(
        "capture.mode",
        "mode",
        None,
        "replication, poll (SELECT only), auto (replication where allowed, else poll) or direct (the "
        "aggregate SQL on every source per request); a source's own mode wins, but not over direct "
        "or --mode",
        choices=tuple(MODES),
        option="--mode",
        default_text="the sources' own mode when they share one, else `replication`",
    ),
    Setting(
        "capture.slot_prefix",
        "string",
        "pisa_pulse",
        "the replication slots' names start with it (pisa_pulse_alb)",
    ),
    Setting(
        "capture.state_dir",
        "path",
        ".",
        "where the checkpoint lives; relative to the settings file",
        default_text="the settings file's folder",
    ),
    Setting(
        "capture.poll_interval",
        "seconds",
        0.25,
        "poll mode: seconds between two polls of a source",
        least=0.05,
        most=86_400,
    ),
    Setting(
        "capture.reconcile_interval",
        "seconds",
        30.0,
        "poll mode: seconds between two reconciliations (they find updates; longer for sources over "
        "about 30,000 rows, whose polls reconcile at most about 256 rows each)",
        least=1,
        most=86_400,
    ),
    Setting(
        "publish.to",
        "list",
        (),
        "where serve also publishes, one target or a list: dynamodb://TABLE (the aggregates, for the "
        "Lambda handler pisa_pulse.aws.handler), s3://BUCKET/PREFIX (the dashboard and the charts without "
        "parameters, for static hosting); docs/deploy.md; credentials and region from the standard AWS "
        "chain",
        default_text="none: serve publishes nowhere",
    ),
    Setting(
        "publish.interval",
        "seconds",
        1.0,
        "seconds between two publications (each writes only what changed: the touched hours and the sums)",
        least=0.2,
        most=3600,
    ),
    Setting(
        "history.store",
        "string",
        "duckdb",
        "where serve appends what the charts showed each minute (README, History): duckdb (history.duckdb "
        "in capture.state_dir), duckdb:PATH, a postgresql:// DSN, or none",
        echo="redacted",
    ),
    Setting(
        "history.retention_days",
        "integer",
        30,
        "days of minutes the history store keeps (older ones are deleted once a day)",
        least=1,
        most=3650,
    ),
    Setting("sources[].name", "string", None, "the PISA country code of the database (alb)"),
    Setting(
        "sources[].dsn",
        "string",
        None,
        "postgresql:// URL of the country database; TLS options pass through to libpq",
        echo="redacted",
    ),
    Setting(
        "sources[].password_env",
        "string",
        None,
        "the environment variable that holds the DSN's password (so no file holds it)",
        default_text="none: the DSN (or a passfile) has the password",
        echo="hidden",
    ),
    Setting(
        "sources[].mode",
        "mode",
        None,
        "this source's own capture mode (replication, poll or auto)",
        choices=tuple(SOURCE_MODES),
        default_text="`capture.mode`",
    ),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}


def _default(name: str) -> Any:
    return BY_NAME[name].default


@dataclass(frozen=True)
class ServerSettings:
    """Where the HTTP server listens."""

    host: str = _default("server.host")
    port: int = _default("server.port")
    max_requests: int = _default("server.max_requests")
    max_connections: int = _default("server.max_connections")
    max_streams: int = _default("server.max_streams")
    request_timeout: float = _default("server.request_timeout")
    allowed_hosts: tuple[str, ...] = _default("server.allowed_hosts")
    chart_origins: tuple[str, ...] = _default("server.chart_origins")
    metrics_token_env: str | None = None
    metrics_token: Secret | None = None


@dataclass(frozen=True)
class Settings:
    """Everything `serve` needs (its repr shows no password: each `Source` holds its as a `Secret`)."""

    sources: tuple[Source, ...]
    mode: str  # the capture mode of the settings; each source says its own (`Source.mode`)
    state_dir: Path
    slot_prefix: str = _default("capture.slot_prefix")
    server: ServerSettings = ServerSettings()
    poll_interval: float = _default("capture.poll_interval")
    reconcile_interval: float = _default("capture.reconcile_interval")
    publish_to: tuple[str, ...] = ()  # dynamodb://TABLE, s3://BUCKET/PREFIX (aws/targets.py)
    publish_interval: float = _default("publish.interval")
    # "none": no history (history/store.py); a DSN may carry a password: not in the repr
    history_store: str = field(default=_default("history.store"), repr=False)
    history_retention_days: int = _default("history.retention_days")


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
    _only(raw, {"server", "capture", "publish", "history", "sources"} | _WRITTEN_BY_SOURCES_UP, "")
    server_raw = _table(raw, "server")
    capture_raw = _table(raw, "capture")
    publish_raw = _table(raw, "publish")
    history_raw = _table(raw, "history")
    _only(server_raw, _keys("server"), "server.")
    _only(capture_raw, _keys("capture"), "capture.")
    _only(publish_raw, _keys("publish"), "publish.")
    _only(history_raw, _keys("history"), "history.")
    server = ServerSettings(
        host=host or _value(server_raw, "server.host"),
        port=_value({"port": port} if port is not None else server_raw, "server.port"),
        max_requests=_value(server_raw, "server.max_requests"),
        max_connections=_value(server_raw, "server.max_connections"),
        max_streams=_value(server_raw, "server.max_streams"),
        request_timeout=_value(server_raw, "server.request_timeout"),
        allowed_hosts=_value(server_raw, "server.allowed_hosts"),
        chart_origins=_origins(_value(server_raw, "server.chart_origins")),
        **_metrics_token(server_raw),
    )
    sources = _sources(raw.get("sources"))
    modes = {s.mode for s in sources}
    shared = modes.pop() if len(modes) == 1 and None not in modes else "replication"
    if mode:
        default = _value({"mode": mode}, "capture.mode", "--mode")
    else:
        default = _value(capture_raw, "capture.mode", default=shared)
    for i, s in enumerate(sources):
        if s.mode is not None and s.mode != default:
            _value({"mode": s.mode}, "sources[].mode", f"sources[{i}].mode")
    # --mode and direct mode apply to every source; otherwise a source's own mode wins.
    every = bool(mode) or default == "direct"
    state = Path(_value(capture_raw, "capture.state_dir"))
    if isinstance(publish_raw.get("to"), str):  # one target
        publish_raw = {**publish_raw, "to": [publish_raw["to"]]}
    publish_to = tuple(target_of(url) for url in _value(publish_raw, "publish.to"))
    if publish_to and default == "direct":
        raise PisaPulseError(
            "publish.to needs the aggregates, which direct mode does not keep",
            "use capture mode replication, poll or auto, or remove [publish]",
        )
    return Settings(
        sources=tuple(
            Source(s.name, s.dsn, default if every or s.mode is None else s.mode, s.password) for s in sources
        ),
        mode=default,
        state_dir=state if state.is_absolute() else (path.parent / state).resolve(),
        slot_prefix=_value(capture_raw, "capture.slot_prefix"),
        server=server,
        poll_interval=_value(capture_raw, "capture.poll_interval"),
        reconcile_interval=_value(capture_raw, "capture.reconcile_interval"),
        publish_to=publish_to,
        publish_interval=_value(publish_raw, "publish.interval"),
        history_store=_history_store(_value(history_raw, "history.store")),
        history_retention_days=_value(history_raw, "history.retention_days"),
    )


def effective(settings: Settings) -> dict[str, Any]:
    """The settings in force, as `/api/status` shows them: every row of the table whose `echo` allows
    it (DSNs with their passwords redacted; `password_env` never)."""
    values: dict[str, Any] = {
        "server.host": settings.server.host,
        "server.port": settings.server.port,
        "server.max_requests": settings.server.max_requests,
        "server.max_connections": settings.server.max_connections,
        "server.max_streams": settings.server.max_streams,
        "server.request_timeout": settings.server.request_timeout,
        "server.allowed_hosts": list(settings.server.allowed_hosts),
        "server.chart_origins": list(settings.server.chart_origins),
        "server.metrics_token_env": settings.server.metrics_token_env,
        "capture.mode": settings.mode,
        "capture.slot_prefix": settings.slot_prefix,
        "capture.state_dir": str(settings.state_dir),
        "capture.poll_interval": settings.poll_interval,
        "capture.reconcile_interval": settings.reconcile_interval,
        "publish.to": list(settings.publish_to),
        "publish.interval": settings.publish_interval,
        "history.store": settings.history_store,
        "history.retention_days": settings.history_retention_days,
    }
    body: dict[str, Any] = {
        "server": {},
        "capture": {},
        "publish": {},
        "history": {},
        "sources": [{} for _ in settings.sources],
    }
    for row in SETTINGS:
        if row.echo == "hidden":
            continue
        if row.table != "sources":
            value = values[row.name]
            body[row.table][row.key] = (
                scrub(value) if row.echo == "redacted" and isinstance(value, str) else value
            )
            continue
        for entry, source in zip(body["sources"], settings.sources, strict=True):
            value = getattr(source, row.key)
            entry[row.key] = scrub(value) if row.echo == "redacted" else value
    return body


def markdown_table() -> str:
    """The settings reference of the README, from the table (tests/test_docs.py checks they agree)."""
    lines = ["| setting | value | default | overridden by | what it does |", "|---|---|---|---|---|"]
    for row in SETTINGS:
        override = f"`serve {row.option}`" if row.option else (f"`${row.env}`" if row.env else "")
        lines.append(f"| `{row.name}` | {row.valid} | {row.shown_default} | {override} | {row.help} |")
    return "\n".join(lines) + "\n"


def _history_store(value: str) -> str:
    """`history.store`, checked here so that a typo stops serve before it starts."""
    if value == "none" or value == "duckdb" or value.startswith(("duckdb:", "postgresql://", "postgres://")):
        return value
    raise PisaPulseError(
        f"history.store {value!r} is neither duckdb, duckdb:PATH, a postgresql:// DSN nor none",
        'write e.g. store = "duckdb" or store = "postgresql://analyst@warehouse/pisa"',
    )


def _keys(table: str) -> set[str]:
    return {row.key for row in SETTINGS if row.table == table}


def _value(raw: dict[str, Any], name: str, where: str | None = None, default: Any = None) -> Any:
    """`raw`'s value of setting `name` (its default when absent), checked against its row."""
    row = BY_NAME[name]
    where = where or name.replace("[]", "")
    if row.key not in raw:
        value = row.default if default is None else default
        if value is None:
            raise PisaPulseError(f"{where} is missing", f"add {row.key} = ... to the settings")
        return value
    value = raw[row.key]
    if row.choices:
        if value not in row.choices:
            raise PisaPulseError(f"{where} {value!r} is unknown", f"use {row.valid}")
        return value
    if row.kind == "list":
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise PisaPulseError(
                f"{where} = {value!r} is not {row.valid}", f'write e.g. {row.key} = ["a", "b"]'
            )
        return tuple(value)
    number = row.kind in ("integer", "seconds")
    kinds = {"integer": int, "seconds": int | float}.get(row.kind, str)
    fits = isinstance(value, kinds) and not isinstance(value, bool)
    if fits and number and row.least is not None and row.most is not None:
        fits = row.least <= value <= row.most
    if not fits:
        example = f"{row.key} = {row.default!r}" if row.default is not None else f"{row.key} as {row.valid}"
        raise PisaPulseError(f"{where} = {value!r} is not {row.valid}", f"write e.g. {example}")
    return float(value) if row.kind == "seconds" else value


@dataclass(frozen=True)
class _Entry:
    name: str
    dsn: str
    mode: str | None
    password: Secret | None


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
        _only(entry, _keys("sources"), where)
        name = _value(entry, "sources[].name", f"{where}name").lower()
        if name.upper() not in known:
            raise PisaPulseError(f"{where}name {name!r} is not a PISA 2018 country code", "use e.g. alb")
        dsn = _value(entry, "sources[].dsn", f"{where}dsn")
        if urlsplit(dsn).scheme not in ("postgresql", "postgres"):
            raise PisaPulseError(
                f"{where}dsn is not a postgresql:// URL", "write it as postgresql://user@host/db"
            )
        password = None
        if "password_env" in entry:
            env = _value(entry, "sources[].password_env", f"{where}password_env")
            password = _password(env, where)
        own = entry.get("mode")  # checked against the capture mode once that is known
        if own is not None and not isinstance(own, str):
            raise PisaPulseError(f"{where}mode = {own!r} is not a string", 'write e.g. mode = "poll"')
        result.append(_Entry(name, dsn, own, password))
    names = [s.name for s in result]
    if len(set(names)) != len(names):
        raise PisaPulseError("[[sources]] names a country twice", "keep one entry per country database")
    return result


def _origins(origins: tuple[str, ...]) -> tuple[str, ...]:
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise PisaPulseError(
                f"server.chart_origins has {origin!r}, which is not an origin",
                "write scheme://host[:port] with nothing after it, e.g. https://pisa.example.org",
            )
    return tuple(o.rstrip("/") for o in origins)


def _metrics_token(raw: dict[str, Any]) -> dict[str, Any]:
    if "metrics_token_env" not in raw:
        return {}
    env = _value(raw, "server.metrics_token_env")
    token = os.environ.get(env)
    if not token:
        raise PisaPulseError(
            f"server.metrics_token_env names {env}, which is not set", f"export {env} before serving"
        )
    return {"metrics_token_env": env, "metrics_token": Secret(token)}


def _password(env: str, where: str) -> Secret:
    password = os.environ.get(env)
    if password is None:
        raise PisaPulseError(
            f"{where}password_env names {env}, which is not set", f"export {env} before serving"
        )
    return Secret(password)


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
