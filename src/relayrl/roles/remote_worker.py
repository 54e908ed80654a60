"""``relayrl worker``: one :class:`~relayrl.worker.RolloutWorker` dialling out to a trainer or a relay.

It builds its policy from the trainer's configuration (``config.actor_factory()``, after
``config.env_spaces()`` has checked the environment against the algorithm), waits for the trainer as
long as it takes, keeps going when the trainer restarts, and prints its samples per second and the
policy version it runs, and how long the trainer has been silent once that exceeds
:data:`TRAINER_SILENT_AFTER` seconds. It stops by itself (exit code 0) when the trainer announces the
end of the run. Ctrl+C or SIGTERM stops it cleanly (exit code 0); a second Ctrl+C quits at once.

A worker process imports the actor side only: this module, :mod:`relayrl.worker`,
:mod:`relayrl.transport.worker_end` and the algorithm's actor; never the trainer, pandas, the
checkpoints or the loggers (a test holds it to that).
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .common import (DEFAULT_BUFFER_PORT, DEFAULT_STATUS_INTERVAL, RoleError, check_port, check_security,
                     key_file, parse_host, say, stop_signals, tcp_endpoint, zmq_error)

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["WorkerPlan", "plan_worker", "PatientConnection", "run_worker"]

#: Seconds without any message from the trainer (it re-publishes its control message every 5 s)
#: after which the status line says so.
TRAINER_SILENT_AFTER = 30.0

WEIGHTS_DO_NOT_FIT = ("worker {name}: the trainer's weights do not fit this worker's actor ({exc}); "
                      "start the worker with the trainer's --config and --env")


@dataclass
class WorkerPlan:
    """Which trainer (or relay) a ``relayrl worker`` dials, under which name and with which keys."""

    buffer_endpoint: str
    weights_endpoint: str
    worker_id: str
    security: dict = field(default_factory=dict)
    insecure: bool = False


def plan_worker(args) -> WorkerPlan:
    """Validate a worker's addresses, name and keys."""
    from ..transport.codec import MAX_WORKER_ID_LEN

    host, port = parse_host(args.connect, "--connect")
    buffer_port = check_port(args.buffer_port or port or DEFAULT_BUFFER_PORT, "--buffer-port")
    weights_port = check_port(args.weights_port or buffer_port + 1, "--weights-port")
    if buffer_port == weights_port:
        raise RoleError("worker: --buffer-port and --weights-port must differ")
    buffers, weights = tcp_endpoint(host, buffer_port), tcp_endpoint(host, weights_port)
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    if not 0 < len(name) <= MAX_WORKER_ID_LEN:
        raise RoleError(f"worker: --name must have 1 to {MAX_WORKER_ID_LEN} characters")
    keyed = bool(args.keys or args.key or args.server_key)
    check_security("worker", [buffers, weights], keyed, args.insecure)
    security: dict = {}
    if keyed:
        keys = Path(args.keys) if args.keys else None
        if args.key:
            secret = Path(args.key)
        elif keys is not None and args.name:
            secret = keys / "workers" / f"{args.name}.key_secret"
        else:
            raise RoleError("worker: with --keys, give --name NAME (the key pair is KEYS_DIR/workers/"
                            "NAME.key_secret) or --key FILE")
        if args.server_key:
            server = Path(args.server_key)
        elif keys is not None:
            server = keys / ("relay.key" if args.via_relay else "trainer.key")
        else:
            raise RoleError("worker: with --key, give --keys KEYS_DIR or --server-key FILE (the trainer's "
                            "or relay's public key)")
        other = "trainer.key (drop --via-relay)" if args.via_relay else "relay.key (add --via-relay)"
        hint = f"; if this worker connects to a {'trainer' if args.via_relay else 'relay'}, use {other}"
        security = {"server_public_key_file": key_file(server, "server public key", hint),
                    "client_secret_key_file": key_file(secret, "worker key pair")}
    return WorkerPlan(buffers, weights, name, security, args.insecure)


class PatientConnection:
    """A worker's connection that keeps trying while the trainer is away: a send that times out (the
    queue toward an absent, restarting or stalled trainer is full) is retried, with a notice, until it
    goes through or the worker is told to stop (then the buffer is dropped)."""

    def __init__(self, client, should_stop: Callable[[], bool], printer: Callable[[str], None] = say,
                 notice_interval: float = 10.0):
        self.client = client
        self.should_stop = should_stop
        self.printer = printer
        self.notice_interval = notice_interval

    def send_buffer(self, buffer) -> None:
        waited_since = last_notice = time.monotonic()
        while True:
            try:
                self.client.send_buffer(buffer)
                return
            except TimeoutError:
                if self.should_stop():
                    return
                now = time.monotonic()
                if now - last_notice >= self.notice_interval:
                    last_notice = now
                    self.printer(f"worker {self.client.worker_id}: the trainer has taken no buffer for "
                                 f"{now - waited_since:.0f} s (not running, restarting, or refusing this "
                                 "worker's key?); still trying")

    def __getattr__(self, name: str):  # poll_weights, allowed_samples, wait_for_message, ...
        return getattr(self.client, name)


