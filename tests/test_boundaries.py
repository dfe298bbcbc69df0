"""The layers' import contract (capture/__init__.py): read from the syntax tree of every module.

sources <- capture <- engine <- api: a stage may import the stages before it, never one after it,
in any form (`import x`, `from x import y`, relative imports, imports inside functions or under
TYPE_CHECKING), so that capture can move to another process or machine with the engine and without
the API.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pisa_pulse"
FORBIDDEN = {
    "capture": ("pisa_pulse.engine", "pisa_pulse.api", "pisa_pulse.cli", "pisa_pulse.web"),
    "engine": ("pisa_pulse.api", "pisa_pulse.cli", "pisa_pulse.web"),
    "sources": ("pisa_pulse.capture", "pisa_pulse.engine", "pisa_pulse.api", "pisa_pulse.cli"),
}


def imported(path: Path, package: str | None = None) -> set[str]:
    """Every module a file imports, relative imports resolved (from `package`, by default the file's
    own), wherever the import stands."""
    if package is None:
        package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_the_resolver_sees_every_form_of_import(tmp_path: Path) -> None:
    """The check itself can fail: each form below is caught."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import pisa_pulse.engine.pipeline\n"
        "from pisa_pulse import api\n"
        "from ..engine import ledger\n"
        "def f():\n    from pisa_pulse.api.app import create_app\n"
    )
    found = imported(probe, package="pisa_pulse.capture")
    expected = {"pisa_pulse.engine.pipeline", "pisa_pulse.api", "pisa_pulse.engine", "pisa_pulse.api.app"}
    assert expected <= found


@pytest.mark.parametrize("stage", sorted(FORBIDDEN))
def test_no_stage_imports_a_later_one(stage: str) -> None:
    offences = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in sorted((PACKAGE / stage).rglob("*.py"))
        for name in sorted(imported(path))
        if name.startswith(FORBIDDEN[stage])
    ]
    assert not offences, offences
