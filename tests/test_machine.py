"""The CPUs a process is granted (tlmat.machine): the fewest of its affinity mask, its
SLURM allocation and its container's quota; torch's threads sized to them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tlmat import machine


@pytest.mark.parametrize(
    ("files", "cpus"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 2),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({"cpu.max": "garbled"}, None),
        ({}, None),
    ],
)
def test_cgroup_quota_v2_and_v1(tmp_path: Path, files: dict[str, str], cpus) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert machine.cgroup_quota(tmp_path) == cpus


def test_the_fewest_granted_cpus_win(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(machine, "CGROUP", tmp_path)
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 64)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert machine.granted_cpus() == 4
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert machine.granted_cpus() == 3
    monkeypatch.setattr(machine, "cgroup_quota", lambda root=tmp_path: 2)
    assert machine.granted_cpus() == 2
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "not a number")
    assert machine.granted_cpus() == 2


def test_share_cores_sizes_torch_and_leaves_the_users_setting(monkeypatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(machine, "granted_cpus", lambda: 1)
        for name in machine.THREAD_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        assert machine.share_cores() == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert machine.share_cores() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_idle_threads_sleep_soon_unless_the_user_said_otherwise(monkeypatch) -> None:
    """Set before torch starts (in a command's process): GOMP_SPINCOUNT stops idle
    OpenMP threads spinning through the CPU time busy neighbours' turns need."""
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    before = torch.get_num_threads()
    try:
        machine.share_cores()
        assert os.environ["GOMP_SPINCOUNT"] == "1000"
        monkeypatch.setenv("GOMP_SPINCOUNT", "300000")
        machine.share_cores()
        assert os.environ["GOMP_SPINCOUNT"] == "300000"
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("accelerator", ["cpu", "gpu"])
def test_on_gpu_reads_the_accelerator(accelerator: str) -> None:
    assert machine.on_gpu(accelerator) == (accelerator == "gpu")


def test_describe_says_what_a_benchmark_ran_on() -> None:
    """Every results file records this: it must be plain JSON and agree with the process."""
    import json

    import torch

    import tlmat

    described = json.loads(json.dumps(machine.describe()))
    assert described["granted_cpus"] == machine.granted_cpus() <= described["cpu_count"]
    assert described["torch_threads"] == torch.get_num_threads()
    assert described["torch"] == torch.__version__ and described["tlmat"] == tlmat.__version__
    assert described["cpu"] and described["platform"]
