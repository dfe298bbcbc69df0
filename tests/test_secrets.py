"""Passwords as a type: taken out of every DSN shape, never shown, scrubbed from any text (no server)."""

from __future__ import annotations

import logging
import pickle
import traceback
from dataclasses import replace

import pytest

from pisa_pulse.api import settings
from pisa_pulse.secret import Secret, scrub, split_password
from pisa_pulse.sources import config as cfg

# Every shape a password takes in a DSN, with the DSN that is left once it is taken out.
SHAPES = [
    ("postgresql://ann:Pw-one-1@db:5432/alb", "postgresql://ann@db:5432/alb", "Pw-one-1"),
    ("postgresql://:Pw-two-2@db/alb", "postgresql://db/alb", "Pw-two-2"),  # no user name
    ("postgres://ann:p%40ss%3Aw0rd@db/alb", "postgres://ann@db/alb", "p@ss:w0rd"),  # percent-encoded
    ("postgresql://ann@db/alb?password=Pw-three-3", "postgresql://ann@db/alb", "Pw-three-3"),
    (
        "postgresql://ann@db/alb?sslmode=require&password=Pw-four-4&connect_timeout=3",
        "postgresql://ann@db/alb?sslmode=require&connect_timeout=3",
        "Pw-four-4",
    ),
]


@pytest.mark.parametrize(("dsn", "left", "password"), SHAPES)
def test_every_dsn_shape_gives_up_its_password(dsn: str, left: str, password: str) -> None:
    clean, secret = split_password(dsn)
    assert clean == left and secret is not None and secret.reveal() == password
    source = cfg.Source("alb", dsn)
    assert source.dsn == left and source.password == Secret(password)
    for text in (repr(source), str(source), f"{source!r:}", repr([source]), repr(source.password)):
        assert password not in text and password[-4:] not in text


def test_a_dsn_without_a_password_is_left_as_it_is() -> None:
    for dsn in ("postgresql://ann@db/alb?passfile=/x/y", "postgresql:///alb", "host=db dbname=alb"):
        assert split_password(dsn) == (dsn, None)
        assert cfg.Source("alb", dsn).password is None


def test_a_secret_shows_as_stars_everywhere_but_reveal() -> None:
    secret = Secret("hunter2-xyz")
    assert str(secret) == "***" and f"{secret}" == "***" and "hunter2" not in repr(secret)
    assert secret.reveal() == "hunter2-xyz"
    assert pickle.loads(pickle.dumps(secret)) == secret  # what crosses to the capture process


@pytest.mark.parametrize(
    "text",
    [
        "could not connect: postgresql://ann:Xy-secret-9@db/alb",
        "could not connect: postgresql://:Xy-secret-9@db/alb",
        "bad URI postgresql://ann@db/alb?sslmode=require&password=Xy-secret-9",
        "connection to host=db user=ann password=Xy-secret-9 dbname=alb failed",
        "connection to host=db password = 'Xy secret 9' dbname=alb failed",
        'libpq quoted "Xy-secret-9" somewhere',  # a literal value this process knows
    ],
)
def test_scrub_removes_shapes_and_known_values(text: str) -> None:
    Secret("Xy-secret-9")  # known to this process from now on
    scrubbed = scrub(text)
    assert "secret" not in scrubbed and "***" in scrubbed


def test_scrub_removes_a_known_value_percent_encoded_too() -> None:
    Secret("p@ss:Wd-55")
    assert scrub('invalid percent-encoded token: "p%40ss%3AWd-55"') == 'invalid percent-encoded token: "***"'


def test_scrub_leaves_text_without_secrets_alone() -> None:
    text = 'cannot connect to postgresql://ann@db:5432/alb?sslmode=require: FATAL: role "ann" does not exist'
    assert scrub(text) == text


def test_settings_keep_the_password_env_value_out_of_every_repr_log_and_traceback(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ALB_PW", "Env-pass:w@rd-77")
    path = tmp_path / "settings.toml"  # type: ignore[operator]
    path.write_text('[[sources]]\nname = "alb"\ndsn = "postgresql://ann@db/alb"\npassword_env = "ALB_PW"\n')
    loaded = settings.load(path)
    source = loaded.sources[0]
    assert source.password is not None and source.password.reveal() == "Env-pass:w@rd-77"
    assert source.dsn == "postgresql://ann@db/alb"
    logging.getLogger("pisa_pulse.test").warning("settings %s source %r", loaded, source)
    try:
        raise RuntimeError(f"failed for {source!r} with {replace(source, mode='poll')}")
    except RuntimeError:
        shown = traceback.format_exc()
    for text in (caplog.text, shown, repr(loaded), str(settings.effective(loaded))):
        assert "Env-pass" not in text and "w%40rd" not in text
