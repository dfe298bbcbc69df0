"""The running traffic's control endpoint, and the client that `traffic set/pause/resume` use.

The endpoint is a tiny HTTP server bound to 127.0.0.1 on a free port. It changes what is written to
the databases, so every request needs the bearer token that the traffic process generated at start
and wrote, with its port and pid, to `<data-dir>/traffic.json` (mode 0600, removed at exit). Only a
user who can read the data dir can steer the traffic. Tokens are compared in constant time.

    GET  /status             rate, paused, achieved rate (over the last 10 s), counts
    POST /rate   {"rate": R} change the target rate (operations per second)
    POST /pause, POST /resume
    POST /empty  {"country": "alb"}  empty that source (one the traffic writes to): TRUNCATE

The endpoint runs inside the traffic's process, so the HTTP API (`api/traffic.py`) steers the traffic
and empties a source through it, and needs neither psycopg2 nor numpy: this module imports only the
standard library (the Traffic it serves is a type, imported for the type checker alone).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pisa_pulse.errors import PisaPulseError
from pisa_pulse.secret import write_private

if TYPE_CHECKING:
    from pisa_pulse.sources.traffic import Traffic

STATE_FILE = "traffic.json"
MAX_BODY = 1024
READ_TIMEOUT_S = 10  # a client that stalls mid-request is dropped after this
MAX_CLIENTS = 8  # requests handled at once; more are closed unanswered


class TrafficRefused(PisaPulseError):
    """The running traffic answered, and refused the request (a bad rate, an unknown country)."""


class _Handler(BaseHTTPRequestHandler):
    server: _ControlServer
    timeout = READ_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the traffic's own status line says what happens."""

    def do_GET(self) -> None:
        if self._authorized():
            if self.path == "/status":
                self._reply(200, self.server.traffic.status())
            else:
                self._reply(404, {"error": f"no route GET {self.path}"})

    def do_POST(self) -> None:
        if not self._authorized():
            return
        traffic = self.server.traffic
        if self.path == "/pause":
            traffic.pause()
        elif self.path == "/resume":
            traffic.resume()
        elif self.path == "/rate":
            body = self._json_body()
            rate = body.get("rate") if isinstance(body, dict) else None
            if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
                self._reply(400, {"error": 'body must be {"rate": R} with R >= 0'})
                return
            traffic.set_rate(float(rate))
        elif self.path == "/empty":
            body = self._json_body()
            country = body.get("country") if isinstance(body, dict) else None
            if not isinstance(country, str):
                self._reply(400, {"error": 'body must be {"country": "alb"}'})
                return
            try:
                emptied = traffic.empty(country)
            except PisaPulseError as exc:
                self._reply(400, {"error": str(exc)})
                return
            self._reply(200, {"emptied": [emptied]})
            return
        else:
            self._reply(404, {"error": f"no route POST {self.path}"})
            return
        self._reply(200, traffic.status())

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "")
        expected = f"Bearer {self.server.token}"
        if hmac.compare_digest(given.encode(), expected.encode()):
            return True
        self._reply(401, {"error": "missing or wrong bearer token"})
        return False

    def _json_body(self) -> Any:
        """The request's JSON body; None for a body that is not JSON, or whose Content-Length is not a
        number from 0 to MAX_BODY (never a read to the end of the stream)."""
        length = self.headers.get("Content-Length") or "0"
        if not length.isdigit() or int(length) > MAX_BODY:
            return None
        try:
            return json.loads(self.rfile.read(int(length)) or b"null")
        except ValueError:
            return None

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _ControlServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, traffic: Traffic, token: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.traffic = traffic
        self.token = token
        self._clients = threading.BoundedSemaphore(MAX_CLIENTS)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per request, at most MAX_CLIENTS at once: past that, the connection is closed."""
        if not self._clients.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._clients.release()


class ControlEndpoint:
    """Serve a Traffic's controls on loopback and advertise them in the data dir."""

    def __init__(self, traffic: Traffic, data_dir: Path) -> None:
        self.state_file = data_dir / STATE_FILE
        running = _read_state(self.state_file)
        if running is not None and _alive(running["pid"]):
            raise PisaPulseError(
                f"traffic is already running for {data_dir} (pid {running['pid']})",
                "steer it with `pisa-pulse traffic set/pause/resume`, or stop it first",
            )
        self._server = _ControlServer(traffic, secrets.token_urlsafe(32))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="control")

    @property
    def port(self) -> int:
        """The loopback port the endpoint listens on."""
        return int(self._server.server_address[1])

    def __enter__(self) -> ControlEndpoint:
        self._thread.start()
        state = {"pid": os.getpid(), "port": self.port, "token": self._server.token}
        write_private(self.state_file, json.dumps(state))
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            if (_read_state(self.state_file) or {}).get("pid") == os.getpid():
                self.state_file.unlink()


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and {"pid", "port", "token"} <= state.keys() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_pid(data_dir: Path) -> int | None:
    """The pid of the traffic running for `data_dir` (from its state file), or None."""
    state = _read_state(data_dir / STATE_FILE)
    return int(state["pid"]) if state is not None and _alive(state["pid"]) else None


def send(data_dir: Path, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Call the running traffic's control endpoint: action is status, rate, pause, resume or empty.

    Raises TrafficRefused when the traffic answers with a refusal, PisaPulseError when none answers.
    """
    state = _read_state(data_dir / STATE_FILE)
    if state is None or not _alive(state["pid"]):
        raise PisaPulseError(
            f"no traffic is running for {data_dir}",
            "start it with `pisa-pulse traffic --rate R` (same --data-dir)",
        )
    request = urllib.request.Request(
        f"http://127.0.0.1:{state['port']}/{action}",
        data=None if action == "status" else json.dumps(body or {}).encode(),
        headers={"Authorization": f"Bearer {state['token']}", "Content-Type": "application/json"},
        method="GET" if action == "status" else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        raise TrafficRefused(f"traffic control refused {action}: {detail}", "check the command") from None
    except OSError as exc:
        raise PisaPulseError(
            f"traffic control at 127.0.0.1:{state['port']} did not answer ({exc})",
            "check that the traffic process is still running",
        ) from None
