"""How the API answers: compact JSON bytes, the one error shape and the data headers of a chart.

Every error, on every route, is `{"error": {"status": 400, "message": "..."}}`. Every chart body says
which snapshot it comes from and how old its data is:

    ETag: "<hash of the body>"    X-Snapshot-Version: 1234
    X-Data-As-Of: 2026-11-28T12:00:00.120Z    X-Data-Age-Ms: 35
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from starlette.responses import Response

from pisa_pulse.api.snapshots import Snapshot

JSON = "application/json"
DATA_HEADERS = ("ETag", "X-Snapshot-Version", "X-Data-As-Of", "X-Data-Age-Ms")


def json_bytes(body: Any) -> bytes:
    """`body` as compact UTF-8 JSON."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer."""
    return Response(json_bytes(body), status, headers=headers, media_type=JSON)


def error_response(status: int, message: str) -> Response:
    """The one error shape."""
    return json_response({"error": {"status": status, "message": message}}, status)


def iso_time(unix: float) -> str:
    """Unix seconds as an ISO 8601 UTC time to the millisecond (`2026-11-28T12:00:00.120Z`)."""
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def data_headers(snap: Snapshot, etag: str, now: float) -> dict[str, str]:
    """The headers of a chart answer (a 200 or a 304): its ETag, snapshot and freshness."""
    known = bool(snap.as_of)
    return {
        "ETag": etag,
        "X-Snapshot-Version": str(snap.version),
        "X-Data-As-Of": iso_time(snap.as_of) if known else "unknown",
        "X-Data-Age-Ms": str(max(0, round((now - snap.as_of) * 1000))) if known else "unknown",
        "Cache-Control": "no-cache",
    }
