"""The traffic controls on a real network: token files, the loopback control endpoint, remote hosts.

- Files that hold a secret are replaced atomically at 0600, whatever was there (a file of mode 0644,
  a symlink to elsewhere): nothing is written through the link, and the old mode is not kept.
- The traffic's control endpoint drops a client that stalls, closes connections past its cap, and
  refuses a Content-Length that is not 0 to 1024 (a negative one once meant "read to the end").
- `empty` truncates only sources of the embedded cluster, never a `--dsn` server's.
- Traffic controls refuse a non-loopback `--host` unless `--allow-remote-control`.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pisa_pulse import cli
from pisa_pulse.api.traffic import TOKEN_FILE, new_token
from pisa_pulse.cli_serve import check_control_host
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.secret import write_private
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources import control
from pisa_pulse.sources.traffic import Traffic

GIVEN_SERVER = cfg.SourcesConfig(
    schema="slim", seed=1, sources=(cfg.Source("alb", "postgresql://u@db.example.org/alb"),)
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("write", ["token", "config", "plain"])
def test_secret_files_replace_a_0644_file_and_a_symlink(tmp_path: Path, write: str) -> None:
    def written(path: Path) -> str:
        if write == "token":
            return new_token(path.parent)
        if write == "config":
            cfg.save(path.parent, GIVEN_SERVER)
            return "db.example.org"
        write_private(path, "s3cret-value\n")
        return "s3cret-value"

    name = {"token": TOKEN_FILE, "config": cfg.CONFIG_NAME, "plain": "secret.txt"}[write]
    path = tmp_path / name
    path.write_text("old\n")
    path.chmod(0o644)
    value = written(path)
    assert _mode(path) == 0o600 and value in path.read_text()
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not yours\n")
    elsewhere.chmod(0o644)
    path.unlink()
    path.symlink_to(elsewhere)
    value = written(path)
    assert not path.is_symlink() and _mode(path) == 0o600 and value in path.read_text()
    assert elsewhere.read_text() == "not yours\n" and _mode(elsewhere) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "elsewhere.txt"])  # no temp left


@pytest.fixture
def endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, int]]:
    monkeypatch.setattr(control._Handler, "timeout", 5.0)  # the read timeout, shorter for the test
    with control.ControlEndpoint(Traffic(GIVEN_SERVER, rate=0), tmp_path):
        yield tmp_path, json.loads((tmp_path / control.STATE_FILE).read_text())["port"]


def _raw(port: int, request: bytes, timeout: float = 30) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def _token(data_dir: Path) -> str:
    return str(json.loads((data_dir / control.STATE_FILE).read_text())["token"])


@pytest.mark.server
@pytest.mark.parametrize("length", ["-1", "1025", "abc", "99999999999999999999"])
def test_the_control_endpoint_refuses_a_bad_content_length(endpoint: tuple[Path, int], length: str) -> None:
    data_dir, port = endpoint
    head = f"POST /rate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {_token(data_dir)}\r\n"
    answer = _raw(port, f"{head}Content-Length: {length}\r\nConnection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.0 400") and b"rate" in answer


@pytest.mark.server
def test_the_control_endpoint_drops_a_stalled_client_and_caps_its_threads(endpoint: tuple[Path, int]) -> None:
    data_dir, port = endpoint
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(control.MAX_CLIENTS)]
    try:
        for sock in stalled:
            sock.sendall(b"GET /status HTTP/1.1\r\nHost: 127")  # half a request, then nothing
        # Connections are accepted in order, so these eight hold every slot when the next one comes.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as extra:
            extra.sendall(b"GET /status HTTP/1.1\r\n\r\n")
            assert extra.recv(100) == b""  # past the cap: closed unanswered
        for sock in stalled:  # dropped by the read timeout (5 s here), well before recv's own 30 s
            assert sock.recv(100) == b""
    finally:
        for sock in stalled:
            sock.close()
    assert control.send(data_dir, "status")["rate"] == 0  # the slots came back


@pytest.mark.server
def test_empty_is_refused_for_a_server_given_with_dsn(endpoint: tuple[Path, int]) -> None:
    data_dir, _ = endpoint
    with pytest.raises(control.TrafficRefused, match="given with --dsn"):
        control.send(data_dir, "empty", {"country": "alb"})


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "pisa.example.org"])
def test_traffic_controls_refuse_a_remote_host_unless_allowed(host: str) -> None:
    with pytest.raises(PisaPulseError, match=f"--host {host} would send their token.*--allow-remote-control"):
        check_control_host(host, allowed=False)
    check_control_host(host, allowed=True)


@pytest.mark.parametrize("host", [None, "127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_traffic_controls_run_on_loopback(host: str | None) -> None:
    check_control_host(host, allowed=False)


def test_serve_with_controls_on_a_remote_host_stops_before_listening(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg.save(tmp_path, GIVEN_SERVER)
    argv = ["serve", "--data-dir", str(tmp_path), "--host", "0.0.0.0", "--traffic-control"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--allow-remote-control" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / TOKEN_FILE).exists() and os.listdir(tmp_path) == [cfg.CONFIG_NAME]
