import functools
import inspect

import gymnasium
import numpy as np
import pandas as pd
import pytest
import torch

from relayrl import round_stats, training_offline
from relayrl.batches import DrawAhead, Iterate, Prefetch, PrefetchThread, choose_batch_source
from relayrl.buffer import EpisodeStats
from relayrl.memory import Batch, ReplayMemory
from relayrl.round_stats import EpisodeReader, RoundStats
from relayrl.training_offline import STATS_KEYS, TorchTrainingOffline, TrainingOffline

from helpers import SPACES, CountingAgent, ScriptedInterface, make_buffer

EXPECTED_SIGNATURE = [
    ("env_cls", None), ("memory_cls", None), ("training_agent_cls", None), ("epochs", 10),
    ("rounds", 50), ("steps", 2000), ("update_model_interval", 100), ("update_buffer_interval", 100),
    ("max_training_steps_per_env_step", 1.0), ("sleep_between_buffer_retrieval_attempts", 1.0),
    ("profiling", False), ("agent_scheduler", None), ("start_training", 0), ("device", None),
]


def make(cls=TrainingOffline, batch_size=4, capacity=1000, **kwargs):
    defaults = dict(env_cls=SPACES, memory_cls=functools.partial(ReplayMemory, batch_size=batch_size,
                                                                 capacity=capacity, seed=0),
                    training_agent_cls=CountingAgent, epochs=1, rounds=1, steps=10,
                    update_model_interval=5, update_buffer_interval=5,
                    sleep_between_buffer_retrieval_attempts=0.0)
    defaults.update(kwargs)
    return cls(**defaults)


@pytest.mark.parametrize("cls", [TrainingOffline, TorchTrainingOffline])
def test_exact_signature(cls):
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in params] == EXPECTED_SIGNATURE


def test_positional_call_works():
    t = TrainingOffline(SPACES, functools.partial(ReplayMemory, batch_size=2), CountingAgent,
                        2, 3, 4, 5, 6, 0.5, 0.0, False, None, 7, "cpu")
    assert (t.epochs, t.rounds, t.steps, t.update_model_interval, t.update_buffer_interval) == (2, 3, 4, 5, 6)
    assert t.max_training_steps_per_env_step == 0.5 and t.start_training == 7 and t.device == "cpu"
    assert t.memory.nb_steps == 4


def test_counters_live_on_the_instance():
    a, b = make(), make()
    iface = ScriptedInterface(a, per_pull=100)
    a.run_epoch(iface)
    assert a.total_updates == 10 and b.total_updates == 0
    assert "total_updates" not in vars(TrainingOffline)


def test_env_cls_as_class_is_built_once_and_closed():
    made = []

    class Env:
        observation_space, action_space = SPACES

        def __init__(self):
            made.append(self)
            self.closed = False

        def close(self):
            self.closed = True

    t = make(env_cls=Env)
    assert len(made) == 1 and made[0].closed
    assert t.agent.observation_space is SPACES[0] and t.agent.action_space is SPACES[1]


def test_env_cls_partial_of_gymnasium():
    t = make(env_cls=functools.partial(gymnasium.make, "Pendulum-v1"))
    assert t.action_space.shape == (1,) and t.observation_space.shape == (3,)


@pytest.mark.parametrize("bad", [None, 3, "Pendulum-v1", (1, 2, 3)])
def test_env_cls_bad_type(bad):
    with pytest.raises(TypeError, match="env_cls"):
        make(env_cls=bad)


def test_factories_called_with_documented_keywords():
    seen = {}

    def memory_cls(**kwargs):
        seen["memory"] = kwargs
        return ReplayMemory(batch_size=2, **kwargs)

    def agent_cls(**kwargs):
        seen["agent"] = kwargs
        return CountingAgent(**kwargs)

    make(memory_cls=memory_cls, training_agent_cls=agent_cls, steps=7, device="cpu")
    assert seen["memory"] == {"nb_steps": 7, "device": "cpu"}
    assert seen["agent"] == {"observation_space": SPACES[0], "action_space": SPACES[1], "device": "cpu"}


