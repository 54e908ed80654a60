"""Fakes shared by the tests: a counting agent, a scripted interface, buffer factories."""
from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces

from relayrl.actor import ActorModule
from relayrl.buffer import Buffer, EpisodeStats
from relayrl.training import TrainingAgent

OBS_SPACE = spaces.Box(-1.0, 1.0, (3,), np.float32)
ACT_SPACE = spaces.Box(-2.0, 2.0, (1,), np.float32)
SPACES = (OBS_SPACE, ACT_SPACE)


def make_buffer(n: int, start: float = 0.0, obs_dim: int = 3, act_dim: int = 1, episodes=(),
                worker_id: str = "w", terminate_last: bool = False) -> Buffer:
    """``n`` transitions whose obs rows are start, start+1, ... and next_obs = obs + 0.5."""
    values = start + np.arange(n, dtype=np.float32)
    obs = np.repeat(values[:, None], obs_dim, axis=1)
    terminated = np.zeros(n, bool)
    if terminate_last and n:
        terminated[-1] = True
    return Buffer(obs=obs, act=np.repeat(values[:, None], act_dim, axis=1), rew=values.copy(),
                  next_obs=obs + 0.5, terminated=terminated, truncated=np.zeros(n, bool),
                  episodes=list(episodes), worker_id=worker_id)


class FakeActor(ActorModule):
    def __init__(self):
        super().__init__(OBS_SPACE, ACT_SPACE)
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def act(self, obs, test=False):
        return np.zeros(1, np.float32)


class CountingAgent(TrainingAgent):
    """Records every batch it trains on; returns fixed metrics."""

    def __init__(self, observation_space, action_space, device="cpu"):
        super().__init__(observation_space, action_space, device)
        self.actor = FakeActor()
        self.batches = []
        self.calls = 0

    def train(self, batch):
        self.calls += 1
        self.batches.append(batch)
        return {"loss": float(self.calls), "other": 2.0}

    def get_actor(self):
        return self.actor

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


class ScriptedInterface:
    """Hands out ``per_pull`` new samples on each retrieve (until ``limit``) and logs every event
    together with the training object's counters at that moment."""

    def __init__(self, training=None, per_pull: int = 10, limit: int | None = None, episodes_per_pull=0):
        self.training = training
        self.per_pull = per_pull
        self.limit = limit
        self.sent = 0
        self.events: list[tuple[str, int]] = []
        self.episodes_per_pull = episodes_per_pull
        self.episode_counter = 0

    def retrieve_buffer(self) -> Buffer:
        n = self.per_pull if self.limit is None else max(0, min(self.per_pull, self.limit - self.sent))
        updates = self.training.total_updates if self.training is not None else -1
        self.events.append(("pull", updates))
        episodes = []
        for _ in range(self.episodes_per_pull):
            self.episode_counter += 1
            episodes.append(EpisodeStats(float(self.episode_counter), 10, test=self.episode_counter % 2 == 0))
        buffer = make_buffer(n, start=self.sent, episodes=episodes)
        self.sent += n
        return buffer

    def broadcast_model(self, actor) -> None:
        updates = self.training.total_updates if self.training is not None else -1
        self.events.append(("broadcast", updates))
