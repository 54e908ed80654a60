"""Where the training loop's batches come from: one :class:`BatchSource` per round.

:meth:`~relayrl.training_offline.TrainingOffline.run_round` asks its source for one batch per
update with :meth:`BatchSource.take`, telling it how many batches, this one included, the loop
will take before the memory next changes on schedule (the next pull, every
``update_buffer_interval`` updates, or the end of the round). Before a pull appends samples, the
loop calls :meth:`BatchSource.memory_changing`. Three strategies:

:class:`Iterate`
    One draw per update, just before it: ``next()`` on ``iter(memory)``. For memories that may not
    draw ahead (``memory.draw_ahead`` false: priorities the agent updates, for instance), and for
    duck-typed memories that do not say.
:class:`DrawAhead`
    The batches of all the updates until the next scheduled change, drawn in one go with
    ``memory.sample_batches(n)``, at most ``memory.batches_per_draw`` at a time; drawn again if a
    wait pulled new samples in between. The same batches as one draw per update, at a fraction of
    the per-update cost (see :meth:`relayrl.memory.ReplayMemory.sample_batches`).
:class:`Prefetch`
    While update ``k`` trains, a background thread draws the batch of update ``k + 1`` (``next()``
    on ``iter(memory)``), so sampling, collating and a host-to-device copy overlap the training
    step. Nothing is drawn ahead across a scheduled change; a pull made while waiting first waits
    for the draw in flight, whose batch then comes from the memory as it was: the memory is never
    changed during a draw (memories need no locking) and a seeded run draws the same batches.

:func:`choose_batch_source` picks one, once per round, from two explicit facts: the memory's
``draw_ahead`` flag (see :class:`relayrl.memory.Memory`) and whether prefetch is on. The prefetch
thread is a :class:`PrefetchThread` that outlives rounds: it is created again in a forked child
(which does not inherit the parent's threads), and every source is closed when its round ends,
normally or not (``KeyboardInterrupt`` included), which waits for a draw in flight.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any, Callable, Iterator


def _too_few(memory, steps: int) -> RuntimeError:
    return RuntimeError(f"{type(memory).__name__} yielded fewer than nb_steps={steps} batches; its "
                        "__iter__ must yield nb_steps batches")


def _next_batch(batches: Iterator, memory, steps: int):
    try:
        return next(batches)
    except StopIteration:
        raise _too_few(memory, steps) from None


class BatchSource:
    """Hands the loop one batch per update (see the module docstring). A context manager: leaving
    the ``with`` block closes it."""

    def __init__(self, memory, steps: int):
        self.memory = memory
        self.steps = steps

    def take(self, ahead: int):
        """The batch of this update. ``ahead`` (>= 1): batches the loop will take, this one
        included, before the memory next changes on schedule."""
        raise NotImplementedError

    def memory_changing(self) -> None:
        """Called before new samples are appended to the memory (by a pull)."""

    def close(self) -> None:
        """End of the round: no draw may still be running after this returns."""

    def __enter__(self) -> "BatchSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Iterate(BatchSource):
    """One draw per update, just before it: ``next(iter(memory))``."""

    def __init__(self, memory, steps: int):
        super().__init__(memory, steps)
        self._batches = iter(memory)

    def take(self, ahead: int):
        return _next_batch(self._batches, self.memory, self.steps)


class DrawAhead(BatchSource):
    """The batches until the next scheduled change in one ``memory.sample_batches(n)`` call
    (at most ``memory.batches_per_draw``); dropped and drawn again when samples arrive in between."""

    def __init__(self, memory, steps: int):
        super().__init__(memory, steps)
        self._drawn: deque = deque()

    def take(self, ahead: int):
        if not self._drawn:
            self._drawn.extend(self.memory.sample_batches(min(ahead, self.memory.batches_per_draw)))
        return self._drawn.popleft()

    def memory_changing(self) -> None:
        self._drawn.clear()  # drawn from the memory as it was: the next ones see the new samples

    def close(self) -> None:
        self._drawn.clear()


class PrefetchThread:
    """The one background thread :class:`Prefetch` sources draw in; it outlives rounds.

    Started on first use, and again in a forked child (identified by its pid): a child does not
    inherit its parent's threads, nor can it wait for their work."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._pid = 0
        self._last: Future | None = None

    def submit(self, fn: Callable, *args: Any) -> Future:
        if self._executor is None or self._pid != os.getpid():
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relayrl-prefetch")
            self._pid = os.getpid()
        self._last = self._executor.submit(fn, *args)
        return self._last

    def join(self) -> None:
        """Wait until nothing is being drawn (the work's result, or error, stays in its future)."""
        last = self._last
        if last is not None and self._pid == os.getpid():
            futures_wait([last])

    def shutdown(self) -> None:
        """Stop the thread (it starts again on the next :meth:`submit`)."""
        self.join()
        if self._executor is not None and self._pid == os.getpid():
            self._executor.shutdown(wait=True)
        self._executor, self._last = None, None


class Prefetch(BatchSource):
    """Draws the next batch in ``thread`` while the current one trains, unless a scheduled change
    of the memory comes first."""

    def __init__(self, memory, steps: int, thread: PrefetchThread):
        super().__init__(memory, steps)
        self._batches = iter(memory)
        self._thread = thread
        self._pending: Future | None = None

    def take(self, ahead: int):
        pending, self._pending = self._pending, None
        if pending is None:
            batch = _next_batch(self._batches, self.memory, self.steps)
        else:
            try:
                batch = pending.result()
            except StopIteration:
                raise _too_few(self.memory, self.steps) from None
        if ahead > 1:
            self._pending = self._thread.submit(next, self._batches)
        return batch

    def memory_changing(self) -> None:
        self._thread.join()  # never change the memory while a batch is being drawn from it

    def close(self) -> None:
        self._thread.join()
        self._pending = None


def choose_batch_source(memory, steps: int, prefetch: bool, thread: PrefetchThread) -> BatchSource:
    """The round's :class:`BatchSource`: :class:`Iterate` unless ``memory.draw_ahead`` is true
    (a memory without the attribute does not say, so it is not drawn ahead); then :class:`Prefetch`
    if ``prefetch``, else :class:`DrawAhead`."""
    if not getattr(memory, "draw_ahead", False):
        return Iterate(memory, steps)
    if prefetch:
        return Prefetch(memory, steps, thread)
    return DrawAhead(memory, steps)
