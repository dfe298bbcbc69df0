"""A NATS connection as the `worker` and `api` commands open it: every server of the cluster given,
reconnecting without end, with credentials and TLS when asked.

`--nats` takes `nats://host:port` URLs (or `tls://` for TLS), comma-separated; a user and password
may be in a URL (`nats://user:secret@host:4222`) but never reach a log line (`secret.scrub`).
`--nats-creds FILE` is a NATS credentials file (JWT and NKey seed), `--nats-ca FILE` the CA that
signed the servers' certificates (the system's when absent).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pisa_pulse.errors import PisaPulseError
from pisa_pulse.fleet import PREFIX
from pisa_pulse.secret import scrub

if TYPE_CHECKING:  # the client itself only where a command connects (`connect`)
    from nats.aio.client import Client

log = logging.getLogger(__name__)

CONNECT_S = 30.0  # the first connection: past it, a clear error instead of retrying for ever


@dataclass(frozen=True)
class NatsOptions:
    """Where the cluster is and how to reach it."""

    urls: tuple[str, ...]
    creds: Path | None = None
    ca: Path | None = None
    prefix: str = PREFIX
    replicas: int | None = None  # None: as many as the cluster has servers, up to 3


def add_options(parser: argparse.ArgumentParser, creates: bool = True) -> None:
    """--nats, --nats-creds, --nats-ca and --nats-prefix (shared by worker, api and fleet), and
    --nats-replicas where the command `creates` buckets (worker, api; not `fleet status`)."""
    parser.add_argument(
        "--nats",
        required=True,
        metavar="URL[,URL...]",
        help="the NATS servers of the cluster, e.g. nats://10.0.0.1:4222,nats://10.0.0.2:4222 "
        "(tls:// for TLS)",
    )
    parser.add_argument("--nats-creds", type=Path, help="NATS credentials file (JWT and NKey seed)")
    parser.add_argument("--nats-ca", type=Path, help="CA certificate of the NATS servers (for tls://)")
    parser.add_argument(
        "--nats-prefix",
        default=PREFIX,
        help=f"start of every bucket's name, to keep deployments apart on one cluster (default {PREFIX})",
    )
    if not creates:
        return
    parser.add_argument(
        "--nats-replicas",
        type=int,
        choices=[1, 3, 5],
        help="copies of each bucket pisa-pulse creates (default: 3 on a cluster of three or more, else 1)",
    )


def options_from(args: argparse.Namespace) -> NatsOptions:
    """The options given, checked: URLs with a scheme, files that exist, a usable prefix."""
    urls = tuple(u.strip() for u in args.nats.split(",") if u.strip())
    for url in urls:
        if "://" not in url or url.split("://", 1)[0] not in {"nats", "tls", "ws", "wss"}:
            raise PisaPulseError(
                f"--nats {scrub(url)} is not a NATS URL", "write it as nats://host:4222 (tls:// for TLS)"
            )
    if not urls:
        raise PisaPulseError("--nats names no server", "pass --nats nats://host:4222[,nats://...]")
    for flag, path in (("--nats-creds", args.nats_creds), ("--nats-ca", args.nats_ca)):
        if path is not None and not path.is_file():
            raise PisaPulseError(f"{flag} {path} is not a file", f"pass {flag} with an existing file")
    prefix = args.nats_prefix
    if not prefix.replace("_", "").replace("-", "").isalnum():
        raise PisaPulseError(
            f"--nats-prefix {prefix!r} is not a bucket name", "use letters, digits, '_' and '-' only"
        )
    return NatsOptions(urls, args.nats_creds, args.nats_ca, prefix, getattr(args, "nats_replicas", None))


async def _on_error(error: Exception) -> None:
    # One line each, scrubbed: nats-py's default logs a traceback for every refused reconnect.
    log.debug("nats: %s", scrub(repr(error)))


async def _on_disconnected() -> None:
    log.warning("nats: disconnected; reconnecting to another server of the cluster")


async def _on_reconnected() -> None:
    log.info("nats: reconnected")


async def connect(options: NatsOptions, name: str) -> Client:
    """A client that reconnects without end once connected; a clear error when no server answers
    within `CONNECT_S`."""
    import nats  # here: see TYPE_CHECKING above
    import nats.errors

    tls = None
    if options.ca is not None or any(u.startswith("tls://") for u in options.urls):
        tls = ssl.create_default_context(cafile=str(options.ca) if options.ca else None)
    try:
        return await asyncio.wait_for(
            nats.connect(
                servers=list(options.urls),
                name=name,
                connect_timeout=5,
                reconnect_time_wait=0.2,
                max_reconnect_attempts=-1,
                user_credentials=str(options.creds) if options.creds else None,
                tls=tls,
                error_cb=_on_error,
                disconnected_cb=_on_disconnected,
                reconnected_cb=_on_reconnected,
            ),
            CONNECT_S,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        shown = ",".join(scrub(u) for u in options.urls)
        raise PisaPulseError(
            f"no NATS server answered at {shown} within {CONNECT_S:g} s ({scrub(type(exc).__name__)})",
            "start the NATS servers (docs/deploy.md) or correct --nats",
        ) from None


def replicas_for(client: Client, options: NatsOptions) -> int:
    """The replica count of new buckets: as given, else the servers the client knows (those passed and
    those the cluster announced), up to 3: 1 on one server, 3 on three or more."""
    if options.replicas is not None:
        return options.replicas
    return max(1, min(3, len({(u.hostname, u.port) for u in client.servers})))
