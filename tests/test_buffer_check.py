"""Buffers checked against the trainer's spaces before they reach the memory (relayrl.buffer_check):
a poisoned or wrong-shaped buffer is dropped whole, counted and logged with its sender, and changes
neither the memory nor the counters; the real worker's buffers keep training."""
from __future__ import annotations

import functools
import logging

import numpy as np
import pytest

from helpers import SPACES, CountingAgent, make_buffer
from relayrl.buffer import Buffer, EpisodeStats
from relayrl.buffer_check import BufferCheck
from relayrl.memory import ReplayMemory
from relayrl.training_offline import TrainingOffline


class Queue:
    """Hands out the buffers it was given, one per pull, then empty ones."""

    def __init__(self, *buffers):
        self.buffers = list(buffers)

    def retrieve_buffer(self):
        return self.buffers.pop(0) if self.buffers else make_buffer(0)

    def broadcast_model(self, actor):
        pass


def poisoned(kind: str) -> Buffer:
    b = make_buffer(8, worker_id="mallory", episodes=[EpisodeStats(1e9, 8)])
    if kind == "nan reward":
        b.rew[3] = np.nan
    elif kind == "inf reward":
        b.rew[0] = np.inf
    elif kind == "huge reward":
        b.rew[1] = 3e38
    elif kind == "nan obs":
        b.obs[2, 1] = np.nan
    elif kind == "inf next_obs":
        b.next_obs[5, 0] = -np.inf
    elif kind == "huge action":
        b.act[4, 0] = 1e30
    elif kind == "wrong obs shape":
        b = make_buffer(8, obs_dim=5, worker_id="mallory")
    elif kind == "wrong act shape":
        b = make_buffer(8, act_dim=2, worker_id="mallory")
    elif kind == "flags not 0/1":
        b.terminated = np.full(8, 7, np.int64)
    return b


KINDS = ["nan reward", "inf reward", "huge reward", "nan obs", "inf next_obs", "huge action",
         "wrong obs shape", "wrong act shape", "flags not 0/1"]


@pytest.mark.parametrize("kind", KINDS)
def test_check_names_the_problem(kind):
    problem = BufferCheck(*SPACES).problem(poisoned(kind))
    assert problem is not None
    field = {"nan reward": "rew", "inf reward": "rew", "huge reward": "rew", "nan obs": "obs",
             "inf next_obs": "next_obs", "huge action": "act", "wrong obs shape": "obs",
             "wrong act shape": "act", "flags not 0/1": "terminated"}[kind]
    assert problem.startswith(field)


def test_good_buffers_and_foreign_buffers_pass():
    check = BufferCheck(*SPACES)
    assert check.problem(make_buffer(16)) is None
    assert check.problem(make_buffer(0)) is None

    class TmrlStyle:  # not relayrl's Buffer: the memory's business
        memory = [1, 2]

        def __len__(self):
            return 2

    assert check.problem(TmrlStyle()) is None


@pytest.mark.parametrize("kind", KINDS)
def test_poisoned_buffer_first_is_dropped_and_the_real_worker_trains(kind, caplog):
    """Sent before the real worker's first buffer (the memory then takes its column shapes from
    the real one) or after it, a bad buffer changes nothing; training goes on with finite losses."""
    training = TrainingOffline(env_cls=SPACES,
                               memory_cls=functools.partial(ReplayMemory, batch_size=4, capacity=100, seed=0),
                               training_agent_cls=CountingAgent, epochs=1, rounds=1, steps=20,
                               update_model_interval=10, update_buffer_interval=10,
                               sleep_between_buffer_retrieval_attempts=0.0, start_training=8)
    interface = Queue(poisoned(kind), make_buffer(16, worker_id="real"), poisoned(kind),
                      make_buffer(16, start=16, worker_id="real"))
    with caplog.at_level(logging.WARNING, logger="relayrl"):
        rows = training.run_epoch(interface)
    row = rows[0]
    assert training.buffers_rejected == 2 and row["buffers_rejected"] == 2 and row["samples_rejected"] == 16
    assert training.total_samples == 32 and len(training.memory) == 32  # only the real worker's
    assert row["episodes_train"] == 0  # the poisoned buffers' episodes count nowhere
    assert training.total_updates == 20
    batch = training.agent.batches[-1]
    assert all(np.isfinite(t.numpy()).all() for t in batch) and batch[0].shape[1:] == (3,)
    assert "mallory" in caplog.text and "rejected a buffer" in caplog.text
