"""Prioritized replay (Schaul et al., 2016, proportional variant) and the choice of a run's memory.

:class:`PrioritizedReplayMemory` draws slot ``i`` with probability ``P(i) = p_i^alpha / sum_j
p_j^alpha`` (``alpha``: ``priority_exponent``) and hands out, with each batch, the importance weights
``w_i = (N P(i))^-beta / max_j w_j`` (``beta``: ``importance_exponent``, ``N``: transitions
stored). The maximum is taken **over the batch** (the paper's normalisation, as most
implementations do it; a maximum over the whole memory would need a min-tree and only rescales all
weights by a common factor).

Priorities: a new transition gets the largest priority seen so far (1 at first), so it is drawn soon;
after the agent's update, the TD errors it reported on the batch
(:meth:`~relayrl.memory.ReplayBatch.report_td_errors`) set ``p_i = |delta_i| + epsilon``, in
:meth:`~PrioritizedReplayMemory.after_update` (the training loop calls it on its thread right after
``agent.train(batch)``). A slot overwritten by the ring buffer gets the new transition's priority; an
error reported for a slot overwritten since its draw is ignored (each slot carries a write stamp,
checked against the batch's ``stamps``). Draws depend on these updates, so :attr:`draw_ahead` is
False: one batch per update, drawn after the previous update's priorities are in.

The :class:`SumTree` is one array: node ``k``'s children are ``2k`` and ``2k+1``, the leaves (one per
slot, ``p^alpha``) start at a power of two. Appends set contiguous ranges of leaves and recompute
their ancestors level by level as slices; priority updates recompute scattered ancestors level by
level with fancy indexing; a draw descends all its ``B`` queries at once, one level per step, the
queries stratified (one uniform draw in each of ``B`` equal segments of the total). Sums are
float64 and recomputed from the children (no drift from incremental additions).

:func:`configured_memory_cls` builds the memory class of a run from its ``MemoryConfig``.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from .memory import Memory, ReplayBatch, ReplayMemory
from .nstep import NStepReplayMemory, to_device

__all__ = ["SumTree", "PrioritizedReplayMemory", "configured_memory_cls"]


class SumTree:
    """Sums of non-negative leaf values over an array-based binary tree (see the module docstring)."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._base = 1 << max(0, (self.capacity - 1).bit_length())  # index of leaf 0
        self._nodes = np.zeros(2 * self._base, np.float64)
        self._pairs = self._nodes.reshape(-1, 2)  # row k: the children (2k, 2k+1) of node k

    @property
    def depth(self) -> int:
        """Levels a draw descends: log2 of the leaves, rounded up (20 for a million)."""
        return self._base.bit_length() - 1

    @property
    def total(self) -> float:
        return float(self._nodes[1])

    @property
    def leaves(self) -> np.ndarray:
        """The leaf values (a read-only view)."""
        view = self._nodes[self._base:self._base + self.capacity]
        view.flags.writeable = False
        return view

    def set_range(self, start: int, values: np.ndarray | float, count: int | None = None) -> None:
        """Leaves ``start .. start+count-1`` (no wrap-around) = ``values``; ancestors recomputed,
        level by level, as slices."""
        count = len(values) if count is None else count
        if count <= 0:
            return
        nodes, pairs = self._nodes, self._pairs
        lo, hi = self._base + start, self._base + start + count  # node range [lo, hi)
        nodes[lo:hi] = values
        for _ in range(self.depth):
            lo, hi = lo >> 1, ((hi - 1) >> 1) + 1
            np.add(pairs[lo:hi, 0], pairs[lo:hi, 1], out=nodes[lo:hi])

    def update(self, slots: np.ndarray, values: np.ndarray) -> None:
        """Leaves ``slots`` (any order, repeats allowed: the last value wins) = ``values``; their
        ancestors recomputed level by level (a repeated parent gets the same sum twice)."""
        nodes = np.asarray(slots, np.int64) + self._base
        if not len(nodes):
            return
        tree = self._nodes
        tree[nodes] = values
        for _ in range(self.depth):
            nodes >>= 1
            left = nodes << 1
            tree[nodes] = tree[left] + tree[left + 1]

    def set_all(self, values: np.ndarray) -> None:
        """Leaves ``0 .. len(values)-1`` = ``values``, every other leaf 0; the tree rebuilt."""
        tree, pairs = self._nodes, self._pairs
        tree[self._base:] = 0.0
        tree[self._base:self._base + len(values)] = values
        for level in range(self.depth - 1, -1, -1):
            lo, hi = 1 << level, 2 << level
            np.add(pairs[lo:hi, 0], pairs[lo:hi, 1], out=tree[lo:hi])

    def find(self, targets: np.ndarray) -> np.ndarray:
        """For each target ``u`` in ``[0, total)``, the slot ``i`` whose prefix-sum interval
        ``[S_{i-1}, S_i)`` holds ``u``; all targets descend at once, one level per step (6 cheap
        numpy calls a level). Never a leaf of value 0: targets are kept below the total, and the
        rare target that rounding sends past its node's sum goes down again the careful way."""
        tree = self._nodes
        u = np.minimum(np.asarray(targets, np.float64), np.nextafter(self.total, 0.0))
        node = np.ones(len(u), np.int64)
        for _ in range(self.depth):
            node <<= 1
            left_sum = tree[node]
            right = u >= left_sum
            u -= left_sum * right
            node += right
        empty = self._nodes[node] <= 0
        if empty.any():
            node[empty] = self._find_careful(np.asarray(targets, np.float64)[empty])
        return node - self._base

    def _find_careful(self, targets: np.ndarray) -> np.ndarray:
        """:meth:`find` that goes right only into a positive subtree (returns node indices)."""
        tree = self._nodes
        u = np.minimum(targets, np.nextafter(self.total, 0.0))
        node = np.ones(len(u), np.int64)
        for _ in range(self.depth):
            left = node * 2
            left_sum = tree[left]
            right = (u >= left_sum) & (tree[left + 1] > 0)
            u -= left_sum * right
            node = left + right
        return node

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` slots drawn with probability proportional to their leaves, stratified: one
        uniform draw in each of ``count`` equal segments of the total."""
        total = self.total
        if not total > 0:
            raise RuntimeError("cannot sample from a sum tree whose leaves are all 0")
        return self.find((np.arange(count) + rng.random(count)) * (total / count))


class PrioritizedReplayMemory(NStepReplayMemory):
    """Proportional prioritized replay over the ring buffer, with optional n-step returns (see the
    module docstring and :mod:`relayrl.nstep`).

    Parameters as :class:`~relayrl.nstep.NStepReplayMemory`'s (``n_step`` defaults to 1 here), and

    priority_exponent:
        ``alpha`` in ``[0, 1]`` (0: uniform draws, weights all 1).
    importance_exponent:
        ``beta`` in ``[0, 1]`` (1: the skew of the draws fully corrected).
    priority_epsilon:
        Added to ``|TD error|`` so that no transition's priority is 0.

    Batches are :class:`~relayrl.memory.ReplayBatch` es with ``weights``, ``indices``, ``stamps``
    and (``n_step > 1``) ``discounts``.
    """

    draw_ahead = False

    def __init__(self, nb_steps: int, device: str | torch.device = "cpu", batch_size: int = 256,
                 capacity: int = 1_000_000, seed: int | None = None, float_observations: bool = True,
                 n_step: int = 1, gamma: float = 0.99, priority_exponent: float = 0.6,
                 importance_exponent: float = 0.4, priority_epsilon: float = 1e-6):
        super().__init__(nb_steps, device, batch_size, capacity, seed, float_observations, n_step, gamma)
        for name, value in (("priority_exponent", priority_exponent),
                            ("importance_exponent", importance_exponent)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if isinstance(priority_epsilon, bool) or not isinstance(priority_epsilon, (int, float)) \
                or not priority_epsilon > 0:
            raise ValueError(f"priority_epsilon must be a number > 0, got {priority_epsilon!r}")
        self.priority_exponent = float(priority_exponent)
        self.importance_exponent = float(importance_exponent)
        self.priority_epsilon = float(priority_epsilon)
        self._reset_priorities()

    def _reset_priorities(self) -> None:
        self._tree = SumTree(self.capacity)
        self._stamps = np.zeros(self.capacity, np.int64)  # write count of each slot's transition
        self._writes = 0
        self.max_priority = 1.0

    @property
    def tree(self) -> SumTree:
        return self._tree

    def priorities(self) -> np.ndarray:
        """``p_i^alpha`` of the stored slots (a copy, slot order)."""
        return np.array(self._tree.leaves[:self._size])

    # --- writing: new transitions get the largest priority ---------------------------------------
    def _write(self, columns: dict[str, np.ndarray]) -> tuple[int, int]:
        slot, count = super()._write(columns)
        value = self.max_priority ** self.priority_exponent
        first = min(count, self.capacity - slot)
        stamps = self._writes + np.arange(count, dtype=np.int64)
        self._tree.set_range(slot, value, first)
        self._stamps[slot:slot + first] = stamps[:first]
        if first < count:
            self._tree.set_range(0, value, count - first)
            self._stamps[:count - first] = stamps[first:]
        self._writes += count
        return slot, count

    # --- reading -----------------------------------------------------------------------------------
    def sample_indices(self, count: int | None = None) -> np.ndarray:
        """``count`` (default ``batch_size``) slots drawn with probability ``P(i)``, stratified."""
        if self._size == 0:
            raise RuntimeError("cannot sample from an empty memory: wait for samples "
                               "(TrainingOffline gates on start_training and batch_size)")
        return self._tree.sample(self.batch_size if count is None else count, self._rng)

    def importance_weights(self, indices: np.ndarray) -> np.ndarray:
        """``(N P(i))^-beta / max_j (N P(j))^-beta`` over ``indices`` (float32): ``(min_j P(j) /
        P(i))^beta``, the maximum taken over these indices."""
        leaves = self._tree.leaves[indices]
        return np.power(leaves.min() / leaves, self.importance_exponent).astype(np.float32)

    def sample(self) -> ReplayBatch:
        indices = self.sample_indices()
        batch = self.collate(indices)
        batch.weights = to_device(self.importance_weights(indices), self.device, self._pin)
        batch.stamps = self._stamps[indices]
        return batch

    def sample_batches(self, n: int) -> list[ReplayBatch]:
        return Memory.sample_batches(self, n)  # n calls of sample(): each draw sees the priorities

    # --- priorities from the agent ---------------------------------------------------------------
    def after_update(self, batch) -> None:
        """Apply the TD errors the agent reported on ``batch`` (if any) to its slots' priorities."""
        errors = getattr(batch, "td_errors", None)
        indices = getattr(batch, "indices", None)
        if errors is None or indices is None:
            return
        batch.td_errors = None  # applied once
        self.update_priorities(indices, errors, getattr(batch, "stamps", None))

    def update_priorities(self, indices: np.ndarray, errors, stamps: np.ndarray | None = None) -> None:
        """Priorities ``|errors| + epsilon`` for ``indices``; slots whose write stamp differs from
        ``stamps`` (overwritten since the draw) are left alone. Non-finite errors count as the
        largest priority so far."""
        if isinstance(errors, torch.Tensor):
            errors = errors.detach().to("cpu", torch.float64).numpy()
        priorities = np.abs(np.asarray(errors, np.float64).reshape(-1))
        indices = np.asarray(indices, np.int64).reshape(-1)
        if priorities.shape != indices.shape:
            raise ValueError(f"{priorities.size} TD errors reported for a batch of {indices.size} samples")
        if stamps is None:
            keep = (indices >= 0) & (indices < self._size)
        else:  # slots drawn by this memory: only those written since are left out
            keep = self._stamps[indices] == np.asarray(stamps).reshape(-1)
        if not keep.all():
            priorities, indices = priorities[keep], indices[keep]
            if not len(indices):
                return
        priorities += self.priority_epsilon
        top = float(priorities.max())
        if not np.isfinite(top):  # NaN or inf errors: the largest priority so far instead
            finite = np.isfinite(priorities)
            top = float(priorities[finite].max()) if finite.any() else self.max_priority
            priorities[~finite] = max(self.max_priority, top)
        self.max_priority = max(self.max_priority, top)
        self._tree.update(indices, priorities ** self.priority_exponent)

    # --- checkpointing -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        leaves = np.array(self._tree.leaves[:self._size][self._chronological_slice()])  # as the columns
        state["priorities"] = {"leaves": leaves, "max_priority": self.max_priority,
                               "priority_exponent": self.priority_exponent}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._reset_priorities()
        super().load_state_dict(state)  # the columns: written at the largest priority (1)
        saved = state.get("priorities")
        if not saved or not self._size:
            return
        leaves = np.asarray(saved["leaves"], np.float64)
        if len(leaves) != len(state["columns"]["rew"]):
            raise ValueError(f"the memory state has {len(leaves)} priorities for "
                             f"{len(state['columns']['rew'])} transitions")
        leaves = leaves[len(leaves) - self._size:]  # what a smaller capacity keeps: the newest
        self.max_priority = float(saved.get("max_priority", 1.0))
        old_alpha = float(saved.get("priority_exponent", self.priority_exponent))
        if old_alpha != self.priority_exponent:  # p^a_old -> p^a_new
            if old_alpha > 0:
                leaves = np.power(leaves, self.priority_exponent / old_alpha)
            else:  # priorities unknown: the largest, as for new transitions
                leaves = np.full(len(leaves), self.max_priority ** self.priority_exponent)
        by_slot = np.empty(self._size, np.float64)
        by_slot[self._chronological_slice()] = leaves  # the slots the columns were written to
        self._tree.set_all(by_slot)


def configured_memory_cls(memory, gamma: float = 0.99, seed: int | None = None):
    """The ``memory_cls`` of a run (for :class:`~relayrl.training_offline.TrainingOffline`) from
    its ``MemoryConfig`` ``memory``: :class:`~relayrl.memory.ReplayMemory` for one-step uniform
    replay (the default, unchanged), :class:`~relayrl.nstep.NStepReplayMemory` for ``n_step > 1``,
    :class:`PrioritizedReplayMemory` when ``prioritized``. ``gamma``: the agent's discount."""
    common = dict(batch_size=memory.batch_size, capacity=memory.capacity, seed=seed)
    if memory.prioritized:
        return functools.partial(PrioritizedReplayMemory, **common, n_step=memory.n_step, gamma=gamma,
                                 priority_exponent=memory.priority_exponent,
                                 importance_exponent=memory.importance_exponent)
    if memory.n_step > 1:
        return functools.partial(NStepReplayMemory, **common, n_step=memory.n_step, gamma=gamma)
    return functools.partial(ReplayMemory, **common)
