import numpy as np
import pytest
import torch

from relayrl.buffer import Buffer, BufferBuilder, EpisodeStats
from relayrl.memory import Batch, ReplayMemory

from helpers import make_buffer


def test_batches_have_shapes_dtypes_and_count():
    m = ReplayMemory(nb_steps=7, batch_size=5, capacity=100, seed=0)
    m.append(make_buffer(20))
    batches = list(m)
    assert len(batches) == 7
    b = batches[0]
    assert isinstance(b, Batch)
    assert b.obs.shape == (5, 3) and b.act.shape == (5, 1) and b.rew.shape == (5,)
    assert b.next_obs.shape == (5, 3) and b.terminated.shape == (5,) and b.truncated.shape == (5,)
    assert all(t.dtype == torch.float32 for t in b)
    obs, act, rew, next_obs, terminated, truncated = b  # tmrl-style unpacking


def test_transitions_stay_whole():
    m = ReplayMemory(nb_steps=1, batch_size=64, capacity=1000, seed=1)
    m.append(make_buffer(50, start=0.0, terminate_last=True))
    m.append(make_buffer(50, start=1000.0))
    for _ in range(20):
        b = m.sample()
        assert torch.equal(b.next_obs, b.obs + 0.5)
        assert torch.equal(b.rew, b.obs[:, 0]) and torch.equal(b.act[:, 0], b.obs[:, 0])
        # the only terminal transition is the one the worker marked
        assert torch.all((b.terminated == 1) == (b.obs[:, 0] == 49.0))


def test_no_cross_worker_stitching():
    """Interleaved partial episodes from two workers: every sampled next_obs belongs to the same
    worker's stream as its obs."""
    m = ReplayMemory(nb_steps=1, batch_size=256, capacity=10_000, seed=2)
    for chunk in range(10):
        m.append(make_buffer(7, start=chunk * 7, worker_id="a"))             # values 0..69
        m.append(make_buffer(7, start=10_000 + chunk * 7, worker_id="b"))    # values 10000..
    for _ in range(10):
        b = m.sample()
        same_stream = (b.obs[:, 0] >= 10_000) == (b.next_obs[:, 0] >= 10_000)
        assert bool(same_stream.all())


def test_ring_buffer_wraps_and_keeps_newest():
    m = ReplayMemory(nb_steps=1, batch_size=4, capacity=10, seed=0)
    m.append(make_buffer(7, start=0))
    m.append(make_buffer(7, start=7))  # wraps
    assert len(m) == 10
    stored = sorted(float(m.get_transition(i)[2]) for i in range(10))
    assert stored == [float(v) for v in range(4, 14)]
    m.append(make_buffer(25, start=100))  # larger than capacity: the newest 10 survive
    assert sorted(float(m.get_transition(i)[2]) for i in range(10)) == [float(v) for v in range(115, 125)]


def test_seeded_sampling_is_reproducible():
    def draws(seed):
        m = ReplayMemory(nb_steps=1, batch_size=8, capacity=100, seed=seed)
        m.append(make_buffer(60))
        return [m.sample().rew for _ in range(3)]

    assert all(torch.equal(a, b) for a, b in zip(draws(3), draws(3)))
    assert not all(torch.equal(a, b) for a, b in zip(draws(3), draws(4)))


def test_sampling_is_uniform_over_contents():
    m = ReplayMemory(nb_steps=1, batch_size=1000, capacity=1000, seed=0)
    m.append(make_buffer(10))
    counts = np.bincount(m.sample().rew.numpy().astype(int), minlength=10)
    assert counts.min() > 60  # expected 100 each


def test_small_first_buffer_is_kept():
    m = ReplayMemory(nb_steps=1, batch_size=4, capacity=100, seed=0)
    m.append(make_buffer(1))
    assert len(m) == 1
    m.append(make_buffer(0))
    assert len(m) == 1


