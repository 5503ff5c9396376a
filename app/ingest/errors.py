"""Errors raised while reading input files: they name the file, the line and the problem."""

from __future__ import annotations

from dataclasses import dataclass, field


class IngestError(Exception):
    """A problem in an input file; the command line prints it as ``FILE:LINE: problem``."""

    def __init__(self, file: str, line: int | None, problem: str) -> None:
        self.file = file
        self.line = line
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.problem}"


class FetchError(Exception):
    """A data set could not be downloaded or verified."""


@dataclass
class Problems:
    """Collects invalid lines: raises on the first one, or counts them with ``skip=True``.

    Keeping a few examples lets the summary name where the skipped lines were.
    """

    skip: bool
    keep: int = 5
    count: int = 0
    examples: list[IngestError] = field(default_factory=list)

    def add(self, file: str, line: int | None, problem: str) -> None:
        """Record one invalid line (raises unless skipping)."""
        error = IngestError(file, line, problem)
        if not self.skip:
            raise error
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(error)

    def mark(self) -> tuple[int, int]:
        """A point to come back to with :meth:`rewind`."""
        return self.count, len(self.examples)

    def rewind(self, mark: tuple[int, int]) -> None:
        """Forget what was recorded since ``mark`` (before reading the same input again)."""
        self.count = mark[0]
        del self.examples[mark[1] :]

    def room(self) -> int:
        """How many more examples are worth describing (at least one, to raise it)."""
        return max(1, self.keep - len(self.examples))

    def add_uncounted(self, total: int) -> None:
        """Count ``total`` further invalid lines that were not described one by one."""
        self.count += total
