"""n-step returns, computed when buffers are appended, per worker stream.

A stored n-step transition ``t`` holds ``obs_t``, ``act_t``, the discounted return of its window of
``m <= n`` steps ``R = sum_{k<m} gamma^k r_{t+k}``, the ``next_obs``, ``terminated`` and
``truncated`` of the window's last transition ``t+m-1``, and the discount of its bootstrap
``gamma^m`` (the ``discount`` column; batches carry it as ``discounts``, see :mod:`relayrl.memory`).
The target is then ``R + gamma^m * (1 - terminated) * V(next_obs)``.

The window of ``t`` is ``n`` steps long, except that

* it stops at the first episode end (``terminated`` or ``truncated``) at or after ``t``: after a
  true end nothing is bootstrapped; after a time limit the last ``next_obs`` is bootstrapped from,
  ``m`` steps away;
* it never leaves the stream of the worker that sent ``t``: streams are keyed by the buffer's
  ``worker_id`` (a join of several workers' buffers, :meth:`relayrl.buffer.Buffer.concatenate`, is
  split back along its ``parts``), and a buffer continues the previous one of its worker only if its
  ``seq`` is the previous ``seq + 1`` (and its ``policy_version`` did not go back: a new session);
* when a stream breaks (a ``seq`` gap: a lost buffer; a new session of the worker), the transitions
  still waiting for their window are stored with the window they have: they bootstrap from where
  they stop, with the discount of their length (valid, only shorter).

So each stream keeps the last (at most ``n - 1``) transitions after its last episode end whose
window is not complete yet: *pending*, not sampled until the next buffer of the stream completes
them (or breaks the stream). ``len(memory)`` counts only stored transitions. Checkpoints keep the
pending tails (raw transitions, with each stream's last ``seq``), so a resumed run continues the
windows of a worker that continues its ``seq``; :meth:`NStepReplayMemory.flush` stores them all as
shortened windows instead (e.g. before the workers go away for good).

Everything is vectorised per buffer: the first episode end at or after each row comes from one
reversed ``minimum.accumulate``, the returns from ``n`` shifted, masked additions; Python loops run
over ``k < n`` and over the worker streams of a buffer, never over transitions.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import checks
from .buffer import TRANSITION_FIELDS, Buffer
from .memory import ReplayBatch, ReplayMemory

__all__ = ["NStepAssembler", "NStepReplayMemory", "nstep_windows", "check_gamma"]


def check_gamma(gamma: Any) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.floating)) or not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
    return float(gamma)


def nstep_windows(rew: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, n_step: int,
                  gamma: float, complete_all: bool = False):
    """The n-step windows of the rows of one stream, ``L`` consecutive transitions.

    Returns ``(c, last, returns, discounts)``: the windows of rows ``0..c-1`` are complete (they
    reach ``n_step`` rows or an episode end inside the ``L`` rows; the rows from ``c`` on wait for
    more of the stream), unless ``complete_all``, where every row's window is cut at the end of the
    rows (``c = L``). ``last[t] = t + m_t - 1`` is the row of the window's last transition,
    ``returns[t]`` (float64) its discounted reward sum and ``discounts[t] = gamma ** m_t``
    (float32)."""
    length = len(rew)
    end = np.logical_or(terminated, truncated)
    ends = np.flatnonzero(end)
    if complete_all:
        c = length
    else:
        last_end = int(ends[-1]) if len(ends) else -1
        c = min(length, max(last_end + 1, length - n_step + 1, 0))
    if c == 0:
        return 0, np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.float32)
    rows = np.arange(length)
    if not len(ends) and not complete_all:  # no episode end: every complete window is n long
        rew = np.asarray(rew, np.float64)
        returns = rew[:c].copy()
        for k in range(1, n_step):
            returns += rew[k:k + c] * (gamma ** k)
        return c, rows[:c] + (n_step - 1), returns, np.full(c, gamma ** n_step, np.float32)
    first_end = np.minimum.accumulate(np.where(end, rows, length)[::-1])[::-1][:c]
    t = rows[:c]
    # the window: up to n steps, through the first episode end, within the rows
    m = np.minimum(np.minimum(first_end - t + 1, length - t), n_step)
    padded = np.zeros(length + n_step - 1, np.float64)
    padded[:length] = rew
    returns = padded[:c].copy()
    for k in range(1, n_step):
        returns += np.where(m > k, padded[k:k + c], 0.0) * (gamma ** k)
    discounts = np.power(gamma, m).astype(np.float32)
    return c, t + m - 1, returns, discounts


def _range(head: dict | None, tail_len: int, cols: dict | None, name: str, a: int, b: int) -> np.ndarray:
    """Rows ``a:b`` of the stream ``head + cols`` (``head``: ``tail_len`` pending rows)."""
    if head is None or tail_len == 0:
        return cols[name][a:b]
    if cols is None or b <= tail_len:
        return head[name][a:b]
    if a >= tail_len:
        return cols[name][a - tail_len:b - tail_len]
    return np.concatenate([head[name][a:], cols[name][:b - tail_len]])


def _gather(head: dict | None, tail_len: int, cols: dict | None, name: str, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (non-decreasing) of the stream ``head + cols``."""
    if head is None or tail_len == 0:
        return cols[name][rows]
    split = int(np.searchsorted(rows, tail_len))
    if split == len(rows):
        return head[name][rows]
    if split == 0:
        return cols[name][rows - tail_len]
    return np.concatenate([head[name][rows[:split]], cols[name][rows[split:] - tail_len]])


