"""The dashboard: plain HTML, CSS and JavaScript in `static/`, served by the API at `/` (no build step).

Third-party JavaScript is vendored from the npm registry into `static/vendor/`, with its version in
the file name and its licence beside it; the page loads nothing from elsewhere.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def static_dir() -> Path:
    """The folder of the dashboard's files."""
    return Path(str(resources.files(__package__).joinpath("static")))
