"""(d) End to end on Pendulum-v1: environment steps and wall-clock until the mean deterministic test
return reaches -200, relayrl's embedded default vs Stable-Baselines3's SAC with default settings.

relayrl: ``run_local(config)`` (what ``relayrl train`` runs: the trainer and 2 rollout-worker
processes over ZeroMQ on loopback) with the default ``RunConfig`` except

* ``run_dir`` in a temporary folder and ``seed`` = the benchmark seed;
* ``workers.test_episode_interval = 1`` (default 5): one deterministic test episode after every
  training episode, so the return is measured often enough (test episodes run in the workers and
  send no transitions, so they do not change what the trainer learns from);
* ``training.epochs`` raised to ``--e2e-epochs`` (default 20; the default 10 epochs = 10,000
  updates) only as a ceiling: the run is stopped (SIGINT, as Ctrl+C) as soon as the target is seen.

Three criteria for relayrl, the first one being the like-for-like match of SB3's (the targets use
it):

* *eval, like SB3*: at the end of the first round that reaches each multiple of 1,000 samples
  (``--sb3-eval-every``), the trainer process runs 5 deterministic episodes of its current policy
  on a separate environment seeded like SB3's (between two rounds, so no ``round_time`` includes
  them), and the first mean >= -200 counts; its step counts are the first rounds past each
  multiple of 1,000, a little later than SB3's exact multiples;

and, read from the run's ``stats.csv`` (one row per round of 200 updates):

* *first row*: the first round whose ``return_test`` (mean over the test episodes that finished
  in that round, usually 1-2 of them) is >= -200 (the definition of the task);
* *5-episode*: the first round where the latest rounds holding >= 5 test episodes average >= -200
  (closer to SB3's 5-episode evaluation, and less lucky).

Env steps = ``total_samples`` at that row; wall-clock = sum of ``round_time`` up to it (the trainer's
training time, waits for samples included); "process" = from launching the process until the row
was seen (imports, worker start-up, checkpoints included; the file is polled every 0.25 s).

SB3: ``SAC("MlpPolicy", "Pendulum-v1", seed=seed)``, all defaults (learning_starts 100, buffer 1e6,
batch 256, train_freq 1, gradient_steps 1, torch's default thread count unless
``--sb3-threads``), with a callback that, like ``EvalCallback``, runs 5 deterministic episodes on a
separate environment every 1,000 steps (``--sb3-eval-every``) and stops at the first mean >= -200,
so its step counts are multiples of 1,000 while relayrl's come in rounds of about 200. Wall-clock =
training time with the evaluations' time taken out; "process" = from launch, evaluations included.

SB3 with relayrl's learning rate: relayrl's embedded default uses SAC learning rates of 1e-3 (the
value RL Baselines3 Zoo tuned for Pendulum-v1; SB3's default is 3e-4), so SB3 also runs with
``learning_rate=1e-3`` (same callback), unless ``--no-sb3-matched``: the targets compare with SB3's
defaults, as the issue defines them, and this third row separates what relayrl's speed gives from
what the learning rate gives ("same hyperparameters" line).

Each run has its own process, one after the other; which goes first rotates from one seed to the
next.
"""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _common import Options, machine_header, sb3_skip_note, sb3_version, target_line  # noqa: E402

NAME = "e2e"
THRESHOLD = -200.0
LAUNCHED = float(os.environ.get("RELAYRL_BENCH_LAUNCHED", time.time()))


