"""Property test of the chart API against its own OpenAPI document (schemathesis over a live pipeline).

The document is the one the app serves at /api/openapi.json. For every operation in it, schemathesis
generates requests the document calls valid and requests it calls invalid (wrong types, out-of-range
windows), and runs its default response checks on each answer: no 5xx; a status code the document
lists; the documented content type, headers and body schema; valid input accepted and invalid input
rejected with a 4xx. The app runs in-process behind starlette's TestClient, whose lifespan starts and
stops the real pipeline over three real sources. Generation is derandomized, so a failure repeats.
"""

from __future__ import annotations

from pathlib import Path

import hypothesis
import schemathesis
from starlette.testclient import TestClient

from pisa_pulse.api.app import create_app
from pisa_pulse.api.settings import Settings
from pisa_pulse.api.snapshots import LiveSnapshots
from tests.conftest import LOCAL, SharedServer, wait_for

EXAMPLES = 50  # per operation and kind of data: the whole test takes about ten seconds
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
        case.validate_response(client.request(**request))

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
        operations = [
            schema[path][method.upper()] for path in document["paths"] for method in document["paths"][path]
        ]
        assert len(operations) >= 10
        for operation in operations:
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                failure = _first_failure(operation, client, mode)
                if failure is not None:
                    failures[f"{operation.label}, {mode.value} data"] = failure
    assert not failures, "\n\n".join(f"== {where}\n{text}" for where, text in failures.items())
