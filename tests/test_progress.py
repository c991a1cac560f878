"""The progress display: an honest time left from the work measured so far, plain lines
off a terminal (at each stage and at least every ``every`` seconds), a bar on one."""

from __future__ import annotations

import io
import time

import numpy as np
from rich.console import Console

from tlmat.progress import Display, Estimate, clock_text


class _Clock:
    """A clock a simulated run moves forward."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_time_left_is_within_30_percent_once_a_fifth_of_the_work_is_done() -> None:
    """A simulated compare of 36 runs whose durations vary 0.5–1.5× (three methods of
    different cost, in turn, as compare runs them): from a fifth done until a fifth is
    left, the estimate is within 30 % of the time really left."""
    rng = np.random.default_rng(0)
    cost = np.tile([1.0, 2.0, 0.5], 12) * rng.uniform(0.5, 1.5, 36)
    clock = _Clock()
    estimate = Estimate(len(cost), clock)
    errors = []
    for done, seconds in enumerate(cost, start=1):
        clock.now += seconds
        estimate.done = done
        truly_left = cost[done:].sum()
        if 0.2 * len(cost) <= done <= 0.8 * len(cost):
            errors.append(abs(estimate.left() - truly_left) / truly_left)
    assert max(errors) < 0.3, max(errors)
    assert Estimate(10, clock).left() is None  # nothing done: no number made up


def test_what_comes_before_the_work_is_not_its_pace() -> None:
    """A grid that pretrains its source for 400 s, then runs 10 jobs of 10 s: two jobs
    done, 80 s are left (the pretraining counted as job work said 28 minutes)."""
    clock = _Clock()
    estimate = Estimate(10, clock)
    clock.now = 400.0
    estimate.report(0)  # "10 jobs to run": the work begins
    for _ in range(2):
        clock.now += 10
        estimate.report(estimate.done + 1)
    assert estimate.left() == 80.0 and estimate.elapsed == 420.0


def test_off_a_terminal_each_stage_is_a_plain_line_with_share_elapsed_and_estimate() -> None:
    out = io.StringIO()
    clock = _Clock()
    with Display("compare", 4, console=Console(file=out, width=200), every=30, clock=clock) as d:
        clock.now = 10
        d("n300-s0: scratch", 0)
        clock.now = 70
        d("n300-s0: full", 1)
        d("n300-s0: full", 1)  # the same stage within 30 s: no new line
        clock.now = 130
        d("n300-s0: full", 2)  # the same stage after 30 s: a line
    lines = out.getvalue().splitlines()
    assert lines[0] == "compare · 0 % done · 0:00 elapsed · time left: estimating"
    assert lines[1] == "compare: n300-s0: scratch · 0 % done · 0:10 elapsed · time left: estimating"
    # the work began at 0:10, its last report of nothing done: 1 of 4 in 60 s
    assert lines[2] == "compare: n300-s0: full · 25 % done · 1:10 elapsed · ~3:00 left"
    assert lines[3] == "compare: n300-s0: full · 50 % done · 2:10 elapsed · ~2:00 left"
    assert len(lines) == 4 and clock_text(3725) == "1:02:05"


def test_off_a_terminal_a_line_comes_at_least_every_period_while_nothing_changes() -> None:
    out = io.StringIO()
    with Display("benchmark", 10, console=Console(file=out), every=0.05):
        time.sleep(0.6)  # one long job: no update, yet the log hears of the run
    assert len(out.getvalue().splitlines()) >= 3


def test_on_a_terminal_the_bar_shows_the_estimate_and_messages_go_above_it() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    clock = _Clock()
    with Display("compare", 4, console=console, clock=clock) as display:
        clock.now = 60
        display("n300-s0: full", 1)
        console.print("a message")
        display._bar.refresh()
        shown = out.getvalue()
    assert "~3:00 left" in shown and "a message" in shown


def test_a_loop_tracked_off_a_terminal_writes_plain_lines(monkeypatch, capsys) -> None:
    """Reading and building graphs (``track``) off a terminal: the plain lines of the
    display, the share done with a known total and the count without one."""
    from tlmat.progress import track

    monkeypatch.setenv("TLMAT_PROGRESS_SECONDS", "0.05")

    def slowly(n: int):
        for k in range(n):
            time.sleep(0.03)
            yield k

    assert list(track(slowly(10), "building graphs", total=10)) == list(range(10))
    assert list(track(slowly(10), "reading x.csv")) == list(range(10))
    lines = capsys.readouterr().err.splitlines()
    known = [line for line in lines if line.startswith("building graphs")]
    unknown = [line for line in lines if line.startswith("reading x.csv")]
    assert known[0] == "building graphs · 0 % done · 0:00 elapsed · time left: estimating"
    assert len(known) >= 3 and any("% done" in line and "left" in line for line in known[1:])
    assert len(unknown) >= 3 and all(" done · " in line and "%" not in line for line in unknown)
