"""The original design as a Lambda function: the aggregate SQL on every source on every request.

`handle(event, context)` answers the same routes and events as `handler.handle`, but each chart
request runs direct mode's SQL (api/direct.py, engine/oracle.py) on all the sources, as the course
teams' functions did, so the two can be deployed side by side and compared. Its cost grows with the
rows and with every poll. The sources come from the settings file named by `PISA_PULSE_SETTINGS`
(its `[[sources]]`, passwords from their `password_env`); it imports psycopg2.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pisa_pulse.api import settings as api_settings
from pisa_pulse.api.bodies import Snapshot
from pisa_pulse.api.direct import DirectSnapshots
from pisa_pulse.aws.handler import Charts, respond
from pisa_pulse.errors import PisaPulseError

_CHARTS: Charts | None = None


def from_sources(direct: DirectSnapshots) -> Callable[[frozenset[str], range], Snapshot]:
    """Snapshots queried from the sources now, only the chart's columns."""

    def snapshot(columns: frozenset[str], hours: range) -> Snapshot:
        return direct.snapshot(columns)

    return snapshot


def _charts() -> Charts:
    global _CHARTS
    if _CHARTS is None:
        path = os.environ.get("PISA_PULSE_SETTINGS")
        if not path:
            raise PisaPulseError(
                "PISA_PULSE_SETTINGS is not set", "point it at a settings file with [[sources]]"
            )
        settings = api_settings.load(Path(path), mode="direct")
        _CHARTS = Charts(from_sources(DirectSnapshots(settings.sources)))
    return _CHARTS


def handle(event: Any, context: Any = None) -> dict[str, Any]:
    """The Lambda entry point (`pisa_pulse.aws.direct_handler.handle`)."""
    return respond(_charts, event)
