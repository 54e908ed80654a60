"""The wire between rollout workers and the trainer.

* :mod:`relayrl.transport.codec`: the pickle-free message format (msgpack header + raw array frames,
  dtype allow-list, size limits, strict validation);
* :mod:`relayrl.transport.zmq_transport`: :class:`ZmqTrainerInterface` (the trainer's side of the
  interface protocol) and :class:`ZmqWorkerClient` (a worker's connection), over ZeroMQ;
* :mod:`relayrl.transport.keys`: CURVE key pairs, the authorized-keys layout, the exposure rule;
* :mod:`relayrl.transport.relay`: :class:`Relay`, for a trainer that cannot accept connections.

Names are imported on first use (so ``python -m relayrl.transport.keys`` and ``.relay`` run cleanly).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "CodecError": "codec", "decode_buffer": "codec", "decode_control": "codec",
    "decode_message": "codec", "decode_weights": "codec", "encode_buffer": "codec",
    "encode_control": "codec", "encode_weights": "codec",
    "create_key_pair": "keys", "create_keys": "keys", "is_loopback": "keys",
    "Relay": "relay",
    "ZmqTrainerInterface": "zmq_transport", "ZmqWorkerClient": "zmq_transport",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'relayrl.transport' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
