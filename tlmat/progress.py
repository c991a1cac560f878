"""Progress of long work: a bar for loops (:func:`track`), and :class:`Display`, the one
display of a long command (compare, fit, benchmark, a training run) with its time left.

The time left is estimated from the work measured so far — elapsed × (total − done) /
done, in the command's own units of work (runs, structure-epochs) — and shown once some
work is done; rich's own estimate, a speed over its last 30 s of updates, is blank or far
too low when an update comes once a minute. On a terminal the display is a rich bar,
with messages printed above it; off a terminal (a log file, a pipe, ``nohup``) it is a
plain line at each new stage and at least every 30 s (``TLMAT_PROGRESS_SECONDS``): the
stage, the percentage done, the time elapsed and the estimate.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

T = TypeVar("T")

#: the update a long command's work calls: (what it does now, work done, total work)
Update = Callable[[str, float, float], None]


def track(
    items: Iterable[T], description: str, total: int | None = None, enabled: bool = True
) -> Iterator[T]:
    """Yield ``items`` while showing a bar (or a counter when the total is unknown); off a
    terminal, plain lines as :class:`Display` writes them."""
    if not enabled:
        yield from items
        return
    console = Console(stderr=True)
    if not console.is_terminal:
        with Display(description, total or 0, console=console) as shown:
            for done, item in enumerate(items, 1):
                yield item
                shown(description, done)
        return
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, transient=True, console=console) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def clock_text(seconds: float) -> str:
    """``1:02:03`` or ``2:03``: a duration as a clock."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Estimate:
    """The time left of work measured as it goes: the seconds since the work began ×
    (total − done) / done. The work begins at the last report of nothing done, so that
    what comes before it (reading data, pretraining the sources of a grid) does not count
    as the work's pace."""

    def __init__(self, total: float, clock: Callable[[], float] = time.monotonic):
        self.total, self.done, self.clock = float(total), 0.0, clock
        self.started = self.began = clock()

    @property
    def elapsed(self) -> float:
        """Seconds since the command started."""
        return self.clock() - self.started

    def report(self, done: float) -> None:
        """``done`` of the total so far."""
        if done <= 0:
            self.began = self.clock()
        self.done = float(done)

    def left(self) -> float | None:
        """Seconds left, or None while nothing is done to measure by."""
        if self.done <= 0:
            return None
        return (self.clock() - self.began) * max(self.total - self.done, 0.0) / self.done


class _Left(ProgressColumn):
    """The estimate's time left, or "estimating" before any work is done."""

    def __init__(self, estimate: Estimate):
        super().__init__()
        self.estimate = estimate

    def render(self, task) -> Text:
        left = self.estimate.left()
        shown = "estimating…" if left is None else f"~{clock_text(left)} left"
        return Text(shown, style="progress.remaining")


class Display:
    """One progress display for a long command; call it with (stage, done, total) as the
    work goes (:data:`Update`); use it as a context manager."""

    def __init__(
        self,
        what: str,
        total: float,
        console: Console | None = None,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.what, self.stage, self.note = what, what, None
        self.console = console or Console(stderr=True)
        self.every = float(os.environ.get("TLMAT_PROGRESS_SECONDS", 30)) if every is None else every
        self.estimate = Estimate(total, clock)
        self.terminal = self.console.is_terminal
        self._bar: Progress | None = None
        self._said = -float("inf")
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> Display:
        if self.terminal:
            columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
            self._bar = Progress(
                *columns, _Left(self.estimate), console=self.console, transient=True
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.what, total=self.estimate.total)
        else:
            self._say()
            threading.Thread(target=self._beat, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def __call__(
        self, stage: str, done: float, total: float | None = None, note: str | None = None
    ) -> None:
        """Work done so far of the stage ``stage``; ``note`` (e.g. the epoch) is shown
        with it, but unlike a new stage does not make a line of its own off a terminal."""
        if total is not None:
            self.estimate.total = float(total)
        new_stage = stage != self.stage
        self.stage, self.note = stage, note
        self.estimate.report(done)
        if self._bar is not None:
            from rich.markup import escape

            shown = escape(f"{stage} · {note}" if note else stage)
            self._bar.update(
                self._task, description=shown, completed=done, total=self.estimate.total
            )
        elif new_stage or self.estimate.clock() - self._said >= self.every:
            self._say()

    def line(self) -> str:
        """The plain line: what, stage, percentage done, elapsed and time left (without a
        known total: the count done)."""
        e = self.estimate
        stage = f"{self.what}: {self.stage}" if self.stage != self.what else self.what
        stage += f" ({self.note})" if self.note else ""
        if e.total <= 0:
            return f"{stage} · {e.done:,.0f} done · {clock_text(e.elapsed)} elapsed"
        share = 100 * e.done / e.total
        left = e.left()
        estimate = "time left: estimating" if left is None else f"~{clock_text(left)} left"
        return f"{stage} · {share:.0f} % done · {clock_text(e.elapsed)} elapsed · {estimate}"

    def _say(self) -> None:
        with self._lock:
            self._said = self.estimate.clock()
            self.console.print(self.line(), markup=False, highlight=False, soft_wrap=True)

    def _beat(self) -> None:
        """Off a terminal: a line at least every ``every`` seconds while work goes on."""
        while not self._stop.wait(min(self.every, 5.0) if self.every > 0 else 5.0):
            if self.estimate.clock() - self._said >= self.every:
                self._say()
