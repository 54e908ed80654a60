"""The settings of the algorithms in the registry: one typed dataclass per algorithm, with a
docstring per field and validation in ``__post_init__`` that names the fix.

They live apart from the agents so that reading or validating a configuration (the command line,
``--print-config``, a TOML file) never imports torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SACConfig"]


@dataclass
class SACConfig:
    """Hyperparameters of :class:`SACAgent`. Defaults are Stable-Baselines3's SAC defaults."""

    gamma: float = 0.99
    """Discount factor, in [0, 1]."""

    polyak: float = 0.995
    """Target-network averaging: ``target = polyak * target + (1 - polyak) * online`` (SB3's
    ``tau = 1 - polyak = 0.005``). In [0, 1]; 0 copies the online critics each time."""

    lr_actor: float = 3e-4
    """Adam learning rate of the policy."""

    lr_critic: float = 3e-4
    """Adam learning rate of the twin critics."""

    lr_entropy: float = 3e-4
    """Adam learning rate of ``log_alpha`` (used only when ``learn_entropy_coef``)."""

    betas: tuple[float, float] = (0.9, 0.999)
    """Adam ``(beta1, beta2)`` for all three optimisers (really applied, unlike tmrl)."""

    weight_decay: float = 0.0
    """Adam L2 weight decay of the actor and critic optimisers (never applied to ``log_alpha``,
    where it would pull alpha towards 1)."""

    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the actor and of each critic (ReLU MLPs)."""

    learn_entropy_coef: bool = True
    """Tune alpha towards ``target_entropy`` (SB3's ``ent_coef="auto"``). If false, alpha stays
    ``alpha``."""

    alpha: float = 0.2
    """The fixed entropy coefficient, used when ``learn_entropy_coef`` is false."""

    initial_alpha: float = 1.0
    """Starting entropy coefficient when ``learn_entropy_coef`` is true. 1.0 is SB3's ``"auto"``
    start; ``alpha`` is not used then."""

    target_entropy: float | None = None
    """Entropy the tuned alpha aims for; ``None`` means ``-dim(action space)``."""

    target_update_interval: int = 1
    """Polyak-update the target critics every this many updates."""

    parallel_update: bool | None = None
    """Run the critic step and the actor (+ entropy) step of each update at the same time, in two
    threads, each on its own core: about 1.7x more updates per second on 2 cores. Both steps then
    start from the parameters as they were at the beginning of the update, so the actor's loss sees
    the critics *before* this update's critic step (as in the original SAC implementation, which ran
    all steps in one graph) instead of the critics just updated (SB3's order, the one used when
    this is false). The learning curves of both orders are compared in
    ``benchmarks/bench_learning.py``. Random draws use two seeded generators of the agent's own, so
    a seeded run is reproducible in both modes. ``None`` (the default): on for a CPU device when
    at least 2 cores are available, off otherwise (on a GPU the two threads would only queue
    kernels on the same stream). With it on, give torch at most half the cores
    (``torch.set_num_threads``): each thread runs its own team of torch threads."""

    tune_allocator: bool = True
    """On a CPU device under Linux/glibc, call :func:`tune_cpu_allocator` when the agent is built,
    so the ~200 page faults per update that glibc's default heap trimming costs disappear (about
    15-20% more updates/s at the default sizes). Process-wide: up to 256 MB of freed memory then
    stays mapped in the process. Set this to false to leave ``malloc`` alone."""

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, fix: str) -> ValueError:
            return ValueError(f"SACConfig.{name}={value!r} is invalid: {fix}")

        for name in ("gamma", "polyak"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value <= 1.0:
                raise bad(name, value, "use a number in [0, 1]")
        for name in ("lr_actor", "lr_critic", "lr_entropy", "alpha", "initial_alpha"):
            value = getattr(self, name)
            if not _is_real(value) or not value > 0.0 or not math.isfinite(value):
                raise bad(name, value, "use a finite number > 0")
        try:
            betas = tuple(float(b) for b in self.betas)
        except TypeError:
            betas = ()
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise bad("betas", self.betas, "use two numbers in [0, 1), e.g. (0.9, 0.999)")
        self.betas = betas  # type: ignore[assignment]
        if not _is_real(self.weight_decay) or not 0.0 <= self.weight_decay < math.inf:
            raise bad("weight_decay", self.weight_decay, "use a finite number >= 0")
        if isinstance(self.hidden_sizes, int):
            self.hidden_sizes = (self.hidden_sizes,)
        try:
            sizes = tuple(self.hidden_sizes)
        except TypeError:
            sizes = ()
        if not sizes or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                                for s in sizes):
            raise bad("hidden_sizes", self.hidden_sizes,
                      "use a non-empty sequence of positive integers, e.g. (256, 256)")
        self.hidden_sizes = tuple(int(s) for s in sizes)
        if not isinstance(self.learn_entropy_coef, (bool, np.bool_)):
            raise bad("learn_entropy_coef", self.learn_entropy_coef, "use True or False")
        self.learn_entropy_coef = bool(self.learn_entropy_coef)
        if self.target_entropy is not None and (not _is_real(self.target_entropy)
                                                or not math.isfinite(self.target_entropy)):
            raise bad("target_entropy", self.target_entropy,
                      "use a finite number, or None for -dim(action space)")
        if (not isinstance(self.target_update_interval, (int, np.integer))
                or isinstance(self.target_update_interval, bool) or self.target_update_interval < 1):
            raise bad("target_update_interval", self.target_update_interval, "use an integer >= 1")
        self.target_update_interval = int(self.target_update_interval)
        if self.parallel_update is not None and not isinstance(self.parallel_update, (bool, np.bool_)):
            raise bad("parallel_update", self.parallel_update, "use True, False or None (automatic)")
        if self.parallel_update is not None:
            self.parallel_update = bool(self.parallel_update)
        if not isinstance(self.tune_allocator, (bool, np.bool_)):
            raise bad("tune_allocator", self.tune_allocator, "use True or False")
        self.tune_allocator = bool(self.tune_allocator)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)

