#!/usr/bin/env python
"""Where a relayrl SAC update spends its time (torch.profiler), next to SB3's for reference.

    .venv/bin/python benchmarks/profile_sac.py [--threads 1] [--updates 200] [--sb3]

Prints the operators sorted by self CPU time over ``--updates`` updates (after a warm-up) and the
time per update with and without the profiler.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--updates", type=int, default=200)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--sb3", action="store_true", help="profile SB3's SAC.train too")
    a = p.parse_args()

    import gymnasium
    import torch
    from torch.profiler import ProfilerActivity, profile

    from _common import machine_header
    from bench_sac import BATCH, GAMMA, HIDDEN, LR, TAU, make_sb3, pendulum_data
    from relayrl.algorithms.sac import SACAgent, SACConfig
    from relayrl.buffer import Buffer
    from relayrl.memory import ReplayMemory

    torch.set_num_threads(a.threads)
    env = gymnasium.make("Pendulum-v1")
    data = pendulum_data(10_000)
    agent = SACAgent(env.observation_space, env.action_space, config=SACConfig(
        gamma=GAMMA, polyak=1 - TAU, lr_actor=LR, lr_critic=LR, lr_entropy=LR, hidden_sizes=HIDDEN))
    memory = ReplayMemory(nb_steps=1, batch_size=BATCH, capacity=10_000, seed=0)
    memory.append(Buffer(**data))
    print(machine_header())

    def relayrl_steps(n):
        for _ in range(n):
            agent.train(memory.sample())

    targets = [("relayrl SACAgent.train(memory.sample())", relayrl_steps)]
    if a.sb3:
        model = make_sb3(env, data)
        targets.append(("SB3 SAC.train", lambda n: model.train(gradient_steps=n, batch_size=BATCH)))

    for name, fn in targets:
        fn(20)
        t0 = time.perf_counter()
        fn(a.updates)
        plain = (time.perf_counter() - t0) / a.updates * 1e3
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn(a.updates)
        print(f"\n### {name}: {plain:.2f} ms/update without the profiler, threads {a.threads}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
