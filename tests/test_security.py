"""CURVE encryption and the per-worker key allow-list, the refusal to expose plaintext, and the relay.
Everything runs on 127.0.0.1 (CURVE is simply switched on there by passing keys)."""
from __future__ import annotations

import logging
import multiprocessing
import time

import numpy as np
import pytest
import zmq

from relayrl.buffer import Buffer
from relayrl.transport import ZmqTrainerInterface, ZmqWorkerClient, encode_weights
from relayrl.transport.keys import (check_exposure, create_key_pair, create_keys, is_loopback,
                                    load_key_pair, load_public_key)
from relayrl.transport.relay import Relay

LOOPBACK = "tcp://127.0.0.1:0"


def make_buffer(n: int, start: float = 0.0) -> Buffer:
    values = start + np.arange(n, dtype=np.float32)
    obs = np.repeat(values[:, None], 3, axis=1)
    return Buffer(obs=obs, act=values[:, None].copy(), rew=values.copy(), next_obs=obs + 0.5,
                  terminated=np.zeros(n, bool), truncated=np.zeros(n, bool))


@pytest.fixture
def keys(tmp_path):
    return create_keys(tmp_path / "keys", ["good", "other"], relay=True)


@pytest.fixture
def closing():
    things = []
    yield things.append
    for thing in reversed(things):
        thing.close()


