"""The ZeroMQ transport: buffers from workers to the trainer, weights and allowances back.

Sockets
-------
The trainer binds two sockets; workers only dial out (NAT-friendly)::

    worker PUSH  --connect-->  trainer PULL   buffers (and one "hello" per worker session)
    worker SUB   --connect-->  trainer XPUB   weights (topic b"w") and control (topic b"c")

Every message is ``[topic?, header, *array frames]`` in the pickle-free format of
:mod:`relayrl.transport.codec`; the publisher prefixes a topic frame so subscribers can filter.
Anything that fails to decode is dropped and logged with its sender; it never stops the trainer.

Late joiners. The XPUB socket sees every subscription (``XPUB_VERBOSE``). When a worker subscribes
(first start, restart or reconnection) the trainer re-publishes its latest weights and latest control
message, so the worker is up to date at once (re-sends of the weights are coalesced to one per
``weights_resend_interval`` seconds, since a publication reaches every subscriber). The trainer
handles subscriptions whenever it calls into the interface (``retrieve_buffer``, ``wait_for_data``,
``broadcast_model``, ``report_progress``), which the training loop does continually.

Credits (worker-side rate control)
----------------------------------
A cheap simulator can step far faster than the trainer learns; unmetered, it floods the memory with
samples from stale policies. With ``env_steps_per_update`` set, after every ``report_progress`` the
trainer computes::

    allowance = max(initial_samples, total_updates * env_steps_per_update) + slack_samples
    remaining = max(0, allowance - total_samples)
    share     = ceil(remaining / max(1, workers seen in the last worker_timeout seconds))

and publishes ``{"allow": {worker_id: received_from_it + share}, "sessions": {worker_id: session},
"default": share}``. The numbers are *absolute totals* per worker session, so messages are idempotent
(a lost or repeated one does no harm) and samples still in flight are accounted by the worker itself:
:meth:`ZmqWorkerClient.allowed_samples` converts them to the client's ``samples_sent`` scale and the
worker steps only while ``samples_sent + pending < allowed``. A session starts with the "hello" each
client sends before its first buffer (again if the trainer seems not to know it, e.g. after a trainer
restart); counting restarts there, so a restarted worker is not charged for its predecessor.
Publications are throttled to one per ``control_interval`` (20 ms) unless the share changed a lot.
Without ``env_steps_per_update`` the control message is ``{"allow": {}, "default": None}``: no limit.
To never deadlock, choose ``env_steps_per_update >= 1 / max_training_steps_per_env_step`` and
``initial_samples >= max(start_training, batch_size)``.

Security
--------
On loopback (127.0.0.0/8, ::1, ipc://) plaintext is allowed. Any other address needs CURVE keys
(:mod:`relayrl.transport.keys`): the trainer's sockets are CURVE servers and a ZAP handler accepts only
the workers whose public keys are in ``authorized_keys_dir`` (reread when it changes; a revoked key
is refused on its next connection). Without keys the trainer and the client refuse to start unless
``insecure=True`` (logged loudly). Whatever the network, nothing received is unpickled or executed:
the codec accepts only plain arrays of allow-listed dtypes and a few typed header fields. A trainer
that cannot accept connections uses a :class:`~relayrl.transport.relay.Relay` (``connect=True``).

Delivery guarantee (plainly)
----------------------------
* Buffers: while a worker's TCP connection lives, its buffers arrive complete, in order, at most once.
  Queues are bounded: ``max_queued_buffers`` per connected worker on the trainer (ZeroMQ high-water
  marks are per connection) and ``send_hwm`` in each worker; when they are full, ``send_buffer``
  blocks (back-pressure) and raises ``TimeoutError`` after ``send_timeout`` seconds.
* A worker process killed: the buffers still queued in it (at most ``send_hwm`` plus what sits in
  the kernel socket buffers) are lost, silently: its session ends with it, so no ``seq`` gap can show.
  The restarted worker starts a new session (and gets the latest weights on subscribing).
* The trainer killed: everything queued in it (up to ``max_queued_buffers`` per worker) and what is in
  flight is lost; workers keep queueing up to ``send_hwm`` (then block) and ZeroMQ reconnects them to
  the restarted trainer, which then receives those queued buffers. The restarted trainer has no record
  of earlier ``seq`` numbers, so this loss is not counted; the checkpoint's ``total_samples`` and the
  workers' ``samples_sent`` tell it.
* A network outage: ZeroMQ reconnects; a message being written when the connection broke can be lost
  (shown as a ``seq`` gap), later ones are delivered.
* Weights and control: publish/subscribe, latest value wins. A message can be dropped (slow or
  disconnected subscriber) but the newest weights and allowance are re-sent whenever a worker
  (re)subscribes, and the next broadcast supersedes anything missed. Workers drain their subscription
  in a background thread and keep only the newest message, so a busy worker never piles up old weights.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from ..buffer import TRANSITION_FIELDS, Buffer
from .codec import (DEFAULT_MAX_BUFFER_BYTES, DEFAULT_MAX_CONTROL_BYTES, DEFAULT_MAX_WEIGHTS_BYTES,
                    MAX_WORKER_ID_LEN, CodecError, decode_control, decode_message, decode_weights,
                    encode_buffer, encode_control, encode_hello, encode_weights)
from .keys import AllowList, ClientSecurity, ServerSecurity, both_or_neither, check_exposure

if TYPE_CHECKING:
    from ..actor import ActorModule

log = logging.getLogger("relayrl.transport")

WEIGHTS_TOPIC = b"w"
CONTROL_TOPIC = b"c"
UNLIMITED: dict = {"allow": {}, "sessions": {}, "default": None}


def _context() -> zmq.Context:
    """The one ZeroMQ context of this process (``zmq.Context.instance()`` is fork-aware)."""
    return zmq.Context.instance()


def _prepare(socket: zmq.Socket, endpoint: str) -> None:
    socket.setsockopt(zmq.LINGER, 0)
    if endpoint.startswith("tcp://["):  # an IPv6 address such as tcp://[::1]:5555
        socket.setsockopt(zmq.IPV6, 1)


class _RateLimitedLog:
    """Log the first ``burst`` events, then one in ``every`` (a flood of bad messages must not
    flood the log too)."""

    def __init__(self, burst: int = 20, every: int = 100):
        self.count, self.burst, self.every = 0, burst, every

    def warning(self, msg: str, *args: Any) -> None:
        self.count += 1
        if self.count <= self.burst or self.count % self.every == 0:
            log.warning(msg + " [%d such messages so far]", *args, self.count)


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


class ZmqTrainerInterface:
    """The trainer's side: implements the interface protocol of :mod:`relayrl.interface`.

    Parameters
    ----------
    buffer_bind, weights_bind:
        ZeroMQ endpoints to bind (``tcp://HOST:PORT``, port 0 = any free port; ``ipc://PATH``).
        :attr:`buffer_endpoint` and :attr:`weights_endpoint` give the bound addresses.
    env_steps_per_update, initial_samples, slack_samples:
        Worker-side rate control (see the module docstring); ``None`` = workers are not metered.
    max_buffer_bytes:
        Largest buffer message accepted (larger frames make ZeroMQ drop the connection).
    max_queued_buffers:
        Receive high-water mark, per connected worker: bounds the trainer's memory; when reached,
        that worker's sends block.
    initial_version:
        The policy version before the first broadcast (a resumed trainer passes the version it had,
        so workers see versions keep increasing).
    worker_timeout:
        A worker counts as active (for the share of the allowance) this long after its last message.
    control_interval, weights_resend_interval:
        Minimum seconds between two control publications (unless the share changes a lot) and
        between two re-sends of the weights to new subscribers.
    max_messages_per_retrieve:
        ``retrieve_buffer`` returns after this many messages even if more are waiting.
    server_secret_key_file, authorized_keys_dir:
        CURVE security (see :mod:`relayrl.transport.keys`): the trainer's key pair and the directory
        of the workers' public keys it accepts (reread when it changes: delete a file to revoke).
        Required when an address is not loopback, unless ``insecure=True``.
    insecure:
        Allow plaintext on non-loopback addresses (a trusted network only; logged loudly).
    connect, relay_public_key_file:
        ``connect=True``: the two addresses are a :class:`~relayrl.transport.relay.Relay`'s trainer
        side, connected to instead of bound (for a trainer that cannot accept connections). With
        CURVE, pass the relay's public key file and ``server_secret_key_file`` (this trainer's key
        pair, which the relay must authorize); ``authorized_keys_dir`` is then the relay's business.
    """

    def __init__(self, buffer_bind: str = "tcp://127.0.0.1:0", weights_bind: str = "tcp://127.0.0.1:0",
                 *, env_steps_per_update: float | None = None, initial_samples: int = 0,
                 slack_samples: int = 1000, max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
                 max_queued_buffers: int = 1000, initial_version: int = 0, worker_timeout: float = 60.0,
                 control_interval: float = 0.02, weights_resend_interval: float = 0.2,
                 max_messages_per_retrieve: int = 10_000,
                 server_secret_key_file: str | os.PathLike | None = None,
                 authorized_keys_dir: str | os.PathLike | None = None,
                 insecure: bool = False, connect: bool = False,
                 relay_public_key_file: str | os.PathLike | None = None):
        if env_steps_per_update is not None and not env_steps_per_update > 0:
            raise ValueError(f"env_steps_per_update must be > 0 or None, got {env_steps_per_update}")
        if initial_samples < 0 or slack_samples < 0:
            raise ValueError("initial_samples and slack_samples must be >= 0")
        if max_queued_buffers < 1 or max_buffer_bytes < 1:
            raise ValueError("max_queued_buffers and max_buffer_bytes must be >= 1")
        self.env_steps_per_update = env_steps_per_update
        self.initial_samples = int(initial_samples)
        self.slack_samples = int(slack_samples)
        self.max_buffer_bytes = int(max_buffer_bytes)
        self.worker_timeout = float(worker_timeout)
        self.control_interval = float(control_interval)
        self.weights_resend_interval = float(weights_resend_interval)
        self.max_messages_per_retrieve = int(max_messages_per_retrieve)
        self._limits = {"buffer": self.max_buffer_bytes, "hello": DEFAULT_MAX_CONTROL_BYTES}

        self._security: ServerSecurity | ClientSecurity | None = None
        if connect:
            secure = both_or_neither("ZmqTrainerInterface(connect=True)",
                                      server_secret_key_file=server_secret_key_file,
                                      relay_public_key_file=relay_public_key_file)
            if authorized_keys_dir is not None:
                raise ValueError("authorized_keys_dir is for a trainer that binds; with connect=True "
                                 "the relay checks the workers' keys")
        else:
            secure = both_or_neither("ZmqTrainerInterface", server_secret_key_file=server_secret_key_file,
                                      authorized_keys_dir=authorized_keys_dir)
        check_exposure("ZmqTrainerInterface", (buffer_bind, weights_bind), secure, insecure)
        if secure and connect:
            self._security = ClientSecurity(relay_public_key_file, server_secret_key_file)
        elif secure:
            self._security = ServerSecurity(server_secret_key_file, AllowList(authorized_keys_dir))

        ctx = _context()
        self._pull = ctx.socket(zmq.PULL)
        self._xpub = ctx.socket(zmq.XPUB)
        try:
            for socket, endpoint in ((self._pull, buffer_bind), (self._xpub, weights_bind)):
                _prepare(socket, endpoint)
                if self._security is not None:
                    self._security.apply(socket)
            self._pull.setsockopt(zmq.RCVHWM, int(max_queued_buffers))
            self._pull.setsockopt(zmq.MAXMSGSIZE, self.max_buffer_bytes)
            self._xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
            self._xpub.setsockopt(zmq.SNDHWM, 100)
            for socket, endpoint in ((self._pull, buffer_bind), (self._xpub, weights_bind)):
                socket.connect(endpoint) if connect else socket.bind(endpoint)
        except Exception:
            self._pull.close(0)
            self._xpub.close(0)
            if isinstance(self._security, ServerSecurity):
                self._security.close()
            raise
        bound = lambda socket: socket.getsockopt_string(zmq.LAST_ENDPOINT)  # noqa: E731 (port 0 -> real)
        self.buffer_endpoint: str = buffer_bind if connect else bound(self._pull)
        self.weights_endpoint: str = weights_bind if connect else bound(self._xpub)
        self.secure = self._security is not None
        self._poller = zmq.Poller()
        self._poller.register(self._pull, zmq.POLLIN)
        self._poller.register(self._xpub, zmq.POLLIN)

        self.policy_version = int(initial_version)
        self.workers: dict[str, WorkerAccount] = {}
        self.dropped_messages = 0
        self._drop_log = _RateLimitedLog()
        self._signature: tuple | None = None   # (name, dtype, trailing shape) of the first buffer
        self._progress = (0, 0)                # last (total_updates, total_samples) reported
        self._weights: list | None = None      # latest weights message, ready to send
        self._weights_due: float | None = None  # when a coalesced re-send is due
        self._weights_sent_at = -math.inf
        self._control: dict = {}
        self._control_frames: list = []
        self._control_due: float | None = None
        self._control_sent_at = -math.inf
        self._closed = False
        self._set_control(self._control_message(), force=True)

    # --- the interface protocol ------------------------------------------------------------------
    def retrieve_buffer(self) -> Buffer:
        """Everything that arrived since the last call, as one buffer (0 rows if nothing), without
        blocking. Malformed messages are dropped and logged; the rest still count."""
        self._service()
        kept: list[Buffer] = []
        new_session = False
        for _ in range(self.max_messages_per_retrieve):
            try:
                frames = self._pull.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                kind, payload = decode_message(frames, self._limits)
            except CodecError as exc:
                self._drop(frames, exc.sender, str(exc))
                continue
            except Exception as exc:  # never expected; a bad message must not stop training anyway
                self._drop(frames, None, f"unexpected {type(exc).__name__}: {exc}")
                continue
            if kind == "hello":
                self._start_session(*payload)
                new_session = True
            elif self._accept(payload, frames):
                kept.append(payload)
        if new_session:
            self._set_control(self._control_message(), force=True)
        if any(len(b) for b in kept):
            return Buffer.concatenate(kept)  # columns come from the buffers that have rows
        empty = self._empty_buffer()
        empty.episodes = [e for b in kept for e in b.episodes]
        return empty

    def broadcast_model(self, actor: "ActorModule") -> None:
        """Publish ``actor.weights()`` as the next policy version."""
        self.publish_weights(actor.weights())

    def publish_weights(self, weights: dict[str, np.ndarray]) -> int:
        """Publish a weights dictionary as the next policy version; return that version."""
        frames = encode_weights(self.policy_version + 1, weights)
        self.policy_version += 1
        self._weights = [WEIGHTS_TOPIC, *frames]
        self._service()
        self._send_weights()
        return self.policy_version

    def wait_for_data(self, timeout: float) -> bool:
        """Block until a message is waiting on the buffer socket (True) or ``timeout`` seconds
        passed (False), answering subscriptions meanwhile."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            self._service()
            now = time.monotonic()
            wake = min([deadline] + [t for t in (self._weights_due, self._control_due) if t is not None])
            events = dict(self._poller.poll(max(0.0, wake - now) * 1000.0))
            if self._pull in events:
                return True
            if time.monotonic() >= deadline:
                return False

    def report_progress(self, total_updates: int, total_samples: int, memory_len: int = 0) -> None:
        """The trainer's counters after a pull: recompute and publish the workers' allowance."""
        self._progress = (int(total_updates), int(total_samples))
        self._set_control(self._control_message())
        self._service()

    def reload_authorized_keys(self) -> int:
        """Reread the authorized keys directory now (it is also reread by itself within seconds of a
        change); return how many keys are accepted. A revoked key is refused on its next connection;
        a connection already open stays open until it breaks or the trainer restarts."""
        if not isinstance(self._security, ServerSecurity):
            raise RuntimeError("this trainer does not use CURVE (no authorized_keys_dir)")
        self._security.allow_list.refresh(force=True)
        return len(self._security.allow_list.keys)

    def stats(self) -> dict:
        """Counters for statistics rows and logs (per worker: see :class:`WorkerAccount`)."""
        now = time.monotonic()
        workers = {
            wid: {"samples": a.samples, "buffers": a.buffers, "lost_buffers": a.lost,
                  "duplicate_buffers": a.duplicates, "last_policy_version": a.last_policy_version,
                  "policy_lag_mean": a.lag_sum / a.buffers if a.buffers else None,
                  "sessions": a.sessions, "seconds_since_seen": now - a.last_seen}
            for wid, a in self.workers.items()
        }
        return {"policy_version": self.policy_version,
                "samples": sum(a.samples for a in self.workers.values()),
                "buffers": sum(a.buffers for a in self.workers.values()),
                "lost_buffers": sum(a.lost for a in self.workers.values()),
                "duplicate_buffers": sum(a.duplicates for a in self.workers.values()),
                "dropped_messages": self.dropped_messages,
                "active_workers": self._active_workers(now),
                "control": self._control, "workers": workers}

    def close(self) -> None:
        """Close both sockets at once (LINGER 0: unsent weights are dropped). Idempotent."""
        if not self._closed:
            self._closed = True
            self._pull.close(0)
            self._xpub.close(0)
            if isinstance(self._security, ServerSecurity):
                self._security.close()

    def __enter__(self) -> "ZmqTrainerInterface":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- inbound ---------------------------------------------------------------------------------
    def _drop(self, frames: list, sender: str | None, reason: str) -> None:
        self.dropped_messages += 1
        peer = None
        try:
            peer = frames[0].get("Peer-Address")
        except Exception:  # not all transports know the peer address
            pass
        self._drop_log.warning("dropped a message from worker %r (peer %s): %s", sender, peer, reason)

    MAX_WORKER_ACCOUNTS = 10_000  # the least recently seen are forgotten beyond this

    def _account(self, worker_id: str) -> WorkerAccount:
        account = self.workers.get(worker_id)
        if account is None:
            if len(self.workers) >= self.MAX_WORKER_ACCOUNTS:
                oldest = min(self.workers, key=lambda wid: self.workers[wid].last_seen)
                del self.workers[oldest]
            account = self.workers[worker_id] = WorkerAccount()
        account.last_seen = time.monotonic()
        return account

    def _start_session(self, worker_id: str, session: str) -> None:
        account = self._account(worker_id)
        account.sessions += 1
        account.session = session
        account.session_samples = 0
        account.next_seq = None  # the session's first buffer sets it
        log.info("worker %r started session %s", worker_id, session)

    def _accept(self, buffer: Buffer, frames: list) -> bool:
        if len(buffer):
            signature = tuple((name, getattr(buffer, name).dtype.str, getattr(buffer, name).shape[1:])
                              for name in TRANSITION_FIELDS)
            if self._signature is None:
                self._signature = signature
            elif signature != self._signature:
                self._drop(frames, buffer.worker_id,
                           f"buffer columns {signature} differ from the first buffer's {self._signature}")
                return False
        account = self._account(buffer.worker_id)
        if account.next_seq is not None and buffer.seq != account.next_seq:
            if buffer.seq > account.next_seq:
                account.lost += buffer.seq - account.next_seq
            else:
                account.duplicates += 1
        account.next_seq = max(account.next_seq or 0, buffer.seq + 1)
        account.samples += len(buffer)
        account.session_samples += len(buffer)
        account.buffers += 1
        account.last_policy_version = buffer.policy_version
        account.lag_sum += self.policy_version - buffer.policy_version
        return True

    def _empty_buffer(self) -> Buffer:
        if self._signature is None:
            shapes = {"obs": (0, 0), "act": (0, 0), "next_obs": (0, 0)}
            columns = {name: np.zeros(shapes.get(name, (0,)), np.bool_ if name in ("terminated", "truncated")
                                      else np.float32) for name in TRANSITION_FIELDS}
        else:
            columns = {name: np.zeros((0, *trailing), np.dtype(dtype))
                       for name, dtype, trailing in self._signature}
        return Buffer(**columns, episodes=[])

    # --- outbound --------------------------------------------------------------------------------
    def _active(self, now: float) -> dict[str, WorkerAccount]:
        return {wid: a for wid, a in self.workers.items() if now - a.last_seen <= self.worker_timeout}

    def _active_workers(self, now: float) -> int:
        return len(self._active(now))

    def _control_message(self) -> dict:
        """The credit rule of the module docstring. Only active workers are listed; one that went
        quiet longer than worker_timeout (e.g. paused by the limit) finds itself missing, says hello
        again and is counted afresh."""
        if self.env_steps_per_update is None:
            return dict(UNLIMITED)
        total_updates, total_samples = self._progress
        allowance = max(self.initial_samples, total_updates * self.env_steps_per_update) + self.slack_samples
        remaining = max(0, math.ceil(allowance) - total_samples)
        active = self._active(time.monotonic())
        share = math.ceil(remaining / max(1, len(active)))
        return {"allow": {wid: a.session_samples + share for wid, a in active.items()},
                "sessions": {wid: a.session for wid, a in active.items() if a.session},
                "default": share}

    def _set_control(self, message: dict, force: bool = False) -> None:
        """Make ``message`` the current control message; publish now, or within control_interval."""
        if message == self._control and not force:
            return
        urgent = force or self._big_change(self._control, message)
        self._control = message
        self._control_frames = [CONTROL_TOPIC, *encode_control(message)]
        if urgent or time.monotonic() - self._control_sent_at >= self.control_interval:
            self._send_control()
        else:
            self._control_due = self._control_sent_at + self.control_interval

    @staticmethod
    def _big_change(old: dict, new: dict) -> bool:
        """Worth publishing at once: the limit switched on/off, a session started, a share ran out or
        reopened, or the share moved by more than a quarter."""
        before, after = old.get("default"), new["default"]
        if before is None or after is None:
            return before != after
        if set(old.get("sessions", {}).items()) != set(new["sessions"].items()):
            return True
        return (before == 0) != (after == 0) or abs(after - before) > 0.25 * before

    def _send_control(self) -> None:
        self._xpub.send_multipart(self._control_frames, copy=False)
        self._control_sent_at = time.monotonic()
        self._control_due = None

    def _send_weights(self) -> None:
        if self._weights is not None:
            self._xpub.send_multipart(self._weights, copy=False)
            self._weights_sent_at = time.monotonic()
        self._weights_due = None

    def _service(self) -> None:
        """Answer new subscriptions with the latest weights and control; send what is due."""
        if self._closed:
            raise RuntimeError("the ZmqTrainerInterface is closed")
        if isinstance(self._security, ServerSecurity):
            self._security.allow_list.refresh()  # cheap: rereads the directory only if it changed
        while True:
            try:
                event = self._xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if event[:1] != b"\x01":  # an unsubscription
                continue
            topic = event[1:]
            if WEIGHTS_TOPIC.startswith(topic) and self._weights is not None and self._weights_due is None:
                self._weights_due = self._weights_sent_at + self.weights_resend_interval
            if CONTROL_TOPIC.startswith(topic):
                self._control_due = time.monotonic()
        now = time.monotonic()
        if self._weights_due is not None and now >= self._weights_due:
            self._send_weights()
        if self._control_due is not None and now >= self._control_due:
            self._send_control()


