"""``WorkerSupervisor``: a worker that keeps dying is restarted with a doubling delay, each death
is logged and recorded, and ``stop`` leaves no process behind (real processes)."""

from __future__ import annotations

import itertools
import logging
import sys
import time
from pathlib import Path

import pytest

from app import supervisor
from app.supervisor import WorkerSupervisor, describe_exit
from tests.app.test_api_helpers import app_settings

DIES_AT_ONCE = (sys.executable, "-c", "raise SystemExit(3)")
RUNS_ON = (sys.executable, "-c", "import time; time.sleep(60)")


def test_a_dying_worker_is_restarted_with_a_doubling_delay(
    env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(supervisor, "RESTART_DELAY", 0.1)
    keeper = WorkerSupervisor(app_settings(env.url, tmp_path), DIES_AT_ONCE)
    starts: list[float] = []
    spawn = keeper._spawn

    def timed_spawn() -> None:
        starts.append(time.monotonic())
        spawn()

    keeper._spawn = timed_spawn  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="movierec.supervisor"):
        keeper.start()
        deadline = time.monotonic() + 20
        while keeper.restarts < 3:
            assert time.monotonic() < deadline, "the worker was not restarted three times"
            time.sleep(0.02)
        keeper.stop(timeout=5)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4  # 0.1 s, doubled each time
    assert "exited with code 3" in caplog.text and "restarting it in 0.2 s" in caplog.text
    assert keeper.process is not None and keeper.process.poll() is not None


def test_stop_terminates_the_worker_and_does_not_restart_it(env, tmp_path: Path) -> None:
    keeper = WorkerSupervisor(app_settings(env.url, tmp_path), RUNS_ON)
    keeper.start()
    process = keeper.process
    assert process is not None and process.poll() is None
    keeper.stop(timeout=5)
    assert process.poll() == -15 and keeper.restarts == 0
    assert not keeper._thread.is_alive()  # the watcher ended: nothing is started again
    assert keeper.process is process


def test_exits_are_described() -> None:
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(1) == "exited with code 1"
