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

__all__ = ["SACConfig", "TD3Config", "REDQConfig", "DroQConfig", "CrossQConfig"]


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
    """Tune alpha towards ``target_entropy`` (SB3's ``ent_coef="auto"``), starting at
    ``initial_alpha``. If false, alpha stays ``alpha``."""

    alpha: float | None = None
    """The fixed entropy coefficient when ``learn_entropy_coef`` is false (omitted: 0.2, see
    :attr:`fixed_alpha`). Setting it while alpha is learned is refused rather than ignored: the
    start of a learned alpha is ``initial_alpha`` (tmrl's ``alpha`` with ``learn_entropy_coef``)."""

    initial_alpha: float = 1.0
    """Starting entropy coefficient when ``learn_entropy_coef`` is true. 1.0 is SB3's ``"auto"``
    start; ``alpha`` is not used then."""

    target_entropy: float | None = None
    """Entropy the tuned alpha aims for; ``None`` means ``-dim(action space)``."""

    target_update_interval: int = 1
    """Polyak-update the target critics every this many updates."""

    actor_update_interval: int = 1
    """Train the actor (and alpha) once every this many critic updates: 1 for SAC; the update-to-
    data ratio for REDQ and DroQ (their papers train the actor once per environment step after
    ``G`` critic updates); 3 for CrossQ."""

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

    @property
    def fixed_alpha(self) -> float:
        """The entropy coefficient of a run that does not learn it: ``alpha``, or 0.2."""
        return 0.2 if self.alpha is None else float(self.alpha)

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, fix: str) -> ValueError:
            return ValueError(f"SACConfig.{name}={value!r} is invalid: {fix}")

        for name in ("gamma", "polyak"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value <= 1.0:
                raise bad(name, value, "use a number in [0, 1]")
        for name in ("lr_actor", "lr_critic", "lr_entropy", "alpha", "initial_alpha"):
            value = getattr(self, name)
            if name == "alpha" and value is None:
                continue
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
        if self.learn_entropy_coef and self.alpha is not None:
            raise bad("alpha", self.alpha, "alpha is the fixed coefficient and learn_entropy_coef is "
                      f"true: set initial_alpha={self.alpha!r} to start the learned alpha there, or "
                      "learn_entropy_coef=False to keep alpha fixed")
        if self.target_entropy is not None and (not _is_real(self.target_entropy)
                                                or not math.isfinite(self.target_entropy)):
            raise bad("target_entropy", self.target_entropy,
                      "use a finite number, or None for -dim(action space)")
        if (not isinstance(self.target_update_interval, (int, np.integer))
                or isinstance(self.target_update_interval, bool) or self.target_update_interval < 1):
            raise bad("target_update_interval", self.target_update_interval, "use an integer >= 1")
        self.target_update_interval = int(self.target_update_interval)
        if (not isinstance(self.actor_update_interval, (int, np.integer))
                or isinstance(self.actor_update_interval, bool) or self.actor_update_interval < 1):
            raise bad("actor_update_interval", self.actor_update_interval, "use an integer >= 1")
        self.actor_update_interval = int(self.actor_update_interval)
        if self.parallel_update is not None and not isinstance(self.parallel_update, (bool, np.bool_)):
            raise bad("parallel_update", self.parallel_update, "use True, False or None (automatic)")
        if self.parallel_update is not None:
            self.parallel_update = bool(self.parallel_update)
        if not isinstance(self.tune_allocator, (bool, np.bool_)):
            raise bad("tune_allocator", self.tune_allocator, "use True or False")
        self.tune_allocator = bool(self.tune_allocator)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)



