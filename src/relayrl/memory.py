"""Replay memories (tmrl's ``Memory``): the contract and the default ring-buffer memory.

The contract, used by :class:`~relayrl.training_offline.TrainingOffline`:

* built as ``memory_cls(nb_steps=..., device=...)`` (bind the rest with ``functools.partial``);
* ``len(memory)``: the number of transitions that can be sampled now;
* ``memory.append(buffer)``: store the transitions of a :class:`~relayrl.buffer.Buffer`;
* ``iter(memory)``: yields exactly ``nb_steps`` batches, each a :class:`Batch`
  ``(obs, act, rew, next_obs, terminated, truncated)`` of tensors on ``device``;
* attributes ``batch_size``, ``capacity`` and ``device``;
* how the loop may draw (see :mod:`relayrl.batches`): ``draw_ahead`` (may batches be drawn before
  the previous update ran?), ``sample_batches(n)`` (``n`` batches at once) and
  ``batches_per_draw`` (how many are worth drawing at once). :class:`Memory` gives defaults.

:class:`ReplayMemory` stores each field in one preallocated numpy ring buffer, samples indices
uniformly with a seeded generator, gathers each field with one vectorised indexing operation and
moves the batch to the device once (pinned memory and non-blocking copies on CUDA). Nothing is done
per sample in Python. Memories that keep their data differently can subclass :class:`Memory` and
implement ``__len__``, ``append`` and ``sample``. :mod:`relayrl.nstep` adds n-step returns
(``NStepReplayMemory``) and :mod:`relayrl.prioritized` prioritized replay
(``PrioritizedReplayMemory``, and ``configured_memory_cls``, which picks the memory of a run from
its ``MemoryConfig``).

What a batch carries, for agents
--------------------------------
A batch always unpacks (and indexes) as the 6-tuple ``obs, act, rew, next_obs, terminated,
truncated = batch``. A :class:`ReplayBatch` (the n-step and prioritized memories hand those out; a
:class:`Batch` has the same attributes, always ``None``) carries besides:

* ``discounts``: ``None``, or a float32 ``(B,)`` tensor on the device: the discount of each sample's
  bootstrap, ``gamma ** m`` for its ``m``-step return (``rew`` is then already the discounted sum of
  the ``m`` rewards). When it is not ``None``, use it **instead of** ``gamma``:
  ``y = rew + discounts * (1 - terminated) * V(next_obs)``.
* ``weights``: ``None``, or a float32 ``(B,)`` tensor on the device: importance weights of a
  prioritized draw. When not ``None``, multiply the *per-sample* critic losses by them before
  averaging: ``(weights * (q - y) ** 2).mean()``.
* ``indices``: ``None``, or the ``np.ndarray`` of memory slots the samples came from.
* ``report_td_errors(errors)``: hand back ``|y - Q(obs, act)|`` per sample, a ``(B,)`` tensor
  (detached; with several critics, e.g. their mean). It only stores them in ``td_errors`` (so it
  may be called from any thread); the memory reads them in ``after_update(batch)``, which the
  training loop calls on its own thread after ``agent.train(batch)`` returned. Memories that do not
  use them ignore them.

Read them with ``getattr(batch, "weights", None)`` (and ``getattr(batch, "report_td_errors",
None)``) so that plain tuples, tmrl-style, keep working.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch

from . import checks
from .buffer import TRANSITION_FIELDS, Buffer


class Batch(NamedTuple):
    """A training batch; unpacks like tmrl's 6-tuple. Uniform replay hands these out: the extra
    attributes of the batch contract (see the module docstring) are all ``None`` and
    :meth:`report_td_errors` keeps nothing (nothing would read it)."""

    obs: torch.Tensor
    act: torch.Tensor
    rew: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor

    # class attributes, not fields: the tuple stays a 6-tuple
    weights = None
    discounts = None
    indices = None
    td_errors = None

    def report_td_errors(self, errors) -> None:
        """Nothing: this batch's memory does not use TD errors."""

    def rows(self, start: int, stop: int) -> "Batch":
        """Samples ``start:stop`` of every field (views), as a batch of the same kind."""
        return Batch(*(t[start:stop] for t in self))


