import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from relayrl.actor import ActorModule
from relayrl.worker import RolloutWorker, make_env


class CountingEnv(gymnasium.Env):
    """obs = step index; terminates after `horizon` steps."""

    def __init__(self, horizon=10):
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.horizon = horizon
        self.t = 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0, 0], np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.array([self.t, self.t], np.float32)
        return obs, 1.0, self.t >= self.horizon, False, {}


class ConstActor(ActorModule):
    def __init__(self, observation_space, action_space):
        super().__init__(observation_space, action_space)
        import torch
        self.value = torch.nn.Parameter(torch.zeros(1))
        self.tests = []

    def act(self, obs, test=False):
        self.tests.append(test)
        return np.array([self.value.detach().item()], np.float32)


class FakeConnection:
    def __init__(self, allowance=None, weights=None):
        self.buffers = []
        self.allowance = allowance
        self.weights = list(weights or [])
        self.waits = 0

    def send_buffer(self, buffer):
        self.buffers.append(buffer)

    def poll_weights(self, timeout=0.0):
        return self.weights.pop(0) if self.weights else None

    def allowed_samples(self):
        return self.allowance

    def wait_for_message(self, timeout):
        self.waits += 1
        if self.allowance is not None:
            self.allowance += 5  # the trainer grants more
        return True


def make_worker(conn, **kw):
    return RolloutWorker(lambda: CountingEnv(10), ConstActor, conn, worker_id="w0", **kw)


def test_episode_transitions_are_whole_and_sent():
    conn = FakeConnection()
    w = make_worker(conn, buffer_steps=4, test_episode_interval=0)
    w.run(max_episodes=2)
    rows = sum(len(b) for b in conn.buffers)
    assert rows == 20
    obs = np.concatenate([b.obs for b in conn.buffers])
    next_obs = np.concatenate([b.next_obs for b in conn.buffers])
    assert np.array_equal(next_obs[:, 0], obs[:, 0] + 1)
    term = np.concatenate([b.terminated for b in conn.buffers])
    assert term.sum() == 2 and term[9] and term[19]
    episodes = [e for b in conn.buffers for e in b.episodes]
    assert [(e.episode_return, e.length, e.test) for e in episodes] == [(10.0, 10, False)] * 2
    assert [b.seq for b in conn.buffers] == list(range(len(conn.buffers)))
    assert all(b.worker_id == "w0" for b in conn.buffers)


def test_cap_truncates_episodes():
    conn = FakeConnection()
    w = make_worker(conn, max_samples_per_episode=3, test_episode_interval=0)
    w.run(max_episodes=1)
    buf = conn.buffers[0]
    assert len(buf) == 3 and buf.truncated.tolist() == [False, False, True]
    assert not buf.terminated.any()


def test_test_episodes_are_deterministic_and_not_sent():
    conn = FakeConnection()
    w = make_worker(conn, test_episode_interval=2)
    w.run(max_episodes=4)
    episodes = [e for b in conn.buffers for e in b.episodes]
    assert [e.test for e in episodes] == [False, False, True, False, False, True]
    assert sum(len(b) for b in conn.buffers) == 40  # 4 training episodes only
    assert w.actor.tests.count(True) == 20


def test_new_weights_are_loaded_with_their_version():
    import numpy as np
    conn = FakeConnection(weights=[(3, {"value": np.array([0.5], np.float32)})])
    w = make_worker(conn, test_episode_interval=0)
    w.run(max_episodes=1)
    assert w.policy_version == 3
    assert conn.buffers[-1].act[-1, 0] == pytest.approx(0.5)
    assert conn.buffers[-1].policy_version == 3


def test_allowance_pauses_the_worker():
    conn = FakeConnection(allowance=5)
    w = make_worker(conn, buffer_steps=100, test_episode_interval=0)
    w.run(max_episodes=2)
    # never sent more than the allowance current at the time of sending
    assert conn.waits >= 3
    assert sum(len(b) for b in conn.buffers) == 20


def test_allowance_checked_only_between_episodes_when_asked():
    conn = FakeConnection(allowance=3)
    w = make_worker(conn, buffer_steps=100, test_episode_interval=0, pause_mid_episode=False)
    w.run(max_episodes=1)
    assert conn.waits == 0 and len(conn.buffers[0]) == 10  # the episode ran whole


def test_unknown_env_id_is_clear():
    with pytest.raises(ValueError, match="unknown environment id 'NoSuchEnv-v0'"):
        make_env("NoSuchEnv-v0")


