"""torch.compile, one of the issue's candidates: does compiling SAC's networks make updates faster
on this CPU?

Two ``SACAgent``s with the same weights and hyperparameters (Pendulum-v1 spaces, hidden (256, 256),
batch 256, the serial update: the compiled graphs are then called from one thread only), one as
shipped, one whose actor, critics and target critics have their ``forward`` wrapped by
``torch.compile`` (inductor, ``dynamic=False``: every batch has the same shape). Both train on the
same pre-sampled batches, interleaved and repeated. The table gives updates per second; the line
below it the one-off compilation time (the first updates of the compiled agent). relayrl ships
eager networks: this benchmark is the measurement behind that choice.
"""
from __future__ import annotations

import time

import numpy as np

from _common import Options, interleaved, table

NAME = "compile"


def _batches(n: int, seed: int = 0):
    import torch

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        obs = torch.from_numpy(rng.uniform(-1, 1, (256, 3)).astype(np.float32))
        out.append((obs, torch.from_numpy(rng.uniform(-2, 2, (256, 1)).astype(np.float32)),
                    torch.from_numpy(rng.uniform(-16, 0, 256).astype(np.float32)),
                    obs + 0.01, torch.zeros(256), torch.zeros(256)))
    return out


def run(opts: Options) -> list[str]:
    import gymnasium
    import torch

    from relayrl.algorithms.sac import SACAgent, SACConfig

    torch.set_num_threads(opts.threads)
    env = gymnasium.make("Pendulum-v1")
    spaces = (env.observation_space, env.action_space)
    env.close()
    hidden = (16, 16) if opts.smoke else (256, 256)
    steps = 4 if opts.smoke else 20 if opts.quick else 50
    repeats = 1 if opts.smoke else 3 if opts.quick else opts.repeats
    batches = _batches(steps)

    torch.manual_seed(0)
    eager = SACAgent(*spaces, config=SACConfig(hidden_sizes=hidden, parallel_update=False))
    compiled = SACAgent(*spaces, config=SACConfig(hidden_sizes=hidden, parallel_update=False))
    compiled.load_state_dict(eager.state_dict())
    for module in (compiled.actor, compiled.critic, compiled.critic_target):
        module.forward = torch.compile(module.forward, dynamic=False)
    t0 = time.perf_counter()
    for batch in batches[:3]:  # compiles the graphs (forward and backward)
        compiled.train(batch)
    compile_seconds = time.perf_counter() - t0

    def rate(agent):
        def go():
            t = time.perf_counter()
            for batch in batches:
                agent.train(batch)
            return len(batches) / (time.perf_counter() - t)
        return go

    res = interleaved({"relayrl SACAgent.train (eager, as shipped)": rate(eager),
                       "the same, networks torch.compile'd": rate(compiled)}, repeats, log=opts.log)
    series = list(res.values())
    series[0].note = "serial update, pre-sampled batches"
    series[1].note = "inductor, dynamic=False, actor + critics + target critics"
    out = [table("torch.compile: SAC updates/s with compiled networks", series, "updates/s",
                 series[0].name, "ratio to eager",
                 header_extra=f"set-up: Pendulum-v1 spaces, hidden {hidden}, batch 256, serial update, "
                              f"{steps} updates per measurement, torch threads {opts.threads}")]
    ratio = series[1].median / series[0].median
    out.append(f"compiled / eager: {ratio:.2f}x updates/s; compiling took {compile_seconds:.1f} s "
               "(the first 3 updates)")
    opts.results["compile_ratio"] = ratio
    opts.results["compile_seconds"] = compile_seconds
    return out
