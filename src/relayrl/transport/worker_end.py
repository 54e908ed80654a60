"""A worker's end of the transport: :class:`ZmqWorkerClient`, the connection a
:class:`~relayrl.worker.RolloutWorker` sends buffers through and receives weights and allowances
from (the socket layout, security rule and delivery guarantee are in :mod:`relayrl.transport.sockets`).

It connects a PUSH socket (buffers, and a "hello" that opens each session) and a SUB socket (weights
and control) to the trainer or to a relay; it never binds, so it works behind NAT. A background
thread owns the SUB socket and keeps only the newest weights and the newest control message. It also
notes when the trainer was last heard from (:meth:`ZmqWorkerClient.seconds_since_trainer_message`;
the trainer re-publishes its control message every few seconds) and whether it announced the end of
the run (:attr:`ZmqWorkerClient.trainer_finished`).
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any

import numpy as np
import zmq

from ..buffer import Buffer
from .codec import (DEFAULT_MAX_BUFFER_BYTES, DEFAULT_MAX_WEIGHTS_BYTES, MAX_WORKER_ID_LEN, CodecError,
                    decode_control, decode_weights, encode_buffer, encode_hello)
from .credits import allowed_samples
from .keys import ClientSecurity, both_or_neither, check_exposure
from .sockets import CONTROL_TOPIC, WEIGHTS_TOPIC, RateLimitedLog, make_socket

__all__ = ["ZmqWorkerClient"]

log = logging.getLogger("relayrl.transport")


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

        backoff = {zmq.RECONNECT_IVL_MAX: 2000}  # back off when refused or the trainer is away
        opened: list[zmq.Socket] = []
        try:
            self._push = make_socket(zmq.PUSH, buffer_connect, security, {
                **backoff, zmq.SNDHWM: int(send_hwm), zmq.SNDTIMEO: max(0, int(self.send_timeout * 1000))})
            opened.append(self._push)
            self._push.connect(buffer_connect)
            self._sub = make_socket(zmq.SUB, weights_connect, security, {
                **backoff, zmq.RCVHWM: 100, zmq.MAXMSGSIZE: self.max_weights_bytes})
            opened.append(self._sub)
            self._sub.setsockopt(zmq.SUBSCRIBE, WEIGHTS_TOPIC)
            self._sub.setsockopt(zmq.SUBSCRIBE, CONTROL_TOPIC)
            self._sub.connect(weights_connect)
        except Exception:
            for socket in opened:
                socket.close(0)
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
        self._heard_at: float | None = None  # monotonic time of the last valid message
        self._acknowledged = 0   # self._received when the caller last looked
        self._drop_log = RateLimitedLog()
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
        return allowed_samples(control, self.worker_id, self.session, self._samples_at_hello)

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
    def trainer_finished(self) -> bool:
        """Whether the trainer announced the end of the run (its control message's ``end``)."""
        control = self._control
        return bool(control is not None and control.get("end"))

    def seconds_since_trainer_message(self) -> float | None:
        """Seconds since the last valid message from the trainer (weights or control, re-sends
        included); None if none came yet."""
        heard = self._heard_at
        return None if heard is None else time.monotonic() - heard

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
            self._heard_at = time.monotonic()
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
            self._heard_at = time.monotonic()
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
