"""A tiny algorithm registered from outside relayrl: one module plus one registry entry (ALGORITHM).

Used by tests/test_algorithms.py, which runs it end to end with
``relayrl train --algorithm tiny_algorithm:ALGORITHM`` (this folder on PYTHONPATH).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from relayrl.actor import ActorModule
from relayrl.algorithms import Algorithm
from relayrl.training import TrainingAgent


@dataclass
class TinyConfig:
    """Settings of the tiny algorithm."""

    lr: float = 1e-2
    """Learning rate of the linear policy."""

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"tiny.lr must be > 0, got {self.lr!r}")


class LinearActor(ActorModule):
    def __init__(self, observation_space, action_space):
        super().__init__(observation_space, action_space)
        self.linear = torch.nn.Linear(observation_space.shape[0], action_space.shape[0])
        self.low = torch.as_tensor(action_space.low, dtype=torch.float32)
        self.high = torch.as_tensor(action_space.high, dtype=torch.float32)

    def act(self, obs, test: bool = False) -> np.ndarray:
        with torch.no_grad():
            action = self.linear(torch.as_tensor(np.asarray(obs, np.float32)))
            return torch.clamp(action, self.low, self.high).numpy()


class TinyAgent(TrainingAgent):
    """Regresses the policy's action on the batch's reward-weighted actions: not RL, just enough to
    prove the registry's contract end to end (train, metrics, actor, state)."""

    def __init__(self, observation_space, action_space, device="cpu", config: TinyConfig | None = None):
        super().__init__(observation_space, action_space, device)
        self.config = config or TinyConfig()
        self.actor = LinearActor(observation_space, action_space).to(self.device)
        self.optimizer = torch.optim.SGD(self.actor.parameters(), lr=self.config.lr)
        self.updates = 0

    def train(self, batch) -> dict[str, float]:
        obs, act, rew, *_ = batch
        loss = ((self.actor.linear(obs) - act).square().mean(dim=-1) * torch.sigmoid(rew)).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.updates += 1
        return {"loss_tiny": float(loss)}

    def get_actor(self) -> ActorModule:
        return self.actor

    def state_dict(self):
        return {"actor": self.actor.state_dict(), "optimizer": self.optimizer.state_dict(),
                "updates": self.updates}

    def load_state_dict(self, state) -> None:
        self.actor.load_state_dict(state["actor"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])


def actor_factory(config: TinyConfig):
    return LinearActor


def check_spaces(observation_space, action_space) -> None:
    from gymnasium import spaces
    if not isinstance(action_space, spaces.Box) or not isinstance(observation_space, spaces.Box):
        raise ValueError("the tiny algorithm needs Box observations and actions")


ALGORITHM = Algorithm("tiny", TinyConfig, TinyAgent, actor_factory, check_spaces,
                      summary="a linear policy for tests")