class _Stream:
    __slots__ = ("seq", "policy_version", "tail")

    def __init__(self, seq: int, policy_version: int, tail: dict[str, np.ndarray] | None):
        self.seq, self.policy_version, self.tail = seq, policy_version, tail

    @property
    def pending(self) -> int:
        return 0 if self.tail is None else len(self.tail["rew"])


class NStepAssembler:
    """Follows the worker streams and turns their transitions into n-step transitions (see the
    module docstring). :meth:`add` returns the column chunks to store, each a dict of the six
    transition fields (``rew`` replaced by the n-step return) plus ``discount``."""

    def __init__(self, n_step: int, gamma: float):
        self.n_step = checks.positive_int("n_step", n_step)
        self.gamma = check_gamma(gamma)
        self._streams: dict[str, _Stream] = {}
        self._shapes: dict[str, tuple] | None = None

    @property
    def pending(self) -> int:
        """Transitions waiting for the rest of their window, over all streams."""
        return sum(stream.pending for stream in self._streams.values())

    def _check_shapes(self, columns: dict[str, np.ndarray]) -> None:
        shapes = {name: tuple(columns[name].shape[1:]) for name in TRANSITION_FIELDS}
        if self._shapes is None:
            self._shapes = shapes
            return
        for name, shape in shapes.items():
            if shape != self._shapes[name]:
                raise ValueError(f"buffer field {name!r} has per-transition shape {shape}, but this "
                                 f"memory stores {self._shapes[name]}: all workers must use the same "
                                 "environment spaces")

    def add(self, buffer: Buffer) -> list[dict[str, np.ndarray]]:
        """The n-step transitions that ``buffer`` completes (in its streams), as column chunks."""
        columns = buffer.arrays()
        self._check_shapes(columns)
        segments = buffer.segments() if isinstance(buffer, Buffer) else [
            (getattr(buffer, "worker_id", ""), getattr(buffer, "seq", 0),
             getattr(buffer, "policy_version", 0), 0, len(buffer))]
        whole = len(segments) == 1
        chunks: list[dict[str, np.ndarray]] = []
        for worker_id, seq, policy_version, start, stop in segments:
            cols = columns if whole else {name: col[start:stop] for name, col in columns.items()}
            stream = self._streams.get(worker_id)
            head = None
            if stream is not None:
                if seq == stream.seq + 1 and policy_version >= stream.policy_version:
                    head = stream.tail
                elif stream.tail is not None:  # the stream broke: store what waits as it is
                    chunks.append(self._assemble(stream.tail, None, complete_all=True)[0])
            chunk, tail = self._assemble(head, cols if stop > start else None, complete_all=False)
            if chunk is not None:
                chunks.append(chunk)
            self._streams[worker_id] = _Stream(int(seq), int(policy_version), tail)
        return [chunk for chunk in chunks if chunk is not None]

    def flush(self) -> list[dict[str, np.ndarray]]:
        """Every pending transition as a shortened window (bootstrapping from where it stops); the
        streams stay, so their next buffers continue counting ``seq``."""
        chunks = []
        for stream in self._streams.values():
            if stream.tail is not None:
                chunk = self._assemble(stream.tail, None, complete_all=True)[0]
                if chunk is not None:
                    chunks.append(chunk)
                stream.tail = None
        return chunks

    def _assemble(self, head, cols, complete_all: bool):
        """``(chunk or None, new tail or None)`` for the stream ``head`` (pending rows) + ``cols``."""
        p = 0 if head is None else len(head["rew"])
        if cols is None:
            if p == 0:
                return None, None
            head, cols, p = None, head, 0
        s = len(cols["rew"])
        length = p + s

        def flat(name):
            return cols[name] if p == 0 else np.concatenate([head[name], cols[name]])

        terminated, truncated = flat("terminated"), flat("truncated")
        c, last, returns, discounts = nstep_windows(flat("rew"), terminated, truncated, self.n_step,
                                                    self.gamma, complete_all)
        chunk = None
        if c:
            chunk = {"obs": _range(head, p, cols, "obs", 0, c), "act": _range(head, p, cols, "act", 0, c),
                     "rew": returns.astype(np.float32),
                     "next_obs": _gather(head, p, cols, "next_obs", last),
                     "terminated": terminated[last], "truncated": truncated[last], "discount": discounts}
        tail = None
        if c < length:  # copies: the tail must not keep the whole buffer alive
            tail = {name: np.array(_range(head, p, cols, name, c, length)) for name in TRANSITION_FIELDS}
        return chunk, tail

    # --- checkpointing -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        streams = {}
        for worker_id, stream in self._streams.items():
            entry: dict[str, Any] = {"seq": stream.seq, "policy_version": stream.policy_version}
            if stream.tail is not None:
                entry["tail"] = {name: stream.tail[name] for name in TRANSITION_FIELDS}
            streams[worker_id] = entry
        return {"n_step": self.n_step, "gamma": self.gamma, "streams": streams}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the streams (their pending tails are raw transitions: they fit any ``n_step``)."""
        self._streams, self._shapes = {}, None
        for worker_id, entry in (state.get("streams") or {}).items():
            tail = entry.get("tail")
            if tail:
                tail = {name: np.array(tail[name]) for name in TRANSITION_FIELDS}  # a copy (mmap)
                if not len(tail["rew"]):
                    tail = None
                else:
                    self._check_shapes(tail)
            self._streams[str(worker_id)] = _Stream(int(entry["seq"]), int(entry["policy_version"]),
                                                    tail or None)


def to_device(array: np.ndarray, device: torch.device, pin: bool) -> torch.Tensor:
    """A float32 tensor of ``array`` on ``device`` (pinned, non-blocking copy on CUDA)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if device.type != "cpu":
        if pin:
            tensor = tensor.pin_memory()
        tensor = tensor.to(device, non_blocking=True)
    return tensor


