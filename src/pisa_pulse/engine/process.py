"""The capture process: capture and engine in a process of their own, publishing to the feed.

`serve` starts it as `python -m pisa_pulse.engine.process FD`, writes its `EngineConfig` to the
child's standard input (so no password is ever on a command line) and reads the feed from the pipe
end FD. The process runs the pipeline until SIGTERM, then checkpoints and exits 0; it ignores SIGINT
(Ctrl+C reaches the whole process group: the HTTP process decides when capture stops). When the
HTTP process is gone its next message fails (BrokenPipeError) and it stops the same way, so it never
outlives the server by more than a beat.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import threading
import time
from typing import BinaryIO

from pisa_pulse.engine import feed
from pisa_pulse.engine.pipeline import Pipeline
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.terminal import setup_logging

log = logging.getLogger(__name__)


def publish(pipeline: Pipeline, pipe: BinaryIO, changed: threading.Event, stop: threading.Event) -> None:
    """Send the pipeline's parts as they change (see `feed`), until `stop` or the reader is gone."""
    last_status = 0.0
    full = True
    try:
        while not stop.is_set():
            now = time.monotonic()
            status = None
            if now - last_status >= feed.STATUS_INTERVAL:
                status, last_status = pipeline.status(), now
            as_of = pipeline.as_of()  # before the parts: they hold at least everything up to it
            changed.clear()  # before the parts: a change after this is in them or sets it again
            parts = pipeline.take_parts(full)
            feed.write(pipe, feed.Update(as_of, parts, full, status))
            full, sent = False, time.monotonic()
            if changed.wait(feed.BEAT):
                # At once, unless the last message went less than COALESCE ago: then what arrives
                # meanwhile goes in one message (at most 1 / COALESCE messages a second).
                time.sleep(max(0.0, feed.COALESCE - (time.monotonic() - sent)))
    except (BrokenPipeError, OSError) as exc:
        log.info("the server is gone (%s): stopping capture", exc)
        stop.set()


def main(argv: list[str]) -> int:
    """Run capture and engine, publishing on pipe `argv[0]`, until SIGTERM."""
    config = pickle.load(sys.stdin.buffer)
    if not isinstance(config, feed.EngineConfig):
        raise TypeError("the capture process expects an EngineConfig on its standard input")
    setup_logging(config.log_level)
    stop, changed = threading.Event(), threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        pipeline = Pipeline(
            config.sources,
            config.state_dir,
            slot_prefix=config.slot_prefix,
            poll_interval=config.poll_interval,
            reconcile_interval=config.reconcile_interval,
            on_change=changed.set,
        )
    except PisaPulseError as exc:  # e.g. a checkpoint it cannot open: one line, and serve retries
        log.error("capture cannot start: %s", exc)
        return 2
    with os.fdopen(int(argv[0]), "wb") as pipe:
        publisher = threading.Thread(
            target=publish, args=(pipeline, pipe, changed, stop), name="publish", daemon=True
        )
        publisher.start()
        pipeline.run(stop)
        publisher.join(timeout=1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