def test_pull_and_broadcast_schedule():
    t = make(steps=12, update_model_interval=4, update_buffer_interval=3, start_training=0)
    iface = ScriptedInterface(t, per_pull=1000)
    t.run_epoch(iface)
    pulls = [u for kind, u in iface.events if kind == "pull"]
    broadcasts = [u for kind, u in iface.events if kind == "broadcast"]
    # a first pull happens while waiting for the gate (at update 0), then every 3rd update from 0
    assert [u for u in pulls if u >= 0] == [0, 0, 3, 6, 9]
    assert broadcasts == [4, 8, 12]
    assert t.total_updates == 12 and t.agent.calls == 12


def test_ratio_cap_never_exceeded():
    t = make(steps=50, update_buffer_interval=1, max_training_steps_per_env_step=2.0, batch_size=2)
    iface = ScriptedInterface(t, per_pull=1)
    ratios = []
    original = t.agent.train

    def train(batch):
        ratios.append((t.total_updates + 1) / t.total_samples)
        return original(batch)

    t.agent.train = train
    t.run_epoch(iface)
    assert max(ratios) <= 2.0
    assert t.total_updates == 50 and t.total_samples >= 25


def test_start_training_gates_on_memory_length_and_batch_size():
    t = make(steps=3, start_training=30, batch_size=8, update_buffer_interval=1)
    lengths = []
    original = t.agent.train

    def train(batch):
        lengths.append(len(t.memory))
        return original(batch)

    t.agent.train = train
    t.run_epoch(ScriptedInterface(t, per_pull=7))
    assert min(lengths) >= 30

    t = make(steps=3, start_training=0, batch_size=16, update_buffer_interval=1)
    t.agent.train = lambda batch, tt=t: (lengths.append(len(tt.memory)), {"x": 1.0})[1]
    lengths.clear()
    t.run_epoch(ScriptedInterface(t, per_pull=5))
    assert min(lengths) >= 16  # never sampled from a memory smaller than a batch


def test_ratio_from_start_starts_at_one_update_per_new_sample():
    """tmrl's counting (the default) lets the warm-up samples be caught up at once; with
    ratio_from_start the cap counts only the samples after start_training."""
    assert not TrainingOffline.ratio_from_start  # tmrl's counting stays the wrapper's default
    t = make(start_training=30, batch_size=4)
    t.memory.append(make_buffer(30))
    t.total_samples = 30
    t.total_updates = 29
    assert t.training_allowed()          # tmrl: 29 updates on the 30 warm-up samples are fine
    t.ratio_from_start = True
    assert not t.training_allowed()      # from start_training on: none yet
    t.total_updates = 0
    assert t.training_allowed()
    t.total_updates, t.total_samples = 6, 35
    assert t.training_allowed() is False  # 6 updates > 1.0 x (35 - 30)
    t.total_updates = 5
    assert t.training_allowed()


def test_ratio_from_start_in_the_loop_never_front_loads():
    t = make(steps=40, start_training=30, batch_size=4, update_buffer_interval=1)
    t.ratio_from_start = True
    seen = []
    original = t.agent.train
    t.agent.train = lambda batch: (seen.append((t.total_updates + 1, t.total_samples)), original(batch))[1]
    t.run_epoch(ScriptedInterface(t, per_pull=1))
    assert len(seen) == 40
    assert all(updates <= samples - 30 + 1 for updates, samples in seen)


def test_start_training_larger_than_capacity_is_refused():
    with pytest.raises(ValueError, match="start_training.*capacity"):
        make(start_training=5000, capacity=1000)


@pytest.mark.parametrize("name,value", [
    ("update_model_interval", 0), ("update_buffer_interval", -1), ("steps", 0), ("rounds", 1.5),
    ("epochs", True), ("max_training_steps_per_env_step", 0), ("max_training_steps_per_env_step", float("nan")),
    ("sleep_between_buffer_retrieval_attempts", -1), ("start_training", -5),
])
def test_bad_numbers_are_refused_with_the_name(name, value):
    with pytest.raises(ValueError, match=name):
        make(**{name: value})