# ------------------------------------------------------------------------------------------------
# reading relayrl's stats.csv
# ------------------------------------------------------------------------------------------------
def _float(x: str) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def read_rows(path: str) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def reached(rows: list[dict], threshold: float = THRESHOLD) -> dict:
    """The first-row and the 5-episode criteria (None where not reached)."""
    out = {"first_row": None, "five_episodes": None}
    wall = 0.0
    window: list[tuple[float, int]] = []  # (mean return, episodes) of recent rounds with tests
    for i, row in enumerate(rows):
        wall += _float(row.get("round_time"))
        ret = _float(row.get("return_test"))
        episodes = _float(row.get("episodes_test"))
        count = 0 if math.isnan(episodes) else int(episodes)
        point = {"row": i, "env_steps": int(_float(row.get("total_samples"))),
                 "updates": int(_float(row.get("total_updates"))), "wall": wall, "return": ret}
        if not math.isnan(ret) and count > 0:
            if out["first_row"] is None and ret >= threshold:
                out["first_row"] = point
            window.append((ret, count))
            # keep the newest rounds that hold at least 5 test episodes
            while len(window) > 1 and sum(c for _, c in window[1:]) >= 5:
                window.pop(0)
            episodes = sum(c for _, c in window)
            if episodes >= 5 and out["five_episodes"] is None:
                mean = sum(r * c for r, c in window) / episodes
                if mean >= threshold:
                    out["five_episodes"] = dict(point, **{"return": mean})
    return out


