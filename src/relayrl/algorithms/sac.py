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

import functools
import math
import threading
from dataclasses import asdict, fields
from typing import Any

import torch

from ..system import available_cores
from ..training import TrainingAgent
from .configs import SACConfig
from .networks import EnsembleCritic, MLPActor, check_vector_spaces, fused_adam, tune_cpu_allocator
from .two_threads import TwoThreads

__all__ = ["SACConfig", "MLPActor", "EnsembleCritic", "SACAgent", "actor_factory", "check_spaces"]

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



class SACAgent(TrainingAgent):
    """Soft Actor-Critic. See the module docstring for the update and :data:`METRIC_KEYS`.

    Built as ``SACAgent(observation_space, action_space, device="cpu", config=None, **overrides)``:
    ``overrides`` replace fields of ``config`` (or of the defaults), so both
    ``functools.partial(SACAgent, config=SACConfig(...))`` and ``SACAgent(..., lr_actor=1e-3)`` work.

    ``train(batch)`` takes ``(obs, act, rew, next_obs, terminated, truncated)``: float32 tensors on
    the agent's device, actions in environment units, ``rew``/``terminated``/``truncated`` of shape
    ``(B,)``.
    """

    config_class: type = SACConfig
    """The settings dataclass (a variant's is a subclass of :class:`SACConfig`)."""

    def __init__(self, observation_space, action_space, device: str | torch.device = "cpu",
                 config: SACConfig | None = None, **config_overrides: Any):
        super().__init__(observation_space, action_space, device)
        obs_dim, act_dim = check_vector_spaces(observation_space, action_space)
        config_class = type(self).config_class
        if config is None:
            config = config_class(**config_overrides)
        elif not isinstance(config, config_class):
            raise TypeError(f"config must be a {config_class.__name__}, got {type(config).__name__}")
        elif config_overrides:
            known = {f.name for f in fields(config_class)}
            unknown = sorted(set(config_overrides) - known)
            if unknown:
                raise TypeError(f"unknown {config_class.__name__} field(s) {unknown}; known: {sorted(known)}")
            config = config_class(**{**asdict(config), **config_overrides})
        self.config = config
        dev = self.device
        if config.tune_allocator and dev.type == "cpu":
            tune_cpu_allocator()

        self.actor = MLPActor(observation_space, action_space, config.hidden_sizes).to(dev)
        self.critic = self.make_critic(obs_dim, act_dim).to(dev)
        self.critic_target = self.make_critic(obs_dim, act_dim).to(dev) if self.uses_target else None
        self._online_params = list(self.critic.parameters())
        self._target_params: list[torch.Tensor] = []
        if self.critic_target is not None:
            self.critic_target.load_state_dict(self.critic.state_dict())
            self.critic_target.requires_grad_(False)
            self._target_params = list(self.critic_target.parameters())
        self.actor_update_interval = int(getattr(config, "actor_update_interval", 1))
        self._last_actor_losses: tuple | None = None

        self.target_entropy = float(-act_dim if config.target_entropy is None else config.target_entropy)
        start_alpha = config.initial_alpha if config.learn_entropy_coef else config.fixed_alpha
        self.log_alpha = torch.tensor(math.log(start_alpha), dtype=torch.float32, device=dev,
                                      requires_grad=config.learn_entropy_coef)
        self._fixed_alpha = (None if config.learn_entropy_coef
                             else torch.tensor(config.fixed_alpha, dtype=torch.float32, device=dev))

        betas = tuple(config.betas)
        self.actor_optimizer = fused_adam(self.actor.parameters(), config.lr_actor, betas,
                                     config.weight_decay)
        self.critic_optimizer = fused_adam(self.critic.parameters(), config.lr_critic, betas,
                                      config.weight_decay)
        self.entropy_optimizer = (fused_adam([self.log_alpha], config.lr_entropy, betas, 0.0)
                                  if config.learn_entropy_coef else None)

        self.parallel_update = (dev.type == "cpu" and available_cores() >= 2
                                if config.parallel_update is None else config.parallel_update)
        if self.parallel_update and not type(self).supports_parallel_update:
            if config.parallel_update:
                raise ValueError(f"{type(self).__name__}'s update is serial: set parallel_update to "
                                 "false or leave it unset")
            self.parallel_update = False
        # Parallel mode: the critic step runs in this one-thread pool while the caller's thread
        # does the actor step; each side draws its noise from its own generator (seeded from
        # torch's global one), so the draws do not depend on how the threads interleave.
        self._threads = TwoThreads("relayrl-sac-critic")
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

    # --- what variants change (REDQ, DroQ, CrossQ subclass this agent) --------------------------
    uses_target: bool = True
    """Whether the agent keeps polyak-averaged target critics (CrossQ does not)."""

    supports_parallel_update: bool = True
    """Whether the two-thread update applies (CrossQ's steps share batch statistics: it does not)."""

    def make_critic(self, obs_dim: int, act_dim: int) -> EnsembleCritic:
        """The critic ensemble (and, as a copy, its target): SAC's twin plain MLPs."""
        return EnsembleCritic(obs_dim, act_dim, self.config.hidden_sizes)

    def policy_q(self, q_pi: torch.Tensor) -> torch.Tensor:
        """The critics' ``(n, B)`` values of the policy's actions, reduced to the ``(B,)`` value the
        actor maximises: their minimum here (REDQ takes the mean of its ensemble)."""
        return q_pi.amin(dim=0)

    def actor_step_due(self) -> bool:
        """Whether this update also steps the actor and alpha: every ``actor_update_interval``-th
        update (1: every update)."""
        return (self.updates + 1) % self.actor_update_interval == 0

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
                       generator: torch.Generator | None = None,
                       discounts: torch.Tensor | None = None) -> torch.Tensor:
        """The critics' regression target ``y`` (shape ``(B,)``), without gradients.

        Only ``terminated`` stops bootstrapping; a truncated transition bootstraps like any other.
        ``discounts`` (the batch's per-transition ``gamma ** n`` of n-step returns) replaces
        ``gamma`` when given.
        """
        if alpha is None:
            alpha = self._alpha()
        with torch.no_grad():
            next_action, next_logprob = self.actor(next_obs, generator=generator)
            q_next = self._target_q(next_obs, next_action, generator)
            soft_value = q_next - alpha * next_logprob
            not_done = 1.0 - terminated.to(soft_value.dtype)  # (a no-op when already float)
            not_done = not_done.mul_(self._gamma) if discounts is None else not_done.mul_(discounts)
            return torch.addcmul(rew, not_done, soft_value)

    def _target_q(self, next_obs: torch.Tensor, next_action: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """The bootstrapped value of ``(next_obs, next_action)`` before the entropy term: the
        minimum over the target critics (REDQ takes a random subset, CrossQ its online critics)."""
        return self.critic_target(next_obs, next_action).amin(dim=0)

    def train(self, batch) -> dict[str, float]:
        actor_due = self.actor_step_due()
        if self.parallel_update and actor_due:
            return self._train_parallel(batch)
        obs, act, rew, next_obs, terminated, _truncated = batch
        alpha = self._alpha()  # this step's alpha: the value before its update, as in SB3

        # critics
        target = self.compute_target(rew, next_obs, terminated, alpha, self._gen_target,
                                     getattr(batch, "discounts", None))
        q, loss_critic = self._critic_loss(obs, act, target, batch)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss_critic.backward()
        self.critic_optimizer.step()

        # actor (+ entropy coefficient) against the updated critics
        actor_losses = (self._actor_update(obs, alpha, self._gen_policy) if actor_due
                        else self._skipped_actor_losses())
        self._after_critic_step()
        return self._metrics(loss_critic, *actor_losses, alpha, q, target)

    def _actor_update(self, obs, alpha, generator=None) -> tuple:
        losses = self._actor_backward(obs, alpha, generator)
        self._actor_step()
        self._last_actor_losses = losses
        return losses

    def _skipped_actor_losses(self) -> tuple:
        """The losses reported on an update that does not step the actor: the last actor step's
        (zeros before the first one)."""
        if self._last_actor_losses is None:
            return self._zero, self._zero, self._zero
        return self._last_actor_losses

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
                target = self.compute_target(rew, next_obs, terminated, alpha, self._gen_target,
                                             getattr(batch, "discounts", None))
            finally:
                target_done.set()
            q, loss_critic = self._critic_loss(obs, act, target, batch)
            self.critic_optimizer.zero_grad(set_to_none=True)
            loss_critic.backward()
            actor_backward_done.wait()
            self.critic_optimizer.step()
            return q, loss_critic, target

        def actor_side():
            try:
                losses = self._actor_backward(obs, alpha, self._gen_policy)
            finally:
                actor_backward_done.set()
            target_done.wait()
            self._actor_step()
            return losses

        (q, loss_critic, target), actor_losses = self._threads.run(
            critic_side, actor_side, release=actor_backward_done.set)
        self._last_actor_losses = actor_losses
        self._after_critic_step()
        return self._metrics(loss_critic, *actor_losses, alpha, q, target)

    def _critic_loss(self, obs, act, target, batch=None):
        """``0.5 * sum_i mse(Q_i(s, a), y)``; with the batch's importance ``weights`` (prioritized
        replay) each sample's error is weighted, and the per-sample ``|y - mean_i Q_i|`` goes back
        through ``batch.report_td_errors`` when the batch has it."""
        q = self.critic(obs, self.unscale_action(act))
        return q, critic_regression_loss(q, target, batch)

    def _actor_backward(self, obs, alpha, generator=None):
        """Actor (+ entropy coefficient) losses through the critics' current weights, and their
        gradients."""
        action_pi, logprob = self.actor(obs, generator=generator)
        q_pi = self.policy_q(self.critic(obs, action_pi, detach_params=True))
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
        if self.critic_target is not None and self.updates % self.config.target_update_interval == 0:
            self.polyak_update()

    def _metrics(self, loss_critic, loss_actor, loss_entropy, logprob_mean, alpha, q, target):
        values = torch.stack((loss_critic.detach(), loss_actor.detach(), loss_entropy.detach(),
                              alpha, q.detach().mean(), target.mean(), logprob_mean)).tolist()
        return dict(zip(METRIC_KEYS, values))

    def close(self) -> None:
        """Stop the critic thread of the parallel update (it also ends with the process)."""
        self._threads.close()

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
            "critic_target": {} if self.critic_target is None else self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "entropy_optimizer": ({} if self.entropy_optimizer is None
                                  else self.entropy_optimizer.state_dict()),
            "updates": int(self.updates),
            # what updates without an actor step report (actor_update_interval > 1)
            "last_actor_losses": ([] if self._last_actor_losses is None
                                  else [float(v.detach()) for v in self._last_actor_losses]),
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
        if self.critic_target is not None:
            self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(torch.as_tensor(state["log_alpha"]))
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        if self.entropy_optimizer is not None and state.get("entropy_optimizer"):
            self.entropy_optimizer.load_state_dict(state["entropy_optimizer"])
        self.updates = int(state["updates"])
        last = state.get("last_actor_losses")
        self._last_actor_losses = (tuple(torch.tensor(float(v), device=self.device) for v in last)
                                   if last is not None and len(last) == 3 else None)
        generators = state.get("generators") or {}
        if self._gen_target is not None and generators:
            self._gen_target.set_state(torch.as_tensor(generators["target"], dtype=torch.uint8).cpu())
            self._gen_policy.set_state(torch.as_tensor(generators["policy"], dtype=torch.uint8).cpu())


def critic_regression_loss(q: torch.Tensor, target: torch.Tensor, batch=None) -> torch.Tensor:
    """The critics' loss for ``q`` (``(n_critics, B)``) against ``target`` (``(B,)``):
    ``mean over samples and critics of (q - y)^2`` (= ``0.5 * sum_i mse`` for 2 critics), each
    sample weighted by ``batch.weights`` when the batch carries importance weights; the per-sample
    ``|y - mean_i Q_i|`` is handed to ``batch.report_td_errors`` when the batch has that hook
    (prioritized replay, see :mod:`relayrl.memory`)."""
    error = q - target
    report = getattr(batch, "report_td_errors", None)
    if callable(report):
        report(error.detach().mean(dim=0).abs())
    weights = getattr(batch, "weights", None)
    if weights is None:
        return error.square().mean()
    return (error.square().mean(dim=0) * weights).mean()


# ------------------------------------------------------------------------------------------------
# the registry's hooks (see relayrl.algorithms)
# ------------------------------------------------------------------------------------------------
def check_spaces(observation_space, action_space) -> None:
    """Refuse, with the fix, the spaces SAC as written here cannot handle."""
    from gymnasium import spaces
    if not isinstance(action_space, spaces.Box):
        raise ValueError(f"a {type(action_space).__name__} action space: SAC needs continuous (Box) "
                         "actions; pick an environment with a Box action space")
    check_vector_spaces(observation_space, action_space)


def actor_factory(config: SACConfig):
    """The callable ``(observation_space, action_space) -> MLPActor`` workers build the policy with."""
    return functools.partial(MLPActor, hidden_sizes=tuple(config.hidden_sizes))
