"""The end of a run on the wire: the trainer announces it (a validated control field), workers stop
by themselves and say so, and a worker whose trainer went silent says that too."""
import threading
import time

import msgpack
import pytest

from relayrl.config import RunConfig, with_overrides
from relayrl.roles.remote_worker import TRAINER_SILENT_AFTER, WorkerPlan, run_worker, worker_status
from relayrl.trainer import Trainer
from relayrl.transport import ZmqTrainerInterface, ZmqWorkerClient
from relayrl.transport.codec import CodecError, decode_control, encode_control

from helpers import ScriptedInterface

LOOPBACK = "tcp://127.0.0.1:0"


def pump(trainer, until, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "condition not met in time"
        trainer.wait_for_data(0.02)
        trainer.retrieve_buffer()


def test_the_end_field_is_validated_and_optional():
    ended = {"allow": {"a": 3}, "sessions": {"a": "s.1"}, "default": 1, "end": True}
    assert decode_control(encode_control(ended)) == ended
    assert "end" not in decode_control(encode_control({"allow": {}, "default": None}))  # as before
    header, *rest = encode_control({"allow": {}, "default": None})
    for bad in (1, "yes", None):
        with pytest.raises(CodecError, match="control 'end' must be a bool"):
            decode_control([msgpack.packb({**msgpack.unpackb(header), "end": bad}), *rest])
    with pytest.raises(CodecError, match="unknown fields"):  # other fields are still refused
        decode_control([msgpack.packb({**msgpack.unpackb(header), "stop": True}), *rest])


def test_announce_end_reaches_the_workers_and_late_joiners(request):
    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK, env_steps_per_update=1.0, initial_samples=10)
    request.addfinalizer(trainer.close)
    early = ZmqWorkerClient(trainer.buffer_endpoint, trainer.weights_endpoint, "early")
    request.addfinalizer(early.close)
    pump(trainer, lambda: early.allowed_samples() is not None)
    assert not early.trainer_finished and early.seconds_since_trainer_message() < 5
    trainer.announce_end()
    assert trainer.ended
    pump(trainer, lambda: early.trainer_finished)
    assert early.allowed_samples() is not None  # the allowance is still there
    late = ZmqWorkerClient(trainer.buffer_endpoint, trainer.weights_endpoint, "late")
    request.addfinalizer(late.close)
    pump(trainer, lambda: late.trainer_finished)  # re-published on subscription


def test_the_trainer_keeps_saying_it_is_alive(request):
    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK, keepalive_interval=0.2)
    request.addfinalizer(trainer.close)
    client = ZmqWorkerClient(trainer.buffer_endpoint, trainer.weights_endpoint, "w")
    request.addfinalizer(client.close)
    assert client.seconds_since_trainer_message() is None  # nothing heard yet
    pump(trainer, lambda: client.seconds_since_trainer_message() is not None)
    first = client._heard_at
    pump(trainer, lambda: client._heard_at > first + 0.3, timeout=5.0)  # unchanged control, re-sent


class _Worker:
    policy_version, samples_sent, train_episodes_done = 3, 120, 4
    builder = ()


class _Client:
    def __init__(self, silence):
        self.silence = silence

    def allowed_samples(self):
        return 100  # paused: 120 sent

    def seconds_since_trainer_message(self):
        return self.silence


def test_a_worker_says_when_the_trainer_has_been_silent():
    quiet = worker_status("w0", _Worker(), _Client(TRAINER_SILENT_AFTER + 15), 0.0)
    assert quiet.startswith("worker w0: policy version 3 | 120 samples sent (0.0/s) | 4 episodes | paused by "
                            "the rate limit | nothing from the trainer for 45 s: it has stopped, is restarting or "
                            "is unreachable")
    assert "nothing from the trainer" not in worker_status("w0", _Worker(), _Client(2.0), 0.0)
    assert "nothing from the trainer" not in worker_status("w0", _Worker(), _Client(None), 0.0)


def test_run_worker_stops_when_the_trainer_announces_the_end(request, capsys):
    config = with_overrides(RunConfig(), **{"sac.hidden_sizes": [16, 16], "workers.buffer_steps": 10})
    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK, env_steps_per_update=1.0, initial_samples=50,
                                  slack_samples=0)
    request.addfinalizer(trainer.close)
    plan = WorkerPlan(trainer.buffer_endpoint, trainer.weights_endpoint, "w0")
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("samples", run_worker(
        config, plan, seed=1, status_interval=0.2)), daemon=True)
    thread.start()
    actor = config.actor_factory()(*config.env_spaces())
    received = []
    deadline = time.monotonic() + 60
    while sum(received) < 50:  # the worker collects its allowance, then is paused by the rate limit
        assert time.monotonic() < deadline and thread.is_alive()
        trainer.broadcast_model(actor)
        trainer.wait_for_data(0.05)
        received.append(len(trainer.retrieve_buffer()))
    trainer.report_progress(total_updates=0, total_samples=sum(received))
    trainer.broadcast_model(actor)  # the final weights, then the end
    final_version = trainer.policy_version
    trainer.announce_end()
    deadline = time.monotonic() + 20
    while thread.is_alive() and time.monotonic() < deadline:
        trainer.wait_for_data(0.05)
        trainer.retrieve_buffer()
    assert not thread.is_alive(), "the worker did not stop"
    out = capsys.readouterr().out
    assert "worker w0: the trainer announced the end of the run; stopping" in out
    assert f"worker w0: stopped; {result['samples']} samples sent" in out
    assert out.rstrip().endswith(f"policy version {final_version}")  # it ran the final weights
    assert result["samples"] >= 50


class _Announcing(ScriptedInterface):
    ends = 0

    def announce_end(self):
        self.ends += 1


def _small(run_dir, epochs):
    return with_overrides(RunConfig(), **{
        "run_dir": str(run_dir), "training.epochs": epochs, "training.rounds": 1, "training.steps": 5,
        "training.start_training": 16, "memory.batch_size": 8, "training.update_buffer_interval": 2,
        "training.update_model_interval": 3, "training.sleep_between_buffer_retrieval_attempts": 0.0,
        "training.torch_threads": 1, "training.device": "cpu", "sac.hidden_sizes": [16, 16]})


def test_the_trainer_announces_the_end_only_when_every_epoch_is_done(tmp_path):
    trainer = Trainer(_small(tmp_path / "run", 2), progress=False, print_tables=False)
    interface = _Announcing(trainer.training, per_pull=10)
    trainer.run(interface)
    assert interface.ends == 1

    class Interrupting(_Announcing):
        def broadcast_model(self, actor):
            if self.training.total_updates >= 3:
                raise KeyboardInterrupt

    trainer = Trainer(_small(tmp_path / "other", 2), progress=False, print_tables=False)
    interface = Interrupting(trainer.training, per_pull=10)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(interface)
    assert interface.ends == 0  # Ctrl+C: the workers wait for the resumed trainer
