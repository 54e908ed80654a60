"""The processes relayrl runs, one module per command (see ``docs/distributed.md`` for the recipes):

* :mod:`.common`: default ports, address parsing, key checks, :class:`RoleError`, ``say``, the one
  SIGTERM-as-Ctrl+C rule (``stop_signals``) and the trainer side's ``WatchedInterface``;
* :mod:`.local_run`: ``relayrl train``, the trainer plus local worker processes (``run_local``);
* :mod:`.remote_trainer`: ``relayrl trainer``, trains from remote workers (``plan_trainer``,
  ``run_trainer``);
* :mod:`.remote_worker`: ``relayrl worker``, one rollout worker dialling out (``plan_worker``,
  ``run_worker``);
* :mod:`.relay_server`: ``relayrl relay``, for a trainer that cannot accept connections
  (``plan_relay``, ``run_relay``);
* :mod:`.key_setup`: ``relayrl keys``, the CURVE key layout (``make_keys``).

Every user mistake that can be checked before starting (an address that is not ``tcp://HOST:PORT``,
a missing key file, plaintext on a public interface) raises :class:`RoleError`: one line, which the
command line prints without a traceback (exit code 2).

Importing this package imports nothing: the names below are loaded from their module on first use,
so a worker never pays for the trainer side, nor ``relayrl keys`` for torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "DEFAULT_BUFFER_PORT": "common", "DEFAULT_WEIGHTS_PORT": "common",
    "DEFAULT_RELAY_TRAINER_BUFFER_PORT": "common", "DEFAULT_RELAY_TRAINER_WEIGHTS_PORT": "common",
    "DEFAULT_STATUS_INTERVAL": "common", "HOW_TO_MAKE_KEYS": "common", "RoleError": "common",
    "parse_endpoint": "common", "parse_host": "common", "tcp_endpoint": "common", "say": "common",
    "stop_signals": "common", "WatchedInterface": "common",
    "run_local": "local_run",
    "TrainerPlan": "remote_trainer", "plan_trainer": "remote_trainer", "run_trainer": "remote_trainer",
    "TrainerStatus": "remote_trainer", "format_trainer_status": "remote_trainer",
    "WorkerPlan": "remote_worker", "plan_worker": "remote_worker", "run_worker": "remote_worker",
    "PatientConnection": "remote_worker",
    "RelayPlan": "relay_server", "plan_relay": "relay_server", "run_relay": "relay_server",
    "make_keys": "key_setup",
}
_TRANSPORT_EXPORTS = {"TRANSPORT_STATS_KEYS", "TransportAccounting", "ConnectionMonitor"}

__all__ = sorted([*_EXPORTS, *_TRANSPORT_EXPORTS])


def __getattr__(name: str):
    if name in _TRANSPORT_EXPORTS:  # they moved to the transport; still reachable from here
        return getattr(importlib.import_module("relayrl.transport"), name)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'relayrl.roles' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
