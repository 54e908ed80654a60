"""``relayrl relay``: a :class:`~relayrl.transport.relay.Relay`, for a trainer that cannot accept
connections. Workers and the trainer both dial out to it; it prints its connections and what it
forwarded (it never decodes a payload, so it knows nothing of samples or versions).

:func:`plan_relay` checks the ports and keys (a mistake is a one-line
:class:`~relayrl.roles.common.RoleError`); :func:`run_relay` forwards until Ctrl+C, SIGTERM or the
given duration.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import (DEFAULT_STATUS_INTERVAL, RoleError, check_port, check_security, key_dir, key_file,
                     parse_host, say, stop_signals, tcp_endpoint, zmq_error)

__all__ = ["RelayPlan", "plan_relay", "run_relay"]


@dataclass
class RelayPlan:
    """Where a ``relayrl relay`` listens, for the workers and for the trainer, with which keys."""

    worker_buffer: str
    worker_weights: str
    trainer_buffer: str
    trainer_weights: str
    security: dict = field(default_factory=dict)
    insecure: bool = False


def plan_relay(args) -> RelayPlan:
    """Validate the relay's interface, its four ports and its keys."""
    host, _ = parse_host(args.bind, "--bind", bind=True)
    ports = [check_port(p, flag) for p, flag in ((args.worker_buffer_port, "--worker-buffer-port"),
                                                 (args.worker_weights_port, "--worker-weights-port"),
                                                 (args.trainer_buffer_port, "--trainer-buffer-port"),
                                                 (args.trainer_weights_port, "--trainer-weights-port"))]
    if len(set(ports)) != 4:
        raise RoleError(f"relay: the four ports must differ, got {ports}")
    endpoints = [tcp_endpoint(host, p) for p in ports]
    check_security("relay", endpoints, bool(args.keys), args.insecure)
    security: dict = {}
    if args.keys:
        keys = Path(args.keys)
        security = {"secret_key_file": key_file(keys / "relay.key_secret", "relay key pair", " --relay"),
                    "authorized_keys_dir": key_dir(keys / "authorized_workers", "authorized workers directory"),
                    "trainer_keys": key_file(keys / "trainer.key", "trainer public key")}
    return RelayPlan(*endpoints, security=security, insecure=args.insecure)


def _status(monitor, stats: dict, before: dict, elapsed: float) -> str:
    o = monitor.open
    trainer = "connected" if o["trainer buffers"] and o["trainer weights"] else "absent"
    rate = (stats["buffers_forwarded"] - before["buffers_forwarded"]) / max(elapsed, 1e-9)
    return (f"relay: workers connected {o['worker buffers']} (buffers) / {o['worker weights']} (weights), "
            f"trainer {trainer}, refused {monitor.refused} | forwarded {stats['buffers_forwarded']} buffers "
            f"({rate:.1f}/s), {stats['publications_forwarded']} weights/control messages")


def run_relay(plan: RelayPlan, *, status_interval: float = DEFAULT_STATUS_INTERVAL,
              duration: float | None = None) -> dict:
    """Forward until Ctrl+C, SIGTERM or ``duration`` seconds; print status every ``status_interval``;
    return the relay's counters."""
    import zmq

    from ..transport.relay import Relay

    endpoints = (plan.worker_buffer, plan.worker_weights, plan.trainer_buffer, plan.trainer_weights)
    try:
        relay = Relay(*endpoints, insecure=plan.insecure, **plan.security)
    except zmq.ZMQError as exc:
        raise zmq_error(exc, "listen on", endpoints) from None
    monitor = None
    try:
        monitor = relay.connection_monitor()
        say(f"relay: workers connect to {relay.worker_buffer_endpoint} (buffers) and "
            f"{relay.worker_weights_endpoint} (weights); the trainer to {relay.trainer_buffer_endpoint} and "
            f"{relay.trainer_weights_endpoint}; {'CURVE on' if plan.security else 'plaintext (no keys)'}")
        deadline = math.inf if duration is None else time.monotonic() + duration
        before, last = relay.stats(), time.monotonic()
        try:
            with stop_signals():  # SIGTERM as Ctrl+C
                while time.monotonic() < deadline:
                    relay.run(duration=min(status_interval, max(0.0, deadline - time.monotonic())))
                    monitor.poll()
                    now, stats = time.monotonic(), relay.stats()
                    say(_status(monitor, stats, before, now - last))
                    before, last = stats, now
        except KeyboardInterrupt:
            say("relay: stopped")
        return relay.stats()
    finally:
        if monitor is not None:
            monitor.close()
        relay.close()
