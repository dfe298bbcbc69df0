"""The deployment files are checked here as far as this machine can (no container engine, no cloud
account, no systemd running): the SAM template by cfn-lint (its handler a real callable of ours), the
Dockerfile by hadolint, compose.yaml by Debian's docker-compose (`config -q`: its schema, references
and interpolation, no engine needed), each systemd unit by `systemd-analyze verify`; a broken copy of
each fails the same check, so the checks are live. Every command the image, the compose services and
the units run is a real console script and subcommand of ours with real options (or nats-server with
options its --help lists), and the compose demo's settings load with pisa-pulse's own loader."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import subprocess
import sysconfig
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML ships no type stubs

from pisa_pulse.api import settings as api_settings

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
SCRIPTS = Path(sysconfig.get_path("scripts"))
UNITS = sorted(path.relative_to(DEPLOY).as_posix() for path in (DEPLOY / "systemd").glob("*.service"))
CONSOLE_SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@dataclass(frozen=True)
class Check:
    """A deployment file, its linter's command ("{}" stands for the file) and a change that must make
    it fail."""

    name: str
    linter: tuple[str, ...]
    breakage: tuple[str, str]
    # systemd-analyze verify only warns, exit code 0, about an unknown key or a bad value: a typo in
    # a hardening option would go unnoticed, so for units any output is a failure too.
    silent: bool = False


SYSTEMD_VERIFY = ("systemd-analyze", "verify", "{}")
CHECKS = [
    Check(
        "template.yaml",
        (str(SCRIPTS / "cfn-lint"), "{}"),
        ("AWS::DynamoDB::Table", "AWS::DynamoDB::Tabel"),
    ),
    Check(
        "Dockerfile",
        (str(SCRIPTS / "hadolint"), "--no-color", "{}"),
        ("USER 10001\n", "RUN apt-get install curl\n"),
    ),
    # Debian's docker-compose 1.29.2 (Python; `docker compose` v2 needs the docker CLI): validates
    # against the compose spec without talking to an engine.
    Check(
        "compose.yaml",
        ("docker-compose", "--file", "{}", "config", "-q"),
        ("profiles: [demo]", "profile: [demo]"),
    ),
    Check("systemd/pisa-pulse-worker.service", SYSTEMD_VERIFY, ("ExecStart=/", "ExecStart="), silent=True),
    Check("systemd/pisa-pulse-api.service", SYSTEMD_VERIFY, ("ProtectSystem=", "ProtectSytem="), silent=True),
    Check("systemd/nats-server.service", SYSTEMD_VERIFY, ("[Service]", "[Servce]"), silent=True),
]


def runnable(text: str) -> str:
    """The file with each unit's Exec*= program taken from this venv: `systemd-analyze verify` fails
    on a program that does not exist, and nothing is installed in /opt/pisa-pulse or /usr/local here.
    Other files come back as they are."""
    return re.sub(r"^(Exec\w+=)/\S*/", rf"\g<1>{SCRIPTS}/", text, flags=re.MULTILINE)


@pytest.mark.parametrize("check", CHECKS, ids=[c.name for c in CHECKS])
def test_each_deployment_file_passes_its_linter_and_a_broken_copy_does_not(
    check: Check, tmp_path: Path
) -> None:
    def lint(text: str, folder: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / folder / Path(check.name).name
        path.parent.mkdir()
        path.write_text(runnable(text))
        command = [str(path) if word == "{}" else word for word in check.linter]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def passed(done: subprocess.CompletedProcess[str]) -> bool:
        return done.returncode == 0 and not (check.silent and (done.stdout or done.stderr))

    text = (DEPLOY / check.name).read_text()
    done = lint(text, "as-is")
    assert passed(done), done.stdout + done.stderr
    assert check.breakage[0] in text
    assert not passed(lint(text.replace(*check.breakage), "broken"))


@pytest.mark.parametrize("unit", UNITS)
def test_each_unit_is_hardened(unit: str) -> None:
    # --offline reads the file alone; a unit without hardening scores 9.2 of 10, these about 1.5.
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(DEPLOY / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_templates_handler_is_ours() -> None:
    text = (DEPLOY / "template.yaml").read_text()
    handler = next(
        line.split(":", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("Handler:")
    )
    module, _, name = handler.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))


# -- the commands the deployment files run -------------------------------------------------------------


def help_of(*command: str) -> str:
    """The --help of a program of this venv (and of its subcommand), which must exit 0."""
    done = subprocess.run(
        [str(SCRIPTS / command[0]), *command[1:], "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{' '.join(command)} --help: {done.stderr}"
    return done.stdout


def lists(help_text: str, option: str) -> bool:
    """Whether the help names this option (--nats, not just --nats-creds)."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text) is not None


