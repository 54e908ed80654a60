"""(b) Batch sampling, batches of 256 per second: relayrl's ``ReplayMemory`` vs a tmrl-style memory
vs Stable-Baselines3's ``ReplayBuffer.sample``.

Cases: 1e4 and 1e6 stored transitions with Pendulum-shaped vector observations (3 float32), and
1e4 and 1e5 transitions with image observations (4x64x64 uint8; 1e6 of them would need 33 GB
for ``obs`` + ``next_obs``, so the large image case stops at 1e5 = 3.3 GB).

To keep RAM to one copy of the data, the memory is filled once (``ReplayMemory.append`` in
chunks) and the other two read *the same arrays*: the tmrl-style memory holds Python lists whose
items are per-row views (``list(array)``) and Python floats/bools, and SB3's buffer gets its
``observations``/``next_observations`` replaced by ``(N, 1, ...)`` views of the same columns (its
small columns are copied). Every variant therefore touches the same bytes.

The tmrl-style memory is a labelled *re-creation* written for this benchmark (not tmrl's code):
Python list storage, one ``get_transition(i)`` per sampled index, and a per-sample collate
(``torch.as_tensor`` per item, ``torch.stack`` per field), producing float32 tensors like
relayrl's batch. SB3's ``sample`` returns observations in their stored dtype (images stay
``uint8``; relayrl converts them to float32, 4x the bytes written), with ``dones`` and
``rewards`` as ``(B, 1)``. If the installed relayrl's ``ReplayMemory`` has a
``float_observations`` option, the image tables get a row for ``float_observations=False`` (the
same memory handing out uint8 observations, like SB3).
"""
from __future__ import annotations

import random

import numpy as np

from _common import Options, calibrate, interleaved, sb3_skip_note, sb3_version, table, target_line, \
    time_calls

NAME = "sampling"
BATCH = 256


class TmrlStyleMemory:
    """A re-creation of the classic Python-list replay memory (for comparison only)."""

    def __init__(self, columns: dict[str, np.ndarray], size: int, batch_size: int = BATCH, seed: int = 0):
        self.batch_size = batch_size
        # one Python list per field, one item per transition
        self.obs = list(columns["obs"][:size])            # per-row numpy views
        self.act = list(columns["act"][:size])
        self.rew = columns["rew"][:size].tolist()         # python floats
        self.next_obs = list(columns["next_obs"][:size])
        self.terminated = columns["terminated"][:size].tolist()
        self.truncated = columns["truncated"][:size].tolist()
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.rew)

    def get_transition(self, i: int):
        return (self.obs[i], self.act[i], self.rew[i], self.next_obs[i], self.terminated[i],
                self.truncated[i])

    def sample(self):
        n = len(self)
        batch = [self.get_transition(self._rng.randrange(n)) for _ in range(self.batch_size)]
        return tuple(self._collate([t[k] for t in batch]) for k in range(6))

    @staticmethod
    def _collate(items):
        import torch

        first = items[0]
        if isinstance(first, np.ndarray):
            out = torch.stack([torch.as_tensor(x) for x in items])
        else:
            out = torch.tensor(items)
        return out.to(torch.float32)


def _fill_memory(size: int, image: bool, seed: int = 0):
    """A ``ReplayMemory`` holding ``size`` transitions, filled by appends of at most 10,000."""
    from relayrl.buffer import Buffer
    from relayrl.memory import ReplayMemory

    rng = np.random.default_rng(seed)
    chunk = min(size, 10_000)
    if image:
        obs = rng.integers(0, 256, (chunk, 4, 64, 64), dtype=np.uint8)
        next_obs = np.roll(obs, 1, axis=0)
    else:
        obs = rng.standard_normal((chunk, 3), dtype=np.float32)
        next_obs = obs + np.float32(0.01)
    act = rng.uniform(-2, 2, (chunk, 1)).astype(np.float32)
    rew = rng.uniform(-16, 0, chunk).astype(np.float32)
    memory = ReplayMemory(nb_steps=1, batch_size=BATCH, capacity=size, seed=seed)
    done = 0
    while done < size:
        n = min(chunk, size - done)
        shift = np.float32(done % 997) if not image else 0
        memory.append(Buffer(obs=obs[:n] if image else obs[:n] + shift, act=act[:n], rew=rew[:n],
                             next_obs=next_obs[:n] if image else next_obs[:n] + shift,
                             terminated=np.zeros(n, bool), truncated=rng.random(n) < 0.005))
        done += n
    assert len(memory) == size
    return memory


