"""The Airflow DAGs of deploy/airflow/, in Apache Airflow's own virtual environment (.venv-airflow,
which `make test` installs from deploy/airflow/requirements.txt): the folder loads with no import
errors and the DAGs keep to their schedule's rules; then Airflow's own test runner runs the minute
DAG once against real sources, and the history store afterwards equals the independent oracle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pisa_pulse.sources import config as cfg
from tests.conftest import SharedServer
from tests.test_sync import store_equals_the_oracle

ROOT = Path(__file__).parent.parent
DAGS = ROOT / "deploy" / "airflow"
AIRFLOW = ROOT / ".venv-airflow" / "bin"
INSPECT = """
import json, sys
from airflow.models.dagbag import DagBag
bag = DagBag(sys.argv[1])
dags = {
    dag_id: {
        "schedule_s": dag.timetable.delta.total_seconds(),
        "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs,
        "timeouts_s": [t.execution_timeout.total_seconds() for t in dag.tasks],
        "retries": [t.retries for t in dag.tasks],
        "commands": [t.bash_command for t in dag.tasks],
    }
    for dag_id, dag in bag.dags.items()
}
print(json.dumps({"errors": {str(k): str(v) for k, v in bag.import_errors.items()}, "dags": dags}))
"""


@pytest.fixture
def airflow_env(tmp_path: Path) -> dict[str, str]:
    """The environment of Airflow's commands: a home of its own, this folder of DAGs, no examples."""
    if not (AIRFLOW / "airflow").exists():
        pytest.fail(
            f"{AIRFLOW}/airflow is missing: `make test` installs it (deploy/airflow/requirements.txt)"
        )
    return {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PISA_PULSE_BIN": str(Path(sys.executable).parent / "pisa-pulse"),
    }


def test_the_dag_folder_loads_and_keeps_to_the_schedule_rules(airflow_env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(AIRFLOW / "python"), "-c", INSPECT, str(DAGS)],
        env=airflow_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["errors"] == {}
    assert set(found["dags"]) == {"pisa_pulse_sync_minute", "pisa_pulse_sync_hourly"}
    for dag in found["dags"].values():
        assert dag["catchup"] is False and dag["max_active_runs"] == 1
        assert all(0 < timeout < dag["schedule_s"] for timeout in dag["timeouts_s"])
        assert all(retries >= 1 for retries in dag["retries"])
        assert all(" sync --once --config " in command for command in dag["commands"])
    assert found["dags"]["pisa_pulse_sync_minute"]["schedule_s"] == 60


def test_airflow_runs_the_dag_once_and_the_store_equals_the_oracle(
    airflow_env: dict[str, str], shared: SharedServer, new_dir: Path, tmp_path: Path
) -> None:
    config = shared.up(new_dir, countries="alb,arg", schema="slim", rows_per_country=120, messy=0.05)
    state = tmp_path / "state"
    settings = tmp_path / "sync.toml"
    settings.write_text(
        cfg.config_path(new_dir).read_text()
        + f'\n[capture]\nslot_prefix = "{shared.slot_prefix}"\nstate_dir = "{state}"\n'
    )
    env = {**airflow_env, "PISA_PULSE_SETTINGS": str(settings)}
    migrated = subprocess.run(
        [str(AIRFLOW / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300
    )
    assert migrated.returncode == 0, migrated.stdout[-2000:] + migrated.stderr[-2000:]
    ran = subprocess.run(
        [str(AIRFLOW / "airflow"), "dags", "test", "pisa_pulse_sync_minute"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    store_equals_the_oracle(state, config)
