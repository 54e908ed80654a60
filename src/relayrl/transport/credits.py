"""Credits: the worker side of rate control, as pure rules (no sockets; unit-tested on their own).

A cheap simulator can step far faster than the trainer learns; unmetered, it floods the memory with
samples from stale policies. With ``env_steps_per_update`` set, after every ``report_progress`` the
trainer (:class:`~relayrl.transport.trainer_end.ZmqTrainerInterface`) asks :class:`CreditRule` for::

    allowance = max(initial_samples, total_updates * env_steps_per_update) + slack_samples
              (initial_samples + total_updates * env_steps_per_update + slack_samples when the
               trainer counts its ratio from start_training on: ``on_top_of_initial``)
    remaining = max(0, allowance - total_samples)
    share     = ceil(remaining / max(1, workers seen in the last worker_timeout seconds))

and publishes ``{"allow": {worker_id: received_from_it + share}, "sessions": {worker_id: session},
"default": share}``. The numbers are *absolute totals* per worker session, so messages are idempotent
(a lost or repeated one does no harm) and samples still in flight are accounted by the worker itself:
:func:`allowed_samples` converts them to the client's ``samples_sent`` scale and the worker steps
only while ``samples_sent + pending < allowed``. A session starts with the "hello" each client sends
before its first buffer (again if the trainer seems not to know it, e.g. after a trainer restart);
counting restarts there, so a restarted worker is not charged for its predecessor.

Publications are throttled to one per ``control_interval`` (20 ms) unless :func:`is_big_change`
says the new message matters at once. Without ``env_steps_per_update`` the control message is
:data:`UNLIMITED` (``{"allow": {}, "sessions": {}, "default": None}``): no limit.

To never deadlock, choose ``env_steps_per_update >= 1 / max_training_steps_per_env_step`` and
``initial_samples >= max(start_training, batch_size)`` (``relayrl train`` and ``relayrl trainer``
pass exactly that ``initial_samples``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

__all__ = ["UNLIMITED", "CreditRule", "is_big_change", "allowed_samples"]

UNLIMITED: dict = {"allow": {}, "sessions": {}, "default": None}
"""The control message of a trainer that does not meter its workers."""


@dataclass(frozen=True)
class CreditRule:
    """How many samples the workers may have sent, from the trainer's counters.

    Parameters
    ----------
    env_steps_per_update:
        Samples allowed per agent update; ``None``: workers are not metered.
    initial_samples:
        Samples allowed before any update (so that training can start at all).
    slack_samples:
        How far the data may lead the updates, so the trainer rarely waits for samples.
    """

    env_steps_per_update: float | None = None
    initial_samples: int = 0
    slack_samples: int = 1000
    on_top_of_initial: bool = False
    """``initial + updates x rate + slack`` instead of ``max(initial, updates x rate) + slack``:
    the workers' side of a trainer that counts its ratio from ``start_training`` on."""

    def __post_init__(self) -> None:
        if self.env_steps_per_update is not None and not self.env_steps_per_update > 0:
            raise ValueError(f"env_steps_per_update must be > 0 or None, got {self.env_steps_per_update}")
        if self.initial_samples < 0 or self.slack_samples < 0:
            raise ValueError("initial_samples and slack_samples must be >= 0")

    @property
    def metered(self) -> bool:
        return self.env_steps_per_update is not None

    def allowance(self, total_updates: int) -> int | None:
        """Samples the workers may have sent in total after ``total_updates`` updates (``None``: no
        limit): ``max(initial, updates x rate) + slack``, rounded up."""
        if self.env_steps_per_update is None:
            return None
        earned = total_updates * self.env_steps_per_update
        if self.on_top_of_initial:
            return math.ceil(self.initial_samples + earned + self.slack_samples)
        return math.ceil(max(self.initial_samples, earned) + self.slack_samples)

    def share(self, total_updates: int, total_samples: int, active_workers: int) -> int | None:
        """What each of ``active_workers`` may still send (``None``: no limit)."""
        allowance = self.allowance(total_updates)
        if allowance is None:
            return None
        remaining = max(0, allowance - total_samples)
        return math.ceil(remaining / max(1, active_workers))

    def control_message(self, total_updates: int, total_samples: int,
                        active: Mapping[str, tuple[int, str | None]]) -> dict:
        """The control message to publish. ``active`` maps each worker heard from recently to
        ``(samples received in its current session, that session's token or None)``; a worker not
        listed (new, or quiet longer than the trainer's worker_timeout) gets the ``default`` share."""
        share = self.share(total_updates, total_samples, len(active))
        if share is None:
            return dict(UNLIMITED)
        return {"allow": {wid: session_samples + share for wid, (session_samples, _) in active.items()},
                "sessions": {wid: session for wid, (_, session) in active.items() if session},
                "default": share}


def is_big_change(old: Mapping, new: Mapping) -> bool:
    """Worth publishing at once rather than at the next ``control_interval``: the limit switched on
    or off, a session started or ended, a share ran out or reopened, or it moved by more than a
    quarter."""
    before, after = old.get("default"), new["default"]
    if before is None or after is None:
        return before != after
    if set(old.get("sessions", {}).items()) != set(new["sessions"].items()):
        return True
    return (before == 0) != (after == 0) or abs(after - before) > 0.25 * before


def allowed_samples(control: Mapping | None, worker_id: str, session: str,
                    samples_at_hello: int) -> int | None:
    """The worker's reading of a control message: how many samples in total (on its own
    ``samples_sent`` scale) it may have sent; ``None`` = no limit, or no message yet.

    The trainer's numbers count from the session's hello, so ``samples_at_hello`` (what the worker
    had sent when it said hello) converts them. A worker whose session the trainer does not list
    (not heard yet, or a restarted trainer) is allowed the ``default`` share from its hello on."""
    if control is None or control["default"] is None:
        return None
    if control["sessions"].get(worker_id) == session and worker_id in control["allow"]:
        return samples_at_hello + control["allow"][worker_id]
    return samples_at_hello + control["default"]
