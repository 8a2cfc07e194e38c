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


OMP_WAIT_POLICY = "OMP_WAIT_POLICY"


def prefer_passive_omp_wait() -> bool:
    """Make PyTorch's OpenMP threads sleep rather than spin while waiting (unless the environment says otherwise).

    With spinning threads, eager PyTorch on cores shared with another busy process waits at every barrier for a
    descheduled sibling while burning its own time slice: on the 2-core development machine under load, EfficientNet-
    Lite0 took 707 ms per image with 2 spinning threads, 173 ms with 2 passive ones. OpenMP reads the variable when
    torch is imported, so this must run first; returns False (and changes nothing) when torch is already imported.
    """
    import sys

    if "torch" in sys.modules:
        return False
    os.environ.setdefault(OMP_WAIT_POLICY, "PASSIVE")
    return True
