"""``relayrl trainer``: the :class:`~relayrl.trainer.Trainer` of ``relayrl train`` (same configuration,
checkpoints and resume) with no local workers. It binds the transport's two sockets (or connects to a
relay) and trains on whatever remote workers send. Every few seconds it prints who is connected,
samples per second, the policy version and each worker's policy lag; its statistics rows carry the
transport's accounting (:data:`~relayrl.transport.accounting.TRANSPORT_STATS_KEYS`).

:func:`plan_trainer` checks the addresses and keys before anything heavy is built (a mistake is a
one-line :class:`~relayrl.roles.common.RoleError`); :func:`run_trainer` runs the plan.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .common import (DEFAULT_BUFFER_PORT, DEFAULT_RELAY_TRAINER_BUFFER_PORT, DEFAULT_STATUS_INTERVAL,
                     DEFAULT_WEIGHTS_PORT, RoleError, WatchedInterface, check_port, check_security, key_dir,
                     key_file, open_trainer, parse_endpoint, parse_host, say, stop_signals, tcp_endpoint,
                     trainer_transport, zmq_error)

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..transport.sockets import ConnectionMonitor
    from ..transport.trainer_end import ZmqTrainerInterface

__all__ = ["TrainerPlan", "plan_trainer", "run_trainer", "TrainerStatus", "format_trainer_status"]


@dataclass
class TrainerPlan:
    """Where a ``relayrl trainer`` listens (or which relay it joins) and with which keys."""

    buffer_endpoint: str
    weights_endpoint: str
    connect: bool = False
    security: dict = field(default_factory=dict)
    insecure: bool = False


def plan_trainer(args) -> TrainerPlan:
    """Validate the trainer's addresses and keys (before anything heavy is built)."""
    if args.connect_relay:
        if args.bind_buffers or args.bind_weights:
            raise RoleError("trainer: --connect-relay and --bind-buffers/--bind-weights exclude each other")
        host, port = parse_host(args.connect_relay, "--connect-relay")
        buffer_port = check_port(args.relay_buffer_port or port or DEFAULT_RELAY_TRAINER_BUFFER_PORT,
                                 "--relay-buffer-port")
        weights_port = check_port(args.relay_weights_port or buffer_port + 1, "--relay-weights-port")
        buffers, weights = tcp_endpoint(host, buffer_port), tcp_endpoint(host, weights_port)
    else:
        buffers = parse_endpoint(args.bind_buffers or tcp_endpoint("127.0.0.1", DEFAULT_BUFFER_PORT),
                                 "--bind-buffers")
        weights = parse_endpoint(args.bind_weights or tcp_endpoint("127.0.0.1", DEFAULT_WEIGHTS_PORT),
                                 "--bind-weights")
        if buffers == weights and not buffers.endswith(":0"):
            raise RoleError("trainer: --bind-buffers and --bind-weights must be different addresses")
    check_security("trainer", [buffers, weights], bool(args.keys), args.insecure)
    security: dict = {}
    if args.keys:
        keys = Path(args.keys)
        security["server_secret_key_file"] = key_file(keys / "trainer.key_secret", "trainer key pair")
        if args.connect_relay:
            security["relay_public_key_file"] = key_file(
                keys / "relay.key", "relay public key", " --relay (and copy relay.key to the trainer)")
        else:
            security["authorized_keys_dir"] = key_dir(keys / "authorized_workers",
                                                      "authorized workers directory")
    return TrainerPlan(buffers, weights, bool(args.connect_relay), security, args.insecure)


# --- status ----------------------------------------------------------------------------------------------
def format_trainer_status(stats: dict, samples_per_second: float, per_worker_rate: dict[str, float],
                          connections: "ConnectionMonitor | None" = None, max_workers_listed: int = 20) -> str:
    """The trainer's status: one summary line, then one line per worker (most recently seen first)."""
    head = (f"trainer: policy version {stats['policy_version']} | {stats['active_workers']} workers active"
            f" | {stats['samples']} samples ({samples_per_second:.1f}/s) | lost {stats['lost_buffers']}"
            f" duplicate {stats['duplicate_buffers']} dropped {stats['dropped_messages']} buffers")
    if connections is not None:
        head += (f" | connections: buffers {connections.open.get('buffers', 0)}, weights "
                 f"{connections.open.get('weights', 0)}, refused {connections.refused}")
    lines = [head]
    workers = sorted(stats["workers"].items(), key=lambda item: item[1]["seconds_since_seen"])
    for wid, w in workers[:max_workers_listed]:
        version = w["last_policy_version"]
        lag = "-" if version < 0 else str(stats["policy_version"] - version)
        mean = w["policy_lag_mean"]
        lines.append(f"  worker {wid}: {w['samples']} samples ({per_worker_rate.get(wid, 0.0):.1f}/s), "
                     f"policy version {version if version >= 0 else '-'} (lag {lag}, mean "
                     f"{'-' if mean is None else f'{mean:.2f}'}), last seen "
                     f"{w['seconds_since_seen']:.1f} s ago, session {w['sessions']}")
    if len(workers) > max_workers_listed:
        lines.append(f"  ... and {len(workers) - max_workers_listed} more workers")
    return "\n".join(lines)