def serve(trainer, seconds: float, collected: list, until=lambda: False) -> None:
    """Let the trainer run for ``seconds`` (or until ``until()``), collecting what arrives."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        trainer.wait_for_data(0.02)
        buffer = trainer.retrieve_buffer()
        if len(buffer):
            collected.append(buffer)


def send_or_time_out(client: ZmqWorkerClient, buffer: Buffer) -> None:
    """A refused client's send is queued locally or, once ZeroMQ has dropped the refused connection,
    blocks until its timeout: either way nothing reaches the trainer."""
    try:
        client.send_buffer(buffer)
    except TimeoutError as exc:
        assert "refuses this worker's CURVE key" in str(exc)


def rows(collected) -> int:
    return sum(len(b) for b in collected)


# --- keys and the exposure rule ------------------------------------------------------------------
def test_key_helpers(tmp_path, keys):
    assert keys.trainer_secret.stat().st_mode & 0o077 == 0  # secret files are private
    assert keys.worker_secrets["good"].stat().st_mode & 0o077 == 0
    public, secret = load_key_pair(keys.trainer_secret)
    assert load_public_key(keys.trainer_public) == public and len(secret) == 40
    assert sorted(p.name for p in keys.authorized_keys_dir.iterdir()) == ["good.key", "other.key"]
    for authorized in keys.authorized_keys_dir.iterdir():
        assert "secret" not in authorized.read_text()
    with pytest.raises(ValueError, match="no secret key"):
        load_key_pair(keys.trainer_public)
    with pytest.raises(FileExistsError):
        create_key_pair(keys.trainer_secret.parent, "trainer")
    again = create_keys(tmp_path / "keys", ["good", "third"])  # idempotent; adds "third"
    assert load_key_pair(again.trainer_secret) == (public, secret)
    assert (keys.authorized_keys_dir / "third.key").exists()


@pytest.mark.parametrize("endpoint,loopback", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.3.2.1:0", True), ("tcp://[::1]:5555", True),
    ("tcp://localhost:1", True), ("ipc:///tmp/relayrl.sock", True), ("inproc://x", True),
    ("tcp://*:5555", False), ("tcp://0.0.0.0:5555", False), ("tcp://[::]:5555", False),
    ("tcp://eth0:5555", False), ("tcp://10.1.2.3:5555", False), ("tcp://example.org:5555", False),
    ("tcp://127.0.0.1;10.0.0.2:5555", False), ("udp://127.0.0.1:1", False),
])
def test_is_loopback(endpoint, loopback):
    assert is_loopback(endpoint) is loopback


def test_exposed_addresses_without_keys_are_refused(caplog):
    # nothing is bound or connected here: the check happens before any socket exists
    with pytest.raises(ValueError, match="without CURVE keys.*relayrl.transport.keys"):
        ZmqTrainerInterface("tcp://0.0.0.0:0", LOOPBACK)
    with pytest.raises(ValueError, match="without CURVE keys"):
        ZmqWorkerClient("tcp://10.0.0.1:5555", "tcp://10.0.0.1:5556", "w")
    with pytest.raises(ValueError, match="without CURVE keys"):
        Relay("tcp://*:0")
    with caplog.at_level(logging.WARNING, logger="relayrl.transport"):
        check_exposure("ZmqTrainerInterface", ["tcp://0.0.0.0:5555"], secure=False, insecure=True)
    assert "INSECURE" in caplog.text and "0.0.0.0" in caplog.text
    check_exposure("ZmqTrainerInterface", ["tcp://0.0.0.0:5555"], secure=True, insecure=False)


def test_half_configured_curve_is_refused(keys, tmp_path):
    with pytest.raises(ValueError, match="authorized_keys_dir"):
        ZmqTrainerInterface(server_secret_key_file=keys.trainer_secret)
    with pytest.raises(ValueError, match="client_secret_key_file"):
        ZmqWorkerClient("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "w",
                        server_public_key_file=keys.trainer_public)
    with pytest.raises(ValueError, match="does not exist"):
        ZmqTrainerInterface(server_secret_key_file=keys.trainer_secret,
                            authorized_keys_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="no secret key"):
        ZmqTrainerInterface(server_secret_key_file=keys.trainer_public,
                            authorized_keys_dir=keys.authorized_keys_dir)


# --- CURVE end to end ----------------------------------------------------------------------------
def test_only_authorized_workers_get_weights_and_send_buffers(keys, tmp_path, closing, caplog):
    trainer = ZmqTrainerInterface(server_secret_key_file=keys.trainer_secret,
                                  authorized_keys_dir=keys.authorized_keys_dir)
    closing(trainer)
    assert trainer.secure
    _, rogue_secret = create_key_pair(tmp_path / "rogue", "rogue")
    endpoints = (trainer.buffer_endpoint, trainer.weights_endpoint)
    good = ZmqWorkerClient(*endpoints, "good", server_public_key_file=keys.trainer_public,
                           client_secret_key_file=keys.worker_secrets["good"])
    refused = dict(send_timeout=0.3)
    unknown_key = ZmqWorkerClient(*endpoints, "unknown-key", server_public_key_file=keys.trainer_public,
                                  client_secret_key_file=rogue_secret, **refused)
    no_curve = ZmqWorkerClient(*endpoints, "no-curve", **refused)
    # a client that knows a worker's key pair but trusts a fake trainer key cannot connect either
    wrong_server = ZmqWorkerClient(*endpoints, "wrong-server", server_public_key_file=rogue_secret,
                                   client_secret_key_file=keys.worker_secrets["other"], **refused)
    clients = [good, unknown_key, no_curve, wrong_server]
    for client in clients:
        closing(client)
    trainer.publish_weights({"w": np.full(3, 7.0, np.float32)})
    good.send_buffer(make_buffer(2))
    for i, client in enumerate(clients[1:], start=1):
        send_or_time_out(client, make_buffer(2, start=10 * i))

    collected: list[Buffer] = []
    with caplog.at_level(logging.WARNING, logger="relayrl.transport"):
        serve(trainer, 1.5, collected)
    assert rows(collected) == 2 and sorted(Buffer.concatenate(collected).rew.tolist()) == [0.0, 1.0]
    assert set(trainer.stats()["workers"]) == {"good"}
    assert "unknown CURVE key" in caplog.text

    message = good.poll_weights()
    assert message is not None and message[0] == 1 and message[1]["w"].tolist() == [7.0] * 3
    for client in clients[1:]:
        assert client.poll_weights() is None and client.allowed_samples() is None
        assert client.wait_for_message(0.0) is False
    # the refused clients' buffers never arrive, however long the trainer listens
    trainer.publish_weights({"w": np.zeros(3, np.float32)})
    serve(trainer, 0.5, collected)
    assert rows(collected) == 2
    assert good.poll_weights(2.0)[0] == 2
    assert all(client.poll_weights() is None for client in clients[1:])


def test_revoked_key_is_refused_on_its_next_connection(keys, closing):
    trainer = ZmqTrainerInterface(server_secret_key_file=keys.trainer_secret,
                                  authorized_keys_dir=keys.authorized_keys_dir)
    closing(trainer)
    trainer.publish_weights({"w": np.zeros(1, np.float32)})
    (keys.authorized_keys_dir / "other.key").unlink()
    assert trainer.reload_authorized_keys() == 1
    revoked = ZmqWorkerClient(trainer.buffer_endpoint, trainer.weights_endpoint, "other",
                              server_public_key_file=keys.trainer_public,
                              client_secret_key_file=keys.worker_secrets["other"], send_timeout=0.3)
    closing(revoked)
    send_or_time_out(revoked, make_buffer(1))
    collected: list[Buffer] = []
    serve(trainer, 1.0, collected)
    assert collected == [] and revoked.poll_weights() is None


def test_plain_trainer_works_beside_a_secure_one(keys, closing):
    secure = ZmqTrainerInterface(server_secret_key_file=keys.trainer_secret,
                                 authorized_keys_dir=keys.authorized_keys_dir)
    closing(secure)
    plain = ZmqTrainerInterface()
    closing(plain)
    client = ZmqWorkerClient(plain.buffer_endpoint, plain.weights_endpoint, "w")
    closing(client)
    client.send_buffer(make_buffer(3))
    collected: list[Buffer] = []
    serve(plain, 5.0, collected, until=lambda: rows(collected) >= 3)
    assert rows(collected) == 3


def secure_worker_process(buffer_endpoint, weights_endpoint, server_key, client_key, n) -> None:
    client = ZmqWorkerClient(buffer_endpoint, weights_endpoint, "proc", server_public_key_file=server_key,
                             client_secret_key_file=client_key)
    try:
        if client.poll_weights(timeout=15.0) is None:
            raise SystemExit(2)
        for i in range(n):
            client.send_buffer(make_buffer(2, start=10 * i))
    finally:
        client.close(linger=5.0)


def test_secure_worker_in_another_process(keys, closing):
    trainer = ZmqTrainerInterface(server_secret_key_file=keys.trainer_secret,
                                  authorized_keys_dir=keys.authorized_keys_dir)
    closing(trainer)
    trainer.publish_weights({"w": np.zeros(1, np.float32)})
    ctx = multiprocessing.get_context("spawn")
    process = ctx.Process(target=secure_worker_process, daemon=True,
                          args=(trainer.buffer_endpoint, trainer.weights_endpoint,
                                str(keys.trainer_public), str(keys.worker_secrets["good"]), 10))
    try:
        process.start()
        collected: list[Buffer] = []
        serve(trainer, 25.0, collected, until=lambda: rows(collected) >= 20)
        process.join(timeout=10.0)
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            process.terminate()
            process.join(timeout=5.0)
    assert rows(collected) == 20 and trainer.stats()["workers"]["proc"]["lost_buffers"] == 0


# --- the relay -----------------------------------------------------------------------------------
def test_relay_forwards_both_ways_and_serves_late_joiners(closing):
    relay = Relay()
    closing(relay)
    relay.start()
    trainer = ZmqTrainerInterface(relay.trainer_buffer_endpoint, relay.trainer_weights_endpoint,
                                  connect=True)
    closing(trainer)
    workers = (relay.worker_buffer_endpoint, relay.worker_weights_endpoint)
    early = ZmqWorkerClient(*workers, "early")
    closing(early)
    trainer.publish_weights({"w": np.full(2, 1.0, np.float32)})
    got = []
    serve(trainer, 5.0, [], until=lambda: got.append(early.poll_weights()) or got[-1] is not None)
    assert got[-1] is not None and got[-1][0] == 1
    late = ZmqWorkerClient(*workers, "late")  # its subscription travels through the relay
    closing(late)
    got = []
    serve(trainer, 5.0, [], until=lambda: got.append(late.poll_weights()) or got[-1] is not None)
    assert got[-1] is not None and got[-1][0] == 1
    for i, client in enumerate((early, late)):
        client.send_buffer(make_buffer(3, start=100 * i))
    collected: list[Buffer] = []
    serve(trainer, 5.0, collected, until=lambda: rows(collected) >= 6)
    assert sorted(Buffer.concatenate(collected).rew.tolist()) == [0.0, 1.0, 2.0, 100.0, 101.0, 102.0]
    deadline = time.monotonic() + 2.0  # the relay thread counts just after forwarding
    while relay.stats()["buffers_forwarded"] < 2 + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert relay.stats()["buffers_forwarded"] == 2 + 2  # 2 hellos + 2 buffers


def test_secure_relay_checks_workers_and_the_trainer_separately(keys, closing, caplog):
    relay = Relay(secret_key_file=keys.relay_secret, authorized_keys_dir=keys.authorized_keys_dir,
                  trainer_keys=keys.trainer_public)
    closing(relay)
    relay.start()
    trainer = ZmqTrainerInterface(relay.trainer_buffer_endpoint, relay.trainer_weights_endpoint,
                                  connect=True, server_secret_key_file=keys.trainer_secret,
                                  relay_public_key_file=keys.relay_public)
    closing(trainer)
    workers = (relay.worker_buffer_endpoint, relay.worker_weights_endpoint)
    good = ZmqWorkerClient(*workers, "good", server_public_key_file=keys.relay_public,
                           client_secret_key_file=keys.worker_secrets["good"])
    plain = ZmqWorkerClient(*workers, "plain", send_timeout=0.3)
    closing(good)
    closing(plain)
    # a worker's key cannot pose as the trainer to publish weights through the relay
    impostor = zmq.Context.instance().socket(zmq.XPUB)
    public, secret = load_key_pair(keys.worker_secrets["other"])
    impostor.curve_serverkey, impostor.curve_publickey, impostor.curve_secretkey = (
        load_public_key(keys.relay_public), public, secret)
    impostor.connect(relay.trainer_weights_endpoint)
    try:
        fake = [b"w", *encode_weights(99, {"w": np.full(2, -1.0, np.float32)})]
        with caplog.at_level(logging.WARNING, logger="relayrl.transport"):
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                impostor.send_multipart(fake)
                time.sleep(0.05)
        assert f"unknown CURVE key {public.decode()}" in caplog.text
        trainer.publish_weights({"w": np.full(2, 5.0, np.float32)})
        good.send_buffer(make_buffer(2))
        send_or_time_out(plain, make_buffer(2, start=50))
        got, collected = [], []
        serve(trainer, 5.0, collected,
              until=lambda: rows(collected) >= 2 and (got.append(good.poll_weights()) or got[-1] is not None))
        assert got[-1][0] == 1 and got[-1][1]["w"].tolist() == [5.0, 5.0]
        serve(trainer, 0.5, collected)
        assert sorted(Buffer.concatenate(collected).rew.tolist()) == [0.0, 1.0]
        assert plain.poll_weights() is None
        assert good.poll_weights(0.3) is None  # the impostor's version 99 never arrived
    finally:
        impostor.close(0)
