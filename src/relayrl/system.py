"""Facts about the machine the process runs on."""
from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity and container limits)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
