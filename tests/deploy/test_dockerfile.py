"""The Dockerfile builds a small, non-root, health-checked image with no secret inside."""

from __future__ import annotations

import re

import pytest

from tests.deploy.deployfiles import (
    BOOTSTRAP,
    DOCKERIGNORE,
    Instruction,
    dockerfile_instructions,
    exec_form,
)

SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|API_?KEY", re.IGNORECASE)


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return dockerfile_instructions()


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def test_multi_stage_with_a_slim_python_final_stage(instructions: list[Instruction]) -> None:
    froms = [i.value for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2 and froms[0].endswith(" AS builder")
    args = {
        i.value.split("=", 1)[0]: i.value.split("=", 1)[1]
        for i in instructions
        if i.keyword == "ARG" and "=" in i.value
    }
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert froms[-1].startswith("${PYTHON_IMAGE}")
    copies = [i.value for i in final_stage(instructions) if i.keyword == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies
    assert not any(c.split()[-1] in (".", "/src") for c in copies), "no source tree in the image"


def test_torch_comes_from_a_configurable_index(instructions: list[Instruction]) -> None:
    args = [i.value for i in instructions if i.keyword == "ARG"]
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cpu" in args
    runs = [i.value for i in instructions if i.keyword == "RUN"]
    assert 'pip install -r requirements/torch.txt --index-url "${TORCH_INDEX}"' in runs


def test_everything_else_installs_from_the_hashed_lock(instructions: list[Instruction]) -> None:
    builder = [i for i in instructions if i.stage == 0]
    runs = [i.value for i in builder if i.keyword == "RUN"]
    pip_installs = [part for run in runs for part in run.split("&&") if "pip install" in part]
    # Exactly three installs: torch by version, the lock by hash, the project without deps.
    assert len(pip_installs) == 3, pip_installs
    torch, lock, project = (p.split() for p in pip_installs)
    assert "requirements/torch.txt" in torch
    assert {"--require-hashes", "--no-deps", "requirements/runtime.lock"} <= set(lock)
    assert {"--no-deps", "--no-build-isolation"} <= set(project)
    assert any("pip check" in run for run in runs)
    copies = [i.value for i in builder if i.keyword == "COPY"]
    assert "requirements ./requirements" in copies
    assert "requirements" not in DOCKERIGNORE.read_text().split()


def test_runs_as_a_non_root_user(instructions: list[Instruction]) -> None:
    users = [i.value for i in final_stage(instructions) if i.keyword == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    runs = " ".join(i.value for i in final_stage(instructions) if i.keyword == "RUN")
    assert "useradd" in runs and f" {user}" in runs
    assert "chown -R movierec:movierec /var/lib/movierec" in runs


def test_healthcheck_probes_healthz_without_curl(instructions: list[Instruction]) -> None:
    (check,) = [i.value for i in final_stage(instructions) if i.keyword == "HEALTHCHECK"]
    options, _, command = check.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = exec_form(command)
    assert argv[0] == "python" and "urllib.request" in argv[-1]
    assert "http://127.0.0.1:8000/healthz" in argv[-1]


def test_exposes_8000_and_serves_by_default(instructions: list[Instruction]) -> None:
    stage = final_stage(instructions)
    assert [i.value for i in stage if i.keyword == "EXPOSE"] == ["8000"]
    (cmd,) = [i.value for i in stage if i.keyword == "CMD"]
    assert exec_form(cmd) == [
        "movierec", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"
    ]  # fmt: skip


def test_no_secret_is_baked_in(instructions: list[Instruction]) -> None:
    for instruction in instructions:
        if instruction.keyword in ("ENV", "ARG", "LABEL"):
            names = re.findall(r"(\w+)=", instruction.value)
            assert not any(SECRET_NAME.search(n) for n in names), instruction
        if instruction.keyword in ("COPY", "ADD"):
            assert ".env" not in instruction.value.split(), instruction
    ignored = DOCKERIGNORE.read_text().split()
    assert ".env" in ignored and ".env.*" in ignored


def test_dockerignore_keeps_state_and_caches_out() -> None:
    ignored = set(DOCKERIGNORE.read_text().split())
    for entry in (".git", "var", "**/__pycache__", ".pytest_cache", ".ruff_cache", "artifacts"):
        assert entry in ignored, entry
    # What the build copies must not be ignored.
    for needed in ("app", "ml", "migrations", "docker", "pyproject.toml", "README.md"):
        assert needed not in ignored, needed


def test_bootstrap_script_is_installed_and_strict(instructions: list[Instruction]) -> None:
    copies = [i.value for i in final_stage(instructions) if i.keyword == "COPY"]
    assert "--chmod=0755 docker/bootstrap.sh /usr/local/bin/movierec-bootstrap" in copies
    text = BOOTSTRAP.read_text()
    assert text.startswith("#!/bin/sh\n") and "\nset -eu\n" in text
