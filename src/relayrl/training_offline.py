"""The training wrapper for off-policy algorithms: ``TrainingOffline`` and ``TorchTrainingOffline``.

Glossary
--------
update (training step)
    One ``agent.train(batch)`` call. ``total_updates`` counts them over the whole run.
sample
    One environment transition received from a worker. ``total_samples`` counts them.
round
    ``steps`` updates, after which one statistics row is produced.
epoch
    ``rounds`` rounds; the :class:`~relayrl.trainer.Trainer` checkpoints after each.

The loop (``run_epoch``) in one screen::

    agent_scheduler(agent, epoch)                     # if given
    for each of `rounds` rounds:
        wait until training is allowed                # start_training gate and the ratio cap
        for each of `steps` updates:
            if total_updates % update_buffer_interval == 0: pull new samples into the memory
            agent.train(next batch); total_updates += 1
            if total_updates % update_model_interval == 0: broadcast the actor
            wait until training is allowed
        one statistics row
    epoch += 1

Training is allowed when the memory holds at least ``max(start_training, batch_size)``
transitions *and* ``total_updates <= max_training_steps_per_env_step * total_samples``.

Differences from tmrl 0.7, on purpose: the counters live on the instance (and in checkpoints);
``start_training`` is compared with what the memory can sample; every wait inside a round counts in
``idle_time``; episode statistics are aggregated over all episodes finished in the round; the
profiler (``profiling=True``) covers one whole *epoch*, as the documentation says; the interface is
never stored on the instance.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any, Callable

import pandas as pd
import torch

from .buffer import Buffer
from .system import available_cores

log = logging.getLogger("relayrl")

#: Every key of a statistics row, with its unit and meaning (the README's table mirrors this).
STATS_KEYS: dict[str, str] = {
    "epoch": "epoch index (0-based) the round belongs to",
    "round": "round index within the epoch (0-based)",
    "total_updates": "training steps done since the run began, at the end of the round",
    "total_samples": "transitions received since the run began, at the end of the round",
    "memory_len": "transitions the memory can sample, at the end of the round",
    "round_time": "seconds: wall-clock duration of the round, waits included",
    "idle_time": "seconds: all time spent waiting for samples in the round (gate and ratio cap)",
    "sampling_duration": "seconds: mean time the loop spent getting a batch (drawing it, its share of "
                         "the batches drawn at once until the next pull, or waiting for the one "
                         "prefetched while the previous update trained)",
    "training_step_duration": "seconds: mean time of one agent.train(batch) call",
    "buffer_pull_duration": "seconds: total time spent pulling buffers into the memory",
    "updates_per_second": "updates in the round / round_time",
    "samples_in_round": "transitions received during the round",
    "update_to_data_ratio": "total_updates / total_samples at the end of the round (the cap's ratio)",
    "return_train": "mean return of the training episodes finished in the round (NaN if none)",
    "return_test": "mean return of the test (deterministic) episodes finished in the round (NaN if none)",
    "episode_length_train": "mean length in steps of those training episodes (NaN if none)",
    "episode_length_test": "mean length in steps of those test episodes (NaN if none)",
    "episodes_train": "number of training episodes finished in the round",
    "episodes_test": "number of test episodes finished in the round",
}


def spaces_from_env_cls(env_cls) -> tuple[Any, Any]:
    """``(observation_space, action_space)`` from a tuple, or from an env built once and closed."""
    if isinstance(env_cls, tuple):
        if len(env_cls) != 2:
            raise TypeError("env_cls as a tuple must be (observation_space, action_space), "
                            f"got a tuple of length {len(env_cls)}")
        return env_cls
    if env_cls is None or not callable(env_cls):
        raise TypeError("env_cls must be a callable returning an environment (a class, a factory or "
                        "a functools.partial) or a tuple (observation_space, action_space); got "
                        f"{env_cls!r}")
    env = env_cls()
    try:
        return env.observation_space, env.action_space
    finally:
        close = getattr(env, "close", None)
        if callable(close):
            close()


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _batch_drawer(memory) -> Callable[[int], list] | None:
    """The memory's ``sample_batches``, if it has one that draws the batches ``sample`` would.

    A subclass that changes how one batch is drawn (overrides ``sample``, ``sample_indices`` or
    ``collate`` below the class that defines ``sample_batches``: augmentation, priorities the agent
    updates after each step...) keeps drawing one batch per update, just before it is used."""
    draw = getattr(memory, "sample_batches", None)
    if not callable(draw):
        return None
    mro = type(memory).__mro__
    owner = next((i for i, cls in enumerate(mro) if "sample_batches" in cls.__dict__), None)
    if owner is None:  # set on the instance: its owner's choice
        return draw
    for name in ("sample", "sample_indices", "collate"):
        defined = next((i for i, cls in enumerate(mro) if name in cls.__dict__), None)
        if defined is not None and defined < owner:
            return None
    return draw


class TrainingOffline:
    """Training wrapper for off-policy algorithms (the tmrl 0.7 signature; see the module docs).

    Parameters are those of the documentation: ``env_cls`` (an env factory or a tuple
    ``(observation_space, action_space)``), ``memory_cls`` (called as
    ``memory_cls(nb_steps=steps, device=device)``), ``training_agent_cls`` (called as
    ``training_agent_cls(observation_space=..., action_space=..., device=device)``), ``epochs``,
    ``rounds``, ``steps``, ``update_model_interval``, ``update_buffer_interval``,
    ``max_training_steps_per_env_step``, ``sleep_between_buffer_retrieval_attempts``,
    ``profiling``, ``agent_scheduler``, ``start_training`` and ``device`` (``None``: CPU here;
    :class:`TorchTrainingOffline` picks the best torch device).

    Batch prefetch (class attribute :attr:`prefetch`; set it on the class or on an instance, e.g.
    ``training.prefetch = False``): while update ``k`` trains, a background thread
    draws the batch of update ``k + 1`` from the memory, so sampling and collating (and, on CUDA,
    the host-to-device copy) overlap the training step. No batch is drawn ahead across a scheduled
    pull (every ``update_buffer_interval`` updates), so those batches see the new samples exactly
    as without prefetch. A pull made while waiting for samples (the ratio cap) first waits for the
    batch being drawn, which then comes from the memory as it was before that pull: the memory is
    never changed during a draw, and a seeded run draws the same batches on every run. The thread
    only calls ``next()`` on ``iter(memory)``: memories need no locking. ``None`` (the default)
    means automatic: on for a CUDA device (the host-to-device copy overlaps the update), off for
    other accelerators, and on a CPU only when a core is free for the thread, so that it does not
    compete with training (e.g. SAC's parallel update on 2 cores).

    Without prefetch, a memory with a ``sample_batches(n)`` method (``ReplayMemory`` has one)
    draws the batches of the updates until the next scheduled pull in one go, at most
    ``memory.batches_per_draw`` at a time: the same batches as one draw per update, at a fraction
    of the per-update cost (right after a training step, each Python and numpy call of a draw runs
    with cold caches). A pull while waiting for samples makes the rest come from the new memory. A
    memory subclass that overrides ``sample``, ``sample_indices`` or ``collate`` keeps one draw per
    update.
    """

    prefetch: bool | None = None
    """Draw the next batch in a background thread while the current one trains (see above);
    ``None``: automatic."""

    def __init__(self, env_cls=None, memory_cls=None, training_agent_cls=None, epochs: int = 10,
                 rounds: int = 50, steps: int = 2000, update_model_interval: int = 100,
                 update_buffer_interval: int = 100, max_training_steps_per_env_step: float = 1.0,
                 sleep_between_buffer_retrieval_attempts: float = 1.0, profiling: bool = False,
                 agent_scheduler: Callable | None = None, start_training: int = 0,
                 device: str | None = None):
        self.epochs = _positive_int("epochs", epochs)
        self.rounds = _positive_int("rounds", rounds)
        self.steps = _positive_int("steps", steps)
        self.update_model_interval = _positive_int("update_model_interval", update_model_interval)
        self.update_buffer_interval = _positive_int("update_buffer_interval", update_buffer_interval)
        ratio = max_training_steps_per_env_step
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
            raise ValueError("max_training_steps_per_env_step must be a positive number (updates "
                             f"allowed per received sample; use float('inf') for no cap), got {ratio!r}")
        self.max_training_steps_per_env_step = float(ratio)
        sleep = sleep_between_buffer_retrieval_attempts
        if not isinstance(sleep, (int, float)) or not 0 <= sleep < math.inf:
            raise ValueError("sleep_between_buffer_retrieval_attempts must be a number of seconds "
                             f">= 0, got {sleep!r}")
        self.sleep_between_buffer_retrieval_attempts = float(sleep)
        if isinstance(start_training, bool) or not isinstance(start_training, int) or start_training < 0:
            raise ValueError(f"start_training must be an integer >= 0, got {start_training!r}")
        self.start_training = start_training
        if agent_scheduler is not None and not callable(agent_scheduler):
            raise TypeError(f"agent_scheduler must be callable as f(agent, epoch), got {agent_scheduler!r}")
        self.agent_scheduler = agent_scheduler
        self.profiling = bool(profiling)
        if memory_cls is None or training_agent_cls is None:
            raise TypeError("memory_cls and training_agent_cls are required: pass e.g. "
                            "functools.partial(ReplayMemory, batch_size=256) and SACAgent")
        self.env_cls = env_cls
        self.memory_cls = memory_cls
        self.training_agent_cls = training_agent_cls
        self.device = self._select_device(device)

        observation_space, action_space = spaces_from_env_cls(env_cls)
        self.observation_space, self.action_space = observation_space, action_space
        self.memory = memory_cls(nb_steps=self.steps, device=self.device)
        self.agent = training_agent_cls(observation_space=observation_space,
                                        action_space=action_space, device=self.device)
        capacity = getattr(self.memory, "capacity", None)
        if capacity is not None and start_training > capacity:
            raise ValueError(f"start_training ({start_training}) exceeds the memory capacity "
                             f"({capacity}): training could never start; lower start_training or "
                             "raise the memory capacity")
        self.batch_size = int(getattr(self.memory, "batch_size", 1))

        self.epoch = 0
        self.total_updates = 0
        self.total_samples = 0
        self._round: dict[str, Any] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = 0
        self._pending: Future | None = None

    def _select_device(self, device):
        return "cpu" if device is None else device

    # --- the loop --------------------------------------------------------------------------------
    def run_epoch(self, interface, on_round: Callable[[pd.Series], None] | None = None) -> list[pd.Series]:
        """Run one epoch against ``interface``; return one statistics row per round.

        ``on_round(row)``, if given, is called as soon as each round's row is ready (the
        :class:`~relayrl.trainer.Trainer` logs rows and moves its progress bar with it)."""
        if self.agent_scheduler is not None:
            self.agent_scheduler(self.agent, self.epoch)
        profiler = None
        if self.profiling:
            from pyinstrument import Profiler
            profiler = Profiler()
            profiler.start()
        try:
            rows = []
            for round_index in range(self.rounds):
                rows.append(self.run_round(interface, round_index))
                if on_round is not None:
                    on_round(rows[-1])
        finally:
            if profiler is not None:
                profiler.stop()
                log.info("profile of epoch %d:\n%s", self.epoch, profiler.output_text(unicode=True))
        self.epoch += 1
        return rows

    def run_round(self, interface, round_index: int = 0) -> pd.Series:
        """``steps`` updates with their pulls, broadcasts and waits; returns the round's row."""
        started = time.perf_counter()
        stats = self._round = {"idle": 0.0, "pull": 0.0, "sampling": 0.0, "training": 0.0,
                               "samples": 0, "episodes": [], "metrics": {}}
        self.wait_until_training_allowed(interface)
        batches = iter(self.memory)
        prefetch = self.prefetch_enabled()
        # Without prefetch, a memory that can draw several batches at once (sample_batches) draws
        # those of all the updates until the next pull in one go: the same batches, drawn from the
        # same memory, at a fraction of the per-update cost. If a wait pulls samples in between,
        # the rest is drawn again from the memory as it now is.
        draw_many = None if prefetch else _batch_drawer(self.memory)
        drawn: deque = deque()
        drawn_at = -1
        try:
            for step in range(self.steps):
                if self.total_updates % self.update_buffer_interval == 0:
                    self.pull(interface)
                t0 = time.perf_counter()
                if draw_many is not None:
                    if not drawn or drawn_at != self.total_samples:
                        until_pull = (self.update_buffer_interval
                                      - self.total_updates % self.update_buffer_interval)
                        wanted = min(self.steps - step, until_pull)
                        drawn = deque(draw_many(min(wanted, getattr(self.memory, "batches_per_draw", wanted))))
                        drawn_at = self.total_samples
                    batch = drawn.popleft()
                else:
                    pending, self._pending = self._pending, None
                    try:
                        batch = pending.result() if pending is not None else next(batches)
                    except StopIteration:
                        raise RuntimeError(f"{type(self.memory).__name__} yielded fewer than "
                                           f"nb_steps={self.steps} batches; its __iter__ must yield "
                                           "nb_steps batches") from None
                # Draw the next batch while this one trains, unless a pull is due before it: the
                # memory does not change in between, so the batch is the one drawn without prefetch.
                if (prefetch and step + 1 < self.steps
                        and (self.total_updates + 1) % self.update_buffer_interval != 0):
                    self._pending = self._prefetcher().submit(next, batches)
                t1 = time.perf_counter()
                metrics = self.agent.train(batch)
                t2 = time.perf_counter()
                stats["sampling"] += t1 - t0
                stats["training"] += t2 - t1
                sums = stats["metrics"]
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                self.total_updates += 1
                if self.total_updates % self.update_model_interval == 0:
                    interface.broadcast_model(self.agent.get_actor())
                self.wait_until_training_allowed(interface)
        finally:
            self._join_prefetch()
            self._pending = None
        return self._make_row(round_index, time.perf_counter() - started)

    # --- batch prefetch --------------------------------------------------------------------------
    def prefetch_enabled(self) -> bool:
        """Whether rounds draw batches ahead (:attr:`prefetch`, or the automatic choice if None)."""
        if self.prefetch is not None:
            return bool(self.prefetch)
        kind = torch.device(self.device).type
        if kind == "cuda":
            return True
        if kind != "cpu":  # e.g. MPS: keep every operation on the thread that owns the device
            return False
        busy = torch.get_num_threads() * (2 if getattr(self.agent, "parallel_update", False) else 1)
        return available_cores() > busy

    def _prefetcher(self) -> ThreadPoolExecutor:
        if self._executor is None or self._executor_pid != os.getpid():
            # (again after a fork: the child does not inherit the parent's threads)
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relayrl-prefetch")
            self._executor_pid = os.getpid()
        return self._executor

    def _join_prefetch(self) -> None:
        """Wait until no batch is being drawn (the memory may be changed or saved safely after);
        the batch drawn, or its error, stays in the future for the loop to take."""
        pending = self._pending
        if pending is not None:
            futures_wait([pending])

    def close(self) -> None:
        """Stop the prefetch thread and the agent's threads, if it has a ``close()`` (they also end
        with the process). The instance stays usable: threads start again when needed."""
        self._join_prefetch()
        self._pending = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        close = getattr(self.agent, "close", None)
        if callable(close):
            close()

    # --- samples in, gate ------------------------------------------------------------------------
    def pull(self, interface) -> int:
        """Move newly arrived samples into the memory; return how many came."""
        t0 = time.perf_counter()
        self._join_prefetch()  # never change the memory while a batch is being drawn from it
        buffer: Buffer = interface.retrieve_buffer()
        n = len(buffer)
        if n:
            self.memory.append(buffer)
            self.total_samples += n
        stats = self._round
        if stats:
            stats["samples"] += n
            stats["episodes"].extend(buffer.episodes)
            stats["pull"] += time.perf_counter() - t0
        report = getattr(interface, "report_progress", None)
        if report is not None:
            report(total_updates=self.total_updates, total_samples=self.total_samples,
                   memory_len=len(self.memory))
        return n

    def training_allowed(self) -> bool:
        if len(self.memory) < max(self.start_training, self.batch_size):
            return False
        return self.total_updates <= self.max_training_steps_per_env_step * self.total_samples

    def wait_until_training_allowed(self, interface) -> None:
        """Pull until training is allowed; the time spent counts as idle time."""
        if self.training_allowed():
            return
        t0 = time.perf_counter()
        last_notice = t0
        wait = getattr(interface, "wait_for_data", None)
        self.pull(interface)
        while not self.training_allowed():
            if wait is not None:
                wait(self.sleep_between_buffer_retrieval_attempts)
            else:
                time.sleep(self.sleep_between_buffer_retrieval_attempts)
            self.pull(interface)
            now = time.perf_counter()
            if now - last_notice > 30.0:
                last_notice = now
                log.warning("waiting for samples: memory holds %d (training needs %d), updates/"
                            "samples = %d/%d (cap %.3g); are the workers running?", len(self.memory),
                            max(self.start_training, self.batch_size), self.total_updates,
                            self.total_samples, self.max_training_steps_per_env_step)
        if self._round:
            self._round["idle"] += time.perf_counter() - t0

    # --- statistics --------------------------------------------------------------------------------
    def _make_row(self, round_index: int, round_time: float) -> pd.Series:
        s = self._round
        train = [e for e in s["episodes"] if not e.test]
        test = [e for e in s["episodes"] if e.test]

        def mean(values):
            return float(sum(values) / len(values)) if values else float("nan")

        row = {
            "epoch": self.epoch,
            "round": round_index,
            "total_updates": self.total_updates,
            "total_samples": self.total_samples,
            "memory_len": len(self.memory),
            "round_time": round_time,
            "idle_time": s["idle"],
            "sampling_duration": s["sampling"] / self.steps,
            "training_step_duration": s["training"] / self.steps,
            "buffer_pull_duration": s["pull"],
            "updates_per_second": self.steps / round_time if round_time > 0 else float("nan"),
            "samples_in_round": s["samples"],
            "update_to_data_ratio": (self.total_updates / self.total_samples
                                     if self.total_samples else float("nan")),
            "return_train": mean([e.episode_return for e in train]),
            "return_test": mean([e.episode_return for e in test]),
            "episode_length_train": mean([e.length for e in train]),
            "episode_length_test": mean([e.length for e in test]),
            "episodes_train": len(train),
            "episodes_test": len(test),
        }
        for key, total in s["metrics"].items():
            row[key] = total / self.steps
        return pd.Series(row)

    # --- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters, agent and memory: everything a resumed run needs (no code, no pickle)."""
        self._join_prefetch()
        return {"epoch": self.epoch, "total_updates": self.total_updates,
                "total_samples": self.total_samples, "agent": self.agent.state_dict(),
                "memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._join_prefetch()
        self._pending = None
        self.epoch = int(state["epoch"])
        self.total_updates = int(state["total_updates"])
        self.total_samples = int(state["total_samples"])
        self.agent.load_state_dict(state["agent"])
        self.memory.load_state_dict(state["memory"])


def best_torch_device() -> str:
    """CUDA if available, else Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


class TorchTrainingOffline(TrainingOffline):
    """:class:`TrainingOffline` with automatic torch device selection (``device=None``: CUDA, else
    MPS, else CPU); an explicit device such as ``"cuda:1"`` or ``"cpu"`` is honoured as given."""

    def __init__(self, env_cls=None, memory_cls=None, training_agent_cls=None, epochs: int = 10,
                 rounds: int = 50, steps: int = 2000, update_model_interval: int = 100,
                 update_buffer_interval: int = 100, max_training_steps_per_env_step: float = 1.0,
                 sleep_between_buffer_retrieval_attempts: float = 1.0, profiling: bool = False,
                 agent_scheduler: Callable | None = None, start_training: int = 0,
                 device: str | None = None):
        super().__init__(env_cls, memory_cls, training_agent_cls, epochs, rounds, steps,
                         update_model_interval, update_buffer_interval,
                         max_training_steps_per_env_step, sleep_between_buffer_retrieval_attempts,
                         profiling, agent_scheduler, start_training, device)

    def _select_device(self, device):
        if device is None:
            return best_torch_device()
        torch.device(device)  # raises a clear RuntimeError on a malformed device string
        return device
