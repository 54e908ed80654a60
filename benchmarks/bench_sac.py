"""(c) SAC updates per second: relayrl's ``SACAgent.train`` vs Stable-Baselines3's ``SAC.train`` vs a
bare CleanRL-style PyTorch SAC update, at 1 and 2 torch threads.

Same hyperparameters everywhere: Pendulum-v1 spaces, batch 256, two hidden layers of 256 (actor and
each of two critics), Adam lr 3e-4, gamma 0.99, tau 0.005 (relayrl: polyak 0.995), entropy
coefficient tuned automatically from 1.0 towards -dim(A), one target update per step.

Variants, interleaved, each timed over a block of updates:

* ``relayrl SACAgent.train (pre-sampled)``: ``agent.train(batch)`` on a pool of batches drawn
  beforehand, with ``parallel_update=False`` (the steps in SB3's order, one thread of Python);
* ``relayrl memory.sample + train``: ``agent.train(memory.sample())``, the like-for-like match of
  SB3's ``train``, which samples its replay buffer inside (this is the row the target uses);
* ``relayrl parallel update`` (1-thread table of the tuned phase only): the same with
  ``parallel_update=True`` (relayrl's default on 2+ cores): the critic step and the actor step run at
  once in two threads with one torch thread each, so it uses 2 cores like the 2-thread rows;
* ``SB3 SAC.train``: ``model.train(gradient_steps=N, batch_size=256)`` on a replay buffer holding
  10,000 transitions (SB3 is the reference of the ratios);
* ``bare CleanRL-style``: written for this benchmark in the style of CleanRL's
  ``sac_continuous_action.py``: two separate ``QNetwork`` critics and their targets,
  ``torch.distributions.Normal`` policy, plain ``torch.optim.Adam`` (default settings:
  single-tensor on CPU), a per-parameter polyak loop, one actor and one alpha step per update
  (CleanRL's ``policy_frequency=2`` with two actor steps every other update does the same amount of
  work), on pre-sampled tensors; its losses are SB3's formulation (the one relayrl implements), so
  it is also the "before the optimisations" version in ``bench_learning.py``.

relayrl's ``SACAgent`` applies a process-wide ``malloc`` tuning when built (``tune_allocator``).
Since that also speeds up whatever else runs in the process, the comparison runs in three fresh
processes: ``malloc tuned`` (relayrl as shipped; SB3 and the bare loop profit too), 1 and 2
threads; ``glibc defaults`` (relayrl built with ``tune_allocator=False``: how SB3 and the bare loop
run in their own programs), 1 thread; and ``malloc tuned + OMP_WAIT_POLICY=PASSIVE``, 2 threads. On
a machine where other processes (rollout workers, say) keep the cores busy, OpenMP's default
spin-waiting can make 2-thread updates many times slower than 1-thread ones (tables then carry a
WARNING line: their ratios are noise); PASSIVE makes idle OpenMP threads sleep instead.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _common import Options, interleaved, sb3_skip_note, sb3_version, table, target_line  # noqa: E402

NAME = "sac"
BATCH = 256
HIDDEN = (256, 256)
LR, GAMMA, TAU = 3e-4, 0.99, 0.005


# ------------------------------------------------------------------------------------------------
# the bare CleanRL-style update (written for this benchmark)
# ------------------------------------------------------------------------------------------------
def make_bare(obs_dim: int, act_dim: int, low: np.ndarray, high: np.ndarray):
    """A plain SAC update in the style of CleanRL's ``sac_continuous_action.py`` (separate
    ``nn.Linear`` critics and targets, ``torch.distributions.Normal``, plain Adam, a per-parameter
    polyak loop, one backward per loss), computing the losses of SB3's formulation, which relayrl's
    ``SACAgent`` implements too: critics and policy work in the squashed action space [-1, 1],
    log-std clamped to [-20, 2], tanh correction ``log(1 - tanh(u)^2 + 1e-6)``, entropy-coefficient
    loss on ``log_alpha``. It is the "before the optimisations" version of relayrl's update."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    LOG_STD_MAX, LOG_STD_MIN = 2.0, -20.0
    scale = torch.tensor((high - low) / 2.0, dtype=torch.float32)
    bias = torch.tensor((high + low) / 2.0, dtype=torch.float32)

    class QNetwork(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(obs_dim + act_dim, HIDDEN[0])
            self.fc2 = nn.Linear(HIDDEN[0], HIDDEN[1])
            self.fc3 = nn.Linear(HIDDEN[1], 1)

        def forward(self, x, a):
            x = torch.cat([x, a], 1)
            x = F.relu(self.fc1(x))
            x = F.relu(self.fc2(x))
            return self.fc3(x)

    class Actor(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(obs_dim, HIDDEN[0])
            self.fc2 = nn.Linear(HIDDEN[0], HIDDEN[1])
            self.fc_mean = nn.Linear(HIDDEN[1], act_dim)
            self.fc_logstd = nn.Linear(HIDDEN[1], act_dim)

        def forward(self, x):
            x = F.relu(self.fc1(x))
            x = F.relu(self.fc2(x))
            mean = self.fc_mean(x)
            log_std = torch.clamp(self.fc_logstd(x), LOG_STD_MIN, LOG_STD_MAX)
            return mean, log_std

        def get_action(self, x):
            """A squashed action in [-1, 1] and its log-probability."""
            mean, log_std = self(x)
            normal = torch.distributions.Normal(mean, log_std.exp())
            x_t = normal.rsample()
            y_t = torch.tanh(x_t)
            log_prob = normal.log_prob(x_t) - torch.log(1 - y_t.pow(2) + 1e-6)
            return y_t, log_prob.sum(1, keepdim=True)

    actor = Actor()
    qf1, qf2, qf1_target, qf2_target = QNetwork(), QNetwork(), QNetwork(), QNetwork()
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=LR)
    actor_optimizer = torch.optim.Adam(list(actor.parameters()), lr=LR)
    target_entropy = -float(act_dim)
    log_alpha = torch.zeros(1, requires_grad=True)
    a_optimizer = torch.optim.Adam([log_alpha], lr=LR)
    state = {"alpha": log_alpha.exp().item()}

    def update(obs, actions, rewards, next_obs, dones):
        alpha = state["alpha"]
        actions = (actions - bias) / scale  # environment units -> [-1, 1]
        with torch.no_grad():
            next_state_actions, next_state_log_pi = actor.get_action(next_obs)
            qf1_next_target = qf1_target(next_obs, next_state_actions)
            qf2_next_target = qf2_target(next_obs, next_state_actions)
            min_qf_next_target = torch.min(qf1_next_target, qf2_next_target) - alpha * next_state_log_pi
            next_q_value = rewards.flatten() + (1 - dones.flatten()) * GAMMA * min_qf_next_target.view(-1)
        qf1_a_values = qf1(obs, actions).view(-1)
        qf2_a_values = qf2(obs, actions).view(-1)
        qf_loss = 0.5 * (F.mse_loss(qf1_a_values, next_q_value) + F.mse_loss(qf2_a_values, next_q_value))
        q_optimizer.zero_grad()
        qf_loss.backward()
        q_optimizer.step()

        pi, log_pi = actor.get_action(obs)
        min_qf_pi = torch.min(qf1(obs, pi), qf2(obs, pi))
        actor_loss = ((alpha * log_pi) - min_qf_pi).mean()
        actor_optimizer.zero_grad()
        actor_loss.backward()
        actor_optimizer.step()

        alpha_loss = -(log_alpha * (log_pi.detach() + target_entropy)).mean()
        a_optimizer.zero_grad()
        alpha_loss.backward()
        a_optimizer.step()
        state["alpha"] = log_alpha.exp().item()

        with torch.no_grad():
            for param, target_param in zip(qf1.parameters(), qf1_target.parameters()):
                target_param.data.copy_(TAU * param.data + (1 - TAU) * target_param.data)
            for param, target_param in zip(qf2.parameters(), qf2_target.parameters()):
                target_param.data.copy_(TAU * param.data + (1 - TAU) * target_param.data)
        return qf_loss.item(), actor_loss.item()

    def act(obs, test: bool = False):
        """One environment action for one observation (for the learning-curve benchmark)."""
        with torch.no_grad():
            x = torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1)
            if test:
                squashed = torch.tanh(actor(x)[0])
            else:
                squashed, _ = actor.get_action(x)
            return (squashed * scale + bias).reshape(-1).numpy()

    update.act = act
    return update


