"""Learning curves before and after the optimisations: do the fast SAC updates learn the same?

Three implementations of the same SAC (same hyperparameters: Adam 3e-4, batch 256, (256, 256) ReLU
networks, gamma 0.99, tau 0.005, alpha tuned from 1.0 towards -dim(A)) train on Pendulum-v1 in the
same synchronous loop, one seed after the other, the variants interleaved:

* ``bare``: the plain CleanRL-style update of ``bench_sac.py`` (two ``nn.Linear`` critics, plain
  Adam, a Python polyak loop, one backward per loss) computing the same losses (SB3's
  formulation): the code *before* the optimisations;
* ``relayrl serial``: ``SACAgent(parallel_update=False)``: batched critic ensemble, fused Adam,
  foreach polyak, one backward for the actor and alpha, SB3's order of steps;
* ``relayrl parallel``: ``SACAgent(parallel_update=True)``: the same with the critic step and the
  actor step run at the same time from the parameters at the start of the update (the default on
  CPUs with 2 cores or more).

The loop (the same for all three): the current stochastic policy acts from the first step; each
transition goes into relayrl's ``ReplayMemory`` (seeded); from 256 stored transitions on, one update
per environment step; every ``eval_every`` steps, 5 deterministic episodes on a separate, seeded
environment. Per seed, the three variants see the same environment seeds and the same memory seed
(the networks' initial weights and the policy noise differ between implementations).

Statistics: per variant, the mean (and standard deviation over seeds) of the evaluation return at
each evaluation step; per seed, the area under the curve (mean evaluation return over all
evaluations) and the first step where the evaluation reached -200. Each pair of variants is
compared by an exact two-sided permutation test on the seeds' areas (all ways of splitting the
2n areas into two groups of n): a p-value >= 0.05 means that no difference is detectable at this
number of seeds. A permutation test is also run on the final returns.
"""
from __future__ import annotations

import itertools
import math
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _common import Options, machine_header, target_line  # noqa: E402

NAME = "learning"
THRESHOLD = -200.0
VARIANTS = ("bare", "relayrl serial", "relayrl parallel")


def permutation_p(a: list[float], b: list[float]) -> float:
    """Exact two-sided permutation p-value of the difference of means of ``a`` and ``b``."""
    values = list(a) + list(b)
    n = len(a)
    observed = abs(statistics.fmean(a) - statistics.fmean(b))
    total = sum(values)
    count = hits = 0
    for group in itertools.combinations(range(len(values)), n):
        s = sum(values[i] for i in group)
        diff = abs(s / n - (total - s) / (len(values) - n))
        hits += diff >= observed - 1e-9
        count += 1
    return hits / count


def _make_learner(variant: str, obs_space, act_space):
    """``(train(batch), act(obs, test))`` of one implementation."""
    if variant == "bare":
        from bench_sac import make_bare

        update = make_bare(int(obs_space.shape[0]), int(act_space.shape[0]), act_space.low, act_space.high)

        def train(batch):
            obs, act, rew, next_obs, terminated, _ = batch
            update(obs, act, rew, next_obs, terminated)

        return train, update.act
    from relayrl.algorithms.sac import SACAgent

    agent = SACAgent(obs_space, act_space, device="cpu", parallel_update=(variant == "relayrl parallel"))
    return agent.train, agent.actor.act


