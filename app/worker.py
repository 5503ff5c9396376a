"""The training worker: claims queued jobs, trains, registers and (if the gate allows) activates.

Runs in its own process (``movierec worker``, or the one ``movierec serve`` starts and
restarts), never in the web process. One job at a time per worker; any number of workers may
share a store, since a job is claimed atomically (``app.repositories.jobs.claim_next``). A
heartbeat thread refreshes the job's ``heartbeat_at`` and the worker's row in ``workers`` every
``settings.heartbeat_seconds`` while training runs; a job whose worker died stops beating and is
marked failed after ``settings.heartbeat_timeout_seconds`` by any worker's poll or by the API
(at once by ``movierec serve`` when it sees its own worker die).

Training checks before every mini-batch (``ml.fit.loop.before_batch``) whether it must stop: the
worker was asked to stop (SIGTERM/SIGINT), the ``movierec serve`` process that started it is
gone, or the job is no longer this worker's (cancelled by an admin, or failed by a reaper).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings, get_settings
from app.db.models import JobStatus, TrainingJob, utcnow
from app.db.session import make_engine
from app.observability import configure_logging
from app.repositories import jobs as jobs_repo
from app.repositories import workers as workers_repo
from app.services import jobs as jobs_service
from app.services import registry
from ml import progress

log = logging.getLogger("movierec.worker")


class JobInterrupted(Exception):
    """The job must stop: the worker is shutting down or the job is no longer ours."""


@dataclass(frozen=True)
class Outcome:
    """How a job ended, written to its row."""

    status: JobStatus
    values: dict[str, Any]


def worker_id_of(pid: int) -> str:
    """The id a worker process of this host goes by (in jobs and the ``workers`` table)."""
    return f"{socket.gethostname()}:{pid}"


def default_worker_id() -> str:
    return worker_id_of(os.getpid())


def progress_from_epoch(record: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The job's ``progress`` JSON from one epoch record of ``ml.fit.pipeline.fit``."""
    val = {k.removeprefix("val_"): v for k, v in record.items() if k.startswith("val_")}
    return {
        "epoch": int(record.get("epoch", 0)),
        "epochs": epochs,
        "loss": record.get("train_loss", record.get("loss")),
        "val": val,
        "best_epoch": record.get("best_epoch"),
        "seconds": record.get("seconds"),
    }


def progress_from_phase(report: dict[str, Any]) -> dict[str, Any]:
    """The job's ``progress`` JSON fields from one phase report of ``ml.progress``: the phase,
    how far it got (``done`` of ``total``, None when unknown) and its elapsed seconds."""
    keys = ("phase", "done", "total", "elapsed_s", "finished")
    return {k: report.get(k) for k in keys}


class Heartbeat:
    """A thread that beats a running job's heartbeat until stopped."""

    def __init__(
        self, sessions: sessionmaker[Session], job_id: int, worker_id: str, every: float
    ) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.worker_id = worker_id
        self.every = every
        self.lost = threading.Event()  # set when the job stopped being ours (e.g. reaped)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                with self.sessions() as session, session.begin():
                    now = utcnow()
                    ours = jobs_repo.beat(session, self.job_id, self.worker_id, now)
                    workers_repo.beat(session, self.worker_id, now, self.job_id)
                if not ours:
                    self.lost.set()
                    return
            except Exception as exc:  # a database hiccup: try again at the next beat
                log.warning("heartbeat of job %d failed: %s", self.job_id, exc)


