"""Tests of the SAC training agent (relayrl.algorithms.sac)."""
from __future__ import annotations

import copy
import functools
import io
import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from relayrl.algorithms import MLPActor, SACAgent, SACConfig
from relayrl.algorithms.sac import METRIC_KEYS
from relayrl.training import TrainingAgent

SMALL = (32, 32)
OBS_SPACE = spaces.Box(low=np.array([-1.0, -1.0, -8.0], np.float32),
                       high=np.array([1.0, 1.0, 8.0], np.float32), dtype=np.float32)  # Pendulum
ACT_SPACE = spaces.Box(low=-2.0, high=2.0, shape=(1,), dtype=np.float32)
# asymmetric bounds, to catch rescaling mistakes
ASYM_ACT_SPACE = spaces.Box(low=np.array([-1.0, 0.0], np.float32),
                            high=np.array([3.0, 0.5], np.float32), dtype=np.float32)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These networks are tiny: a second intra-op thread only adds synchronisation, and on a busy
    machine OpenMP barriers can make a 2-thread update 100x slower. Restored after each test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


_MODE = {"parallel_update": False}


@pytest.fixture(autouse=True, params=[False, True], ids=["serial", "parallel"])
def update_mode(request):
    """Every test runs with the serial update (SB3's order) and with the parallel one."""
    _MODE["parallel_update"] = request.param
    yield request.param
    _MODE["parallel_update"] = False


def make_agent(action_space=ACT_SPACE, **overrides) -> SACAgent:
    overrides.setdefault("hidden_sizes", SMALL)
    overrides.setdefault("parallel_update", _MODE["parallel_update"])
    return SACAgent(OBS_SPACE, action_space, device="cpu", **overrides)


def make_batch(action_space=ACT_SPACE, n: int = 64, seed: int = 0, terminated=None, truncated=None):
    g = torch.Generator().manual_seed(seed)
    low = torch.as_tensor(action_space.low)
    high = torch.as_tensor(action_space.high)
    obs = torch.randn(n, 3, generator=g)
    act = low + (high - low) * torch.rand(n, low.shape[0], generator=g)
    rew = torch.randn(n, generator=g)
    next_obs = torch.randn(n, 3, generator=g)
    term = (torch.rand(n, generator=g) < 0.1).float() if terminated is None else terminated
    trunc = torch.zeros(n) if truncated is None else truncated
    return obs, act, rew, next_obs, term, trunc


# --- construction --------------------------------------------------------------------------------
def test_construction_from_pendulum_spaces():
    gym = pytest.importorskip("gymnasium")
    env = gym.make("Pendulum-v1")
    try:
        agent = SACAgent(observation_space=env.observation_space, action_space=env.action_space,
                         device="cpu")
    finally:
        env.close()
    assert isinstance(agent, TrainingAgent)
    actor = agent.get_actor()
    assert isinstance(actor, MLPActor)
    assert actor.device == torch.device("cpu")
    assert agent.config.hidden_sizes == (256, 256)
    assert agent.target_entropy == -1.0
    assert agent.entropy_coef == pytest.approx(1.0)  # learned alpha starts at SB3's 1.0
    q = agent.critic(torch.zeros(5, 3), torch.zeros(5, 1))
    assert q.shape == (2, 5)
    # the two ensemble members are different networks, the target starts equal to the online one
    assert not torch.equal(agent.critic.weights[0][0], agent.critic.weights[0][1])
    for online, target in zip(agent.critic.parameters(), agent.critic_target.parameters()):
        assert torch.equal(online, target)
        assert not target.requires_grad


def test_non_box_action_space_is_refused():
    with pytest.raises(TypeError, match="continuous gymnasium.spaces.Box action"):
        SACAgent(OBS_SPACE, spaces.Discrete(3))


@pytest.mark.parametrize("obs_space", [
    spaces.Box(-1.0, 1.0, shape=(4, 4)),
    spaces.Dict({"x": spaces.Box(-1.0, 1.0, shape=(3,))}),
])
def test_non_vector_observations_are_refused(obs_space):
    with pytest.raises((TypeError, ValueError), match="vector observations"):
        SACAgent(obs_space, ACT_SPACE)


def test_unbounded_action_space_is_refused():
    with pytest.raises(ValueError, match="finite"):
        SACAgent(OBS_SPACE, spaces.Box(-np.inf, np.inf, shape=(2,)))


