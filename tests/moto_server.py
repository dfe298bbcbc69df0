"""moto in server mode on 127.0.0.1: a real HTTP endpoint for DynamoDB and S3 (boto3 unmodified), for
the tests (tests/test_aws.py) and the benchmarks (bench/aws_bench.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from pisa_pulse.cli import stop_process
from pisa_pulse.sources.cluster import free_port

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def running_moto(log: Path, table: str, timeout: float = 60) -> Iterator[str]:
    """moto_server until the block ends (its output in `log`), and this process's AWS settings, and
    the handler's table, pointing at it meanwhile: children started inside inherit them."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    binary = Path(sysconfig.get_path("scripts")) / "moto_server"
    with log.open("wb") as out:
        process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not answer: {log.read_text(errors='replace')[-1000:]}")
            time.sleep(0.1)
        with mock.patch.dict(os.environ, AWS_ENDPOINT_URL=url, PISA_PULSE_TABLE=table, **AWS_ENV):
            yield url
    finally:
        stop_process(process, 30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/moto-api/", timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False
