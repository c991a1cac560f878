"""Worker processes that end with the run that started them: ensemble members trained
side by side, a grid's jobs. A SIGINT or SIGTERM that stops the run is passed on to them
(each stops at its own signal handler, keeping its last checkpoint), and each asks for
SIGTERM when its parent dies, even by SIGKILL, so that no orphan trains on under a run
folder's lock while the same command runs again."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

from tlmat.training.fit import RunInterrupted, stopped_by_signals


def die_with_parent() -> None:
    """Ask for SIGTERM when the parent process dies (Linux's PR_SET_PDEATHSIG; elsewhere
    nothing): a pool's initializer."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


#: the signals that stop a run
STOPS = {signal.SIGINT, signal.SIGTERM}


def _worker_start() -> None:
    """A worker's start, its stop signals still blocked (as they were when it forked):
    it dies with its parent, and a stop reaches it as a RunInterrupted only while it
    trains, through fit's own handler (anywhere else it would print a traceback from
    wherever an idle or starting worker happens to be)."""
    die_with_parent()
    # a forked worker inherits the parent's handlers (fit's, which raise RunInterrupted
    # anywhere): outside fit, SIGTERM ends it quietly and Ctrl-C is left to its parent
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)


def _started(pool: ProcessPoolExecutor) -> None:
    """Start the pool's workers with the stop signals blocked, so that none arrives in a
    worker before it has set its handlers."""
    if not hasattr(signal, "pthread_sigmask"):
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
    try:
        pool.submit(int).result()  # forks the workers (all at once, under fork)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers end with the run (see the module's docstring); a
    stop by signal is raised as :class:`RunInterrupted` once they have stopped, and a
    failure cancels the jobs not yet started."""
    pool = ProcessPoolExecutor(workers, initializer=_worker_start)
    try:
        with stopped_by_signals():
            _started(pool)
            yield pool
    except RunInterrupted as stopped:
        # a terminal's Ctrl-C reaches the workers too; a kill of this process alone is
        # passed on to the pool's own workers (and to no other child of this process)
        for pid in list(getattr(pool, "_processes", None) or {}):  # pid → process
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, stopped.signum)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
