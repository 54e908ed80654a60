"""Rollout workers (tmrl's ``RolloutWorker``): run episodes with the latest policy, send buffers.

A worker owns an environment and an actor, and talks to the trainer through a *connection* with
four methods (the ZeroMQ client in :mod:`relayrl.transport` is one; tests use fakes):

* ``send_buffer(buffer)``: hand a :class:`~relayrl.buffer.Buffer` to the trainer;
* ``poll_weights(timeout=0.0)``: the newest ``(version, weights)`` since the last call, or ``None``;
* ``allowed_samples()``: the total number of samples this worker may have sent so far, or ``None``
  for no limit (the trainer's side of rate control, see below);
* ``wait_for_message(timeout)``: block until the trainer says something (weights or a new allowance).

Rate control, worker side: a simulator steps far faster than a trainer learns, and samples collected
with a stale policy waste the trainer's work. When the trainer announces an allowance, the worker
pauses once it has sent that many samples and resumes when the allowance grows. With
``pause_mid_episode=False`` (real-time environments: robots, games) the worker checks only between
episodes, so an episode is never interrupted.

Test episodes (every ``test_episode_interval`` training episodes) act deterministically; their
transitions are not sent (they are evaluation, as in Stable-Baselines3), their statistics are.

Exploration before learning: the first ``random_steps`` steps of training episodes take uniform
random actions (``action_space.sample()``, seeded with the worker's seed) instead of the policy's,
as Stable-Baselines3 does during its ``learning_starts``; their buffers carry policy version 0.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np
import torch

from .actor import ActorModule
from .buffer import BufferBuilder, EpisodeStats
from .envs import make_env  # (``relayrl.worker.make_env`` keeps working)

log = logging.getLogger("relayrl.worker")


class RolloutWorker:
    """Runs episodes, sends buffers, keeps its actor up to date.

    Parameters
    ----------
    env:
        A gymnasium id (``"Pendulum-v1"``), a ``"module:factory"`` string or a callable returning an
        environment (see :func:`relayrl.envs.make_env`).
    actor:
        An :class:`~relayrl.actor.ActorModule`, or a callable ``(observation_space, action_space)``
        returning one.
    connection:
        See the module docstring.
    worker_id:
        Name of this worker in the trainer's statistics.
    max_samples_per_episode:
        Cap on steps per episode; a capped episode ends as *truncated* (``None``: no cap).
    test_episode_interval:
        Run one deterministic test episode after every this many training episodes (0: never).
    buffer_steps:
        Send a buffer after this many steps (and at every episode end).
    pause_mid_episode:
        Whether the allowance may pause the worker inside an episode (see the module docstring).
    seed:
        Seeds the environment's first reset, its action space's sampler and torch's sampling in
        this process.
    random_steps:
        Training steps taken with uniform random actions before the policy acts (see the module
        docstring); 0: the policy acts from the first step.
    """

    def __init__(self, env, actor, connection, *, worker_id: str = "worker-0",
                 max_samples_per_episode: int | None = None, test_episode_interval: int = 5,
                 buffer_steps: int = 25, pause_mid_episode: bool = True, seed: int | None = None,
                 random_steps: int = 0):
        if max_samples_per_episode is not None and max_samples_per_episode < 1:
            raise ValueError(f"max_samples_per_episode must be >= 1 or None, got {max_samples_per_episode}")
        if test_episode_interval < 0:
            raise ValueError(f"test_episode_interval must be >= 0, got {test_episode_interval}")
        if buffer_steps < 1:
            raise ValueError(f"buffer_steps must be >= 1, got {buffer_steps}")
        if isinstance(random_steps, bool) or not isinstance(random_steps, int) or random_steps < 0:
            raise ValueError(f"random_steps must be an integer >= 0, got {random_steps!r}")
        self.env = make_env(env)
        self.actor = actor if isinstance(actor, ActorModule) else actor(
            self.env.observation_space, self.env.action_space)
        self.connection = connection
        self.worker_id = worker_id
        self.max_samples_per_episode = max_samples_per_episode
        self.test_episode_interval = test_episode_interval
        self.buffer_steps = buffer_steps
        self.pause_mid_episode = pause_mid_episode
        self.seed = seed
        self.random_steps = random_steps
        self.steps_taken = 0  # training steps, random ones included
        if seed is not None:
            torch.manual_seed(seed)
            self.env.action_space.seed(seed)
        obs_space, act_space = self.env.observation_space, self.env.action_space
        self.builder = BufferBuilder(obs_space.shape, act_space.shape, capacity=buffer_steps,
                                     obs_dtype=obs_space.dtype or np.float32)
        self.policy_version = -1
        self.seq = 0
        self.samples_sent = 0
        self.episodes_done = 0
        self.train_episodes_done = 0
        self._reset_seed = seed

    @classmethod
    def from_settings(cls, env, actor, connection, settings, *, worker_id: str,
                      seed: int | None = None, random_steps: int | None = None) -> "RolloutWorker":
        """A worker configured by a ``[workers]`` section (:class:`relayrl.config.WorkersConfig`,
        or anything with its ``max_samples_per_episode``, ``test_episode_interval``, ``buffer_steps``
        and ``pause_mid_episode`` attributes). ``random_steps``: this worker's share of the
        section's ``random_steps`` (default: all of it, or 0 when the section has none)."""
        if random_steps is None:
            random_steps = getattr(settings, "random_steps", 0)
        return cls(env, actor, connection, worker_id=worker_id,
                   max_samples_per_episode=settings.max_samples_per_episode,
                   test_episode_interval=settings.test_episode_interval,
                   buffer_steps=settings.buffer_steps, pause_mid_episode=settings.pause_mid_episode,
                   seed=seed, random_steps=random_steps)

    # --- connection ------------------------------------------------------------------------------
    def update_weights(self, timeout: float = 0.0) -> bool:
        """Load the newest weights if any arrived; return whether the actor changed."""
        message = self.connection.poll_weights(timeout)
        if message is None:
            return False
        version, weights = message
        self.actor.load_weights(weights)
        self.policy_version = version
        return True

    def wait_for_first_weights(self, timeout: float | None = None, *,
                               should_stop: Callable[[], bool] = lambda: False,
                               notice: Callable[[float], None] | None = None,
                               notice_interval: float = 30.0) -> bool:
        """Block until the trainer's first weights are loaded (True) or ``should_stop()`` becomes
        true first (False). A worker may start before its trainer, so by default it waits as long as
        it takes; with ``timeout`` seconds it raises ``TimeoutError`` instead. ``notice(seconds
        waited)`` is called every ``notice_interval`` seconds of waiting. Weights that do not fit the
        actor raise the ``ValueError`` of :meth:`~relayrl.actor.ActorModule.load_weights`."""
        started = last_notice = time.monotonic()
        while self.policy_version < 0:
            if should_stop():
                return False
            now = time.monotonic()
            if timeout is not None and now - started >= timeout:
                raise TimeoutError(f"{self.worker_id}: no weights from the trainer after {timeout:.0f} s;"
                                   " is the trainer running and reachable?")
            if notice is not None and now - last_notice >= notice_interval:
                last_notice = now
                notice(now - started)
            wait = 0.5 if timeout is None else max(0.0, min(0.5, started + timeout - now))
            self.update_weights(wait)
        return True

    def flush(self) -> None:
        """Send what was collected (transitions and finished-episode statistics)."""
        if len(self.builder) == 0 and not self.builder.episodes:
            return
        buffer = self.builder.take(worker_id=self.worker_id, seq=self.seq,
                                   policy_version=max(self.policy_version, 0))
        self.connection.send_buffer(buffer)
        self.seq += 1
        self.samples_sent += len(buffer)

    def _may_step(self) -> bool:
        allowed = self.connection.allowed_samples()
        return allowed is None or self.samples_sent + len(self.builder) < allowed

    def wait_for_allowance(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Pause (after sending what is pending) until the trainer allows more samples."""
        if self._may_step():
            return
        self.flush()
        waited_since = time.monotonic()
        while not self._may_step() and not should_stop():
            self.connection.wait_for_message(0.5)
            self.update_weights()
            if time.monotonic() - waited_since > 60.0:
                log.info("%s: paused by the trainer's rate limit for 60 s (sent %d samples)",
                         self.worker_id, self.samples_sent)
                waited_since = time.monotonic()

    # --- episodes --------------------------------------------------------------------------------
    def run_episode(self, test: bool = False, should_stop: Callable[[], bool] = lambda: False) -> EpisodeStats:
        """Run one episode; training episodes' transitions are sent in chunks of ``buffer_steps``."""
        obs, _ = self.env.reset(seed=self._reset_seed)
        self._reset_seed = None  # seed only the first reset; later resets continue the stream
        episode_return, length = 0.0, 0
        while True:
            if not test:
                if self.pause_mid_episode or length == 0:
                    self.wait_for_allowance(should_stop)
            self.update_weights()
            if not test and self.steps_taken < self.random_steps:
                action = self.env.action_space.sample()
            else:
                action = self.actor.act(obs, test=test)
            if not test:
                self.steps_taken += 1
            next_obs, reward, terminated, truncated, _ = self.env.step(action)
            length += 1
            episode_return += float(reward)
            if self.max_samples_per_episode is not None and length >= self.max_samples_per_episode:
                truncated = True
            if not test:
                self.builder.add(obs, action, reward, next_obs, terminated, truncated)
                if len(self.builder) >= self.buffer_steps:
                    self.flush()
            obs = next_obs
            if terminated or truncated or should_stop():
                break
        stats = EpisodeStats(episode_return, length, test=test)
        self.builder.add_episode(stats)
        self.flush()
        self.episodes_done += 1
        if not test:
            self.train_episodes_done += 1
        return stats

    def run(self, max_episodes: int | None = None, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Run training episodes (and test episodes every ``test_episode_interval``) until
        ``max_episodes`` training episodes are done or ``should_stop()`` is true."""
        while not should_stop() and (max_episodes is None or self.train_episodes_done < max_episodes):
            self.run_episode(test=False, should_stop=should_stop)
            if (self.test_episode_interval and not should_stop()
                    and self.train_episodes_done % self.test_episode_interval == 0):
                self.run_episode(test=True, should_stop=should_stop)

    def close(self) -> None:
        self.env.close()
