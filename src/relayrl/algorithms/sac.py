"""Soft Actor-Critic (Haarnoja et al., 2018) as a :class:`~relayrl.training.TrainingAgent`.

Learning follows the usual SAC recipe (the one Stable-Baselines3 and CleanRL implement): twin Q
critics with polyak-averaged targets, a tanh-squashed Gaussian policy, and an entropy coefficient
``alpha`` tuned towards a target entropy. One ``train(batch)`` call does, in this order:

1. ``alpha`` for this step is read (its value before this step's update, as in SB3);
2. critic target, without gradients: ``y = r + gamma * (1 - terminated) * (min_i Q'_i(s', a') - alpha * log pi(a'|s'))``
   with ``a' ~ pi(.|s')``; truncation (a time limit) bootstraps, only termination does not;
3. critic step on ``0.5 * sum_i mse(Q_i(s, a), y)``;
4. actor step on ``mean(alpha * log pi(a~|s) - min_i Q_i(s, a~))`` against the critics just updated,
   and entropy-coefficient step on ``-mean(log_alpha * (log pi(a~|s) + target_entropy))``; both
   reuse the same policy sample ``a~``;
5. every ``target_update_interval`` updates: ``target = polyak * target + (1 - polyak) * online``.

With ``parallel_update`` (the default on a CPU with 2 cores or more), steps 2-3 run in a second
thread while step 4 runs in the caller's, so step 4 sees the critics as they were *before* step 3
(see :attr:`SACConfig.parallel_update`); everything else is the same.

Speed (the trainer spends its life here; the dense matmuls are the floor, the rest is overhead):
both critics are one batched ensemble (weights shaped ``(2, in, out)``, evaluated with
``torch.baddbmm``); the actor loss goes through the critics with *detached* weights, so no gradient
is computed for critic parameters that would be thrown away (as fast as toggling ``requires_grad``,
13% faster per update than letting those gradients be computed); the actor and entropy losses share
one backward; no forward pass is repeated; layouts avoid the matmul shapes BLAS is slow at (see
:class:`EnsembleCritic` and :class:`MLPActor`); Adam is fused where available; the polyak update is
one ``torch._foreach_lerp_``; the metrics are gathered into one tensor and read with a single
``tolist()``; and, on CPU, :func:`tune_cpu_allocator` stops glibc from unmapping and re-faulting the
same few MB of activations at every update.
"""
from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..actor import ActorModule
from ..system import available_cores
from ..training import TrainingAgent

__all__ = ["SACConfig", "MLPActor", "EnsembleCritic", "SACAgent", "tune_cpu_allocator"]

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0
_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

METRIC_KEYS = ("loss_critic", "loss_actor", "loss_entropy_coef", "entropy_coef", "q_mean",
               "q_target_mean", "log_prob_mean")
"""Keys of the dict ``SACAgent.train`` returns (all python floats):

- ``loss_critic``: ``0.5 * (mse(Q1, y) + mse(Q2, y))``, before the critic step;
- ``loss_actor``: ``mean(alpha * log_prob - min(Q1, Q2))`` on the policy's fresh actions;
- ``loss_entropy_coef``: the entropy-coefficient loss (0 when alpha is fixed);
- ``entropy_coef``: the alpha used in this step's losses;
- ``q_mean``: mean of both critics' Q(s, a) on the batch's actions;
- ``q_target_mean``: mean of the bootstrapped target ``y``;
- ``log_prob_mean``: mean log-probability of the policy's fresh actions (minus the entropy estimate).
"""


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
def _wait_through_interrupts(future) -> None:
    """Wait until ``future`` is done, even if KeyboardInterrupt arrives meanwhile (re-raised after)."""
    interrupted = None
    while True:
        try:
            futures_wait([future])
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


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


# ------------------------------------------------------------------------------------------------
# the allocator
# ------------------------------------------------------------------------------------------------
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_allocator_tuned = False


