"""`movierec serve|worker`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Annotated

import typer

WORKER_STOP_SECONDS = 15


def _start_worker() -> subprocess.Popen[bytes]:
    """One worker process beside the web server (the embedded default).

    The worker is told our pid and exits by itself if this process disappears without
    stopping it (e.g. SIGKILL), so no orphan keeps training.
    """
    env = {**os.environ, "MOVIEREC_WORKER_PARENT_PID": str(os.getpid())}
    return subprocess.Popen([sys.executable, "-m", "app.worker"], env=env)


def _exit_on_sigterm() -> None:
    """Until uvicorn installs its own handlers, SIGTERM unwinds normally (stopping the worker)."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def _stop_worker(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it does not end in time."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=WORKER_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Uvicorn worker processes.")] = 1,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker",
            help="Start one training worker process beside the server (off when training "
            "runs elsewhere, e.g. the compose `worker` service).",
        ),
    ] = True,
    access_log: Annotated[bool, typer.Option(help="Uvicorn's own access log.")] = False,
) -> None:
    """Serve the HTTP API (and the page) with uvicorn."""
    import uvicorn

    from app.config import get_settings
    from app.server import uvicorn_options

    settings = get_settings()
    settings.ensure_dirs()
    _exit_on_sigterm()
    trainer = _start_worker() if worker else None
    try:
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=access_log,
            log_level=settings.log_level.lower(),
            **uvicorn_options(settings),
        )
    finally:
        if trainer is not None:
            _stop_worker(trainer)


def worker(
    once: Annotated[
        bool, typer.Option("--once", help="Run the queued jobs, then exit instead of polling.")
    ] = False,
) -> None:
    """Run queued training jobs (claims them atomically; any number of workers may run)."""
    from app.worker import main

    raise typer.Exit(main(once=once))


def register(cli: typer.Typer) -> None:
    """Attach the serving commands to the top-level command."""
    cli.command("serve")(serve)
    cli.command("worker")(worker)