class ReplayBatch(Batch):
    """A :class:`Batch` with the optional attributes of the batch contract set (see the module
    docstring): ``weights``, ``discounts``, ``indices`` and the ``td_errors`` the agent reports.
    ``stamps`` (the memory's write stamps of the slots, or ``None``) lets a prioritized memory
    ignore errors for slots overwritten since the draw."""

    # no __slots__: instances have a __dict__ for the attributes below
    @classmethod
    def of(cls, fields, weights=None, discounts=None, indices=None, stamps=None) -> "ReplayBatch":
        batch = cls(*fields)
        batch.weights, batch.discounts, batch.indices, batch.stamps = weights, discounts, indices, stamps
        batch.td_errors = None
        return batch

    def report_td_errors(self, errors) -> None:
        """Keep ``errors`` (``|y - Q|`` per sample, a ``(B,)`` tensor) for the memory's
        ``after_update``; only stores them, so any thread may call it."""
        self.td_errors = errors.detach() if isinstance(errors, torch.Tensor) else errors

    def rows(self, start: int, stop: int) -> "ReplayBatch":
        def cut(x):
            return None if x is None else x[start:stop]
        return ReplayBatch.of(tuple(t[start:stop] for t in self), cut(self.weights),
                              cut(self.discounts), cut(self.indices), cut(getattr(self, "stamps", None)))


class Memory(ABC):
    """Base class of replay memories (see the module docstring for the contract)."""

    draw_ahead: bool = False
    """May the training loop draw a batch before the previous update ran? True when drawing does
    not depend on the updates (uniform replay, augmentation with its own generator...): the loop
    may then prefetch the next batch in a thread while an update trains, or draw the batches of
    all the updates until its next pull at once (:meth:`sample_batches`). False (the default, as
    nothing is known about a subclass): one batch per update, drawn just before it, after the
    previous update returned; right for memories whose draws depend on the updates (priorities the
    agent sets after each step, for instance). :class:`ReplayMemory` sets it True. A class or an
    instance attribute; read once per round."""

    batches_per_draw: int = 1
    """Most batches the loop asks :meth:`sample_batches` for at once (when :attr:`draw_ahead`).
    1 here, since the default :meth:`sample_batches` is no cheaper in bulk; raise it (or make it a
    property) when yours is."""

    def __init__(self, nb_steps: int, device: str | torch.device = "cpu", batch_size: int = 256,
                 capacity: int = 1_000_000):
        self.nb_steps = checks.positive_int("nb_steps", nb_steps)
        self.batch_size = checks.positive_int("batch_size", batch_size)
        self.capacity = checks.capacity_fits_batch("capacity", capacity, "batch_size", self.batch_size)
        self.device = torch.device(device)

    @abstractmethod
    def __len__(self) -> int:
        """Transitions that can be sampled now."""

    @abstractmethod
    def append(self, buffer: Buffer) -> None:
        """Store the transitions of ``buffer``."""

    @abstractmethod
    def sample(self) -> Batch:
        """One batch of ``batch_size`` transitions on ``device``."""

    def sample_batches(self, n: int) -> list[Batch]:
        """``n`` batches at once, the ones ``n`` calls of :meth:`sample` return (this default
        makes those calls). The loop calls it only when :attr:`draw_ahead` is true."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return [self.sample() for _ in range(n)]

    def __iter__(self) -> Iterator[Batch]:
        for _ in range(self.nb_steps):
            yield self.sample()

    def after_update(self, batch) -> None:
        """Called by the training loop right after ``agent.train(batch)``, on the loop's thread: the
        hook through which what the agent learned about the batch comes back to the memory (a
        prioritized memory reads the TD errors the agent reported on the batch). Nothing here."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to restore the memory (override when there is state)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


