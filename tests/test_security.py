"""Secrets stay secret and floods are bounded: `serve` as a subprocess, everything it shows inspected.

- A source's password (from `password_env`) and the traffic token never appear in anything a user
  or a log collector sees: stdout, stderr at debug level, `/api/status`, `/metrics`, error bodies.
- `[server] max_connections` bounds the open connections: past it a request is answered 503 at once,
  and the server serves again as soon as they close.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pisa_pulse.api.traffic import TOKEN_FILE
from tests.conftest import SharedServer

pytestmark = pytest.mark.server  # both tests start `serve` (the flood test without a cluster)

PASSWORD = "Hunter2-s3cret-!@"


def fetch(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def start(args: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen[str], str]:
    """`pisa-pulse --log-level debug serve ARGS` with stdout and stderr in `log`; returns its URL."""
    out = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pisa_pulse", "--log-level", "debug", "serve", *args, "--port", "0"],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
    )
    deadline = time.monotonic() + 30
    while not (found := re.search(r"at (http://127\.0\.0\.1:\d+/)", log.read_text())):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return proc, found.group(1)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


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
    proc, url = start(
        ["--config", str(settings), "--data-dir", str(new_dir), "--traffic-control"],
        {"ALB_PW": PASSWORD},
        log,
    )
    try:
        token = (new_dir / TOKEN_FILE).read_text().strip()
        deadline = time.monotonic() + 30
        while "password authentication failed" not in fetch(url + "api/status")[1]:
            assert time.monotonic() < deadline, fetch(url + "api/status")[1]
            time.sleep(0.2)
        seen = [fetch(url + path)[1] for path in ("api/status", "metrics", "api/health", "api", "nope")]
        seen.append(fetch(url + "api/traffic", token="wrong-" + token)[1])
        seen.append(fetch(url + "api/traffic?token=" + token)[1])
    finally:
        stop(proc)
    seen.append(log.read_text())
    assert "reconnecting" in seen[0] and "source=alb" in seen[-1]  # the failure is reported ...
    for text in seen:
        assert PASSWORD not in text and token not in text  # ... without the secrets


def test_a_flood_of_connections_gets_503_not_a_collapse(tmp_path: Path) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(
        '[server]\nmax_connections = 8\n[capture]\nmode = "direct"\n'
        '[[sources]]\nname = "alb"\ndsn = "postgresql://nobody@127.0.0.1:1/alb"\n'
    )
    proc, url = start(["--config", str(settings)], {}, tmp_path / "serve.log")
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    try:
        assert fetch(url + "api")[0] == 200
        idle = [socket.create_connection((host, int(port))) for _ in range(20)]
        try:
            time.sleep(0.3)
            status, body = fetch(url + "api")
            assert status == 503, body
        finally:
            for s in idle:
                s.close()
        deadline = time.monotonic() + 10
        while fetch(url + "api")[0] != 200:
            assert time.monotonic() < deadline, "did not recover after the flood"
            time.sleep(0.1)
        assert json.loads(fetch(url + "api")[1])["name"] == "pisa-pulse"
    finally:
        stop(proc)
