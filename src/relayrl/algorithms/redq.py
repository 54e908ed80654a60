"""REDQ (Chen et al., 2021, "Randomized Ensembled Double Q-Learning") as a variant of relayrl's SAC.

What changes against :mod:`relayrl.algorithms.sac` (everything else is SAC's update, including the
tuned entropy coefficient, n-step and prioritized-replay support and the two-thread update on the
steps that train the actor):

* an ensemble of ``n_critics`` critics (10 in the paper), all trained on the same target;
* the target's bootstrap is the minimum over a *random subset* of ``target_subset`` target critics
  (2 in the paper), drawn afresh at each update, computed for that subset only;
* the actor maximises the *mean* of the whole ensemble;
* a high update-to-data ratio ``G`` (20 in the paper): the trainer's
  ``max_training_steps_per_env_step = G``, with ``actor_update_interval = G`` so the actor is
  trained once per ``G`` critic updates, as in the paper's code. On two CPU cores, ``G = 5``
  (``relayrl train --algorithm redq --training.max_training_steps_per_env_step 5
  --workers.env_steps_per_update 0.2 --redq.actor_update_interval 5``).

tmrl's ``REDQSACAgent`` keywords map as: ``n`` -> ``n_critics``, ``m`` -> ``target_subset``,
``q_updates_per_policy_update`` -> ``actor_update_interval``; the rest keep their names.
"""
from __future__ import annotations

import torch

from .configs import REDQConfig
from .networks import EnsembleCritic
from .sac import SACAgent, actor_factory, check_spaces

__all__ = ["REDQConfig", "REDQAgent", "actor_factory", "check_spaces"]


class REDQAgent(SACAgent):
    """SAC with REDQ's ensemble, random target subsets and mean-of-ensemble policy objective."""

    config_class = REDQConfig

    def make_critic(self, obs_dim: int, act_dim: int) -> EnsembleCritic:
        return EnsembleCritic(obs_dim, act_dim, self.config.hidden_sizes, n=self.config.n_critics)

    def _target_q(self, next_obs: torch.Tensor, next_action: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        device = next_obs.device if generator is None else generator.device
        members = torch.randperm(self.config.n_critics, generator=generator, device=device)
        members = members[:self.config.target_subset].to(next_obs.device)
        return self.critic_target(next_obs, next_action, members=members).amin(dim=0)

    def policy_q(self, q_pi: torch.Tensor) -> torch.Tensor:
        return q_pi.mean(dim=0)
