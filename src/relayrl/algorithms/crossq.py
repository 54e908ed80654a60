"""CrossQ (Bhatt et al., 2024, "CrossQ: Batch Normalization in Deep Reinforcement Learning for
Greater Sample Efficiency and Simplicity") as a variant of relayrl's SAC.

What changes against :mod:`relayrl.algorithms.sac`:

* **no target networks**: the bootstrap comes from the online critics themselves;
* **batch-normalised critics**: the critics' inputs and each hidden layer's activations (after the
  ReLU, as in the paper's code) are normalised over the batch (running statistics, updated at rate
  ``batch_norm_momentum``, for evaluation);
* **the joint forward pass**: current ``(s, a)`` and next ``(s', a' ~ pi(s'))`` pairs go through the
  critics as *one* batch of ``2B``, so the normalisation statistics mix both distributions (the
  point of the method: with separate passes, the next-state actions, which the policy chooses and
  the memory never saw, would be normalised with statistics they do not share); the next-state
  half of the output, detached, gives the target ``y = r + gamma (1 - terminated) (min_i Q_i(s', a')
  - alpha log pi(a'|s'))``;
* the actor's objective reads the critics in evaluation mode (running statistics);
* the paper's optimiser settings: Adam learning rates 1e-3 with ``beta1 = 0.5``, the actor trained
  every ``actor_update_interval = 3`` critic updates, one critic update per environment step.

Network widths: the paper's critics are 2 x 2048 units (with batch renormalisation); 2048-wide
critics cost about 16 times the updates/s of SAC's 256 on a CPU, so relayrl's default is 2 x 512
(``critic_hidden_sizes``), with plain batch normalisation; the actor keeps SAC's (256, 256) and no
normalisation. The update is serial (the critic and actor steps share the critics' running
statistics, so they do not run at the same time).
"""
from __future__ import annotations

import torch
from torch import nn

from .configs import CrossQConfig
from .networks import EnsembleCritic
from .sac import SACAgent, actor_factory, check_spaces, critic_regression_loss

__all__ = ["CrossQConfig", "CrossQAgent", "CrossQCritic", "actor_factory", "check_spaces"]


class CrossQCritic(nn.Module):
    """An :class:`EnsembleCritic` with batch normalisation, behind a batch normalisation of its
    inputs (the observation and action features, shared by the members)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes, n: int = 2, momentum: float = 0.01,
                 eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = float(momentum), float(eps)
        self.register_buffer("input_mean", torch.zeros(obs_dim + act_dim))
        self.register_buffer("input_var", torch.ones(obs_dim + act_dim))
        self.obs_dim = obs_dim
        self.ensemble = EnsembleCritic(obs_dim, act_dim, hidden_sizes, n=n, batch_norm=True,
                                       batch_norm_momentum=momentum, eps=eps, norm_after_activation=True)
        self.n = n

    def forward(self, obs: torch.Tensor, action: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        x = torch.cat((obs, action), dim=-1)
        if self.training:
            var, mean = torch.var_mean(x, dim=0, unbiased=False)
            with torch.no_grad():
                self.input_mean.lerp_(mean, self.momentum)
                self.input_var.lerp_(var, self.momentum)
        else:
            mean, var = self.input_mean, self.input_var
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return self.ensemble(x[:, :self.obs_dim], x[:, self.obs_dim:], detach_params=detach_params)


class CrossQAgent(SACAgent):
    """SAC without target networks, with batch-normalised critics and the joint forward pass."""

    config_class = CrossQConfig
    uses_target = False

    def make_critic(self, obs_dim: int, act_dim: int) -> CrossQCritic:
        return CrossQCritic(obs_dim, act_dim, self.config.critic_hidden_sizes, n=self.config.n_critics,
                            momentum=self.config.batch_norm_momentum)

    def train(self, batch) -> dict[str, float]:
        obs, act, rew, next_obs, terminated, _truncated = batch
        alpha = self._alpha()
        discounts = getattr(batch, "discounts", None)
        with torch.no_grad():
            next_action, next_logprob = self.actor(next_obs)
        size = obs.shape[0]
        q_both = self.critic(torch.cat((obs, next_obs)), torch.cat((self.unscale_action(act), next_action)))
        q = q_both[:, :size]
        with torch.no_grad():
            soft_value = q_both[:, size:].amin(dim=0) - alpha * next_logprob
            not_done = 1.0 - terminated.to(soft_value.dtype)
            not_done = not_done.mul_(self._gamma) if discounts is None else not_done.mul_(discounts)
            target = torch.addcmul(rew, not_done, soft_value)
        loss_critic = critic_regression_loss(q, target, batch)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss_critic.backward()
        self.critic_optimizer.step()

        if self.actor_step_due():
            self.critic.eval()  # the policy's objective reads the running statistics
            try:
                actor_losses = self._actor_update(obs, alpha)
            finally:
                self.critic.train()
        else:
            actor_losses = self._skipped_actor_losses()
        self._after_critic_step()
        return self._metrics(loss_critic, *actor_losses, alpha, q, target)
