"""relayrl: asynchronous off-policy reinforcement learning with rollout workers anywhere.

Importing the package does no work (no folders, no downloads, no config reads); submodules are
imported on first use of their names.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "TrainingOffline": "relayrl.training_offline",
    "TorchTrainingOffline": "relayrl.training_offline",
    "Buffer": "relayrl.buffer",
    "EpisodeStats": "relayrl.buffer",
    "Memory": "relayrl.memory",
    "ReplayMemory": "relayrl.memory",
    "TrainingAgent": "relayrl.training",
    "ActorModule": "relayrl.actor",
    "SACAgent": "relayrl.algorithms.sac",
    "SACConfig": "relayrl.algorithms.configs",
    "MLPActor": "relayrl.algorithms.networks",
    "Algorithm": "relayrl.algorithms",
    "RolloutWorker": "relayrl.worker",
    "Trainer": "relayrl.trainer",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'relayrl' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