class ReplayMemory(Memory):
    """Uniform replay over a preallocated ring buffer (the default memory).

    Parameters
    ----------
    nb_steps, device:
        Given by ``TrainingOffline`` (batches per round, where batches are collated).
    batch_size:
        Transitions per batch.
    capacity:
        Transitions kept; the oldest are overwritten first.
    seed:
        Seed of the sampling generator (``None``: fresh entropy).
    float_observations:
        ``True`` (default): ``obs`` and ``next_obs`` come out as float32 like every other field.
        ``False``: they keep their stored dtype (``uint8`` images stay 1 byte per pixel, 4x fewer
        bytes to gather and copy to the device); the network then converts (and scales) them.

    Storage is allocated on the first ``append`` from the buffer's shapes and dtypes (observations
    keep their dtype, so ``uint8`` images stay 1 byte per pixel); batches are float32 tensors,
    except the observations when ``float_observations`` is false.

    Uniform draws do not depend on the updates, so :attr:`draw_ahead` is True. A subclass that
    overrides ``sample``, ``sample_indices`` or ``collate`` (priorities, augmentation...) gets
    ``draw_ahead = False`` when it is defined, unless its class body sets ``draw_ahead`` itself:
    nothing is drawn before the previous update ran, unless the subclass says it may be. (One that
    overrides ``sample`` and sets ``draw_ahead = True`` should override :meth:`sample_batches`
    too, which gathers through ``sample_indices`` and ``collate``; ``Memory.sample_batches``, ``n``
    calls of ``sample``, is always right.)
    """

    draw_ahead = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "draw_ahead" not in vars(cls) and any(
                name in vars(cls) for name in ("sample", "sample_indices", "collate")):
            cls.draw_ahead = False

    def __init__(self, nb_steps: int, device: str | torch.device = "cpu", batch_size: int = 256,
                 capacity: int = 1_000_000, seed: int | None = None, float_observations: bool = True):
        super().__init__(nb_steps, device, batch_size, capacity)
        if not isinstance(float_observations, bool):
            raise TypeError(f"float_observations must be True or False, got {float_observations!r}")
        self.float_observations = float_observations
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._columns: dict[str, np.ndarray] | None = None
        self._size = 0      # transitions stored
        self._next = 0      # ring position of the next write
        self.total_appended = 0
        self._pin = self.device.type == "cuda"

    def __len__(self) -> int:
        return self._size

    # --- writing -------------------------------------------------------------------------------
    def _allocate(self, columns: dict[str, np.ndarray]) -> None:
        self._columns = {}
        for name, column in columns.items():
            dtype = column.dtype
            if name in ("rew", "discount"):
                dtype = np.float32
            elif name in ("terminated", "truncated"):
                dtype = np.bool_
            elif name == "act" and np.issubdtype(dtype, np.floating):
                dtype = np.float32
            self._columns[name] = np.empty((self.capacity, *column.shape[1:]), dtype=dtype)

    def _check_shapes(self, columns: dict[str, np.ndarray]) -> None:
        for name, column in columns.items():
            if column.shape[1:] != self._columns[name].shape[1:]:
                raise ValueError(f"buffer field {name!r} has per-transition shape {column.shape[1:]},"
                                 f" but this memory stores {self._columns[name].shape[1:]}: all workers "
                                 "must use the same environment spaces")

    def append(self, buffer: Buffer) -> None:
        n = len(buffer)
        if n == 0:
            return
        self._write(buffer.arrays())
        self.total_appended += n

    def _write(self, columns: dict[str, np.ndarray]) -> tuple[int, int]:
        """Store the rows of ``columns`` (one array per stored field, same first dimension) in the
        ring; return ``(first slot, rows written)`` (the rows then occupy consecutive slots modulo
        the capacity; only the newest ``capacity`` rows of a larger write are kept)."""
        n = len(next(iter(columns.values())))
        if self._columns is None:
            self._allocate(columns)
        else:
            self._check_shapes(columns)
        if n > self.capacity:                 # only the newest `capacity` transitions survive
            start = n - self.capacity
            n = self.capacity
        else:
            start = 0
        slot = self._next
        first = min(n, self.capacity - slot)   # at most two contiguous writes
        for name, column in columns.items():
            dst = self._columns[name]
            dst[slot:slot + first] = column[start:start + first]
            if first < n:
                dst[:n - first] = column[start + first:start + n]
        self._next = (slot + n) % self.capacity
        self._size = min(self.capacity, self._size + n)
        return slot, n

    # --- reading -------------------------------------------------------------------------------
    def sample_indices(self, count: int | None = None) -> np.ndarray:
        """``count`` (default ``batch_size``) indices drawn uniformly, with replacement."""
        if self._size == 0:
            raise RuntimeError("cannot sample from an empty memory: wait for samples "
                               "(TrainingOffline gates on start_training and batch_size)")
        return self._rng.integers(0, self._size, size=self.batch_size if count is None else count)

    def collate(self, indices: np.ndarray) -> Batch:
        """Gather ``indices`` from every column at once and move the batch to the device."""
        tensors = []
        keep_obs_dtype = not self.float_observations
        for name in TRANSITION_FIELDS:
            array = self._columns[name][indices]
            tensor = torch.from_numpy(array)
            if tensor.dtype != torch.float32 and not (keep_obs_dtype and name in ("obs", "next_obs")):
                tensor = tensor.to(torch.float32)
            if self.device.type != "cpu":
                if self._pin:
                    tensor = tensor.pin_memory()
                tensor = tensor.to(self.device, non_blocking=True)
            tensors.append(tensor)
        return Batch(*tensors)

    def sample(self) -> Batch:
        return self.collate(self.sample_indices())

    #: Most bytes of batches :meth:`sample_batches` gathers at once (see :attr:`batches_per_draw`).
    max_draw_bytes = 4 << 20

    @property
    def batch_bytes(self) -> int:
        """Bytes of one batch as handed out (0 before the first append)."""
        if self._columns is None:
            return 0
        total = 0
        for name, column in self._columns.items():
            per_row = column.size // max(1, len(column))
            keeps_dtype = not self.float_observations and name in ("obs", "next_obs")
            total += per_row * (column.itemsize if keeps_dtype else 4)
        return total * self.batch_size

    @property
    def batches_per_draw(self) -> int:
        """How many batches :meth:`sample_batches` gathers in one go: as many as fit in
        :attr:`max_draw_bytes` (a few hundred of Pendulum's, which are 10 KB each), at least 1 (so
        image batches are drawn one at a time, as by :meth:`sample`)."""
        return max(1, self.max_draw_bytes // max(1, self.batch_bytes))

    def sample_batches(self, n: int) -> list[Batch]:
        """``n`` batches at once: the very batches ``n`` calls of :meth:`sample` would return (the
        same draws from the generator), gathered with one indexing operation per field for every
        :attr:`batches_per_draw` batches and handed out as contiguous slices of the result.

        The training loop (:class:`~relayrl.batches.DrawAhead`) uses it to draw the batches of the
        updates until its next pull (the memory does not change in between), at most :attr:`batches_per_draw` at a time. Per update,
        the Python and numpy calls of a draw cost several times more right after a training step
        (whose kernels have evicted the interpreter's working set from the caches) than in a burst:
        265 vs 54 us per SAC update of Pendulum size in ``benchmarks/bench_overhead.py``'s rounds
        (its "one draw per update" rows)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        size, per_draw = self.batch_size, self.batches_per_draw
        batches: list[Batch] = []
        while len(batches) < n:
            k = min(per_draw, n - len(batches))
            if k == 1:
                batches.append(self.sample())
                continue
            tensors = self.collate(self.sample_indices(k * size))
            if isinstance(tensors, Batch):
                batches.extend(tensors.rows(i * size, (i + 1) * size) for i in range(k))
            else:  # a subclass's collate returned another sequence of tensors
                batches.extend(Batch(*(t[i * size:(i + 1) * size] for t in tensors)) for i in range(k))
        return batches

    def get_transition(self, index: int) -> tuple:
        """One stored transition as numpy values (slow path, for inspection and custom memories)."""
        if not 0 <= index < self._size:
            raise IndexError(f"transition {index} out of range [0, {self._size})")
        return tuple(self._columns[name][index] for name in TRANSITION_FIELDS)

    # --- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        columns = {}
        if self._columns is not None:
            # store in chronological order, only the filled part
            order = self._chronological_slice()
            columns = {name: col[order] if not isinstance(order, slice) else col[order]
                       for name, col in self._columns.items()}
        return {"columns": columns, "total_appended": self.total_appended,
                "rng": self._rng.bit_generator.state, "next": self._next}

    def _chronological_slice(self):
        if self._size < self.capacity:
            return slice(0, self._size)
        return np.concatenate([np.arange(self._next, self.capacity), np.arange(0, self._next)])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        columns = state.get("columns") or {}
        self._columns, self._size, self._next = None, 0, 0
        if columns:
            missing = set(TRANSITION_FIELDS) - set(columns)
            if missing:
                raise ValueError(f"memory state lacks columns {sorted(missing)}")
            rows = len(columns["rew"])
            if rows == self.capacity and 0 <= int(state.get("next", 0)) < rows:
                self._next = int(state.get("next", 0))  # a full ring: every slot as it was saved
            if rows:
                self._restore_columns(columns)
        self.total_appended = int(state.get("total_appended", self._size))
        if "rng" in state:
            self._rng.bit_generator.state = state["rng"]

    def _restore_columns(self, columns: dict[str, Any]) -> None:
        """Write the chronological columns of a state back (subclasses with more columns override)."""
        if "discount" in columns:
            raise ValueError("the memory state holds n-step transitions (a 'discount' column): load it "
                             "into an n-step memory (memory.n_step > 1), not a one-step one")
        self._write({name: np.asarray(columns[name]) for name in TRANSITION_FIELDS})
