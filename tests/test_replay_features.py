"""n-step returns (relayrl.nstep), prioritized replay (relayrl.prioritized) and the batch contract
they share with every agent (relayrl.memory.ReplayBatch)."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from relayrl.batches import Iterate, PrefetchThread, choose_batch_source
from relayrl.buffer import Buffer
from relayrl.checkpoint import load_checkpoint, save_checkpoint
from relayrl.config import MemoryConfig
from relayrl.memory import Batch, ReplayBatch, ReplayMemory
from relayrl.nstep import NStepReplayMemory, nstep_windows
from relayrl.prioritized import PrioritizedReplayMemory, SumTree, configured_memory_cls
from relayrl.training_offline import TorchTrainingOffline

from helpers import SPACES, CountingAgent, ScriptedInterface, make_buffer

G = 0.5  # a discount whose powers are exact in binary: hand computations compare exactly


def stream_buffer(ids, rew=None, terminated=(), truncated=(), worker_id="w", seq=0, policy_version=0):
    """Transitions whose obs are ``ids`` (next_obs = id + 0.5), rewards ``rew`` (default: the ids),
    ``terminated`` / ``truncated``: the positions flagged."""
    ids = np.asarray(ids, np.float32)
    n = len(ids)
    term, trunc = np.zeros(n, bool), np.zeros(n, bool)
    term[list(terminated)] = True
    trunc[list(truncated)] = True
    obs = np.repeat(ids[:, None], 3, axis=1)
    return Buffer(obs=obs, act=ids[:, None].copy(), rew=(ids if rew is None else np.asarray(rew, np.float32)).copy(),
                  next_obs=obs + 0.5, terminated=term, truncated=trunc, worker_id=worker_id, seq=seq,
                  policy_version=policy_version)


def stored(memory) -> dict[float, tuple]:
    """obs id -> (rew, next_obs id, terminated, truncated, discount) of every stored transition."""
    cols = memory._columns
    out = {}
    for i in range(len(memory)):
        out[float(cols["obs"][i, 0])] = (float(cols["rew"][i]), float(cols["next_obs"][i, 0]),
                                         bool(cols["terminated"][i]), bool(cols["truncated"][i]),
                                         float(cols["discount"][i]) if "discount" in cols else G)
    return out


def nstep(n=3, capacity=1000, batch_size=4, **kw):
    return NStepReplayMemory(nb_steps=1, batch_size=batch_size, capacity=capacity, seed=0, n_step=n,
                             gamma=G, **kw)


# --- n-step returns against hand computations ------------------------------------------------------
def test_nstep_windows_stop_at_terminated_and_truncated_ends():
    # ids 0..8; rewards 1..9; terminated at 2, truncated at 5; n = 3, gamma = 1/2
    m = nstep(n=3)
    m.append(stream_buffer(range(9), rew=np.arange(1, 10), terminated=[2], truncated=[5]))
    # windows complete now: 0..5 (the ends), 6 (6,7,8); 7 and 8 wait for the rest of their window
    assert len(m) == 7 and m.pending == 2
    assert stored(m) == {
        0.0: (1 + G * 2 + G * G * 3, 2.5, True, False, G ** 3),
        1.0: (2 + G * 3, 2.5, True, False, G ** 2),
        2.0: (3.0, 2.5, True, False, G),             # the terminal transition itself
        3.0: (4 + G * 5 + G * G * 6, 5.5, False, True, G ** 3),
        4.0: (5 + G * 6, 5.5, False, True, G ** 2),  # cut by the time limit: bootstraps from 5's next_obs
        5.0: (6.0, 5.5, False, True, G),
        6.0: (7 + G * 8 + G * G * 9, 8.5, False, False, G ** 3),
    }
    assert m.flush() == 2 and m.pending == 0
    assert stored(m)[7.0] == (8 + G * 9, 8.5, False, False, G ** 2)
    assert stored(m)[8.0] == (9.0, 8.5, False, False, G)


def test_nstep_continues_across_consecutive_buffers_of_a_worker():
    whole = nstep(n=4)
    whole.append(stream_buffer(range(10), truncated=[6]))
    split = nstep(n=4)
    for seq, (a, b) in enumerate([(0, 2), (2, 3), (3, 8), (8, 10)]):  # buffers of 2, 1, 5 and 2 rows
        split.append(stream_buffer(range(a, b), truncated=[i - a for i in range(a, b) if i == 6], seq=seq))
    assert stored(split) == stored(whole) and split.pending == whole.pending == 3
    assert stored(split)[1.0] == (1 + G * 2 + G ** 2 * 3 + G ** 3 * 4, 4.5, False, False, G ** 4)
    whole.flush(), split.flush()
    assert stored(split) == stored(whole)


def test_two_interleaved_workers_are_never_mixed():
    m = nstep(n=3)
    a = [stream_buffer(range(3 * k, 3 * k + 3), worker_id="a", seq=k) for k in range(4)]
    b = [stream_buffer(range(1000 + 2 * k, 1002 + 2 * k), worker_id="b", seq=k) for k in range(4)]
    m.append(a[0])
    m.append(b[0])
    m.append(Buffer.concatenate([a[1], b[1], a[2]]))  # as the trainer's transport joins them
    m.append(b[2])
    m.append(Buffer.concatenate([b[3], a[3]]))
    m.flush()
    rows = stored(m)
    assert len(rows) == 12 + 8
    for obs, (rew, next_obs, *_rest) in rows.items():
        assert (obs >= 1000) == (next_obs >= 1000)
    # each stream as if alone: 0 + 1/2 * 1 + 1/4 * 2, ..., 1000 + 1/2 * 1001 + 1/4 * 1002
    assert rows[0.0][:2] == (0 + G * 1 + G * G * 2, 2.5)
    assert rows[1004.0][:2] == (1004 + G * 1005 + G * G * 1006, 1006.5)
    assert rows[1007.0] == (1007.0, 1007.5, False, False, G)  # flushed: the stream's last row


@pytest.mark.parametrize("second", [
    dict(seq=2),                      # a lost buffer (seq 1 never came)
    dict(seq=0),                      # the worker restarted: a new session counts from 0 again
    dict(seq=1, policy_version=0),    # the policy version went back: a new trainer session
])
def test_a_broken_stream_stores_its_pending_windows_shortened(second):
    m = nstep(n=3)
    m.append(stream_buffer(range(5), seq=0, policy_version=3))
    assert len(m) == 3 and m.pending == 2
    m.append(stream_buffer(range(100, 104), **second))
    rows = stored(m)
    # 3 and 4 bootstrap from where they stop (4's next_obs), with the discount of their length
    assert rows[3.0] == (3 + G * 4, 4.5, False, False, G ** 2)
    assert rows[4.0] == (4.0, 4.5, False, False, G)
    assert rows[100.0] == (100 + G * 101 + G * G * 102, 102.5, False, False, G ** 3)
    assert m.pending == 2


def test_a_continuing_stream_with_a_newer_policy_continues():
    m = nstep(n=3)
    m.append(stream_buffer(range(5), seq=4, policy_version=3))
    m.append(stream_buffer(range(5, 7), seq=5, policy_version=4))
    assert stored(m)[4.0] == (4 + G * 5 + G * G * 6, 6.5, False, False, G ** 3)


def reference(runs, n, gamma):
    """Slow n-step windows: ``runs`` are lists of (id, rew, terminated, truncated) transitions that
    are contiguous in one stream."""
    out = {}
    for run in runs:
        for t in range(len(run)):
            ret, m = 0.0, 0
            for k in range(n):
                if t + k >= len(run):
                    break
                _, r, term, trunc = run[t + k]
                ret += gamma ** k * r
                m += 1
                if term or trunc:
                    break
            last = run[t + m - 1]
            out[run[t][0]] = (ret, last[0] + 0.5, last[2], last[3], gamma ** m)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_nstep_matches_a_slow_reference_on_random_streams(seed):
    rng = np.random.default_rng(seed)
    n, gamma = int(rng.integers(2, 6)), 0.9
    deliveries, runs = [], []
    for w, worker in enumerate(["a", "b", "c"]):
        next_id, seq, run = 10_000.0 * w, 0, []
        for _ in range(12):
            size = int(rng.integers(1, 9))  # (an empty buffer never reaches a memory)
            ids = next_id + np.arange(size)
            next_id += size
            rew = rng.normal(size=size).astype(np.float32)
            term = rng.random(size) < 0.1
            trunc = ~term & (rng.random(size) < 0.1)
            lost = rng.random() < 0.15
            if lost:  # a lost buffer breaks the stream
                runs.append(run)
                run = []
            else:
                buf = stream_buffer(ids, rew, np.flatnonzero(term), np.flatnonzero(trunc), worker, seq)
                deliveries.append(buf)
                run.extend(zip(ids.tolist(), rew.tolist(), term.tolist(), trunc.tolist()))
            seq += 1
        runs.append(run)
    # deliver in a random interleaving that keeps each worker's order, sometimes joined
    order = sorted(range(len(deliveries)), key=lambda i: (rng.random() + i % 12, i))
    per_worker = {}
    for i in order:
        per_worker.setdefault(deliveries[i].worker_id, []).append(deliveries[i])
    queues = {k: sorted(v, key=lambda b: b.seq) for k, v in per_worker.items()}
    memory = NStepReplayMemory(nb_steps=1, batch_size=1, capacity=10_000, seed=0, n_step=n, gamma=gamma)
    while any(queues.values()):
        pick = [queues[k].pop(0) for k in queues if queues[k] and rng.random() < 0.6]
        if pick:
            memory.append(Buffer.concatenate(pick) if len(pick) > 1 else pick[0])
    memory.flush()
    got = stored(memory)
    want = reference([r for r in runs if r], n, gamma)
    assert got.keys() == want.keys()
    for key, (ret, nxt, term, trunc, disc) in want.items():
        g = got[key]
        assert g[0] == pytest.approx(ret, rel=1e-5, abs=1e-5) and g[1:4] == (nxt, term, trunc)
        assert g[4] == pytest.approx(disc, rel=1e-6)


def test_nstep_windows_function_directly():
    c, last, returns, discounts = nstep_windows(np.ones(5), np.zeros(5, bool), np.zeros(5, bool), 3, G)
    assert c == 3 and last.tolist() == [2, 3, 4] and returns.tolist() == [1.75] * 3
    assert discounts.tolist() == [G ** 3] * 3
    c, last, *_ = nstep_windows(np.ones(5), np.zeros(5, bool), np.zeros(5, bool), 3, G, complete_all=True)
    assert c == 5 and last.tolist() == [2, 3, 4, 4, 4]


# --- n = 1: today's memory -------------------------------------------------------------------------
def test_n_step_1_is_the_uniform_memory():
    cls = configured_memory_cls(MemoryConfig(batch_size=8, capacity=50), gamma=0.9, seed=3)
    assert cls.func is ReplayMemory and cls.keywords == dict(batch_size=8, capacity=50, seed=3)
    plain = cls(nb_steps=2)
    same = NStepReplayMemory(nb_steps=2, batch_size=8, capacity=50, seed=3, n_step=1, gamma=0.9)
    for k in range(5):
        buf = make_buffer(17, start=17 * k, terminate_last=k % 2 == 1)
        plain.append(buf)
        same.append(buf)
    assert same._assembler is None and same.pending == 0 and set(same._columns) == set(plain._columns)
    assert plain.draw_ahead and same.draw_ahead
    for a, b in zip(list(plain) + plain.sample_batches(3), list(same) + same.sample_batches(3)):
        assert all(torch.equal(x, y) for x, y in zip(a, b)) and b.discounts is None and b.weights is None


def test_configured_memory_classes():
    cls = configured_memory_cls(MemoryConfig(n_step=3), gamma=0.97, seed=1)
    assert cls.func is NStepReplayMemory and cls.keywords["n_step"] == 3 and cls.keywords["gamma"] == 0.97
    cls = configured_memory_cls(MemoryConfig(n_step=2, prioritized=True, priority_exponent=0.5,
                                             importance_exponent=1.0), gamma=0.9)
    memory = cls(nb_steps=1)
    assert isinstance(memory, PrioritizedReplayMemory) and memory.n_step == 2 and memory.gamma == 0.9
    assert (memory.priority_exponent, memory.importance_exponent) == (0.5, 1.0) and not memory.draw_ahead
    assert isinstance(choose_batch_source(memory, 1, True, PrefetchThread()), Iterate)


# --- the batch contract ----------------------------------------------------------------------------
def test_batches_unpack_like_the_tuple_and_carry_the_extras():
    m = nstep(n=2, batch_size=6)
    m.append(stream_buffer(range(20), truncated=[9]))
    b = m.sample()
    assert isinstance(b, ReplayBatch) and isinstance(b, Batch) and len(b) == 6
    obs, act, rew, next_obs, terminated, truncated = b
    assert b[2] is rew and b.rew is rew and b.weights is None and b.td_errors is None
    assert b.discounts.dtype == torch.float32 and b.discounts.shape == (6,)
    assert isinstance(b.indices, np.ndarray) and b.indices.shape == (6,)
    # the discounts belong to the samples: gamma^2 except where a window ended at the time limit
    expect = np.where(m._columns["discount"][b.indices] == G, G, G ** 2)
    assert np.array_equal(b.discounts.numpy(), expect.astype(np.float32))
    b.report_td_errors(torch.ones(6, requires_grad=True) * 2)
    assert not b.td_errors.requires_grad and b.td_errors.shape == (6,)
    # a plain Batch answers the same questions, with nothing
    plain = ReplayMemory(nb_steps=1, batch_size=2, capacity=10, seed=0)
    plain.append(make_buffer(5))
    p = plain.sample()
    assert type(p) is Batch and p.weights is p.discounts is p.indices is p.td_errors is None
    p.report_td_errors(torch.ones(2))
    assert p.td_errors is None


def test_nstep_draws_ahead_with_the_same_batches_and_discounts():
    a, b = nstep(n=3, batch_size=5), nstep(n=3, batch_size=5)
    for m in (a, b):
        m.append(stream_buffer(range(40), terminated=[10], truncated=[25]))
    one_by_one = [a.sample() for _ in range(4)]
    at_once = b.sample_batches(4)
    for x, y in zip(one_by_one, at_once):
        assert all(torch.equal(s, t) for s, t in zip(x, y))
        assert torch.equal(x.discounts, y.discounts) and np.array_equal(x.indices, y.indices)


# --- prioritized replay ----------------------------------------------------------------------------
def test_sum_tree_sums_finds_and_rebuilds():
    tree = SumTree(6)
    tree.set_range(0, np.array([1.0, 0.0, 2.0, 3.0, 0.0, 4.0]))
    assert tree.total == 10.0 and tree_is_consistent(tree)
    assert tree.find(np.array([0.0, 0.999, 1.0, 2.999, 3.0, 5.999, 6.0, 9.999, 10.0, 11.0])).tolist() == \
        [0, 0, 2, 2, 3, 3, 5, 5, 5, 5]  # zero leaves are never found, not even past the top
    tree.update(np.array([5, 1, 5]), np.array([9.0, 1.5, 0.5]))  # repeats: the last wins
    assert tree.leaves.tolist() == [1.0, 1.5, 2.0, 3.0, 0.0, 0.5] and tree.total == 8.0
    assert tree_is_consistent(tree)
    other = SumTree(6)
    other.set_all(tree.leaves)
    assert np.array_equal(other._nodes, tree._nodes)
    careful = tree._find_careful(np.array([0.0, 2.5, 7.999, 8.0])) - tree._base
    assert careful.tolist() == tree.find(np.array([0.0, 2.5, 7.999, 8.0])).tolist() == [0, 2, 5, 5]
    single = SumTree(1)
    single.set_range(0, 2.0, 1)
    assert single.total == 2.0 and single.find(np.array([1.9])).tolist() == [0]


def test_sum_tree_of_many_leaves_against_cumulative_sums():
    rng = np.random.default_rng(0)
    tree = SumTree(5000)
    values = rng.uniform(0, 1, 5000) * (rng.random(5000) < 0.7)  # 30 % zeros
    tree.set_range(0, values[:3000])
    tree.set_range(3000, values[3000:])
    assert tree.depth == 13 and tree_is_consistent(tree)
    targets = rng.uniform(0, tree.total, 2000)
    assert np.array_equal(tree.find(targets), np.searchsorted(np.cumsum(values), targets, side="right"))


def prioritized(capacity=64, batch_size=32, alpha=0.6, beta=0.4, n=1, seed=0):
    return PrioritizedReplayMemory(nb_steps=1, batch_size=batch_size, capacity=capacity, seed=seed,
                                   n_step=n, gamma=G, priority_exponent=alpha, importance_exponent=beta)


def test_draw_frequencies_follow_the_priorities():
    m = prioritized(capacity=64, batch_size=64)  # 16 of the 64 slots filled
    m.append(make_buffer(16))
    p = np.random.default_rng(1).uniform(0.1, 5.0, 16)
    m.update_priorities(np.arange(16), p - m.priority_epsilon)
    probability = p ** 0.6 / (p ** 0.6).sum()
    assert np.allclose(m.priorities(), p ** 0.6)
    counts = np.zeros(16)
    draws = 2000
    for _ in range(draws):
        counts += np.bincount(m.sample_indices(), minlength=16)
    expected = probability * draws * 64
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 40.0, chi2  # 15 degrees of freedom: p < 0.001 under multinomial draws
    uniform = np.full(16, draws * 64 / 16)
    assert float(((uniform - expected) ** 2 / expected).sum()) > 1000  # the test can tell


def test_importance_weights_follow_their_definition():
    beta = 0.7
    m = prioritized(capacity=32, batch_size=16, beta=beta)
    m.append(make_buffer(20))
    m.update_priorities(np.arange(20), np.linspace(0.0, 3.0, 20))
    b = m.sample()
    assert b.weights.dtype == torch.float32 and b.weights.shape == (16,)
    leaves = m.priorities()
    probability = leaves[b.indices] / leaves.sum()
    w = (len(m) * probability) ** -beta
    assert np.allclose(b.weights.numpy(), w / w.max(), rtol=1e-6) and b.weights.max() == 1.0
    assert torch.equal(b.rew, torch.from_numpy(m._columns["rew"][b.indices]))
    # alpha = 0: uniform, every weight 1
    flat = prioritized(capacity=32, batch_size=16, alpha=0.0)
    flat.append(make_buffer(20))
    flat.update_priorities(np.arange(20), np.linspace(0.0, 3.0, 20))
    assert torch.equal(flat.sample().weights, torch.ones(16))


def test_reported_td_errors_update_priorities_after_the_update():
    m = prioritized(capacity=64, batch_size=8, alpha=0.5)
    m.append(make_buffer(30))
    assert np.array_equal(m.priorities(), np.ones(30)) and m.max_priority == 1.0  # new: the max
    b = m.sample()
    errors = torch.arange(8, dtype=torch.float32) * 2 - 7  # signs do not matter
    b.report_td_errors(errors)
    assert np.array_equal(m.priorities(), np.ones(30))  # reporting only stores
    m.after_update(b)
    want = (np.abs(errors.numpy().astype(np.float64)) + m.priority_epsilon) ** 0.5
    got = m.priorities()[b.indices]
    last_write = {int(i): k for k, i in enumerate(b.indices)}  # a slot drawn twice: the last error
    assert np.allclose(got, [want[last_write[int(i)]] for i in b.indices])
    assert m.max_priority == pytest.approx(7 + m.priority_epsilon)
    assert m.tree.total == pytest.approx(m.priorities().sum(), rel=1e-12)
    m.after_update(b)  # applied once only; a batch without errors changes nothing
    m.append(make_buffer(2, start=30))
    assert m.priorities()[30:32] == pytest.approx([(7 + m.priority_epsilon) ** 0.5] * 2)  # the new max
    with pytest.raises(ValueError, match="TD errors"):
        m.update_priorities(b.indices, np.zeros(3))


def tree_is_consistent(tree: SumTree) -> bool:
    """Every inner node is the sum of its two children; the leaves past the capacity are 0."""
    nodes, base = tree._nodes, tree._base
    parents = np.arange(1, base)
    return bool(np.allclose(nodes[parents], nodes[2 * parents] + nodes[2 * parents + 1], rtol=1e-12, atol=0)
                and not nodes[base + tree.capacity:].any())


def test_ring_overwrites_keep_the_tree_consistent_and_stale_errors_out():
    m = prioritized(capacity=10, batch_size=4, alpha=1.0)
    m.append(make_buffer(7))
    stale = m.sample()
    m.update_priorities(np.arange(7), np.arange(7) * 10.0)
    for k in range(5):
        m.append(make_buffer(4, start=100 + 4 * k))   # wraps around twice
        b = m.sample()
        b.report_td_errors(torch.full((4,), 0.5))
        m.after_update(b)
        assert tree_is_consistent(m.tree)
        assert m.tree.total == pytest.approx(float(m.tree.leaves.sum()), rel=1e-12)
        assert np.all(m.tree.leaves[len(m):] == 0) and np.all(m.priorities() > 0)
    before = m.priorities()
    stale.report_td_errors(torch.full((4,), 1e6))  # drawn before every slot was overwritten
    m.after_update(stale)
    assert np.array_equal(m.priorities(), before) and m.max_priority < 1e6
    m.append(make_buffer(25, start=500))  # more than the capacity at once
    assert np.allclose(m.priorities(), m.max_priority) and tree_is_consistent(m.tree)


def test_nan_errors_do_not_poison_the_tree():
    m = prioritized(capacity=16, batch_size=4)
    m.append(make_buffer(16))
    m.update_priorities(np.array([0, 1, 2, 3]), np.array([np.nan, np.inf, 2.0, 0.0]))
    assert np.isfinite(m.tree.total) and m.priorities()[0] == m.priorities()[1] == m.max_priority ** 0.6


def test_prioritized_nstep_batches_carry_everything():
    m = prioritized(capacity=100, batch_size=8, n=3)
    m.append(stream_buffer(range(30), terminated=[4], truncated=[17]))
    b = m.sample()
    assert b.weights is not None and b.discounts is not None and b.indices is not None
    assert np.array_equal(b.discounts.numpy(), m._columns["discount"][b.indices])
    assert len(m) == 28 and m.pending == 2 and len(m.sample_batches(3)) == 3


# --- checkpoints -----------------------------------------------------------------------------------
def fill(memory):
    memory.append(stream_buffer(range(12), truncated=[4], worker_id="a", seq=0))
    memory.append(stream_buffer(range(100, 107), worker_id="b", seq=5))
    memory.append(stream_buffer(range(12, 25), terminated=[8], worker_id="a", seq=1))  # wraps (capacity 20)


@pytest.mark.parametrize("make", [
    lambda: nstep(n=3, capacity=20, batch_size=5),
    lambda: prioritized(capacity=20, batch_size=5, n=3),
    lambda: prioritized(capacity=20, batch_size=5, n=1),
])
def test_state_round_trips_through_a_checkpoint_and_continues_identically(tmp_path, make):
    a = make()
    fill(a)
    if isinstance(a, PrioritizedReplayMemory):
        b0 = a.sample()
        b0.report_td_errors(torch.linspace(0, 4, 5))
        a.after_update(b0)
    path = save_checkpoint(tmp_path, "m", {"memory": a.state_dict()})
    b = make()
    b.load_state_dict(load_checkpoint(path)["memory"])
    assert len(b) == len(a) and b.pending == a.pending and b.total_appended == a.total_appended
    if isinstance(a, PrioritizedReplayMemory):
        assert b.max_priority == a.max_priority
        assert np.array_equal(b.priorities(), a.priorities()) and tree_is_consistent(b.tree)
    # both continue the streams the same way: the pending tails came along
    for m in (a, b):
        m.append(stream_buffer(range(25, 27), worker_id="a", seq=2))
        m.append(stream_buffer(range(107, 108), worker_id="b", seq=6))
    assert stored(a) == stored(b)
    if a.n_step > 1:
        assert stored(b)[24.0][:2] == (24 + G * 25 + G * G * 26, 26.5)  # a window across the checkpoint
    for _ in range(3):
        x, y = a.sample(), b.sample()
        assert all(torch.equal(s, t) for s, t in zip(x, y))
        assert (x.weights is None and y.weights is None) or torch.equal(x.weights, y.weights)


def test_an_nstep_state_does_not_load_into_a_one_step_memory():
    a = nstep(n=3)
    fill(a)
    with pytest.raises(ValueError, match="n-step"):
        ReplayMemory(nb_steps=1, batch_size=4, capacity=1000).load_state_dict(a.state_dict())
    # the other way round: one-step transitions bootstrap one step away
    one = ReplayMemory(nb_steps=1, batch_size=4, capacity=1000, seed=0)
    one.append(make_buffer(9))
    m = nstep(n=3)
    m.load_state_dict(one.state_dict())
    assert len(m) == 9 and np.all(m._columns["discount"][:9] == G)


# --- the training loop -----------------------------------------------------------------------------
class ReportingAgent(CountingAgent):
    """Reports |rew| + 1 as the TD error of each sample, from the batch it trained on."""

    def train(self, batch):
        metrics = super().train(batch)
        assert getattr(batch, "weights", None) is not None
        batch.report_td_errors(batch.rew.abs() + 1.0)
        return metrics


class CountingPrioritized(PrioritizedReplayMemory):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.after_updates = 0

    def after_update(self, batch) -> None:
        self.after_updates += 1
        super().after_update(batch)


def test_the_training_loop_hands_td_errors_back_to_the_memory():
    t = TorchTrainingOffline(
        env_cls=SPACES, memory_cls=functools.partial(CountingPrioritized, batch_size=4, capacity=1000,
                                                     seed=0, n_step=2, gamma=G),
        training_agent_cls=ReportingAgent, epochs=1, rounds=2, steps=10, update_model_interval=5,
        update_buffer_interval=5, sleep_between_buffer_retrieval_attempts=0.0, device="cpu")
    t.run_epoch(ScriptedInterface(t, per_pull=10))
    memory, agent = t.memory, t.agent
    assert agent.calls == 20 and memory.after_updates == 20
    trained = np.unique(np.concatenate([b.indices for b in agent.batches]))
    untrained = np.setdiff1d(np.arange(len(memory)), trained)
    assert len(trained) and memory.max_priority > 1.0
    # each trained slot's priority is its last reported error (unless the slot was written again)
    rew = memory._columns["rew"][trained]
    fresh = memory.priorities()[trained] == pytest.approx(memory.max_priority ** 0.6)
    assert np.allclose(memory.priorities()[trained][~np.asarray(fresh)],
                       ((np.abs(rew) + 1 + memory.priority_epsilon) ** 0.6)[~np.asarray(fresh)])
    assert not np.allclose(memory.priorities()[trained], 1.0)
    assert all(b.td_errors is None for b in agent.batches)  # all applied
    assert len(untrained) == 0 or np.all(memory.priorities()[untrained] >= 1.0)


def test_the_trainer_builds_the_configured_memory(tmp_path):
    from relayrl.config import RunConfig, with_overrides
    from relayrl.trainer import Trainer

    cfg = with_overrides(RunConfig(), **{
        "run_dir": str(tmp_path / "run"), "memory.batch_size": 8, "memory.n_step": 3,
        "memory.prioritized": True, "memory.priority_exponent": 0.5, "training.device": "cpu",
        "training.torch_threads": 1, "sac.hidden_sizes": [8, 8], "sac.gamma": 0.9})
    memory = Trainer(cfg, progress=False, print_tables=False).training.memory
    assert isinstance(memory, PrioritizedReplayMemory)
    assert (memory.n_step, memory.gamma, memory.priority_exponent, memory.batch_size) == (3, 0.9, 0.5, 8)


def test_joined_buffers_remember_their_senders():
    a0, b0 = stream_buffer(range(3), worker_id="a", seq=4), stream_buffer(range(2), worker_id="b", seq=9)
    a1 = stream_buffer(range(3, 4), worker_id="a", seq=5, policy_version=2)
    joined = Buffer.concatenate([Buffer.concatenate([a0, b0]), a1])
    assert joined.parts == (("a", 4, 0, 3), ("b", 9, 0, 2), ("a", 5, 2, 1))
    assert joined.segments() == [("a", 4, 0, 0, 3), ("b", 9, 0, 3, 5), ("a", 5, 2, 5, 6)]
    assert a0.parts is None and a0.segments() == [("a", 4, 0, 0, 3)]
