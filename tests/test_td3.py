"""Tests of the TD3 training agent (relayrl.algorithms.td3) and its registry entry."""
from __future__ import annotations

import copy
import functools
import io
import json
import math
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from gymnasium import spaces

from relayrl.algorithms import REGISTRY, DeterministicActor, SACAgent, TD3Agent, TD3Config
from relayrl.algorithms.td3 import METRIC_KEYS, actor_factory, check_spaces, first_critic_q
from relayrl.training import TrainingAgent

SMALL = (32, 32)
OBS_SPACE = spaces.Box(low=np.array([-1.0, -1.0, -8.0], np.float32),
                       high=np.array([1.0, 1.0, 8.0], np.float32), dtype=np.float32)  # Pendulum
ACT_SPACE = spaces.Box(low=-2.0, high=2.0, shape=(1,), dtype=np.float32)
# asymmetric bounds, to catch rescaling mistakes
ASYM_ACT_SPACE = spaces.Box(low=np.array([-1.0, 0.0], np.float32),
                            high=np.array([3.0, 0.5], np.float32), dtype=np.float32)
MODES = pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny networks: a second intra-op thread only adds synchronisation (see test_sac.py)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_agent(parallel: bool = False, action_space=ACT_SPACE, **overrides) -> TD3Agent:
    overrides.setdefault("hidden_sizes", SMALL)
    return TD3Agent(OBS_SPACE, action_space, device="cpu", parallel_update=parallel, **overrides)


def make_batch(action_space=ACT_SPACE, n: int = 64, seed: int = 0, terminated=None, truncated=None):
    g = torch.Generator().manual_seed(seed)
    low, high = torch.as_tensor(action_space.low), torch.as_tensor(action_space.high)
    obs = torch.randn(n, 3, generator=g)
    act = low + (high - low) * torch.rand(n, low.shape[0], generator=g)
    rew = torch.randn(n, generator=g)
    next_obs = torch.randn(n, 3, generator=g)
    term = (torch.rand(n, generator=g) < 0.1).float() if terminated is None else terminated
    trunc = torch.zeros(n) if truncated is None else truncated
    return obs, act, rew, next_obs, term, trunc


class ExtrasBatch(tuple):
    """A batch with the optional attributes of n-step and prioritized replay."""

    def __new__(cls, fields, discounts=None, weights=None, report_td_errors=None):
        batch = super().__new__(cls, fields)
        batch.discounts, batch.weights, batch.report_td_errors = discounts, weights, report_td_errors
        return batch


def clone(agent: TD3Agent, parallel: bool = False, **overrides) -> TD3Agent:
    """A second agent in the same state (agents with a live helper thread cannot be deep-copied)."""
    twin = make_agent(parallel, **{"hidden_sizes": agent.config.hidden_sizes,
                                   "policy_delay": agent.config.policy_delay, **overrides})
    twin.load_state_dict(copy.deepcopy(agent.state_dict()))
    return twin


def generator_copy(agent: TD3Agent) -> torch.Generator:
    g = torch.Generator()
    g.set_state(agent._generator.get_state())
    return g


def networks(agent: TD3Agent) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.detach().clone() for k, v in getattr(agent, name).state_dict().items()}
            for name in ("actor", "actor_target", "critic", "critic_target")}


def assert_same_networks(a: TD3Agent, b: TD3Agent) -> None:
    for name, own in networks(a).items():
        other = getattr(b, name).state_dict()
        assert own.keys() == other.keys()
        for key in own:
            assert torch.equal(own[key], other[key]), (name, key)


