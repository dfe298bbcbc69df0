"""Where a process spends its time: py-spy samples it while a benchmark runs.

`py-spy record --nonblocking --format raw` writes one collapsed stack per line with its sample
count (`frame;frame;frame N`); we read the leaf frame of each (the function running when sampled)
and report the functions with the largest shares, pisa_pulse's and the libraries' alike.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TOP = 8


@contextmanager
def sampled(pid: int, seconds: float, into: dict[str, Any]) -> Iterator[None]:
    """Sample `pid` for up to `seconds` while the block runs; fills `into` with the top functions."""
    beside = Path(sys.executable).parent / "py-spy"  # the venv's, when its bin/ is not on PATH
    py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("the benchmarks profile with py-spy: pip install -e '.[dev]'")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stacks.txt"
        command = [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
        command += ["--rate", "200", "--nonblocking", "--format", "raw", "--output", str(out)]
        recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            yield
        finally:
            recorder.send_signal(signal.SIGINT)  # py-spy writes what it has on Ctrl+C
            _, err = recorder.communicate(timeout=30)
        if not out.exists():
            into["error"] = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            return
        into.update(top_functions(out.read_text()))


def top_functions(stacks: str) -> dict[str, Any]:
    """The leaf functions with the most samples in py-spy's raw output, as shares of all samples."""
    leaves: Counter[str] = Counter()
    for line in stacks.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaves[_short(stack.rsplit(";", 1)[-1])] += int(count)
    total = sum(leaves.values())
    return {
        "samples": total,
        "top": [{"function": f, "share": round(n / total, 3)} for f, n in leaves.most_common(TOP)]
        if total
        else [],
    }


def _short(frame: str) -> str:
    """`function (path/to/module.py:123)` -> `function (module.py)`."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')').rsplit(':', 1)[0]).name})" if where else name
