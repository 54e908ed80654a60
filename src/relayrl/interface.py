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

And :class:`~relayrl.trainer.Trainer` calls one more when present:

* ``announce_end()``: once, when ``Trainer.run`` has finished every epoch (not on Ctrl+C or an
  error), so that a transport tells its workers the run is over and they stop.

The interface is passed to each ``run_epoch`` call and never stored on the training object, so the
training object stays checkpointable and testable with a fake.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .actor import ActorModule
    from .buffer import Buffer

__all__ = ["Interface", "check_interface"]

OPTIONAL_METHODS = ("wait_for_data", "report_progress", "announce_end")


@runtime_checkable
class Interface(Protocol):
    """What ``TrainingOffline.run_epoch`` and ``Trainer.run`` need (the two required methods)."""

    def retrieve_buffer(self) -> "Buffer": ...

    def broadcast_model(self, actor: "ActorModule") -> None: ...


def check_interface(interface) -> None:
    """A ``TypeError`` naming what is missing when ``interface`` cannot serve a run."""
    missing = [name for name in ("retrieve_buffer", "broadcast_model")
               if not callable(getattr(interface, name, None))]
    if missing:
        raise TypeError(f"{type(interface).__name__} is not a trainer interface: it has no "
                        f"{' and no '.join(missing)} method (see relayrl.interface)")
    for name in OPTIONAL_METHODS:
        value = getattr(interface, name, None)
        if value is not None and not callable(value):
            raise TypeError(f"{type(interface).__name__}.{name} is not a method (see relayrl.interface)")
