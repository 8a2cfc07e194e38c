"""CPU topology: how many physical cores this process may run on (the right intra-op thread count for GEMM work)."""
from __future__ import annotations

import os
from pathlib import Path

_SYS_CPU = Path("/sys/devices/system/cpu")


def usable_cpus() -> set[int]:
    """Logical CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    return set(os.sched_getaffinity(0))


def physical_cores(cpus: set[int] | None = None) -> int:
    """Distinct physical cores among `cpus` (default: the usable ones); SMT siblings count once.

    Read from Linux's sysfs topology; where it is not exposed each logical CPU counts as a core.
    """
    cpus = usable_cpus() if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        siblings = _SYS_CPU / f"cpu{cpu}" / "topology" / "thread_siblings_list"
        cores.add(siblings.read_text().strip() if siblings.is_file() else str(cpu))
    return max(1, len(cores))
