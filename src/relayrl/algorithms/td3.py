"""Twin Delayed DDPG (TD3, Fujimoto et al., 2018) as a :class:`~relayrl.training.TrainingAgent`.

A deterministic tanh policy with two critics, trained the way the authors' reference implementation
and Stable-Baselines3 do it. Train call number ``k`` (counting from 1) does, in this order:

1. critic target, without gradients, with target policy smoothing
   ``a' = clip(pi'(s') + clip(target_noise * eps, -target_noise_clip, target_noise_clip), -1, 1)``
   (``eps ~ N(0, I)`` from the agent's own seeded generator) and the clipped double-Q target
   ``y = r + discount * (1 - terminated) * min_i Q'_i(s', a')``, where ``discount`` is ``gamma``
   or the batch's per-sample ``discounts`` (n-step returns); truncation (a time limit)
   bootstraps, only termination does not;
2. critic step on ``mean_b(w_b * sum_i (Q_i(s_b, a_b) - y_b)^2)`` (``w = 1`` unless the batch
   carries importance ``weights``): ``mse(Q1, y) + mse(Q2, y)``, the paper's and SB3's loss;
3. when ``k`` is a multiple of ``policy_delay``: actor step on ``-mean(Q_1(s, pi(s)))`` (the first
   critic only, as in the paper) against the critics just updated, then
   ``target = polyak * target + (1 - polyak) * online`` for the target actor and critics;
4. the batch's ``report_td_errors(|y - mean_i Q_i(s, a)|)`` when it has that hook (prioritized
   replay), on the caller's thread.

Actions are handled in the squashed [-1, 1] space (batches arrive in environment units and are
rescaled; the actor rescales its output to the Box bounds), so the noise scales of
:class:`TD3Config` are fractions of each dimension's half-range.

With ``parallel_update`` (the default on a CPU with 2 cores or more), the calls that update the
actor run steps 1-2 in a second thread while step 3's actor step runs in the caller's, so the actor
sees the critics as they were *before* this call's critic step (see
:attr:`TD3Config.parallel_update`); the other calls, and everything else, are the same.

Speed follows :mod:`relayrl.algorithms.sac`: both critics are one batched ensemble, the actor loss
goes through the first critic's *detached* weights (so no critic gradient is computed and thrown
away, and the second critic is not evaluated at all), weights are laid out for the fast BLAS
shapes, Adam is fused, the polyak update is one ``torch._foreach_lerp_`` over both target networks,
and the metrics are read with a single ``tolist()``.
"""
from __future__ import annotations

import functools
import hashlib
import math
import threading
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..system import available_cores
from ..training import TrainingAgent
from .configs import TD3Config
from .networks import BoxMLPPolicy, EnsembleCritic, check_vector_spaces, fused_adam, tune_cpu_allocator
from .two_threads import TwoThreads

__all__ = ["TD3Config", "DeterministicActor", "TD3Agent", "METRIC_KEYS", "actor_factory", "check_spaces"]

METRIC_KEYS = ("loss_critic", "loss_actor", "q_mean", "q_target_mean", "td_error_mean")
"""Keys of the dict ``TD3Agent.train`` returns at every call (all python floats):

- ``loss_critic``: the critic loss of this call, ``mean_b(w_b * sum_i (Q_i - y_b)^2)``, before the
  critic step (with no importance weights: ``mse(Q1, y) + mse(Q2, y)``);
- ``loss_actor``: ``-mean(Q_1(s, pi(s)))`` as last computed: this call's on the calls that update
  the actor (one in ``policy_delay``), the latest one's on the others, so a round's mean weighs
  each actor update about ``policy_delay`` times. Before the first actor update it is evaluated,
  without a step, on the first call's batch against the critics just updated;
- ``q_mean``: mean of both critics' ``Q(s, a)`` on the batch's actions (before the critic step);
- ``q_target_mean``: mean of the bootstrapped target ``y``;
- ``td_error_mean``: mean of ``|y - mean_i Q_i(s, a)|``, the errors a prioritized memory is given.
"""