@pytest.mark.parametrize("field, value", [
    ("gamma", 1.5), ("polyak", -0.1), ("lr_actor", 0.0), ("betas", (0.9,)), ("betas", (0.9, 1.0)),
    ("weight_decay", -1.0), ("hidden_sizes", ()), ("hidden_sizes", (64, 0)), ("alpha", 0.0),
    ("target_update_interval", 0), ("target_entropy", float("nan")), ("parallel_update", "yes"),
])
def test_config_validation_names_the_bad_value(field, value):
    with pytest.raises(ValueError, match=f"SACConfig.{field}="):
        SACConfig(**{field: value})


def test_config_overrides_and_partial():
    agent = make_agent(lr_actor=1e-3)
    assert agent.config.lr_actor == 1e-3
    factory = functools.partial(SACAgent, config=SACConfig(gamma=0.9, hidden_sizes=SMALL))
    agent = factory(observation_space=OBS_SPACE, action_space=ACT_SPACE, device="cpu")
    assert agent.config.gamma == 0.9
    agent = SACAgent(OBS_SPACE, ACT_SPACE, config=SACConfig(gamma=0.9, hidden_sizes=SMALL),
                     lr_critic=1e-2)
    assert (agent.config.gamma, agent.config.lr_critic) == (0.9, 1e-2)
    with pytest.raises(TypeError, match="unknown SACConfig field"):
        SACAgent(OBS_SPACE, ACT_SPACE, config=SACConfig(hidden_sizes=SMALL), learning_rate=1.0)


def test_optimizer_settings_are_applied():
    agent = make_agent(betas=(0.5, 0.75), weight_decay=1e-3, lr_actor=1e-3, lr_critic=2e-3,
                       lr_entropy=5e-3)
    for optimizer, lr in ((agent.actor_optimizer, 1e-3), (agent.critic_optimizer, 2e-3),
                          (agent.entropy_optimizer, 5e-3)):
        group = optimizer.param_groups[0]
        assert tuple(group["betas"]) == (0.5, 0.75)
        assert group["lr"] == lr
    assert agent.actor_optimizer.param_groups[0]["weight_decay"] == 1e-3
    assert agent.critic_optimizer.param_groups[0]["weight_decay"] == 1e-3
    assert agent.entropy_optimizer.param_groups[0]["weight_decay"] == 0.0  # never decay log_alpha
    # the optimisers hold exactly the parameters they should
    assert {id(p) for p in agent.actor_optimizer.param_groups[0]["params"]} == \
        {id(p) for p in agent.actor.parameters()}
    assert {id(p) for p in agent.critic_optimizer.param_groups[0]["params"]} == \
        {id(p) for p in agent.critic.parameters()}


# --- the update ----------------------------------------------------------------------------------
def test_train_returns_finite_floats_with_documented_keys():
    agent = make_agent()
    stats = agent.train(make_batch())
    assert set(stats) == set(METRIC_KEYS)
    assert {"loss_critic", "loss_actor", "loss_entropy_coef", "entropy_coef", "q_mean",
            "log_prob_mean"} <= set(stats)
    for key, value in stats.items():
        assert type(value) is float, key
        assert math.isfinite(value), key
    assert stats["entropy_coef"] == pytest.approx(1.0)
    assert agent.updates == 1
    assert agent.entropy_coef != 1.0  # the learned coefficient moved


def test_fixed_entropy_coefficient():
    agent = make_agent(learn_entropy_coef=False, alpha=0.2)
    assert agent.entropy_optimizer is None
    for seed in range(3):
        stats = agent.train(make_batch(seed=seed))
        assert stats["loss_entropy_coef"] == 0.0
        assert stats["entropy_coef"] == pytest.approx(0.2)
    assert agent.entropy_coef == pytest.approx(0.2)


def test_target_critics_follow_the_polyak_rule():
    agent = make_agent(polyak=0.9)
    # make the target differ from the online critics first, so the rule is really exercised
    agent.train(make_batch(seed=1))
    before = [p.detach().clone() for p in agent.critic_target.parameters()]
    agent.train(make_batch(seed=2))
    online = [p.detach() for p in agent.critic.parameters()]
    after = [p.detach() for p in agent.critic_target.parameters()]
    moved = False
    for b, o, a in zip(before, online, after):
        torch.testing.assert_close(a, 0.9 * b + 0.1 * o, rtol=0, atol=1e-6)
        moved |= not torch.equal(a, b)
    assert moved


