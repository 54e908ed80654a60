"""Every buffer checked against what the trainer expects before it reaches the memory.

A worker, or a peer that holds a valid key, can send a buffer that is well formed on the wire but
poisonous for training: NaN or huge rewards, observations of the wrong shape, actions far outside
the action space. One such buffer turns the critic's loss into NaN, or (a wrong shape arriving
first) fixes the memory's columns to the wrong size. :class:`BufferCheck` refuses those, against the
spaces the trainer was built with; ``TrainingOffline.pull`` then drops the buffer whole (nothing
appended, no sample or episode counted) and logs it with its sender.

What is checked, for relayrl's :class:`~relayrl.buffer.Buffer` with ``Box`` spaces:

* ``obs`` and ``next_obs``: shape ``(N, *observation_space.shape)``, a numeric dtype; floating
  values finite and within ``+-max_abs_value``;
* ``act``: shape ``(N, *action_space.shape)``, finite and within ``+-max_abs_value`` (not yet
  against the space's own bounds);
* ``rew``: shape ``(N,)``, finite, within ``+-max_abs_reward``;
* ``terminated``, ``truncated``: shape ``(N,)``, boolean or 0/1.

Other spaces (Dict, Tuple, Discrete...) are checked for the leading dimension and finiteness only;
buffers of other types (tmrl-style objects) are the memory's business and pass unchecked.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["BufferCheck"]


class BufferCheck:
    """``problem(buffer) -> str | None``: what is wrong with ``buffer``, or None."""

    max_abs_value: float = 1e9
    """Largest magnitude accepted in a floating observation or action (beyond, float32 training loses all
    precision; a real environment that needs more should rescale its observations)."""
    max_abs_reward: float = 1e9
    """Largest reward magnitude accepted (the critic squares TD errors in float32)."""

    def __init__(self, observation_space: Any, action_space: Any):
        self.obs_shape = _box_shape(observation_space)
        self.act_shape = _box_shape(action_space)

    def problem(self, buffer: Any) -> str | None:
        from .buffer import Buffer
        if not isinstance(buffer, Buffer):
            return None
        n = len(buffer)
        checks = (self._observations(buffer.obs, n, "obs"), self._observations(buffer.next_obs, n, "next_obs"),
                  self._actions(buffer.act, n), self._rewards(buffer.rew, n),
                  self._flags(buffer.terminated, n, "terminated"), self._flags(buffer.truncated, n, "truncated"))
        return next((found for found in checks if found), None)

    def _leading(self, array: Any, n: int, name: str, shape: tuple | None) -> str | None:
        if not isinstance(array, np.ndarray):
            return f"{name} is not an array"
        if array.ndim == 0 or array.shape[0] != n:
            return f"{name} has {array.shape[0] if array.ndim else 0} rows for {n} transitions"
        if shape is not None and tuple(array.shape[1:]) != shape:
            return f"{name} has per-transition shape {tuple(array.shape[1:])}, the space's is {shape}"
        if array.dtype.kind not in "biuf":
            return f"{name} has dtype {array.dtype}, not a number"
        return None

    def _finite(self, array: np.ndarray, name: str, bound: float) -> str | None:
        if array.dtype.kind == "f" and array.size:
            if not np.isfinite(array).all():
                return f"{name} holds NaN or infinite values"
            largest = float(np.abs(array).max())
            if largest > bound:
                return f"{name} holds a value of magnitude {largest:.3g} (more than {bound:g})"
        return None

    def _observations(self, array, n: int, name: str) -> str | None:
        return self._leading(array, n, name, self.obs_shape) or self._finite(array, name, self.max_abs_value)

    def _actions(self, array, n: int) -> str | None:
        return self._leading(array, n, "act", self.act_shape) or self._finite(array, "act", self.max_abs_value)

    def _rewards(self, array, n: int) -> str | None:
        return self._leading(array, n, "rew", ()) or self._finite(array, "rew", self.max_abs_reward)

    def _flags(self, array, n: int, name: str) -> str | None:
        found = self._leading(array, n, name, ())
        if found is None and array.dtype.kind != "b" and array.size and not np.isin(array, (0, 1)).all():
            found = f"{name} holds values other than 0 and 1"
        return found


def _box_shape(space: Any) -> tuple | None:
    try:
        from gymnasium import spaces
    except ImportError:  # pragma: no cover - gymnasium is a dependency
        return None
    return tuple(space.shape) if isinstance(space, spaces.Box) else None
