"""Runs side by side: as many worker processes as CPUs granted, one torch thread each,
and the same numbers as one run after the other on one CPU."""

from __future__ import annotations

from pathlib import Path

import torch

from tlmat.experiments import RunSpec
from tlmat.experiments import side_by_side as sbs


def _spec(perov60: Path, tmp_path: Path, name: str, **changes) -> RunSpec:
    settings = {"epochs": 2, "batch_size": 16, "progress_bar": False, "accelerator": "cpu",
                "model": "cgcnn-small"}  # fmt: skip
    return RunSpec(
        data=str(perov60), target="heat_ref",
        run_dir=tmp_path / "grid" / name, cache_dir=tmp_path / "cache",
        **{**settings, **changes},
    )  # fmt: skip


def test_workers_follow_the_cpus_granted(perov60: Path, tmp_path: Path, monkeypatch) -> None:
    specs = [_spec(perov60, tmp_path, f"s{k}", seed=k) for k in range(3)]
    monkeypatch.setattr(sbs, "granted_cpus", lambda: 8)
    assert sbs.workers_for(specs) == 3  # never more than the runs
    monkeypatch.setattr(sbs, "granted_cpus", lambda: 2)
    assert sbs.workers_for(specs) == 2
    # on a GPU the runs would share its memory; an ensemble trains its members side by side
    gpu = _spec(perov60, tmp_path, "gpu", accelerator="gpu")
    assert sbs.workers_for([gpu, *specs]) == 1
    ensemble = _spec(perov60, tmp_path, "e", strategy="full", ensemble=2,
                     source="cgcnn/formation-energy-per-atom", model=None)  # fmt: skip
    assert sbs.workers_for([ensemble, *specs]) == 1


def test_side_by_side_gives_the_numbers_of_one_cpu(
    perov60: Path, tmp_path: Path, monkeypatch
) -> None:
    """Two runs in two workers, in the specs' order, score as the same runs one after the
    other on one CPU (one thread: a parallel sum's order depends on the threads)."""
    specs = [_spec(perov60, tmp_path / "two", f"s{k}", seed=k) for k in range(2)]
    said, progress = [], []
    monkeypatch.setattr(sbs, "granted_cpus", lambda: 2)
    parallel = sbs.run_all(specs, said.append, lambda *a: progress.append(a))
    assert progress[0] == ("2 runs, 2 side by side", 0, 2) and progress[-1][1:] == (2, 2)
    assert any("training" in str(m) for m in said)  # the first run's messages reach the caller
    monkeypatch.setattr(sbs, "granted_cpus", lambda: 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = sbs.run_all([_spec(perov60, tmp_path / "one", f"s{k}", seed=k) for k in range(2)],
                            lambda _: None)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert [r.test for r in parallel] == [r.test for r in alone]
    assert parallel[0].test != parallel[1].test  # two seeds: two different runs
