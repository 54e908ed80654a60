"""REDQ, DroQ and CrossQ (the SAC variants of relayrl.algorithms): what each changes against SAC,
the shared contract (metrics, save/load, batch extras), and a short learning test on Pendulum."""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from relayrl.algorithms import get_algorithm
from relayrl.algorithms.configs import CrossQConfig, DroQConfig, REDQConfig, SACConfig
from relayrl.algorithms.sac import METRIC_KEYS
from relayrl.buffer import Buffer
from relayrl.memory import Batch, ReplayMemory

OBS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
ACT = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
VARIANTS = ("redq", "droq", "crossq")
SMALL = {"redq": {"hidden_sizes": (32, 32), "n_critics": 5, "target_subset": 2},
         "droq": {"hidden_sizes": (32, 32)},
         "crossq": {"hidden_sizes": (32, 32), "critic_hidden_sizes": (64, 64)}}


def make(name, **overrides):
    spec = get_algorithm(name)
    settings = spec.config(**{**SMALL.get(name, {}), "parallel_update": False, **overrides})
    return spec.agent_class()(OBS, ACT, device="cpu", config=settings)


def fixed_batch(size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(size, 3, generator=g) * 2 - 1
    act = torch.rand(size, 1, generator=g) * 4 - 2
    rew = torch.randn(size, generator=g)
    next_obs = torch.rand(size, 3, generator=g) * 2 - 1
    terminated = (torch.rand(size, generator=g) < 0.1).float()
    truncated = torch.zeros(size)
    return Batch(obs, act, rew, next_obs, terminated, truncated)


class ExtrasBatch(tuple):
    """A batch carrying replay extras (the attributes prioritized / n-step memories add)."""

    def __new__(cls, batch, weights=None, discounts=None):
        self = super().__new__(cls, batch)
        self.weights, self.discounts, self.reported = weights, discounts, None
        return self

    def report_td_errors(self, errors):
        self.reported = errors


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
def test_registry_has_each_variant_with_its_settings_and_paper_defaults():
    for name, config in (("redq", REDQConfig), ("droq", DroQConfig), ("crossq", CrossQConfig)):
        spec = get_algorithm(name)
        assert spec.config is config and issubclass(config, SACConfig)
        assert spec.summary
    assert (REDQConfig().n_critics, REDQConfig().target_subset) == (10, 2)
    assert DroQConfig().dropout == 0.01
    crossq = CrossQConfig()
    assert crossq.betas == (0.5, 0.999) and crossq.actor_update_interval == 3
    assert crossq.lr_critic == 1e-3 and crossq.lr_actor == 1e-3


@pytest.mark.parametrize("config, field, value", [
    (REDQConfig, "n_critics", 1), (REDQConfig, "target_subset", 0), (REDQConfig, "target_subset", 11),
    (DroQConfig, "dropout", 1.0), (DroQConfig, "dropout", -0.1), (DroQConfig, "n_critics", 0),
    (CrossQConfig, "batch_norm_momentum", 0.0), (CrossQConfig, "critic_hidden_sizes", ()),
    (CrossQConfig, "parallel_update", True), (SACConfig, "actor_update_interval", 0),
])
def test_bad_settings_name_the_field_and_the_fix(config, field, value):
    with pytest.raises(ValueError, match=field):
        config(**{field: value})


# ------------------------------------------------------------------------------------------------
# what each variant changes
# ------------------------------------------------------------------------------------------------
def test_redq_bootstraps_from_a_random_subset_and_the_actor_reads_the_ensemble_mean():
    agent = make("redq")
    assert agent.critic.n == 5
    batch = fixed_batch()
    obs, _, _, next_obs, _, _ = batch
    with torch.no_grad():
        next_action, _ = agent.actor(next_obs, test=True)
        every = agent.critic_target(next_obs, next_action)
        torch.manual_seed(3)
        subset_q = agent._target_q(next_obs, next_action)
        torch.manual_seed(3)
        members = torch.randperm(5)[:2]
    assert torch.allclose(subset_q, every[members].amin(dim=0), atol=1e-6)
    # different subsets are drawn at different updates
    draws = {tuple(sorted(torch.randperm(5)[:2].tolist())) for _ in range(20)}
    assert len(draws) > 1
    q = torch.randn(5, 7)
    assert torch.allclose(agent.policy_q(q), q.mean(dim=0))


def test_droq_critics_use_dropout_and_layer_norm_and_their_targets_too():
    agent = make("droq")
    for critic in (agent.critic, agent.critic_target):
        assert critic.dropout == 0.01 and critic.layer_norm and not critic.batch_norm
    obs, act, *_ = fixed_batch()
    a = agent.critic(obs, agent.unscale_action(act))
    b = agent.critic(obs, agent.unscale_action(act))
    assert not torch.equal(a, b)  # dropout is active while training
    agent.critic.eval()
    assert torch.equal(agent.critic(obs, agent.unscale_action(act)), agent.critic(obs, agent.unscale_action(act)))


def test_crossq_has_no_target_networks_and_normalises_current_and_next_pairs_jointly(monkeypatch):
    agent = make("crossq")
    assert agent.critic_target is None and not agent.parallel_update
    seen = []
    original = type(agent.critic).forward

    def spy(self, obs, action, detach_params=False):
        seen.append((obs.shape[0], self.training))
        return original(self, obs, action, detach_params)

    monkeypatch.setattr(type(agent.critic), "forward", spy)
    batch = fixed_batch(size=32)
    agent.train(batch)  # update 1: critic only (actor every 3)
    agent.train(batch)
    agent.train(batch)  # update 3: critic, then the actor through the critics in eval mode
    assert seen[0] == (64, True)          # one joint pass of 2B in training mode
    assert seen[-1] == (32, False)        # the actor's objective: running statistics
    assert agent.critic.training          # back to training mode after the actor step


def test_crossq_target_is_the_detached_next_half_of_the_joint_pass():
    import copy

    agent = make("crossq", learn_entropy_coef=False, alpha=0.1)
    initial = copy.deepcopy(agent.state_dict())
    batch = fixed_batch(size=16)
    obs, act, rew, next_obs, terminated, _ = batch
    torch.manual_seed(5)
    metrics = agent.train(batch)
    twin = make("crossq", learn_entropy_coef=False, alpha=0.1)
    twin.load_state_dict(initial)
    torch.manual_seed(5)
    with torch.no_grad():
        next_action, next_logprob = twin.actor(next_obs)
        q_both = twin.critic(torch.cat((obs, next_obs)), torch.cat((twin.unscale_action(act), next_action)))
        expected = rew + 0.99 * (1 - terminated) * (q_both[:, 16:].amin(dim=0) - 0.1 * next_logprob)
    assert math.isclose(metrics["q_target_mean"], float(expected.mean()), rel_tol=1e-4, abs_tol=1e-5)


# ------------------------------------------------------------------------------------------------
# the shared contract
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", VARIANTS)
def test_train_returns_sac_metrics_and_the_critic_loss_falls_on_a_fixed_batch(name):
    """With gamma = 0 the critics regress the rewards: their loss must fall (with bootstrapping, a
    fixed batch's targets move with the critics, and CrossQ's have no slow target to hold them)."""
    torch.manual_seed(0)
    agent = make(name, lr_critic=3e-3, gamma=0.0)
    batch = fixed_batch()
    losses = []
    for _ in range(150):
        metrics = agent.train(batch)
        assert set(metrics) == set(METRIC_KEYS)
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
        losses.append(metrics["loss_critic"])
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


@pytest.mark.parametrize("name", VARIANTS)
def test_actor_is_trained_every_actor_update_interval_updates(name):
    agent = make(name, actor_update_interval=3)
    batch = fixed_batch()
    before = [p.detach().clone() for p in agent.actor.parameters()]
    changed = []
    for _ in range(6):
        agent.train(batch)
        now = [p.detach().clone() for p in agent.actor.parameters()]
        changed.append(any(not torch.equal(a, b) for a, b in zip(before, now)))
        before = now
    assert changed == [False, False, True, False, False, True]


@pytest.mark.parametrize("name", VARIANTS)
def test_save_load_round_trip_continues_identically(name, tmp_path):
    from relayrl.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(1)
    agent = make(name)
    batch = fixed_batch()
    for _ in range(4):
        agent.train(batch)
    path = save_checkpoint(tmp_path, "ckpt", {"agent": agent.state_dict()})
    copy = make(name)
    copy.load_state_dict(load_checkpoint(path)["agent"])
    torch.manual_seed(7)
    a = agent.train(batch)
    torch.manual_seed(7)
    b = copy.train(batch)
    assert a == b
    for p, q in zip(agent.state_dict()["critic"].values(), copy.state_dict()["critic"].values()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ("sac", *VARIANTS))
def test_importance_weights_discounts_and_td_errors_are_honoured(name):
    import copy

    torch.manual_seed(2)
    agent = make(name, actor_update_interval=2)  # the first update trains the critics only
    initial = copy.deepcopy(agent.state_dict())
    base = fixed_batch(size=16)

    def first_update(**extras):
        twin = make(name, actor_update_interval=2)
        twin.load_state_dict(initial)
        batch = ExtrasBatch(base, **extras)
        torch.manual_seed(4)
        metrics = twin.train(batch)
        return twin, batch, metrics

    _, plain_batch, plain = first_update()
    assert plain_batch.reported is not None and plain_batch.reported.shape == (16,)
    assert torch.all(plain_batch.reported >= 0)
    _, _, ones = first_update(weights=torch.ones(16))
    assert ones["loss_critic"] == pytest.approx(plain["loss_critic"], rel=1e-5)
    _, _, halved = first_update(discounts=torch.full((16,), 0.5))
    assert halved["q_target_mean"] != pytest.approx(plain["q_target_mean"], abs=1e-6)
    twin, _, zero = first_update(weights=torch.zeros(16))
    assert zero["loss_critic"] == 0.0
    for key, value in twin.critic.named_parameters():  # no weight, no step
        assert torch.equal(value, initial["critic"][key]), key


@pytest.mark.parametrize("name", VARIANTS)
def test_end_to_end_relayrl_train_with_the_variant(name, tmp_path):
    from relayrl.config import RunConfig, with_overrides
    from relayrl.roles.local_run import run_local

    cfg = with_overrides(RunConfig(), algorithm=name)
    small = {f"{name}.{k}": v for k, v in SMALL[name].items()}
    cfg = with_overrides(cfg, **{"run_dir": str(tmp_path / "run"), "training.epochs": 1, "training.rounds": 2,
                                 "training.steps": 30, "training.start_training": 64,
                                 "memory.batch_size": 32, "workers.count": 1,
                                 "workers.random_steps": 64, **small})
    rows = run_local(cfg, progress=False, print_tables=False)
    assert len(rows) == 2 and rows[-1]["total_updates"] == 60
    assert (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------------------------------------
# learning
# ------------------------------------------------------------------------------------------------
def evaluate(env, actor, episodes=3):
    returns = []
    for _ in range(episodes):
        obs, _ = env.reset()
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(actor.act(obs, test=True))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


@pytest.mark.parametrize("name", VARIANTS)
def test_short_learning_run_on_pendulum(name):
    """5,000 steps of Pendulum-v1 (1,000 random, then one update per step), synchronous: the
    deterministic policy must beat a random one (about -1,200) by far. One torch thread: on a
    loaded machine, torch's spin-waiting threads make a small update many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        returns = _learn_pendulum(name, steps=5000)
    finally:
        torch.set_num_threads(threads)
    assert returns > -700


def _learn_pendulum(name, steps, **overrides):
    torch.manual_seed(0)
    env, eval_env = gym.make("Pendulum-v1"), gym.make("Pendulum-v1")
    env.action_space.seed(0)
    eval_env.reset(seed=100)
    spec = get_algorithm(name)
    settings = spec.config(**{**SMALL.get(name, {}), "hidden_sizes": (64, 64), "parallel_update": False,
                              "lr_actor": 1e-3, "lr_critic": 1e-3, "lr_entropy": 1e-3,
                              **({"critic_hidden_sizes": (128, 128)} if name == "crossq" else {}),
                              **overrides})
    agent = spec.agent_class()(env.observation_space, env.action_space, config=settings)
    memory = ReplayMemory(nb_steps=1, batch_size=128, capacity=10_000, seed=0)
    obs, _ = env.reset(seed=0)
    for step in range(steps):
        action = env.action_space.sample() if step < 1000 else agent.get_actor().act(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        memory.append(Buffer(obs=np.asarray([obs], np.float32), act=np.asarray([action], np.float32),
                             rew=np.asarray([reward], np.float32), next_obs=np.asarray([next_obs], np.float32),
                             terminated=np.asarray([terminated]), truncated=np.asarray([truncated])))
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
        if step >= 1000:
            agent.train(memory.sample())
    return evaluate(eval_env, agent.get_actor())