def _columns(memory, size: int) -> dict[str, np.ndarray]:
    """The memory's storage arrays (to share them), or copies gathered through get_transition."""
    cols = getattr(memory, "_columns", None)
    if isinstance(cols, dict) and all(k in cols for k in ("obs", "act", "rew", "next_obs",
                                                           "terminated", "truncated")):
        return cols
    # fall back to a copy (more RAM) if the memory's internals changed
    fields = list(zip(*(memory.get_transition(i) for i in range(size))))
    return dict(zip(("obs", "act", "rew", "next_obs", "terminated", "truncated"),
                    (np.stack(f) for f in fields)))


def _sb3_buffer(columns: dict[str, np.ndarray], size: int, image: bool):
    from gymnasium import spaces
    from stable_baselines3.common.buffers import ReplayBuffer

    obs_shape = columns["obs"].shape[1:]
    if image:
        obs_space = spaces.Box(0, 255, obs_shape, np.uint8)
    else:
        obs_space = spaces.Box(-np.inf, np.inf, obs_shape, np.float32)
    act_space = spaces.Box(-2.0, 2.0, (1,), np.float32)
    # Build it tiny, then swap in full-size arrays (SB3's own np.zeros of 1e5 images would be 3.3 GB).
    rb = ReplayBuffer(BATCH, obs_space, act_space, device="cpu", n_envs=1)
    rb.buffer_size = size
    rb.observations = columns["obs"][:size].reshape(size, 1, *obs_shape)        # views, no copy
    rb.next_observations = columns["next_obs"][:size].reshape(size, 1, *obs_shape)
    assert np.shares_memory(rb.observations, columns["obs"])
    rb.actions = columns["act"][:size].reshape(size, 1, 1).astype(np.float32)
    rb.rewards = columns["rew"][:size].reshape(size, 1).astype(np.float32)
    rb.dones = columns["terminated"][:size].reshape(size, 1).astype(np.float32)
    rb.timeouts = columns["truncated"][:size].reshape(size, 1).astype(np.float32)
    rb.pos, rb.full = 0, True
    return rb