def tune_cpu_allocator(trim_threshold: int = 256 << 20, mmap_threshold: int = 32 << 20) -> bool:
    """Keep freed ``malloc`` memory in the process instead of returning it to the OS at once.

    Each SAC update allocates and frees a few MB of activations and gradients (0.5 MB per
    ``(2, 256, 256)`` tensor). glibc serves blocks over 128 KB with ``mmap`` and trims the top of
    the heap as soon as 128 KB-1 MB is free there, so every update pays for the same memory again
    as ~200 page faults. Raising both thresholds (``mallopt``) makes those blocks come from a heap
    that stays mapped. Process-wide and idempotent; returns whether it is in effect (false off
    glibc, e.g. macOS, Windows, musl). Equivalent to starting Python with
    ``GLIBC_TUNABLES=glibc.malloc.trim_threshold=...:glibc.malloc.mmap_threshold=...``.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _allocator_tuned = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
                            and mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    return _allocator_tuned


# ------------------------------------------------------------------------------------------------
# spaces
# ------------------------------------------------------------------------------------------------
def _check_spaces(observation_space, action_space) -> tuple[int, int]:
    """Return ``(obs_dim, act_dim)``; refuse what SAC (as written here) cannot handle."""
    from gymnasium import spaces

    if not isinstance(action_space, spaces.Box):
        raise TypeError(f"SAC needs a continuous gymnasium.spaces.Box action space, got "
                        f"{action_space!r}; discretise nothing, use a Box (or another algorithm)")
    if len(action_space.shape) != 1:
        raise ValueError(f"SAC needs a 1-D Box action space, got shape {action_space.shape}; "
                         f"flatten the actions with a wrapper")
    low, high = np.asarray(action_space.low, np.float64), np.asarray(action_space.high, np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
        raise ValueError(f"SAC squashes actions into the Box bounds, which must be finite with "
                         f"high > low; got low={action_space.low}, high={action_space.high}. "
                         f"Wrap the environment with bounded actions (e.g. RescaleAction)")
    if not isinstance(observation_space, spaces.Box):
        raise TypeError(f"SAC needs vector observations (a 1-D gymnasium.spaces.Box), got "
                        f"{observation_space!r}; flatten them, e.g. with gymnasium's "
                        f"FlattenObservation wrapper")
    if len(observation_space.shape) != 1:
        raise ValueError(f"SAC needs vector observations (a 1-D Box), got an observation space of "
                         f"shape {observation_space.shape}; flatten them, e.g. with gymnasium's "
                         f"FlattenObservation wrapper")
    return int(observation_space.shape[0]), int(action_space.shape[0])


# ------------------------------------------------------------------------------------------------
# the policy
# ------------------------------------------------------------------------------------------------
class MLPActor(ActorModule):
    """Tanh-squashed Gaussian policy: ``a = tanh(mu + std * eps)``, rescaled to the Box bounds.

    ``forward`` works in the squashed space [-1, 1] (what the learner needs); ``act`` returns
    environment actions. ``weights()`` holds only the network parameters: the rescaling is derived
    from the action space.
    """

    def __init__(self, observation_space, action_space, hidden_sizes: Sequence[int] = (256, 256)):
        super().__init__(observation_space, action_space)
        obs_dim, act_dim = _check_spaces(observation_space, action_space)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        # Weights are stored (in, out) and applied with addmm, whose weight gradient is then
        # input^T @ grad: BLAS runs that shape several times faster than nn.Linear's grad^T @ input
        # for the skinny first layer. Initialised like nn.Linear. The last layer outputs the mean
        # and the log-std together (one matmul for both).
        sizes = [obs_dim, *map(int, hidden_sizes), 2 * act_dim]
        self.kernels = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            self.kernels.append(nn.Parameter(torch.empty(fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(fan_out).uniform_(-bound, bound)))
        low = torch.as_tensor(action_space.low, dtype=torch.float32)
        high = torch.as_tensor(action_space.high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0, persistent=False)
        self.register_buffer("action_bias", (high + low) / 2.0, persistent=False)
        self.register_buffer("action_low", low, persistent=False)
        self.register_buffer("action_high", high, persistent=False)
        self._logprob_const = act_dim * (_HALF_LOG_2PI + 2.0 * _LOG_2)
        self._refresh_layers()

    def _refresh_layers(self) -> None:
        # (kernel, bias) pairs as a plain tuple: iterating a ParameterList costs ~10 us per call,
        # as much as the rest of act() on a small network.
        self._layers = tuple(zip(self.kernels, self.biases))
        self._on_cpu = self.action_scale.device.type == "cpu"

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._refresh_layers()  # .to()/.cuda() may replace the parameter objects
        return out

    def _dist(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clamped log-std of the pre-tanh Gaussian, for a batch ``(B, obs_dim)``."""
        *hidden, (w_out, b_out) = self._layers
        h = obs
        for w, b in hidden:
            h = torch.addmm(b, h, w).relu_()  # in place: addmm's backward needs no output
        mu, log_std = torch.addmm(b_out, h, w_out).chunk(2, dim=-1)
        return mu, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def forward(self, obs: torch.Tensor, test: bool = False, with_logprob: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(action in [-1, 1], log-probability of that action or None)`` for a batch ``(B, obs_dim)``.

        ``test=True`` is deterministic (``tanh(mu)``); ``generator`` draws the noise (default: torch's
        global generator). The log-probability includes the tanh
        change of variables, in its numerically stable form
        ``log(1 - tanh(u)^2) = 2 log 2 - 2 logaddexp(u, -u)``.
        """
        if obs.dim() == 1:  # one observation: answer for a batch of one, without the batch dim
            action, logprob = self.forward(obs.unsqueeze(0), test, with_logprob, generator)
            return action[0], (None if logprob is None else logprob[0])
        mu, log_std = self._dist(obs)
        if test:
            u = mu
            gauss = -log_std
        else:
            noise = (torch.randn_like(mu) if generator is None else
                     torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device))
            u = torch.addcmul(mu, log_std.exp(), noise)
            # log N(u; mu, std) + log(2 pi)/2 = -noise^2/2 - log_std, with noise = (u - mu) / std
            gauss = noise.square().mul_(-0.5) - log_std
        action = torch.tanh(u)
        if not with_logprob:
            return action, None
        # log(1 - tanh(u)^2) = 2 log 2 - 2 log(e^u + e^-u): exact and stable for any u.
        per_dim = torch.add(gauss, torch.logaddexp(u, -u), alpha=2.0)
        logprob = per_dim.sum(dim=-1) - self._logprob_const
        return action, logprob

    def scale_action(self, action: torch.Tensor) -> torch.Tensor:
        """Squashed [-1, 1] actions -> environment units."""
        return torch.addcmul(self.action_bias, action, self.action_scale)

    def act(self, obs, test: bool = False) -> np.ndarray:
        """One environment action (float32, within the Box bounds) for one observation."""
        array = np.asarray(obs, dtype=np.float32)
        if not array.flags.writeable:  # torch.from_numpy warns on read-only arrays
            array = array.copy()
        x = torch.from_numpy(array).reshape(1, -1)
        with torch.no_grad():
            if not self._on_cpu:
                x = x.to(self.action_scale.device)
            mu, log_std = self._dist(x)
            u = mu if test else torch.addcmul(mu, log_std.exp_(), torch.randn_like(mu))
            action = torch.addcmul(self.action_bias, u.tanh_(), self.action_scale)
            # tanh may round to exactly +-1 and the rescale then overshoot the bound by an ulp
            action = torch.clamp(action, self.action_low, self.action_high)
            return action.reshape(-1).cpu().numpy()


# ------------------------------------------------------------------------------------------------
# the critics
# ------------------------------------------------------------------------------------------------
class EnsembleCritic(nn.Module):
    """``n`` independent Q-network MLPs evaluated in one pass with batched matmuls.

    Layer ``i`` has weight ``(n, in, out)`` and bias ``(n, 1, out)``, initialised like
    ``nn.Linear`` (uniform in ``+-1/sqrt(in)``), so each member is an ordinary MLP. The output
    layer (``out = 1``) is computed as a multiply-and-sum instead of a matmul: BLAS is slow on
    such degenerate shapes (``k = 1`` outer products in the backward pass cost 15x more).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: Sequence[int] = (256, 256),
                 n: int = 2):
        super().__init__()
        self.n = n
        sizes = [obs_dim + act_dim, *map(int, hidden_sizes), 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(n, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, fan_out).uniform_(-bound, bound)))
        self._refresh_layers()

    def _refresh_layers(self) -> None:
        self._layers = tuple(zip(self.weights, self.biases))  # ParameterList iteration is slow

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._refresh_layers()
        return out

    def forward(self, obs: torch.Tensor, action: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """Q-values ``(n, B)`` of ``(obs, action)`` (both ``(B, ·)``).

        ``detach_params=True`` lets gradients flow to the inputs only (for the actor loss).
        """
        x = torch.cat((obs, action), dim=-1)
        h = x.unsqueeze(0).expand(self.n, *x.shape)
        layers = self._layers
        if detach_params:
            layers = tuple((w.detach(), b.detach()) for w, b in layers)
        *hidden, (w_out, b_out) = layers
        for w, b in hidden:
            h = torch.baddbmm(b, h, w).relu_()  # in place: baddbmm's backward needs no output
        # (n, B, H) * (n, 1, H) summed over H, plus the (n, 1) bias
        q = torch.mul(h, w_out.transpose(1, 2)).sum(dim=-1)
        return q + b_out.view(self.n, 1)


# ------------------------------------------------------------------------------------------------
# the agent
# ------------------------------------------------------------------------------------------------
def _adam(params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float],
          weight_decay: float) -> torch.optim.Adam:
    """Fused Adam (one kernel for all tensors) where this torch has it for the parameters' device,
    else the multi-tensor (foreach) one."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, foreach=True)


class SACAgent(TrainingAgent):
    """Soft Actor-Critic. See the module docstring for the update and :data:`METRIC_KEYS`.

    Built as ``SACAgent(observation_space, action_space, device="cpu", config=None, **overrides)``:
    ``overrides`` replace fields of ``config`` (or of the defaults), so both
    ``functools.partial(SACAgent, config=SACConfig(...))`` and ``SACAgent(..., lr_actor=1e-3)`` work.

    ``train(batch)`` takes ``(obs, act, rew, next_obs, terminated, truncated)``: float32 tensors on
    the agent's device, actions in environment units, ``rew``/``terminated``/``truncated`` of shape
    ``(B,)``.
    """

    def __init__(self, observation_space, action_space, device: str | torch.device = "cpu",
                 config: SACConfig | None = None, **config_overrides: Any):
        super().__init__(observation_space, action_space, device)
        obs_dim, act_dim = _check_spaces(observation_space, action_space)
        if config is None:
            config = SACConfig(**config_overrides)
        elif config_overrides:
            known = {f.name for f in fields(SACConfig)}
            unknown = sorted(set(config_overrides) - known)
            if unknown:
                raise TypeError(f"unknown SACConfig field(s) {unknown}; known: {sorted(known)}")
            config = SACConfig(**{**asdict(config), **config_overrides})
        elif not isinstance(config, SACConfig):
            raise TypeError(f"config must be a SACConfig, got {type(config).__name__}")
        self.config = config
        dev = self.device
        if config.tune_allocator and dev.type == "cpu":
            tune_cpu_allocator()

        self.actor = MLPActor(observation_space, action_space, config.hidden_sizes).to(dev)
        self.critic = EnsembleCritic(obs_dim, act_dim, config.hidden_sizes).to(dev)
        self.critic_target = EnsembleCritic(obs_dim, act_dim, config.hidden_sizes).to(dev)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self._online_params = list(self.critic.parameters())
        self._target_params = list(self.critic_target.parameters())

        self.target_entropy = float(-act_dim if config.target_entropy is None else config.target_entropy)
        start_alpha = config.initial_alpha if config.learn_entropy_coef else config.alpha
        self.log_alpha = torch.tensor(math.log(start_alpha), dtype=torch.float32, device=dev,
                                      requires_grad=config.learn_entropy_coef)
        self._fixed_alpha = (None if config.learn_entropy_coef
                             else torch.tensor(config.alpha, dtype=torch.float32, device=dev))

        betas = tuple(config.betas)
        self.actor_optimizer = _adam(self.actor.parameters(), config.lr_actor, betas,
                                     config.weight_decay)
        self.critic_optimizer = _adam(self.critic.parameters(), config.lr_critic, betas,
                                      config.weight_decay)
        self.entropy_optimizer = (_adam([self.log_alpha], config.lr_entropy, betas, 0.0)
                                  if config.learn_entropy_coef else None)

        self.parallel_update = (dev.type == "cpu" and available_cores() >= 2
                                if config.parallel_update is None else config.parallel_update)
        # Parallel mode: the critic step runs in this one-thread pool while the caller's thread
        # does the actor step; each side draws its noise from its own generator (seeded from
        # torch's global one), so the draws do not depend on how the threads interleave.
        self._critic_thread: ThreadPoolExecutor | None = None
        self._critic_thread_pid = 0
        self._gen_target = self._gen_policy = None
        if self.parallel_update:
            seeds = torch.randint(0, 2 ** 62, (2,), dtype=torch.int64).tolist()
            self._gen_target = torch.Generator(device=dev)
            self._gen_target.manual_seed(seeds[0])
            self._gen_policy = torch.Generator(device=dev)
            self._gen_policy.manual_seed(seeds[1])

        self.updates = 0
        self._zero = torch.zeros((), device=dev)
        self._gamma = float(config.gamma)
        self._polyak_weight = 1.0 - float(config.polyak)
        # env units -> [-1, 1]: a_n = a * inv_scale + shift
        self._act_inv_scale = (1.0 / self.actor.action_scale).clone()
        self._act_shift = (-self.actor.action_bias * self._act_inv_scale).clone()

    # --- the update ------------------------------------------------------------------------------
    def unscale_action(self, action: torch.Tensor) -> torch.Tensor:
        """Environment-unit actions -> the squashed [-1, 1] space the networks work in."""
        return torch.addcmul(self._act_shift, action, self._act_inv_scale)

    def _alpha(self) -> torch.Tensor:
        """The entropy coefficient as a 0-d tensor without gradient."""
        return self.log_alpha.detach().exp() if self._fixed_alpha is None else self._fixed_alpha

    @property
    def entropy_coef(self) -> float:
        """The current entropy coefficient alpha."""
        return float(self._alpha())

    def compute_target(self, rew: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor,
                       alpha: torch.Tensor | float | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """The critics' regression target ``y`` (shape ``(B,)``), without gradients.

        Only ``terminated`` stops bootstrapping; a truncated transition bootstraps like any other.
        """
        if alpha is None:
            alpha = self._alpha()
        with torch.no_grad():
            next_action, next_logprob = self.actor(next_obs, generator=generator)
            q_next = self.critic_target(next_obs, next_action).amin(dim=0)
            soft_value = q_next - alpha * next_logprob
            not_done = 1.0 - terminated.to(soft_value.dtype)  # (a no-op when already float)
            return torch.addcmul(rew, not_done.mul_(self._gamma), soft_value)

    def train(self, batch) -> dict[str, float]:
        if self.parallel_update:
            return self._train_parallel(batch)
        obs, act, rew, next_obs, terminated, _truncated = batch
        alpha = self._alpha()  # this step's alpha: the value before its update, as in SB3

        # critics
        target = self.compute_target(rew, next_obs, terminated, alpha)
        q, loss_critic = self._critic_loss(obs, act, target)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss_critic.backward()
        self.critic_optimizer.step()

        # actor (+ entropy coefficient) against the updated critics
        loss_actor, loss_entropy, logprob_mean = self._actor_backward(obs, alpha)
        self._actor_step()
        self._after_critic_step()
        return self._metrics(loss_critic, loss_actor, loss_entropy, alpha, q, target, logprob_mean)

    def _train_parallel(self, batch) -> dict[str, float]:
        """The same losses, with the critic step in the pool thread and the actor step here.

        Shared parameters are only read concurrently; each side waits before writing what the other
        reads: the actor step waits until the critic thread has computed the target (it reads the
        actor), the critic step waits until the actor's backward pass is done (it reads the critics).
        """
        obs, act, rew, next_obs, terminated, _truncated = batch
        alpha = self._alpha()
        target_done = threading.Event()
        actor_backward_done = threading.Event()

        def critic_side():
            try:
                target = self.compute_target(rew, next_obs, terminated, alpha, self._gen_target)
            finally:
                target_done.set()
            q, loss_critic = self._critic_loss(obs, act, target)
            self.critic_optimizer.zero_grad(set_to_none=True)
            loss_critic.backward()
            actor_backward_done.wait()
            self.critic_optimizer.step()
            return q, loss_critic, target

        if self._critic_thread is None or self._critic_thread_pid != os.getpid():
            # (again after a fork: the child does not inherit the parent's threads)
            self._critic_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relayrl-sac-critic")
            self._critic_thread_pid = os.getpid()
        future = None
        try:
            future = self._critic_thread.submit(critic_side)
            try:
                loss_actor, loss_entropy, logprob_mean = self._actor_backward(obs, alpha, self._gen_policy)
            finally:
                actor_backward_done.set()
            target_done.wait()
            self._actor_step()
        finally:
            # Whatever happened here (an error, or Ctrl+C / SIGTERM raising KeyboardInterrupt at any
            # point, even inside submit), the critic side is never left waiting, and this returns
            # only once it is done: a checkpoint saved after an interrupt never sees a step in flight.
            actor_backward_done.set()
            if future is not None:
                _wait_through_interrupts(future)
            else:  # submit itself was interrupted: wait for a task it may have queued anyway
                try:
                    _wait_through_interrupts(self._critic_thread.submit(lambda: None))
                except RuntimeError:  # the pool is shut down: nothing of ours can be in it
                    pass
        q, loss_critic, target = future.result()
        self._after_critic_step()
        return self._metrics(loss_critic, loss_actor, loss_entropy, alpha, q, target, logprob_mean)

    def _critic_loss(self, obs, act, target):
        q = self.critic(obs, self.unscale_action(act))
        return q, (q - target).square().mean()  # = 0.5 * (mse(Q1, y) + mse(Q2, y))

    def _actor_backward(self, obs, alpha, generator=None):
        """Actor (+ entropy coefficient) losses through the critics' current weights, and their
        gradients."""
        action_pi, logprob = self.actor(obs, generator=generator)
        q_pi = self.critic(obs, action_pi, detach_params=True).amin(dim=0)
        loss_actor = (alpha * logprob - q_pi).mean()
        logprob_mean = logprob.detach().mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        if self.entropy_optimizer is not None:
            loss_entropy = -self.log_alpha * (logprob_mean + self.target_entropy)
            self.entropy_optimizer.zero_grad(set_to_none=True)
            (loss_actor + loss_entropy).backward()  # disjoint parameters: same grads as two backwards
        else:
            loss_entropy = self._zero
            loss_actor.backward()
        return loss_actor, loss_entropy, logprob_mean

    def _actor_step(self) -> None:
        self.actor_optimizer.step()
        if self.entropy_optimizer is not None:
            self.entropy_optimizer.step()

    def _after_critic_step(self) -> None:
        self.updates += 1
        if self.updates % self.config.target_update_interval == 0:
            self.polyak_update()

    def _metrics(self, loss_critic, loss_actor, loss_entropy, alpha, q, target, logprob_mean):
        values = torch.stack((loss_critic.detach(), loss_actor.detach(), loss_entropy.detach(),
                              alpha, q.detach().mean(), target.mean(), logprob_mean)).tolist()
        return dict(zip(METRIC_KEYS, values))

    def close(self) -> None:
        """Stop the critic thread of the parallel update (it also ends with the process)."""
        if self._critic_thread is not None:
            self._critic_thread.shutdown(wait=True)
            self._critic_thread = None

    @torch.no_grad()
    def polyak_update(self) -> None:
        """``target = polyak * target + (1 - polyak) * online``, all tensors in one call."""
        torch._foreach_lerp_(self._target_params, self._online_params, self._polyak_weight)

    # --- contract --------------------------------------------------------------------------------
    def get_actor(self) -> MLPActor:
        return self.actor

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "entropy_optimizer": ({} if self.entropy_optimizer is None
                                  else self.entropy_optimizer.state_dict()),
            "updates": int(self.updates),
            # the parallel update's noise generators (empty in the serial mode, which uses torch's
            # global generator)
            "generators": ({} if self._gen_target is None else
                           {"target": self._gen_target.get_state(), "policy": self._gen_policy.get_state()}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        required = ("actor", "critic", "critic_target", "log_alpha", "actor_optimizer",
                    "critic_optimizer", "updates")
        missing = [key for key in required if key not in state]
        if missing:
            raise ValueError(f"not a SACAgent state: missing {missing}")
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(torch.as_tensor(state["log_alpha"]))
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        if self.entropy_optimizer is not None and state.get("entropy_optimizer"):
            self.entropy_optimizer.load_state_dict(state["entropy_optimizer"])
        self.updates = int(state["updates"])
        generators = state.get("generators") or {}
        if self._gen_target is not None and generators:
            self._gen_target.set_state(torch.as_tensor(generators["target"], dtype=torch.uint8).cpu())
            self._gen_policy.set_state(torch.as_tensor(generators["policy"], dtype=torch.uint8).cpu())
