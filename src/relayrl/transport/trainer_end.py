"""The trainer's end of the transport: :class:`ZmqTrainerInterface`, the interface protocol of
:mod:`relayrl.interface` over ZeroMQ (the socket layout, security rule and delivery guarantee are in
:mod:`relayrl.transport.sockets`).

It binds a PULL socket (buffers and hellos in) and an XPUB socket (weights and control out), or
connects both to a relay. Buffers are decoded strictly (:mod:`.codec`), checked against the columns of
the first buffer, counted per worker (:mod:`.accounting`) and concatenated; anything malformed is
dropped and logged, never raised.

Late joiners. The XPUB socket sees every subscription (``XPUB_VERBOSE``). When a worker subscribes
(first start, restart or reconnection) the trainer re-publishes its latest weights and latest control
message, so the worker is up to date at once (re-sends of the weights are coalesced to one per
``weights_resend_interval`` seconds, since a publication reaches every subscriber). The trainer
handles subscriptions whenever it calls into the interface (``retrieve_buffer``, ``wait_for_data``,
``broadcast_model``, ``report_progress``), which the training loop does continually.

Rate control. With ``env_steps_per_update`` set, every ``report_progress`` recomputes the workers'
allowance by the :class:`~relayrl.transport.credits.CreditRule` and publishes it (throttled to one
message per ``control_interval`` unless it changed a lot); see :mod:`relayrl.transport.credits`.

Signs of life and the end. The latest control message is re-published at least every
``keepalive_interval`` seconds, so a worker that hears nothing for much longer knows the trainer is
gone or stalled; :meth:`ZmqTrainerInterface.announce_end` (called by ``Trainer.run`` when every
epoch is done) adds ``"end": True`` to it, which makes the workers stop.
"""
from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from ..buffer import TRANSITION_FIELDS, Buffer
from .accounting import WorkerAccount, WorkerLedger
from .codec import (DEFAULT_MAX_BUFFER_BYTES, DEFAULT_MAX_CONTROL_BYTES, CodecError, decode_message,
                    encode_control, encode_weights)
from .credits import CreditRule, is_big_change
from .keys import AllowList, ClientSecurity, ServerSecurity, both_or_neither, check_exposure
from .sockets import (CONTROL_TOPIC, WEIGHTS_TOPIC, ConnectionMonitor, RateLimitedLog, bound_endpoint,
                      make_socket, peer_address)

if TYPE_CHECKING:
    from ..actor import ActorModule

__all__ = ["ZmqTrainerInterface"]


