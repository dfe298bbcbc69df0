"""The docs and the dashboard agree with the tables they describe (no server needed).

- Settings (like datasette's `test_settings_are_documented`): every row of `api.settings.SETTINGS` is
  in the README's settings reference with its default, the reference is the table's own rendering,
  and `serve --help` says each overridable setting's help and default.
- Charts: the registry (`api.charts.REGISTRY`), the app's routes, the OpenAPI document, the `/api`
  index and `/api/charts` list the same charts, and the dashboard's files hold no chart list of their
  own (no chart name or path) and no country table: it builds its cards from the server's answer.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from pisa_pulse.api import charts, settings
from pisa_pulse.api.app import create_app
from pisa_pulse.cli import build_parser
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.pisa2018 import countries
from pisa_pulse.web import static_dir
from tests.conftest import LOCAL
from tests.test_api import FixedSnapshots, served_paths

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_row(name: str) -> str:
    rows = [line for line in README.read_text().splitlines() if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1, f"README has {len(rows)} rows for setting {name}"
    return rows[0]


@pytest.mark.parametrize("row", settings.SETTINGS, ids=lambda row: row.name)
def test_settings_are_documented(row: settings.Setting) -> None:
    cells = [cell.strip() for cell in readme_row(row.name).strip("|").split(" | ")]
    assert cells[2] == row.shown_default and row.help in cells[4]


def test_the_readme_settings_reference_is_the_table_rendered() -> None:
    text = README.read_text()
    assert settings.markdown_table() in text, (
        "README's settings reference is stale: paste the output of "
        "`python -c 'from pisa_pulse.api.settings import markdown_table; print(markdown_table())'`"
    )
    documented = set(re.findall(r"^\| `([a-z_.\[\]]+)` \|", text, re.MULTILINE))
    assert documented >= {row.name for row in settings.SETTINGS}


def test_every_setting_is_a_key_the_settings_file_accepts(tmp_path: Path) -> None:
    """The table is what validation knows: an unknown key's error lists exactly the table's keys."""
    for table in ("server", "capture"):
        path = tmp_path / "settings.toml"
        path.write_text(f"[{table}]\nnope = 1\n[[sources]]\nname = 'alb'\ndsn = 'postgresql://a@b/alb'\n")
        with pytest.raises(PisaPulseError) as info:
            settings.load(path)
        known = {row.key for row in settings.SETTINGS if row.table == table}
        assert str(info.value).endswith(f"known here: {', '.join(sorted(known))}")


def test_serve_help_takes_help_and_defaults_from_the_table() -> None:
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    serve = commands.choices["serve"]  # type: ignore[index]
    text = " ".join(serve.format_help().split())
    overridable = [row for row in settings.SETTINGS if row.option]
    assert {row.option for row in overridable} == {"--host", "--port", "--mode"}
    for row in overridable:
        assert f"{row.help} (setting {row.name}; default {row.shown_default.replace('`', '')})" in text


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(FixedSnapshots(None)), base_url=LOCAL)


def test_registry_routes_openapi_and_index_agree(client: TestClient) -> None:
    names = [chart.name for chart in charts.REGISTRY]
    assert list(charts.CHARTS) == names and len(set(names)) == len(names)
    index = client.get("/api").json()
    assert [c["name"] for c in index["charts"]] == names
    assert client.get("/api/charts").json() == {"charts": index["charts"]}
    for chart, entry in zip(charts.REGISTRY, index["charts"], strict=True):
        assert entry["path"] == chart.path and entry["title"] == chart.title and entry["description"]
        assert (
            entry["per_country"] == ("countries" in entry["parameters"]) == (chart.name in charts.PER_COUNTRY)
        )
        assert client.get(chart.path).status_code == 200
    paths = client.get("/api/openapi.json").json()["paths"]
    assert {path for path in paths if path.startswith("/api/charts/")} == {c.path for c in charts.REGISTRY}
    assert set(paths) == served_paths(client.app)  # type: ignore[arg-type]
    for chart in charts.REGISTRY:
        operation = paths[chart.path]["get"]
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == chart.schema
        documented = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
        assert documented == set(chart.parameters)


def test_countries_come_from_the_pisa_2018_data(client: TestClient) -> None:
    listed = client.get("/api/countries").json()["countries"]
    assert listed == client.get("/api").json()["countries"]
    assert [c["code"] for c in listed] == list(countries()) and len(listed) == 79
    by_code = {c["code"]: c for c in listed}
    assert by_code["ALB"] == {"code": "ALB", "name": "Albania", "iso": "008"}
    assert by_code["KSV"]["iso"] is None and by_code["QCY"]["iso"] == "196"


def dashboard_files() -> dict[str, str]:
    root = static_dir()
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.suffix in (".html", ".js", ".css") and "vendor" not in path.parts
    }


def test_the_dashboard_holds_no_chart_list_and_no_country_table(client: TestClient) -> None:
    files = dashboard_files()
    assert "index.html" in files and "js/main.js" in files
    served = client.get("/").text
    assert served == files["index.html"]
    for name, text in files.items():
        assert "api/charts" not in text, f"{name} names a chart path"
        for chart in charts.REGISTRY:
            if "-" in chart.name:  # the one-word names are also words of the page
                assert chart.name not in text, f"{name} names chart {chart.name}"
            if " " in chart.title:  # likewise
                assert chart.title not in text, f"{name} has the title of chart {chart.name}"
        assert "Albania" not in text and "Kosovo" not in text, f"{name} keeps country names"
    assert not (static_dir() / "js" / "countries.js").exists()


def test_the_dashboard_has_a_view_for_every_contract() -> None:
    files = dashboard_files()
    templates = set(re.findall(r'<template data-contract="([a-z-]+)">', files["index.html"]))
    views = set(re.findall(r'^\s*\["([a-z-]+)", \{ View:', files["js/views/index.js"], re.MULTILINE))
    contracts = {chart.contract for chart in charts.REGISTRY}
    assert contracts == templates == views
