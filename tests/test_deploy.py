"""The deployment files are checked here as far as this machine can (no container engine, no cloud
account): the SAM template by cfn-lint (its handler a real callable of ours), the Dockerfile by hadolint
(the command it runs a real console script and subcommand); a broken copy of each fails the same
check, so the checks are live."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

DEPLOY = Path(__file__).parent.parent / "deploy"
CFN_LINT = Path(sysconfig.get_path("scripts")) / "cfn-lint"
HADOLINT = Path(sysconfig.get_path("scripts")) / "hadolint"
ROOT = Path(__file__).parent.parent


# file, its linter's command, and a change that must make it fail
CHECKS = [
    ("template.yaml", [str(CFN_LINT)], ("AWS::DynamoDB::Table", "AWS::DynamoDB::Tabel")),
    ("Dockerfile", [str(HADOLINT), "--no-color"], ("USER 10001\n", "RUN apt-get install curl\n")),
]


@pytest.mark.parametrize(("name", "linter", "breakage"), CHECKS, ids=[c[0] for c in CHECKS])
def test_each_deployment_file_passes_its_linter_and_a_broken_copy_does_not(
    name: str, linter: list[str], breakage: tuple[str, str], tmp_path: Path
) -> None:
    def lint(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*linter, str(path)], capture_output=True, text=True, timeout=120)

    done = lint(DEPLOY / name)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (DEPLOY / name).read_text()
    assert breakage[0] in text
    broken = tmp_path / name
    broken.write_text(text.replace(*breakage))
    assert lint(broken).returncode != 0


def test_the_templates_handler_is_ours() -> None:
    text = (DEPLOY / "template.yaml").read_text()
    handler = next(
        line.split(":", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("Handler:")
    )
    module, _, name = handler.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))


def test_the_image_runs_a_real_console_script_and_subcommand() -> None:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    entrypoint = json.loads(
        next(line for line in lines if line.startswith("ENTRYPOINT"))[len("ENTRYPOINT") :]
    )
    command = json.loads(next(line for line in lines if line.startswith("CMD"))[len("CMD") :])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts
    module = scripts[entrypoint[0]].split(":")[0]
    done = subprocess.run([sys.executable, "-m", module.rsplit(".", 1)[0], command[0], "--help"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and all(
        option in done.stdout for option in command[1:] if option.startswith("--")
    )