class Worker:
    """Polls for queued jobs and runs them, one at a time."""

    def __init__(self, settings: Settings, *, worker_id: str | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id or default_worker_id()
        self.engine = make_engine(settings.database_url)
        self.sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.stopping = threading.Event()
        self.stop_reason = "the worker was asked to stop"
        parent = os.environ.get("MOVIEREC_WORKER_PARENT_PID")
        self.parent_pid = int(parent) if parent else None
        # Restarts of this worker by `movierec serve` before this process.
        self.restarts = int(os.environ.get("MOVIEREC_WORKER_RESTARTS", "0") or 0)

    def stop(self, reason: str) -> None:
        """Stop after the current mini-batch (a job in progress is marked failed)."""
        self.stop_reason = reason
        self.stopping.set()

    # -- the loop ------------------------------------------------------------------------------
    def run(self, *, once: bool = False) -> int:
        """Run jobs until stopped (or, with ``once``, until the queue is empty); jobs run."""
        done = 0
        log.info("worker %s started", self.worker_id)
        self._report(lambda s, now: workers_repo.started(s, self.worker_id, now, self.restarts))
        last_beat = 0.0
        while not self.stopping.is_set() and self.parent_alive():
            try:
                self.fail_stale()
                job_id = self.claim()
            except Exception as exc:  # the database may be down: wait and retry
                log.warning("worker poll failed: %s", exc)
                job_id = None
            if job_id is not None:
                self.run_job(job_id)
                done += 1
                continue
            if once:
                break
            if time.monotonic() - last_beat >= self.settings.heartbeat_seconds:
                self._report(lambda s, now: workers_repo.beat(s, self.worker_id, now, None))
                last_beat = time.monotonic()
            self.stopping.wait(self.settings.worker_poll_seconds)
        why = self.stop_reason if self.stopping.is_set() else "the queue was empty (--once)"
        self._report(lambda s, now: workers_repo.stopped(s, self.worker_id, now, why))
        log.info("worker %s stopped after %d job(s)", self.worker_id, done)
        return done

    def _report(self, write: Callable[[Session, Any], None]) -> None:
        """Write this worker's own row; a database hiccup is logged, never fatal."""
        try:
            with self.sessions() as session, session.begin():
                write(session, utcnow())
        except Exception as exc:
            log.warning("worker %s could not report its state: %s", self.worker_id, exc)

    def parent_alive(self) -> bool:
        """False once the `movierec serve` process that started this worker is gone."""
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log.warning("the serving process %s is gone: stopping", self.parent_pid)
            self.stop(f"the serving process {self.parent_pid} is gone")
            return False
        return True

    def check_stop(self, heartbeat: Heartbeat) -> None:
        """Raise ``JobInterrupted`` when the job in progress must stop (called every batch)."""
        if self.stopping.is_set() or not self.parent_alive():
            raise JobInterrupted(self.stop_reason)
        if heartbeat.lost.is_set():
            raise JobInterrupted("the job was cancelled or marked failed while it ran")

    def fail_stale(self) -> None:
        with self.sessions() as session, session.begin():
            failed = jobs_service.fail_stale_jobs(session, self.settings.heartbeat_timeout_seconds)
        for job_id in failed:
            log.warning("job %d lost its worker and was marked failed", job_id)

    def claim(self) -> int | None:
        with self.sessions() as session, session.begin():
            return jobs_repo.claim_next(session, self.worker_id, utcnow())

    # -- one job -------------------------------------------------------------------------------
    def run_job(self, job_id: int) -> Outcome:
        """Train for a claimed job, then register and gate the new version; never raises."""
        log.info("job %d claimed", job_id, extra={"job_id": job_id})
        self._report(lambda s, now: workers_repo.beat(s, self.worker_id, now, job_id))
        with Heartbeat(
            self.sessions, job_id, self.worker_id, self.settings.heartbeat_seconds
        ) as heartbeat:
            try:
                outcome = self._train_and_register(job_id, heartbeat)
            except JobInterrupted as exc:
                log.warning("job %d interrupted: %s", job_id, exc, extra={"job_id": job_id})
                outcome = Outcome(JobStatus.failed, {"error": f"interrupted: {exc}"})
            except Exception as exc:
                log.error("job %d failed:\n%s", job_id, traceback.format_exc())
                outcome = Outcome(JobStatus.failed, {"error": f"{type(exc).__name__}: {exc}"})
        ours = True
        if outcome.status is JobStatus.failed:
            with self.sessions() as session, session.begin():
                ours = jobs_repo.finish(
                    session,
                    job_id,
                    self.worker_id,
                    outcome.status,
                    finished_at=utcnow(),
                    **outcome.values,
                )
            if not ours:  # cancelled by an admin, or failed by a reaper: its row says which
                log.warning("job %d was no longer ours when it ended", job_id)
        self._report(lambda s, now: workers_repo.beat(s, self.worker_id, now, None))
        if outcome.status is JobStatus.succeeded or ours:
            log.info("job %d %s", job_id, outcome.status.value, extra={"job_id": job_id})
        return outcome

    def _train_and_register(self, job_id: int, heartbeat: Heartbeat) -> Outcome:
        from ml.fit.config import preset, with_overrides
        from ml.fit.loop import before_batch
        from ml.fit.pipeline import train_from_store

        with self.sessions() as session:
            job = session.get(TrainingJob, job_id)
            params: dict[str, Any] = dict(job.params or {}) if job is not None else {}
            active = registry.active_version(session)  # scored beside the new model
        # No progress bars: the worker's output goes to the server log, as log lines.
        overrides: dict[str, Any] = {"device": self.settings.device, "progress": False}
        if params.get("epochs") is not None:
            overrides["epochs"] = int(params["epochs"])
        config = with_overrides(preset(str(params.get("preset") or "default")), overrides)
        on_epoch, on_phase = self._progress_writer(job_id, config.epochs, heartbeat)
        on_epoch({"epoch": 0})
        token = before_batch.set(lambda: self.check_stop(heartbeat))
        try:
            result = train_from_store(
                self.settings.database_url,
                self.settings.model_dir,
                config,
                on_epoch=on_epoch,
                on_progress=on_phase,
                active=Path(active.path) if active is not None else None,
            )
        finally:
            before_batch.reset(token)
        if result is None:  # pragma: no cover - only DDP ranks > 0 return None
            raise RuntimeError("training wrote no checkpoint")
        try:
            self.check_stop(heartbeat)
            with progress.reporting(on_phase), progress.phase("registering"):
                return self._register(job_id, result)
        except JobInterrupted:  # nothing refers to the checkpoint: no orphan folder left
            shutil.rmtree(result.path, ignore_errors=True)
            raise

    def _progress_writer(
        self, job_id: int, epochs: int, heartbeat: Heartbeat
    ) -> tuple[Callable[[dict[str, Any]], None], Callable[[dict[str, Any]], None]]:
        """The job's progress writers: one for epoch records, one for phase reports
        (``ml.progress``); both update one ``progress`` JSON, phase start and end are logged."""
        latest: dict[str, Any] = {}

        def write(update: dict[str, Any], interruptible: bool = True) -> None:
            if interruptible:
                self.check_stop(heartbeat)
            latest.update(update)
            with self.sessions() as session, session.begin():
                if jobs_repo.record_progress(
                    session, job_id, self.worker_id, dict(latest), utcnow()
                ):
                    return
                # Registering ends the job in its own transaction (``_register``): the job has
                # succeeded when that phase reports its end, which is no interruption.
                if not interruptible and jobs_repo.record_final_progress(
                    session, job_id, self.worker_id, dict(latest)
                ):
                    return
            raise JobInterrupted("the job was cancelled or marked failed while it ran")

        def on_epoch(record: dict[str, Any]) -> None:
            write(progress_from_epoch(record, epochs))

        def on_phase(report: dict[str, Any]) -> None:
            if report["finished"] or report["done"] == 0:
                log.info("job %d: %s", job_id, progress.describe(report), extra={"job_id": job_id})
            # Registering commits on its own: a stop asked meanwhile no longer interrupts it.
            write(progress_from_phase(report), interruptible=report["phase"] != "registering")

        return on_epoch, on_phase

    def _register(self, job_id: int, result: Any) -> Outcome:
        """Register the checkpoint and end the job as succeeded, in one transaction; activate
        the version when the gate allows, else say why not. A job that stopped being ours (an
        admin cancelled it meanwhile) registers nothing: ``JobInterrupted``."""
        with self.sessions() as session, session.begin():
            # First, so that the job's row is locked (and still ours) until the commit.
            if not jobs_repo.finish(
                session, job_id, self.worker_id, JobStatus.succeeded, finished_at=utcnow()
            ):
                raise JobInterrupted("the job was cancelled or marked failed while it ran")
            version, gate = registry.register_and_gate(
                session,
                path=str(result.path),
                sha256=result.sha256,
                manifest=result.manifest,
                metrics=result.metrics,
                tolerance=self.settings.activation_tolerance,
            )
            assert gate is not None
            if gate.activate:
                message = f"model version {version.id} activated: {gate.reason}"
            else:
                message = f"model version {version.id} registered but not activated: {gate.reason}"
            version_id = version.id
            jobs_repo.set_result(session, job_id, version_id, message)
        log.info(message)
        return Outcome(JobStatus.succeeded, {"model_version_id": version_id, "message": message})


def install_signal_handlers(worker: Worker) -> None:
    """SIGTERM/SIGINT: stop at the next mini-batch (a job in progress is marked failed with
    the signal's name in its error, never left running).

    A worker started by ``movierec serve`` ignores SIGINT: Ctrl-C reaches the whole process
    group, and the server stops its worker itself (SIGTERM) once it has shut down, instead of
    seeing it die first and restarting it.
    """

    def stop(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        log.info("%s: stopping", name)
        worker.stop(f"the worker received {name}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN if worker.parent_pid is not None else stop)


def main(*, once: bool = False) -> int:
    """Entry point of ``movierec worker`` (and ``python -m app.worker``)."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    settings.ensure_dirs()
    worker = Worker(settings)
    install_signal_handlers(worker)
    worker.run(once=once)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
