"""The serve settings file: valid files load, every bad one fails naming its key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from pisa_pulse.api import settings
from pisa_pulse.aws.targets import bucket_of
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.sources import config as cfg

SOURCE = '[[sources]]\nname = "alb"\ndsn = "postgresql://reader@db.example.org/alb"\n'


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def test_a_full_file_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALB_PW", "s3cr:t@")
    path = _write(
        tmp_path,
        '[server]\nhost = "0.0.0.0"\nport = 9000\n[capture]\nmode = "direct"\nstate_dir = "st"\n'
        + SOURCE
        + 'password_env = "ALB_PW"\n',
    )
    s = settings.load(path)
    assert (s.server.host, s.server.port, s.mode) == ("0.0.0.0", 9000, "direct")
    assert s.state_dir == tmp_path / "st"
    assert s.sources[0].dsn == "postgresql://reader@db.example.org/alb"
    assert s.sources[0].password is not None and s.sources[0].password.reveal() == "s3cr:t@"
    assert s.sources[0].mode == "direct"
    assert settings.load(path, host="127.0.0.1", port=0).server == settings.ServerSettings("127.0.0.1", 0)


def test_the_sources_config_of_sources_up_is_a_settings_file(tmp_path: Path) -> None:
    config = cfg.SourcesConfig("slim", 42, (cfg.Source("alb", "postgresql://pisa@127.0.0.1:5/alb"),))
    path = cfg.save(tmp_path, config)
    s = settings.load(path)
    assert s.mode == "replication" and s.sources == config.sources and s.state_dir == tmp_path
    assert s.server == settings.ServerSettings()


def test_modes_per_source_and_overall(tmp_path: Path) -> None:
    arg = '[[sources]]\nname = "arg"\ndsn = "postgresql://reader@db.example.org/arg"\nmode = "poll"\n'
    path = _write(
        tmp_path, "[capture]\nmode = 'auto'\npoll_interval = 0.5\nreconcile_interval = 10\n" + SOURCE + arg
    )
    s = settings.load(path)
    assert [src.mode for src in s.sources] == ["auto", "poll"]  # a source's own mode wins
    assert (s.mode, s.poll_interval, s.reconcile_interval) == ("auto", 0.5, 10.0)
    assert [src.mode for src in settings.load(path, mode="replication").sources] == ["replication"] * 2
    direct = _write(tmp_path, "[capture]\nmode = 'direct'\n" + SOURCE + arg)
    assert [src.mode for src in settings.load(direct).sources] == ["direct"] * 2


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[server]\nprot = 1\n" + SOURCE, "unknown setting server.prot"),
        ("[server]\nport = '80'\n" + SOURCE, "server.port = '80' is not an integer"),
        ("[server]\nport = 70000\n" + SOURCE, "server.port = 70000 is not an integer from 0 to 65535"),
        ("[capture]\nmode = 'psychic'\n" + SOURCE, "capture.mode 'psychic' is unknown"),
        (SOURCE + 'mode = "direct"\n' + SOURCE.replace("alb", "arg"), "sources[0].mode 'direct' is unknown"),
        ("[capture]\npoll_interval = 0\n" + SOURCE, "capture.poll_interval = 0 is not a number of seconds"),
        ("[capture]\nreconcile_interval = 'often'\n" + SOURCE, "capture.reconcile_interval = 'often'"),
        ("[server]\n", "list no [[sources]]"),
        ('[publish]\nto = "s3://Bucket"\n' + SOURCE, "publish.to 's3://Bucket' is not s3://BUCKET/PREFIX"),
        ('[publish]\nto = "https://x.org"\n' + SOURCE, "publish.to 'https://x.org' is neither dynamodb://"),
        ("[publish]\nto = [1]\n" + SOURCE, "publish.to = [1] is not a list of strings"),
        ('[publish]\nto = "dynamodb://x"\n' + SOURCE, "publish.to 'dynamodb://x' is not dynamodb://TABLE"),
        (
            '[publish]\nto = "dynamodb://charts"\n[capture]\nmode = "direct"\n' + SOURCE,
            "direct mode does not",
        ),
        ("[publish]\ninterval = 0\n" + SOURCE, "publish.interval = 0 is not a number of seconds"),
        ("[publish]\nfrom = 1\n" + SOURCE, "unknown setting publish.from"),
        ('[[sources]]\nname = "zzz"\ndsn = "postgresql://a@b/c"\n', "sources[0].name 'zzz' is not a PISA"),
        ('[[sources]]\nname = "alb"\n', "sources[0].dsn is missing"),
        ('[[sources]]\nname = "alb"\ndsn = "mysql://a@b/c"\n', "sources[0].dsn is not a postgresql:// URL"),
        (SOURCE + SOURCE, "names a country twice"),
        (SOURCE + 'password_env = "PISA_PULSE_TEST_UNSET"\n', "PISA_PULSE_TEST_UNSET, which is not set"),
        ("colour = 'blue'\n" + SOURCE, "unknown setting colour"),
        ("[server\n", "not readable TOML"),
    ],
)
def test_each_bad_file_names_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(PisaPulseError) as info:
        settings.load(_write(tmp_path, text))
    message = str(info.value)
    assert problem in message and "; " in message and "\n" not in message


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PisaPulseError, match="not found"):
        settings.load(tmp_path / "nope.toml")


def test_publish_takes_one_target_or_a_list(tmp_path: Path) -> None:
    one = settings.load(_write(tmp_path, '[publish]\nto = "dynamodb://charts"\n' + SOURCE))
    assert one.publish_to == ("dynamodb://charts",)
    both = '[publish]\nto = ["dynamodb://charts", "s3://my-bucket/dash/board/"]\n' + SOURCE
    assert settings.load(_write(tmp_path, both)).publish_to == (
        "dynamodb://charts",
        "s3://my-bucket/dash/board/",
    )
    assert settings.load(_write(tmp_path, SOURCE)).publish_to == ()
    assert bucket_of("s3://my-bucket/dash/board/") == ("my-bucket", "dash/board/")
    assert bucket_of("s3://my-bucket") == bucket_of("s3://my-bucket/") == ("my-bucket", "")
