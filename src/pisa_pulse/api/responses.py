"""How the API answers through starlette: compact JSON and the one error shape on every route,
`{"error": {"status": 400, "message": "..."}}` (the bytes themselves: bodies.py).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from pisa_pulse.api.bodies import error_body, json_bytes

JSON = "application/json"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer."""
    return Response(json_bytes(body), status, headers=headers, media_type=JSON)


def error_response(status: int, message: str) -> Response:
    """The one error shape."""
    return Response(error_body(status, message), status, media_type=JSON)
