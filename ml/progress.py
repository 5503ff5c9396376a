"""What training is doing while it runs: named phases, each with its progress (done of total)
or, where no total is known, its elapsed time.

The phases of one training, in order: ``loading`` (the store's ratings), ``tuning`` (EASE's λ
on a validation slice, then the closed-form solve), ``item codes`` (the item autoencoder's
passes), ``epochs``, ``finishing`` (calibration, ranking weights, validation, the EASE refit,
the gate's figures), ``writing`` (the checkpoint) and ``registering`` (the callers: the CLI
and the worker). A reporter is installed for the duration of a run (:func:`reporting`); code
deep in the model reports through :func:`phase` without taking a callback, and with no
reporter installed a phase costs nothing.

A report is a dict: ``{"phase", "done", "total" (None when unknown), "elapsed_s",
"finished"}`` plus whatever facts the phase adds (an epoch's loss, say). Steps are reported at
most every ``EVERY_S`` seconds; a phase's start and end always are.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

ProgressCallback = Callable[[dict[str, Any]], None]
EVERY_S = 1.0  # least time between two step reports of one phase

_reporter: ContextVar[ProgressCallback | None] = ContextVar("movierec_progress", default=None)


class Phase:
    """One running phase; :meth:`step` reports how far it got."""

    def __init__(self, name: str, total: int | None, report: ProgressCallback | None) -> None:
        self.name = name
        self.total = total
        self._report = report
        self._started = time.perf_counter()
        self._last = -float("inf")
        self.done = 0

    def step(self, done: int, **facts: Any) -> None:
        """``done`` of ``total`` steps are done (reported at most every ``EVERY_S``; always
        when ``done`` reaches ``total``)."""
        self.done = done
        now = time.perf_counter()
        if self._report is None or (now - self._last < EVERY_S and done != self.total):
            return
        self._last = now
        self._emit(done, False, facts)

    def _emit(self, done: int, finished: bool, facts: dict[str, Any]) -> None:
        if self._report is not None:
            elapsed = round(time.perf_counter() - self._started, 3)
            self._report(
                {
                    "phase": self.name,
                    "done": done,
                    "total": self.total,
                    "elapsed_s": elapsed,
                    "finished": finished,
                    **facts,
                }
            )


@contextmanager
def phase(name: str, total: int | None = None) -> Iterator[Phase]:
    """Report the phase ``name`` (``total`` steps, None when unknown) from start to end."""
    running = Phase(name, total, _reporter.get())
    running._emit(0, False, {})
    yield running
    running._emit(running.done, True, {})


@contextmanager
def reporting(callback: ProgressCallback | None) -> Iterator[None]:
    """Send the reports of every phase run inside this block to ``callback`` (None: keep
    the reporter already installed, if any)."""
    if callback is None:
        yield
        return
    token = _reporter.set(callback)
    try:
        yield
    finally:
        _reporter.reset(token)


def describe(report: dict[str, Any]) -> str:
    """One line for a person: ``item codes 5/20, 3.1 s`` or ``loading done in 1.2 s``."""
    elapsed = f"{report['elapsed_s']:.1f} s"
    if report["finished"]:
        return f"{report['phase']} done in {elapsed}"
    total = report.get("total")
    counted = f" {report['done']}/{total}" if total else ""
    return f"{report['phase']}{counted}, {elapsed}"


def printer(stream: TextIO | None = None) -> ProgressCallback:
    """A reporter that writes :func:`describe` lines to ``stream`` (default: stderr)."""

    def report(record: dict[str, Any]) -> None:
        print(describe(record), file=stream or sys.stderr, flush=True)

    return report
