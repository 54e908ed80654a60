"""The trainer's bookkeeping of its workers: sessions, sequence gaps and repeats, samples, policy lag,
and the statistics-row keys built from it.

* :class:`WorkerAccount`: what the trainer knows about one worker id;
* :class:`WorkerLedger`: the accounts, updated by the trainer end of the transport for every hello
  and every accepted buffer (no sockets: unit-testable);
* :data:`TRANSPORT_STATS_KEYS` and :class:`TransportAccounting`: the keys ``relayrl train`` and
  ``relayrl trainer`` add to every statistics row, computed round by round from a
  :class:`~relayrl.transport.trainer_end.ZmqTrainerInterface`.

A worker's buffers carry ``seq`` numbers that start at 0 in each session (a session begins with the
worker's hello). A ``seq`` above the expected one counts the missing buffers as *lost*; one below it
counts a *duplicate*. The *policy lag* of a buffer is the trainer's policy version when it arrived
minus the version that collected it, in broadcasts.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .trainer_end import ZmqTrainerInterface

__all__ = ["WorkerAccount", "WorkerLedger", "TRANSPORT_STATS_KEYS", "TransportAccounting"]

log = logging.getLogger("relayrl.transport")


@dataclass
class WorkerAccount:
    """What the trainer knows about one worker id."""

    samples: int = 0               # transitions received, all sessions
    buffers: int = 0               # buffers received, all sessions
    lost: int = 0                  # buffers missing (gaps in seq)
    duplicates: int = 0            # buffers whose seq went backwards (a repeat or an unannounced restart)
    last_policy_version: int = -1
    lag_sum: int = 0               # sum over buffers of (trainer's version - buffer's version)
    sessions: int = 0              # hellos received
    session: str | None = None     # current session token
    session_samples: int = 0       # transitions received since the session's hello
    next_seq: int | None = None    # the seq expected next
    last_seen: float = 0.0         # time.monotonic() of the last message


class WorkerLedger:
    """The accounts of every worker id heard from (the least recently seen are forgotten beyond
    ``max_accounts``, so a flood of made-up ids cannot grow the trainer's memory)."""

    MAX_WORKER_ACCOUNTS = 10_000

    def __init__(self, worker_timeout: float = 60.0, max_accounts: int = MAX_WORKER_ACCOUNTS):
        self.worker_timeout = float(worker_timeout)
        self.max_accounts = int(max_accounts)
        self.accounts: dict[str, WorkerAccount] = {}

    def account(self, worker_id: str) -> WorkerAccount:
        """The account of ``worker_id`` (created if new), marked as seen now."""
        account = self.accounts.get(worker_id)
        if account is None:
            if len(self.accounts) >= self.max_accounts:
                oldest = min(self.accounts, key=lambda wid: self.accounts[wid].last_seen)
                del self.accounts[oldest]
            account = self.accounts[worker_id] = WorkerAccount()
        account.last_seen = time.monotonic()
        return account

    def start_session(self, worker_id: str, session: str) -> None:
        """A hello: counting of the session's samples and ``seq`` numbers starts afresh."""
        account = self.account(worker_id)
        account.sessions += 1
        account.session = session
        account.session_samples = 0
        account.next_seq = None  # the session's first buffer sets it
        log.info("worker %r started session %s", worker_id, session)

    def record(self, worker_id: str, seq: int, samples: int, policy_version: int,
               trainer_version: int) -> None:
        """An accepted buffer of ``samples`` transitions."""
        account = self.account(worker_id)
        if account.next_seq is not None and seq != account.next_seq:
            if seq > account.next_seq:
                account.lost += seq - account.next_seq
            else:
                account.duplicates += 1
        account.next_seq = max(account.next_seq or 0, seq + 1)
        account.samples += samples
        account.session_samples += samples
        account.buffers += 1
        account.last_policy_version = policy_version
        account.lag_sum += trainer_version - policy_version

    def active(self, now: float | None = None) -> dict[str, WorkerAccount]:
        """The workers heard from in the last ``worker_timeout`` seconds."""
        now = time.monotonic() if now is None else now
        return {wid: a for wid, a in self.accounts.items() if now - a.last_seen <= self.worker_timeout}

    def totals(self) -> dict[str, int]:
        """Sums over every account: samples, buffers, lost and duplicate buffers, policy-lag sum."""
        accounts = list(self.accounts.values())
        return {"samples": sum(a.samples for a in accounts), "buffers": sum(a.buffers for a in accounts),
                "lost_buffers": sum(a.lost for a in accounts),
                "duplicate_buffers": sum(a.duplicates for a in accounts),
                "lag_sum": sum(a.lag_sum for a in accounts)}

    def worker_stats(self, now: float | None = None) -> dict[str, dict]:
        """Per worker id: the plain numbers of its account (for status reports and logs)."""
        now = time.monotonic() if now is None else now
        return {wid: {"samples": a.samples, "buffers": a.buffers, "lost_buffers": a.lost,
                      "duplicate_buffers": a.duplicates, "last_policy_version": a.last_policy_version,
                      "policy_lag_mean": a.lag_sum / a.buffers if a.buffers else None,
                      "sessions": a.sessions, "seconds_since_seen": now - a.last_seen}
                for wid, a in self.accounts.items()}


#: Keys the ``trainer`` role (and ``relayrl train``) add to every statistics row, with their meaning.
TRANSPORT_STATS_KEYS: dict[str, str] = {
    "connected_workers": "workers heard from in the last worker_timeout (60 s), at the end of the round",
    "lost_buffers": "buffers missing from the workers' sequences (seq gaps), total since the trainer started",
    "duplicate_buffers": "buffers whose seq went backwards (repeats), total since the trainer started",
    "dropped_messages": "malformed, oversized or hostile messages dropped, total since the trainer started",
    "policy_lag_mean": "mean over the buffers received in the round of (trainer's policy version - "
                       "version that collected the buffer), in broadcasts (NaN if none came)",
    "policy_version": "policy version last broadcast (one per update_model_interval updates)",
}


class TransportAccounting:
    """Computes :data:`TRANSPORT_STATS_KEYS` from a :class:`ZmqTrainerInterface`, round by round:
    ``trainer.row_extras = TransportAccounting(transport).row_stats``."""

    def __init__(self, transport: "ZmqTrainerInterface"):
        self.transport = transport
        self._buffers, self._lag_sum = self._totals()

    def _totals(self) -> tuple[int, int]:
        totals = self.transport.ledger.totals()
        return totals["buffers"], totals["lag_sum"]

    def row_stats(self) -> dict[str, float]:
        """The keys' values now; ``policy_lag_mean`` over the buffers since the previous call."""
        stats = self.transport.stats()
        buffers, lag_sum = self._totals()
        new_buffers = buffers - self._buffers
        lag = (lag_sum - self._lag_sum) / new_buffers if new_buffers > 0 else float("nan")
        self._buffers, self._lag_sum = buffers, lag_sum
        return {"connected_workers": stats["active_workers"], "lost_buffers": stats["lost_buffers"],
                "duplicate_buffers": stats["duplicate_buffers"],
                "dropped_messages": stats["dropped_messages"], "policy_lag_mean": lag,
                "policy_version": stats["policy_version"]}
