"""The checks of settings shared by the configuration (``relayrl.config``) and the classes that take
the same settings from Python (``TrainingOffline``, ``Memory``): one rule and one message per
setting, whichever way it arrives. Torch-free, so a configuration is validated without importing
torch. Each check returns the value and raises ``ValueError`` naming the setting and the fix.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["positive_int", "non_negative_int", "positive_number", "seconds", "capacity_fits_batch",
           "start_fits_capacity"]


def _is_int(value: Any) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(name: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(name: str, value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def positive_number(name: str, value: Any, unit: str = "", allow_inf: bool = False) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
            or (value == math.inf and not allow_inf)):
        kind = "a positive number" if allow_inf else "a finite number > 0"
        raise ValueError(f"{name} must be {kind}{unit}, got {value!r}")
    return float(value)


def seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < math.inf):
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def capacity_fits_batch(capacity_name: str, capacity: Any, batch_name: str, batch_size: int) -> int:
    if not _is_int(capacity) or capacity < batch_size:
        raise ValueError(f"{capacity_name} ({capacity!r}) must be an integer >= {batch_name} ({batch_size}): "
                         "raise the capacity or lower the batch size")
    return int(capacity)


def start_fits_capacity(start_name: str, start: int, capacity_name: str, capacity: int) -> None:
    if start > capacity:
        raise ValueError(f"{start_name} ({start}) exceeds {capacity_name} ({capacity}): training could "
                         "never start; lower one or raise the other")