# ------------------------------------------------------------------------------------------------
# data and the SB3 model
# ------------------------------------------------------------------------------------------------
def pendulum_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-math.pi, math.pi, n)
    dot = rng.uniform(-8, 8, n)
    obs = np.stack([np.cos(theta), np.sin(theta), dot], 1).astype(np.float32)
    act = rng.uniform(-2, 2, (n, 1)).astype(np.float32)
    theta2 = theta + 0.05 * dot
    obs2 = np.stack([np.cos(theta2), np.sin(theta2), np.clip(dot + act[:, 0], -8, 8)], 1).astype(np.float32)
    rew = -(theta ** 2 + 0.1 * dot ** 2 + 0.001 * act[:, 0] ** 2).astype(np.float32)
    return {"obs": obs, "act": act, "rew": rew, "next_obs": obs2, "terminated": np.zeros(n, bool),
            "truncated": (np.arange(n) % 200) == 199}


def make_sb3(env, data: dict[str, np.ndarray], seed: int = 0):
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger

    n = len(data["rew"])
    model = SAC("MlpPolicy", env, learning_rate=LR, buffer_size=n, learning_starts=0, batch_size=BATCH,
                tau=TAU, gamma=GAMMA, ent_coef="auto", policy_kwargs={"net_arch": list(HIDDEN)},
                device="cpu", seed=seed, verbose=0)
    model.set_logger(Logger(folder=None, output_formats=[]))
    rb = model.replay_buffer
    rb.observations[:] = data["obs"].reshape(n, 1, -1)
    rb.next_observations[:] = data["next_obs"].reshape(n, 1, -1)
    rb.actions[:] = data["act"].reshape(n, 1, -1)
    rb.rewards[:] = data["rew"].reshape(n, 1)
    rb.dones[:] = data["terminated"].reshape(n, 1)
    rb.timeouts[:] = data["truncated"].reshape(n, 1)
    rb.pos, rb.full = 0, True
    return model


