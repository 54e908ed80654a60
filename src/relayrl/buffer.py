"""What a rollout worker sends to the trainer: a batch of whole transitions, columnar.

A :class:`Buffer` holds ``N`` transitions as six arrays that share their first dimension
(``obs``, ``act``, ``rew``, ``next_obs``, ``terminated``, ``truncated``), the statistics of the
episodes the worker *finished* while collecting them, and who sent it (``worker_id``, ``seq``) with
which policy (``policy_version``).

Each transition is stored whole (``next_obs`` travels with ``obs``), so a memory never has to stitch
transitions together and cannot stitch them across workers. ``terminated`` (a true end: do not
bootstrap) and ``truncated`` (a time limit: bootstrap through it) are kept apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

TRANSITION_FIELDS = ("obs", "act", "rew", "next_obs", "terminated", "truncated")


@dataclass(frozen=True)
class EpisodeStats:
    """One finished episode: its undiscounted return, its length in steps, and whether it was a test
    episode (deterministic actions)."""

    episode_return: float
    length: int
    test: bool = False


@dataclass
class Buffer:
    """A batch of transitions from one worker. See the module docstring."""

    obs: np.ndarray
    act: np.ndarray
    rew: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    episodes: list[EpisodeStats] = field(default_factory=list)
    worker_id: str = ""
    seq: int = 0
    policy_version: int = 0
    parts: tuple[tuple[str, int, int, int], ...] | None = None
    """``None`` for one worker's buffer. For a join of several (:meth:`concatenate`): one
    ``(worker_id, seq, policy_version, rows)`` per joined buffer, in order, so that a memory that
    follows each worker's stream (n-step returns) can tell the streams apart. Never sent."""

    def __len__(self) -> int:
        return int(self.rew.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """The six transition columns by name."""
        return {name: getattr(self, name) for name in TRANSITION_FIELDS}

    def segments(self) -> list[tuple[str, int, int, int, int]]:
        """``(worker_id, seq, policy_version, start, stop)`` of each worker buffer in this one
        (rows ``start:stop``): one for a worker's buffer, one per joined buffer after
        :meth:`concatenate` (see :attr:`parts`)."""
        if not self.parts:
            return [(self.worker_id, self.seq, self.policy_version, 0, len(self))]
        out, start = [], 0
        for worker_id, seq, policy_version, rows in self.parts:
            out.append((worker_id, seq, policy_version, start, start + rows))
            start += rows
        if start != len(self):
            raise ValueError(f"Buffer.parts count {start} rows, the buffer has {len(self)}")
        return out

    def validate(self) -> "Buffer":
        """Raise ``ValueError`` naming the problem if the columns are inconsistent; return ``self``."""
        n = len(self)
        for name in TRANSITION_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, np.ndarray):
                raise ValueError(f"Buffer.{name} must be a numpy array, got {type(value).__name__}")
            if value.ndim == 0 or value.shape[0] != n:
                raise ValueError(
                    f"Buffer.{name} has shape {value.shape}; every column needs the same first "
                    f"dimension as 'rew' ({n})"
                )
        for name in ("rew", "terminated", "truncated"):
            if getattr(self, name).ndim != 1:
                raise ValueError(f"Buffer.{name} must be 1-D, got shape {getattr(self, name).shape}")
        if self.obs.shape[1:] != self.next_obs.shape[1:]:
            raise ValueError(
                f"Buffer.obs {self.obs.shape} and Buffer.next_obs {self.next_obs.shape} differ in shape"
            )
        return self

    @classmethod
    def concatenate(cls, buffers: Iterable["Buffer"]) -> "Buffer":
        """Join buffers (from any workers) into one; episode statistics are concatenated too, and
        :attr:`parts` records who sent which rows."""
        buffers = [b for b in buffers if len(b) or b.episodes]
        if not buffers:
            raise ValueError("Buffer.concatenate needs at least one non-empty buffer")
        if len(buffers) == 1:
            return buffers[0]
        columns = {name: np.concatenate([getattr(b, name) for b in buffers if len(b)] or
                                        [getattr(buffers[0], name)]) for name in TRANSITION_FIELDS}
        episodes = [e for b in buffers for e in b.episodes]
        parts = tuple(part for b in buffers for part in
                      (b.parts or ((b.worker_id, b.seq, b.policy_version, len(b)),)))
        return cls(**columns, episodes=episodes, worker_id=buffers[-1].worker_id,
                   seq=buffers[-1].seq, policy_version=max(b.policy_version for b in buffers),
                   parts=parts)


class BufferBuilder:
    """Collects transitions one step at a time into preallocated arrays (used by workers).

    ``add`` copies one transition in place; ``take`` returns a :class:`Buffer` of everything
    collected since the last ``take`` and starts again. Arrays grow by doubling when full.
    """

    def __init__(self, obs_shape: tuple[int, ...], act_shape: tuple[int, ...], capacity: int = 256,
                 obs_dtype: np.dtype = np.float32, act_dtype: np.dtype = np.float32):
        self._obs_shape, self._act_shape = tuple(obs_shape), tuple(act_shape)
        self._obs_dtype, self._act_dtype = np.dtype(obs_dtype), np.dtype(act_dtype)
        self._capacity = max(1, int(capacity))
        self._allocate(self._capacity)
        self.episodes: list[EpisodeStats] = []

    def _allocate(self, capacity: int) -> None:
        self._cols = {
            "obs": np.empty((capacity, *self._obs_shape), self._obs_dtype),
            "act": np.empty((capacity, *self._act_shape), self._act_dtype),
            "rew": np.empty((capacity,), np.float32),
            "next_obs": np.empty((capacity, *self._obs_shape), self._obs_dtype),
            "terminated": np.empty((capacity,), np.bool_),
            "truncated": np.empty((capacity,), np.bool_),
        }
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, obs, act, rew: float, next_obs, terminated: bool, truncated: bool) -> None:
        if self._n == self._cols["rew"].shape[0]:
            old, n = self._cols, self._n
            self._allocate(2 * n)
            for name, column in old.items():
                self._cols[name][:n] = column
            self._n = n
        i = self._n
        cols = self._cols
        cols["obs"][i] = obs
        cols["act"][i] = act
        cols["rew"][i] = rew
        cols["next_obs"][i] = next_obs
        cols["terminated"][i] = terminated
        cols["truncated"][i] = truncated
        self._n = i + 1

    def add_episode(self, stats: EpisodeStats) -> None:
        self.episodes.append(stats)

    def take(self, worker_id: str = "", seq: int = 0, policy_version: int = 0) -> Buffer:
        n = self._n
        buffer = Buffer(**{name: col[:n].copy() for name, col in self._cols.items()},
                        episodes=self.episodes, worker_id=worker_id, seq=seq,
                        policy_version=policy_version)
        self.episodes = []
        self._n = 0
        return buffer
