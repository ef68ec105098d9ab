"""How many CPUs this process may really use, whatever runs the model (ONNX Runtime or torch)."""

from __future__ import annotations

import math
import os
from typing import Optional


def available_cpus(
    cgroup_v2_cpu_max: str = "/sys/fs/cgroup/cpu.max",
    cgroup_v1_dir: str = "/sys/fs/cgroup/cpu",
) -> int:
    """CPUs this process may really use: its affinity mask, further capped by a cgroup CPU quota, v2
    (`cpu.max`) or v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`): a container limited to `--cpus 0.1`
    on a 2-core host must run one thread, not two."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_v2_cpu_max, cgroup_v1_dir)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def whole_cpus_for(
    threads: int,
    cgroup_v2_cpu_max: str = "/sys/fs/cgroup/cpu.max",
    cgroup_v1_dir: str = "/sys/fs/cgroup/cpu",
) -> bool:
    """Whether `threads` may all run at once without a CPU quota throttling them: no quota, or one of at
    least `threads` CPUs. A 1.5-CPU pod rounds up to two threads; there a spinning thread would spend
    the quota on waiting."""
    quota = _cgroup_quota(cgroup_v2_cpu_max, cgroup_v1_dir)
    return quota is None or quota >= threads


def _cgroup_quota(v2_cpu_max: str, v1_dir: str) -> Optional[float]:
    try:
        with open(v2_cpu_max) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(v1_dir, "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(v1_dir, "cpu.cfs_period_us")) as f:
            period = int(f.read())
        return None if quota <= 0 or period <= 0 else quota / period  # -1 = no quota
    except (OSError, ValueError):
        return None
