"""The lock files pin every dependency of pyproject.toml by hash, and every install uses them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements"


def parse_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{name: (version, hashes)} of a `uv pip compile --generate-hashes` output."""
    pins: dict[str, tuple[str, list[str]]] = {}
    name = ""
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip().rstrip("\\").strip()
        if not line:
            continue
        if line.startswith("--hash=sha256:"):
            digest = line.removeprefix("--hash=sha256:")
            assert re.fullmatch(r"[0-9a-f]{64}", digest), (path.name, raw)
            pins[name][1].append(digest)
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)(\[[^\]]*\])?==([^\s;]+)(\s*;.*)?", line)
        assert match, f"{path.name}: not a pinned requirement: {raw!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = (match.group(3), [])
    return pins


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def dev_lock() -> dict[str, tuple[str, list[str]]]:
    return parse_lock(REQUIREMENTS / "dev.lock")


@pytest.fixture(scope="module")
def runtime_lock() -> dict[str, tuple[str, list[str]]]:
    return parse_lock(REQUIREMENTS / "runtime.lock")


def torch_pin() -> str:
    (line,) = [
        raw.strip()
        for raw in (REQUIREMENTS / "torch.txt").read_text().splitlines()
        if raw.strip() and not raw.startswith("#")
    ]
    requirement = Requirement(line)
    assert requirement.name == "torch"
    (spec,) = requirement.specifier
    assert spec.operator == "==", "torch is pinned by version"
    return spec.version


def test_every_pin_has_hashes(dev_lock: dict, runtime_lock: dict) -> None:
    for pins in (dev_lock, runtime_lock):
        assert pins
        for name, (version, hashes) in pins.items():
            assert hashes, f"{name}=={version} has no hash"


def test_every_direct_dependency_is_locked_within_its_range(
    project: dict, dev_lock: dict, runtime_lock: dict
) -> None:
    direct = [Requirement(r) for r in project["dependencies"]]
    dev = [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    for requirement, locks in [(r, (dev_lock, runtime_lock)) for r in direct] + [
        (r, (dev_lock,)) for r in dev
    ]:
        name = canonicalize_name(requirement.name)
        for lock in locks:
            if name == "torch":
                # Installed first from requirements/torch.txt, by version (its CPU and CUDA
                # builds are different files); never in a hashed lock.
                assert name not in lock
                assert requirement.specifier.contains(torch_pin())
                continue
            assert name in lock, f"{name} is not in the lock"
            assert requirement.specifier.contains(lock[name][0], prereleases=True), (
                f"{name}=={lock[name][0]} is outside {requirement.specifier}"
            )


def test_runtime_lock_agrees_with_the_dev_lock(dev_lock: dict, runtime_lock: dict) -> None:
    assert set(runtime_lock) <= set(dev_lock)
    for name, (version, _) in runtime_lock.items():
        assert dev_lock[name][0] == version, name
    # The test tools stay out of the image.
    assert not {"pytest", "mypy", "schemathesis", "playwright"} & set(runtime_lock)


def test_the_build_backend_is_locked(runtime_lock: dict) -> None:
    # `pip install --no-build-isolation` builds the project with what the lock installed.
    assert {"setuptools", "wheel"} <= set(runtime_lock)


def test_make_and_ci_install_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes --no-deps -r $(LOCKED)" in makefile
    assert "LOCKED ?= requirements/dev.lock" in makefile
    assert "-r requirements/torch.txt" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert "pip install" not in ci, "CI installs through make, from the lock"
