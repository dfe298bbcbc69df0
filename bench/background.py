"""A thread that samples until its `with` block ends: the benchmarks' samplers build on it."""

from __future__ import annotations

import threading
from typing import Self


class Background:
    """Runs `run()` in a daemon thread from `__enter__` until `__exit__` sets `stopped` and joins it."""

    def __init__(self, name: str) -> None:
        self.stopped = threading.Event()
        self._thread = threading.Thread(target=self.run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self._thread.join()

    def run(self) -> None:
        """The sampling loop: return once `stopped` is set."""
        raise NotImplementedError
