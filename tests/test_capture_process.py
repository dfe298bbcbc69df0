"""`serve` runs capture and engine in a process of their own (engine/process.py).

Killed while traffic runs, the capture process comes back from its checkpoint: meanwhile every chart
request is answered 200 from the last snapshot, its age growing, and `/api/health` says `degraded`;
afterwards the charts equal direct mode's SQL exactly (nothing lost, nothing counted twice). The HTTP
process never loads numpy or psycopg2 (seen in /proc/PID/maps, as the kernel has it), and a stopped
`serve` leaves no capture process behind.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pisa_pulse.api import charts
from pisa_pulse.sources.traffic import Traffic
from tests.conftest import BringUp, serving, wait_for
from tests.test_serve import as_of

COUNTRIES = "alb,arg,aus"
QUERY = "?countries=ALB,ARG,AUS"


def fetch(url: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, JSON body and headers (lower-case names), for 5xx answers too."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status, body, headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        status, body, headers = exc.code, exc.read(), exc.headers
    return status, json.loads(body), {k.lower(): v for k, v in headers.items()}


def capture_of(base: str) -> dict[str, Any]:
    status: dict[str, Any] = fetch(base + "api/status")[1]["capture"]
    return status


def all_streaming(base: str) -> bool:
    body = fetch(base + "api/status")[1]
    return body["capture"]["state"] == "running" and {s["state"] for s in body["sources"]} == {"streaming"}


def loaded(pid: int) -> str:
    """The files mapped into a process: every shared library it has imported."""
    return Path(f"/proc/{pid}/maps").read_text()


class ChartPoller:
    """Requests every chart in turn until stopped, keeping each answer's status and data age."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.answers: list[tuple[str, int | str]] = []
        self.ages: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> ChartPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in charts.CHARTS:
                url = f"{self.base}api/charts/{name}" + (QUERY if name in charts.PER_COUNTRY else "")
                try:
                    with urllib.request.urlopen(url, timeout=10) as response:
                        self.answers.append((name, response.status))
                        age = response.headers["X-Data-Age-Ms"]
                        if age.isdigit():
                            self.ages.append(int(age))
                except urllib.error.HTTPError as exc:
                    self.answers.append((name, exc.code))
                except OSError as exc:  # refused, reset, timed out
                    self.answers.append((name, type(exc).__name__))
            time.sleep(0.02)


def test_sigkill_of_the_capture_process_while_traffic_runs(new_dir: Path, bring_up: BringUp) -> None:
    config = bring_up(new_dir, countries=COUNTRIES, schema="slim", rows_per_country=300, messy=0.05)
    direct_settings = new_dir.parent / "direct.toml"
    entries = "".join(f'[[sources]]\nname = "{s.name}"\ndsn = "{s.dsn}"\n\n' for s in config.sources)
    direct_settings.write_text(f'[capture]\nmode = "direct"\n\n{entries}')
    with (
        serving("--data-dir", str(new_dir)) as live_server,
        serving("--config", str(direct_settings)) as direct_server,
    ):
        live, direct = live_server.url, direct_server.url
        wait_for(lambda: all_streaming(live), timeout=90, what="every source streaming")
        assert fetch(live + "api/status")[1]["settings"]["capture"]["mode"] == "replication"  # the echo
        first = capture_of(live)["pid"]
        http_maps, capture_maps = loaded(live_server.process.pid), loaded(first)
        assert "_psycopg" in capture_maps and "numpy" in capture_maps  # the check can see them ...
        assert "_psycopg" not in http_maps and "numpy" not in http_maps  # ... and the server has neither

        traffic = Traffic(config, rate=300, updates=0.1, deletes=0.05, messy=0.05, seed=5)
        stop = threading.Event()
        writer = threading.Thread(target=traffic.run, args=(stop,))
        writer.start()
        try:
            with ChartPoller(live) as poller:
                wait_for(
                    lambda: traffic.counts.operations >= 300 and len(poller.answers) >= len(charts.CHARTS),
                    what="traffic written and every chart answered before the kill",
                    detail=lambda: (traffic.counts, len(poller.answers)),
                )
                os.kill(first, signal.SIGKILL)
                wait_for(lambda: fetch(live + "api/health")[0] == 503, what="health degraded")
                assert fetch(live + "api/health")[1]["status"] == "degraded"
                wait_for(
                    lambda: bool(poller.ages) and poller.ages[-1] > 1000,
                    timeout=60,
                    what="data age past a second",
                )
                wait_for(lambda: all_streaming(live), timeout=90, what="capture back and streaming")
                # Charts served from the new process for a while (and over 60 answers in all).
                back = len(poller.answers)
                wait_for(
                    lambda: len(poller.answers) >= max(back + 2 * len(charts.CHARTS), 61),
                    what="charts answered after the capture came back",
                )
        finally:
            stop.set()
            writer.join()
        stopped = time.time()
        again = capture_of(live)
        assert again["pid"] != first and again["restarts"] >= 1
        assert again["last_exit"] == f"killed by signal {signal.SIGKILL.value}"
        refused = [a for a in poller.answers if a[1] != 200]
        assert not refused and len(poller.answers) > 60, refused[:10]
        assert traffic.counts.updated > 5 and traffic.counts.deleted > 2

        wait_for(
            lambda: as_of(fetch(live + "api/charts/escs")[2]) > stopped,
            timeout=60,
            what="data past the end of the traffic",
        )
        for name in charts.CHARTS:
            if name == "submissions-over-time":
                continue  # SQL cannot know when rows arrived
            url = f"api/charts/{name}" + (QUERY if name in charts.PER_COUNTRY else "")
            assert fetch(live + url)[1] == fetch(direct + url)[1], name
        last = again["pid"]
    assert not Path(f"/proc/{last}").exists(), "serve stopped but left its capture process behind"