def read_evals(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return []


def reached_eval(evals: list[dict], threshold: float = THRESHOLD) -> dict | None:
    """The first SB3-like evaluation (5 deterministic episodes) whose mean is >= threshold."""
    return next((dict(e) for e in evals if e["return"] >= threshold), None)


# ------------------------------------------------------------------------------------------------
# children
# ------------------------------------------------------------------------------------------------
def parse_sets(items: list[str]) -> dict:
    """``["training.torch_threads=1", ...]`` -> ``{"training.torch_threads": 1}`` (JSON values)."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def child_relayrl(seed: int, run_dir: str, epochs: int, sets: list[str] = (), eval_every: int = 1000,
                  eval_path: str = "") -> None:
    import gymnasium
    import numpy as np

    from relayrl import trainer as trainer_module
    from relayrl.config import RunConfig, with_overrides
    from relayrl.roles.local_run import run_local

    # the parent stops this run with SIGINT (as Ctrl+C): make sure it is not ignored, as it is in a
    # process launched in the background by a non-interactive shell
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cfg = with_overrides(RunConfig(), **{"run_dir": run_dir, "seed": seed, "training.epochs": epochs,
                                         "workers.test_episode_interval": 1, **parse_sets(list(sets))})
    print(json.dumps({"config": cfg.to_dict()}), flush=True)

    # SB3-like evaluation: 5 deterministic episodes of the trainer's current policy on a separate,
    # seeded environment, at the end of the first round that reaches each multiple of eval_every
    # samples. It runs between two rounds, so no round's round_time includes it.
    eval_env = gymnasium.make("Pendulum-v1")
    eval_env.reset(seed=10_000 + seed)
    state = {"next": eval_every, "wall": 0.0, "evals": []}
    original_log = trainer_module.Trainer._log

    def logging_with_eval(self, row, loggers, bar):
        original_log(self, row, loggers, bar)
        state["wall"] += float(row["round_time"])
        if not eval_path or int(row["total_samples"]) < state["next"]:
            return
        while state["next"] <= int(row["total_samples"]):
            state["next"] += eval_every
        actor = self.training.agent.get_actor()
        returns = []
        for _ in range(5):
            obs, _ = eval_env.reset()
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = eval_env.step(actor.act(np.asarray(obs), test=True))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
        state["evals"].append({"env_steps": int(row["total_samples"]), "wall": state["wall"],
                               "return": float(np.mean(returns)), "process": time.time() - LAUNCHED})
        with open(eval_path + ".tmp", "w") as f:
            json.dump(state["evals"], f)
        os.replace(eval_path + ".tmp", eval_path)

    trainer_module.Trainer._log = logging_with_eval
    try:
        run_local(cfg, progress=False, print_tables=False)
    except KeyboardInterrupt:
        pass
    finally:
        import torch  # the trainer set its thread count in this process: report it
        with open(os.path.join(os.path.dirname(run_dir), "threads.json"), "w") as f:
            json.dump({"torch_threads": torch.get_num_threads()}, f)


def child_sb3(seed: int, max_steps: int, budget: float, threads: int, out_path: str,
              eval_every: int = 1000, learning_rate: float = 0.0) -> None:
    import gymnasium
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    if threads > 0:
        torch.set_num_threads(threads)
    launched = float(os.environ.get("RELAYRL_BENCH_LAUNCHED", time.time()))
    eval_env = Monitor(gymnasium.make("Pendulum-v1"))
    eval_env.reset(seed=10_000 + seed)
    kwargs = {"learning_rate": learning_rate} if learning_rate > 0 else {}  # 0: SB3's default
    model = SAC("MlpPolicy", "Pendulum-v1", seed=seed, device="cpu", verbose=0, **kwargs)
    result = {"evals": [], "reached": None, "threads": torch.get_num_threads()}

    class EvalEvery(BaseCallback):
        def __init__(self):
            super().__init__()
            self.t0 = time.perf_counter()
            self.eval_time = 0.0

        def _on_step(self) -> bool:
            if self.num_timesteps % eval_every != 0:
                return time.perf_counter() - self.t0 < budget
            e0 = time.perf_counter()
            train_wall = e0 - self.t0 - self.eval_time
            mean, _std = evaluate_policy(self.model, eval_env, n_eval_episodes=5, deterministic=True)
            self.eval_time += time.perf_counter() - e0
            point = {"env_steps": int(self.num_timesteps), "wall": train_wall, "return": float(mean),
                     "process": time.time() - launched}
            result["evals"].append(point)
            with open(out_path, "w") as f:
                json.dump(result, f)
            if mean >= THRESHOLD:
                result["reached"] = point
                return False
            return time.perf_counter() - self.t0 < budget

    model.learn(total_timesteps=max_steps, callback=EvalEvery())
    with open(out_path, "w") as f:
        json.dump(result, f)


# ------------------------------------------------------------------------------------------------
# the parent side
# ------------------------------------------------------------------------------------------------
def _stop(proc: subprocess.Popen, grace: float = 60.0) -> None:
    """SIGINT (the trainer saves and stops its workers), then SIGTERM, then SIGKILL to the child's own
    process group (it was started in a new session, so the group is exactly its processes)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_relayrl(seed: int, opts: Options, log) -> dict:
    with tempfile.TemporaryDirectory(prefix="relayrl-bench-e2e-") as tmp:
        run_dir = os.path.join(tmp, "run")
        stats = os.path.join(run_dir, "stats.csv")
        launched = time.time()
        errfile = open(os.path.join(tmp, "stderr.txt"), "w+")
        eval_path = os.path.join(tmp, "evals.json")
        argv = [sys.executable, os.path.abspath(__file__), "relayrl", "--seed", str(seed),
                "--run-dir", run_dir, "--epochs", str(opts.e2e_epochs),
                "--eval-every", str(opts.sb3_eval_every), "--eval-path", eval_path]
        for item in opts.e2e_set:
            argv += ["--set", item]
        env = dict(os.environ)
        for item in opts.e2e_env:
            name, _, value = item.partition("=")
            env[name.strip()] = value
        env["RELAYRL_BENCH_LAUNCHED"] = str(launched)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errfile, start_new_session=True,
                                env=env)
        seen = {"first_row": None, "five_episodes": None, "eval": None}
        deadline = time.monotonic() + opts.e2e_budget
        nrows = 0
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.25)
                rows = read_rows(stats)
                if len(rows) == nrows:
                    continue
                nrows = len(rows)
                crit = dict(reached(rows), eval=reached_eval(read_evals(eval_path)))
                for key in seen:
                    if crit[key] is not None and seen[key] is None:
                        seen[key] = dict(crit[key], process=time.time() - launched)
                        log(f"    relayrl seed {seed}: {key} reached at {seen[key]['env_steps']} steps")
                if all(v is not None for v in seen.values()):
                    break
        finally:
            _stop(proc)
            errfile.seek(0)
            err = errfile.read()
            errfile.close()
        rows = read_rows(stats)
        evals = read_evals(eval_path)
        crit = dict(reached(rows), eval=reached_eval(evals))
        for key in seen:  # rows written between the last poll and the stop
            if seen[key] is None and crit[key] is not None:
                seen[key] = dict(crit[key], process=float("nan"))
        last = rows[-1] if rows else {}
        trained = sum(_float(r.get("round_time")) for r in rows)
        threads = None
        try:
            with open(os.path.join(tmp, "threads.json")) as f:
                threads = json.load(f)["torch_threads"]
        except (OSError, ValueError, KeyError):
            pass
        return {"seed": seed, "rows": len(rows), **seen, "evals": evals,
                "last_env_steps": int(_float(last.get("total_samples"))) if rows else 0,
                "last_updates": int(_float(last.get("total_updates"))) if rows else 0,
                "train_wall": trained, "process_wall": time.time() - launched, "threads": threads,
                "stderr_tail": (err or "")[-2000:] if not rows else ""}