def test_target_update_interval():
    agent = make_agent(target_update_interval=2)
    initial = [p.detach().clone() for p in agent.critic_target.parameters()]
    agent.train(make_batch(seed=1))
    assert all(torch.equal(a, b) for a, b in zip(initial, agent.critic_target.parameters()))
    agent.train(make_batch(seed=2))
    assert not all(torch.equal(a, b) for a, b in zip(initial, agent.critic_target.parameters()))


def test_termination_stops_bootstrap_but_truncation_does_not():
    agent = make_agent(gamma=0.9)
    _, _, rew, next_obs, _, _ = make_batch(n=8)
    zeros, ones = torch.zeros(8), torch.ones(8)

    torch.manual_seed(0)
    y_alive = agent.compute_target(rew, next_obs, zeros)
    torch.manual_seed(0)
    y_terminated = agent.compute_target(rew, next_obs, ones)
    torch.testing.assert_close(y_terminated, rew, rtol=0, atol=0)
    assert not torch.allclose(y_alive, rew)

    # y = r + gamma * (min Q'(s', a') - alpha * log pi(a'|s')), computed by hand
    with torch.no_grad():
        torch.manual_seed(0)
        next_action, next_logprob = agent.actor(next_obs)
        q_next = torch.min(*agent.critic_target(next_obs, next_action))
        expected = rew + 0.9 * (q_next - agent.entropy_coef * next_logprob)
    torch.testing.assert_close(y_alive, expected)

    # truncated transitions bootstrap: train() ignores the truncated column entirely
    twin = copy.deepcopy(agent)
    batch = make_batch(n=8, terminated=zeros)
    batch_truncated = (*batch[:5], ones)
    torch.manual_seed(1)
    stats = agent.train(batch)
    torch.manual_seed(1)
    stats_truncated = twin.train(batch_truncated)
    assert stats == stats_truncated
    assert stats["q_target_mean"] != pytest.approx(float(rew.mean()))


def test_actions_are_rescaled_from_env_units():
    agent = make_agent(action_space=ASYM_ACT_SPACE)
    env_actions = torch.tensor([[-1.0, 0.0], [3.0, 0.5], [1.0, 0.25]])
    squashed = agent.unscale_action(env_actions)
    torch.testing.assert_close(squashed, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(agent.actor.scale_action(squashed), env_actions)


def test_state_dict_round_trip_through_weights_only_load(tmp_path):
    torch.manual_seed(0)
    agent = make_agent()
    for seed in range(3):
        agent.train(make_batch(seed=seed))
    path = tmp_path / "agent.pt"
    torch.save(agent.state_dict(), path)
    state = torch.load(path, weights_only=True)

    torch.manual_seed(123)  # a differently initialised fresh agent
    fresh = make_agent()
    fresh.load_state_dict(state)
    assert fresh.updates == agent.updates == 3
    for module in ("actor", "critic", "critic_target"):
        own, other = getattr(agent, module).state_dict(), getattr(fresh, module).state_dict()
        assert own.keys() == other.keys()
        for name in own:
            assert torch.equal(own[name], other[name]), (module, name)
    assert torch.equal(agent.log_alpha, fresh.log_alpha)
    for name in ("actor_optimizer", "critic_optimizer", "entropy_optimizer"):
        own, other = getattr(agent, name).state_dict()["state"], getattr(fresh, name).state_dict()["state"]
        assert own.keys() == other.keys()
        for index in own:
            for key in own[index]:
                assert torch.equal(torch.as_tensor(own[index][key]),
                                   torch.as_tensor(other[index][key])), (name, index, key)

    batch = make_batch(seed=10)
    torch.manual_seed(7)
    expected = agent.train(batch)
    torch.manual_seed(7)
    got = fresh.train(batch)
    assert got == expected
    for a, b in zip(agent.actor.parameters(), fresh.actor.parameters()):
        assert torch.equal(a, b)


def test_load_state_dict_refuses_foreign_state():
    with pytest.raises(ValueError, match="missing"):
        make_agent().load_state_dict({"actor": {}})


def test_state_dict_holds_only_plain_values():
    state = make_agent().state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)  # raises on anything that would need unpickling code

    def check(value):
        if isinstance(value, dict):
            for k, v in value.items():
                assert isinstance(k, (str, int)), k
                check(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                check(v)
        else:
            assert value is None or isinstance(value, (torch.Tensor, bool, int, float, str)), value
    check(state)


def test_critic_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    agent = make_agent(lr_critic=3e-3)
    batch = make_batch(n=32, seed=3)
    losses = [agent.train(batch)["loss_critic"] for _ in range(150)]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])  # ~0.1 in practice