def test_bad_worker_settings():
    with pytest.raises(ValueError, match="buffer_steps"):
        make_worker(FakeConnection(), buffer_steps=0)


def test_first_weights_are_awaited_until_they_come():
    conn = FakeConnection()
    w = make_worker(conn, test_episode_interval=0)
    polls = []

    def poll(timeout=0.0):  # the weights come on the third poll
        polls.append(timeout)
        return (1, {"value": np.array([0.25], np.float32)}) if len(polls) == 3 else None

    conn.poll_weights = poll
    assert w.wait_for_first_weights() is True
    assert w.policy_version == 1 and len(polls) == 3 and all(t > 0 for t in polls)  # blocking polls
    assert w.wait_for_first_weights() is True and len(polls) == 3  # already there: no poll


def test_waiting_for_first_weights_stops_on_request_and_says_so():
    w = make_worker(FakeConnection(), test_episode_interval=0)
    notices = []
    stop_after = iter(range(3, -1, -1))
    assert w.wait_for_first_weights(should_stop=lambda: next(stop_after) == 0,
                                    notice=notices.append, notice_interval=0.0) is False
    assert w.policy_version == -1 and len(notices) == 3 and all(s >= 0 for s in notices)


def test_waiting_for_first_weights_can_time_out():
    w = make_worker(FakeConnection(), test_episode_interval=0)
    with pytest.raises(TimeoutError, match="no weights from the trainer"):
        w.wait_for_first_weights(timeout=0.05)


def test_weights_that_do_not_fit_the_actor_are_an_error_while_waiting():
    w = make_worker(FakeConnection(weights=[(1, {"other": np.zeros(3, np.float32)})]))
    with pytest.raises(ValueError, match="actor weights do not match"):
        w.wait_for_first_weights()


def test_a_worker_built_from_the_workers_settings():
    from relayrl.config import WorkersConfig

    settings = WorkersConfig(max_samples_per_episode=4, test_episode_interval=0, buffer_steps=2,
                             pause_mid_episode=False)
    conn = FakeConnection()
    w = RolloutWorker.from_settings(lambda: CountingEnv(10), ConstActor, conn, settings, worker_id="s", seed=3)
    assert (w.max_samples_per_episode, w.test_episode_interval, w.buffer_steps, w.pause_mid_episode,
            w.seed, w.worker_id) == (4, 0, 2, False, 3, "s")
    w.run(max_episodes=1)
    assert [len(b) for b in conn.buffers] == [2, 2, 0]  # chunks of 2; the episode's statistics last
    assert conn.buffers[1].truncated[-1] and conn.buffers[-1].episodes[0].length == 4


def test_make_env_is_still_importable_from_the_worker_module():
    from relayrl.envs import make_env as envs_make_env

    assert make_env is envs_make_env


def test_random_steps_take_uniform_actions_first_then_the_policy_and_never_in_tests():
    conn = FakeConnection()
    w = make_worker(conn, test_episode_interval=1, random_steps=13, seed=3)
    w.run(max_episodes=2)  # 2 training episodes of 10 steps, each followed by a test episode
    actions = np.concatenate([b.act for b in conn.buffers])[:, 0]
    assert len(actions) == 20
    assert np.all(actions[:13] != 0.0) and len(set(actions[:13].tolist())) == 13  # uniform draws
    assert np.all((actions[:13] >= -1.0) & (actions[:13] <= 1.0))
    assert np.all(actions[13:] == 0.0)  # the (constant) policy afterwards
    # the policy acted in the test episodes and in the 7 training steps after the random ones
    assert w.actor.tests.count(True) == 20 and w.actor.tests.count(False) == 7
    # seeded: the same draws again
    again = FakeConnection()
    make_worker(again, test_episode_interval=0, random_steps=13, seed=3).run(max_episodes=2)
    assert np.array_equal(np.concatenate([b.act for b in again.buffers])[:13, 0], actions[:13])


def test_random_steps_are_validated():
    with pytest.raises(ValueError, match="random_steps"):
        make_worker(FakeConnection(), random_steps=-1)


def test_random_steps_are_split_among_local_workers_and_not_repeated_on_resume():
    from relayrl.roles.common import split_random_steps

    assert split_random_steps(10_000, 0, 3) == [3334, 3333, 3333]
    assert split_random_steps(10_000, 9_000, 2) == [500, 500]
    assert split_random_steps(10_000, 12_000, 2) == [0, 0]
    assert sum(split_random_steps(7, 0, 4)) == 7
