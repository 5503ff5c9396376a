"""Readers for the deployment files (Dockerfile, docker-compose.yml, docker/*.sh) used by tests.

They turn each file into plain data (instructions, services, command lines) so that the tests can
check the deployment's promises without a Docker daemon, and resolve every ``movierec ...`` command
a container runs against the real command line.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
BOOTSTRAP = ROOT / "docker" / "bootstrap.sh"
# Where the Dockerfile installs docker/bootstrap.sh, i.e. the name compose runs it by.
BOOTSTRAP_COMMAND = "movierec-bootstrap"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword (upper case) and its argument text."""

    keyword: str
    value: str
    stage: int  # 0 for the first FROM, 1 for the second, ...


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Parse a Dockerfile into instructions, joining ``\\`` continuations and dropping comments."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, value = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, value.strip(), stage))
    assert not pending, "the Dockerfile ends inside a line continuation"
    return instructions


def exec_form(value: str) -> list[str]:
    """The argument list of an exec-form (JSON array) CMD/ENTRYPOINT/HEALTHCHECK CMD."""
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), value
    return parsed


def compose() -> dict[str, Any]:
    """docker-compose.yml as data (YAML anchors and merge keys resolved by the loader)."""
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def service_commands(services: dict[str, Any]) -> dict[str, list[str]]:
    """Each service's command as an argument list (services without a command are left out)."""
    commands: dict[str, list[str]] = {}
    for name, service in services.items():
        command = service.get("command")
        if command is None:
            continue
        commands[name] = list(command) if isinstance(command, list) else shlex.split(command)
    return commands


_SHELL_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def expand(word: str, variables: dict[str, str]) -> str:
    """Substitute ``$NAME``, ``${NAME}`` and ``${NAME:-default}`` as the shell would."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2)
        if name in variables:
            return variables[name]
        if default is not None:
            return default
        raise KeyError(f"no value for ${name} in {word!r}")

    return _SHELL_VARIABLE.sub(substitute, word)


_ASSIGNMENT = re.compile(r"^(\w+)=(\S.*)$")


def script_commands(path: Path, variables: dict[str, str]) -> list[list[str]]:
    """The ``movierec ...`` command lines of a shell script, in order, variables substituted.

    ``variables`` holds the environment; the script's own ``name=value`` lines are followed.
    """
    variables = dict(variables)
    commands: list[list[str]] = []
    for raw in path.read_text().splitlines():
        words = shlex.split(raw, comments=True)
        assignment = _ASSIGNMENT.match(words[0]) if len(words) == 1 else None
        if assignment:
            variables[assignment[1]] = expand(assignment[2], variables)
            continue
        if words[:1] == ["exec"]:
            words = words[1:]
        if words[:1] == ["movierec"]:
            commands.append([expand(w, variables) for w in words])
    return commands


class CommandLineError(Exception):
    """A command line the ``movierec`` command would refuse (unknown command, option...)."""


def resolve(argv: list[str]) -> Any:
    """Parse ``movierec ...`` with the real command line, as the shell would run it.

    Walks the groups to the leaf command (``resolve_command``) and builds its context
    (``make_context``), so a misspelt command, an unknown option or a missing argument raises
    ``CommandLineError``; nothing is executed. Returns the leaf command's context. Works with
    Typer's own command classes and with plain click ones (duck typing on their methods).
    """
    from app.cli import cli

    if not argv or argv[0] != "movierec":
        raise CommandLineError(f"not a movierec command: {argv}")
    command: Any = typer.main.get_command(cli)
    name, args, parent = "movierec", list(argv[1:]), None
    try:
        while hasattr(command, "resolve_command"):  # a group: find the subcommand
            ctx = command.context_class(command, info_name=name, parent=parent)
            if not args:
                raise CommandLineError(f"`{' '.join(argv)}` names a group, not a command")
            found_name, found, args = command.resolve_command(ctx, args)
            name, command, parent = found_name, found, ctx
        return command.make_context(name, args, parent=parent)
    except CommandLineError:
        raise
    except Exception as exc:
        if not hasattr(exc, "format_message"):  # not a usage error: a bug worth seeing
            raise
        raise CommandLineError(f"`{' '.join(argv)}`: {exc.format_message()}") from exc
