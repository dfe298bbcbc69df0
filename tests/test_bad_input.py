"""Bad input gets a one-line error naming the problem and the fix, exit 2, and destroys nothing."""

from __future__ import annotations

import os
import pwd
import socket
from pathlib import Path

import psycopg2
import pytest

from pisa_pulse.cli import main
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources import databases
from pisa_pulse.sources.cluster import free_port


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and ";" in err  # problem; fix
    return err


def test_unknown_country_code(capsys: pytest.CaptureFixture[str], new_dir: Path) -> None:
    err = _error(capsys, ["sources", "up", "--data-dir", str(new_dir), "--countries", "alb,xyz,qqq"])
    assert "XYZ" in err and "QQQ" in err
    assert not cfg.config_path(new_dir).exists()


def test_unreachable_server(capsys: pytest.CaptureFixture[str], new_dir: Path) -> None:
    dsn = f"postgresql://someone:s3cret-pw@127.0.0.1:{free_port()}/postgres"
    err = _error(capsys, ["sources", "up", "--data-dir", str(new_dir), "--dsn", dsn, "--countries", "alb"])
    assert "cannot connect" in err and "s3cret-pw" not in err
    assert not cfg.config_path(new_dir).exists()


def test_port_in_use(capsys: pytest.CaptureFixture[str], new_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = _error(capsys, ["sources", "up", "--data-dir", str(new_dir), "--port", str(port)])
    assert f"port {port}" in err and "--port" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="making a dir owned by someone else needs root")
def test_data_dir_owned_by_someone_else(capsys: pytest.CaptureFixture[str], new_dir: Path) -> None:
    new_dir.mkdir()
    (new_dir / "keep.txt").write_text("precious")
    postgres = pwd.getpwnam("postgres")
    os.chown(new_dir, postgres.pw_uid, postgres.pw_gid)
    err = _error(capsys, ["sources", "up", "--data-dir", str(new_dir), "--countries", "alb"])
    assert "belongs to another user" in err
    assert sorted(p.name for p in new_dir.iterdir()) == ["keep.txt"]


def test_database_with_another_layout_is_left_alone(
    capsys: pytest.CaptureFixture[str], slim20: cfg.SourcesConfig, new_dir: Path
) -> None:
    assert slim20.admin_dsn is None and slim20.cluster is not None
    admin = cfg.with_database(slim20.sources[0].dsn, "postgres")
    with databases.connected(admin) as conn, conn.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS mex")
        cur.execute("CREATE DATABASE mex")
    mex = cfg.with_database(admin, "mex")
    with psycopg2.connect(mex) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE responses (id int, answer text)")
        cur.execute("INSERT INTO responses VALUES (1, 'keep me')")
    password = Path(admin.split("passfile=")[1].split("&")[0]).read_text().strip().rsplit(":", 1)[1]
    dsn = f"postgresql://pisa:{password}@127.0.0.1:{slim20.cluster.port}/postgres"
    err = _error(capsys, ["sources", "up", "--data-dir", str(new_dir), "--dsn", dsn, "--countries", "mex"])
    assert "database mex" in err and password not in err
    with psycopg2.connect(mex) as conn, conn.cursor() as cur:
        cur.execute("SELECT answer FROM responses")
        assert cur.fetchall() == [("keep me",)]


def test_commands_without_sources_say_how_to_create_them(
    capsys: pytest.CaptureFixture[str], new_dir: Path
) -> None:
    for argv in (["sources", "status"], ["traffic", "--rate", "5"], ["sources", "down"]):
        err = _error(capsys, [*argv, "--data-dir", str(new_dir)])
        assert "sources up" in err


def test_steering_without_running_traffic(capsys: pytest.CaptureFixture[str], new_dir: Path) -> None:
    err = _error(capsys, ["traffic", "set", "--rate", "10", "--data-dir", str(new_dir)])
    assert "no traffic is running" in err


def test_reset_needs_confirmation_without_a_terminal(
    capsys: pytest.CaptureFixture[str], slim20: cfg.SourcesConfig, scratch: Path
) -> None:
    err = _error(capsys, ["sources", "reset", "--data-dir", str(scratch / "slim20")])
    assert "--yes" in err
    assert cfg.load(scratch / "slim20") == slim20  # nothing deleted


def test_bad_option_values_are_rejected_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["traffic", "--updates", "1.5"],
        ["traffic", "--rate", "-3"],
        ["sources", "up", "--schema", "x"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_fleet_options_are_checked_before_connecting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    nats = ["--nats", "nats://127.0.0.1:4222"]
    cases = [
        (["fleet", "status", "--nats", "http://user:s3cret-pw@127.0.0.1:4222"], "is not a NATS URL"),
        (["fleet", "status", "--nats", " , "], "names no server"),
        (["api", *nats, "--nats-creds", str(tmp_path / "missing.creds")], "--nats-creds"),
        (["fleet", "status", *nats, "--nats-prefix", "a.b"], "is not a bucket name"),
    ]
    for argv, problem in cases:
        err = _error(capsys, argv)
        assert problem in err and "s3cret-pw" not in err, err
    settings = tmp_path / "settings.toml"
    settings.write_text("[[sources]]\nname = 'alb'\ndsn = 'postgresql://a@127.0.0.1:1/alb'\n")
    err = _error(capsys, ["worker", *nats, "--config", str(settings), "--name", "w 1!"])
    assert "is not a usable worker name" in err