# ------------------------------------------------------------------------------------------------
# the policy
# ------------------------------------------------------------------------------------------------
class DeterministicActor(BoxMLPPolicy):
    """Deterministic policy: a ReLU MLP, ``tanh``, rescaled to the Box bounds.

    ``forward`` returns squashed [-1, 1] actions (what the learner needs); ``act`` returns
    environment actions, with Gaussian exploration noise of standard deviation
    ``exploration_noise`` (in [-1, 1] units, clipped back into [-1, 1]) unless ``test``.
    ``weights()`` holds only the network parameters: the rescaling comes from the action space and
    the noise from the settings. Weights are stored ``(in, out)`` and applied with ``addmm`` like
    :class:`~relayrl.algorithms.networks.MLPActor`'s, initialised like ``nn.Linear``.
    """

    def __init__(self, observation_space, action_space, hidden_sizes: Sequence[int] = (256, 256),
                 exploration_noise: float = 0.1):
        noise = float(exploration_noise)
        if not (math.isfinite(noise) and noise >= 0.0):
            raise ValueError(f"exploration_noise must be a finite number >= 0, got {exploration_noise!r}")
        act_dim = int(np.prod(getattr(action_space, "shape", None) or (0,)))
        super().__init__(observation_space, action_space, hidden_sizes, act_dim, "TD3")
        self.exploration_noise = noise

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Squashed actions ``(B, act_dim)`` in [-1, 1] for a batch ``(B, obs_dim)`` (``(act_dim,)``
        for one observation ``(obs_dim,)``)."""
        if obs.dim() == 1:
            return self.forward(obs.unsqueeze(0))[0]
        *hidden, (w_out, b_out) = self._layers
        h = obs
        for w, b in hidden:
            h = torch.addmm(b, h, w).relu_()  # in place: addmm's backward needs no output
        return torch.addmm(b_out, h, w_out).tanh_()  # tanh's backward uses its output: in place is fine

    def act(self, obs, test: bool = False) -> np.ndarray:
        """One environment action (float32, within the Box bounds) for one observation, with
        Gaussian exploration noise unless ``test`` (clipping to the bounds clips the noisy action
        to [-1, 1], the rescale being increasing)."""
        with torch.no_grad():
            a = self.forward(self._observation_row(obs))
            if not test and self.exploration_noise > 0.0:
                a = a.add_(torch.randn_like(a), alpha=self.exploration_noise)
            return self._environment_action(a)


def first_critic_q(critic: EnsembleCritic, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """``Q_1(s, a)`` ``(B,)``: the first member of a plain :class:`EnsembleCritic`, evaluated alone
    through its *detached* weights, so gradients reach ``action`` (and what produced it) only."""
    if not critic._plain:
        raise ValueError("first_critic_q evaluates plain critics only (no dropout or normalisation)")
    h = torch.cat((obs, action), dim=-1)
    *hidden, (w_out, b_out) = critic._layers
    for w, b in hidden:
        h = torch.addmm(b.detach()[0], h, w.detach()[0]).relu_()
    # the one-unit output layer as a multiply-and-sum (see EnsembleCritic: BLAS is slow at k=1)
    return torch.mul(h, w_out.detach()[0].reshape(1, -1)).sum(dim=-1) + b_out.detach()[0].reshape(())


def _per_sample(values: Any, like: torch.Tensor) -> torch.Tensor:
    """A batch's per-sample column (``discounts``, ``weights``) shaped, typed and placed like
    ``like``; a column that is not one value per sample is refused rather than broadcast."""
    tensor = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    if tensor.numel() != like.numel():
        raise ValueError(f"a per-sample batch column has shape {tuple(tensor.shape)}, expected "
                         f"{tuple(like.shape)} (one value per transition)")
    return tensor.reshape(like.shape)


# ------------------------------------------------------------------------------------------------
# the agent
# ------------------------------------------------------------------------------------------------
class TD3Agent(TrainingAgent):
    """Twin Delayed DDPG. See the module docstring for the update and :data:`METRIC_KEYS`.

    Built as ``TD3Agent(observation_space, action_space, device="cpu", config=None, **overrides)``:
    ``overrides`` replace fields of ``config`` (or of the defaults), so both
    ``functools.partial(TD3Agent, config=TD3Config(...))`` and ``TD3Agent(..., policy_delay=3)`` work.

    ``train(batch)`` takes ``(obs, act, rew, next_obs, terminated, truncated)``: float32 tensors on
    the agent's device, actions in environment units, ``rew``/``terminated``/``truncated`` of shape
    ``(B,)``; optional batch attributes ``discounts``, ``weights`` and ``report_td_errors`` are
    used when present (see the module docstring).
    """

    def __init__(self, observation_space, action_space, device: str | torch.device = "cpu",
                 config: TD3Config | None = None, **config_overrides: Any):
        super().__init__(observation_space, action_space, device)
        obs_dim, act_dim = check_vector_spaces(observation_space, action_space, "TD3")
        if config is None:
            config = TD3Config(**config_overrides)
        elif not isinstance(config, TD3Config):
            raise TypeError(f"config must be a TD3Config, got {type(config).__name__}")
        elif config_overrides:
            known = {f.name for f in fields(TD3Config)}
            unknown = sorted(set(config_overrides) - known)
            if unknown:
                raise TypeError(f"unknown TD3Config field(s) {unknown}; known: {sorted(known)}")
            config = TD3Config(**{**asdict(config), **config_overrides})
        self.config = config
        dev = self.device
        if config.tune_allocator and dev.type == "cpu":
            tune_cpu_allocator()

        def actor() -> DeterministicActor:
            return DeterministicActor(observation_space, action_space, config.hidden_sizes,
                                      config.exploration_noise).to(dev)

        self.actor, self.actor_target = actor(), actor()
        self.critic = EnsembleCritic(obs_dim, act_dim, config.hidden_sizes).to(dev)
        self.critic_target = EnsembleCritic(obs_dim, act_dim, config.hidden_sizes).to(dev)
        for online, target in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
            target.load_state_dict(online.state_dict())
            target.requires_grad_(False)
        # both target networks move together, in one _foreach_lerp_
        self._online_params = [*self.actor.parameters(), *self.critic.parameters()]
        self._target_params = [*self.actor_target.parameters(), *self.critic_target.parameters()]

        betas = tuple(config.betas)
        self.actor_optimizer = fused_adam(self.actor.parameters(), config.lr_actor, betas,
                                          config.weight_decay)
        self.critic_optimizer = fused_adam(self.critic.parameters(), config.lr_critic, betas,
                                           config.weight_decay)

        self.parallel_update = (dev.type == "cpu" and available_cores() >= 2
                                if config.parallel_update is None else config.parallel_update)
        self._threads = TwoThreads("relayrl-td3-critic")
        # The target smoothing noise, the only random draw of an update, comes from this generator
        # (seeded from torch's global one) in both modes: a seeded run is reproducible, and a
        # checkpoint restores the noise stream exactly.
        self._generator = torch.Generator(device=dev)
        self._generator.manual_seed(int(torch.randint(0, 2 ** 62, (1,), dtype=torch.int64)))

        self.updates = 0  # train calls (critic updates) so far; the actor moves on multiples of policy_delay
        self._loss_actor: torch.Tensor | None = None  # the last actor loss (0-d, no gradient)
        self._gamma = float(config.gamma)
        self._polyak_weight = 1.0 - float(config.polyak)
        self._policy_delay = int(config.policy_delay)
        self._noise_std = float(config.target_noise)
        self._noise_clip = float(config.target_noise_clip)
        # env units -> [-1, 1]: a_n = a * inv_scale + shift
        self._act_inv_scale = (1.0 / self.actor.action_scale).clone()
        self._act_shift = (-self.actor.action_bias * self._act_inv_scale).clone()

    # --- the update ------------------------------------------------------------------------------
    def unscale_action(self, action: torch.Tensor) -> torch.Tensor:
        """Environment-unit actions -> the squashed [-1, 1] space the networks work in."""
        return torch.addcmul(self._act_shift, action, self._act_inv_scale)

    def compute_target(self, rew: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor,
                       discounts: torch.Tensor | None = None,
                       noise: torch.Tensor | None = None) -> torch.Tensor:
        """The critics' regression target ``y`` (shape ``(B,)``), without gradients.

        ``noise`` is the standard normal draw ``eps`` of the target smoothing, ``(B, act_dim)``
        (default: drawn from the agent's generator); ``discounts`` replaces ``gamma`` per sample.
        Only ``terminated`` stops bootstrapping; a truncated transition bootstraps like any other.
        """
        with torch.no_grad():
            next_action = self.actor_target(next_obs)
            if noise is None:
                noise = torch.randn(next_action.shape, generator=self._generator,
                                    dtype=next_action.dtype, device=next_action.device)
            smoothing = (noise * self._noise_std).clamp_(-self._noise_clip, self._noise_clip)
            next_action = next_action.add_(smoothing).clamp_(-1.0, 1.0)
            q_next = self.critic_target(next_obs, next_action).amin(dim=0)
            not_done = 1.0 - terminated.to(q_next.dtype)
            discount = self._gamma if discounts is None else _per_sample(discounts, not_done)
            return torch.addcmul(rew, not_done.mul_(discount), q_next)

    def train(self, batch) -> dict[str, float]:
        obs, act, rew, next_obs, terminated, *_ = batch  # truncation changes nothing: it bootstraps
        # checked here, before any step: a bad column must not leave a half-done update behind
        discounts, weights = (getattr(batch, name, None) for name in ("discounts", "weights"))
        discounts = None if discounts is None else _per_sample(discounts, rew)
        weights = None if weights is None else _per_sample(weights, rew)
        act = self.unscale_action(act)
        actor_step = (self.updates + 1) % self._policy_delay == 0
        if actor_step and self.parallel_update:
            q, loss_critic, target, loss_actor = self._update_in_parallel(
                obs, act, rew, next_obs, terminated, discounts, weights)
        else:
            target = self.compute_target(rew, next_obs, terminated, discounts)
            q, loss_critic = self._critic_backward(obs, act, target, weights)
            self.critic_optimizer.step()
            if actor_step:  # against the critics just updated (the paper's code and SB3's order)
                loss_actor = self._actor_backward(obs)
                self.actor_optimizer.step()
        self.updates += 1
        if actor_step:
            self._loss_actor = loss_actor.detach()
            self.polyak_update()
        elif self._loss_actor is None:  # nothing to report yet: evaluate it once, without a step
            with torch.no_grad():
                self._loss_actor = -first_critic_q(self.critic, obs, self.actor(obs)).mean()
        td_error = (target - q.detach().mean(dim=0)).abs()
        report = getattr(batch, "report_td_errors", None)
        if callable(report):
            report(td_error)
        values = torch.stack((loss_critic.detach(), self._loss_actor, q.detach().mean(),
                              target.mean(), td_error.mean())).tolist()
        return dict(zip(METRIC_KEYS, values))

    def _update_in_parallel(self, obs, act, rew, next_obs, terminated, discounts, weights):
        """The critic step in the pool thread and the actor step here, both from the parameters
        as they were when the call started.

        Shared parameters are only read concurrently. The critic side reads the target networks
        and the critics, and writes the critics; the actor side reads the critics (through
        detached views of their weights) and the actor, and writes the actor, which the critic
        side never reads (its target comes from the target actor). So one wait suffices: the
        critic step waits until the actor's backward pass, the last reader of the critics' weights,
        is done. The target networks move only after both sides have finished.
        """
        actor_backward_done = threading.Event()

        def critic_side():
            target = self.compute_target(rew, next_obs, terminated, discounts)
            q, loss_critic = self._critic_backward(obs, act, target, weights)
            actor_backward_done.wait()
            self.critic_optimizer.step()
            return q, loss_critic, target

        def actor_side():
            try:
                loss_actor = self._actor_backward(obs)
            finally:
                actor_backward_done.set()
            self.actor_optimizer.step()
            return loss_actor

        (q, loss_critic, target), loss_actor = self._threads.run(
            critic_side, actor_side, release=actor_backward_done.set)
        return q, loss_critic, target, loss_actor

    def _critic_backward(self, obs, act, target, weights):
        """``Q(s, a)`` ``(2, B)`` and the critic loss, with its gradients (the step is the caller's)."""
        q = self.critic(obs, act)
        per_sample = (q - target).square().sum(dim=0)
        loss = per_sample.mean() if weights is None else (per_sample * weights).mean()
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return q, loss

    def _actor_backward(self, obs):
        """The actor loss ``-mean(Q_1(s, pi(s)))`` through the critics' current weights, and its
        gradients (for the actor's parameters only)."""
        loss = -first_critic_q(self.critic, obs, self.actor(obs)).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    @torch.no_grad()
    def polyak_update(self) -> None:
        """``target = polyak * target + (1 - polyak) * online`` for the target actor and critics,
        all tensors in one call."""
        torch._foreach_lerp_(self._target_params, self._online_params, self._polyak_weight)

    def close(self) -> None:
        """Stop the critic thread of the parallel update (it also ends with the process)."""
        self._threads.close()

    # --- contract --------------------------------------------------------------------------------
    def get_actor(self) -> DeterministicActor:
        return self.actor

    _NETWORKS = ("actor", "actor_target", "critic", "critic_target")

    def state_dict(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name).state_dict() for name in self._NETWORKS},
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "updates": int(self.updates),
            "loss_actor": None if self._loss_actor is None else float(self._loss_actor),
            "generator": self._generator.get_state(),  # the target smoothing noise
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; a state of another algorithm or of differently shaped
        networks is refused with a ValueError before anything is changed."""
        if not isinstance(state, Mapping):
            raise ValueError(f"not a TD3Agent state: a {type(state).__name__}, not a dict")
        required = (*self._NETWORKS, "actor_optimizer", "critic_optimizer", "updates", "generator")
        missing = [key for key in required if key not in state]
        if missing:
            raise ValueError(f"not a TD3Agent state: missing {missing} (a checkpoint of another "
                             "algorithm? resume it with the algorithm that wrote it)")
        for name in self._NETWORKS:
            own, other = getattr(self, name).state_dict(), state[name]
            shapes = {k: tuple(v.shape) for k, v in own.items()}
            given = {k: tuple(getattr(v, "shape", ())) for k, v in dict(other).items()}
            if shapes != given:
                raise ValueError(f"the TD3Agent state's {name} does not fit this agent (other "
                                 f"hidden_sizes or spaces?): expected {shapes}, got {given}")
        for name in self._NETWORKS:
            getattr(self, name).load_state_dict(state[name])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.updates = int(state["updates"])
        loss_actor = state.get("loss_actor")
        self._loss_actor = (None if loss_actor is None else
                            torch.tensor(float(loss_actor), dtype=torch.float32, device=self.device))
        generator = torch.as_tensor(state["generator"], dtype=torch.uint8).cpu()
        try:
            self._generator.set_state(generator)
        except (RuntimeError, ValueError):  # saved on another device type: same seed, other stream
            digest = hashlib.sha256(generator.numpy().tobytes()).digest()
            self._generator.manual_seed(int.from_bytes(digest[:8], "little") >> 2)


# ------------------------------------------------------------------------------------------------
# the registry's hooks (see relayrl.algorithms)
# ------------------------------------------------------------------------------------------------
def check_spaces(observation_space, action_space) -> None:
    """Refuse, with the fix, the spaces TD3 as written here cannot handle."""
    from gymnasium import spaces
    if not isinstance(action_space, spaces.Box):
        raise ValueError(f"a {type(action_space).__name__} action space: TD3 needs continuous (Box) "
                         "actions; pick an environment with a Box action space")
    check_vector_spaces(observation_space, action_space, "TD3")


def actor_factory(config: TD3Config):
    """The callable ``(observation_space, action_space) -> DeterministicActor`` workers build the
    policy with (its exploration noise from the settings)."""
    return functools.partial(DeterministicActor, hidden_sizes=tuple(config.hidden_sizes),
                             exploration_noise=float(config.exploration_noise))