def relayrl_learning_rate(sets) -> float:
    """The learning rate of relayrl's SAC in (d) when it differs from SB3's default (3e-4) and is the
    same for the actor, critics and entropy coefficient (SB3 has one); else 0."""
    from relayrl.config import RunConfig, with_overrides

    sac = with_overrides(RunConfig(), **parse_sets(list(sets))).agent
    lrs = {sac.lr_actor, sac.lr_critic, sac.lr_entropy}
    lr = lrs.pop() if len(lrs) == 1 else 0.0
    return lr if lr != 3e-4 else 0.0


def run_sb3(seed: int, opts: Options, threads: int, learning_rate: float = 0.0) -> dict:
    with tempfile.TemporaryDirectory(prefix="relayrl-bench-e2e-sb3-") as tmp:
        out = os.path.join(tmp, "out.json")
        env = dict(os.environ, RELAYRL_BENCH_LAUNCHED=str(time.time()))
        for item in opts.e2e_env:
            name, _, value = item.partition("=")
            env[name.strip()] = value
        with open(os.path.join(tmp, "stderr.txt"), "w+") as errfile:
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "sb3", "--seed", str(seed),
                                     "--max-steps", str(20_000), "--budget", str(opts.e2e_budget),
                                     "--threads", str(threads), "--out", out,
                                     "--eval-every", str(opts.sb3_eval_every), "--lr", str(learning_rate)],
                                    stdout=subprocess.DEVNULL, stderr=errfile, start_new_session=True,
                                    env=env)
            try:
                proc.wait(timeout=opts.e2e_budget + 120)
            except subprocess.TimeoutExpired:
                _stop(proc, grace=5.0)
            errfile.seek(0)
            err = errfile.read()
        result = {}
        if os.path.exists(out):
            with open(out) as f:
                result = json.load(f)
        return {"seed": seed, "reached": result.get("reached"), "evals": result.get("evals", []),
                "threads": result.get("threads"),
                "stderr_tail": (err or "")[-2000:] if not result else ""}


def _f(value: float, fmt: str) -> str:
    return "n/a" if value != value else fmt.format(value)


def _median(values):
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else float("nan")