def learning_run(variant: str, seed: int, total_steps: int, eval_every: int,
                 eval_episodes: int = 5) -> dict:
    """One training run; returns the evaluation curve and the time spent."""
    import gymnasium
    import torch

    from relayrl.buffer import Buffer
    from relayrl.memory import ReplayMemory

    torch.manual_seed(seed)
    env = gymnasium.make("Pendulum-v1")
    eval_env = gymnasium.make("Pendulum-v1")
    train, act = _make_learner(variant, env.observation_space, env.action_space)
    memory = ReplayMemory(nb_steps=1, device="cpu", batch_size=256, capacity=max(total_steps, 256),
                          seed=seed)
    obs, _ = env.reset(seed=seed)
    curve, train_time = [], 0.0
    for step in range(1, total_steps + 1):
        action = act(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        memory.append(Buffer(obs=obs[None].astype(np.float32), act=np.asarray(action, np.float32)[None],
                             rew=np.array([reward], np.float32), next_obs=next_obs[None].astype(np.float32),
                             terminated=np.array([terminated]), truncated=np.array([truncated])))
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
        if len(memory) >= 256:
            t0 = time.perf_counter()
            train(memory.sample())
            train_time += time.perf_counter() - t0
        if step % eval_every == 0:
            returns = []
            for k in range(eval_episodes):
                o, _ = eval_env.reset(seed=10_000 + 100 * seed + k)
                total, done = 0.0, False
                while not done:
                    o, r, term, trunc, _ = eval_env.step(act(o, test=True))
                    total += float(r)
                    done = term or trunc
                returns.append(total)
            curve.append((step, statistics.fmean(returns)))
    env.close()
    eval_env.close()
    return {"variant": variant, "seed": seed, "curve": curve, "train_time": train_time}


def _first_reach(curve) -> float:
    for step, ret in curve:
        if ret >= THRESHOLD:
            return step
    return float("nan")


def run(opts: Options) -> list[str]:
    import torch

    torch.set_num_threads(1)
    if opts.smoke:
        seeds, total, every = 1, 300, 150
    elif opts.quick:
        seeds, total, every = 2, 1000, 500
    else:
        seeds, total, every = opts.learning_seeds, opts.learning_steps, 500
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for seed in range(seeds):
        order = VARIANTS[seed % 3:] + VARIANTS[:seed % 3]
        for variant in order:
            t0 = time.perf_counter()
            r = learning_run(variant, seed, total, every)
            runs[variant].append(r)
            print(f"  {variant} seed {seed}: final {r['curve'][-1][1]:.0f}, "
                     f"reached -200 at {_first_reach(r['curve'])}, {time.perf_counter() - t0:.0f} s", flush=True)
    steps = [s for s, _ in runs[VARIANTS[0]][0]["curve"]]
    lines = ["### learning curves: SAC before (bare) and after the optimisations (serial, parallel), "
             "Pendulum-v1", "",
             machine_header(f"set-up: synchronous loop, 1 update per env step from 256 transitions, "
                            f"{total} env steps, eval every {every} steps (5 deterministic episodes), "
                            f"{seeds} seeds, torch threads 1 (+ the critic thread in parallel mode)"), "",
             "| env steps | " + " | ".join(f"{v}: mean return (sd)" for v in VARIANTS) + " |",
             "|---:|" + "---:|" * len(VARIANTS)]
    for i, step in enumerate(steps):
        cells = []
        for v in VARIANTS:
            vals = [r["curve"][i][1] for r in runs[v]]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.fmean(vals):.0f} ({sd:.0f})")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += ["", "| variant | area under the curve, per seed | mean | first eval >= -200, per seed | "
              "median | update time, s (median) |", "|---|---|---:|---|---:|---:|"]
    auc = {v: [statistics.fmean(ret for _, ret in r["curve"]) for r in runs[v]] for v in VARIANTS}
    final = {v: [r["curve"][-1][1] for r in runs[v]] for v in VARIANTS}
    for v in VARIANTS:
        reach = [_first_reach(r["curve"]) for r in runs[v]]
        finite = [x for x in reach if x == x]
        lines.append(f"| {v} | {', '.join(f'{x:.0f}' for x in auc[v])} | {statistics.fmean(auc[v]):.0f} | "
                     f"{', '.join('never' if x != x else f'{x:.0f}' for x in reach)} | "
                     f"{statistics.median(finite) if finite else float('nan'):.0f} | "
                     f"{statistics.median(r['train_time'] for r in runs[v]):.1f} |")
    lines += ["", "| comparison | permutation p, area under the curve | permutation p, final return |",
              "|---|---:|---:|"]
    pvals = {}
    for a, b in (("bare", "relayrl serial"), ("bare", "relayrl parallel"),
                 ("relayrl serial", "relayrl parallel")):
        if seeds >= 2:
            p_auc, p_final = permutation_p(auc[a], auc[b]), permutation_p(final[a], final[b])
        else:
            p_auc = p_final = float("nan")
        pvals[(a, b)] = p_auc
        lines.append(f"| {a} vs {b} | {p_auc:.3f} | {p_final:.3f} |")
    lines.append("")
    lines.append("(p >= 0.05: no difference detectable with these seeds; the smallest p an exact test "
                 f"can give with {seeds} seeds per group is {1 / math.comb(2 * seeds, seeds) * 2:.3f})"
                 if seeds >= 2 else "(one seed: no test)")
    out = ["\n".join(lines)]
    if seeds >= 2:
        worst = min(pvals.values())
        out.append(target_line("(c) learning curves: smallest permutation p over the pairs (area under "
                               "the curve)", worst, ">=", 0.05,
                               "same learning before and after the optimisations"))
    opts.results["learning"] = {v: [{"seed": r["seed"], "curve": r["curve"], "train_time": r["train_time"]}
                                    for r in runs[v]] for v in VARIANTS}
    return out
