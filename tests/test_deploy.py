"""The deployment files are checked here as far as this machine can: the SAM template by cfn-lint (and
its handler is a real callable of ours); a broken copy fails the same check, so the check is live."""

from __future__ import annotations

import importlib
import subprocess
import sysconfig
from pathlib import Path

DEPLOY = Path(__file__).parent.parent / "deploy"
CFN_LINT = Path(sysconfig.get_path("scripts")) / "cfn-lint"


def cfn_lint(template: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CFN_LINT), str(template)], capture_output=True, text=True, timeout=120)


def test_the_sam_template_passes_cfn_lint_and_a_broken_one_does_not(tmp_path: Path) -> None:
    template = DEPLOY / "template.yaml"
    done = cfn_lint(template)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(template.read_text().replace("AWS::DynamoDB::Table", "AWS::DynamoDB::Tabel"))
    assert cfn_lint(broken).returncode != 0


def test_the_templates_handler_is_ours() -> None:
    text = (DEPLOY / "template.yaml").read_text()
    handler = next(
        line.split(":", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("Handler:")
    )
    module, _, name = handler.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))
