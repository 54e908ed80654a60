"""The ZeroMQ transport over loopback TCP: buffers in, weights and allowances out, accounting,
late joiners, malformed messages, back-pressure, and workers in separate processes."""
from __future__ import annotations

import logging
import multiprocessing
import time

import msgpack
import numpy as np
import pytest
import zmq

from relayrl.buffer import Buffer, EpisodeStats
from relayrl.transport import ZmqTrainerInterface, ZmqWorkerClient, encode_buffer, encode_weights

LOOPBACK = "tcp://127.0.0.1:0"


def make_buffer(n: int, start: float = 0.0, episodes=(), obs_dim: int = 3) -> Buffer:
    values = start + np.arange(n, dtype=np.float32)
    obs = np.repeat(values[:, None], obs_dim, axis=1)
    return Buffer(obs=obs, act=values[:, None].copy(), rew=values.copy(), next_obs=obs + 0.5,
                  terminated=np.zeros(n, bool), truncated=np.zeros(n, bool), episodes=list(episodes))


class FakeActor:
    """Anything with ``weights()`` can be broadcast (no torch needed here)."""

    def __init__(self, value: float):
        self.value = value

    def weights(self):
        return {"w": np.full((2, 3), self.value, np.float32), "b": np.arange(3, dtype=np.float64)}


@pytest.fixture
def closing():
    """Register trainers, clients and raw sockets; all are closed when the test ends."""
    things = []
    yield things.append
    for thing in reversed(things):
        thing.close(0) if isinstance(thing, zmq.Socket) else thing.close()


