"""The one root exception of pisa-pulse.

Every error a user can cause (bad input, an unreachable server, a busy port) is raised as a
`PisaPulseError` whose message is one line naming the problem and the fix. The CLI prints it as
`error: <message>` and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PisaPulseError(Exception):
    """A problem the user can fix; the message says what it is and how."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        message = problem if fix is None else f"{problem}; {fix}"
        super().__init__(message)
        self.problem = problem
        self.fix = fix
