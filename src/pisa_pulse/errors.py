"""The one root exception of pisa-pulse.

Every error a user can cause (bad input, an unreachable server, a busy port) is raised as a
`PisaPulseError` whose message is one line naming the problem and the fix. The CLI prints it as
`error: <message>` and exits non-zero; anything else is a bug and keeps its traceback.

Every exception the project raises derives from it; an area with errors of its own keeps them in
its `exceptions.py` (`api/exceptions.py`: `HttpError` and one subclass per HTTP status, which the
API answers in its one error shape).
"""

from __future__ import annotations


class PisaPulseError(Exception):
    """A problem the user can fix; the message says what it is and how."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        message = problem if fix is None else f"{problem}; {fix}"
        super().__init__(message)
        self.problem = problem
        self.fix = fix