def hand_q(critic, member: int, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """One critic member as a plain MLP written out from its weights."""
    h = torch.cat((obs, action), dim=-1)
    layers = list(zip(critic.weights, critic.biases))
    for w, b in layers[:-1]:
        h = torch.relu(h @ w[member] + b[member])
    w, b = layers[-1]
    return (h @ w[member] + b[member])[:, 0]


def hand_actor(actor, obs: torch.Tensor) -> torch.Tensor:
    h = obs
    layers = list(zip(actor.kernels, actor.biases))
    for w, b in layers[:-1]:
        h = torch.relu(h @ w + b)
    w, b = layers[-1]
    return torch.tanh(h @ w + b)


# --- settings ------------------------------------------------------------------------------------
def test_config_defaults():
    c = TD3Config()
    assert (c.gamma, c.polyak, c.lr_actor, c.lr_critic, c.betas, c.weight_decay) == \
        (0.99, 0.995, 3e-4, 3e-4, (0.9, 0.999), 0.0)
    assert (c.hidden_sizes, c.policy_delay, c.target_noise, c.target_noise_clip, c.exploration_noise) == \
        ((256, 256), 2, 0.2, 0.5, 0.1)
    assert c.parallel_update is None and c.tune_allocator is True
    normalised = TD3Config(hidden_sizes=[np.int64(64)], policy_delay=np.int32(3), gamma=np.float32(0.5),
                           parallel_update=np.bool_(True), betas=[0.5, 0.6])
    assert normalised.hidden_sizes == (64,) and type(normalised.policy_delay) is int
    assert type(normalised.gamma) is float and normalised.parallel_update is True
    assert normalised.betas == (0.5, 0.6) and TD3Config(hidden_sizes=16).hidden_sizes == (16,)


@pytest.mark.parametrize("field, value, fix", [
    ("gamma", 1.5, "in [0, 1]"), ("polyak", -0.1, "in [0, 1]"), ("gamma", True, "in [0, 1]"),
    ("lr_actor", 0.0, "> 0"), ("lr_critic", float("nan"), "> 0"), ("lr_critic", "1e-3", "> 0"),
    ("betas", (0.9,), "two numbers"), ("betas", (0.9, 1.0), "two numbers"), ("betas", "ab", "two numbers"),
    ("weight_decay", -1.0, ">= 0"), ("hidden_sizes", (), "positive integers"),
    ("hidden_sizes", (64, 0), "positive integers"), ("hidden_sizes", (64.0,), "positive integers"),
    ("policy_delay", 0, "integer >= 1"), ("policy_delay", 1.5, "integer >= 1"),
    ("policy_delay", True, "integer >= 1"), ("target_noise", -0.1, ">= 0"),
    ("target_noise_clip", float("inf"), ">= 0"), ("exploration_noise", -1.0, ">= 0"),
    ("exploration_noise", None, ">= 0"), ("parallel_update", "yes", "True, False or None"),
    ("tune_allocator", None, "True or False"),
])
def test_config_validation_names_the_field_and_the_fix(field, value, fix):
    with pytest.raises(ValueError, match=rf"TD3Config\.{field}=.* is invalid: use .*") as info:
        TD3Config(**{field: value})
    assert fix in str(info.value)


def test_settings_and_registry_entry_need_no_torch():
    code = ("import sys; from relayrl.config import RunConfig; c = RunConfig(algorithm='td3'); "
            "assert type(c.agent).__name__ == 'TD3Config', c.agent; "
            "assert c.agent.lr_actor == 1e-3 and c.agent.policy_delay == 2; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
    spec = REGISTRY["td3"]
    assert spec.agent_class() is TD3Agent and spec.config is TD3Config and spec.summary
    factory = spec.make_actor_factory(spec.settings({"hidden_sizes": SMALL, "exploration_noise": 0.3}))
    actor = factory(OBS_SPACE, ACT_SPACE)
    assert isinstance(actor, DeterministicActor) and actor.exploration_noise == 0.3
    assert [tuple(k.shape) for k in actor.kernels] == [(3, 32), (32, 32), (32, 1)]


# --- construction --------------------------------------------------------------------------------
def test_construction_from_pendulum_spaces():
    gym = pytest.importorskip("gymnasium")
    env = gym.make("Pendulum-v1")
    try:
        agent = TD3Agent(observation_space=env.observation_space, action_space=env.action_space)
    finally:
        env.close()
    assert isinstance(agent, TrainingAgent) and agent.config.hidden_sizes == (256, 256)
    assert isinstance(agent.get_actor(), DeterministicActor) and agent.get_actor() is agent.actor
    assert agent.critic(torch.zeros(5, 3), torch.zeros(5, 1)).shape == (2, 5)
    assert not torch.equal(agent.critic.weights[0][0], agent.critic.weights[0][1])
    for online, target in ((agent.actor, agent.actor_target), (agent.critic, agent.critic_target)):
        assert online is not target
        for p, t in zip(online.parameters(), target.parameters()):
            assert torch.equal(p, t) and p.requires_grad and not t.requires_grad
    agent.close()


def test_config_overrides_partial_and_optimizer_settings():
    agent = make_agent(lr_actor=1e-3, lr_critic=2e-3, betas=(0.5, 0.75), weight_decay=1e-4)
    for optimizer, lr, module in ((agent.actor_optimizer, 1e-3, agent.actor),
                                  (agent.critic_optimizer, 2e-3, agent.critic)):
        group = optimizer.param_groups[0]
        assert (group["lr"], tuple(group["betas"]), group["weight_decay"]) == (lr, (0.5, 0.75), 1e-4)
        assert {id(p) for p in group["params"]} == {id(p) for p in module.parameters()}
    factory = functools.partial(TD3Agent, config=TD3Config(gamma=0.9, hidden_sizes=SMALL))
    assert factory(observation_space=OBS_SPACE, action_space=ACT_SPACE).config.gamma == 0.9
    agent = TD3Agent(OBS_SPACE, ACT_SPACE, config=TD3Config(hidden_sizes=SMALL), policy_delay=3)
    assert agent.config.policy_delay == 3 and agent.config.hidden_sizes == SMALL
    with pytest.raises(TypeError, match="unknown TD3Config field"):
        TD3Agent(OBS_SPACE, ACT_SPACE, config=TD3Config(hidden_sizes=SMALL), tau=0.005)
    with pytest.raises(TypeError, match="config must be a TD3Config"):
        TD3Agent(OBS_SPACE, ACT_SPACE, config={"gamma": 0.9})


@pytest.mark.parametrize("obs_space, act_space, error, match", [
    (OBS_SPACE, spaces.Discrete(3), TypeError, "TD3 needs a continuous gymnasium.spaces.Box action"),
    (OBS_SPACE, spaces.Box(-np.inf, np.inf, shape=(2,)), ValueError, "finite"),
    (spaces.Box(-1.0, 1.0, shape=(4, 4)), ACT_SPACE, ValueError, "TD3 needs vector observations"),
    (spaces.Dict({"x": OBS_SPACE}), ACT_SPACE, TypeError, "TD3 needs vector observations"),
])
def test_spaces_td3_cannot_handle_are_refused(obs_space, act_space, error, match):
    with pytest.raises(error, match=match):
        TD3Agent(obs_space, act_space, hidden_sizes=SMALL)
    with pytest.raises((TypeError, ValueError), match="TD3 (needs|squashes)"):
        check_spaces(obs_space, act_space)
    check_spaces(OBS_SPACE, ASYM_ACT_SPACE)


# --- the actor -----------------------------------------------------------------------------------
def test_actor_acts_within_bounds_deterministically_in_test_mode():
    torch.manual_seed(0)
    actor = DeterministicActor(OBS_SPACE, ASYM_ACT_SPACE, SMALL, exploration_noise=0.1)
    obs = np.array([0.1, -0.2, 3.0], np.float64)  # any dtype; a list works too
    expected = actor.scale_action(hand_actor(actor, torch.tensor(obs, dtype=torch.float32)[None]))[0]
    np.testing.assert_allclose(actor.act(obs, test=True), expected.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(actor.act(obs, test=True), actor.act(obs.tolist(), test=True))
    x = torch.tensor(obs, dtype=torch.float32)
    single = actor(x)  # one unbatched observation
    assert single.shape == (2,) and torch.allclose(single, actor(x[None])[0])
    noisy = np.stack([actor.act(obs) for _ in range(400)])
    assert noisy.dtype == np.float32 and all(ASYM_ACT_SPACE.contains(a) for a in noisy)
    # the noise is N(0, 0.1) in [-1, 1] units: half-ranges are 2 and 0.25 here
    spread = (noisy - actor.act(obs, test=True)) / (actor.action_scale.numpy())
    np.testing.assert_allclose(spread.std(axis=0), [0.1, 0.1], rtol=0.2)
    with torch.no_grad():  # push the policy to its bounds: the noisy actions are clipped into them
        actor.biases[-1] += torch.tensor([50.0, -50.0])
    pushed = np.stack([actor.act(obs) for _ in range(50)])
    assert all(ASYM_ACT_SPACE.contains(a) for a in pushed)
    assert (pushed[:, 0] == 3.0).mean() > 0.3 and (pushed[:, 1] == 0.0).mean() > 0.3
    quiet = DeterministicActor(OBS_SPACE, ASYM_ACT_SPACE, SMALL, exploration_noise=0.0)
    np.testing.assert_array_equal(quiet.act(obs), quiet.act(obs, test=True))
    with pytest.raises(ValueError, match="exploration_noise"):
        DeterministicActor(OBS_SPACE, ACT_SPACE, SMALL, exploration_noise=-0.1)


def test_actor_weights_round_trip_and_factory():
    torch.manual_seed(0)
    actor = actor_factory(TD3Config(hidden_sizes=SMALL, exploration_noise=0.2))(OBS_SPACE, ACT_SPACE)
    other = DeterministicActor(OBS_SPACE, ACT_SPACE, SMALL)
    obs = np.array([0.3, 0.4, -2.0], np.float32)
    assert not np.array_equal(actor.act(obs, test=True), other.act(obs, test=True))
    weights = actor.weights()
    assert not any("action_" in name for name in weights)  # derived from the space, not shipped
    other.load_weights(weights)
    np.testing.assert_array_equal(actor.act(obs, test=True), other.act(obs, test=True))


def test_first_critic_q_is_member_zero_with_gradients_to_the_action_only():
    torch.manual_seed(0)
    agent = make_agent()
    obs, act = torch.randn(16, 3), torch.rand(16, 1) * 2 - 1
    act.requires_grad_(True)
    q1 = first_critic_q(agent.critic, obs, act)
    torch.testing.assert_close(q1, agent.critic(obs, act)[0])
    torch.testing.assert_close(q1, hand_q(agent.critic, 0, obs, act))
    q1.sum().backward()
    assert act.grad is not None and all(p.grad is None for p in agent.critic.parameters())


# --- the update ----------------------------------------------------------------------------------
@MODES
def test_train_returns_the_documented_floats_every_call(parallel):
    agent = make_agent(parallel, policy_delay=2)
    for seed in range(3):
        stats = agent.train(make_batch(seed=seed))
        assert list(stats) == list(METRIC_KEYS)
        assert all(type(v) is float and math.isfinite(v) for v in stats.values()), stats
    assert agent.updates == 3
    agent.close()


def test_target_matches_a_hand_computation():
    """y = r + discount * (1 - terminated) * min_i Q'_i(s', clip(pi'(s') + clip(0.2 eps, +-0.5), +-1)),
    with termination stopping the bootstrap, truncation not, and discounts replacing gamma."""
    torch.manual_seed(0)
    settings = dict(gamma=0.9, target_noise=0.2, target_noise_clip=0.5, policy_delay=1, polyak=0.5)
    agent = make_agent(**settings)
    for seed in range(3):  # make the target networks differ from the online ones
        agent.train(make_batch(seed=seed))
    assert not torch.equal(agent.actor_target.kernels[0], agent.actor.kernels[0])
    with torch.no_grad():  # pi'(s') near 1: the smoothed actions must be clipped back into [-1, 1]
        agent.actor_target.biases[-1] += 3.0
    n = 6
    obs, act, rew, next_obs, _, _ = make_batch(n=n, seed=7)
    terminated = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    truncated = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    eps = torch.tensor([[0.3], [-1.0], [4.0], [-6.0], [0.0], [2.0]])  # 4, -6: beyond the clip
    discounts = torch.tensor([0.5, 0.9, 0.81, 0.0, 0.7, 1.0])

    expected, expected_n_step = [], []
    with torch.no_grad():
        for i in range(n):
            s = next_obs[i:i + 1]
            smoothing = min(max(0.2 * float(eps[i, 0]), -0.5), 0.5)
            a = torch.clamp(hand_actor(agent.actor_target, s) + smoothing, -1.0, 1.0)
            q_min = min(float(hand_q(agent.critic_target, m, s, a)) for m in (0, 1))
            alive = 1.0 - float(terminated[i])
            expected.append(float(rew[i]) + 0.9 * alive * q_min)
            expected_n_step.append(float(rew[i]) + float(discounts[i]) * alive * q_min)
    y = agent.compute_target(rew, next_obs, terminated, noise=eps)
    torch.testing.assert_close(y, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(agent.compute_target(rew, next_obs, terminated, discounts, eps),
                               torch.tensor(expected_n_step), rtol=1e-5, atol=1e-5)
    assert float(y[1]) == float(rew[1]) and float(y[4]) == float(rew[4])  # terminated: no bootstrap
    assert float(y[0]) != pytest.approx(float(rew[0]))  # truncated: bootstraps
    assert float(hand_actor(agent.actor_target, next_obs[2:3])) + 0.5 > 1.0  # the clip matters

    # train() draws eps from the agent's generator, reads discounts from the batch, ignores truncation
    g = generator_copy(agent)
    eps_drawn = torch.randn(n, 1, generator=g)
    y_drawn = agent.compute_target(rew, next_obs, terminated, discounts, eps_drawn)
    twin = clone(agent, **settings)
    stats = agent.train(ExtrasBatch((obs, act, rew, next_obs, terminated, truncated), discounts=discounts))
    assert stats["q_target_mean"] == pytest.approx(float(y_drawn.mean()), rel=1e-6)
    stats_untruncated = twin.train(ExtrasBatch((obs, act, rew, next_obs, terminated, torch.zeros(n)),
                                               discounts=discounts))
    assert stats == stats_untruncated


def test_actions_are_rescaled_from_env_units():
    agent = make_agent(action_space=ASYM_ACT_SPACE)
    env_actions = torch.tensor([[-1.0, 0.0], [3.0, 0.5], [1.0, 0.25]])
    squashed = agent.unscale_action(env_actions)
    torch.testing.assert_close(squashed, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(agent.actor.scale_action(squashed), env_actions)


@MODES
def test_critic_loss_decreases_on_a_fixed_batch(parallel):
    torch.manual_seed(0)
    agent = make_agent(parallel, lr_critic=3e-3)
    batch = make_batch(n=32, seed=3)
    losses = [agent.train(batch)["loss_critic"] for _ in range(150)]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    agent.close()


@MODES
def test_actor_and_targets_change_only_every_policy_delay_updates(parallel):
    torch.manual_seed(0)
    agent = make_agent(parallel, policy_delay=3)
    before = networks(agent)
    reported = []
    for k in range(1, 8):
        stats = agent.train(make_batch(seed=k))
        reported.append(stats["loss_actor"])
        after = networks(agent)
        for name in before:
            changed = any(not torch.equal(before[name][key], after[name][key]) for key in before[name])
            assert changed == (name == "critic" or k % 3 == 0), (k, name)
        before = after
    assert agent.updates == 7
    # loss_actor: evaluated once before the first actor update, then the latest actor update's
    assert reported[0] == reported[1] and reported[2] != reported[1]
    assert reported[2] == reported[3] == reported[4] and reported[5] == reported[6] != reported[4]
    agent.close()


def test_loss_actor_is_the_actor_step_loss():
    torch.manual_seed(0)
    agent = make_agent(policy_delay=1)
    batch = make_batch(seed=4)
    twin = clone(agent)
    stats = agent.train(batch)
    # serial order: the critic step first, then -mean Q_1(s, pi(s)) against the updated critics
    target = twin.compute_target(batch[2], batch[3], batch[4])
    twin._critic_backward(batch[0], twin.unscale_action(batch[1]), target, None)
    twin.critic_optimizer.step()
    with torch.no_grad():
        expected = -hand_q(twin.critic, 0, batch[0], hand_actor(twin.actor, batch[0])).mean()
    assert stats["loss_actor"] == pytest.approx(float(expected), rel=1e-5)


@MODES
def test_targets_follow_the_polyak_rule(parallel):
    agent = make_agent(parallel, polyak=0.9, policy_delay=1)
    agent.train(make_batch(seed=1))  # make the targets differ from the online networks first
    before = networks(agent)
    agent.train(make_batch(seed=2))
    after = networks(agent)
    moved = False
    for online, target in (("actor", "actor_target"), ("critic", "critic_target")):
        for key in before[target]:
            torch.testing.assert_close(after[target][key],
                                       0.9 * before[target][key] + 0.1 * after[online][key],
                                       rtol=0, atol=1e-6)
            moved |= not torch.equal(after[target][key], before[target][key])
    assert moved
    agent.close()


@MODES
def test_importance_weights_and_td_error_reports_are_honoured(parallel):
    torch.manual_seed(0)
    agent = make_agent(parallel, policy_delay=1, target_noise=0.0)  # no noise: targets repeat exactly
    agent.train(make_batch(seed=1))
    obs, act, rew, next_obs, term, trunc = make_batch(n=4, seed=2)
    weights = torch.tensor([2.0, 0.0, 1.0, 1.0])
    twin, unweighted = clone(agent, parallel, target_noise=0.0), clone(agent, parallel, target_noise=0.0)

    with torch.no_grad():
        y = agent.compute_target(rew, next_obs, term)
        q = agent.critic(obs, agent.unscale_action(act))
    calls = []

    def report(td):
        calls.append((td, threading.get_ident()))

    stats = agent.train(ExtrasBatch((obs, act, rew, next_obs, term, trunc), weights=weights,
                                    report_td_errors=report))
    expected_loss = (weights * (q - y).square().sum(dim=0)).mean()
    assert stats["loss_critic"] == pytest.approx(float(expected_loss), rel=1e-5)
    assert len(calls) == 1 and calls[0][1] == threading.get_ident()  # on the caller's thread
    td = calls[0][0]
    assert td.shape == (4,) and not td.requires_grad
    torch.testing.assert_close(td, (y - q.mean(dim=0)).abs())
    assert stats["td_error_mean"] == pytest.approx(float(td.mean()), rel=1e-6)

    # weights (2, 0, 1, 1) move the critics like the batch (s0, s0, s2, s3) without weights
    rows = torch.tensor([0, 0, 2, 3])
    twin.train(tuple(t[rows] for t in (obs, act, rew, next_obs, term, trunc)))
    for a, b in zip(agent.critic.parameters(), twin.critic.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    unweighted.train((obs, act, rew, next_obs, term, trunc))  # and unlike the batch as it is
    assert not torch.allclose(agent.critic.weights[0], unweighted.critic.weights[0], rtol=1e-5, atol=1e-6)

    # a batch whose hook is not callable, or without the attributes, trains as usual
    agent.train(ExtrasBatch(make_batch(seed=3), report_td_errors=None))
    before = networks(agent)
    with pytest.raises(ValueError, match="one value per transition"):  # refused before any step
        agent.train(ExtrasBatch(make_batch(n=4, seed=3), weights=torch.ones(4, 2)))
    assert all(torch.equal(before[name][k], v) for name in before
               for k, v in getattr(agent, name).state_dict().items())
    for agent_ in (agent, twin, unweighted):
        agent_.close()


def test_replay_batches_of_the_memory_get_their_td_errors():
    """With relayrl.memory's batch class (when this version has it), the errors land on the batch."""
    import relayrl.memory as memory

    replay_batch = getattr(memory, "ReplayBatch", None)
    if replay_batch is None:
        pytest.skip("this relayrl.memory has no ReplayBatch")
    agent = make_agent()
    batch = replay_batch.of(make_batch(n=8), weights=torch.ones(8), discounts=torch.full((8,), 0.9))
    stats = agent.train(batch)
    assert batch.td_errors.shape == (8,)
    assert float(batch.td_errors.mean()) == pytest.approx(stats["td_error_mean"], rel=1e-6)


# --- state ---------------------------------------------------------------------------------------
@MODES
def test_state_dict_round_trip_continues_identically(parallel, tmp_path):
    """Agents loaded from the state (through torch's weights-only loader, and through a relayrl
    checkpoint) continue with exactly the updates the original makes: networks, optimisers,
    counters, the last actor loss and the target-noise generator are all restored."""
    from relayrl.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    agent = make_agent(parallel, policy_delay=2)
    for seed in range(3):
        agent.train(make_batch(seed=seed))
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    checkpoint = save_checkpoint(tmp_path, "epoch-000001", {"agent": agent.state_dict()})
    states = [torch.load(buffer, weights_only=True),  # plain values only: no unpickling code needed
              load_checkpoint(checkpoint)["agent"]]
    assert states[0]["updates"] == 3 and isinstance(states[0]["loss_actor"], float)
    torch.manual_seed(123)  # differently initialised fresh agents, and another global RNG state
    copies = [make_agent(parallel, policy_delay=2) for _ in states]
    for fresh, state in zip(copies, states):
        fresh.load_state_dict(state)
        assert fresh.updates == 3
        assert_same_networks(agent, fresh)
    for seed in range(10, 14):  # actor and non-actor steps; target noise from the restored generator
        batch = make_batch(seed=seed)
        expected = agent.train(batch)
        assert [fresh.train(batch) for fresh in copies] == [expected, expected]
    for fresh in copies:
        assert_same_networks(agent, fresh)
        for name in ("actor_optimizer", "critic_optimizer"):
            own = getattr(agent, name).state_dict()["state"]
            other = getattr(fresh, name).state_dict()["state"]
            assert all(torch.equal(torch.as_tensor(own[i][k]), torch.as_tensor(other[i][k]))
                       for i in own for k in own[i])
        fresh.close()
    agent.close()


def test_load_state_dict_refuses_foreign_state():
    agent = make_agent()
    before = networks(agent)
    sac_state = SACAgent(OBS_SPACE, ACT_SPACE, hidden_sizes=SMALL, parallel_update=False).state_dict()
    with pytest.raises(ValueError, match=r"not a TD3Agent state: missing \['actor_target'"):
        agent.load_state_dict(sac_state)
    with pytest.raises(ValueError, match="not a TD3Agent state"):
        agent.load_state_dict([1, 2])
    other = make_agent(hidden_sizes=(16,)).state_dict()
    with pytest.raises(ValueError, match="actor does not fit this agent"):
        agent.load_state_dict(other)
    for name, own in before.items():  # nothing was changed by the refused loads
        assert all(torch.equal(own[k], v) for k, v in getattr(agent, name).state_dict().items())


# --- the parallel update ---------------------------------------------------------------------------
def test_parallel_update_is_the_td3_update_from_the_parameters_at_its_start():
    """On an actor step, one parallel update equals, bit for bit: the target from the parameters at
    the start, the actor step against the critics at the start, the critic step, then the polyak
    update. The steps without an actor update are the serial ones exactly."""
    torch.manual_seed(0)
    agent = make_agent(True, policy_delay=2)
    for seed in range(3):  # optimiser state, moved targets; the next call is an actor step
        agent.train(make_batch(seed=seed))
    state = copy.deepcopy(agent.state_dict())
    ref, serial = make_agent(False, policy_delay=2), make_agent(False, policy_delay=2)
    ref.load_state_dict(state)
    serial.load_state_dict(copy.deepcopy(state))
    obs, act, rew, next_obs, term, trunc = make_batch(seed=5)

    target = ref.compute_target(rew, next_obs, term)
    loss_actor = ref._actor_backward(obs)
    ref.actor_optimizer.step()
    q, loss_critic = ref._critic_backward(obs, ref.unscale_action(act), target, None)
    ref.critic_optimizer.step()
    ref.polyak_update()

    metrics = agent.train((obs, act, rew, next_obs, term, trunc))
    assert_same_networks(agent, ref)
    assert metrics["loss_critic"] == pytest.approx(float(loss_critic.detach()), rel=1e-6)
    assert metrics["loss_actor"] == pytest.approx(float(loss_actor.detach()), rel=1e-6)
    # the serial order (actor against the updated critics) really differs
    serial.train((obs, act, rew, next_obs, term, trunc))
    assert not torch.equal(serial.actor.kernels[0], agent.actor.kernels[0])
    # a step without an actor update: the same in both modes
    ref.load_state_dict(copy.deepcopy(agent.state_dict()))
    batch = make_batch(seed=6)
    assert agent.train(batch) == ref.train(batch)
    assert_same_networks(agent, ref)
    agent.close()


@MODES
def test_a_seeded_run_is_reproducible(parallel):
    def run():
        torch.manual_seed(3)
        agent = make_agent(parallel, policy_delay=2)
        metrics = [agent.train(make_batch(seed=i)) for i in range(8)]
        agent.close()
        return metrics, agent.actor.state_dict()

    (m1, a1), (m2, a2) = run(), run()
    assert m1 == m2
    assert all(torch.equal(a1[k], a2[k]) for k in a1)


def test_parallel_update_errors_surface_and_leave_no_thread_running():
    agent = make_agent(True, policy_delay=1)
    agent.train(make_batch())

    def broken(*args, **kwargs):
        raise RuntimeError("critic side failed")

    agent._critic_backward = broken
    with pytest.raises(RuntimeError, match="critic side failed"):
        agent.train(make_batch())
    del agent._critic_backward
    agent.train(make_batch())  # still usable
    closer = threading.Thread(target=agent.close, daemon=True)
    closer.start()
    closer.join(10.0)
    assert not closer.is_alive(), "the critic thread is stuck"


def test_parallel_update_default_follows_the_device_and_cores(monkeypatch):
    import relayrl.algorithms.td3 as td3

    monkeypatch.setattr(td3, "available_cores", lambda: 2)
    assert TD3Agent(OBS_SPACE, ACT_SPACE, hidden_sizes=SMALL).parallel_update is True
    monkeypatch.setattr(td3, "available_cores", lambda: 1)
    assert TD3Agent(OBS_SPACE, ACT_SPACE, hidden_sizes=SMALL).parallel_update is False
    assert TD3Agent(OBS_SPACE, ACT_SPACE, hidden_sizes=SMALL, parallel_update=True).parallel_update


# --- learning and the command line ---------------------------------------------------------------
def test_learns_pendulum_in_a_synchronous_loop():
    """6000 environment steps (1000 random, then one update per step) take a seeded TD3 from a
    random policy's ~-1200 to about -150..-250 on Pendulum-v1 (six seeds tried: -144 to -248)."""
    gym = pytest.importorskip("gymnasium")
    from relayrl.buffer import Buffer
    from relayrl.memory import ReplayMemory

    seed, steps, random_steps = 0, 6000, 1000
    torch.manual_seed(seed)
    env = gym.make("Pendulum-v1")
    agent = TD3Agent(env.observation_space, env.action_space, hidden_sizes=(64, 64), lr_actor=1e-3,
                     lr_critic=1e-3, parallel_update=False)
    memory = ReplayMemory(nb_steps=1, batch_size=128, capacity=steps, seed=seed)
    actor = agent.get_actor()
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    start = time.perf_counter()
    for t in range(steps):
        action = env.action_space.sample() if t < random_steps else actor.act(obs)
        next_obs, rew, terminated, truncated, _ = env.step(action)
        memory.append(Buffer(obs=obs[None].astype(np.float32), act=np.asarray(action, np.float32)[None],
                             rew=np.array([rew], np.float32), next_obs=next_obs[None].astype(np.float32),
                             terminated=np.array([terminated]), truncated=np.array([truncated])))
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
        if t >= random_steps:
            agent.train(memory.sample())
    returns = []
    for episode in range(3):
        obs, _ = env.reset(seed=1000 + episode)
        total, done = 0.0, False
        while not done:
            obs, rew, terminated, truncated, _ = env.step(actor.act(obs, test=True))
            total, done = total + rew, terminated or truncated
        returns.append(total)
    env.close()
    assert np.mean(returns) > -600, (returns, f"{time.perf_counter() - start:.0f} s")


def test_cli_flags_and_print_config(capsys):
    from relayrl.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--algorithm", "td3", "--help"])
    help_text = capsys.readouterr().out
    assert "[td3] settings (Twin Delayed DDPG" in help_text
    for flag in ("--td3.policy-delay", "--td3.target-noise-clip", "--td3.exploration-noise"):
        assert flag in help_text
    assert main(["train", "--algorithm", "td3", "--td3.policy-delay", "3", "--td3.hidden-sizes", "64,64",
                 "--td3.parallel-update", "none", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert 'algorithm = "td3"' in printed and "[td3]" in printed and "[sac]" not in printed
    assert "policy_delay = 3" in printed and "lr_actor = 0.001" in printed
    assert main(["train", "--algorithm", "td3", "--td3.policy-delay", "0", "--print-config"]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "TD3Config.policy_delay=0 is invalid: use an integer >= 1" in error


@pytest.mark.slow
def test_relayrl_train_runs_td3_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "relayrl.cli", "train", "--algorithm", "td3",
           "--run-dir", str(run_dir), "--epochs", "2", "--rounds", "2", "--steps", "20",
           "--start-training", "64", "--memory.batch-size", "32", "--workers", "1",
           "--training.update-model-interval", "10", "--training.update-buffer-interval", "10",
           "--td3.hidden-sizes", "32,32", "--td3.policy-delay", "2", "--no-progress", "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "done:" in out.stdout
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "epoch-000002"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algorithm"] == "td3" and config["td3"]["policy_delay"] == 2
    assert config["td3"]["hidden_sizes"] == [32, 32] and "sac" not in config
    header = (run_dir / "stats.csv").read_text().splitlines()[0].split(",")
    assert set(METRIC_KEYS) <= set(header)