# ------------------------------------------------------------------------------------------------
# one phase (runs in its own process)
# ------------------------------------------------------------------------------------------------
def run_phase(phase: str, quick: bool, repeats: int, verbose: bool,
              smoke: bool = False) -> tuple[list[str], dict]:
    import gymnasium
    import torch

    from relayrl.algorithms.sac import SACAgent, SACConfig
    from relayrl.buffer import Buffer
    from relayrl.memory import ReplayMemory

    log = print if verbose else None
    torch.manual_seed(0)
    env = gymnasium.make("Pendulum-v1")
    obs_space, act_space = env.observation_space, env.action_space
    data = pendulum_data(10_000)
    config = SACConfig(gamma=GAMMA, polyak=1 - TAU, lr_actor=LR, lr_critic=LR, lr_entropy=LR,
                       hidden_sizes=HIDDEN, learn_entropy_coef=True, initial_alpha=1.0,
                       tune_allocator=(phase != "default"), parallel_update=False)
    agent = SACAgent(obs_space, act_space, device="cpu", config=config)
    # the parallel update: critic and actor steps at once, in two threads (one core each)
    agent_par = SACAgent(obs_space, act_space, device="cpu", config=config, parallel_update=True)
    memory = ReplayMemory(nb_steps=1, batch_size=BATCH, capacity=len(data["rew"]), seed=0)
    memory.append(Buffer(**data))
    pool = [memory.sample() for _ in range(32)]
    bare = make_bare(obs_space.shape[0], act_space.shape[0], act_space.low, act_space.high)
    bare_pool = [(b.obs, b.act, b.rew, b.next_obs, b.terminated) for b in pool]
    have_sb3 = sb3_version() is not None
    model = make_sb3(env, data) if have_sb3 else None

    n = 4 if smoke else 16 if quick else 96   # updates per measurement, at most ...
    budget = 0.3 if quick else 1.0            # ... or this many seconds (whole chunks; 2 threads can stall)
    chunk = 4                        # updates per call (SB3: gradient_steps=4)
    reps = 1 if smoke else 3 if quick else repeats
    counter = {"i": 0}

    def next_from(p):
        counter["i"] = (counter["i"] + 1) % len(p)
        return p[counter["i"]]

    def rate(step_chunk):
        """Updates per wall second and per CPU second over one measurement."""
        def measure():
            c0, t0 = time.process_time(), time.perf_counter()
            done = 0
            while done < n:
                step_chunk()
                done += chunk
                if time.perf_counter() - t0 > budget:
                    break
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            return done / wall, done / max(cpu, 1e-9)
        return measure

    def relayrl_pre():
        for _ in range(chunk):
            agent.train(next_from(pool))

    def relayrl_mem():
        for _ in range(chunk):
            agent.train(memory.sample())

    def relayrl_par_mem():
        for _ in range(chunk):
            agent_par.train(memory.sample())

    def sb3():
        model.train(gradient_steps=chunk, batch_size=BATCH)

    def bare_loop():
        for _ in range(chunk):
            bare(*next_from(bare_pool))

    variants = {"relayrl SACAgent.train (pre-sampled)": rate(relayrl_pre),
                "relayrl memory.sample + train": rate(relayrl_mem)}
    if have_sb3:
        variants["SB3 SAC.train"] = rate(sb3)
    variants["bare CleanRL-style (pre-sampled)"] = rate(bare_loop)
    reference = "SB3 SAC.train" if have_sb3 else "bare CleanRL-style (pre-sampled)"

    out, results = [], {}
    if not have_sb3:
        out.append(sb3_skip_note("the SB3 SAC.train row of (c)"))
    label = {"tuned": "malloc tuned: relayrl as shipped (the tuning is process-wide, so SB3 and the "
                      "bare loop profit too)",
             "default": "glibc malloc defaults: relayrl built with tune_allocator=False (how SB3 and "
                        "the bare loop run in their own programs)",
             "passive": "malloc tuned, and OMP_WAIT_POLICY=PASSIVE set before torch started: idle "
                        "OpenMP threads sleep instead of spinning"}[phase]
    title = {"tuned": "malloc tuned", "default": "glibc malloc defaults",
             "passive": "malloc tuned + OMP_WAIT_POLICY=PASSIVE"}[phase]
    # glibc defaults: 1 thread only (with 2 threads, spin-wait stalls drown the malloc effect)
    for threads in {"tuned": (1, 2), "default": (1,), "passive": (2,)}[phase]:
        torch.set_num_threads(threads)
        these = dict(variants)
        if threads == 1 and phase == "tuned":
            # one torch thread per side: 2 cores in all, like the 2-thread rows (more torch threads
            # per side would oversubscribe 2 cores)
            these = {"relayrl parallel update, memory.sample + train (2 threads: 1 per side)":
                     rate(relayrl_par_mem), **variants}
        res = interleaved(these, reps, log=log)
        series = list(res.values())
        extra = (f"set-up: {label}; {n} updates (or {budget:g} s) per measurement; batch {BATCH}, hidden {HIDDEN}, "
                 f"lr {LR}, gamma {GAMMA}, tau {TAU}, auto entropy; torch threads {threads}")
        out.append(table(f"(c) SAC updates/s, {threads} thread{'s' if threads > 1 else ''}, "
                         f"{title}",
                         series, "updates/s", reference, "ratio to " + reference.split(" ")[0],
                         header_extra=extra))
        meds = {s.name: s.median for s in series}
        cpu_meds = {s.name: s.cpu_median for s in series}
        results[f"sac_{phase}_{threads}t_updates_per_s"] = meds
        if have_sb3:
            ratio = meds["relayrl memory.sample + train"] / meds["SB3 SAC.train"]
            ratio_pre = meds["relayrl SACAgent.train (pre-sampled)"] / meds["SB3 SAC.train"]
            cpu_ratio = cpu_meds["relayrl memory.sample + train"] / cpu_meds["SB3 SAC.train"]
            if phase == "tuned" or phase == "passive":
                out.append(target_line(f"(c) relayrl (sample + train) / SB3 SAC.train, {threads} "
                                       f"thread(s), {title}", ratio, ">=", 1.3,
                                       f"pre-sampled: {ratio_pre:.3f}x; CPU-time ratio {cpu_ratio:.3f}"))
            else:
                out.append(f"relayrl (tune_allocator=False, sample + train) / SB3, {threads} thread(s): "
                           f"{ratio:.3f}x (pre-sampled {ratio_pre:.3f}x; CPU-time ratio {cpu_ratio:.3f})")
        par_key = "relayrl parallel update, memory.sample + train (2 threads: 1 per side)"
        if par_key in meds:
            results["sac_parallel_updates_per_s"] = meds[par_key]
            if have_sb3:
                results["sac_parallel_over_sb3_1t"] = meds[par_key] / meds["SB3 SAC.train"]
                out.append(f"relayrl parallel update / SB3 SAC.train on 1 torch thread: "
                           f"{meds[par_key] / meds['SB3 SAC.train']:.3f}x; / relayrl serial: "
                           f"{meds[par_key] / meds['relayrl memory.sample + train']:.3f}x (the parallel "
                           "update uses 2 cores; compare it with the 2-thread table's SB3 row too)")
        bare_ratio = meds["relayrl SACAgent.train (pre-sampled)"] / meds["bare CleanRL-style (pre-sampled)"]
        out.append(f"relayrl / bare CleanRL-style (both pre-sampled), {threads} thread(s): {bare_ratio:.3f}x")
    env.close()
    return out, results


