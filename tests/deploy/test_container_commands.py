"""Every command a container runs exists, and the sequence works natively on PostgreSQL.

The static half resolves each ``movierec ...`` command line of the Dockerfile, docker-compose.yml
and docker/bootstrap.sh against the real command line, so a renamed command or option fails
here rather than in a deployment. The native half runs those same commands, in the order compose
runs them, as subprocesses against the PostgreSQL test database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.db.models import ModelVersion, Rating
from bench.ports import free_port
from tests.conftest import Database
from tests.deploy.deployfiles import (
    BOOTSTRAP,
    BOOTSTRAP_COMMAND,
    ROOT,
    CommandLineError,
    compose,
    dockerfile_instructions,
    exec_form,
    resolve,
    script_commands,
    service_commands,
)
from tests.deploy.tiny_catalogue import write_catalogue

# Values the containers give the variables their scripts use (see the Dockerfile and compose).
CONTAINER_VARIABLES = {"MOVIEREC_DATA_DIR": "/var/lib/movierec/data"}


def container_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every movierec command a container of this deployment runs."""
    found: list[tuple[str, list[str]]] = []
    for instruction in dockerfile_instructions():
        if instruction.keyword == "CMD":
            found.append(("Dockerfile CMD", exec_form(instruction.value)))
    for service, argv in service_commands(compose()["services"]).items():
        if argv == [BOOTSTRAP_COMMAND]:
            found += [
                (f"{service}: bootstrap.sh", cmd)
                for cmd in script_commands(BOOTSTRAP, CONTAINER_VARIABLES)
            ]
        else:
            found.append((f"compose {service}", argv))
    return found


COMMANDS = container_commands()


def test_every_container_runs_something_known() -> None:
    wheres = {where for where, _ in COMMANDS}
    assert {"Dockerfile CMD", "compose migrate", "compose api", "compose worker"} <= wheres
    assert any(w.endswith("bootstrap.sh") for w in wheres)
    for where, argv in COMMANDS:
        assert argv[0] == "movierec", f"{where} runs {argv[0]!r}, not the movierec command"


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[" ".join(a) for _, a in COMMANDS])
def test_container_command_resolves(where: str, argv: list[str]) -> None:
    ctx = resolve(argv)  # raises CommandLineError on an unknown command or option
    assert ctx.command.callback is not None, f"{where}: `{' '.join(argv)}` runs nothing"


@pytest.mark.parametrize(
    "argv",
    [
        ["movierec", "db", "upgarde"],
        ["movierec", "serve", "--prot", "8000"],
        ["movierec", "train", "--if-no-models"],
        ["movierec", "data"],
        ["movierec", "data", "fetch"],
    ],
)
def test_a_typo_is_caught(argv: list[str]) -> None:
    with pytest.raises(CommandLineError):
        resolve(argv)


# ------------------------------------------------------------------ the same commands, natively