def test_agent_scheduler_called_once_per_epoch_before_updates():
    calls = []
    t = make(rounds=2, steps=3, agent_scheduler=lambda agent, epoch: calls.append((epoch, agent.calls)))
    iface = ScriptedInterface(t, per_pull=100)
    for _ in range(3):
        t.run_epoch(iface)
    assert calls == [(0, 0), (1, 6), (2, 12)]
    assert t.epoch == 3


def test_stats_rows():
    t = make(rounds=3, steps=4, update_buffer_interval=2)
    rows = t.run_epoch(ScriptedInterface(t, per_pull=10, episodes_per_pull=2))
    assert len(rows) == 3 and all(isinstance(r, pd.Series) for r in rows)
    for key in STATS_KEYS:
        assert key in rows[0].index, key
    assert rows[0]["loss"] == pytest.approx((1 + 2 + 3 + 4) / 4)  # mean over the round
    assert rows[0]["other"] == 2.0
    # episodes are aggregated over the round: 3 pulls in round 0 (gate + 2), 2 episodes each
    assert rows[0]["episodes_train"] + rows[0]["episodes_test"] == 6
    assert rows[0]["return_train"] == pytest.approx(np.mean([1, 3, 5]))
    assert rows[0]["return_test"] == pytest.approx(np.mean([2, 4, 6]))
    assert rows[2]["total_updates"] == 12 and rows[2]["memory_len"] == len(t.memory)


def test_idle_time_counts_waits_inside_the_round():
    class SlowInterface(ScriptedInterface):
        def wait_for_data(self, timeout):
            import time
            time.sleep(0.01)
            return True

    t = make(steps=20, update_buffer_interval=1, max_training_steps_per_env_step=1.0, batch_size=1)
    iface = SlowInterface(t, per_pull=1)
    iface_pulls_before = 0
    row = t.run_epoch(iface)[0]
    # each update needs one more sample, so the round waits repeatedly, not only at its start
    waits = sum(1 for kind, _ in iface.events if kind == "pull") - iface_pulls_before
    assert waits > 20
    assert row["idle_time"] > 0.0 and row["idle_time"] <= row["round_time"]


def test_wait_uses_interface_wait_when_available():
    calls = []

    class Waiting(ScriptedInterface):
        def wait_for_data(self, timeout):
            calls.append(timeout)
            return True

    t = make(steps=1, start_training=20, batch_size=1, sleep_between_buffer_retrieval_attempts=0.25)
    t.run_epoch(Waiting(t, per_pull=5))
    assert calls and all(c == 0.25 for c in calls)


def test_report_progress_called_with_counters():
    reports = []

    class Reporting(ScriptedInterface):
        def report_progress(self, **kw):
            reports.append(kw)

    t = make(steps=4, update_buffer_interval=2)
    t.run_epoch(Reporting(t, per_pull=50))
    assert reports[-1]["total_updates"] == 2 and reports[-1]["total_samples"] == t.total_samples
    assert set(reports[0]) == {"total_updates", "total_samples", "memory_len"}


