"""Secrets stay secret: `serve` as a subprocess, everything it shows inspected.

A source's password (from `password_env`) and the traffic token never appear in anything a user or a
log collector sees: stdout, stderr at debug level, `/api/status`, `/metrics`, error bodies.
(Slow and hostile clients: tests/test_slow_clients.py.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest

from pisa_pulse.api import settings as api_settings
from pisa_pulse.api.traffic import TOKEN_FILE
from tests.conftest import SharedServer, stop, wait_for

pytestmark = pytest.mark.server  # both tests start `serve` (the flood test without a cluster)

PASSWORD = "Hunter2-s3cret-!@"


def fetch(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@contextmanager
def serving_logged(args: list[str], env: dict[str, str], log: Path) -> Iterator[str]:
    """`pisa-pulse --log-level debug serve ARGS` with stdout and stderr in `log`, until the block ends;
    yields its URL. Then `stop` and, if the block passed, a clean exit (0)."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pisa_pulse", "--log-level", "debug", "serve", *args, "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **env},
        )
    try:

        def url() -> str | None:
            assert proc.poll() is None, f"serve ended before serving: {log.read_text()}"
            found = re.search(r"at (http://127\.0\.0\.1:\d+/)", log.read_text())
            return found and found.group(1)

        yield wait_for(url, what="serve's URL in its log", detail=log.read_text)
    finally:
        code = stop(proc)
    assert code == 0, f"serve exited with {code} when stopped: {log.read_text()}"


def test_passwords_and_tokens_never_show(new_dir: Path, shared: SharedServer, tmp_path: Path) -> None:
    shared.up(new_dir, countries="alb", schema="slim", rows_per_country=20)
    settings = tmp_path / "settings.toml"
    settings.write_text(
        '[capture]\nstate_dir = "state"\n[[sources]]\nname = "alb"\n'
        f'dsn = "postgresql://pisa@127.0.0.1:{shared.port}/{shared.prefix}alb?connect_timeout=3"\n'
        'password_env = "ALB_PW"\n'
    )
    log = tmp_path / "serve.log"
    # The wrong password for a real server: the source fails, and says why, again and again.
    with serving_logged(
        ["--config", str(settings), "--data-dir", str(new_dir), "--traffic-control"],
        {"ALB_PW": PASSWORD},
        log,
    ) as url:
        token = (new_dir / TOKEN_FILE).read_text().strip()
        wait_for(
            lambda: "password authentication failed" in fetch(url + "api/status")[1],
            what="the failed password in /api/status",
            detail=lambda: fetch(url + "api/status")[1],
        )
        seen = [fetch(url + path)[1] for path in ("api/status", "metrics", "api/health", "api", "nope")]
        seen.append(fetch(url + "api/traffic", token="wrong-" + token)[1])
        seen.append(fetch(url + "api/traffic?token=" + token)[1])
    seen.append(log.read_text())
    assert "reconnecting" in seen[0] and "source=alb" in seen[-1]  # the failure is reported ...
    for text in seen:
        assert PASSWORD not in text and token not in text  # ... without the secrets


# Each shape a password takes in a source's settings, with the wrong password for a real server, so
# that the source fails and says why, in every place a user or a log collector sees.
WRONG = {
    "alb": ("postgresql://pisa:Wrong-user-info-1@{host}/{db}alb?connect_timeout=3", "Wrong-user-info-1"),
    "arg": ("postgresql://:Wrong-no-user-2@{host}/{db}arg?connect_timeout=3", "Wrong-no-user-2"),
    "aut": ("postgresql://pisa:p%40ss%3AWrong-3@{host}/{db}aut?connect_timeout=3", "p@ss:Wrong-3"),
    "bel": ("postgresql://pisa@{host}/{db}bel?password=Wrong-query-4&connect_timeout=3", "Wrong-query-4"),
    "bra": (
        "postgresql://pisa@{host}/{db}bra?sslmode=disable&password=Wrong-mid-5&connect_timeout=3",
        "Wrong-mid-5",
    ),
    "can": ("postgresql://pisa@{host}/{db}can?connect_timeout=3", "Wrong-env-6"),  # from password_env
}


@pytest.mark.parametrize("mode", ["replication", "poll", "direct"])
def test_no_password_shape_shows_anywhere(
    shared: SharedServer, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [f'[capture]\nmode = "{mode}"\nstate_dir = "state"\n']
    for name, (dsn, _) in WRONG.items():
        lines.append(f'[[sources]]\nname = "{name}"\n')
        lines.append(f'dsn = "{dsn.format(host=f"127.0.0.1:{shared.port}", db=shared.prefix)}"\n')
    lines.append('password_env = "CAN_PW"\n')
    settings = tmp_path / "settings.toml"
    settings.write_text("".join(lines))
    secrets = [password for _, password in WRONG.values()]
    secrets += [quote(s, safe="") for s in secrets if quote(s, safe="") != s]  # as a URL writes them
    log = tmp_path / "serve.log"
    with serving_logged(["--config", str(settings)], {"CAN_PW": "Wrong-env-6"}, log) as url:

        def failures() -> int:
            return fetch(url + "api/status")[1].count("password authentication failed")

        if mode == "direct":  # direct mode meets its sources when a chart is asked for
            fetch(url + "api/charts/escs")
        wait_for(
            lambda: failures() >= len(WRONG),
            what="every source's failed password in /api/status",
            detail=lambda: fetch(url + "api/status")[1],
        )
        seen = {
            path: fetch(url + path)[1] for path in ("api/status", "metrics", "api/health", "api/charts/escs")
        }
    seen["the log (debug level, tracebacks included)"] = log.read_text()
    monkeypatch.setenv("CAN_PW", "Wrong-env-6")
    loaded = api_settings.load(settings)
    seen["repr and str of the settings"] = f"{loaded!r} {loaded} {loaded.sources}"
    for where, text in seen.items():
        for secret in secrets:
            assert secret not in text, f"a password in {where}"
