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

Where things live: the batches come from a :class:`~relayrl.batches.BatchSource` chosen once per
round (one draw per update, draws between pulls at once, or a prefetch thread); what a round
measures goes into a :class:`~relayrl.round_stats.RoundStats`, passed explicitly to the pulls, the
waits and the updates, which makes the round's row (every key documented in
:data:`~relayrl.round_stats.STATS_KEYS`).

Differences from tmrl 0.7, on purpose: the counters live on the instance (and in checkpoints);
``start_training`` is compared with what the memory can sample; every wait inside a round counts in
``idle_time``; episode statistics are aggregated over all episodes finished in the round; the
profiler (``profiling=True``) covers one whole *epoch*, as the documentation says; the interface is
never stored on the instance.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Callable, Iterator

import pandas as pd
import torch

from . import checks
from .buffer_check import BufferCheck
from .batches import BatchSource, PrefetchThread, choose_batch_source
from .round_stats import STATS_KEYS, EpisodeReader, RoundStats
from .system import available_cores

__all__ = ["TrainingOffline", "TorchTrainingOffline", "STATS_KEYS", "spaces_from_env_cls",
           "best_torch_device"]

log = logging.getLogger("relayrl")


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

    How each round gets its batches (:mod:`relayrl.batches`), chosen at its start from two facts:

    * the memory's ``draw_ahead`` flag (:attr:`relayrl.memory.Memory.draw_ahead`). False (the
      base default, or a memory without the flag): one batch per update, drawn just before it,
      after the previous update returned;
    * when it is true, :attr:`prefetch` (see :meth:`prefetch_enabled`). On: while update ``k``
      trains, a background thread draws the batch of update ``k + 1``, so sampling and collating
      (and, on CUDA, the host-to-device copy) overlap the training step. Off: the batches of the
      updates until the next pull are drawn in one go with ``memory.sample_batches``, at most
      ``memory.batches_per_draw`` at a time (for ``ReplayMemory``: the same batches as one draw per
      update, at a fraction of the per-update cost).

    Either way no batch is drawn ahead across a scheduled pull (every ``update_buffer_interval``
    updates), and the memory is never changed during a draw. A pull made while waiting for
    samples (the ratio cap) makes the batches drawn at once come again from the new memory; with
    prefetch, it first waits for the batch being drawn, which then comes from the memory as it was
    before that pull. A seeded run draws the same batches on every run.
    """

    prefetch: bool | None = None
    """Draw the next batch in a background thread while the current one trains (see above);
    ``None``: automatic (:meth:`prefetch_enabled`). Set it on the class or on an instance, e.g.
    ``training.prefetch = False``."""

    def __init__(self, env_cls=None, memory_cls=None, training_agent_cls=None, epochs: int = 10,
                 rounds: int = 50, steps: int = 2000, update_model_interval: int = 100,
                 update_buffer_interval: int = 100, max_training_steps_per_env_step: float = 1.0,
                 sleep_between_buffer_retrieval_attempts: float = 1.0, profiling: bool = False,
                 agent_scheduler: Callable | None = None, start_training: int = 0,
                 device: str | None = None):
        self.epochs = checks.positive_int("epochs", epochs)
        self.rounds = checks.positive_int("rounds", rounds)
        self.steps = checks.positive_int("steps", steps)
        self.update_model_interval = checks.positive_int("update_model_interval", update_model_interval)
        self.update_buffer_interval = checks.positive_int("update_buffer_interval", update_buffer_interval)
        self.max_training_steps_per_env_step = checks.positive_number(
            "max_training_steps_per_env_step", max_training_steps_per_env_step,
            " (updates allowed per received sample; inf for no cap)", allow_inf=True)
        self.sleep_between_buffer_retrieval_attempts = checks.seconds(
            "sleep_between_buffer_retrieval_attempts", sleep_between_buffer_retrieval_attempts)
        checks.non_negative_int("start_training", start_training)
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
        if capacity is not None:
            checks.start_fits_capacity("start_training", start_training, "the memory capacity", capacity)
        self.batch_size = int(getattr(self.memory, "batch_size", 1))

        self.epoch = 0
        self.round = 0  # rounds of the current epoch already done (a checkpoint inside an epoch keeps it)
        self.total_updates = 0
        self.total_samples = 0
        #: Buffers refused by :attr:`buffer_check` (see :mod:`relayrl.buffer_check`) since this
        #: object was built.
        self.buffers_rejected = 0
        self.buffer_check = BufferCheck(observation_space, action_space)
        self._prefetch_thread = PrefetchThread()   # outlives rounds; recreated after a fork
        self._read_episodes = EpisodeReader()      # remembers tmrl buffers' last stat_* figures

    def _select_device(self, device):
        return "cpu" if device is None else device

    # --- the loop --------------------------------------------------------------------------------
    def run_epoch(self, interface, on_round: Callable[[pd.Series], None] | None = None) -> list[pd.Series]:
        """Run one epoch against ``interface``; return one statistics row per round.

        ``on_round(row)``, if given, is called as soon as each round's row is ready (the
        :class:`~relayrl.trainer.Trainer` logs rows and moves its progress bar with it)."""
        if self.agent_scheduler is not None:
            self.agent_scheduler(self.agent, self.epoch)
        rows = []
        with self._profiled(f"epoch {self.epoch}"):
            # a run resumed inside an epoch (after Ctrl+C) goes on at the round it had not finished
            for round_index in range(self.round, self.rounds):
                rows.append(self.run_round(interface, round_index))
                self.round = round_index + 1
                if on_round is not None:
                    on_round(rows[-1])
        self.epoch += 1
        self.round = 0
        return rows

    def run_round(self, interface, round_index: int = 0) -> pd.Series:
        """``steps`` updates with their pulls, broadcasts and waits; returns the round's row."""
        stats = RoundStats(started=time.perf_counter())
        self.wait_until_training_allowed(interface, stats)
        with self._batch_source() as batches:
            for step in range(self.steps):
                if self.total_updates % self.update_buffer_interval == 0:
                    self.pull(interface, stats, batches)
                self._update(batches, self._batches_until_pull(step), stats)
                if self.total_updates % self.update_model_interval == 0:
                    interface.broadcast_model(self.agent.get_actor())
                self.wait_until_training_allowed(interface, stats, batches)
        return stats.row(now=time.perf_counter(), epoch=self.epoch, round_index=round_index,
                         total_updates=self.total_updates, total_samples=self.total_samples,
                         memory_len=len(self.memory))

    def _update(self, batches: BatchSource, ahead: int, stats: RoundStats) -> None:
        """One training step: a batch from ``batches``, ``agent.train``, the counter."""
        t0 = time.perf_counter()
        batch = batches.take(ahead)
        t1 = time.perf_counter()
        metrics = self.agent.train(batch)
        after_update = getattr(self.memory, "after_update", None)
        if after_update is not None:
            after_update(batch)
        stats.add_update(t1 - t0, time.perf_counter() - t1, metrics)
        self.total_updates += 1

    def _batches_until_pull(self, step: int) -> int:
        """Batches the round takes, this one included, before its next scheduled pull or its end."""
        until_pull = self.update_buffer_interval - self.total_updates % self.update_buffer_interval
        return min(self.steps - step, until_pull)

    @contextlib.contextmanager
    def _profiled(self, what: str) -> Iterator[None]:
        """Profile the block with pyinstrument if ``profiling``; log the report after it."""
        if not self.profiling:
            yield
            return
        from pyinstrument import Profiler
        profiler = Profiler()
        profiler.start()
        try:
            yield
        finally:
            profiler.stop()
            log.info("profile of %s:\n%s", what, profiler.output_text(unicode=True))

    # --- where batches come from -------------------------------------------------------------------
    def _batch_source(self) -> BatchSource:
        """This round's :class:`~relayrl.batches.BatchSource` (see the class docstring)."""
        return choose_batch_source(self.memory, self.steps, self.prefetch_enabled(),
                                   self._prefetch_thread)

    def prefetch_enabled(self) -> bool:
        """Whether rounds may prefetch (:attr:`prefetch`, or the automatic choice if None): on for a
        CUDA device (the host-to-device copy overlaps the update), off for other accelerators, and
        on a CPU only when a core is free for the thread, so that it does not compete with
        training (e.g. SAC's parallel update on 2 cores). Only memories that may draw ahead
        (``memory.draw_ahead``) are prefetched from."""
        if self.prefetch is not None:
            return bool(self.prefetch)
        kind = torch.device(self.device).type
        if kind == "cuda":
            return True
        if kind != "cpu":  # e.g. MPS: keep every operation on the thread that owns the device
            return False
        busy = torch.get_num_threads() * (2 if getattr(self.agent, "parallel_update", False) else 1)
        return available_cores() > busy

    def close(self) -> None:
        """Stop the prefetch thread and the agent's threads, if it has a ``close()`` (they also end
        with the process). The instance stays usable: threads start again when needed."""
        self._prefetch_thread.shutdown()
        close = getattr(self.agent, "close", None)
        if callable(close):
            close()

    # --- samples in, gate ------------------------------------------------------------------------
    def pull(self, interface, stats: RoundStats | None = None,
             batches: BatchSource | None = None) -> int:
        """Move newly arrived samples into the memory; return how many came.

        Inside a round, ``stats`` records the samples, the episodes finished with them and the
        time, and ``batches`` (the round's source) is told before the memory changes. The buffer
        may be relayrl's :class:`~relayrl.buffer.Buffer` or anything with ``len()`` that the
        memory accepts (a tmrl buffer, for instance); see
        :class:`~relayrl.round_stats.EpisodeReader` for its episode statistics."""
        t0 = time.perf_counter()
        buffer = interface.retrieve_buffer()
        n = len(buffer)
        problem = self.buffer_check.problem(buffer) if n else None
        if problem is not None:  # dropped whole: no sample, no episode, no change to the memory
            self.buffers_rejected += 1
            log.warning("rejected a buffer of %d transitions from %r (seq %s): %s", n,
                        getattr(buffer, "worker_id", "?"), getattr(buffer, "seq", "?"), problem)
            if stats is not None:
                stats.add_rejected(n)
            n = 0
        if n:
            if batches is not None:
                batches.memory_changing()  # e.g. waits for a prefetch in flight: no append during a draw
            self.memory.append(buffer)
            self.total_samples += n
        episodes = self._read_episodes(buffer) if problem is None else []
        if stats is not None:
            stats.add_pull(n, episodes, time.perf_counter() - t0)
        report = getattr(interface, "report_progress", None)
        if report is not None:
            report(total_updates=self.total_updates, total_samples=self.total_samples,
                   memory_len=len(self.memory))
        return n

    ratio_from_start: bool = False
    """Count the cap from ``start_training`` on: ``total_updates <= max_training_steps_per_env_step
    * (total_samples - start_training)``, so training starts at the capped ratio instead of
    catching up on the warm-up samples at once (Stable-Baselines3's ``learning_starts``). False
    (tmrl's counting, the default here; ``relayrl train`` sets it from
    ``training.ratio_from_start``): all samples count."""

    def training_allowed(self) -> bool:
        """The memory holds at least ``max(start_training, batch_size)`` transitions, and
        ``total_updates <= max_training_steps_per_env_step * total_samples`` (``total_samples -
        start_training`` with :attr:`ratio_from_start`)."""
        if len(self.memory) < max(self.start_training, self.batch_size):
            return False
        samples = self.total_samples - (self.start_training if self.ratio_from_start else 0)
        return self.total_updates <= self.max_training_steps_per_env_step * samples

    def wait_until_training_allowed(self, interface, stats: RoundStats | None = None,
                                    batches: BatchSource | None = None) -> None:
        """Pull until training is allowed; inside a round the time counts in ``stats`` as idle
        time (and ``batches`` is told of each pull, see :meth:`pull`)."""
        if self.training_allowed():
            return
        t0 = time.perf_counter()
        last_notice = t0
        wait = getattr(interface, "wait_for_data", None)
        self.pull(interface, stats, batches)
        while not self.training_allowed():
            if wait is not None:
                wait(self.sleep_between_buffer_retrieval_attempts)
            else:
                time.sleep(self.sleep_between_buffer_retrieval_attempts)
            self.pull(interface, stats, batches)
            now = time.perf_counter()
            if now - last_notice > 30.0:
                last_notice = now
                log.warning("waiting for samples: memory holds %d (training needs %d), updates/"
                            "samples = %d/%d (cap %.3g); are the workers running?", len(self.memory),
                            max(self.start_training, self.batch_size), self.total_updates,
                            self.total_samples, self.max_training_steps_per_env_step)
        if stats is not None:
            stats.add_wait(time.perf_counter() - t0)

    # --- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters, agent and memory: everything a resumed run needs (no code, no pickle)."""
        self._prefetch_thread.join()
        return {"epoch": self.epoch, "round": self.round, "total_updates": self.total_updates,
                "total_samples": self.total_samples, "agent": self.agent.state_dict(),
                "memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._prefetch_thread.join()
        self.epoch = int(state["epoch"])
        self.round = int(state.get("round", 0))  # (checkpoints before rounds were kept: 0)
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
