"""Count the CPUs this process may use: its affinity mask, capped by a cgroup CPU quota.

`os.cpu_count()` reports the machine's CPUs even inside a container limited to fewer, and
an ONNX Runtime session with more threads than CPUs loses time to contention.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["cgroup_cpu_limit", "usable_cpus"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """Return the CPU quota of this process's cgroup in CPUs, or None when there is none.

    Reads cgroup v2 `cpu.max` ("QUOTA PERIOD" or "max PERIOD") and, when that file is
    missing, cgroup v1 `cpu/cpu.cfs_quota_us` and `cpu.cfs_period_us` (quota -1: no limit).
    Both are read at the root of the cgroup file system mounted in the process's namespace,
    which inside a container is usually the container's own cgroup.
    """
    text = _read(root / "cpu.max")
    if text is not None:
        parts = text.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                return int(parts[0]) / int(parts[1])
            except (ValueError, ZeroDivisionError):
                return None
        return None
    quota, period = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
    try:
        if quota is not None and period is not None and int(quota) > 0 and int(period) > 0:
            return int(quota) / int(period)
    except ValueError:
        return None
    return None


def usable_cpus() -> int:
    """Return the number of CPUs this process may run on, at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not available outside Linux
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        count = min(count, math.ceil(limit))
    return max(1, count)
