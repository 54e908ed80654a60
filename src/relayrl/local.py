"""Moved to :mod:`relayrl.roles.local_run`; this name stays until ``cli.py``,
``tests/test_end_to_end.py`` and ``benchmarks/bench_e2e.py`` import ``run_local`` from there."""
from __future__ import annotations


def __getattr__(name: str):
    if name in ("run_local", "worker_process_main", "stop_requested"):
        from .roles import local_run
        return getattr(local_run, name)
    raise AttributeError(f"module 'relayrl.local' has no attribute {name!r}")
