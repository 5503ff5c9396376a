"""`movierec serve|worker`."""

from __future__ import annotations

import signal
from typing import Annotated

import typer


def _exit_on_sigterm() -> None:
    """Until uvicorn installs its own handlers, SIGTERM unwinds normally (stopping the worker)."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Uvicorn worker processes.")] = 1,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker",
            help="Start one training worker process beside the server and restart it when it "
            "dies (off when training runs elsewhere, e.g. the compose `worker` service).",
        ),
    ] = True,
    access_log: Annotated[bool, typer.Option(help="Uvicorn's own access log.")] = False,
) -> None:
    """Serve the HTTP API (and the page) with uvicorn."""
    import uvicorn

    from app.config import get_settings
    from app.server import uvicorn_options
    from app.supervisor import WorkerSupervisor

    settings = get_settings()
    settings.ensure_dirs()
    _exit_on_sigterm()
    trainer = WorkerSupervisor(settings) if worker else None
    if trainer is not None:
        trainer.start()
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
            trainer.stop()


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
