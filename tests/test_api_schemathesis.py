"""Property test of the chart API against its own OpenAPI document (schemathesis over a live pipeline).

The document is the one the app serves at /api/openapi.json. For every operation in it, schemathesis
generates requests the document calls valid and requests it calls invalid (wrong types, out-of-range
windows), and runs its default response checks on each answer: no 5xx; a status code the document
lists; the documented content type, headers and body schema; valid input accepted and invalid input
rejected with a 4xx. The app runs in-process behind starlette's TestClient, whose lifespan starts and
stops the real pipeline over three real sources. Generation is derandomized, so a failure repeats.

The history's routes take either `at`, or `from` and `to`, with at most 10,080 points: rules between
parameters that OpenAPI 3.0 states only in words. A schema-valid request that breaks one (as worked
out here, apart from the app's code) must answer 400 in the error shape naming it, and passes every
other check; any other schema-valid request must still be accepted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hypothesis
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance
from starlette.testclient import TestClient

from pisa_pulse.api.app import create_app
from pisa_pulse.api.settings import Settings
from pisa_pulse.api.snapshots import LiveSnapshots
from tests.conftest import LOCAL, SharedServer, wait_for

EXAMPLES = 50  # per operation and kind of data: about half a minute in all, the history's routes most
ROWS = 3 * 200
BASE_URL = LOCAL  # the TestClient's


def _wait_until_streaming(client: TestClient) -> None:
    wait_for(
        lambda: (
            {s["state"] for s in client.get("/api/status").json()["sources"]} == {"streaming"}
            and client.get("/api/charts/submissions").json()["count"] == ROWS
        ),
        timeout=90,
        what="the pipeline streaming the three sources, copied",
        detail=lambda: client.get("/api/status").json(),
    )


def _minute(text: str) -> int | None:
    """An ISO 8601 time's minute since the epoch in UTC (None: it names no moment there)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return int(
            (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).timestamp() // 60
        )
    except (ValueError, OverflowError):
        return None


def broken_history_rule(query: Mapping[str, Any]) -> str | None:
    """What the 400 of a schema-valid history request says, when it breaks a rule between parameters:
    either at, or from and to; to not before from; at most 10,080 points (None: it breaks none)."""
    given = {name for name in ("at", "from", "to") if name in query}
    if "at" in given:
        return "both given" if given != {"at"} else None
    if given != {"from", "to"}:
        return "at is missing"
    first, last = _minute(query["from"]), _minute(query["to"])
    if first is None or last is None:
        return None  # a 404: it names no moment
    if last < first:
        return "is before from"
    n, unit = re.fullmatch(r"(\d+)([mhd])", query.get("step", "1h")).groups()  # type: ignore[union-attr]
    step = int(n) * {"m": 1, "h": 60, "d": 1440}[unit]
    return "more than the 10,080" if (last - first) // step + 1 > 10_080 else None


def _first_failure(
    operation: schemathesis.APIOperation, client: TestClient, mode: schemathesis.GenerationMode
) -> str | None:
    """The smallest failing request of `operation` with `mode` data as schemathesis reports it (with curl)."""

    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(mode))
    def conforms(case: schemathesis.Case) -> None:
        request = case.as_transport_kwargs(base_url=BASE_URL)
        if not request.get("cookies"):
            request.pop("cookies", None)  # none are documented, and httpx warns on per-request cookies
        response = client.request(**request)
        rule = None
        if mode is schemathesis.GenerationMode.POSITIVE and operation.path.startswith("/api/history/"):
            rule = broken_history_rule(case.query or {})
        if rule is None:
            case.validate_response(response)
            return
        message = response.json().get("error", {}).get("message", "") if response.status_code == 400 else ""
        assert rule in message and "; " in message, f"{case.query}: {response.status_code} {response.text}"
        case.validate_response(response, excluded_checks=[positive_data_acceptance])

    try:
        conforms()
    except hypothesis.errors.Unsatisfiable:
        # Only invalid data can run out: an operation whose parameters are all free strings (or that has
        # none) has no request that its document calls invalid.
        assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
    except (AssertionError, schemathesis.errors.FailureGroup) as exc:
        return str(exc)
    return None


def test_every_operation_keeps_its_documented_contract(new_dir: Path, shared: SharedServer) -> None:
    config = shared.up(new_dir, countries="alb,arg,aus", schema="slim", rows_per_country=200)
    state = new_dir.parent / "state"
    snapshots = LiveSnapshots(Settings(config.sources, "replication", state, slot_prefix=shared.slot_prefix))
    failures = {}
    with TestClient(create_app(snapshots), base_url=LOCAL) as client:
        _wait_until_streaming(client)
        document = client.get("/api/openapi.json").json()
        schema = schemathesis.openapi.from_dict(document)
        # The live route's stream never ends, and TestClient answers only once the app has (test_live.py
        # reads it over a socket and checks every event's body against its chart's schema).
        operations = [
            schema[path][method.upper()]
            for path in document["paths"]
            for method in document["paths"][path]
            if path != "/api/live"
        ]
        assert len(operations) >= 10
        for operation in operations:
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                failure = _first_failure(operation, client, mode)
                if failure is not None:
                    failures[f"{operation.label}, {mode.value} data"] = failure
    assert not failures, "\n\n".join(f"== {where}\n{text}" for where, text in failures.items())
