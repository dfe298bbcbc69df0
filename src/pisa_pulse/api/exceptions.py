"""HTTP errors as types that carry their status, under the project's one root exception.

A handler raises `NotFound(...)`, `BadRequest(...)`, ...; the app's one exception handler turns any
`HttpError` into the one error shape (`{"error": {"status": 404, "message": "..."}}`, see
responses.py) with the error's status. The message is the usual "problem; fix" of `PisaPulseError`.
"""

from __future__ import annotations

from typing import ClassVar

from pisa_pulse.errors import PisaPulseError


class HttpError(PisaPulseError):
    """An error answered with `status` (a subclass per status)."""

    status: ClassVar[int] = 500


class BadRequest(HttpError):
    """A query parameter or body the API cannot use."""

    status = 400


class Unauthorized(HttpError):
    """A missing or wrong token."""

    status = 401


class NotFound(HttpError):
    """No such route or chart."""

    status = 404


class MethodNotAllowed(HttpError):
    """The route exists, not with this method."""

    status = 405


class ServiceUnavailable(HttpError):
    """Something the request needs is down (the traffic's control endpoint, say)."""

    status = 503