def run(opts: Options) -> list[str]:
    """Both malloc phases, each in a fresh process; cross-phase ratios at the end."""
    out, results = [], {}
    for phase in (("tuned",) if opts.quick else ("tuned", "default", "passive")):
        env = dict(os.environ)
        if phase == "passive":
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        with tempfile.TemporaryDirectory(prefix="relayrl-bench-sac-") as tmp:
            path = os.path.join(tmp, "out.json")
            argv = [sys.executable, os.path.abspath(__file__), "--phase", phase, "--json", path,
                    "--repeats", str(opts.repeats)]
            if opts.quick:
                argv.append("--quick")
            if opts.smoke:
                argv.append("--smoke")
            if opts.verbose:
                argv.append("--verbose")
            code = subprocess.call(argv, env=env)
            if code != 0 or not os.path.exists(path):
                out.append(f"[failed] sac phase {phase} (exit code {code})")
                continue
            with open(path) as f:
                part = json.load(f)
            out.extend(part["tables"])
            results.update(part["results"])
    opts.results.update(results)
    if sb3_version() is not None:
        for threads in (1,):  # with 2 threads, stalls make cross-process ratios meaningless
            tuned = results.get(f"sac_tuned_{threads}t_updates_per_s", {})
            default = results.get(f"sac_default_{threads}t_updates_per_s", {})
            if tuned and default:
                cross = tuned["relayrl memory.sample + train"] / default["SB3 SAC.train"]
                out.append(f"across processes, {threads} thread(s): relayrl as shipped (malloc tuned) / "
                           f"SB3 in a process of its own (glibc defaults) = {cross:.3f}x "
                           "(medians from two processes run one after the other; noisier than the "
                           "same-process ratios)")
    return out


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--phase", choices=("tuned", "default", "passive"), required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args()
    tables, res = run_phase(a.phase, a.quick or a.smoke, a.repeats, a.verbose, a.smoke)
    for block in tables:
        print(block + "\n", flush=True)
    with open(a.json, "w") as f:
        json.dump({"tables": [], "results": res}, f)
