"""The wire between rollout workers and the trainer.

* :mod:`relayrl.transport.codec`: the pickle-free message format (msgpack header + raw array frames,
  dtype allow-list, size limits, strict validation);
* :mod:`relayrl.transport.zmq_transport`: :class:`ZmqTrainerInterface` (the trainer's side of the
  interface protocol) and :class:`ZmqWorkerClient` (a worker's connection), over ZeroMQ.
"""
from __future__ import annotations

from .codec import (CodecError, decode_buffer, decode_control, decode_message, decode_weights,
                    encode_buffer, encode_control, encode_weights)
from .zmq_transport import ZmqTrainerInterface, ZmqWorkerClient

__all__ = ["CodecError", "decode_buffer", "decode_control", "decode_message", "decode_weights",
           "encode_buffer", "encode_control", "encode_weights", "ZmqTrainerInterface",
           "ZmqWorkerClient"]
