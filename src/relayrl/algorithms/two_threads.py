"""Run two halves of an update at the same time: one in a helper thread, one in the caller's.

Used by the agents' parallel update (SAC's critic step beside its actor step, each on its own core).
The runner is safe where a plain thread pool is not:

* after a ``fork`` the child does not inherit the parent's threads: the helper thread is created
  again in the child on first use;
* an exception or a ``KeyboardInterrupt`` (Ctrl+C, or SIGTERM turned into one) at any point of the
  caller's side, even inside ``submit`` or the final wait, never leaves the helper side blocked,
  and :meth:`TwoThreads.run` returns or raises only once the helper side is done, so a checkpoint
  saved after an interrupt never sees a step in flight.
"""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Callable, TypeVar

__all__ = ["TwoThreads", "wait_through_interrupts"]

B = TypeVar("B")
F = TypeVar("F")


def wait_through_interrupts(future: Future) -> None:
    """Wait until ``future`` is done, even if KeyboardInterrupt arrives meanwhile (re-raised after)."""
    interrupted = None
    while True:
        try:
            futures_wait([future])
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


class TwoThreads:
    """One helper thread, re-created after a fork, and the interrupt-safe way to use it."""

    def __init__(self, name: str = "relayrl-helper"):
        self.name = name
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pid != os.getpid():
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
            self._pid = os.getpid()
        return self._pool

    def run(self, background: Callable[[], B], foreground: Callable[[], F],
            release: Callable[[], None]) -> tuple[B, F]:
        """``(background(), foreground())``, the first in the helper thread, the second here.

        ``release`` is called whatever happens on this side (it must unblock everything
        ``background`` may wait for, e.g. set the events it waits on); then this waits, through
        interrupts, until ``background`` has finished, and only then returns or raises.
        """
        pool = self._executor()
        future = None
        try:
            future = pool.submit(background)
            foreground_result = foreground()
        finally:
            release()
            if future is not None:
                wait_through_interrupts(future)
            else:  # submit itself was interrupted: wait for a task it may have queued anyway
                try:
                    wait_through_interrupts(pool.submit(lambda: None))
                except RuntimeError:  # the pool is shut down: nothing of ours can be in it
                    pass
        return future.result(), foreground_result

    def close(self) -> None:
        """Stop the helper thread (it also ends with the process)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
