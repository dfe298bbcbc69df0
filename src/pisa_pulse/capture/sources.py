"""One `CapturedSource` per configured source, as its mode says (the only place that chooses)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pisa_pulse.capture.contract import CapturedSource, Mode
from pisa_pulse.capture.polled import PolledSource
from pisa_pulse.capture.replicated import ReplicatedSource, ReplicationLoop, slot_name
from pisa_pulse.sources.config import Source


def captured_sources(
    sources: Sequence[Source],
    slot_prefix: str,
    poll_interval: float,
    reconcile_interval: float,
    claim: Callable[[str], bool] | None = None,
) -> list[CapturedSource]:
    """Polled sources for `mode = "poll"`; the others replicated (auto ones may turn to polling),
    all replicated ones read by one shared select loop; `claim(name)` says whether a replicated source
    may end another process's hold on its slot."""
    loop = ReplicationLoop()
    result: list[CapturedSource] = []
    for src in sources:
        if src.mode == Mode.POLL:
            result.append(PolledSource(src, poll_interval, reconcile_interval))
        else:
            slot = slot_name(slot_prefix, src)
            taken = None if claim is None else (lambda name=src.name: claim(name))
            result.append(ReplicatedSource(src, slot, loop, poll_interval, reconcile_interval, claim=taken))
    return result