class TrainerStatus:
    """Prints :func:`format_trainer_status` at most every ``interval`` seconds (the ``status`` of a
    :class:`~relayrl.roles.common.WatchedInterface`), with rates since the previous report."""

    def __init__(self, transport: "ZmqTrainerInterface", interval: float = DEFAULT_STATUS_INTERVAL,
                 connections: "ConnectionMonitor | None" = None, printer: Callable[[str], None] = say):
        self.transport = transport
        self.interval = float(interval)
        self.connections = connections
        self.printer = printer
        self._last_time = time.monotonic()
        self._last_samples = 0
        self._last_per_worker: dict[str, int] = {}

    def maybe_report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_time < self.interval:
            return
        if self.connections is not None:
            self.connections.poll()
        stats = self.transport.stats()
        elapsed = max(now - self._last_time, 1e-9)
        rate = (stats["samples"] - self._last_samples) / elapsed
        per_worker = {wid: (w["samples"] - self._last_per_worker.get(wid, 0)) / elapsed
                      for wid, w in stats["workers"].items()}
        self._last_time, self._last_samples = now, stats["samples"]
        self._last_per_worker = {wid: w["samples"] for wid, w in stats["workers"].items()}
        self.printer(format_trainer_status(stats, rate, per_worker, self.connections))


# --- the run ---------------------------------------------------------------------------------------------
def run_trainer(config: "RunConfig", plan: TrainerPlan, *, progress: bool = True, print_tables: bool = True,
                status_interval: float = DEFAULT_STATUS_INTERVAL) -> list:
    """Train ``config`` on remote workers through ``plan``'s transport; return the rows. Ctrl+C or
    SIGTERM saves a checkpoint and raises ``KeyboardInterrupt``."""
    import zmq

    config = config.with_run_dir("trainer")  # runs/<env>-trainer unless given
    trainer = open_trainer(config, progress=progress, print_tables=print_tables, role="trainer")
    if trainer is None:
        return []
    training = trainer.training
    # a resumed trainer continues the version numbers from its update count (one broadcast per
    # update_model_interval updates, plus one at the start), so workers see them keep increasing
    initial_version = (1 + training.total_updates // training.update_model_interval
                       if trainer.resumed_from is not None else 0)
    try:
        transport = trainer_transport(trainer, plan.buffer_endpoint, plan.weights_endpoint,
                                      initial_version=initial_version, insecure=plan.insecure,
                                      connect=plan.connect, **plan.security)
    except zmq.ZMQError as exc:
        raise zmq_error(exc, "connect to" if plan.connect else "listen on",
                        (plan.buffer_endpoint, plan.weights_endpoint)) from None
    connections = None
    try:
        connections = transport.connection_monitor()
        if plan.connect:
            where = f"joined the relay at {transport.buffer_endpoint} and {transport.weights_endpoint}"
        else:
            where = (f"workers connect to {transport.buffer_endpoint} (buffers) and "
                     f"{transport.weights_endpoint} (weights)")
        curve = "CURVE on" if transport.secure else "plaintext (no keys)"
        rate = (f"{config.workers.env_steps_per_update:g} env steps per update" if
                config.workers.env_steps_per_update is not None else "no rate limit")
        say(f"trainer: {where}; {curve}; {rate}; run directory {config.run_dir}")
        status = TrainerStatus(transport, status_interval, connections)
        with stop_signals():  # SIGTERM as Ctrl+C: a checkpoint, then exit code 130
            try:
                rows = trainer.run(WatchedInterface(transport, status=status))
                time.sleep(0.2)  # let ZeroMQ hand the final weights to the workers before closing (LINGER 0)
            finally:
                status.maybe_report(force=True)
        return rows
    finally:
        if connections is not None:
            connections.close()
        transport.close()
