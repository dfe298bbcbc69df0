"""The sources config file and DSN helpers (no database needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pisa_pulse.errors import PisaPulseError
from pisa_pulse.pisa2018 import DEFAULT_COUNTRIES, countries, select_countries
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.schema import column_names


def test_with_database_keeps_server_and_options() -> None:
    dsn = "postgresql://u:pw@h:5/postgres?passfile=/x&connect_timeout=3"
    assert cfg.with_database(dsn, "alb") == "postgresql://u:pw@h:5/alb?passfile=/x&connect_timeout=3"
    with pytest.raises(PisaPulseError, match="not a URL"):
        cfg.with_database("host=h dbname=x", "alb")


def test_save_and_load_round_trip_privately(tmp_path: Path) -> None:
    config = cfg.SourcesConfig(
        schema="slim",
        seed=3,
        sources=(cfg.Source("alb", "postgresql://u@h/alb"),),
        cluster=cfg.ClusterSpec("/c", "/bin", 5555, "pisa", None),
    )
    path = cfg.save(tmp_path, config)
    assert path.stat().st_mode & 0o777 == 0o600
    assert cfg.load(tmp_path) == config


def test_a_given_servers_password_is_kept_beside_its_dsns_not_in_them(tmp_path: Path) -> None:
    config = cfg.SourcesConfig(
        schema="full",
        seed=3,
        sources=(
            cfg.Source("alb", "postgresql://u:s3cret-1@h/alb"),
            cfg.Source("arg", "postgresql://u@h/arg"),
        ),
        admin_dsn="postgresql://u:s3cret-1@h/postgres?sslmode=require",
    )
    saved = cfg.save(tmp_path, config).read_text()
    assert 'password = "s3cret-1"' in saved and 'admin_password = "s3cret-1"' in saved
    assert saved.count("s3cret-1") == 2  # never inside a dsn
    loaded = cfg.load(tmp_path)
    assert loaded == config and loaded.admin_dsn == "postgresql://u@h/postgres?sslmode=require"
    assert [s.password and s.password.reveal() for s in loaded.sources] == ["s3cret-1", None]


def test_a_broken_config_names_the_file_and_the_fix(tmp_path: Path) -> None:
    cfg.config_path(tmp_path).write_text('schema = "wide"\nseed = 1\nsources = []\n')
    with pytest.raises(PisaPulseError, match=r"sources\.toml is not a valid sources config.*sources up"):
        cfg.load(tmp_path)


def test_country_selection() -> None:
    assert [c.code for c in select_countries(None)] == list(DEFAULT_COUNTRIES)
    assert len(select_countries("all")) == 79 == len(countries())
    assert [c.code for c in select_countries(" alb, ARG ,alb")] == ["ALB", "ARG"]
    with pytest.raises(PisaPulseError, match="unknown country code ZZZ"):
        select_countries("alb,zzz")


def test_schemas_are_full_width_and_slim() -> None:
    full, slim = column_names("full"), column_names("slim")
    assert len(full) == 1119 and full[0] == "id"
    assert set(slim) < set(full) and len(slim) == 102
    assert [c for c in full if c in slim] == list(slim)  # slim keeps file order


def test_a_source_never_shows_its_password() -> None:
    source = cfg.Source("alb", "postgresql://ann:s3cr%40t@db:5432/alb?sslmode=require&password=pw2", "poll")
    for text in (repr(source), str(source), f"{source}", repr((source,)), source.dsn):
        assert "s3cr" not in text and "pw2" not in text
    assert source.dsn == "postgresql://ann@db:5432/alb?sslmode=require"
    assert source.password is not None and source.password.reveal() == "pw2"  # the query's wins


def test_a_bad_schema_in_the_config_is_a_pisa_pulse_error(tmp_path: Path) -> None:
    cfg.config_path(tmp_path).write_text('schema = "wide"\nseed = 1\nsources = []\n')
    with pytest.raises(PisaPulseError, match="schema must be one of"):
        cfg.load(tmp_path)