class ZmqTrainerInterface:
    """The trainer's side: implements the interface protocol of :mod:`relayrl.interface`.

    Parameters
    ----------
    buffer_bind, weights_bind:
        ZeroMQ endpoints to bind (``tcp://HOST:PORT``, port 0 = any free port; ``ipc://PATH``).
        :attr:`buffer_endpoint` and :attr:`weights_endpoint` give the bound addresses.
    env_steps_per_update, initial_samples, slack_samples:
        Worker-side rate control (:class:`~relayrl.transport.credits.CreditRule`); ``None`` =
        workers are not metered.
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
    keepalive_interval:
        Maximum seconds between two control publications (a sign of life for the workers).
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
                 slack_samples: int = 1000, samples_on_top_of_initial: bool = False,
                 max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
                 max_queued_buffers: int = 1000, initial_version: int = 0, worker_timeout: float = 60.0,
                 control_interval: float = 0.02, weights_resend_interval: float = 0.2,
                 keepalive_interval: float = 5.0,
                 max_messages_per_retrieve: int = 10_000,
                 server_secret_key_file: str | os.PathLike | None = None,
                 authorized_keys_dir: str | os.PathLike | None = None,
                 insecure: bool = False, connect: bool = False,
                 relay_public_key_file: str | os.PathLike | None = None):
        self.credits = CreditRule(env_steps_per_update, int(initial_samples), int(slack_samples),
                                  bool(samples_on_top_of_initial))
        if max_queued_buffers < 1 or max_buffer_bytes < 1:
            raise ValueError("max_queued_buffers and max_buffer_bytes must be >= 1")
        self.max_buffer_bytes = int(max_buffer_bytes)
        self.control_interval = float(control_interval)
        self.weights_resend_interval = float(weights_resend_interval)
        self.keepalive_interval = float(keepalive_interval)
        self.max_messages_per_retrieve = int(max_messages_per_retrieve)
        self._limits = {"buffer": self.max_buffer_bytes, "hello": DEFAULT_MAX_CONTROL_BYTES}
        self._security = self._make_security(buffer_bind, weights_bind, connect, insecure,
                                             server_secret_key_file, authorized_keys_dir,
                                             relay_public_key_file)
        opened: list[zmq.Socket] = []
        try:
            self._pull = make_socket(zmq.PULL, buffer_bind, self._security,
                                     {zmq.RCVHWM: int(max_queued_buffers), zmq.MAXMSGSIZE: self.max_buffer_bytes})
            opened.append(self._pull)
            self._xpub = make_socket(zmq.XPUB, weights_bind, self._security,
                                     {zmq.XPUB_VERBOSE: 1, zmq.SNDHWM: 100})
            opened.append(self._xpub)
            for socket, endpoint in ((self._pull, buffer_bind), (self._xpub, weights_bind)):
                socket.connect(endpoint) if connect else socket.bind(endpoint)
        except Exception:
            for socket in opened:
                socket.close(0)
            self._close_security()
            raise
        self.buffer_endpoint: str = buffer_bind if connect else bound_endpoint(self._pull)
        self.weights_endpoint: str = weights_bind if connect else bound_endpoint(self._xpub)
        self.secure = self._security is not None
        self._poller = zmq.Poller()
        self._poller.register(self._pull, zmq.POLLIN)
        self._poller.register(self._xpub, zmq.POLLIN)

        self.policy_version = int(initial_version)
        self.ledger = WorkerLedger(worker_timeout)
        self.dropped_messages = 0
        self._drop_log = RateLimitedLog()
        self._signature: tuple | None = None   # (name, dtype, trailing shape) of the first buffer
        self._progress = (0, 0)                # last (total_updates, total_samples) reported
        self._weights: list | None = None      # latest weights message, ready to send
        self._weights_due: float | None = None  # when a coalesced re-send is due
        self._weights_sent_at = -math.inf
        self._control: dict = {}
        self._control_frames: list = []
        self._control_due: float | None = None
        self._control_sent_at = -math.inf
        self._ended = False
        self._closed = False
        self._set_control(self._control_message(), force=True)

    @staticmethod
    def _make_security(buffer_bind, weights_bind, connect, insecure, server_secret_key_file,
                       authorized_keys_dir, relay_public_key_file) -> ServerSecurity | ClientSecurity | None:
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
            return ClientSecurity(relay_public_key_file, server_secret_key_file)
        if secure:
            return ServerSecurity(server_secret_key_file, AllowList(authorized_keys_dir))
        return None

    def _close_security(self) -> None:
        if isinstance(self._security, ServerSecurity):
            self._security.close()

    # --- settings and accounts -------------------------------------------------------------------
    @property
    def env_steps_per_update(self) -> float | None:
        return self.credits.env_steps_per_update

    @property
    def initial_samples(self) -> int:
        return self.credits.initial_samples

    @property
    def slack_samples(self) -> int:
        return self.credits.slack_samples

    @property
    def worker_timeout(self) -> float:
        return self.ledger.worker_timeout

    @property
    def workers(self) -> dict[str, WorkerAccount]:
        """The per-worker accounts (see :class:`~relayrl.transport.accounting.WorkerAccount`)."""
        return self.ledger.accounts

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
                self.ledger.start_session(*payload)
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
            keepalive = self._control_sent_at + self.keepalive_interval
            wake = min([deadline, keepalive] + [t for t in (self._weights_due, self._control_due) if t is not None])
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

    def announce_end(self) -> None:
        """Tell the workers that the run is over: the control message gains ``"end": True``
        (published at once, and to every worker that subscribes until :meth:`close`), and workers
        stop when they read it. Give ZeroMQ a moment to send it before closing (LINGER is 0)."""
        self._ended = True
        self._set_control(self._control_message(), force=True)

    @property
    def ended(self) -> bool:
        """Whether :meth:`announce_end` was called."""
        return self._ended

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
        totals = self.ledger.totals()
        return {"policy_version": self.policy_version, "samples": totals["samples"],
                "buffers": totals["buffers"], "lost_buffers": totals["lost_buffers"],
                "duplicate_buffers": totals["duplicate_buffers"],
                "dropped_messages": self.dropped_messages,
                "active_workers": len(self.ledger.active(now)),
                "control": self._control, "workers": self.ledger.worker_stats(now)}

    def connection_monitor(self) -> ConnectionMonitor:
        """A monitor of this trainer's TCP connections (``buffers`` and ``weights``); poll and close
        it in the thread that uses this interface."""
        return ConnectionMonitor({"buffers": self._pull, "weights": self._xpub})

    def close(self) -> None:
        """Close both sockets at once (LINGER 0: unsent weights are dropped). Idempotent."""
        if not self._closed:
            self._closed = True
            self._pull.close(0)
            self._xpub.close(0)
            self._close_security()

    def __enter__(self) -> "ZmqTrainerInterface":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- inbound ---------------------------------------------------------------------------------
    def _drop(self, frames: list, sender: str | None, reason: str) -> None:
        self.dropped_messages += 1
        self._drop_log.warning("dropped a message from worker %r (peer %s): %s", sender,
                               peer_address(frames), reason)

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
        self.ledger.record(buffer.worker_id, buffer.seq, len(buffer), buffer.policy_version,
                           self.policy_version)
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
    def _control_message(self) -> dict:
        """The credit rule's message. Only active workers are listed; one that went quiet longer
        than worker_timeout (e.g. paused by the limit) finds itself missing, says hello again and is
        counted afresh."""
        active = {wid: (a.session_samples, a.session) for wid, a in self.ledger.active().items()}
        message = self.credits.control_message(*self._progress, active)
        return {**message, "end": True} if self._ended else message

    def _set_control(self, message: dict, force: bool = False) -> None:
        """Make ``message`` the current control message; publish now, or within control_interval."""
        if message == self._control and not force:
            return
        urgent = force or is_big_change(self._control, message)
        self._control = message
        self._control_frames = [CONTROL_TOPIC, *encode_control(message)]
        if urgent or time.monotonic() - self._control_sent_at >= self.control_interval:
            self._send_control()
        else:
            self._control_due = self._control_sent_at + self.control_interval

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
        if ((self._control_due is not None and now >= self._control_due)
                or now - self._control_sent_at >= self.keepalive_interval):
            self._send_control()
