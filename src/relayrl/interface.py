"""The protocol between :class:`~relayrl.training_offline.TrainingOffline` and the outside world.

``TrainingOffline.run_epoch(interface)`` needs only two methods:

* ``retrieve_buffer() -> Buffer``: every transition that arrived since the last call (possibly
  empty), without blocking;
* ``broadcast_model(actor)``: send the current policy to every worker.

Two optional methods make the loop better when present:

* ``wait_for_data(timeout: float) -> bool``: block until something arrived or ``timeout`` seconds
  passed (the trainer then wakes as soon as samples come instead of sleeping a fixed time);
* ``report_progress(total_updates: int, total_samples: int, memory_len: int)``: the trainer's
  counters after every pull, used by transports to meter how many samples workers may still send
  (the worker side of rate control).

The interface is passed to each ``run_epoch`` call and never stored on the training object, so the
training object stays checkpointable and testable with a fake.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from .actor import ActorModule
from .buffer import Buffer


@runtime_checkable
class TrainerInterface(Protocol):
    def retrieve_buffer(self) -> Buffer: ...

    def broadcast_model(self, actor: ActorModule) -> None: ...