def pump(trainer: ZmqTrainerInterface, until, timeout: float = 5.0, collected: list | None = None):
    """Let the trainer serve (retrieving buffers into ``collected``) until ``until()`` is true."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        trainer.wait_for_data(0.02)
        buffer = trainer.retrieve_buffer()
        if collected is not None and (len(buffer) or buffer.episodes):
            collected.append(buffer)


def rows(collected: list[Buffer]) -> int:
    return sum(len(b) for b in collected)


def test_endpoints_are_the_bound_addresses_and_empty_retrieve_is_a_zero_row_buffer(closing):
    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK)
    closing(trainer)
    for endpoint in (trainer.buffer_endpoint, trainer.weights_endpoint):
        assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":0")
    empty = trainer.retrieve_buffer()
    assert len(empty) == 0 and empty.episodes == [] and isinstance(empty.episodes, list)
    assert empty.obs.ndim == 2
    assert trainer.wait_for_data(0.05) is False


def test_buffers_arrive_with_content_and_accounting(closing):
    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK)
    closing(trainer)
    a = ZmqWorkerClient(trainer.buffer_endpoint, trainer.weights_endpoint, "a")
    b = ZmqWorkerClient(trainer.buffer_endpoint, trainer.weights_endpoint, "b")
    closing(a)
    closing(b)
    trainer.publish_weights(FakeActor(1.0).weights())  # version 1: buffers below lag behind it
    for i in range(5):
        a.send_buffer(make_buffer(4, start=100 * i, episodes=[EpisodeStats(float(i), 4)]))
    for i in range(3):
        b.send_buffer(make_buffer(2, start=1000 + 100 * i))
    assert a.samples_sent == 20 and a.seq == 5 and b.samples_sent == 6
    collected: list[Buffer] = []
    pump(trainer, lambda: rows(collected) >= 26, collected=collected)
    merged = Buffer.concatenate(collected)
    assert len(merged) == 26
    expected = sorted([100 * i + k for i in range(5) for k in range(4)] +
                      [1000 + 100 * i + k for i in range(3) for k in range(2)])
    assert sorted(merged.rew.tolist()) == expected
    np.testing.assert_array_equal(merged.next_obs, merged.obs + 0.5)
    assert sorted(e.episode_return for e in merged.episodes) == [0.0, 1.0, 2.0, 3.0, 4.0]
    stats = trainer.stats()
    assert stats["samples"] == 26 and stats["buffers"] == 8 and stats["dropped_messages"] == 0
    assert stats["workers"]["a"]["samples"] == 20 and stats["workers"]["a"]["buffers"] == 5
    assert stats["workers"]["b"]["samples"] == 6 and stats["workers"]["b"]["lost_buffers"] == 0
    assert stats["workers"]["a"]["last_policy_version"] == 0
    assert stats["workers"]["a"]["policy_lag_mean"] == 1.0
    assert stats["workers"]["a"]["sessions"] == 1


def test_lost_and_duplicate_buffers_are_counted(closing):
    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK)
    closing(trainer)
    push = zmq.Context.instance().socket(zmq.PUSH)
    closing(push)
    push.connect(trainer.buffer_endpoint)
    for seq in (0, 1, 4, 5, 2, 9):  # 2 and 3 lost, then 2 repeated, then 6-8 lost
        buffer = make_buffer(1, start=seq)
        buffer.worker_id, buffer.seq, buffer.policy_version = "raw", seq, 0
        push.send_multipart(encode_buffer(buffer))
    collected: list[Buffer] = []
    pump(trainer, lambda: rows(collected) >= 6, collected=collected)
    account = trainer.stats()["workers"]["raw"]
    assert account["buffers"] == 6 and account["lost_buffers"] == 2 + 3 and account["duplicate_buffers"] == 1


def test_weights_reach_workers_late_joiners_at_once_versions_increase(closing):
    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK)
    closing(trainer)
    early = ZmqWorkerClient(trainer.buffer_endpoint, trainer.weights_endpoint, "early")
    closing(early)
    pump(trainer, lambda: early.wait_for_message(0.0))  # subscribed: the control message came
    trainer.broadcast_model(FakeActor(1.0))
    trainer.broadcast_model(FakeActor(2.0))
    got = []
    pump(trainer, lambda: got.append(early.poll_weights()) or got[-1] is not None and got[-1][0] == 2)
    version, weights = got[-1]
    np.testing.assert_array_equal(weights["w"], np.full((2, 3), 2.0, np.float32))
    assert weights["w"].flags.writeable  # the worker owns its copy (torch wants writable arrays)
    assert early.policy_version == 2

    late = ZmqWorkerClient(trainer.buffer_endpoint, trainer.weights_endpoint, "late")
    closing(late)
    started = time.monotonic()
    got = []
    pump(trainer, lambda: got.append(late.poll_weights()) or got[-1] is not None)
    assert time.monotonic() - started < 2.0
    assert got[-1][0] == 2
    np.testing.assert_array_equal(got[-1][1]["w"], np.full((2, 3), 2.0, np.float32))
    assert early.poll_weights(0.2) is None  # the re-send for the late joiner is not a new version

    trainer.broadcast_model(FakeActor(3.0))
    for client in (early, late):
        message = None
        deadline = time.monotonic() + 5.0
        while message is None and time.monotonic() < deadline:
            trainer.wait_for_data(0.01)
            message = client.poll_weights(0.05)
        assert message is not None and message[0] == 3
        assert float(message[1]["w"][0, 0]) == 3.0


def test_resumed_trainer_continues_versions(closing):
    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK, initial_version=41)
    closing(trainer)
    assert trainer.publish_weights({"w": np.zeros(1, np.float32)}) == 42


def test_unmetered_control_means_unlimited(closing):
    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK)
    closing(trainer)
    client = ZmqWorkerClient(trainer.buffer_endpoint, trainer.weights_endpoint, "w")
    closing(client)
    assert client.allowed_samples() is None  # nothing heard yet
    pump(trainer, lambda: client.wait_for_message(0.0))
    assert client._control == {"allow": {}, "sessions": {}, "default": None}
    assert client.allowed_samples() is None
    trainer.report_progress(total_updates=100, total_samples=10**9, memory_len=0)
    assert client.allowed_samples() is None


def test_credits_follow_the_rule(closing):
    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK, env_steps_per_update=2.0, initial_samples=10,
                                  slack_samples=5)
    closing(trainer)
    a = ZmqWorkerClient(trainer.buffer_endpoint, trainer.weights_endpoint, "a")
    closing(a)
    # before a's hello is processed: the default share of 10 + 0 + 5 = 15 for one worker
    pump(trainer, lambda: a.allowed_samples() is not None)
    pump(trainer, lambda: trainer.stats()["workers"].get("a") is not None)
    pump(trainer, lambda: a.allowed_samples() == 15)
    b = ZmqWorkerClient(trainer.buffer_endpoint, trainer.weights_endpoint, "b")
    closing(b)
    pump(trainer, lambda: trainer.stats()["active_workers"] == 2)
    # two active workers share ceil(15 / 2) = 8
    pump(trainer, lambda: a.allowed_samples() == 8 and b.allowed_samples() == 8)

    a.send_buffer(make_buffer(6))
    collected: list[Buffer] = []
    pump(trainer, lambda: rows(collected) >= 6, collected=collected)
    trainer.report_progress(total_updates=3, total_samples=6, memory_len=6)
    # allowance = max(10, 3 * 2) + 5 = 15, remaining = 9, share = ceil(9 / 2) = 5
    assert trainer.stats()["control"]["default"] == 5
    pump(trainer, lambda: a.allowed_samples() == 6 + 5 and b.allowed_samples() == 5)
    # the worker counts its own in-flight samples: it may step while samples_sent < allowed
    assert a.allowed_samples() - a.samples_sent == 5

    trainer.report_progress(total_updates=3, total_samples=40, memory_len=40)  # over the allowance
    pump(trainer, lambda: a.allowed_samples() == 6 and b.allowed_samples() == 0)
    trainer.report_progress(total_updates=30, total_samples=40, memory_len=40)
    # max(10, 60) + 5 - 40 = 25 -> 13 each: once training has used the initial samples, the
    # workers lead the trainer by slack_samples only
    pump(trainer, lambda: a.allowed_samples() == 6 + 13 and b.allowed_samples() == 13)


def test_control_publication_is_throttled(closing):
    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK, env_steps_per_update=1.0, slack_samples=1000,
                                  control_interval=0.5)
    closing(trainer)
    client = ZmqWorkerClient(trainer.buffer_endpoint, trainer.weights_endpoint, "a")
    closing(client)
    pump(trainer, lambda: client.allowed_samples() == 1000)
    sent_at = trainer._control_sent_at
    for updates in range(1, 50):  # small changes: coalesced
        trainer.report_progress(total_updates=updates, total_samples=0, memory_len=0)
    assert trainer._control_sent_at == sent_at
    pump(trainer, lambda: client.allowed_samples() == 1049, timeout=3.0)  # the last value arrives
    trainer.report_progress(total_updates=49, total_samples=1049, memory_len=0)  # share ran out
    assert trainer._control_sent_at > sent_at


def test_malformed_messages_are_dropped_and_valid_ones_still_arrive(closing, caplog):
    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK)
    closing(trainer)
    push = zmq.Context.instance().socket(zmq.PUSH)
    closing(push)
    push.connect(trainer.buffer_endpoint)
    good = [bytes(f) for f in encode_buffer(make_buffer(3, start=7))]
    header = msgpack.unpackb(good[0])
    header["worker_id"] = "mallory"
    wrong_dtype = dict(header, arrays=[["obs", "object", [3, 3]], *header["arrays"][1:]])
    wrong_version = dict(header, v=99)
    huge = dict(header, arrays=[["obs", "float64", [2**31, 2**31]], *header["arrays"][1:]])
    bad_messages = [
        [b"\x80\xc1garbage"],                                       # garbage header
        [msgpack.packb(wrong_dtype), *good[1:]],                    # dtype outside the allow-list
        [good[0], good[1][:-4], *good[2:]],                         # frame shorter than declared
        [msgpack.packb(wrong_version), *good[1:]],                  # unknown format version
        [msgpack.packb(huge), *good[1:]],                           # huge declared size
        [*good, b"extra"],                                          # one frame too many
        [b"pickle\x80\x04"],
        [*[bytes(f) for f in encode_weights(1, {"x": np.zeros(2)})]],  # a kind workers don't send
    ]
    with caplog.at_level(logging.WARNING, logger="relayrl.transport"):
        for message in bad_messages:
            push.send_multipart(message)
        push.send_multipart(good)
        collected: list[Buffer] = []
        pump(trainer, lambda: rows(collected) >= 3, collected=collected)
    assert len(collected) == 1 and collected[0].rew.tolist() == [7.0, 8.0, 9.0]
    assert trainer.stats()["dropped_messages"] == len(bad_messages)
    assert "mallory" in caplog.text and "dropped" in caplog.text
    # a buffer whose columns disagree with the first buffer's shapes is dropped too
    other = make_buffer(2, obs_dim=5)
    other.worker_id = "mixed"
    push.send_multipart(encode_buffer(other))
    push.send_multipart(good)
    collected.clear()
    pump(trainer, lambda: rows(collected) >= 3, collected=collected)
    assert trainer.stats()["dropped_messages"] == len(bad_messages) + 1
    empty = trainer.retrieve_buffer()
    assert len(empty) == 0 and empty.obs.shape == (0, 3) and empty.terminated.dtype == np.bool_


def test_stalled_trainer_blocks_workers_and_send_times_out(closing):
    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK, max_queued_buffers=2)
    closing(trainer)
    client = ZmqWorkerClient(trainer.buffer_endpoint, trainer.weights_endpoint, "w", send_hwm=2,
                             send_timeout=0.3)
    closing(client)
    big = make_buffer(20_000, obs_dim=8)  # ~1.4 MB per buffer
    with pytest.raises(TimeoutError, match="not keeping up"):
        for _ in range(200):  # bounded: kernel socket buffers hold a few of them at most
            client.send_buffer(big)
    sent = client.buffers_sent
    assert sent < 200
    collected: list[Buffer] = []
    pump(trainer, lambda: rows(collected) >= sent * len(big), collected=collected, timeout=10.0)
    assert trainer.stats()["workers"]["w"]["lost_buffers"] == 0


def test_closed_objects_refuse_use(closing):
    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK)
    client = ZmqWorkerClient(trainer.buffer_endpoint, trainer.weights_endpoint, "w")
    client.close()
    client.close()
    trainer.close()
    trainer.close()
    with pytest.raises(RuntimeError, match="closed"):
        trainer.retrieve_buffer()
    with pytest.raises(RuntimeError, match="closed"):
        client.send_buffer(make_buffer(1))


def test_worker_id_is_validated():
    with pytest.raises(ValueError, match="worker_id"):
        ZmqWorkerClient("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "")
    with pytest.raises(ValueError, match="worker_id"):
        ZmqWorkerClient("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "x" * 200)


# --- separate processes --------------------------------------------------------------------------
def worker_process(buffer_endpoint: str, weights_endpoint: str, worker_id: str, n_buffers: int) -> None:
    """Child process: wait for weights, send ``n_buffers`` buffers tagged with the version seen."""
    client = ZmqWorkerClient(buffer_endpoint, weights_endpoint, worker_id)
    try:
        message = client.poll_weights(timeout=15.0)
        if message is None:
            raise SystemExit(2)
        version, weights = message
        offset = float(weights["w"][0, 0]) * 1000
        for i in range(n_buffers):
            buffer = make_buffer(3, start=offset + 10 * i)
            buffer.policy_version = version
            client.send_buffer(buffer)
    finally:
        client.close(linger=5.0)  # let the queued buffers go out


def test_workers_in_separate_processes(closing):
    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK)
    closing(trainer)
    trainer.broadcast_model(FakeActor(1.0))
    ctx = multiprocessing.get_context("spawn")
    n = 20
    processes = [ctx.Process(target=worker_process, daemon=True,
                             args=(trainer.buffer_endpoint, trainer.weights_endpoint, f"proc-{i}", n))
                 for i in range(2)]
    try:
        for p in processes:
            p.start()
        collected: list[Buffer] = []
        pump(trainer, lambda: rows(collected) >= 2 * n * 3, collected=collected, timeout=25.0)
        for p in processes:
            p.join(timeout=10.0)
            assert p.exitcode == 0
    finally:
        for p in processes:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5.0)
    merged = Buffer.concatenate(collected)
    assert sorted(merged.rew.tolist()) == sorted(1000.0 + 10 * i + k for i in range(n) for k in range(3)
                                                 for _ in range(2))
    stats = trainer.stats()
    for i in range(2):
        account = stats["workers"][f"proc-{i}"]
        assert account["buffers"] == n and account["lost_buffers"] == 0 and account["duplicate_buffers"] == 0
        assert account["last_policy_version"] == 1
    assert stats["samples"] == 2 * n * 3


def test_restarted_worker_starts_a_new_session(closing):
    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK, env_steps_per_update=1.0, slack_samples=10)
    closing(trainer)
    first = ZmqWorkerClient(trainer.buffer_endpoint, trainer.weights_endpoint, "w")
    first.send_buffer(make_buffer(8))
    collected: list[Buffer] = []
    pump(trainer, lambda: rows(collected) >= 8, collected=collected)
    trainer.report_progress(total_updates=0, total_samples=8, memory_len=8)
    pump(trainer, lambda: first.allowed_samples() == 10)  # 8 received + share 2
    first.close()
    second = ZmqWorkerClient(trainer.buffer_endpoint, trainer.weights_endpoint, "w")  # same id
    closing(second)
    # the new process is not charged for its predecessor: it may send the share (2) from zero
    pump(trainer, lambda: second.allowed_samples() == 2)
    second.send_buffer(make_buffer(1))
    pump(trainer, lambda: rows(collected) >= 9, collected=collected)
    account = trainer.stats()["workers"]["w"]
    assert account["sessions"] == 2 and account["samples"] == 9
    assert account["lost_buffers"] == 0 and account["duplicate_buffers"] == 0  # seq restarted with it


def test_running_worker_rejoins_a_restarted_trainer(closing):
    kwargs = dict(env_steps_per_update=1.0, initial_samples=0, slack_samples=10)
    old = ZmqTrainerInterface(LOOPBACK, LOOPBACK, **kwargs)
    closing(old)
    endpoints = (old.buffer_endpoint, old.weights_endpoint)
    client = ZmqWorkerClient(*endpoints, "w")
    closing(client)
    client.HELLO_RETRY_SECONDS = 0.2  # (5 s by default)
    old.publish_weights({"w": np.zeros(1, np.float32)})
    client.send_buffer(make_buffer(10))
    collected: list[Buffer] = []
    pump(old, lambda: rows(collected) >= 10, collected=collected)
    old.report_progress(total_updates=0, total_samples=10, memory_len=10)
    pump(old, lambda: client.allowed_samples() == 10 and client.poll_weights() is not None)
    old.close()  # the trainer dies; the worker keeps running

    deadline = time.monotonic() + 5.0
    while True:  # same addresses, resumed; ZeroMQ releases the old ports asynchronously
        try:
            new = ZmqTrainerInterface(*endpoints, initial_version=7, **kwargs)
            break
        except zmq.ZMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    closing(new)
    new.report_progress(total_updates=5, total_samples=10, memory_len=10)  # from its checkpoint
    new.publish_weights({"w": np.ones(1, np.float32)})
    got = []
    pump(new, lambda: got.append(client.poll_weights()) or got[-1] is not None, timeout=10.0)
    assert got[-1][0] == 8
    # the new trainer does not know the worker's session: the worker says hello again and gets
    # 0 + 5 * 1 + 10 - 10 = 5 more samples, counted from where it is now
    pump(new, lambda: client.allowed_samples() == client.samples_sent + 5, timeout=10.0)
    client.send_buffer(make_buffer(5))
    collected.clear()
    pump(new, lambda: rows(collected) >= 5, collected=collected)
    assert new.stats()["workers"]["w"]["sessions"] >= 1


# --- credits and accounting, without sockets -------------------------------------------------------------
def test_credit_rule_allowance_is_max_of_initial_and_updates_times_rate_plus_slack():
    from relayrl.transport.credits import CreditRule

    rule = CreditRule(env_steps_per_update=2.0, initial_samples=10, slack_samples=5)
    assert rule.metered
    assert rule.allowance(0) == 15            # max(10, 0) + 5: training can start
    assert rule.allowance(3) == 15            # max(10, 6) + 5
    assert rule.allowance(30) == 65           # max(10, 60) + 5: the data leads by the slack only
    assert CreditRule(0.5, 0, 0).allowance(3) == 2  # 1.5 rounds up
    assert CreditRule(0.25, 0, 1).allowance(1) == 2


def test_credit_rule_on_top_of_the_warm_up_when_the_ratio_counts_from_start_training():
    from relayrl.transport.credits import CreditRule

    rule = CreditRule(env_steps_per_update=1.0, initial_samples=100, slack_samples=5, on_top_of_initial=True)
    assert rule.allowance(0) == 105
    assert rule.allowance(30) == 135          # 100 + 30 + 5: the trainer needs 100 + updates samples
    assert CreditRule(1.0, 100, 5).allowance(30) == 105  # max(100, 30) + 5 would starve it


def test_credit_rule_shares_what_remains_among_the_active_workers():
    from relayrl.transport.credits import CreditRule

    rule = CreditRule(env_steps_per_update=2.0, initial_samples=10, slack_samples=5)
    assert rule.share(0, 0, 1) == 15
    assert rule.share(0, 0, 2) == 8           # ceil(15 / 2)
    assert rule.share(0, 0, 0) == 15          # nobody active yet: the default share is the whole
    assert rule.share(3, 6, 2) == 5           # remaining 9 -> ceil(9 / 2)
    assert rule.share(3, 40, 2) == 0          # over the allowance: never negative
    message = rule.control_message(3, 6, {"a": (6, "s.1"), "b": (0, None)})
    assert message == {"allow": {"a": 11, "b": 5}, "sessions": {"a": "s.1"}, "default": 5}


def test_an_unmetered_credit_rule_allows_everything():
    from relayrl.transport.credits import UNLIMITED, CreditRule

    rule = CreditRule(env_steps_per_update=None)
    assert not rule.metered and rule.allowance(10**6) is None and rule.share(0, 10**9, 3) is None
    message = rule.control_message(5, 10**9, {"a": (3, "s")})
    assert message == UNLIMITED and message is not UNLIMITED  # a copy: the constant stays intact


@pytest.mark.parametrize("kwargs,match", [
    ({"env_steps_per_update": 0}, "env_steps_per_update must be > 0"),
    ({"env_steps_per_update": -1.0}, "env_steps_per_update must be > 0"),
    ({"initial_samples": -1}, "initial_samples and slack_samples must be >= 0"),
    ({"slack_samples": -1}, "initial_samples and slack_samples must be >= 0"),
])
def test_credit_rule_refuses_bad_settings(kwargs, match):
    from relayrl.transport.credits import CreditRule

    with pytest.raises(ValueError, match=match):
        CreditRule(**kwargs)
    with pytest.raises(ValueError, match=match):  # the same check guards the trainer's end
        ZmqTrainerInterface(LOOPBACK, LOOPBACK, **kwargs)


def test_big_changes_are_published_at_once():
    from relayrl.transport.credits import is_big_change

    base = {"allow": {"a": 100}, "sessions": {"a": "s"}, "default": 100}
    assert is_big_change({}, base)                                           # the first message
    assert is_big_change(base, {"allow": {}, "sessions": {}, "default": None})  # limit switched off
    assert is_big_change(base, dict(base, sessions={"a": "s", "b": "t"}))    # a session started
    assert is_big_change(base, dict(base, default=0))                        # a share ran out
    assert is_big_change(dict(base, default=0), dict(base, default=3))       # ... and reopened
    assert is_big_change(base, dict(base, default=126))                      # moved by over a quarter
    assert not is_big_change(base, dict(base, default=120))                  # small moves wait
    assert not is_big_change({"default": None}, {"allow": {}, "sessions": {}, "default": None})


def test_a_worker_reads_its_allowance_on_its_own_scale():
    from relayrl.transport.credits import UNLIMITED, allowed_samples

    control = {"allow": {"w": 30}, "sessions": {"w": "n.2"}, "default": 7}
    assert allowed_samples(None, "w", "n.2", 0) is None                      # nothing heard yet
    assert allowed_samples(UNLIMITED, "w", "n.2", 50) is None
    assert allowed_samples(control, "w", "n.2", 50) == 50 + 30               # its session: its total
    assert allowed_samples(control, "w", "n.3", 50) == 50 + 7                # a newer session: the default
    assert allowed_samples(control, "other", "x.1", 0) == 7                  # unknown to the trainer


def test_the_ledger_counts_gaps_repeats_sessions_and_lag():
    from relayrl.transport.accounting import WorkerLedger

    ledger = WorkerLedger(worker_timeout=60.0)
    ledger.start_session("w", "n.1")
    for seq in (0, 1, 4, 5, 2, 9):  # 2-3 lost, 2 repeated, 6-8 lost
        ledger.record("w", seq, samples=10, policy_version=1, trainer_version=3)
    account = ledger.accounts["w"]
    assert (account.buffers, account.lost, account.duplicates) == (6, 2 + 3, 1)
    assert account.samples == account.session_samples == 60 and account.lag_sum == 6 * 2
    ledger.start_session("w", "n.2")  # a restart: seq and session samples start afresh
    ledger.record("w", 0, samples=4, policy_version=3, trainer_version=3)
    assert account.lost == 5 and account.duplicates == 1 and account.sessions == 2
    assert account.session_samples == 4 and account.samples == 64 and account.session == "n.2"
    totals = ledger.totals()
    assert totals == {"samples": 64, "buffers": 7, "lost_buffers": 5, "duplicate_buffers": 1, "lag_sum": 12}
    stats = ledger.worker_stats()["w"]
    assert stats["policy_lag_mean"] == pytest.approx(12 / 7) and stats["last_policy_version"] == 3


def test_the_ledger_forgets_quiet_workers_and_bounds_its_accounts():
    from relayrl.transport.accounting import WorkerLedger

    ledger = WorkerLedger(worker_timeout=10.0, max_accounts=3)
    for wid in ("a", "b", "c"):
        ledger.account(wid)
    ledger.accounts["a"].last_seen -= 100.0  # quiet for 100 s
    assert set(ledger.active()) == {"b", "c"}
    ledger.account("d")  # a fourth id: the least recently seen ("a") is forgotten
    assert set(ledger.accounts) == {"b", "c", "d"}
