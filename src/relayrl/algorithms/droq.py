"""DroQ (Hiraoka et al., 2022, "Dropout Q-Functions for Doubly Efficient Reinforcement Learning") as
a variant of relayrl's SAC.

What changes against :mod:`relayrl.algorithms.sac`: each critic (2, like SAC's) applies dropout
(``dropout``, 0.01 in the paper) and then layer normalisation in every hidden layer, before the
ReLU, in the online critics and in their targets alike (dropout is active when computing the
target too, as in the paper's code); the actor maximises the mean of the critics; and the update-
to-data ratio is high (20 in the paper, with the actor trained once per 20 critic updates): set the
trainer's ``max_training_steps_per_env_step`` and ``actor_update_interval`` to it, e.g. 5 on two
CPU cores (``relayrl train --algorithm droq --training.max_training_steps_per_env_step 5
--workers.env_steps_per_update 0.2 --droq.actor_update_interval 5``). Dropout gives the small
ensemble the variance reduction REDQ gets from ten critics, at a fifth of REDQ's cost per update.
"""
from __future__ import annotations

from .configs import DroQConfig
from .networks import EnsembleCritic
from .sac import SACAgent, actor_factory, check_spaces

__all__ = ["DroQConfig", "DroQAgent", "actor_factory", "check_spaces"]


class DroQAgent(SACAgent):
    """SAC with dropout + layer-norm critics and a mean-of-critics policy objective."""

    config_class = DroQConfig

    def make_critic(self, obs_dim: int, act_dim: int) -> EnsembleCritic:
        return EnsembleCritic(obs_dim, act_dim, self.config.hidden_sizes, n=self.config.n_critics,
                              dropout=self.config.dropout, layer_norm=True)

    def policy_q(self, q_pi):
        return q_pi.mean(dim=0)