class NStepReplayMemory(ReplayMemory):
    """Uniform replay of n-step transitions (see the module docstring).

    Parameters as :class:`~relayrl.memory.ReplayMemory`'s, and

    n_step:
        Window length ``n`` (1: plain transitions, exactly as ``ReplayMemory``, no ``discount``
        column, batches' ``discounts`` None).
    gamma:
        Discount of the returns; the agent's own (``gamma`` of its settings).

    Batches are :class:`~relayrl.memory.ReplayBatch` es whose ``discounts`` (``gamma ** m`` per
    sample) replace ``gamma`` in the agent's target; ``indices`` are the memory slots. Draws do not
    depend on the updates, so :attr:`draw_ahead` stays True.
    """

    draw_ahead = True

    def __init__(self, nb_steps: int, device: str | torch.device = "cpu", batch_size: int = 256,
                 capacity: int = 1_000_000, seed: int | None = None, float_observations: bool = True,
                 n_step: int = 3, gamma: float = 0.99):
        super().__init__(nb_steps, device, batch_size, capacity, seed, float_observations)
        self.n_step = checks.positive_int("n_step", n_step)
        self.gamma = check_gamma(gamma)
        self._assembler = NStepAssembler(self.n_step, self.gamma) if self.n_step > 1 else None

    @property
    def pending(self) -> int:
        """Transitions received but not stored yet (waiting for the rest of their window)."""
        return 0 if self._assembler is None else self._assembler.pending

    def append(self, buffer: Buffer) -> None:
        n = len(buffer)
        if n == 0:
            return
        if self._assembler is None:
            super().append(buffer)
            return
        if self._columns is not None:
            self._check_shapes(buffer.arrays())
        for chunk in self._assembler.add(buffer):
            self._write(chunk)
        self.total_appended += n

    def flush(self) -> int:
        """Store every pending transition with its shortened window; return how many."""
        if self._assembler is None:
            return 0
        chunks = self._assembler.flush()
        for chunk in chunks:
            self._write(chunk)
        return sum(len(chunk["rew"]) for chunk in chunks)

    def collate(self, indices: np.ndarray) -> ReplayBatch:
        batch = super().collate(indices)
        discounts = None
        if self._assembler is not None:
            discounts = to_device(self._columns["discount"][indices], self.device, self._pin)
        return ReplayBatch.of(batch, discounts=discounts, indices=indices)

    # --- checkpointing -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._assembler is not None:
            state["nstep"] = self._assembler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        saved = state.get("nstep") or {}
        if self._assembler is not None:
            self._assembler.load_state_dict(saved)
        elif any(entry.get("tail") for entry in (saved.get("streams") or {}).values()):
            raise ValueError("the memory state holds pending n-step transitions: load it into an "
                             "n-step memory (memory.n_step > 1)")

    def _restore_columns(self, columns: dict[str, Any]) -> None:
        if self._assembler is None:
            super()._restore_columns(columns)
            return
        restored = {name: np.asarray(columns[name]) for name in TRANSITION_FIELDS}
        if "discount" in columns:
            restored["discount"] = np.asarray(columns["discount"], np.float32)
        else:  # a one-step memory's transitions: their bootstrap is one step away
            restored["discount"] = np.full(len(restored["rew"]), self.gamma, np.float32)
        self._write(restored)
