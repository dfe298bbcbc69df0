"""The capture's errors, all under the project's root `PisaPulseError`.

- `CaptureError`: a source's stream or answers broke what the capture relies on; the source
  reconnects (with back-off) and resumes from its last handed-over position.
- `StreamOrderError`: the stream broke the protocol's order (a change outside a transaction, a
  change to a relation before its Relation message, a row without its key).
- `PgoutputError`: a pgoutput payload that does not decode.
- `SourceUnusable`: the source cannot be captured until someone changes it (no `responses` table,
  missing chart columns); retried slowly, shown as `failed`.
"""

from __future__ import annotations

from pisa_pulse.errors import PisaPulseError


class CaptureError(PisaPulseError):
    """A source's changes could not be captured; the source reconnects and resumes."""


class StreamOrderError(CaptureError):
    """The stream broke the protocol's order (see the module docstring)."""


class PgoutputError(CaptureError, ValueError):
    """A payload that is not a well-formed pgoutput (protocol version 1, text values) message."""


class SourceUnusable(CaptureError):
    """The source cannot be captured until someone changes it (no table, missing columns)."""