class ZmqWorkerClient:
    """A worker's side: send buffers, receive weights and allowances (the connection of
    :class:`relayrl.worker.RolloutWorker`).

    A background thread owns the SUB socket: it decodes every weights and control message, keeps
    only the newest weights (as writable arrays) and the newest control message, so the worker's
    memory stays bounded however long it goes without polling. ``send_buffer`` and the other
    methods are meant to be called from one thread.

    Parameters
    ----------
    buffer_connect, weights_connect:
        The trainer's (or relay's) buffer and weights endpoints.
    worker_id:
        This worker's name in the trainer's accounting (at most 128 characters).
    send_timeout:
        ``send_buffer`` raises ``TimeoutError`` if the buffer could not be queued for this long.
    send_hwm:
        Buffers queued in this process at most (then ``send_buffer`` blocks).
    max_buffer_bytes, max_weights_bytes:
        Size limits: larger buffers are refused locally, larger weights messages dropped.
    server_public_key_file, client_secret_key_file:
        CURVE security (see :mod:`relayrl.transport.keys`): the trainer's (or relay's) public key and
        this worker's key pair. Required when an address is not loopback, unless ``insecure=True``.
    insecure:
        Allow plaintext to non-loopback addresses (a trusted network only; logged loudly).
    """

    HELLO_RETRY_SECONDS = 5.0

    def __init__(self, buffer_connect: str, weights_connect: str, worker_id: str, *,
                 send_timeout: float = 60.0, send_hwm: int = 100,
                 max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
                 max_weights_bytes: int = DEFAULT_MAX_WEIGHTS_BYTES,
                 server_public_key_file: str | os.PathLike | None = None,
                 client_secret_key_file: str | os.PathLike | None = None, insecure: bool = False):
        if not isinstance(worker_id, str) or not 0 < len(worker_id) <= MAX_WORKER_ID_LEN:
            raise ValueError(f"worker_id must be a non-empty str of at most {MAX_WORKER_ID_LEN} "
                             f"characters, got {worker_id!r}")
        self.worker_id = worker_id
        self.buffer_connect, self.weights_connect = buffer_connect, weights_connect
        self.send_timeout = float(send_timeout)
        self.max_buffer_bytes = int(max_buffer_bytes)
        self.max_weights_bytes = int(max_weights_bytes)
        self.samples_sent = 0
        self.buffers_sent = 0
        self.seq = 0

        secure = both_or_neither("ZmqWorkerClient", server_public_key_file=server_public_key_file,
                                  client_secret_key_file=client_secret_key_file)
        check_exposure("ZmqWorkerClient", (buffer_connect, weights_connect), secure, insecure)
        security = ClientSecurity(server_public_key_file, client_secret_key_file) if secure else None
        self.secure = secure

        ctx = _context()
        self._push = ctx.socket(zmq.PUSH)
        self._sub = ctx.socket(zmq.SUB)
        try:
            if security is not None:
                security.apply(self._push)
                security.apply(self._sub)
            for socket in (self._push, self._sub):  # back off when refused or the trainer is away
                socket.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            _prepare(self._push, buffer_connect)
            self._push.setsockopt(zmq.SNDHWM, int(send_hwm))
            self._push.setsockopt(zmq.SNDTIMEO, max(0, int(self.send_timeout * 1000)))
            self._push.connect(buffer_connect)
            _prepare(self._sub, weights_connect)
            self._sub.setsockopt(zmq.RCVHWM, 100)
            self._sub.setsockopt(zmq.MAXMSGSIZE, self.max_weights_bytes)
            self._sub.setsockopt(zmq.SUBSCRIBE, WEIGHTS_TOPIC)
            self._sub.setsockopt(zmq.SUBSCRIBE, CONTROL_TOPIC)
            self._sub.connect(weights_connect)
        except Exception:
            self._push.close(0)
            self._sub.close(0)
            raise

        self._nonce = os.urandom(6).hex()
        self._sessions_started = 0
        self.session = ""
        self._samples_at_hello = 0
        self._hello_sent_at = -math.inf
        self._say_hello()

        self._cond = threading.Condition()
        self._weights: tuple[int, dict[str, np.ndarray]] | None = None  # newest, not yet polled
        self._delivered_version: int | None = None
        self._control: dict | None = None
        self._received = 0       # messages accepted by the receiver thread
        self._acknowledged = 0   # self._received when the caller last looked
        self._drop_log = _RateLimitedLog()
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._receive_loop, name=f"relayrl-sub-{worker_id}",
                                        daemon=True)
        self._thread.start()

    # --- sending ---------------------------------------------------------------------------------
    def send_buffer(self, buffer: Buffer) -> None:
        """Stamp ``buffer`` with this worker's id and the next ``seq``, and queue it for the
        trainer (blocking while the queue is full; ``TimeoutError`` after ``send_timeout``)."""
        self._check_open()
        buffer.worker_id = self.worker_id
        buffer.seq = self.seq
        frames = encode_buffer(buffer)
        size = sum(memoryview(f).nbytes for f in frames)
        if size > self.max_buffer_bytes:
            raise ValueError(f"buffer of {size} bytes exceeds max_buffer_bytes={self.max_buffer_bytes}; "
                             "send smaller buffers (the trainer would drop it)")
        self._maybe_hello_again()
        try:
            self._push.send_multipart(frames)
        except zmq.Again:
            raise TimeoutError(f"{self.worker_id}: no room to send a buffer to {self.buffer_connect} for "
                               f"{self.send_timeout:g} s: the trainer is not running, not reachable, "
                               "refuses this worker's CURVE key, or is not keeping up; the buffer was "
                               "not sent") from None
        self.seq += 1
        self.buffers_sent += 1
        self.samples_sent += len(buffer)

    def _say_hello(self) -> bool:
        self._sessions_started += 1
        session = f"{self._nonce}.{self._sessions_started}"
        try:
            self._push.send_multipart(encode_hello(self.worker_id, session), zmq.NOBLOCK)
        except zmq.Again:
            self._sessions_started -= 1
            return False
        self.session = session
        self._samples_at_hello = self.samples_sent
        self._hello_sent_at = time.monotonic()
        return True

    def _maybe_hello_again(self) -> None:
        """Start a new session if the trainer, though metering, does not know ours (restarted)."""
        control = self._control
        if (control is not None and control["default"] is not None
                and control["sessions"].get(self.worker_id) != self.session
                and time.monotonic() - self._hello_sent_at > self.HELLO_RETRY_SECONDS):
            self._say_hello()

    # --- receiving -------------------------------------------------------------------------------
    def poll_weights(self, timeout: float = 0.0) -> tuple[int, dict[str, np.ndarray]] | None:
        """The newest ``(version, weights)`` received since the last call (waiting up to ``timeout``
        seconds for one), or ``None``. Repeats of the version already returned are skipped."""
        self._check_open()
        with self._cond:
            if self._weights is None and timeout > 0:
                self._cond.wait_for(lambda: self._weights is not None or self._closed, timeout)
            message, self._weights = self._weights, None
            if message is not None:
                self._delivered_version = message[0]
            self._acknowledged = self._received
            return message

    def allowed_samples(self) -> int | None:
        """How many samples in total (on the :attr:`samples_sent` scale) this worker may have sent;
        ``None`` = no limit (or no control message yet: the trainer sends one on subscription)."""
        self._check_open()
        self._maybe_hello_again()
        with self._cond:
            control = self._control
        if control is None or control["default"] is None:
            return None
        if control["sessions"].get(self.worker_id) == self.session and self.worker_id in control["allow"]:
            return self._samples_at_hello + control["allow"][self.worker_id]
        return self._samples_at_hello + control["default"]

    def wait_for_message(self, timeout: float) -> bool:
        """Block until a weights or control message arrives (True; at once if one arrived since
        the last ``poll_weights``/``wait_for_message``) or ``timeout`` seconds pass (False)."""
        self._check_open()
        self._maybe_hello_again()
        with self._cond:
            arrived = self._cond.wait_for(lambda: self._received > self._acknowledged or self._closed,
                                          max(0.0, timeout))
            self._acknowledged = self._received
            return bool(arrived) and not self._closed

    @property
    def policy_version(self) -> int | None:
        """The version of the weights last returned by :meth:`poll_weights`."""
        return self._delivered_version

    def _receive_loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._sub.poll(100):
                    continue
                frames = self._sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                continue
            except zmq.ZMQError as exc:  # the context is being terminated
                log.debug("%s: receiver stops: %s", self.worker_id, exc)
                return
            try:
                self._handle(frames)
            except CodecError as exc:
                self._drop_log.warning("%s: dropped a message from the trainer: %s", self.worker_id, exc)
            except Exception:  # never let the receiver die
                log.exception("%s: unexpected error handling a message from the trainer", self.worker_id)

    def _handle(self, frames: list) -> None:
        topic = frames[0].bytes
        if topic == WEIGHTS_TOPIC:
            version, weights = decode_weights(frames[1:], self.max_weights_bytes)
            with self._cond:
                pending = self._weights[0] if self._weights is not None else self._delivered_version
            if version == pending:
                return  # a re-send of what we have (for some other worker's benefit)
            weights = {name: array.copy() for name, array in weights.items()}  # writable, owned
            with self._cond:
                self._weights = (version, weights)
                self._received += 1
                self._cond.notify_all()
        elif topic == CONTROL_TOPIC:
            control = decode_control(frames[1:])
            with self._cond:
                self._control = control
                self._received += 1
                self._cond.notify_all()
        else:
            raise CodecError(f"unknown topic {topic[:16]!r}")

    # --- lifecycle -------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the ZmqWorkerClient {self.worker_id!r} is closed")

    def close(self, linger: float = 0.0) -> None:
        """Stop the receiver and close the sockets. Buffers not yet handed to the network are
        dropped, unless ``linger`` > 0 seconds are given to send them. Idempotent."""
        if self._closed:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._push.close(int(max(0.0, linger) * 1000))
        if self._thread.is_alive():  # never expected: the loop wakes every 100 ms
            log.warning("%s: receiver thread did not stop; leaving its socket open", self.worker_id)
        else:
            self._sub.close(0)

    def __enter__(self) -> "ZmqWorkerClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
