"""The wire between rollout workers and the trainer: the only thing that crosses a process boundary.

One concern per module (none imports a module listed after it, except through ``TYPE_CHECKING``):

* :mod:`relayrl.transport.codec`: the pickle-free message format (msgpack header + raw array frames,
  dtype allow-list, size limits, strict validation);
* :mod:`relayrl.transport.keys`: CURVE key pairs, the authorized-keys layout, the exposure rule;
* :mod:`relayrl.transport.sockets`: the ZeroMQ context, socket preparation, topics, drop logs and
  connection monitors shared by every end; the socket layout, security rule and delivery guarantee;
* :mod:`relayrl.transport.credits`: :class:`CreditRule`, the worker-side rate-control rule (pure);
* :mod:`relayrl.transport.accounting`: per-worker bookkeeping (sessions, seq gaps, policy lag) and
  the transport's statistics-row keys (:class:`TransportAccounting`);
* :mod:`relayrl.transport.trainer_end`: :class:`ZmqTrainerInterface`, the trainer's side of the
  interface protocol;
* :mod:`relayrl.transport.worker_end`: :class:`ZmqWorkerClient`, a worker's connection;
* :mod:`relayrl.transport.relay`: :class:`Relay`, for a trainer that cannot accept connections.

Names are imported on first use, so importing this package costs nothing (the command line is
``relayrl keys`` / ``relayrl relay``; this package has no command line of its own).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "CodecError": "codec", "decode_buffer": "codec", "decode_control": "codec",
    "decode_message": "codec", "decode_weights": "codec", "encode_buffer": "codec",
    "encode_control": "codec", "encode_weights": "codec",
    "create_key_pair": "keys", "create_keys": "keys", "is_loopback": "keys",
    "ConnectionMonitor": "sockets",
    "CreditRule": "credits",
    "TRANSPORT_STATS_KEYS": "accounting", "TransportAccounting": "accounting",
    "WorkerAccount": "accounting",
    "Relay": "relay",
    "ZmqTrainerInterface": "trainer_end", "ZmqWorkerClient": "worker_end",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'relayrl.transport' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
