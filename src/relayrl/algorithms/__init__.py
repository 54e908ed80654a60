"""The algorithms relayrl trains, as a registry: name -> :class:`Algorithm`.

Nothing outside this package names an algorithm: the trainer, the configuration and the command
line look the chosen one up here (``RunConfig.algorithm``, ``relayrl train --algorithm NAME``).

An :class:`Algorithm` is four things: its settings (a dataclass; the TOML table named after the
algorithm, e.g. ``[sac]``), its training agent (a :class:`~relayrl.training.TrainingAgent` built as
``agent(observation_space, action_space, device, config=settings)``), the factory of the policy the
workers run, and a check that refuses the spaces it cannot handle. Agents and factories are given as
``"module:attribute"`` strings so that reading a configuration never imports torch.

Adding an algorithm is one module (its agent, actor factory and space check) plus one line in
:data:`REGISTRY`; an algorithm outside relayrl is used by its ``"package.module:ALGORITHM"`` path
(``relayrl train --algorithm mypackage.agents:ALGORITHM``) or added with :func:`register`.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from .configs import CrossQConfig, DroQConfig, REDQConfig, SACConfig, TD3Config

__all__ = ["Algorithm", "REGISTRY", "DEFAULT_ALGORITHM", "get_algorithm", "register", "SACConfig", "SACAgent", "MLPActor",
           "EnsembleCritic", "TD3Config", "TD3Agent", "DeterministicActor", "REDQConfig", "DroQConfig",
           "CrossQConfig"]


def _resolve(target: Any) -> Any:
    if isinstance(target, str):
        module, _, name = target.partition(":")
        return getattr(importlib.import_module(module), name)
    return target


@dataclass(frozen=True)
class Algorithm:
    """One registered algorithm (see the module docstring)."""

    name: str
    """The name of ``--algorithm`` and of the algorithm's TOML table."""
    config: type
    """Its settings: a dataclass whose ``__post_init__`` validates with messages naming the fix."""
    agent: str | type
    """The training agent class, or its ``"module:Class"`` path."""
    actor_factory: str | Callable[[Any], Callable]
    """``(settings) -> callable(observation_space, action_space) -> ActorModule``, or its path."""
    check_spaces: str | Callable[[Any, Any], None]
    """``(observation_space, action_space) -> None``; raises TypeError/ValueError saying what to do."""
    run_defaults: dict[str, Any] = field(default_factory=dict)
    """Where ``relayrl train``'s settings differ from the dataclass defaults (with the reason in the
    README), applied under the keys a TOML table leaves out."""
    summary: str = ""
    """One line for ``relayrl train --help``."""

    def agent_class(self) -> type:
        return _resolve(self.agent)

    def make_actor_factory(self, settings: Any) -> Callable:
        return _resolve(self.actor_factory)(settings)

    def validate_spaces(self, observation_space, action_space) -> None:
        _resolve(self.check_spaces)(observation_space, action_space)

    def settings(self, values: dict[str, Any] | None = None) -> Any:
        """The settings dataclass from ``run_defaults`` overlaid with ``values``."""
        return self.config(**{**self.run_defaults, **(values or {})})

    def settings_fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.config))


REGISTRY: dict[str, Algorithm] = {
    "sac": Algorithm("sac", SACConfig, "relayrl.algorithms.sac:SACAgent",
                     "relayrl.algorithms.sac:actor_factory", "relayrl.algorithms.sac:check_spaces",
                     run_defaults={"lr_actor": 1e-3, "lr_critic": 1e-3, "lr_entropy": 1e-3},
                     summary="Soft Actor-Critic (twin critics, tuned entropy; SB3's defaults)"),
    "td3": Algorithm("td3", TD3Config, "relayrl.algorithms.td3:TD3Agent",
                     "relayrl.algorithms.td3:actor_factory", "relayrl.algorithms.td3:check_spaces",
                     run_defaults={"lr_actor": 1e-3, "lr_critic": 1e-3},
                     summary="Twin Delayed DDPG (deterministic policy, twin critics, delayed actor "
                             "updates, target smoothing)"),
    "redq": Algorithm("redq", REDQConfig, "relayrl.algorithms.redq:REDQAgent",
                      "relayrl.algorithms.sac:actor_factory", "relayrl.algorithms.sac:check_spaces",
                      run_defaults={"lr_actor": 1e-3, "lr_critic": 1e-3, "lr_entropy": 1e-3},
                      summary="REDQ: SAC with 10 critics, random 2-critic targets, for high update-to-data "
                              "ratios"),
    "droq": Algorithm("droq", DroQConfig, "relayrl.algorithms.droq:DroQAgent",
                      "relayrl.algorithms.sac:actor_factory", "relayrl.algorithms.sac:check_spaces",
                      run_defaults={"lr_actor": 1e-3, "lr_critic": 1e-3, "lr_entropy": 1e-3},
                      summary="DroQ: SAC with dropout + layer-norm critics, for high update-to-data ratios"),
    "crossq": Algorithm("crossq", CrossQConfig, "relayrl.algorithms.crossq:CrossQAgent",
                        "relayrl.algorithms.sac:actor_factory", "relayrl.algorithms.sac:check_spaces",
                        summary="CrossQ: SAC with batch-normalised critics and no target networks "
                                "(the most return per update)"),
}
"""The built-in algorithms. SAC's and TD3's ``run_defaults`` are RL Baselines3 Zoo's learning rates
for Pendulum-v1, ``relayrl train``'s default environment (1e-3, also SB3's TD3 default)."""


DEFAULT_ALGORITHM = "sac"
"""The algorithm of a run that names none (``RunConfig.algorithm``, checkpoints of relayrl 0.1)."""


def register(algorithm: Algorithm) -> Algorithm:
    """Add ``algorithm`` to :data:`REGISTRY` (replacing one of the same name) and return it."""
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"register() takes an Algorithm, got {type(algorithm).__name__}")
    REGISTRY[algorithm.name] = algorithm
    return algorithm


def get_algorithm(name: str) -> Algorithm:
    """The algorithm named ``name`` in :data:`REGISTRY`, or at a ``"package.module:NAME"`` path."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"algorithm must be a name, got {name!r}; known: {sorted(REGISTRY)}")
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" in name:
        from ..envs import load_object
        algorithm = load_object(name, "algorithm")
        if not isinstance(algorithm, Algorithm):
            raise ValueError(f"algorithm {name!r} is a {type(algorithm).__name__}, not a "
                             "relayrl.algorithms.Algorithm")
        return algorithm
    raise ValueError(f"unknown algorithm {name!r}; known: {sorted(REGISTRY)}, or a "
                     "'package.module:ALGORITHM' path to an Algorithm of your own")


_LAZY = {"SACAgent": "relayrl.algorithms.sac", "MLPActor": "relayrl.algorithms.networks",
         "EnsembleCritic": "relayrl.algorithms.networks", "TD3Agent": "relayrl.algorithms.td3",
         "DeterministicActor": "relayrl.algorithms.td3"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'relayrl.algorithms' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
