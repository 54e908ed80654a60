"""The policy a rollout worker runs (tmrl's ``ActorModule``), and its safe weight (de)serialisation.

An actor is a ``torch.nn.Module`` built from ``(observation_space, action_space)`` with one method
that matters to workers: ``act(obs, test=False) -> np.ndarray``. Its weights leave the trainer as a
flat ``{name: numpy array}`` dictionary (``weights()``), which the transport and the checkpoints
encode without pickle, and come back with ``load_weights()``. ``save``/``load`` write and read a
file in the same pickle-free format.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


class ActorModule(torch.nn.Module):
    """Base class of policies. Subclasses implement ``forward`` (or override ``act``)."""

    def __init__(self, observation_space, action_space):
        super().__init__()
        self.observation_space = observation_space
        self.action_space = action_space

    @property
    def device(self) -> torch.device:
        try:
            return next(self.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def act(self, obs, test: bool = False) -> np.ndarray:
        """Return an action for one observation. ``test=True`` asks for the deterministic action."""
        raise NotImplementedError(f"{type(self).__name__} must implement act(obs, test=False)")

    # --- weights as plain arrays: what the wire and the checkpoints carry -------------------------
    def weights(self) -> dict[str, np.ndarray]:
        """A copy of every parameter and buffer as a CPU numpy array, by state-dict name."""
        return {name: t.detach().to("cpu").numpy().copy() for name, t in self.state_dict().items()}

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Load arrays produced by ``weights()``; names and shapes must match exactly."""
        own = self.state_dict()
        missing = sorted(set(own) - set(weights))
        unexpected = sorted(set(weights) - set(own))
        if missing or unexpected:
            raise ValueError(f"actor weights do not match {type(self).__name__}: missing {missing}, "
                             f"unexpected {unexpected}")
        for name, tensor in own.items():
            if tuple(weights[name].shape) != tuple(tensor.shape):
                raise ValueError(f"actor weight {name!r} has shape {tuple(weights[name].shape)}, "
                                 f"expected {tuple(tensor.shape)}")
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(torch.from_numpy(np.asarray(weights[name])))

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights to ``path`` (an ``.npz`` archive, no pickle), atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **self.weights())
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike) -> "ActorModule":
        """Read weights written by ``save``. Never unpickles: object arrays are refused."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                weights = {name: archive[name] for name in archive.files}
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read actor weights from {path}: {exc}") from exc
        self.load_weights(weights)
        return self
