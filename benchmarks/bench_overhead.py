"""(a) Wrapper overhead: a ``TorchTrainingOffline`` round vs the same agent's updates on
pre-sampled batches.

Set-up: Pendulum-v1 spaces, the real ``ReplayMemory`` (batch 256) and the real ``SACAgent``
(hidden (256, 256)), ``relayrl train``'s round settings (``update_model_interval`` and
``update_buffer_interval`` 20, ``max_training_steps_per_env_step`` 1.0). The interface is a fake
that always has samples: it hands out a pre-built ``Buffer`` of 20 Pendulum-shaped transitions on
each pull (a 10,000-transition one on the first pull) and its ``broadcast_model`` does nothing (so
what is measured is the wrapper: pulls into the memory, sampling, the loop, the statistics row, not
the network transport).

Variants, interleaved:

* ``round``: ``training.run_round(interface)``: ``steps`` updates with everything around them;
* ``train on pre-sampled``: ``agent.train(b)`` for ``steps`` batches drawn beforehand (reference);
* ``sample + train``: ``agent.train(memory.sample())``, the bare loop with sampling.

A second table runs the same round with a no-op agent (``train`` returns seven constant floats like
SAC's metrics), giving the wrapper's own cost per update in microseconds, split into sampling
(``sampling_duration``), the agent call and the rest of the loop (pulls, broadcasts, counters, row).
"""
from __future__ import annotations

import functools
import time

import numpy as np

from _common import Options, Series, interleaved, table, target_line, timed

NAME = "overhead"


def _pendulum_spaces():
    import gymnasium
    env = gymnasium.make("Pendulum-v1")
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def _buffer(n: int, rng: np.random.Generator):
    from relayrl.buffer import Buffer

    obs = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    obs[:, 2] *= 8.0
    return Buffer(obs=obs, act=rng.uniform(-2, 2, (n, 1)).astype(np.float32),
                  rew=rng.uniform(-16, 0, n).astype(np.float32),
                  next_obs=(obs + rng.normal(0, 0.05, obs.shape)).astype(np.float32),
                  terminated=np.zeros(n, bool), truncated=(rng.random(n) < 1 / 200))