@dataclass
class TD3Config:
    """Hyperparameters of :class:`~relayrl.algorithms.td3.TD3Agent` (Fujimoto et al., 2018).

    Defaults are those of the authors' current reference implementation (github.com/sfujim/TD3),
    which Stable-Baselines3 also uses apart from the learning rate: 256-256 networks, Adam at 3e-4,
    ``tau = 0.005``, a policy delay of 2 and target smoothing noise 0.2 clipped at 0.5. (The
    paper's own experiments used 400-300 networks, Adam at 1e-3 and batches of 100.)
    Noise scales are in the networks' squashed action units, [-1, 1] across each Box dimension.
    """

    gamma: float = 0.99
    """Discount factor, in [0, 1] (replaced by the batch's per-sample ``discounts`` when the
    memory makes n-step returns)."""

    polyak: float = 0.995
    """Target-network averaging: ``target = polyak * target + (1 - polyak) * online``, applied to
    the target actor and the target critics after each actor update (the paper's and SB3's
    ``tau = 1 - polyak = 0.005``). In [0, 1]; 0 copies the online networks each time."""

    lr_actor: float = 3e-4
    """Adam learning rate of the deterministic policy: the reference implementation's 3e-4 (SB3's
    TD3 default is 1e-3, the rate ``relayrl train`` uses on its default environment)."""

    lr_critic: float = 3e-4
    """Adam learning rate of the twin critics (3e-4 as in the reference implementation; SB3's TD3
    default is 1e-3)."""

    betas: tuple[float, float] = (0.9, 0.999)
    """Adam ``(beta1, beta2)`` of both optimisers."""

    weight_decay: float = 0.0
    """Adam L2 weight decay of the actor and critic optimisers."""

    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the actor and of each critic (ReLU MLPs; the paper used (400, 300))."""

    policy_delay: int = 2
    """Update the actor, then the target networks, once every this many critic updates (the
    "delayed" of Twin Delayed DDPG): on updates number ``policy_delay``, ``2 * policy_delay``...
    1 updates them at every step (DDPG's schedule, with TD3's other two changes)."""

    target_noise: float = 0.2
    """Target policy smoothing: standard deviation of the Gaussian noise added to the target
    actor's action ``pi'(s')`` in the critics' target, in squashed [-1, 1] units (SB3's
    ``target_policy_noise``). 0 turns the smoothing off."""

    target_noise_clip: float = 0.5
    """The target smoothing noise is clipped to ``[-target_noise_clip, target_noise_clip]`` (in
    [-1, 1] units) before it is added; the noisy action is then clipped to [-1, 1]."""

    exploration_noise: float = 0.1
    """Standard deviation of the Gaussian noise the workers' actor adds to its action in training
    episodes (never in test episodes), in the squashed [-1, 1] units; the noisy action is clipped
    to [-1, 1] before it is rescaled to the Box bounds. 0.1 as in the paper (``0.1 * max_action``)
    and SB3's examples. 0 explores only through the workers' random warm-up steps."""

    parallel_update: bool | None = None
    """On the updates that also update the actor, run the critic step and the actor step at the
    same time in two threads, each on its own core (as :attr:`SACConfig.parallel_update`). The actor
    step then sees the critics as they were at the start of the update instead of just after this
    update's critic step (the order of the paper's code and of SB3, used when this is false); the
    updates without an actor step are the same in both modes. Random draws (the target smoothing
    noise) come from a seeded generator of the agent's own in both modes, so a seeded run is
    reproducible. ``None`` (the default): on for a CPU device when at least 2 cores are available,
    off otherwise. With it on, give torch at most half the cores (``torch.set_num_threads``)."""

    tune_allocator: bool = True
    """On a CPU device under Linux/glibc, call :func:`tune_cpu_allocator` when the agent is built
    (see :attr:`SACConfig.tune_allocator`: fewer page faults per update, process-wide)."""

    def __post_init__(self) -> None:
        check = _FieldChecker("TD3Config", self)
        check.fraction("gamma", "polyak")
        check.positive("lr_actor", "lr_critic")
        check.non_negative("weight_decay", "target_noise", "target_noise_clip", "exploration_noise")
        check.betas("betas")
        check.sizes("hidden_sizes")
        check.integer_at_least("policy_delay", 1)
        check.flag("tune_allocator")
        check.flag("parallel_update", none_means="automatic")


@dataclass
class REDQConfig(SACConfig):
    """Hyperparameters of :class:`~relayrl.algorithms.redq.REDQAgent` (Chen et al., 2021): SAC's,
    plus the ensemble. The paper: 10 critics, 2 in each target, update-to-data ratio 20 (the
    trainer's ``max_training_steps_per_env_step``; set ``actor_update_interval`` to it as well)."""

    n_critics: int = 10
    """Critics in the ensemble (tmrl's ``n``)."""

    target_subset: int = 2
    """Target critics drawn at random, at every update, whose minimum bootstraps the target
    (tmrl's ``m``); at most ``n_critics``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check = _FieldChecker("REDQConfig", self)
        check.integer_at_least("n_critics", 2)
        check.integer_at_least("target_subset", 1)
        if self.target_subset > self.n_critics:
            raise check._bad("target_subset", f"use at most n_critics = {self.n_critics}")


@dataclass
class DroQConfig(SACConfig):
    """Hyperparameters of :class:`~relayrl.algorithms.droq.DroQAgent` (Hiraoka et al., 2022):
    SAC's, plus dropout and layer normalisation in the critics. The paper: dropout 0.01, 2 critics,
    update-to-data ratio 20 (the trainer's ``max_training_steps_per_env_step``; set
    ``actor_update_interval`` to it as well)."""

    n_critics: int = 2
    """Critics (each with its own dropout masks); the target takes their minimum."""

    dropout: float = 0.01
    """Dropout probability in every hidden layer of the critics, in [0, 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check = _FieldChecker("DroQConfig", self)
        check.integer_at_least("n_critics", 1)
        if not _is_real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise check._bad("dropout", "use a number in [0, 1)")
        self.dropout = float(self.dropout)


@dataclass
class CrossQConfig(SACConfig):
    """Hyperparameters of :class:`~relayrl.algorithms.crossq.CrossQAgent` (Bhatt et al., 2024):
    the paper's optimiser settings (Adam 1e-3 with ``beta1 = 0.5``, the actor every 3 critic
    updates, one update per environment step), critics narrower than the paper's 2048 units so
    that a CPU keeps up (see :mod:`relayrl.algorithms.crossq`)."""

    lr_actor: float = 1e-3
    """Adam learning rate of the policy (the paper's 1e-3)."""

    lr_critic: float = 1e-3
    """Adam learning rate of the critics (the paper's 1e-3)."""

    lr_entropy: float = 1e-3
    """Adam learning rate of ``log_alpha`` (the paper's 1e-3)."""

    betas: tuple[float, float] = (0.5, 0.999)
    """Adam ``(beta1, beta2)`` of all optimisers (the paper's 0.5: batch-normalised critics move
    their targets with every update, and a short momentum follows them)."""

    actor_update_interval: int = 3
    """Train the actor (and alpha) once every this many critic updates (the paper's 3)."""

    critic_hidden_sizes: tuple[int, ...] = (512, 512)
    """Hidden widths of each critic (the paper's 2048 x 2 costs about 16x the compute of SAC's
    critics per update; 512 is the compromise for CPUs). The actor uses ``hidden_sizes``."""

    n_critics: int = 2
    """Critics; the target takes their minimum."""

    batch_norm_momentum: float = 0.01
    """Rate at which the normalisation's running statistics (used to evaluate the actor's
    objective) follow the batches': ``running = (1 - m) running + m batch`` (flax's 0.99)."""

    parallel_update: bool | None = False
    """CrossQ's update is serial (its steps share the critics' batch statistics); only false or
    None are accepted."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check = _FieldChecker("CrossQConfig", self)
        check.sizes("critic_hidden_sizes")
        check.integer_at_least("n_critics", 1)
        if not _is_real(self.batch_norm_momentum) or not 0.0 < self.batch_norm_momentum <= 1.0:
            raise check._bad("batch_norm_momentum", "use a number in (0, 1]")
        self.batch_norm_momentum = float(self.batch_norm_momentum)
        if self.parallel_update:
            raise check._bad("parallel_update", "CrossQ's update is serial: use false (or leave it unset)")


class _FieldChecker:
    """``__post_init__`` checks in the style of :class:`SACConfig`'s: each raises a ValueError
    naming the class, the field, the bad value and the fix, and normalises the value it accepts
    (numpy scalars to Python ones, sequences to tuples)."""

    def __init__(self, owner: str, config: Any):
        self.owner, self.config = owner, config

    def _bad(self, name: str, fix: str) -> ValueError:
        return ValueError(f"{self.owner}.{name}={getattr(self.config, name)!r} is invalid: {fix}")

    def _number(self, name: str, ok, fix: str) -> None:
        value = getattr(self.config, name)
        if not _is_real(value) or not math.isfinite(value) or not ok(value):
            raise self._bad(name, fix)
        setattr(self.config, name, float(value))

    def fraction(self, *names: str) -> None:
        for name in names:
            self._number(name, lambda v: 0.0 <= v <= 1.0, "use a number in [0, 1]")

    def positive(self, *names: str) -> None:
        for name in names:
            self._number(name, lambda v: v > 0.0, "use a finite number > 0")

    def non_negative(self, *names: str) -> None:
        for name in names:
            self._number(name, lambda v: v >= 0.0, "use a finite number >= 0")

    def betas(self, name: str) -> None:
        try:
            betas = tuple(float(b) for b in getattr(self.config, name))
        except (TypeError, ValueError):
            betas = ()
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise self._bad(name, "use two numbers in [0, 1), e.g. (0.9, 0.999)")
        setattr(self.config, name, betas)

    def sizes(self, name: str) -> None:
        value = getattr(self.config, name)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            value = (value,)
        try:
            sizes = tuple(value)
        except TypeError:
            sizes = ()
        if not sizes or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                                for s in sizes):
            raise self._bad(name, "use a non-empty sequence of positive integers, e.g. (256, 256)")
        setattr(self.config, name, tuple(int(s) for s in sizes))

    def integer_at_least(self, name: str, low: int) -> None:
        value = getattr(self.config, name)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise self._bad(name, f"use an integer >= {low}")
        setattr(self.config, name, int(value))

    def flag(self, name: str, none_means: str | None = None) -> None:
        value = getattr(self.config, name)
        if value is None and none_means is not None:
            return
        if not isinstance(value, (bool, np.bool_)):
            raise self._bad(name, "use True or False" if none_means is None
                            else f"use True, False or None ({none_means})")
        setattr(self.config, name, bool(value))