def test_device_selection(monkeypatch):
    assert make(cls=TrainingOffline, device=None).device == "cpu"
    assert make(cls=TorchTrainingOffline, device="cpu").device == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert make(cls=TorchTrainingOffline, device=None).device in ("cpu", "mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    t = TorchTrainingOffline.__new__(TorchTrainingOffline)
    assert t._select_device(None) == "cuda"
    assert t._select_device("cuda:1") == "cuda:1"  # explicit device honoured, never overridden
    with pytest.raises(RuntimeError):
        t._select_device("not-a-device")


def test_profiling_logs_a_report(caplog):
    import logging
    t = make(steps=3, profiling=True)
    with caplog.at_level(logging.INFO, logger="relayrl"):
        t.run_epoch(ScriptedInterface(t, per_pull=50))
    assert any("profile of epoch 0" in r.getMessage() for r in caplog.records)


def test_state_dict_round_trip():
    t = make(steps=5)
    t.run_epoch(ScriptedInterface(t, per_pull=50))
    state = t.state_dict()
    u = make(steps=5)
    u.load_state_dict(state)
    assert (u.epoch, u.total_updates, u.total_samples) == (1, 5, t.total_samples)
    assert len(u.memory) == len(t.memory) and u.agent.calls == 5
    a, b = t.memory.sample(), u.memory.sample()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# --- batch prefetch ------------------------------------------------------------------------------
def _batches_drawn(prefetch: bool, **kwargs):
    t = make(steps=40, update_buffer_interval=7, update_model_interval=5, batch_size=8, **kwargs)
    t.prefetch = prefetch
    iface = ScriptedInterface(t, per_pull=50)
    try:
        t.run_epoch(iface)
    finally:
        t.close()
    return t, [tuple(x.clone() for x in b) for b in t.agent.batches]


def test_prefetch_draws_the_same_batches_as_without():
    t_off, off = _batches_drawn(False)
    t_on, on = _batches_drawn(True)
    assert t_on.total_updates == t_off.total_updates == 40
    assert len(on) == len(off) == 40
    for a, b in zip(on, off):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


class _GuardedMemory(ReplayMemory):
    """Fails the test if append() runs while a batch is being drawn (in another thread)."""

    draw_ahead = True  # its sample() only watches: the draws do not depend on the updates

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import threading
        self.drawing = threading.Event()
        self.overlaps = 0
        self.threads = set()

    def sample(self):
        import threading
        import time as _time
        self.threads.add(threading.current_thread().name)
        self.drawing.set()
        _time.sleep(0.002)   # long enough for a concurrent append to show
        try:
            return super().sample()
        finally:
            self.drawing.clear()

    def append(self, buffer):
        if self.drawing.is_set():
            self.overlaps += 1
        super().append(buffer)


def test_prefetch_never_changes_the_memory_during_a_draw_even_when_waiting_for_samples():
    # ratio cap 1 with one sample per pull: the loop waits (and pulls) after nearly every update
    t = make(steps=40, update_buffer_interval=3, batch_size=2, max_training_steps_per_env_step=1.0,
             memory_cls=functools.partial(_GuardedMemory, batch_size=2, capacity=1000, seed=0))
    t.prefetch = True
    iface = ScriptedInterface(t, per_pull=1)
    t.run_epoch(iface)
    t.close()
    assert t.total_updates == 40
    assert t.memory.overlaps == 0
    assert any(name.startswith("relayrl-prefetch") for name in t.memory.threads)  # it did prefetch
    assert t.total_updates <= t.total_samples


def test_prefetch_errors_surface_in_the_loop():
    class Broken(ReplayMemory):
        draw_ahead = True  # may be prefetched from (it overrides sample, so it must say so)

        def sample(self):
            if getattr(self, "n", 0) >= 3:
                raise ValueError("disk on fire")
            self.n = getattr(self, "n", 0) + 1
            return super().sample()

    t = make(steps=10, update_buffer_interval=100, batch_size=2,
             memory_cls=functools.partial(Broken, batch_size=2, capacity=100, seed=0))
    t.prefetch = True
    iface = ScriptedInterface(t, per_pull=50)
    with pytest.raises(ValueError, match="disk on fire"):
        t.run_epoch(iface)
    assert t.total_updates == 3
    t.close()


def test_prefetch_can_be_switched_off_from_the_config():
    from relayrl.config import ConfigError, TrainingConfig

    assert TrainingConfig().prefetch is None  # automatic
    assert TrainingConfig(prefetch=False).prefetch is False
    with pytest.raises(ConfigError, match="training.prefetch"):
        TrainingConfig(prefetch="yes")


def test_prefetch_automatic_choice_needs_a_free_core(monkeypatch):
    import relayrl.training_offline as module

    t = make()
    assert t.prefetch is None
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monkeypatch.setattr(module, "available_cores", lambda: 2)
        assert t.prefetch_enabled()              # 1 training thread, 2 cores: a core is free
        t.agent.parallel_update = True           # 2 training threads on 2 cores: none is
        assert not t.prefetch_enabled()
        monkeypatch.setattr(module, "available_cores", lambda: 4)
        assert t.prefetch_enabled()
        t.prefetch = False
        assert not t.prefetch_enabled()
        t.prefetch = True
        monkeypatch.setattr(module, "available_cores", lambda: 1)
        assert t.prefetch_enabled()              # explicit settings win
        t.prefetch = None
        t.device = "cuda"                        # the copy to the GPU overlaps the update
        assert t.prefetch_enabled()
        t.device = "mps"
        assert not t.prefetch_enabled()
    finally:
        torch.set_num_threads(previous)


# --- drawing the batches between two pulls at once -----------------------------------------------
class OneAtATime(ReplayMemory):
    draw_ahead = False  # no draws ahead: one sample() per update, just before it


class RecordingDraws(ReplayMemory):
    """Records (batches asked for, memory length) at every batched draw."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.draws = []

    def sample_batches(self, n):
        self.draws.append((n, len(self)))
        return super().sample_batches(n)


def test_batches_drawn_between_pulls_at_once_are_the_ones_drawn_one_at_a_time():
    chunked, one = (_batches_drawn(False, memory_cls=functools.partial(cls, batch_size=8, capacity=1000, seed=0))
                    for cls in (RecordingDraws, OneAtATime))
    t_chunked, t_one = chunked[0], one[0]
    # pulls every 7 updates, 40 updates: draws of 7 batches, and 5 for the end of the round
    # (the start gate pulled once before the scheduled pull at update 0)
    assert t_chunked.memory.draws == [(7, 50 * (i + 2)) for i in range(5)] + [(5, 350)]
    assert len(chunked[1]) == len(one[1]) == 40
    for a, b in zip(chunked[1], one[1]):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_a_pull_during_a_wait_makes_the_next_batches_come_from_the_new_memory():
    # ratio cap 1, one sample per pull: the loop waits, and pulls, after nearly every update
    t = make(steps=30, update_buffer_interval=10, batch_size=2, max_training_steps_per_env_step=1.0,
             start_training=2, memory_cls=functools.partial(RecordingDraws, batch_size=2, capacity=1000, seed=0))
    t.prefetch = False
    t.run_epoch(ScriptedInterface(t, per_pull=1))
    lengths = [length for _, length in t.memory.draws]
    assert len(lengths) > 3, "a pull during a wait drops what was drawn before it"  # 3 scheduled pulls
    assert lengths == sorted(set(lengths)), "every draw saw new samples"
    # each draw asks only for the batches until the next scheduled pull
    assert all(1 <= n <= 10 for n, _ in t.memory.draws)
    assert t.total_updates == 30 and t.total_updates <= t.total_samples


def test_a_memory_that_changes_how_one_batch_is_drawn_draws_one_per_update():
    events = []

    class Augmented(ReplayMemory):
        def sample(self):
            events.append("sample")
            return super().sample()

    class Agent(CountingAgent):
        def train(self, batch):
            events.append("train")
            return super().train(batch)

    t = make(steps=12, update_buffer_interval=6, batch_size=2, training_agent_cls=Agent,
             memory_cls=functools.partial(Augmented, batch_size=2, capacity=100, seed=0))
    t.prefetch = False
    t.run_epoch(ScriptedInterface(t, per_pull=50))
    assert events == ["sample", "train"] * 12


def test_batches_drawn_at_once_are_capped_by_the_memory():
    t = make(steps=12, update_buffer_interval=100, batch_size=2,
             memory_cls=functools.partial(RecordingDraws, batch_size=2, capacity=1000, seed=0))
    t.memory.max_draw_bytes = 3 * t.memory.batch_size * 4 * 10  # 3 batches of 10 float32 columns
    t.prefetch = False
    t.run_epoch(ScriptedInterface(t, per_pull=50))
    assert t.memory.batches_per_draw == 3
    assert [n for n, _ in t.memory.draws] == [3, 3, 3, 3]


# --- batch sources: one strategy per round, chosen from memory.draw_ahead and prefetch ------------


class _DuckMemory:
    """A memory that is not a relayrl Memory and says nothing about drawing ahead."""

    batch_size, capacity = 2, 1000

    def __init__(self, nb_steps, device="cpu"):
        self.nb_steps, self.data = nb_steps, []

    def __len__(self):
        return len(self.data)

    def append(self, buffer):
        self.data.extend(buffer.memory)

    def __iter__(self):
        for _ in range(self.nb_steps):
            yield Batch(*(torch.zeros(self.batch_size) for _ in range(6)))


def test_the_strategy_is_chosen_from_the_draw_ahead_flag_and_the_prefetch_setting():
    thread = PrefetchThread()
    uniform = ReplayMemory(nb_steps=5, batch_size=2, capacity=10)
    assert type(choose_batch_source(uniform, 5, False, thread)) is DrawAhead
    assert type(choose_batch_source(uniform, 5, True, thread)) is Prefetch
    for memory in (OneAtATime(nb_steps=5, batch_size=2, capacity=10), _DuckMemory(5)):
        for prefetch in (False, True):
            assert type(choose_batch_source(memory, 5, prefetch, thread)) is Iterate
    uniform.draw_ahead = False  # an instance may say so too
    assert type(choose_batch_source(uniform, 5, True, thread)) is Iterate
    t = make()
    t.prefetch = False
    assert type(t._batch_source()) is DrawAhead
    t.memory.draw_ahead = False
    assert type(t._batch_source()) is Iterate


@pytest.mark.parametrize("prefetch", [False, True])
def test_a_memory_that_may_not_draw_ahead_is_drawn_once_per_update_after_the_previous_one(prefetch):
    import threading

    events = []

    class Prioritised(ReplayMemory):
        draw_ahead = False  # its draws depend on what the updates hand back

        def sample(self):
            events.append(("sample", threading.current_thread().name))
            return super().sample()

    class Agent(CountingAgent):
        def train(self, batch):
            events.append(("train", threading.current_thread().name))
            return super().train(batch)

    t = make(steps=15, update_buffer_interval=4, batch_size=2, training_agent_cls=Agent,
             memory_cls=functools.partial(Prioritised, batch_size=2, capacity=100, seed=0))
    t.prefetch = prefetch
    try:
        t.run_epoch(ScriptedInterface(t, per_pull=50))
    finally:
        t.close()
    main = threading.current_thread().name
    assert events == [("sample", main), ("train", main)] * 15


def test_draw_ahead_draws_until_the_next_change_and_again_after_a_pull():
    memory = RecordingDraws(nb_steps=10, batch_size=2, capacity=100, seed=0)
    memory.append(make_buffer(20))
    source = DrawAhead(memory, 10)
    first = [source.take(ahead) for ahead in (4, 3, 2)]
    assert memory.draws == [(4, 20)]           # one draw for the batches until the change
    source.memory_changing()                   # a wait pulls new samples in the middle
    memory.append(make_buffer(30, start=20))
    source.take(1)
    assert memory.draws == [(4, 20), (1, 50)]  # the last batch is drawn again, from the new memory
    twin = ReplayMemory(nb_steps=10, batch_size=2, capacity=100, seed=0)
    twin.append(make_buffer(20))
    for a, b in zip(first, [twin.sample() for _ in range(3)]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    memory.max_draw_bytes = 2 * memory.batch_bytes   # capped by memory.batches_per_draw
    source = DrawAhead(memory, 10)
    source.take(7)
    assert memory.draws[-1] == (2, 50)


def test_prefetch_draws_the_next_batch_in_its_thread_unless_the_memory_changes_first():
    import threading

    class Watched(ReplayMemory):
        draw_ahead = True

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.threads = []

        def sample(self):
            self.threads.append(threading.current_thread().name)
            return super().sample()

    memory = Watched(nb_steps=10, batch_size=2, capacity=100, seed=0)
    memory.append(make_buffer(20))
    thread = PrefetchThread()
    try:
        with Prefetch(memory, 10, thread) as source:
            source.take(3)                      # drawn here; the next one is drawn in the thread
            assert memory.threads[0] == threading.current_thread().name
            source.memory_changing()            # returns only once that draw is over
            assert thread._last.done() and memory.threads[1].startswith("relayrl-prefetch")
            source.take(1)                      # the prefetched batch; none drawn ahead of a change
            assert len(memory.threads) == 2
            source.take(2)
            source.take(1)
        assert len(memory.threads) == 4 and thread._last.done()
    finally:
        thread.shutdown()


def test_the_prefetch_thread_starts_again_in_a_forked_child(monkeypatch):
    from concurrent.futures import Future

    import relayrl.batches as batches

    thread = PrefetchThread()
    assert thread.submit(lambda: 1).result() == 1
    parent_executor = thread._executor
    thread._last = Future()                     # a draw that was running in the parent
    monkeypatch.setattr(batches.os, "getpid", lambda: -1)  # now in a "child"
    thread.join()                               # does not wait for the parent's thread
    assert thread.submit(lambda: 2).result() == 2 and thread._executor is not parent_executor
    thread.shutdown()
    monkeypatch.undo()
    parent_executor.shutdown()


def test_an_interrupted_round_leaves_no_draw_running_and_the_next_one_works():
    class Interrupted(CountingAgent):
        def train(self, batch):
            if self.calls == 3:
                raise KeyboardInterrupt
            return super().train(batch)

    t = make(steps=10, update_buffer_interval=100, batch_size=2, training_agent_cls=Interrupted)
    t.prefetch = True
    iface = ScriptedInterface(t, per_pull=50)
    with pytest.raises(KeyboardInterrupt):
        t.run_epoch(iface)
    assert t.total_updates == 3 and t._prefetch_thread._last.done()
    t.close()
    t.agent.calls = 100
    assert t.run_round(iface)["total_updates"] == 13  # threads start again when needed
    t.close()


def test_idle_time_counts_every_wait_of_the_round_exactly(monkeypatch):
    import types

    clock = [0.0]
    monkeypatch.setattr(training_offline, "time", types.SimpleNamespace(
        perf_counter=lambda: clock[0], sleep=lambda s: pytest.fail("wait_for_data is there")))

    class DataAfterWaiting(ScriptedInterface):
        """Samples arrive only while the trainer waits; each wait takes one (fake) second."""

        def retrieve_buffer(self):
            self.per_pull = 1 if self.arrived else 0
            self.arrived = False
            return super().retrieve_buffer()

        def wait_for_data(self, timeout):
            self.waits.append(self.training.total_updates)
            clock[0] += 1.0
            self.arrived = True
            return True

    t = make(steps=20, update_buffer_interval=1, batch_size=1, max_training_steps_per_env_step=1.0)
    t.prefetch = False
    iface = DataAfterWaiting(t)
    iface.arrived, iface.waits = False, []
    row = t.run_round(iface)
    # the gate at the start, then after every update from the 2nd on (the last one's included):
    # each needs one more sample than the scheduled pulls bring
    assert iface.waits == [0] + list(range(2, 21))
    assert row["idle_time"] == row["round_time"] == 20.0
    assert row["sampling_duration"] == row["training_step_duration"] == 0.0


def test_round_stats_make_the_row():
    stats = RoundStats(started=10.0)
    stats.add_wait(1.5)
    stats.add_pull(7, [EpisodeStats(1.0, 10), EpisodeStats(3.0, 20), EpisodeStats(-2.0, 5, test=True)], 0.25)
    stats.add_pull(3, [], 0.25)
    stats.add_wait(0.5)
    for loss in (1.0, 2.0, 6.0):
        stats.add_update(0.1, 0.2, {"loss": loss})
    row = stats.row(now=14.0, epoch=2, round_index=5, total_updates=30, total_samples=60, memory_len=50)
    assert isinstance(row, pd.Series) and list(row.index[:len(STATS_KEYS)]) == list(STATS_KEYS)
    assert (row["epoch"], row["round"], row["total_updates"], row["memory_len"]) == (2, 5, 30, 50)
    assert row["round_time"] == 4.0 and row["idle_time"] == 2.0 and row["buffer_pull_duration"] == 0.5
    assert row["sampling_duration"] == pytest.approx(0.1) and row["training_step_duration"] == pytest.approx(0.2)
    assert row["updates_per_second"] == 0.75 and row["samples_in_round"] == 10
    assert row["update_to_data_ratio"] == 0.5 and row["loss"] == 3.0
    assert (row["return_train"], row["episode_length_train"], row["episodes_train"]) == (2.0, 15.0, 2)
    assert (row["return_test"], row["episode_length_test"], row["episodes_test"]) == (-2.0, 5.0, 1)
    empty = RoundStats(started=0.0).row(now=1.0, epoch=0, round_index=0, total_updates=0,
                                        total_samples=0, memory_len=0)
    assert np.isnan(empty["return_train"]) and np.isnan(empty["update_to_data_ratio"])
    assert empty["episodes_test"] == 0
    assert training_offline.STATS_KEYS is round_stats.STATS_KEYS  # still importable from here


class _TmrlBuffer:
    """tmrl 0.7's Buffer: a list of samples and the last finished episodes' figures."""

    def __init__(self, n, train=(0.0, 0), test=(0.0, 0)):
        self.memory = [("act", "obs", 0.0, False, {})] * n
        self.stat_train_return, self.stat_train_steps = train
        self.stat_test_return, self.stat_test_steps = test

    def __len__(self):
        return len(self.memory)


class _BareBuffer:
    def __init__(self, n):
        self.memory = [None] * n

    def __len__(self):
        return len(self.memory)


def test_pull_takes_tmrl_buffers_and_their_episode_statistics():
    buffers = [_TmrlBuffer(5),                                  # no episode finished yet
               _TmrlBuffer(2, train=(3.0, 10)),                 # a training episode
               _TmrlBuffer(2, train=(3.0, 10)),                 # tmrl keeps it in later buffers
               _TmrlBuffer(2, train=(3.0, 10), test=(7.0, 12)),
               _BareBuffer(2),                                  # no statistics at all
               _TmrlBuffer(2, train=(5.0, 11), test=(7.0, 12)),
               _BareBuffer(2)]

    class TmrlInterface:
        def retrieve_buffer(self):
            return buffers.pop(0)

        def broadcast_model(self, actor):
            pass

    t = make(steps=6, update_buffer_interval=1, memory_cls=_DuckMemory)
    row = t.run_round(TmrlInterface())
    assert buffers == [] and len(t.memory) == 17 and t.total_samples == 17
    assert (row["episodes_train"], row["return_train"], row["episode_length_train"]) == (2, 4.0, 10.5)
    assert (row["episodes_test"], row["return_test"], row["episode_length_test"]) == (1, 7.0, 12.0)
    assert row["samples_in_round"] == 17


def test_episode_reader_prefers_the_episode_list():
    read = EpisodeReader()
    buffer = make_buffer(3, episodes=[EpisodeStats(1.0, 3)])
    buffer.stat_train_return, buffer.stat_train_steps = 9.0, 9  # ignored: the list is there
    assert read(buffer) == [EpisodeStats(1.0, 3)]
    assert read(_BareBuffer(1)) == [] and read(object()) == []
    odd = _TmrlBuffer(1, train=("n/a", None))
    assert read(odd) == []                   # unreadable figures: no episode, no error