def run(opts: Options) -> list[str]:
    if opts.quick:
        return ["  [skipped] e2e: --quick skips the end-to-end comparison"]
    have_sb3 = sb3_version() is not None
    log = print
    sb3_threads = opts.sb3_threads
    relayrl_runs, sb3_runs, matched_runs = [], [], []
    matched_lr = relayrl_learning_rate(opts.e2e_set)
    who_runs = ["relayrl", "sb3"] + (["sb3-matched"] if have_sb3 and opts.sb3_matched and matched_lr else [])
    for seed in range(opts.seeds):
        k = seed % len(who_runs)
        order = who_runs[k:] + who_runs[:k]  # which goes first rotates from one seed to the next
        for who in order:
            t0 = time.perf_counter()
            if who == "relayrl":
                relayrl_runs.append(run_relayrl(seed, opts, log))
                r = relayrl_runs[-1]
                log(f"  relayrl seed {seed}: {r['eval'] and r['eval']['env_steps']} steps (SB3-like eval), "
                    f"{r['first_row'] and r['first_row']['env_steps']} steps "
                    f"(first row), {r['five_episodes'] and r['five_episodes']['env_steps']} steps "
                    f"(5-episode); {time.perf_counter() - t0:.0f} s")
                if r["stderr_tail"]:
                    log(r["stderr_tail"])
            elif have_sb3:
                runs, lr = (matched_runs, matched_lr) if who == "sb3-matched" else (sb3_runs, 0.0)
                runs.append(run_sb3(seed, opts, sb3_threads, lr))
                r = runs[-1]
                log(f"  SB3{f' (learning rate {lr:g})' if lr else ''} seed {seed}: "
                    f"{r['reached'] and r['reached']['env_steps']} steps; {time.perf_counter() - t0:.0f} s")
                if r["stderr_tail"]:
                    log(r["stderr_tail"])

    def cell(point, key, fmt="{:.0f}"):
        return "not reached" if not point else fmt.format(point[key])

    lines = ["### (d) end to end, Pendulum-v1: until the mean deterministic test return >= -200", "",
             machine_header(f"set-up: relayrl = run_local(default RunConfig, "
                            f"workers.test_episode_interval=1, epochs cap {opts.e2e_epochs}"
                            + "".join(f", {item}" for item in opts.e2e_set)
                            + "): trainer (torch threads "
                            + ("/".join(sorted({str(r.get("threads")) for r in relayrl_runs})) or "n/a")
                            + ", relayrl's choice unless training.torch_threads is set) + "
                            "2 worker processes (1 thread each); SB3 = "
                            f"SAC defaults, eval every {opts.sb3_eval_every} steps x 5 episodes, torch threads "
                            f"{(sb3_runs[0]['threads'] if sb3_runs else 'n/a')}; budget "
                            f"{opts.e2e_budget:g} s per run; {opts.seeds} seeds"
                            + "".join(f"; env {item} (both)" for item in opts.e2e_env)), "",
             "| run | seed | env steps | wall-clock s (training) | process s (from launch) | return at that point |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in relayrl_runs:
        for key, label in (("eval", "relayrl, eval (5 episodes) >= -200, like SB3"),
                           ("first_row", "relayrl, first row >= -200"),
                           ("five_episodes", "relayrl, 5-episode mean >= -200")):
            p = r[key]
            lines.append(f"| {label} | {r['seed']} | {cell(p, 'env_steps')} | {cell(p, 'wall', '{:.1f}')} | "
                         f"{cell(p, 'process', '{:.1f}')} | {cell(p, 'return', '{:.1f}')} |")
    matched_label = f"SB3 SAC, learning rate {matched_lr:g} (relayrl's)"
    for label, runs in (("SB3 SAC", sb3_runs), (matched_label, matched_runs)):
        for r in runs:
            p = r["reached"]
            lines.append(f"| {label}, eval (5 episodes) >= -200 | {r['seed']} | {cell(p, 'env_steps')} | "
                         f"{cell(p, 'wall', '{:.1f}')} | {cell(p, 'process', '{:.1f}')} | "
                         f"{cell(p, 'return', '{:.1f}')} |")
    for r in relayrl_runs:
        if not r["first_row"] or not r["five_episodes"] or not r["eval"]:
            lines.append(f"| relayrl seed {r['seed']}, at the stop | {r['seed']} | {r['last_env_steps']} | "
                         f"{r['train_wall']:.1f} | {r['process_wall']:.1f} | {r['last_updates']} updates "
                         f"in {r['rows']} rounds |")
    for r in sb3_runs + matched_runs:
        if not r["reached"] and r["evals"]:
            p = r["evals"][-1]
            lines.append(f"| SB3 seed {r['seed']}, last evaluation | {r['seed']} | {p['env_steps']} | "
                         f"{p['wall']:.1f} | {p['process']:.1f} | {p['return']:.1f} |")
    lines.append("")
    summary = ["| median over seeds | env steps | wall-clock s | steps / SB3 | wall / SB3 |",
               "|---|---:|---:|---:|---:|"]
    sb3_steps = _median([r["reached"]["env_steps"] if r["reached"] else None for r in sb3_runs])
    sb3_wall = _median([r["reached"]["wall"] if r["reached"] else None for r in sb3_runs])
    medians = {}
    for key, label in (("eval", "relayrl, eval like SB3"), ("first_row", "relayrl, first row"),
                       ("five_episodes", "relayrl, 5-episode")):
        steps = _median([r[key]["env_steps"] if r[key] else None for r in relayrl_runs])
        wall = _median([r[key]["wall"] if r[key] else None for r in relayrl_runs])
        n_reached = sum(1 for r in relayrl_runs if r[key])
        medians[key] = (steps, wall)
        summary.append(f"| {label} ({n_reached}/{len(relayrl_runs)} reached) | {_f(steps, '{:.0f}')} | "
                       f"{_f(wall, '{:.1f}')} | {_f(steps / sb3_steps, '{:.2f}x')} | "
                       f"{_f(wall / sb3_wall, '{:.2f}x')} |")
    if have_sb3:
        n_reached = sum(1 for r in sb3_runs if r["reached"])
        summary.append(f"| SB3 SAC ({n_reached}/{len(sb3_runs)} reached) | {_f(sb3_steps, '{:.0f}')} | "
                       f"{_f(sb3_wall, '{:.1f}')} | 1.00 | 1.00 |")
    if matched_runs:
        m_steps = _median([r["reached"]["env_steps"] if r["reached"] else None for r in matched_runs])
        m_wall = _median([r["reached"]["wall"] if r["reached"] else None for r in matched_runs])
        n_reached = sum(1 for r in matched_runs if r["reached"])
        summary.append(f"| {matched_label} ({n_reached}/{len(matched_runs)} reached) | "
                       f"{_f(m_steps, '{:.0f}')} | {_f(m_wall, '{:.1f}')} | "
                       f"{_f(m_steps / sb3_steps, '{:.2f}x')} | {_f(m_wall / sb3_wall, '{:.2f}x')} |")
    lines += summary
    lines.append("")
    lines.append("(medians over the seeds that reached the target; a run that did not is left out and "
                 "counted in the 'reached' column)")
    out = ["\n".join(lines)]
    if have_sb3:
        steps, wall = medians["eval"]
        out.append("\n".join([
            target_line("(d) relayrl env steps / SB3 (SB3-like eval, median)", steps / sb3_steps, "<=", 1.0),
            target_line("(d) relayrl wall-clock / SB3 (SB3-like eval, median)", wall / sb3_wall, "<=", 0.5),
            f"first-row criterion: steps {_f(medians['first_row'][0] / sb3_steps, '{:.2f}x')}, "
            f"wall-clock {_f(medians['first_row'][1] / sb3_wall, '{:.2f}x')} of SB3's; "
            f"5-episode criterion: steps {_f(medians['five_episodes'][0] / sb3_steps, '{:.2f}x')}, "
            f"wall-clock {_f(medians['five_episodes'][1] / sb3_wall, '{:.2f}x')} of SB3's"]
            + ([f"same hyperparameters (SB3 with learning rate {matched_lr:g}, like relayrl's default): "
                f"relayrl's steps {_f(steps / m_steps, '{:.2f}x')}, wall-clock "
                f"{_f(wall / m_wall, '{:.2f}x')} of SB3's"] if matched_runs else [])))
    else:
        out.insert(0, sb3_skip_note("the SB3 runs of (d)"))
    opts.results["e2e"] = {"relayrl": relayrl_runs, "sb3": sb3_runs, "sb3_matched": matched_runs}
    return out


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("who", choices=("relayrl", "sb3"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", default="")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--max-steps", type=int, default=20_000)
    p.add_argument("--budget", type=float, default=300.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--eval-path", default="")
    p.add_argument("--lr", type=float, default=0.0)
    a = p.parse_args()
    if a.who == "relayrl":
        child_relayrl(a.seed, a.run_dir, a.epochs, a.set, a.eval_every, a.eval_path)
    else:
        child_sb3(a.seed, a.max_steps, a.budget, a.threads, a.out, a.eval_every, a.lr)
