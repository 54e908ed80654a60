"""A stateless relay, for a trainer that cannot accept inbound connections (tmrl's ``Server``).

Workers and the trainer both dial out to the relay, which forwards frames without decoding them::

    workers PUSH --> [PULL  relay  PUSH] <-- trainer PULL     (ZmqTrainerInterface(connect=True))
    workers SUB  --> [XPUB  relay  XSUB] <-- trainer XPUB

Buffers flow worker -> trainer, weights and control messages trainer -> workers, and the workers'
subscriptions flow upstream to the trainer (``XPUB_VERBOSE``), so the trainer still re-sends its
latest weights when a worker joins. The relay never decodes a payload (the trainer does, strictly);
it only bounds frame sizes and queues.

Back-pressure: a buffer is read from the workers only when the trainer side can take it, so a stalled
or absent trainer fills the relay's bounded queue and then blocks the workers; nothing grows without
bound. A relay restart loses what sat in its queues (at most ``max_queued_buffers`` per worker);
both sides reconnect by themselves and the trainer re-sends its latest weights.

Security: with ``secret_key_file`` every socket is a CURVE server. Workers are checked against
``authorized_keys_dir`` and the trainer against ``trainer_keys`` (its public key file(s)): a worker's
key cannot be used to impersonate the trainer and publish weights.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Iterable

import zmq

from .codec import DEFAULT_MAX_BUFFER_BYTES, DEFAULT_MAX_WEIGHTS_BYTES
from .keys import AllowList, ServerSecurity, both_or_neither, check_exposure
from .sockets import ConnectionMonitor, bound_endpoint, can_send, make_socket

__all__ = ["Relay"]


class Relay:
    """Forwards buffers from workers to a trainer and weights from the trainer to workers.

    Parameters
    ----------
    worker_buffer_bind, worker_weights_bind:
        Where workers connect (give these to ``ZmqWorkerClient``).
    trainer_buffer_bind, trainer_weights_bind:
        Where the trainer connects (``ZmqTrainerInterface(..., connect=True)``).
    secret_key_file, authorized_keys_dir, trainer_keys:
        CURVE: the relay's key pair, the directory of accepted worker keys, and the trainer's public
        key file(s). Required for non-loopback addresses unless ``insecure=True``.
    max_buffer_bytes, max_weights_bytes:
        Frames larger than this make ZeroMQ drop the connection that sent them.
    max_queued_buffers:
        High-water mark of the buffer queues.
    """

    def __init__(self, worker_buffer_bind: str = "tcp://127.0.0.1:0",
                 worker_weights_bind: str = "tcp://127.0.0.1:0",
                 trainer_buffer_bind: str = "tcp://127.0.0.1:0",
                 trainer_weights_bind: str = "tcp://127.0.0.1:0", *,
                 secret_key_file: str | os.PathLike | None = None,
                 authorized_keys_dir: str | os.PathLike | None = None,
                 trainer_keys: Iterable[str | os.PathLike] | str | os.PathLike | None = None,
                 insecure: bool = False, max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
                 max_weights_bytes: int = DEFAULT_MAX_WEIGHTS_BYTES, max_queued_buffers: int = 1000):
        binds = (worker_buffer_bind, worker_weights_bind, trainer_buffer_bind, trainer_weights_bind)
        secure = both_or_neither("Relay", secret_key_file=secret_key_file,
                                  authorized_keys_dir=authorized_keys_dir, trainer_keys=trainer_keys)
        check_exposure("Relay", binds, secure, insecure)
        if isinstance(trainer_keys, (str, os.PathLike)):
            trainer_keys = [trainer_keys]
        self._workers_security = self._trainer_security = None
        if secure:
            self._workers_security = ServerSecurity(secret_key_file, AllowList(authorized_keys_dir))
            self._trainer_security = ServerSecurity(secret_key_file, AllowList(key_files=trainer_keys))

        self._from_workers = self._to_workers = self._to_trainer = self._from_trainer = None
        try:
            self._from_workers = make_socket(zmq.PULL, worker_buffer_bind, self._workers_security, {
                zmq.RCVHWM: int(max_queued_buffers), zmq.MAXMSGSIZE: int(max_buffer_bytes)})
            self._to_workers = make_socket(zmq.XPUB, worker_weights_bind, self._workers_security, {
                zmq.XPUB_VERBOSE: 1, zmq.SNDHWM: 100})
            self._to_trainer = make_socket(zmq.PUSH, trainer_buffer_bind, self._trainer_security, {
                zmq.SNDHWM: int(max_queued_buffers)})
            self._from_trainer = make_socket(zmq.XSUB, trainer_weights_bind, self._trainer_security, {
                zmq.MAXMSGSIZE: int(max_weights_bytes)})
            for socket, endpoint in zip(self._sockets(), binds):
                socket.bind(endpoint)
        except Exception:
            self._close_sockets()
            raise
        self.worker_buffer_endpoint = bound_endpoint(self._from_workers)
        self.worker_weights_endpoint = bound_endpoint(self._to_workers)
        self.trainer_buffer_endpoint = bound_endpoint(self._to_trainer)
        self.trainer_weights_endpoint = bound_endpoint(self._from_trainer)
        self.buffers_forwarded = 0
        self.publications_forwarded = 0
        self.subscriptions_forwarded = 0
        self._held: list | None = None   # a buffer read but not yet accepted by the trainer side
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()    # the sockets belong to whichever thread runs the loop
        self._closed = False

    # --- running ---------------------------------------------------------------------------------
    def run(self, should_stop: Callable[[], bool] = lambda: False, duration: float | None = None) -> None:
        """Forward until ``should_stop()`` is true, ``duration`` seconds passed, or :meth:`stop`."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("the relay is already running")
        try:
            deadline = None if duration is None else time.monotonic() + duration
            while not (self._stop.is_set() or should_stop() or self._closed
                       or (deadline is not None and time.monotonic() >= deadline)):
                self._step(timeout_ms=100)
        finally:
            self._lock.release()

    def start(self) -> "Relay":
        """Run the relay in a background thread (stop it with :meth:`close`)."""
        self._thread = threading.Thread(target=self.run, name="relayrl-relay", daemon=True)
        self._thread.start()
        return self

    def _step(self, timeout_ms: int) -> None:
        poller = zmq.Poller()
        trainer_ready = can_send(self._to_trainer)
        if trainer_ready:
            poller.register(self._from_workers, zmq.POLLIN)
        else:  # wait for room on the trainer side; buffers wait in the bounded queues meanwhile
            poller.register(self._to_trainer, zmq.POLLOUT)
        poller.register(self._from_trainer, zmq.POLLIN)
        poller.register(self._to_workers, zmq.POLLIN)
        events = dict(poller.poll(timeout_ms))
        if self._to_workers in events:  # subscriptions, upstream
            for _ in range(1000):
                try:
                    self._from_trainer.send(self._to_workers.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                self.subscriptions_forwarded += 1
        if self._from_trainer in events:  # weights and control, downstream
            for _ in range(1000):
                try:
                    frames = self._from_trainer.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._to_workers.send_multipart(frames, copy=False)  # XPUB drops, never blocks
                self.publications_forwarded += 1
        for _ in range(1000):  # buffers, upstream, only while the trainer side takes them
            if self._held is None:
                try:
                    self._held = self._from_workers.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
            try:
                self._to_trainer.send_multipart(self._held, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self._held = None
            self.buffers_forwarded += 1

    # --- lifecycle -------------------------------------------------------------------------------
    def stats(self) -> dict:
        return {"buffers_forwarded": self.buffers_forwarded,
                "publications_forwarded": self.publications_forwarded,
                "subscriptions_forwarded": self.subscriptions_forwarded}

    def connection_monitor(self) -> ConnectionMonitor:
        """A monitor of the relay's TCP connections (``worker buffers``, ``worker weights``,
        ``trainer buffers``, ``trainer weights``); poll and close it in the thread that runs the relay."""
        return ConnectionMonitor({"worker buffers": self._from_workers, "worker weights": self._to_workers,
                                  "trainer buffers": self._to_trainer, "trainer weights": self._from_trainer})

    def _sockets(self) -> tuple:
        return (self._from_workers, self._to_workers, self._to_trainer, self._from_trainer)

    def _close_sockets(self) -> None:
        for socket in self._sockets():
            if socket is not None:
                socket.close(0)
        for security in (self._workers_security, self._trainer_security):
            if security is not None:
                security.close()

    def close(self) -> None:
        """Stop forwarding and close every socket (queued messages are dropped). Idempotent."""
        if self._closed:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with self._lock:  # wait for a foreground run() to leave its loop
            self._closed = True
            self._close_sockets()

    def __enter__(self) -> "Relay":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