def test_image_observations_keep_dtype():
    obs = np.random.default_rng(0).integers(0, 255, (6, 4, 8, 8), dtype=np.uint8)
    b = Buffer(obs=obs, act=np.zeros((6, 2), np.float32), rew=np.zeros(6, np.float32),
               next_obs=obs.copy(), terminated=np.zeros(6, bool), truncated=np.zeros(6, bool))
    m = ReplayMemory(nb_steps=1, batch_size=3, capacity=50, seed=0)
    m.append(b)
    assert m._columns["obs"].dtype == np.uint8
    assert m.sample().obs.shape == (3, 4, 8, 8)
    assert m.sample().obs.dtype == torch.float32


def test_float_observations_off_hands_out_stored_dtype():
    obs = np.random.default_rng(0).integers(0, 255, (6, 4, 8, 8), dtype=np.uint8)
    b = Buffer(obs=obs, act=np.zeros((6, 2), np.float32), rew=np.arange(6, dtype=np.float32),
               next_obs=obs.copy(), terminated=np.zeros(6, bool), truncated=np.zeros(6, bool))
    as_float = ReplayMemory(nb_steps=1, batch_size=3, capacity=50, seed=0)
    as_stored = ReplayMemory(nb_steps=1, batch_size=3, capacity=50, seed=0, float_observations=False)
    as_float.append(b)
    as_stored.append(b)
    f, u = as_float.sample(), as_stored.sample()
    assert u.obs.dtype == torch.uint8 and u.next_obs.dtype == torch.uint8
    assert u.rew.dtype == torch.float32 and u.terminated.dtype == torch.float32
    assert torch.equal(u.obs.float(), f.obs) and torch.equal(u.rew, f.rew)
    with pytest.raises(TypeError, match="float_observations"):
        ReplayMemory(nb_steps=1, float_observations="no")


def test_mismatched_shapes_are_refused():
    m = ReplayMemory(nb_steps=1, batch_size=2, capacity=50)
    m.append(make_buffer(5))
    with pytest.raises(ValueError, match="same environment spaces"):
        m.append(make_buffer(5, obs_dim=4))


def test_empty_memory_sampling_error():
    with pytest.raises(RuntimeError, match="empty memory"):
        ReplayMemory(nb_steps=1, batch_size=2, capacity=50).sample()


def test_bad_memory_settings():
    with pytest.raises(ValueError, match="capacity"):
        ReplayMemory(nb_steps=1, batch_size=100, capacity=10)
    with pytest.raises(ValueError, match="nb_steps"):
        ReplayMemory(nb_steps=0)


def test_state_dict_round_trip_after_wrap():
    m = ReplayMemory(nb_steps=1, batch_size=4, capacity=10, seed=5)
    m.append(make_buffer(13))
    m.sample()
    n = ReplayMemory(nb_steps=1, batch_size=4, capacity=10, seed=99)
    n.load_state_dict(m.state_dict())
    assert len(n) == 10 and n.total_appended == 13
    for _ in range(3):
        a, b = m.sample(), n.sample()
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_buffer_validation_and_builder():
    with pytest.raises(ValueError, match="first"):
        Buffer(obs=np.zeros((3, 2)), act=np.zeros((2, 1)), rew=np.zeros(3), next_obs=np.zeros((3, 2)),
               terminated=np.zeros(3, bool), truncated=np.zeros(3, bool)).validate()
    builder = BufferBuilder((2,), (1,), capacity=2)
    for i in range(5):  # grows past its initial capacity
        builder.add([i, i], [i], float(i), [i + 1, i + 1], i == 4, False)
    builder.add_episode(EpisodeStats(-3.0, 5))
    buf = builder.take(worker_id="w1", seq=3, policy_version=2)
    assert len(buf) == 5 and buf.rew.tolist() == [0, 1, 2, 3, 4] and buf.terminated.tolist()[-1]
    assert buf.episodes == [EpisodeStats(-3.0, 5)] and buf.worker_id == "w1" and buf.seq == 3
    assert len(builder) == 0 and builder.episodes == []
    joined = Buffer.concatenate([buf, make_buffer(2, obs_dim=2)])
    assert len(joined) == 7 and len(joined.episodes) == 1


