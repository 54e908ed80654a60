#!/usr/bin/env python
"""Learning on MuJoCo at equal environment steps: relayrl's agents against Stable-Baselines3's SAC.

One entry point, three commands::

    .venv/bin/python benchmarks/bench_mujoco.py run-all --budget-minutes 110   # the next jobs of the plan
    .venv/bin/python benchmarks/bench_mujoco.py run --task HalfCheetah-v5 --agent sac --seed 0
    .venv/bin/python benchmarks/bench_mujoco.py report                         # table + PNG of all results

A *job* is one (task, agent, seed): 100,000 environment steps, with a deterministic evaluation of 5
episodes on a separate environment (seeded ``10_000 + seed``) every 10,000 steps. Its result is one
JSON file in ``--out`` (default ``benchmarks/results/mujoco/``), rewritten after every evaluation.
``run-all`` runs the jobs of :data:`PLAN` that have no finished result, in order, each in its own
process, until ``--budget-minutes`` is spent (the machine has 2 cores: one job at a time, nothing
else should run beside it when wall-clock matters). A relayrl job cut off by the budget is stopped
like Ctrl+C (it checkpoints) and resumes from its checkpoint (kept in ``--runs``, default
``~/.cache/relayrl-bench/``) at the next ``run-all``; an SB3 job cut off starts again.

The contenders:

* ``sb3-sac``: ``SAC("MlpPolicy", env, learning_starts=10_000)``, everything else SB3's defaults
  (RL Baselines3 Zoo's setting for these tasks): Adam 3e-4, batch 256, (256, 256) networks, tau
  0.005, gamma 0.99, alpha tuned from 1.0, one update per step from step 10,000 on, uniform random
  actions before it; torch's default threads (2 here).
* ``sac``: relayrl's SAC with the same hyperparameters, through ``run_local`` (what ``relayrl
  train`` runs: the trainer, and 1 rollout-worker process over ZeroMQ on loopback):
  ``training.start_training`` 10,000, ``workers.random_steps`` 10,000, ``training.ratio_from_start``
  (so the ratio of one update per sample starts at sample 10,000, as SB3's does), learning rates
  3e-4, ``max_training_steps_per_env_step`` 1.
* ``td3``, ``redq``, ``droq``, ``crossq``: relayrl's other agents, same warm-up (see :data:`AGENTS`
  for their settings and update-to-data ratios).

Evaluation points: SB3's are exact multiples of 10,000 steps; relayrl's are the first statistics
row (a round of 1,000 updates) past each multiple, so up to about a round later; the table reads
each run at the first evaluation at or after 50k and 100k. Wall-clock to 100k: training time with
the evaluations' time taken out (relayrl: from launching the process, start-up, worker processes
and checkpoints included; SB3: from the start of ``learn``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

TASKS = ("HalfCheetah-v5", "Hopper-v5")
STEPS = 100_000
EVAL_EVERY = 10_000
EVAL_EPISODES = 5
WARMUP = 10_000
if os.environ.get("RELAYRL_BENCH_MUJOCO_SMOKE"):  # a few minutes' check that a job runs end to end
    STEPS, EVAL_EVERY, EVAL_EPISODES, WARMUP = 4_000, 2_000, 1, 1_000

COMMON = {  # relayrl settings of every relayrl job (with the seed, run_dir and env)
    "training.start_training": WARMUP, "training.ratio_from_start": True,
    "training.max_training_steps_per_env_step": 1.0,
    "training.epochs": 1000, "training.rounds": 10, "training.steps": 1000,
    "memory.capacity": 1_000_000, "memory.batch_size": 256,
    "workers.count": 1, "workers.random_steps": WARMUP, "workers.test_episode_interval": 0,
    "workers.env_steps_per_update": 1.0,
}

AGENTS = {
    "sac": {"algorithm": "sac", "sets": {"sac.lr_actor": 3e-4, "sac.lr_critic": 3e-4, "sac.lr_entropy": 3e-4},
            "note": "SB3's hyperparameters"},
    "td3": {"algorithm": "td3", "sets": {"td3.lr_actor": 3e-4, "td3.lr_critic": 3e-4},
            "note": "the authors' current settings (Adam 3e-4, 256-256, policy delay 2)"},
    "crossq": {"algorithm": "crossq", "sets": {}, "note": "the paper's settings, critics 512 wide (paper: 2048)"},
    "redq": {"algorithm": "redq", "sets": {"training.max_training_steps_per_env_step": 5.0,
                                           "workers.env_steps_per_update": 0.2,
                                           "redq.actor_update_interval": 5, "redq.lr_actor": 3e-4,
                                           "redq.lr_critic": 3e-4, "redq.lr_entropy": 3e-4},
             "note": "10 critics, 2 in the target, UTD 5 and the actor once per step (paper: UTD 20)"},
    "droq": {"algorithm": "droq", "sets": {"training.max_training_steps_per_env_step": 5.0,
                                           "workers.env_steps_per_update": 0.2,
                                           "droq.actor_update_interval": 5, "droq.lr_actor": 3e-4,
                                           "droq.lr_critic": 3e-4, "droq.lr_entropy": 3e-4},
             "note": "dropout 0.01 + layer norm, UTD 5 and the actor once per step (paper: UTD 20)"},
}

PLAN = [
    ("HalfCheetah-v5", "sb3-sac", 0), ("HalfCheetah-v5", "sac", 0), ("HalfCheetah-v5", "crossq", 0),
    ("HalfCheetah-v5", "sb3-sac", 1), ("HalfCheetah-v5", "sac", 1),
    ("HalfCheetah-v5", "sb3-sac", 2), ("HalfCheetah-v5", "sac", 2),
    ("Hopper-v5", "sb3-sac", 0), ("Hopper-v5", "sac", 0), ("Hopper-v5", "crossq", 0),
    ("HalfCheetah-v5", "td3", 0), ("Hopper-v5", "td3", 0),
    ("HalfCheetah-v5", "droq", 0), ("Hopper-v5", "droq", 0),
    ("HalfCheetah-v5", "redq", 0), ("Hopper-v5", "redq", 0),
]
"""The jobs ``run-all`` works through, in this order: the SAC comparison first, then CrossQ, then
the rest (3 seeds for SB3 SAC and relayrl SAC on HalfCheetah, 1 for everything else)."""


def job_name(task: str, agent: str, seed: int) -> str:
    return f"{task}-{agent}-s{seed}"


def _write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


def _evaluate(env, act, episodes: int = EVAL_EPISODES) -> list[float]:
    returns = []
    for _ in range(episodes):
        obs, _ = env.reset()
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


# ------------------------------------------------------------------------------------------------
# the children: one job each
# ------------------------------------------------------------------------------------------------
def child_relayrl(task: str, agent: str, seed: int, out_path: str, run_dir: str) -> None:
    import gymnasium
    import numpy as np

    from relayrl import trainer as trainer_module
    from relayrl.config import RunConfig, with_overrides
    from relayrl.roles.local_run import run_local

    signal.signal(signal.SIGINT, signal.default_int_handler)
    launched = time.time()
    spec = AGENTS[agent]
    sets = {"env": task, "seed": seed, "run_dir": run_dir, **COMMON, **spec["sets"]}
    cfg = with_overrides(RunConfig(), algorithm=spec["algorithm"])
    cfg = with_overrides(cfg, **sets)
    result = {"task": task, "agent": agent, "seed": seed, "framework": "relayrl", "config": cfg.to_dict(),
              "evals": [], "finished": False, "wall": 0.0, "process": 0.0, "pieces": 0}
    if os.path.exists(out_path):  # resuming: keep what the earlier pieces measured
        with open(out_path) as f:
            before = json.load(f)
        result.update({k: before[k] for k in ("evals", "wall", "process", "pieces") if k in before})
    result["pieces"] += 1
    eval_env = gymnasium.make(task)
    eval_env.reset(seed=10_000 + seed)
    state = {"next": (len(result["evals"]) + 1) * EVAL_EVERY, "wall0": result["wall"],
             "process0": result["process"], "eval_time": 0.0, "rounds": 0.0}
    original_log = trainer_module.Trainer._log

    def log_and_evaluate(self, row, loggers, bar):
        original_log(self, row, loggers, bar)
        state["rounds"] += float(row["round_time"])
        samples = int(row["total_samples"])
        if samples < state["next"]:
            return
        while state["next"] <= samples:
            state["next"] += EVAL_EVERY
        actor = self.training.agent.get_actor()
        e0 = time.perf_counter()
        returns = _evaluate(eval_env, lambda obs: actor.act(np.asarray(obs), test=True))
        state["eval_time"] += time.perf_counter() - e0
        result["wall"] = state["wall0"] + state["rounds"]
        result["process"] = state["process0"] + time.time() - launched - state["eval_time"]
        result["evals"].append({"env_steps": samples, "updates": int(row["total_updates"]),
                                "return": float(np.mean(returns)), "returns": returns,
                                "wall": result["wall"], "process": result["process"]})
        if samples >= STEPS:
            result["finished"] = True
        _write_json(out_path, result)
        print(f"{job_name(task, agent, seed)}: {samples} steps, return {np.mean(returns):.0f}, "
              f"{result['process']:.0f} s", flush=True)
        if result["finished"]:
            raise KeyboardInterrupt  # done: the trainer checkpoints and stops its workers

    trainer_module.Trainer._log = log_and_evaluate
    try:
        run_local(cfg, progress=False, print_tables=False)
    except KeyboardInterrupt:
        pass


def child_sb3(task: str, seed: int, out_path: str) -> None:
    import gymnasium
    import numpy as np
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    launched = time.time()
    eval_env = gymnasium.make(task)
    eval_env.reset(seed=10_000 + seed)
    model = SAC("MlpPolicy", task, learning_starts=WARMUP, seed=seed, device="cpu", verbose=0)
    result = {"task": task, "agent": "sb3-sac", "seed": seed, "framework": "stable-baselines3",
              "config": {"learning_starts": WARMUP, "torch_threads": torch.get_num_threads()},
              "evals": [], "finished": False, "wall": 0.0, "process": 0.0, "pieces": 1}

    class EvalEvery(BaseCallback):
        def __init__(self):
            super().__init__()
            self.t0 = time.perf_counter()
            self.eval_time = 0.0

        def _on_step(self) -> bool:
            if self.num_timesteps % EVAL_EVERY:
                return True
            e0 = time.perf_counter()
            returns = _evaluate(eval_env, lambda obs: self.model.predict(obs, deterministic=True)[0])
            self.eval_time += time.perf_counter() - e0
            result["wall"] = e0 - self.t0 - self.eval_time + 0.0
            result["process"] = time.time() - launched - self.eval_time
            result["evals"].append({"env_steps": int(self.num_timesteps), "return": float(np.mean(returns)),
                                    "returns": returns, "wall": result["wall"], "process": result["process"]})
            result["finished"] = self.num_timesteps >= STEPS
            _write_json(out_path, result)
            print(f"{job_name(task, 'sb3-sac', seed)}: {self.num_timesteps} steps, return "
                  f"{np.mean(returns):.0f}, {result['process']:.0f} s", flush=True)
            return True

    model.learn(total_timesteps=STEPS, callback=EvalEvery())


# ------------------------------------------------------------------------------------------------
# the parent
# ------------------------------------------------------------------------------------------------
def result_path(out: str, task: str, agent: str, seed: int) -> str:
    return os.path.join(out, job_name(task, agent, seed) + ".json")


def load_result(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def run_job(task: str, agent: str, seed: int, out: str, runs: str, timeout: float | None) -> bool:
    """Run one job in its own process (its own session: stopped as a group); True if it finished."""
    path = result_path(out, task, agent, seed)
    if agent == "sb3-sac" and os.path.exists(path) and not (load_result(path) or {}).get("finished"):
        os.remove(path)  # an SB3 job cannot resume: start it again
    argv = [sys.executable, os.path.abspath(__file__), "child", "--task", task, "--agent", agent,
            "--seed", str(seed), "--out", out, "--runs", runs]
    log_path = os.path.join(runs, job_name(task, agent, seed) + ".log")
    os.makedirs(runs, exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] {job_name(task, agent, seed)}: started (log {log_path})", flush=True)
    with open(log_path, "a") as logfile:
        proc = subprocess.Popen(argv, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"  budget spent: stopping {job_name(task, agent, seed)} (it resumes next time)", flush=True)
            for sig, grace in ((signal.SIGINT, 120.0), (signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
    result = load_result(path) or {}
    last = result.get("evals", [{}])[-1] if result.get("evals") else {}
    print(f"  {job_name(task, agent, seed)}: exit {proc.returncode}, {last.get('env_steps', 0)} steps, "
          f"last return {last.get('return', float('nan')):.0f}, finished={bool(result.get('finished'))}",
          flush=True)
    return bool(result.get("finished"))


def run_all(args) -> None:
    deadline = time.monotonic() + args.budget_minutes * 60
    for task, agent, seed in PLAN:
        if args.only and agent not in args.only.split(","):
            continue
        if (load_result(result_path(args.out, task, agent, seed)) or {}).get("finished"):
            continue
        left = deadline - time.monotonic()
        if left < 60:
            print("budget spent; run run-all again to continue", flush=True)
            return
        run_job(task, agent, seed, args.out, args.runs, left)
    print("every job of the plan has a finished result", flush=True)


def _at(evals: list[dict], steps: int) -> float | None:
    """The return of the first evaluation at or after ``steps`` environment steps."""
    for point in evals:
        if point["env_steps"] >= steps:
            return point["return"]
    return None


def _wall_at(evals: list[dict], steps: int) -> float | None:
    for point in evals:
        if point["env_steps"] >= steps:
            return point["process"]
    return None


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:7.0f}"
    return f"{mean:7.0f} [{min(values):.0f}, {max(values):.0f}]"


def report(args) -> None:
    results = [r for r in (load_result(os.path.join(args.out, name)) for name in sorted(os.listdir(args.out))
                           if name.endswith(".json")) if r]
    lines = [f"MuJoCo learning benchmark ({STEPS:,} env steps, {EVAL_EPISODES} deterministic evaluation "
             f"episodes every {EVAL_EVERY:,}); results in {args.out}", ""]
    for task in TASKS:
        rows = [r for r in results if r["task"] == task]
        if not rows:
            continue
        lines.append(f"{task}: mean [min, max] over seeds")
        lines.append(f"  {'agent':<9} {'seeds':>5}  {'return at 50k':<22} {'return at 100k':<22} "
                     f"{'wall to 100k (s)':>16} {'x SB3 SAC':>9}")
        agents = ["sb3-sac"] + [a for a in AGENTS if a != "sb3-sac"]
        sb3_wall = [_wall_at(r["evals"], STEPS) for r in rows if r["agent"] == "sb3-sac"]
        sb3_wall = statistics.median([w for w in sb3_wall if w]) if any(sb3_wall) else None
        for agent in agents:
            runs = [r for r in rows if r["agent"] == agent]
            if not runs:
                continue
            at50 = [v for v in (_at(r["evals"], 50_000) for r in runs) if v is not None]
            at100 = [v for v in (_at(r["evals"], STEPS) for r in runs if r.get("finished")) if v is not None]
            walls = [w for w in (_wall_at(r["evals"], STEPS) for r in runs if r.get("finished")) if w]
            wall = statistics.median(walls) if walls else None
            ratio = f"{wall / sb3_wall:9.2f}" if wall and sb3_wall else f"{'-':>9}"
            unfinished = sum(not r.get("finished") for r in runs)
            note = f"  ({unfinished} unfinished)" if unfinished else ""
            lines.append(f"  {agent:<9} {len(runs):>5}  {_cell(at50):<22} {_cell(at100):<22} "
                         f"{(f'{wall:.0f}' if wall else '-'):>16} {ratio}{note}")
        lines.append("")
    for agent, spec in AGENTS.items():
        lines.append(f"  {agent}: {spec['note']}")
    text = "\n".join(lines)
    print(text)
    if args.table:
        with open(args.table, "w") as f:
            f.write(text + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no PNG: matplotlib is not installed; .venv/bin/pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, len(TASKS), figsize=(6 * len(TASKS), 4.2), squeeze=False)
    for ax, task in zip(axes[0], TASKS):
        for agent in ["sb3-sac", *AGENTS]:
            runs = [r for r in results if r["task"] == task and r["agent"] == agent and r["evals"]]
            if not runs:
                continue
            grid = list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
            curves = [[_at(r["evals"], s) for s in grid] for r in runs]
            xs, mean, low, high = [], [], [], []
            for i, s in enumerate(grid):
                values = [c[i] for c in curves if c[i] is not None]
                if values:
                    xs.append(s)
                    mean.append(statistics.fmean(values))
                    low.append(min(values))
                    high.append(max(values))
            line, = ax.plot(xs, mean, label=f"{agent} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
            if len(runs) > 1:
                ax.fill_between(xs, low, high, alpha=0.2, color=line.get_color())
        ax.set_title(task)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(f"mean return of {EVAL_EPISODES} deterministic episodes")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    print(f"curves: {args.png}")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    default_out = os.path.join(HERE, "results", "mujoco")
    default_runs = os.path.join(os.path.expanduser("~"), ".cache", "relayrl-bench")
    for name in ("run-all", "run", "child", "report"):
        q = sub.add_parser(name)
        q.add_argument("--out", default=default_out, help="folder of the results (JSON per job)")
        q.add_argument("--runs", default=default_runs, help="folder of relayrl's run dirs and the logs")
        if name in ("run", "child"):
            q.add_argument("--task", choices=TASKS, required=True)
            q.add_argument("--agent", choices=["sb3-sac", *AGENTS], required=True)
            q.add_argument("--seed", type=int, default=0)
        if name == "run-all":
            q.add_argument("--budget-minutes", type=float, default=110.0,
                           help="stop starting/continuing jobs after this long (default 110)")
            q.add_argument("--only", default="", help="comma-separated agents to run (default: all)")
        if name == "report":
            q.add_argument("--table", default=os.path.join(default_out, "table.txt"))
            q.add_argument("--png", default=os.path.join(default_out, "curves.png"))
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    if args.command == "child":
        path = result_path(args.out, args.task, args.agent, args.seed)
        if args.agent == "sb3-sac":
            child_sb3(args.task, args.seed, path)
        else:
            child_relayrl(args.task, args.agent, args.seed, path,
                          os.path.join(args.runs, job_name(args.task, args.agent, args.seed)))
    elif args.command == "run":
        run_job(args.task, args.agent, args.seed, args.out, args.runs, None)
    elif args.command == "run-all":
        run_all(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