def worker_status(name: str, worker, client, rate: float) -> str:
    """A worker's status line: policy version, samples sent and rate, episodes, whether paused."""
    allowed = client.allowed_samples()
    paused = allowed is not None and worker.samples_sent + len(worker.builder) >= allowed
    version = worker.policy_version if worker.policy_version >= 0 else "-"
    line = (f"worker {name}: policy version {version} | {worker.samples_sent} samples sent ({rate:.1f}/s) "
            f"| {worker.train_episodes_done} episodes{' | paused by the rate limit' if paused else ''}")
    silence = getattr(client, "seconds_since_trainer_message", lambda: None)()
    if silence is not None and silence >= TRAINER_SILENT_AFTER:
        line += (f" | nothing from the trainer for {silence:.0f} s: it has stopped, is restarting or is "
                 "unreachable (this worker waits for it; Ctrl+C stops it)")
    return line


def run_worker(config: "RunConfig", plan: WorkerPlan, *, seed: int | None = None,
               status_interval: float = DEFAULT_STATUS_INTERVAL, send_timeout: float = 1.0,
               should_stop: Callable[[], bool] = lambda: False) -> int:
    """Run one rollout worker until the trainer announces the end of the run, Ctrl+C, SIGTERM or
    ``should_stop()``; return the samples sent.
    A trainer that goes away is waited for (a blocked send is retried every ``send_timeout`` seconds,
    which also bounds how long a stop request can wait)."""
    import torch
    import zmq

    from ..transport.worker_end import ZmqWorkerClient
    from ..worker import RolloutWorker

    config.env_spaces()  # a clear error for ids and spaces the algorithm cannot use, before connecting
    actor_factory = config.actor_factory()
    torch.set_num_threads(1)
    try:
        client = ZmqWorkerClient(plan.buffer_endpoint, plan.weights_endpoint, plan.worker_id,
                                 send_timeout=send_timeout, insecure=plan.insecure, **plan.security)
    except zmq.ZMQError as exc:
        raise zmq_error(exc, "connect to", (plan.buffer_endpoint, plan.weights_endpoint)) from None
    name = plan.worker_id
    worker = None
    try:
        with stop_signals(graceful=True) as stop_request:
            stop = lambda: stop_request() or should_stop() or client.trainer_finished  # noqa: E731
            worker = RolloutWorker.from_settings(config.env, actor_factory, PatientConnection(client, stop),
                                                 config.workers, worker_id=name, seed=seed)
            curve = "CURVE on" if client.secure else "plaintext"
            say(f"worker {name}: {config.env}, connecting to {plan.buffer_endpoint} (buffers) and "
                f"{plan.weights_endpoint} (weights), {curve}; waiting for the trainer's weights")
            try:
                if worker.wait_for_first_weights(should_stop=stop, notice=lambda waited: say(
                        f"worker {name}: no weights after {waited:.0f} s: is the trainer (or relay) running "
                        "and reachable, and is this worker's key in its authorized_workers?")):
                    say(f"worker {name}: first weights received, policy version {worker.policy_version}")
                    worker.run(should_stop=_status_ticker(name, worker, client, status_interval, stop))
            except ValueError as exc:
                if "actor weight" not in str(exc):
                    raise
                raise RoleError(WEIGHTS_DO_NOT_FIT.format(name=name, exc=exc)) from None
            if client.trainer_finished:
                worker.update_weights()  # the final weights, sent just before the announcement
                say(f"worker {name}: the trainer announced the end of the run; stopping")
        say(f"worker {name}: stopped; {worker.samples_sent} samples sent, {worker.train_episodes_done} "
            f"episodes, policy version {worker.policy_version}")
        return worker.samples_sent
    finally:
        if worker is not None:
            worker.close()
        client.close(linger=1.0)  # a second to hand the last buffers to the network


def _status_ticker(name: str, worker, client, interval: float, stop: Callable[[], bool]) -> Callable[[], bool]:
    """``should_stop()`` for ``worker.run`` that also prints the status every ``interval`` seconds."""
    last = {"time": time.monotonic(), "samples": 0}

    def tick() -> bool:
        now = time.monotonic()
        if now - last["time"] >= interval:
            rate = (worker.samples_sent - last["samples"]) / (now - last["time"])
            last.update(time=now, samples=worker.samples_sent)
            say(worker_status(name, worker, client, rate))
        return stop()

    return tick
