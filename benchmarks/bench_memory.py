"""(e) Memory: bytes of RAM per stored transition vs the raw size of one transition.

A Pendulum-v1 transition is ``obs`` (3 float32), ``act`` (1 float32), ``rew`` (float32),
``next_obs`` (3 float32), ``terminated`` and ``truncated`` (bool): 34 bytes raw.

Each store is measured in a fresh process (so no memory freed by an earlier step is reused):

* ``nbytes / capacity``: the sum of the storage arrays' ``nbytes`` divided by the capacity;
* ``RSS delta / N``: growth of the process's resident set size (``/proc/self/statm``) from before
  the store is created until it holds ``N`` transitions, divided by ``N``.

Stores: relayrl's ``ReplayMemory`` (capacity = N = 1e6, filled by 1,000 ``append`` calls of
1,000-transition buffers, as workers send them), SB3's ``ReplayBuffer`` (1e6, filled by writing its
arrays in the same chunks), and the tmrl-style re-creation of ``bench_sampling`` (Python lists
holding one small numpy array per observation; 1e5 transitions, to keep it short).

(e') Time of the replay features, in this process: relayrl's uniform ``ReplayMemory`` against
``NStepReplayMemory`` (n = 3) and ``PrioritizedReplayMemory`` (n = 1 and n = 3), each filled with
1e6 Pendulum-size transitions (capacity 1e6). One round = one ``append`` of a 25-transition buffer
(a worker's ``buffer_steps``, continuing the worker's stream) then 25 updates' draws of 256
(``sample()``; for the prioritized memories also ``report_td_errors`` + ``after_update``, the
priority update the loop makes after each update); also the append alone (per 1,000 transitions in
buffers of 25) and, for the memories that may draw ahead, the loop's bulk draw
(``sample_batches(25)``). Ratios to the uniform memory's ``sample()`` rows.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _common import (Options, interleaved, machine_header, sb3_skip_note, sb3_version,  # noqa: E402
                     table, timed)

NAME = "memory"
RAW_BYTES = 3 * 4 + 1 * 4 + 4 + 3 * 4 + 1 + 1  # 34


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak, not current


def _chunk(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, 3), dtype=np.float32)
    return dict(obs=obs, act=rng.uniform(-2, 2, (n, 1)).astype(np.float32),
                rew=rng.uniform(-16, 0, n).astype(np.float32), next_obs=obs + np.float32(0.01),
                terminated=np.zeros(n, bool), truncated=(np.arange(n) % 200) == 199)


def measure(variant: str, n: int) -> dict:
    """Runs in a child process. Returns nbytes and RSS growth for ``n`` stored transitions."""
    import torch  # noqa: F401  (imported before the baseline, as in a trainer)

    chunk = 1000
    data = _chunk(chunk)
    if variant == "relayrl":
        from relayrl.buffer import Buffer
        from relayrl.memory import ReplayMemory
        buffer = Buffer(**data)
        before = rss_bytes()
        memory = ReplayMemory(nb_steps=1, batch_size=256, capacity=n, seed=0)
        memory.append(buffer)
        after_create = rss_bytes()
        for _ in range(n // chunk - 1):
            memory.append(buffer)
        assert len(memory) == n
        after = rss_bytes()
        cols = getattr(memory, "_columns", None) or {}
        nbytes = sum(c.nbytes for c in cols.values()) if cols else float("nan")
        capacity = memory.capacity
    elif variant == "sb3":
        from gymnasium import spaces
        from stable_baselines3.common.buffers import ReplayBuffer
        before = rss_bytes()
        rb = ReplayBuffer(n, spaces.Box(-np.inf, np.inf, (3,), np.float32),
                          spaces.Box(-2.0, 2.0, (1,), np.float32), device="cpu")
        after_create = rss_bytes()
        for start in range(0, n, chunk):
            s = slice(start, start + chunk)
            rb.observations[s, 0] = data["obs"]
            rb.next_observations[s, 0] = data["next_obs"]
            rb.actions[s, 0] = data["act"]
            rb.rewards[s, 0] = data["rew"]
            rb.dones[s, 0] = data["terminated"]
            rb.timeouts[s, 0] = data["truncated"]
        rb.pos, rb.full = 0, True
        after = rss_bytes()
        nbytes = sum(a.nbytes for a in (rb.observations, rb.next_observations, rb.actions, rb.rewards,
                                        rb.dones, rb.timeouts))
        capacity = rb.buffer_size
    elif variant == "tmrl":
        before = rss_bytes()
        obs, act, rew, next_obs, term, trunc = [], [], [], [], [], []
        after_create = rss_bytes()
        for _ in range(n // chunk):
            d = _chunk(chunk)  # fresh arrays, as if they came from the environment step by step
            obs.extend(row.copy() for row in d["obs"])
            act.extend(row.copy() for row in d["act"])
            rew.extend(d["rew"].tolist())
            next_obs.extend(row.copy() for row in d["next_obs"])
            term.extend(d["terminated"].tolist())
            trunc.extend(d["truncated"].tolist())
        after = rss_bytes()
        nbytes = float("nan")
        capacity = n
    else:
        raise ValueError(variant)
    return {"variant": variant, "n": n, "capacity": capacity, "nbytes": nbytes,
            "rss_create": after_create - before, "rss_delta": after - before}


def _child(variant: str, n: int) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), variant, str(n)],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"memory child {variant} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _stream_buffers(count: int, size: int, first_seq: int = 0):
    """``count`` consecutive buffers of one worker's stream (episodes of 200 steps, truncated)."""
    from relayrl.buffer import Buffer
    rng = np.random.default_rng(first_seq)
    out = []
    for k in range(count):
        step = (first_seq + k) * size + np.arange(size)
        obs = rng.standard_normal((size, 3), dtype=np.float32)
        out.append(Buffer(obs=obs, act=rng.uniform(-2, 2, (size, 1)).astype(np.float32),
                          rew=rng.uniform(-16, 0, size).astype(np.float32), next_obs=obs + np.float32(0.01),
                          terminated=np.zeros(size, bool), truncated=(step % 200) == 199,
                          worker_id="w", seq=first_seq + k))
    return out


