"""`movierec serve`'s embedded training worker: started beside the server, restarted when it dies.

A thread of the serving process waits on the worker process (so a dead one never lingers as a
zombie). When it ends while the server runs, whatever the cause (``kill -9``, a crash, an
out-of-memory kill, a SIGTERM from outside), the supervisor logs how it ended, fails the job it
was running at once (rather than after the heartbeat timeout), records the exit in the
``workers`` table (``/readyz`` and ``/metrics`` show it) and starts a new worker after a
backoff: ``RESTART_DELAY`` seconds, doubled for each death that follows a run shorter than
``STABLE_SECONDS``, at most ``RESTART_DELAY_MAX``.

The worker is told this process's pid (``MOVIEREC_WORKER_PARENT_PID``) and stops by itself,
within one mini-batch, once this process is gone (``app.worker.Worker.check_stop``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import utcnow
from app.db.session import make_engine
from app.repositories import jobs as jobs_repo
from app.repositories import workers as workers_repo
from app.worker import worker_id_of

log = logging.getLogger("movierec.supervisor")

RESTART_DELAY = 0.5  # seconds before the first restart
RESTART_DELAY_MAX = 60.0
STABLE_SECONDS = 60.0  # a worker that ran this long resets the backoff
STOP_SECONDS = 15.0  # SIGTERM, then SIGKILL after this long
WORKER_COMMAND = (sys.executable, "-m", "app.worker")


def describe_exit(code: int) -> str:
    """``-9`` → "was killed by SIGKILL", ``1`` → "exited with code 1"."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class WorkerSupervisor:
    """Keeps one worker process running until :meth:`stop`."""

    def __init__(self, settings: Settings, command: Sequence[str] = WORKER_COMMAND) -> None:
        self.settings = settings
        self.command = list(command)
        self.restarts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._delay = RESTART_DELAY
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # spawning and stopping do not interleave
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            env = {
                **os.environ,
                "MOVIEREC_WORKER_PARENT_PID": str(os.getpid()),
                "MOVIEREC_WORKER_RESTARTS": str(self.restarts),
            }
            self.process = subprocess.Popen(self.command, env=env)
            self._started_at = time.monotonic()
        log.info("training worker started (pid %d)", self.process.pid)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            process = self.process
            if process is not None:
                code = process.wait()  # reaps it: no zombie
                if self._stopping.is_set():
                    return
                lived = time.monotonic() - self._started_at
                how = describe_exit(code)
                self._delay = RESTART_DELAY if lived >= STABLE_SECONDS else self._delay
                log.log(
                    logging.WARNING if code == 0 else logging.ERROR,
                    "training worker (pid %d) %s after %.1f s; restarting it in %.1f s",
                    process.pid,
                    how,
                    lived,
                    self._delay,
                )
                self._record_death(process.pid, how)
            if self._stopping.wait(self._delay):
                return
            self._delay = min(self._delay * 2, RESTART_DELAY_MAX)
            self.restarts += 1
            try:
                self._spawn()
            except OSError as exc:  # e.g. out of processes: try again after the next delay
                self.process = None
                log.error("could not start a training worker: %s", exc)

    def _record_death(self, pid: int, how: str) -> None:
        """Fail the dead worker's job now and mark its row stopped; a database error is logged."""
        worker_id = worker_id_of(pid)
        engine = make_engine(self.settings.database_url)
        try:
            with Session(engine) as session, session.begin():
                now = utcnow()
                failed = jobs_repo.fail_running_of(
                    session, worker_id, now, f"the worker process {how} while it ran"
                )
                workers_repo.stopped(session, worker_id, now, note=f"the worker process {how}")
            for job_id in failed:
                log.warning("job %d was running in the dead worker: marked failed", job_id)
        except Exception as exc:
            log.warning("could not record the death of worker %s: %s", worker_id, exc)
        finally:
            engine.dispose()

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Stop supervising, SIGTERM the worker (its job is marked failed), SIGKILL it after
        ``timeout`` seconds."""
        self._stopping.set()
        with self._lock:
            process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