# --- the actor -----------------------------------------------------------------------------------
def test_act_returns_actions_within_bounds_and_is_deterministic_in_test_mode():
    torch.manual_seed(0)
    actor = MLPActor(OBS_SPACE, ASYM_ACT_SPACE, hidden_sizes=SMALL)
    with torch.no_grad():  # push the policy to extreme actions to exercise the clipping
        actor.biases[-1][:2] += torch.tensor([50.0, -50.0])  # the two means
    rng = np.random.default_rng(0)
    for _ in range(50):
        obs = OBS_SPACE.sample() * rng.uniform(1, 10)
        action = actor.act(obs)
        assert action.dtype == np.float32 and action.shape == (2,)
        assert ASYM_ACT_SPACE.contains(action), action
    obs = np.array([0.1, -0.2, 3.0], np.float64)  # any dtype; flattened to float32
    a1, a2 = actor.act(obs, test=True), actor.act(obs, test=True)
    np.testing.assert_array_equal(a1, a2)
    assert ASYM_ACT_SPACE.contains(a1)

    fresh = MLPActor(OBS_SPACE, ASYM_ACT_SPACE, hidden_sizes=SMALL)
    d1, d2 = fresh.act(obs, test=True), fresh.act(obs, test=True)
    np.testing.assert_array_equal(d1, d2)
    s1, s2 = fresh.act(obs), fresh.act(obs.tolist())  # stochastic otherwise; a list works too
    assert not np.array_equal(s1, s2) and not np.array_equal(s1, d1)
    assert ASYM_ACT_SPACE.contains(s1) and ASYM_ACT_SPACE.contains(s2)


def test_act_matches_forward():
    torch.manual_seed(0)
    actor = MLPActor(OBS_SPACE, ASYM_ACT_SPACE, hidden_sizes=SMALL)
    obs = np.array([0.5, -0.5, 1.0], np.float32)
    squashed, logprob = actor(torch.as_tensor(obs)[None], test=True)
    expected = actor.scale_action(squashed)[0].detach().numpy()
    np.testing.assert_allclose(actor.act(obs, test=True), expected, rtol=1e-6, atol=1e-6)
    assert logprob.shape == (1,)
    assert actor(torch.as_tensor(obs)[None], with_logprob=False)[1] is None
    single, single_logprob = actor(torch.as_tensor(obs), test=True)  # one unbatched observation
    assert single.shape == (2,) and single_logprob.shape == ()
    torch.testing.assert_close(single, squashed[0])


def test_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    actor = MLPActor(OBS_SPACE, ASYM_ACT_SPACE, hidden_sizes=SMALL)
    obs = torch.randn(64, 3)
    torch.manual_seed(1)
    action, logprob = actor(obs)
    mu, log_std = actor._dist(obs)
    torch.manual_seed(1)
    u = mu + log_std.exp() * torch.randn_like(mu)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mu, log_std.exp()), [torch.distributions.TanhTransform()])
    torch.testing.assert_close(action, torch.tanh(u))
    reference = torch.distributions.Normal(mu, log_std.exp()).log_prob(u).sum(-1) \
        - torch.log1p(-torch.tanh(u) ** 2).sum(-1)
    torch.testing.assert_close(logprob, reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logprob, dist.log_prob(torch.tanh(u).clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1),
                               rtol=1e-3, atol=1e-3)


def test_actor_weights_round_trip():
    torch.manual_seed(0)
    actor = MLPActor(OBS_SPACE, ACT_SPACE, hidden_sizes=SMALL)
    torch.manual_seed(1)
    other = MLPActor(OBS_SPACE, ACT_SPACE, hidden_sizes=SMALL)
    obs = np.array([0.3, 0.4, -2.0], np.float32)
    assert not np.array_equal(actor.act(obs, test=True), other.act(obs, test=True))
    weights = actor.weights()
    assert all(isinstance(w, np.ndarray) for w in weights.values())
    assert not any("action_" in name for name in weights)  # derived from the space, not shipped
    other.load_weights(weights)
    np.testing.assert_array_equal(actor.act(obs, test=True), other.act(obs, test=True))


def test_get_actor_is_the_trained_policy():
    agent = make_agent()
    actor = agent.get_actor()
    before = actor.weights()
    agent.train(make_batch())
    after = agent.get_actor().weights()
    assert any(not np.array_equal(before[k], after[k]) for k in before)


