"""Airflow DAGs that run `pisa-pulse sync --once` on a schedule: the batch form of pisa-pulse.

Two DAGs from this one file, for the two batch levels of the challenge:

- `pisa_pulse_sync_minute`: every minute (level 2: charts at most a minute old);
- `pisa_pulse_sync_hourly`: every hour (level 1: at most an hour old).

Enable one of them. Each run is one exact pass (README, "History": the checkpoint, the history
store, the publish targets) and exits 0, or 2 with one line saying what failed; a failed run is
retried, a run never overlaps the one before (`max_active_runs=1`, and `sync` itself refuses a state
dir in use), a run that hangs is stopped before the next is due (`execution_timeout`), and missed
intervals are not replayed (`catchup=False`: one pass catches up with everything anyway).

Airflow runs in a virtual environment of its own (its pins are not ours); this file imports only
Airflow. It finds pisa-pulse through two environment variables of the Airflow workers:

- `PISA_PULSE_BIN`: the `pisa-pulse` executable of pisa-pulse's own environment (default: `pisa-pulse`
  on the PATH);
- `PISA_PULSE_SETTINGS`: the settings file (README, "The chart API"), the same a `serve` would read.
"""

from __future__ import annotations

import os
import shlex
from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

BIN = os.environ.get("PISA_PULSE_BIN", "pisa-pulse")
SETTINGS = os.environ.get("PISA_PULSE_SETTINGS", "/etc/pisa-pulse/settings.toml")
# (schedule, the timeout of one run: shorter than the interval, so runs never pile up)
LEVELS = {
    "minute": (timedelta(minutes=1), timedelta(seconds=50)),
    "hourly": (timedelta(hours=1), timedelta(minutes=50)),
}

for level, (every, timeout) in LEVELS.items():
    with DAG(
        dag_id=f"pisa_pulse_sync_{level}",
        description=f"pisa-pulse sync --once every {every}: history store and publish targets up to date",
        schedule=every,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=True,
        tags=["pisa-pulse"],
        default_args={
            "retries": 2,
            "retry_delay": timedelta(seconds=10) if level == "minute" else timedelta(minutes=2),
            "execution_timeout": timeout,
        },
    ):  # a DAG made in a `with` block is registered by Airflow itself
        BashOperator(
            task_id="sync",
            bash_command=(
                f"{shlex.quote(BIN)} sync --once --config {shlex.quote(SETTINGS)} "
                f"--timeout {int(timeout.total_seconds() * 0.9)}"
            ),
        )