def takes_value(help_text: str, option: str) -> bool:
    # argparse writes an option that takes a value with its metavar or choices: "--lease SECONDS".
    return re.search(rf"(?<![\w-]){re.escape(option)} [^\s-]", help_text) is not None


def assert_real_command(argv: list[str]) -> None:
    """`argv` runs one of our console scripts: its global options are in the script's --help, the
    subcommand (and sub-subcommand) in its parent's, and every --option after it in the
    subcommand's --help, which exits 0. nats-server's options must be in its --help."""
    program, *words = argv
    program = Path(program).name
    if program == "nats-server":  # the venv's binary is the version the compose file pins
        known = help_of(program)
        assert [w for w in words if w.startswith("-") and not lists(known, w.split("=")[0])] == [], argv
        return
    assert program in CONSOLE_SCRIPTS, argv
    helps = [help_of(program)]
    i = 0
    while i < len(words) and words[i].startswith("-"):  # global options, before the subcommand
        option = words[i].split("=")[0]
        assert lists(helps[0], option), argv
        i += 2 if "=" not in words[i] and takes_value(helps[0], option) else 1
    path: list[str] = []
    while i < len(words) and not words[i].startswith("-"):
        # argparse lists subcommands one a line; --help after an unknown one would still exit 0.
        assert re.search(rf"^\s+{re.escape(words[i])}\s", helps[-1], re.MULTILINE), argv
        path.append(words[i])
        helps.append(help_of(program, *path))
        i += 1
    assert path, f"{argv}: no subcommand"
    unknown = [w for w in words[i:] if w.startswith("--") and not lists(helps[-1], w.split("=")[0])]
    assert unknown == [], argv


def dockerfile_entrypoint_and_command() -> tuple[list[str], list[str]]:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()

    def instruction(name: str) -> list[str]:
        line = next(line for line in lines if line.startswith(f"{name} "))
        value: list[str] = json.loads(line[len(name) :])
        return value

    return instruction("ENTRYPOINT"), instruction("CMD")


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    return services


def commands_run() -> dict[str, list[str]]:
    """Every command the image, the compose services and the units run, by where it is written."""
    entrypoint, command = dockerfile_entrypoint_and_command()
    commands = {"Dockerfile": entrypoint + command}
    for name, service in compose_services().items():
        if "build" in service:  # deploy/Dockerfile's image
            commands[f"compose.yaml {name}"] = service.get("entrypoint", entrypoint) + service["command"]
        elif service["image"].startswith("nats:"):  # whose entrypoint runs nats-server with these options
            commands[f"compose.yaml {name}"] = ["nats-server", *service["command"]]
        # postgres's own command (-c wal_level=logical) is not ours to check
    for unit in UNITS:
        text = (DEPLOY / unit).read_text().replace("\\\n", " ")  # a line ending in \ continues
        for line in text.splitlines():
            if line.startswith("ExecStart="):
                commands[unit] = shlex.split(line.removeprefix("ExecStart="))
    return commands


COMMANDS = commands_run()


def test_the_commands_checked_include_every_file() -> None:
    assert {"Dockerfile", "compose.yaml worker-1", "compose.yaml api-1", "compose.yaml seed"} <= set(COMMANDS)
    assert set(UNITS) <= set(COMMANDS) and len(UNITS) >= 2


@pytest.mark.parametrize(("where", "argv"), list(COMMANDS.items()), ids=list(COMMANDS))
def test_each_command_run_is_a_real_console_script_with_real_options(where: str, argv: list[str]) -> None:
    assert_real_command(argv)


# -- compose: its settings and its ports ------------------------------------------------------------


def test_the_compose_settings_load_and_name_the_sources_the_demo_seeds() -> None:
    settings = api_settings.load(DEPLOY / "compose-settings.toml")
    services = compose_services()
    seed = services["seed"]["command"]
    assert [s.name for s in settings.sources] == seed[seed.index("--countries") + 1].split(",")
    assert {urlsplit(s.dsn).hostname for s in settings.sources} == {"postgres"}
    mount = "./compose-settings.toml:/etc/pisa-pulse/settings.toml:ro"
    for name in ("worker-1", "worker-2"):
        assert mount in services[name]["volumes"]
        assert services[name]["command"][services[name]["command"].index("--config") + 1] == (
            "/etc/pisa-pulse/settings.toml"
        )


def test_compose_publishes_ports_on_loopback_only_and_holds_no_password() -> None:
    services = compose_services()
    ports = [port for service in services.values() for port in service.get("ports", [])]
    assert ports and all(port.startswith("127.0.0.1:") for port in ports)
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${")