def run(opts: Options) -> list[str]:
    import torch

    from relayrl.algorithms.networks import tune_cpu_allocator

    torch.set_num_threads(opts.threads)
    # A relayrl trainer always runs with this (SACAgent applies it when built); the same process
    # setting applies to every variant here. Without it, large float32 image batches pay page faults.
    tune_cpu_allocator()
    have_sb3 = sb3_version() is not None
    if opts.smoke:
        cases = [("vector", 10_000), ("image", 1_000)]
        seconds, repeats = 0.01, 1
    elif opts.quick:
        cases = [("vector", 10_000), ("image", 10_000)]
        seconds, repeats = 0.05, 3
    else:
        cases = [("vector", 10_000), ("vector", 1_000_000), ("image", 10_000), ("image", 100_000)]
        seconds, repeats = 0.25, opts.repeats
    out: list[str] = []
    if not have_sb3:
        out.append(sb3_skip_note("the SB3 ReplayBuffer rows of (b)"))
    for kind, size in cases:
        image = kind == "image"
        memory = _fill_memory(size, image)
        cols = _columns(memory, size)
        samplers = {"relayrl ReplayMemory": memory.sample}
        if image and hasattr(memory, "float_observations"):
            # if this relayrl has the option: the same memory handing out uint8 observations
            def sample_uint8(memory=memory):
                memory.float_observations = False
                try:
                    return memory.sample()
                finally:
                    memory.float_observations = True
            samplers["relayrl ReplayMemory, float_observations=False"] = sample_uint8
        per_call = {}
        if getattr(memory, "batches_per_draw", 1) >= 20:
            # how TrainingOffline draws: the batches of all the updates between two pulls in one go
            # (20 with relayrl train's update_buffer_interval); counted in batches, not calls. (Not
            # for images: a batch of them fills the memory's 4 MB draw limit, so the loop draws
            # those one at a time, as sample() does.)
            many = "relayrl ReplayMemory, 20 at a time (sample_batches)"
            samplers[many] = lambda memory=memory: memory.sample_batches(20)
            per_call[many] = 20
        tmrl = TmrlStyleMemory(cols, size)
        samplers["tmrl-style (re-creation)"] = tmrl.sample
        if have_sb3:
            rb = _sb3_buffer(cols, size, image)
            samplers["SB3 ReplayBuffer.sample"] = lambda rb=rb: rb.sample(BATCH)

        # check the shapes once
        b = memory.sample()
        t = tmrl.sample()
        assert tuple(b.obs.shape) == tuple(t[0].shape) == (BATCH, *cols["obs"].shape[1:])
        counts = {name: calibrate(fn, seconds) for name, fn in samplers.items()}

        def rate(name):
            fn, n = samplers[name], counts[name]
            return lambda: n * per_call.get(name, 1) / time_calls(fn, n)

        res = interleaved({name: rate(name) for name in samplers}, repeats, log=opts.log)
        series = list(res.values())
        shape = "4x64x64 uint8" if image else "3 float32"
        raw = sum(c[:1].nbytes for c in cols.values())
        res_note = {"relayrl ReplayMemory": "float32 tensors out",
                    "relayrl ReplayMemory, float_observations=False": "obs keep their dtype (uint8)",
                    "tmrl-style (re-creation)": "per-sample index + collate, float32 out",
                    "relayrl ReplayMemory, 20 at a time (sample_batches)":
                        "one gather per field for 20 batches, as the training loop draws",
                    "SB3 ReplayBuffer.sample": "obs keep their dtype" + (" (uint8)" if image else "")}
        for s in series:
            s.note = res_note.get(s.name, "")
        extra = (f"set-up: {size:,} stored transitions, obs {shape} ({raw:,} bytes per transition "
                 f"with next_obs), batch {BATCH}, torch threads {opts.threads}, "
                 f"~{seconds:g} s per measurement")
        if image and size == 100_000:
            extra += "; images at 1e5, not 1e6: 1e6 would need 33 GB of RAM"
        out.append(table(f"(b) batch sampling, {kind} observations, {size:,} transitions", series,
                         "batches/s", "relayrl ReplayMemory", "ratio to relayrl", header_extra=extra))
        ref = res["relayrl ReplayMemory"].median
        vs_tmrl = ref / res["tmrl-style (re-creation)"].median
        key = f"{kind}_{size}"
        opts.results[f"sampling_{key}_batches_per_s"] = {s.name: s.median for s in series}
        lines = []
        is_target = size >= 1_000_000  # the targets are set at 1e6 transitions (vector)
        if is_target:
            lines.append(target_line(f"(b) relayrl / tmrl-style, {kind} {size:,}", vs_tmrl, ">=", 20))
        else:
            lines.append(f"relayrl / tmrl-style, {kind} {size:,}: {vs_tmrl:.2f}x (no target at this size)")
        if have_sb3:
            vs_sb3 = ref / res["SB3 ReplayBuffer.sample"].median
            if is_target:
                lines.append(target_line(f"(b) relayrl / SB3, {kind} {size:,}", vs_sb3, ">=", 1.0))
            else:
                lines.append(f"relayrl / SB3, {kind} {size:,}: {vs_sb3:.2f}x (no target at this size)")
        out.append("\n".join(lines))
        del memory, cols, tmrl, samplers
        if have_sb3:
            del rb
    return out