@pytest.mark.parametrize("max_draw_bytes", [64 << 20, 1])  # one gather, or one per batch
def test_sample_batches_are_the_batches_sample_would_draw(max_draw_bytes):
    a = ReplayMemory(nb_steps=1, batch_size=16, capacity=500, seed=3)
    b = ReplayMemory(nb_steps=1, batch_size=16, capacity=500, seed=3)
    a.max_draw_bytes = max_draw_bytes
    for m in (a, b):
        m.append(make_buffer(300))
    many = a.sample_batches(7)
    one_by_one = [b.sample() for _ in range(7)]
    assert len(many) == 7
    for x, y in zip(many, one_by_one):
        assert isinstance(x, Batch)
        for u, v in zip(x, y):
            assert u.shape == v.shape and u.dtype == v.dtype and u.is_contiguous()
            assert torch.equal(u, v)
    assert torch.equal(a.sample().obs, b.sample().obs)  # the generators stay in step


def test_sample_batches_errors():
    m = ReplayMemory(nb_steps=1, batch_size=4, capacity=100, seed=0)
    with pytest.raises(RuntimeError, match="empty memory"):
        m.sample_batches(3)
    m.append(make_buffer(10))
    with pytest.raises(ValueError, match="n must be >= 1"):
        m.sample_batches(0)


def test_batches_per_draw_follows_the_batch_size_in_bytes():
    m = ReplayMemory(nb_steps=1, batch_size=256, capacity=1000, seed=0)
    assert m.batch_bytes == 0 and m.batches_per_draw >= 1  # nothing stored yet
    m.append(make_buffer(300))  # obs 3, act 1: 10 float32 per transition as handed out
    assert m.batch_bytes == 256 * 10 * 4
    assert m.batches_per_draw == (4 << 20) // (256 * 40)
    obs = np.zeros((10, 4, 64, 64), np.uint8)
    b = Buffer(obs=obs, act=np.zeros((10, 2), np.float32), rew=np.zeros(10, np.float32),
               next_obs=obs, terminated=np.zeros(10, bool), truncated=np.zeros(10, bool))
    images = ReplayMemory(nb_steps=1, batch_size=256, capacity=300, seed=0, float_observations=False)
    images.append(b)
    assert images.batch_bytes == 256 * (2 * 4 * 64 * 64 + 2 * 4 + 3 * 4)  # uint8 observations
    assert images.batches_per_draw == 1  # 8 MB a batch: drawn one at a time


def test_draw_ahead_flag_is_explicit_and_conservative():
    from relayrl.memory import Memory

    assert Memory.draw_ahead is False and ReplayMemory.draw_ahead is True

    class Plain(ReplayMemory):           # draws as ReplayMemory does
        pass

    class Augmented(ReplayMemory):       # changes how one batch is drawn, says nothing
        def collate(self, indices):
            return super().collate(indices)

    class Prioritised(ReplayMemory):
        def sample_indices(self, count=None):
            return super().sample_indices(count)

    class Later(Augmented):              # inherits its parent's flag
        pass

    class Declared(ReplayMemory):        # overrides sample, and says draws may be made ahead
        draw_ahead = True

        def sample(self):
            return super().sample()

    assert Plain.draw_ahead and Declared.draw_ahead
    assert not Augmented.draw_ahead and not Prioritised.draw_ahead and not Later.draw_ahead


def test_memory_defaults_draw_batches_one_sample_at_a_time():
    from relayrl.memory import Memory

    class Counting(Memory):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.samples = 0

        def __len__(self):
            return 10

        def append(self, buffer):
            pass

        def sample(self):
            self.samples += 1
            return self.samples

    m = Counting(nb_steps=3, batch_size=2, capacity=10)
    assert m.batches_per_draw == 1 and m.draw_ahead is False
    assert m.sample_batches(4) == [1, 2, 3, 4] and m.samples == 4
    with pytest.raises(ValueError, match="n must be >= 1"):
        m.sample_batches(0)