# --- the parallel update ---------------------------------------------------------------------------
def _generator_like(generator: torch.Generator) -> torch.Generator:
    g = torch.Generator()
    g.set_state(generator.get_state())
    return g


@pytest.mark.parametrize("learn_alpha", [True, False])
def test_parallel_update_is_the_sac_update_from_the_parameters_at_its_start(learn_alpha):
    """One parallel update equals, bit for bit: the target and the actor/entropy step computed from
    the parameters at the start, then the critic step, then the polyak update."""
    torch.manual_seed(0)
    agent = make_agent(parallel_update=True, learn_entropy_coef=learn_alpha)
    ref = make_agent(parallel_update=False, learn_entropy_coef=learn_alpha)
    for _ in range(2):  # a few updates first, so the optimisers have state
        agent.train(make_batch(seed=_))
    ref.load_state_dict(copy.deepcopy(agent.state_dict()))  # (optimiser step counters are tensors)
    g_target, g_policy = _generator_like(agent._gen_target), _generator_like(agent._gen_policy)
    obs, act, rew, next_obs, term, trunc = make_batch(seed=5)

    alpha = ref._alpha()
    target = ref.compute_target(rew, next_obs, term, alpha, g_target)
    critic_before = copy.deepcopy(ref.critic.state_dict())
    ref._actor_backward(obs, alpha, g_policy)
    ref._actor_step()
    q, loss = ref._critic_loss(obs, act, target)
    ref.critic_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ref.critic_optimizer.step()
    ref._after_critic_step()
    assert not all(torch.equal(critic_before[k], v) for k, v in ref.critic.state_dict().items())

    metrics = agent.train((obs, act, rew, next_obs, term, trunc))
    for module in ("actor", "critic", "critic_target"):
        own, other = getattr(agent, module).state_dict(), getattr(ref, module).state_dict()
        for name in own:
            assert torch.equal(own[name], other[name]), (module, name)
    assert torch.equal(agent.log_alpha, ref.log_alpha)
    assert metrics["loss_critic"] == pytest.approx(float(loss.detach()), rel=1e-6)


def test_parallel_update_is_reproducible_with_a_seed():
    def run():
        torch.manual_seed(3)
        agent = make_agent(parallel_update=True)
        return [agent.train(make_batch(seed=i)) for i in range(10)], agent.actor.state_dict()

    (m1, a1), (m2, a2) = run(), run()
    assert m1 == m2
    assert all(torch.equal(a1[k], a2[k]) for k in a1)


def test_parallel_update_errors_surface_and_leave_no_thread_running():
    agent = make_agent(parallel_update=True)
    agent.train(make_batch())

    def broken(*args, **kwargs):
        raise RuntimeError("critic side failed")

    agent._critic_loss = broken
    with pytest.raises(RuntimeError, match="critic side failed"):
        agent.train(make_batch())
    del agent._critic_loss
    agent.train(make_batch())  # still usable
    agent.close()


def _closes_within(agent, seconds: float) -> bool:
    import threading

    closer = threading.Thread(target=agent.close, daemon=True)
    closer.start()
    closer.join(seconds)
    return not closer.is_alive()


@pytest.mark.parametrize("where", ["in submit", "in the actor step", "while waiting"])
def test_parallel_update_interrupted_anywhere_leaves_no_thread_waiting(where, monkeypatch):
    """Ctrl+C or SIGTERM (KeyboardInterrupt) can arrive at any point of the caller's side; train()
    must still return only when the critic side is done, and never leave it waiting forever."""
    agent = make_agent(parallel_update=True)
    agent.train(make_batch())
    critic_side_done, interrupted = [], []
    pool = agent._threads._executor()  # the helper thread of relayrl.algorithms.two_threads
    real_submit = pool.submit

    def submit(fn, *args):
        def tracked():
            try:
                return fn(*args)
            finally:
                critic_side_done.append(fn.__name__)
        future = real_submit(tracked)
        if where == "in submit" and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt  # after queuing the task: the caller never sees the future
        return future

    pool.submit = submit
    if where == "in the actor step":
        agent._actor_step = lambda: (_ for _ in ()).throw(KeyboardInterrupt())
    elif where == "while waiting":
        real_loss = agent._critic_loss

        def slow_loss(*args):
            import time
            time.sleep(0.2)
            return real_loss(*args)

        agent._critic_loss = slow_loss
        agent._actor_step = lambda: (_ for _ in ()).throw(KeyboardInterrupt())
        import relayrl.algorithms.two_threads as two_threads
        real_wait = two_threads.futures_wait

        def interrupted_wait(*args, **kwargs):  # a second Ctrl+C while waiting for the critic side
            if not interrupted:
                interrupted.append(True)
                raise KeyboardInterrupt
            return real_wait(*args, **kwargs)

        monkeypatch.setattr(two_threads, "futures_wait", interrupted_wait)
    with pytest.raises(KeyboardInterrupt):
        agent.train(make_batch())
    assert "critic_side" in critic_side_done  # finished before train() returned
    pool.submit = real_submit
    assert _closes_within(agent, 10.0), "the critic thread is stuck"