class AlwaysHasSamples:
    """Fake interface: ``per_pull`` fresh transitions on every pull (``prefill`` on the first)."""

    def __init__(self, prefill: int, per_pull: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self._first = _buffer(prefill, rng)
        self._pool = [_buffer(per_pull, rng) for _ in range(16)]
        self._i = 0
        self.pulls = 0
        self.broadcasts = 0

    def retrieve_buffer(self):
        self.pulls += 1
        if self._first is not None:
            first, self._first = self._first, None
            return first
        self._i = (self._i + 1) % len(self._pool)
        return self._pool[self._i]

    def broadcast_model(self, actor) -> None:
        self.broadcasts += 1


def _noop_agent_cls():
    import torch

    from relayrl.actor import ActorModule
    from relayrl.training import TrainingAgent

    class NoopActor(ActorModule):
        def __init__(self, observation_space, action_space):
            super().__init__(observation_space, action_space)
            self.w = torch.nn.Parameter(torch.zeros(1))

    class NoopAgent(TrainingAgent):
        """Does no learning: returns seven constant metrics, like SAC's dict."""

        METRICS = {k: 0.0 for k in ("loss_critic", "loss_actor", "loss_entropy_coef", "entropy_coef",
                                    "q_mean", "q_target_mean", "log_prob_mean")}

        def __init__(self, observation_space, action_space, device="cpu"):
            super().__init__(observation_space, action_space, device)
            self.actor = NoopActor(observation_space, action_space)

        def train(self, batch):
            return dict(self.METRICS)

        def get_actor(self):
            return self.actor

    return NoopAgent


def make_training(agent_cls, steps: int, seed: int = 0):
    from relayrl.memory import ReplayMemory
    from relayrl.training_offline import TorchTrainingOffline

    return TorchTrainingOffline(
        env_cls=_pendulum_spaces(),
        memory_cls=functools.partial(ReplayMemory, batch_size=256, capacity=1_000_000, seed=seed),
        training_agent_cls=agent_cls, epochs=1, rounds=1, steps=steps,
        update_model_interval=20, update_buffer_interval=20, max_training_steps_per_env_step=1.0,
        sleep_between_buffer_retrieval_attempts=0.01, start_training=256, device="cpu")


def run(opts: Options) -> list[str]:
    import torch

    from relayrl.algorithms.sac import SACAgent, SACConfig

    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    steps = 5 if opts.smoke else 20 if opts.quick else 200
    # the difference measured is small (a few %), so twice the usual repeats
    repeats = 1 if opts.smoke else 3 if opts.quick else 2 * opts.repeats
    out: list[str] = []

    # --- SAC round vs the same updates on pre-sampled batches -----------------------------------
    training = make_training(functools.partial(SACAgent, config=SACConfig(hidden_sizes=(256, 256))),
                             steps)
    interface = AlwaysHasSamples(prefill=10_000, per_pull=20)
    training.pull(interface)
    agent, memory = training.agent, training.memory
    presampled = [memory.sample() for _ in range(steps)]
    rows = []

    def round_():
        return timed(lambda: rows.append(training.run_round(interface)))

    def train_presampled():
        def go():
            for batch in presampled:
                agent.train(batch)
        return timed(go)

    def sample_and_train():
        def go():
            for _ in range(steps):
                agent.train(memory.sample())
        return timed(go)

    res = interleaved({"train on pre-sampled": train_presampled, "round": round_,
                       "sample + train": sample_and_train}, repeats, log=opts.log)
    series = [res["train on pre-sampled"], res["round"], res["sample + train"]]
    ms = [s.scaled(1e3 / steps) for s in series]
    ms[0].note = "reference: agent.train(b) on batches drawn beforehand"
    ms[1].note = "TorchTrainingOffline.run_round, real memory + SAC, fake interface"
    ms[2].note = "agent.train(memory.sample())"
    extra = (f"set-up: Pendulum-v1 spaces, ReplayMemory(batch 256), SACAgent hidden (256, 256), "
             f"{steps} updates per round, pulls of 20 samples every 20 updates, broadcast every 20 "
             f"(no-op), torch threads {opts.threads}")
    out.append(table("(a) wrapper overhead: TorchTrainingOffline round vs train() on pre-sampled "
                     "batches", ms, "ms/update", "train on pre-sampled", "time ratio",
                     header_extra=extra, higher_is_better=False))
    ratio = ms[1].median / ms[0].median
    cpu_ratio = ms[1].cpu_median / ms[0].cpu_median
    extra_us = (ms[1].median - ms[0].median) * 1e3
    # paired ratios (each repeat's round over the same repeat's reference) show the spread
    paired = sorted(r / p for r, p in zip(res["round"].values, res["train on pre-sampled"].values))
    out.append(f"round - pre-sampled: {extra_us:+.0f} us/update (wall medians), "
               f"{(ms[1].cpu_median - ms[0].cpu_median) * 1e3:+.0f} us/update (CPU medians); "
               f"per-repeat paired wall ratios: min {paired[0]:.3f}, median "
               f"{paired[len(paired) // 2]:.3f}, max {paired[-1]:.3f}")
    out.append(target_line("(a) round / train on pre-sampled (wall medians)", ratio, "<=", 1.03,
                           f"CPU-time ratio {cpu_ratio:.3f}; tmrl's TrainingOffline round: 1.11-1.23x"))
    opts.results["overhead_ratio"] = ratio
    opts.results["overhead_ratio_cpu"] = cpu_ratio
    assert rows and rows[-1]["total_updates"] > 0

    # --- no-op agent: the loop's own cost per update --------------------------------------------
    noop_steps = 50 if opts.smoke else 200 if opts.quick else 2000
    noop = make_training(_noop_agent_cls(), noop_steps)
    noop_interface = AlwaysHasSamples(prefill=10_000, per_pull=20, seed=1)
    noop.pull(noop_interface)
    noop_rows = []

    def noop_round() -> float:
        t0 = time.perf_counter()
        noop_rows.append(noop.run_round(noop_interface))
        return time.perf_counter() - t0

    res = interleaved({"round": noop_round}, repeats, log=opts.log)
    rows_used = noop_rows[1:]  # the first was the warm-up
    per_update = Series("whole round", [v / noop_steps * 1e6 for v in res["round"].values],
                        "run_round time / updates")
    sampling = Series("of which sampling", [r["sampling_duration"] * 1e6 for r in rows_used],
                      "row's sampling_duration: memory batch of 256")
    call = Series("of which agent.train call", [r["training_step_duration"] * 1e6 for r in rows_used],
                  "no-op agent")
    rest = Series("of which loop, pulls, broadcasts, row",
                  [t - s - c for t, s, c in zip(per_update.values, sampling.values, call.values)],
                  "the wrapper's own cost")
    out.append(table("(a') the loop's own cost: TorchTrainingOffline round with a no-op agent",
                     [per_update, sampling, call, rest], "us/update", "whole round", "share",
                     header_extra=f"set-up: as above with a no-op agent, {noop_steps} updates per "
                     "round", higher_is_better=False))
    opts.results["noop_us_per_update"] = per_update.median
    opts.results["noop_loop_us_per_update"] = rest.median
    return out