def get_json(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def run(argv: list[str], environ: dict[str, str], timeout: float = 120) -> str:
    """Run a command to completion; its output, or a failure that shows it."""
    done = subprocess.run(
        argv, env=environ, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"`{' '.join(argv)}` exited {done.returncode}:\n{output}"
    return output


def stop(process: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    """SIGTERM, as `docker stop` sends it; the exit status and everything it printed."""
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"{process.args!r} ignored SIGTERM for {timeout} s:\n{output}")
    return process.returncode, output


@pytest.fixture
def container_env(env: Database, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment compose gives the containers, pointed at the PostgreSQL test database."""
    if env.backend != "postgresql":
        pytest.skip("the containers run on PostgreSQL; the SQLite path is tested elsewhere")
    environ = dict(os.environ)
    environ.update(
        MOVIEREC_ENVIRONMENT="production",
        MOVIEREC_DATABASE_URL=env.url,
        MOVIEREC_MODEL_DIR=str(tmp_path / "models"),
        MOVIEREC_DATA_DIR=str(tmp_path / "data"),
        MOVIEREC_LOG_LEVEL="INFO",
        MOVIEREC_API_KEYS=API_KEY,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}",
    )
    environ.pop("MOVIEREC_ADMIN_TOKEN", None)
    environ.pop("MOVIEREC_PUBLIC_API", None)
    yield environ


API_KEY = "container-api-key-0123456789"


def compose_argv(service: str) -> list[str]:
    return service_commands(compose()["services"])[service]


def test_containers_sequence_natively_on_postgres(
    container_env: dict[str, str], env: Database, tmp_path: Path
) -> None:
    # migrate
    assert "database at revision" in run(compose_argv("migrate"), container_env)

    # bootstrap, with the tiny catalogue imported first so that nothing is downloaded: the
    # script must then skip its import and train the first model with its own command.
    files = write_catalogue(tmp_path / "catalogue")
    run(
        ["movierec", "data", "import", "--no-progress", "--ratings", str(files.ratings),
         "--movies", str(files.movies)],
        container_env,
    )  # fmt: skip
    output = run(["sh", str(BOOTSTRAP)], container_env, timeout=300)
    assert "import skipped" in output and "bootstrap: done" in output
    with env.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Rating)) == files.n_ratings
        assert conn.scalar(select(func.count()).select_from(ModelVersion)) == 1
        assert conn.scalar(select(ModelVersion.is_active)) is True
    # ...and running it again (every `docker compose up`) changes nothing.
    run(["sh", str(BOOTSTRAP)], container_env, timeout=300)
    with env.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(ModelVersion)) == 1

    # api: the compose command line, on a free local port instead of 0.0.0.0:8000
    argv = compose_argv("api")
    port = free_port()
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(port)
    # Production refuses to serve user data without keys (or a stated public API).
    keyless = {k: v for k, v in container_env.items() if k != "MOVIEREC_API_KEYS"}
    refused = subprocess.run(argv, env=keyless, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "MOVIEREC_API_KEYS" in refused.stdout + refused.stderr
    api = subprocess.Popen(
        argv, env=container_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        ready: tuple[int, dict[str, object]] = (0, {})
        while time.monotonic() < deadline and api.poll() is None:
            try:
                ready = get_json(f"{base}/readyz")
            except OSError:
                time.sleep(0.3)
                continue
            if ready[0] == 200:
                break
            time.sleep(0.3)
        assert api.poll() is None, f"the API exited early: {api.communicate()[0]}"
        assert ready[0] == 200, f"/readyz never became ready: {ready}"
        assert ready[1]["status"] == "ready"
        assert get_json(f"{base}/healthz") == (200, {"status": "ok"})
        assert get_json(f"{base}/v1/users/1/ratings")[0] == 401  # user data behind the key
        # The page is served by the same process (no separate web server in the deployment).
        with urllib.request.urlopen(f"{base}/", timeout=5) as response:
            assert b'src="/static/app.js"' in response.read()
        with urllib.request.urlopen(f"{base}/static/app.js", timeout=5) as response:
            assert "javascript" in response.headers["content-type"]
    finally:
        code, output = stop(api)
    # Uvicorn shuts down gracefully, then re-raises the signal: killed by it, or exit 128 + 15.
    sigterm = (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    assert code in sigterm, f"the API failed on SIGTERM ({code}):\n{output}"
    assert "Application shutdown complete" in output, output

    # worker: starts, waits for jobs, stops cleanly on SIGTERM
    worker = subprocess.Popen(
        compose_argv("worker"),
        env=container_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(3)
    assert worker.poll() is None, f"the worker exited on its own: {worker.communicate()[0]}"
    code, output = stop(worker)
    assert code == 0, f"the worker did not stop cleanly on SIGTERM ({code}):\n{output}"


def test_repository_root_is_the_build_context() -> None:
    # compose builds from "." next to the Dockerfile; the paths the Dockerfile copies exist.
    for instruction in dockerfile_instructions():
        if instruction.keyword == "COPY" and "--from=" not in instruction.value:
            sources = instruction.value.split()[:-1]
            for source in (s for s in sources if not s.startswith("--")):
                assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
