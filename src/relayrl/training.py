"""The training-agent contract (tmrl's ``TrainingAgent``).

A training agent is built as ``cls(observation_space=..., action_space=..., device=...)``, learns
from one batch per ``train(batch)`` call and returns a ``dict`` of float metrics (their means over a
round become columns of the statistics rows), and hands out the policy to broadcast with
``get_actor()``. ``state_dict``/``load_state_dict`` list everything a checkpoint must hold (networks,
optimisers, counters) as tensors, numbers, strings, lists and dicts, never arbitrary objects.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from .actor import ActorModule


class TrainingAgent(ABC):
    """Base class of training agents."""

    def __init__(self, observation_space, action_space, device: str | torch.device = "cpu"):
        self.observation_space = observation_space
        self.action_space = action_space
        self.device = torch.device(device)

    @abstractmethod
    def train(self, batch) -> dict[str, float]:
        """One update from ``batch = (obs, act, rew, next_obs, terminated, truncated)``."""

    @abstractmethod
    def get_actor(self) -> ActorModule:
        """The current policy, to broadcast to the workers."""

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint must restore. Override when the agent has state."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
