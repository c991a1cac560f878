"""Several runs at once: a comparison's (or a search's) runs in worker processes, one per
CPU granted, each with one torch thread, instead of one run after the other on every
core.

Small models on a few hundred structures parallelise poorly inside one run: torch's
threads meet at a barrier after every operation, and beside other busy processes a
descheduled thread keeps its peers waiting (the README's compare beside two busy
processes: 2.79× its quiet wall time with two threads in one process, 1.63× with one).
Separate runs need no barrier. One thread per run also makes a run's numbers the same
on any machine and under any load (the order of a parallel sum depends on the threads).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import as_completed
from typing import Any

from tlmat.experiments.runspec import RunResult, RunSpec, Say, quiet, run
from tlmat.machine import granted_cpus, on_gpu
from tlmat.progress import Update


def workers_for(specs: Sequence[RunSpec]) -> int:
    """Runs side by side: one per granted CPU, at most one per spec; one on a GPU, and
    one for ensembles (which train their members side by side themselves)."""
    if not specs or any(on_gpu(s.training.accelerator) or s.ensemble > 1 for s in specs):
        return 1
    return max(1, min(len(specs), granted_cpus()))


def run_all(
    specs: Sequence[RunSpec],
    say: Say,
    progress: Update | None = None,
    finished: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Carry out every spec (:func:`~tlmat.experiments.runspec.run`), side by side when
    the CPUs allow (:func:`workers_for`), and return the results in the specs' order.
    The first run's messages are said (the data and stopping rule every run shares);
    ``finished`` is called as each run ends."""
    workers = workers_for(specs)
    total = len(specs)
    results: dict[int, RunResult] = {}

    def done(k: int, result: RunResult) -> None:
        results[k] = result
        if finished is not None:
            finished(result)
        if progress is not None:
            progress(f"{_name(specs[k])} done", len(results), total)

    if workers == 1:
        for k, spec in enumerate(specs):
            if progress is not None:
                progress(_name(spec), len(results), total)
            done(k, run(spec, say if k == 0 else quiet))
        return [results[k] for k in range(total)]
    from tlmat.training.pool import worker_pool

    if progress is not None:
        progress(f"{total} runs, {workers} side by side", 0, total)
    with worker_pool(workers) as pool:
        futures = {pool.submit(_run_alone, spec, k == 0): k for k, spec in enumerate(specs)}
        for future in as_completed(futures):
            result, messages = future.result()
            for message in messages:
                say(message)
            done(futures[future], result)
    return [results[k] for k in range(total)]


def _name(spec: RunSpec) -> str:
    """``n300-s0: full``: a run of a grid by its job folder and method."""
    return f"{spec.run_dir.parent.name}: {spec.run_dir.name}"


def _run_alone(spec: RunSpec, talk: bool) -> tuple[RunResult, list[Any]]:
    """One run in a worker process on one torch thread; what it says, kept if ``talk``."""
    import torch

    torch.set_num_threads(1)
    messages: list[Any] = []
    result = run(spec, messages.append if talk else quiet)
    return result, messages