def speed(opts: Options) -> list[str]:
    """(e'): append and draw times of uniform, n-step and prioritized replay (see the docstring)."""
    import torch

    from relayrl.memory import ReplayMemory
    from relayrl.nstep import NStepReplayMemory
    from relayrl.prioritized import PrioritizedReplayMemory

    torch.set_num_threads(opts.threads)
    n = 10_000 if opts.smoke else 100_000 if opts.quick else 1_000_000
    rounds = 2 if opts.smoke else 10 if opts.quick else 40
    steps, batch = 25, 256
    common = dict(nb_steps=1, batch_size=batch, capacity=n, seed=0)
    memories = {
        "uniform ReplayMemory": ReplayMemory(**common),
        "n-step, n=3": NStepReplayMemory(**common, n_step=3, gamma=0.99),
        "prioritized, n=1": PrioritizedReplayMemory(**common),
        "prioritized + n-step, n=3": PrioritizedReplayMemory(**common, n_step=3, gamma=0.99),
    }
    fill = _stream_buffers(n // 1000, 1000)
    for memory in memories.values():
        for buffer in fill:
            memory.append(buffer)
    seq = {name: len(fill) for name in memories}  # the stream continues (n-step windows too)
    chunk = 1000 // steps
    errors = torch.rand(batch)

    def one_round(name: str, ahead: bool = False):
        memory = memories[name]
        buffers = _stream_buffers(rounds, steps, seq[name])  # made before the clock starts
        seq[name] += rounds

        def work():
            for buffer in buffers:
                memory.append(buffer)
                drawn = memory.sample_batches(steps) if ahead else None
                for k in range(steps):
                    b = drawn[k] if ahead else memory.sample()
                    report = getattr(b, "report_td_errors", None)
                    if report is not None and getattr(b, "weights", None) is not None:
                        report(errors)
                        memory.after_update(b)
        wall, cpu = timed(work)
        return wall / (rounds * steps) * 1e6, cpu / (rounds * steps) * 1e6

    def appends(name: str):
        memory = memories[name]
        buffers = _stream_buffers(chunk, steps, seq[name])
        seq[name] += chunk

        def work():
            for b in buffers:
                memory.append(b)
        wall, cpu = timed(work)
        return wall * 1e6, cpu * 1e6

    variants = {name: functools.partial(one_round, name) for name in memories}
    variants["uniform ReplayMemory, drawn ahead"] = functools.partial(one_round, "uniform ReplayMemory", True)
    variants["n-step, n=3, drawn ahead"] = functools.partial(one_round, "n-step, n=3", True)
    per_update = interleaved(variants, max(1, opts.repeats), log=opts.log)
    per_append = interleaved({name: functools.partial(appends, name) for name in memories},
                             max(1, opts.repeats), log=opts.log)
    header = (f"set-up: {n:,} Pendulum-size transitions stored (capacity {n:,}), batches of {batch}, "
              f"one {steps}-transition append per {steps} draws")
    ref = "uniform ReplayMemory"
    for name, series in per_update.items():
        opts.results[f"memory_speed_update_{name}"] = series.median
    return [table("(e') replay features: us per update (append share + draw + priority update)",
                  list(per_update.values()), "us", ref, "ratio to uniform", header, higher_is_better=False),
            table("(e') replay features: us per 1,000 transitions appended (buffers of 25)",
                  list(per_append.values()), "us", ref, "ratio to uniform", header, higher_is_better=False)]


def run(opts: Options) -> list[str]:
    n = 10_000 if opts.smoke else 100_000 if opts.quick else 1_000_000
    n_tmrl = 2_000 if opts.smoke else 10_000 if opts.quick else 100_000
    rows = [("relayrl ReplayMemory", _child("relayrl", n))]
    notes = []
    if sb3_version() is not None:
        rows.append(("SB3 ReplayBuffer", _child("sb3", n)))
    else:
        notes.append(sb3_skip_note("the SB3 row of (e)"))
    rows.append(("tmrl-style lists (re-creation)", _child("tmrl", n_tmrl)))

    lines = ["### (e) memory: RAM per stored Pendulum-v1 transition", "",
             machine_header(f"set-up: raw transition = {RAW_BYTES} bytes (obs 3xf32, act 1xf32, rew f32, "
                            "next_obs 3xf32, terminated bool, truncated bool); each store measured in "
                            "a fresh process"), "",
             "| store | transitions | nbytes / capacity | RSS delta / N | RSS right after creation "
             "| RSS delta / raw |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        per_nbytes = r["nbytes"] / r["capacity"] if r["nbytes"] == r["nbytes"] else float("nan")
        per_rss = r["rss_delta"] / r["n"]
        lines.append(f"| {name} | {r['n']:,} | "
                     f"{'n/a' if per_nbytes != per_nbytes else f'{per_nbytes:.1f} B'} | "
                     f"{per_rss:.1f} B | {r['rss_create'] / 1e6:.1f} MB | {per_rss / RAW_BYTES:.2f}x |")
        key = name.split(" ")[0]
        opts.results[f"memory_{key}_bytes_per_transition"] = {"nbytes": per_nbytes, "rss": per_rss}
    lines.append("")
    lines.append("(RSS delta includes everything the process allocated while filling: the store, and "
                 "for the lists the Python objects; storage is allocated lazily, so a fresh store "
                 "costs little RSS until it fills)")
    return notes + ["\n".join(lines)] + speed(opts)


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
