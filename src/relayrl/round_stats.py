"""What one training round measured, and the statistics row it becomes.

:data:`STATS_KEYS` documents every key of a row (one place: units and meaning). A
:class:`RoundStats` is created at the start of each round by
:meth:`~relayrl.training_offline.TrainingOffline.run_round` and handed *explicitly* to everything
that measures something in the round: the pulls (samples and episodes received, pull time), the
waits for samples (idle time) and the updates (sampling and training time, the agent's metrics). At
the end of the round :meth:`RoundStats.row` turns it into one ``pandas.Series``.

:class:`EpisodeReader` reads the episodes a buffer reports as finished, from ``buffer.episodes``
(relayrl's :class:`~relayrl.buffer.Buffer`) or, for tmrl-style buffers, from their ``stat_*``
attributes (SPEC section 7).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import pandas as pd

from .buffer import EpisodeStats

#: Every key of a statistics row, with its unit and meaning (the README's table mirrors this). A
#: row also holds, under the agent's own names, the mean over the round's updates of every value
#: ``agent.train(batch)`` returned (``loss_critic``, ``q_mean``... for SAC).
STATS_KEYS: dict[str, str] = {
    "epoch": "epoch index (0-based) the round belongs to",
    "round": "round index within the epoch (0-based)",
    "total_updates": "training steps done since the run began, at the end of the round",
    "total_samples": "transitions received since the run began, at the end of the round",
    "memory_len": "transitions the memory can sample, at the end of the round",
    "round_time": "seconds: wall-clock duration of the round, from before its first wait for "
                  "samples to the end of its last update's wait, every wait included",
    "idle_time": "seconds: all time spent waiting for samples in the round: the wait at its start "
                 "and every wait after an update (the start_training gate and the ratio cap), "
                 "pulls made while waiting included",
    "sampling_duration": "seconds: mean time per update the loop spent getting its batch (drawing "
                         "it, its share of the batches drawn at once until the next pull, or "
                         "waiting for the one prefetched while the previous update trained)",
    "training_step_duration": "seconds: mean time of one agent.train(batch) call",
    "buffer_pull_duration": "seconds: total time spent pulling buffers into the memory (the "
                            "scheduled pulls and those made while waiting)",
    "updates_per_second": "updates in the round / round_time",
    "samples_in_round": "transitions received during the round",
    "update_to_data_ratio": "total_updates / total_samples at the end of the round (the cap's "
                            "ratio; NaN before the first sample)",
    "return_train": "mean return of the training episodes finished in the round (NaN if none)",
    "return_test": "mean return of the test (deterministic) episodes finished in the round (NaN if none)",
    "episode_length_train": "mean length in steps of those training episodes (NaN if none)",
    "episode_length_test": "mean length in steps of those test episodes (NaN if none)",
    "episodes_train": "number of training episodes finished in the round",
    "episodes_test": "number of test episodes finished in the round",
    "buffers_rejected": "buffers refused in the round by the check against the trainer's spaces "
                        "(relayrl.buffer_check: wrong shapes, NaN or huge values, actions out of "
                        "bounds); their transitions and episodes count nowhere",
    "samples_rejected": "transitions in those refused buffers",
}


#: The keys of :data:`STATS_KEYS` that count something: integers in ``stats.csv`` and ``stats.jsonl``
#: (a pandas row of mixed values holds them as floats).
INTEGER_KEYS: frozenset[str] = frozenset({
    "epoch", "round", "total_updates", "total_samples", "memory_len", "samples_in_round",
    "episodes_train", "episodes_test", "buffers_rejected", "samples_rejected"})


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


class RoundStats:
    """The measurements of one round (see :data:`STATS_KEYS`); :meth:`row` makes the row.

    ``started`` is the round's start time (``time.perf_counter()``); every duration handed to the
    ``add_*`` methods is in seconds. Nothing here reads a clock: the loop times what it does, so a
    test can give it a fake clock."""

    def __init__(self, started: float):
        self.started = started
        self.idle_time = 0.0        # every wait for samples in the round
        self.pull_time = 0.0        # every pull into the memory
        self.sampling_time = 0.0    # getting the batches, summed over the updates
        self.training_time = 0.0    # agent.train calls, summed
        self.updates = 0
        self.samples = 0
        self.episodes: list[EpisodeStats] = []
        self.metric_sums: dict[str, float] = {}
        self.buffers_rejected = 0
        self.samples_rejected = 0

    def add_rejected(self, samples: int) -> None:
        """A buffer of ``samples`` transitions was refused (relayrl.buffer_check)."""
        self.buffers_rejected += 1
        self.samples_rejected += samples

    def add_pull(self, samples: int, episodes: Iterable[EpisodeStats], seconds: float) -> None:
        """A pull brought ``samples`` transitions and the episodes finished with them."""
        self.samples += samples
        self.episodes.extend(episodes)
        self.pull_time += seconds

    def add_wait(self, seconds: float) -> None:
        """The loop waited ``seconds`` for samples (pulls made meanwhile included)."""
        self.idle_time += seconds

    def add_update(self, sampling: float, training: float, metrics: dict[str, float]) -> None:
        """One update: the time its batch took to get, its ``agent.train`` time, what it returned."""
        self.updates += 1
        self.sampling_time += sampling
        self.training_time += training
        sums = self.metric_sums
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + value

    def row(self, *, now: float, epoch: int, round_index: int, total_updates: int,
            total_samples: int, memory_len: int) -> pd.Series:
        """The round's statistics row (every key of :data:`STATS_KEYS`, then the metric means);
        ``now`` is the round's end time, the counters are the training object's at that moment."""
        round_time = now - self.started
        updates = max(1, self.updates)
        train = [e for e in self.episodes if not e.test]
        test = [e for e in self.episodes if e.test]
        row: dict[str, Any] = {
            "epoch": epoch,
            "round": round_index,
            "total_updates": total_updates,
            "total_samples": total_samples,
            "memory_len": memory_len,
            "round_time": round_time,
            "idle_time": self.idle_time,
            "sampling_duration": self.sampling_time / updates,
            "training_step_duration": self.training_time / updates,
            "buffer_pull_duration": self.pull_time,
            "updates_per_second": self.updates / round_time if round_time > 0 else math.nan,
            "samples_in_round": self.samples,
            "update_to_data_ratio": total_updates / total_samples if total_samples else math.nan,
            "return_train": _mean([e.episode_return for e in train]),
            "return_test": _mean([e.episode_return for e in test]),
            "episode_length_train": _mean([e.length for e in train]),
            "episode_length_test": _mean([e.length for e in test]),
            "episodes_train": len(train),
            "episodes_test": len(test),
            "buffers_rejected": self.buffers_rejected,
            "samples_rejected": self.samples_rejected,
        }
        for key, total in self.metric_sums.items():
            row[key] = total / updates
        return pd.Series(row)


class EpisodeReader:
    """The episodes a buffer reports as finished.

    A relayrl :class:`~relayrl.buffer.Buffer` (or any buffer with an ``episodes`` attribute) lists
    them. A tmrl buffer has no list, only ``stat_train_return``/``stat_train_steps`` and
    ``stat_test_return``/``stat_test_steps``: the last training and test episode finished by the
    worker, which tmrl keeps in every later buffer too (its ``clear()`` keeps them). So an episode
    is counted when those figures change (and its length is not 0, tmrl's "none yet"): each one
    once, but only the last of several finished between two pulls. Missing attributes mean no
    episode, never an error. The reader remembers the last figures seen, across rounds."""

    def __init__(self) -> None:
        self._last: dict[bool, tuple[Any, Any]] = {}

    def __call__(self, buffer) -> list[EpisodeStats]:
        episodes = getattr(buffer, "episodes", None)
        if episodes is not None:
            return list(episodes)
        found = []
        for test, kind in ((False, "train"), (True, "test")):
            figures = (getattr(buffer, f"stat_{kind}_return", None),
                       getattr(buffer, f"stat_{kind}_steps", None))
            if None in figures or figures == self._last.get(test):
                continue
            self._last[test] = figures
            try:
                episode_return, length = float(figures[0]), int(figures[1])
            except (TypeError, ValueError):
                continue
            if length > 0:
                found.append(EpisodeStats(episode_return, length, test=test))
        return found