def test_parallel_update_default_follows_the_device_and_cores(monkeypatch):
    import relayrl.algorithms.sac as sac

    monkeypatch.setattr(sac, "available_cores", lambda: 2)
    assert SACAgent(OBS_SPACE, ACT_SPACE, hidden_sizes=SMALL).parallel_update is True
    monkeypatch.setattr(sac, "available_cores", lambda: 1)
    assert SACAgent(OBS_SPACE, ACT_SPACE, hidden_sizes=SMALL).parallel_update is False
    assert SACAgent(OBS_SPACE, ACT_SPACE, hidden_sizes=SMALL, parallel_update=True).parallel_update


def test_parallel_update_works_in_a_forked_child():
    import os

    agent = make_agent(parallel_update=True)
    agent.train(make_batch())  # the critic thread exists in this process now
    pid = os.fork()
    if pid == 0:  # the child: threads are not inherited; train must not hang
        code = 1
        try:
            agent.train(make_batch(seed=1))
            code = 0
        finally:
            os._exit(code)
    import time
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("train() hung in a forked child")
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("options", [{"dropout": 0.1}, {"layer_norm": True}, {"batch_norm": True},
                                     {"dropout": 0.05, "layer_norm": True}])
def test_regularised_ensemble_critics(options):
    """The options for DroQ/CrossQ-style critics: members stay independent, dropout and batch
    statistics act in train() mode only, gradients reach every parameter."""
    from relayrl.algorithms.networks import EnsembleCritic

    torch.manual_seed(0)
    critic = EnsembleCritic(3, 1, (16, 16), n=3, **options)
    obs, act = torch.randn(64, 3), torch.randn(64, 1)
    q = critic(obs, act)
    assert q.shape == (3, 64) and torch.isfinite(q).all()
    q.sum().backward()
    assert all(p.grad is not None for p in critic.parameters())
    critic.eval()
    q1, q2 = critic(obs, act), critic(obs, act)
    assert torch.equal(q1, q2)  # deterministic in eval mode
    if options.get("batch_norm"):
        assert not torch.equal(critic.running_mean_0, torch.zeros_like(critic.running_mean_0))
        # in eval mode, one sample's Q does not depend on the rest of the batch
        assert torch.allclose(critic(obs[:1], act[:1])[:, 0], q1[:, 0], atol=1e-6)
    if options.get("layer_norm") and not options.get("dropout"):
        # changing member 0's first layer leaves the other members' outputs alone
        with torch.no_grad():
            critic.weights[0][0].mul_(2.0)
        q3 = critic(obs, act)
        assert torch.equal(q3[1:], q1[1:]) and not torch.equal(q3[0], q1[0])


def test_regularised_critic_refuses_contradictory_options():
    from relayrl.algorithms.networks import EnsembleCritic

    with pytest.raises(ValueError, match="layer_norm or batch_norm"):
        EnsembleCritic(3, 1, layer_norm=True, batch_norm=True)
    with pytest.raises(ValueError, match="dropout must be in"):
        EnsembleCritic(3, 1, dropout=1.0)


def test_alpha_set_while_it_is_learned_is_refused_not_ignored():
    with pytest.raises(ValueError, match="initial_alpha=0.5"):
        SACConfig(alpha=0.5)
    assert SACConfig(alpha=0.5, learn_entropy_coef=False).fixed_alpha == 0.5
    assert SACConfig(learn_entropy_coef=False).fixed_alpha == 0.2
    agent = make_agent(learn_entropy_coef=False)
    assert agent.entropy_coef == pytest.approx(0.2)
    assert make_agent(initial_alpha=0.5).entropy_coef == pytest.approx(0.5)


def test_alpha_from_the_command_line_while_learned_names_the_fix(capsys):
    from relayrl.cli import main

    assert main(["train", "--sac.alpha", "0.5", "--print-config"]) != 0
    assert "initial_alpha" in capsys.readouterr().err
