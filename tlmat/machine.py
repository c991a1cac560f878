"""What of the machine this process is granted: its CPUs. ``os.cpu_count()`` counts the
whole machine; a cluster job's affinity mask, its SLURM allocation or a container's CPU
quota can grant fewer, and threads and worker processes sized for the whole machine then
preempt each other (on a shared laptop or node the normal case: 2–5× the CPU time for the
same work). Every count of workers and threads in tlmat starts here."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

#: where a container's (cgroup v2, then v1) CPU quota is read
CGROUP = Path("/sys/fs/cgroup")
#: the threading libraries' own variables, set for torch before it starts
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: how long an idle OpenMP thread spins before it sleeps (GNU libgomp, torch's on Linux):
#: 300,000 turns by default, which beside busy processes burns the CPU a descheduled
#: peer thread needs (the README's compare spent 2.3–5× its quiet CPU time there); 1,000
#: keeps a quiet machine as fast and stops the burn (benchmarks/contention.py: 1.31×
#: the quiet CPU time beside two busy processes; 10,000 gave 1.38×)
SPIN = {"GOMP_SPINCOUNT": "1000"}


def on_gpu(accelerator: str) -> bool:
    """Whether training with ``accelerator`` (a TrainConfig's: auto, cpu, gpu, mps) runs
    on a GPU, where runs or ensemble members side by side would share one device's
    memory."""
    if accelerator in ("gpu", "mps"):
        return True
    if accelerator != "auto":
        return False
    import torch  # only here: the rest of this module runs before torch starts

    return torch.cuda.is_available() or torch.backends.mps.is_available()


def granted_cpus() -> int:
    """The CPUs this process may use: the fewest of its affinity mask, the SLURM job's
    ``SLURM_CPUS_PER_TASK`` and the cgroup CPU quota (rounded up); at least 1."""
    counts = [_affinity(), _slurm(), cgroup_quota()]
    return max(1, min(count for count in counts if count is not None))


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity mask
        return os.cpu_count() or 1


def _slurm() -> int | None:
    value = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def cgroup_quota(root: Path = CGROUP) -> int | None:
    """CPUs of the cgroup quota (``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us`` of v1), rounded up; ``None`` without one."""
    try:
        if (root / "cpu.max").exists():
            quota, period = (root / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else math.ceil(int(quota) / int(period))
        v1 = root / "cpu"
        if (v1 / "cpu.cfs_quota_us").exists():
            quota = int((v1 / "cpu.cfs_quota_us").read_text())
            period = int((v1 / "cpu.cfs_period_us").read_text())
            return None if quota <= 0 else math.ceil(quota / period)
    except (OSError, ValueError):  # unreadable or unexpected: no quota known
        return None
    return None


def share_cores() -> int:
    """Size torch's threads to the granted CPUs (unless the user set the threading
    libraries' variables): before torch starts through the variables, after through
    ``torch.set_num_threads``; and let idle threads sleep soon (:data:`SPIN`, read when
    torch starts). Returns the thread count."""
    cpus = granted_cpus()
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(cpus))
    for name, value in SPIN.items():
        os.environ.setdefault(name, value)
    given = os.environ["OMP_NUM_THREADS"]
    threads = int(given) if given.isdigit() and int(given) > 0 else cpus
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def describe() -> dict[str, object]:
    """The machine a benchmark ran on, for its results file: platform, CPU model, the
    machine's and the granted CPUs, torch's threads, the 1-minute load average (another
    process's work slows a timing), and the Python, torch and tlmat versions."""
    import platform

    import torch

    import tlmat

    cpu = platform.processor()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [line for line in info.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "granted_cpus": granted_cpus(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tlmat": tlmat.__version__,
    }
