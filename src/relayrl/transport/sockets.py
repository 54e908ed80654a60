"""The ZeroMQ sockets every end of the transport shares: the context, socket preparation, topics,
rate-limited drop logs and connection monitors (used by :mod:`.trainer_end`, :mod:`.worker_end` and
:mod:`.relay`). This page also states the wire's layout, security rule and delivery guarantee.

Sockets
-------
The trainer binds two sockets; workers only dial out (NAT-friendly)::

    worker PUSH  --connect-->  trainer PULL   buffers (and one "hello" per worker session)
    worker SUB   --connect-->  trainer XPUB   weights (topic b"w") and control (topic b"c")

Every message is ``[topic?, header, *array frames]`` in the pickle-free format of
:mod:`relayrl.transport.codec`; the publisher prefixes a topic frame so subscribers can filter.
Anything that fails to decode is dropped and logged with its sender; it never stops the trainer.
A trainer that cannot accept connections dials a :class:`~relayrl.transport.relay.Relay` instead
(``ZmqTrainerInterface(connect=True)``), which both sides reach.

Security
--------
On loopback (127.0.0.0/8, ::1, ipc://) plaintext is allowed. Any other address needs CURVE keys
(:mod:`relayrl.transport.keys`): the trainer's sockets are CURVE servers and a ZAP handler accepts only
the workers whose public keys are in ``authorized_keys_dir`` (reread when it changes; a revoked key
is refused on its next connection). Without keys the trainer and the client refuse to start unless
``insecure=True`` (logged loudly). Whatever the network, nothing received is unpickled or executed:
the codec accepts only plain arrays of allow-listed dtypes and a few typed header fields.

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
* A relay restart: what sat in its queues is lost (at most ``max_queued_buffers`` per worker); both
  sides reconnect by themselves and the trainer re-sends its latest weights.
* Weights and control: publish/subscribe, latest value wins. A message can be dropped (slow or
  disconnected subscriber) but the newest weights and allowance are re-sent whenever a worker
  (re)subscribes, and the next broadcast supersedes anything missed. Workers drain their subscription
  in a background thread and keep only the newest message, so a busy worker never piles up old weights.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import zmq

__all__ = ["WEIGHTS_TOPIC", "CONTROL_TOPIC", "context", "prepare", "make_socket", "bound_endpoint",
           "can_send", "peer_address", "RateLimitedLog", "ConnectionMonitor"]

log = logging.getLogger("relayrl.transport")

WEIGHTS_TOPIC = b"w"
CONTROL_TOPIC = b"c"


def context() -> zmq.Context:
    """The one ZeroMQ context of this process (``zmq.Context.instance()`` is fork-aware)."""
    return zmq.Context.instance()


def prepare(socket: zmq.Socket, endpoint: str) -> None:
    """What every relayrl socket needs before it binds or connects to ``endpoint``: no linger (a
    close never blocks), and IPv6 switched on for an address such as ``tcp://[::1]:5555``."""
    socket.setsockopt(zmq.LINGER, 0)
    if endpoint.startswith("tcp://["):
        socket.setsockopt(zmq.IPV6, 1)


def make_socket(kind: int, endpoint: str, security: Any = None,
                options: Mapping[int, int | bytes] | None = None) -> zmq.Socket:
    """A socket of ``kind`` (``zmq.PULL``, ...), prepared for ``endpoint``, with CURVE applied when
    ``security`` (a :class:`~relayrl.transport.keys.ServerSecurity` or ``ClientSecurity``) is given
    and ``options`` set; neither bound nor connected yet. Closed again if any of this fails."""
    socket = context().socket(kind)
    try:
        prepare(socket, endpoint)
        if security is not None:
            security.apply(socket)
        for option, value in (options or {}).items():
            socket.setsockopt(option, value)
    except Exception:
        socket.close(0)
        raise
    return socket


def bound_endpoint(socket: zmq.Socket) -> str:
    """The address a socket really bound (port 0 becomes the port the system chose)."""
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


def can_send(socket: zmq.Socket) -> bool:
    """Whether a send on ``socket`` would not block now (its high-water mark leaves room)."""
    return bool(socket.getsockopt(zmq.EVENTS) & zmq.POLLOUT)


def peer_address(frames: list) -> str | None:
    """The sender's IP address of a received message (``None`` where the transport cannot tell)."""
    try:
        return frames[0].get("Peer-Address")
    except Exception:  # not all transports know the peer address
        return None


class RateLimitedLog:
    """Log the first ``burst`` events, then one in ``every`` (a flood of bad messages must not
    flood the log too)."""

    def __init__(self, burst: int = 20, every: int = 100, logger: logging.Logger = log):
        self.count, self.burst, self.every = 0, burst, every
        self.logger = logger

    def warning(self, msg: str, *args: Any) -> None:
        self.count += 1
        if self.count <= self.burst or self.count % self.every == 0:
            self.logger.warning(msg + " [%d such messages so far]", *args, self.count)


class ConnectionMonitor:
    """Counts the TCP connections of some sockets from ZeroMQ's socket-monitor events (open =
    accepted or connected minus disconnected; refused = CURVE handshakes the key allow-list
    refused). Create it and call :meth:`poll` in the thread that uses the sockets; the trainer's and
    the relay's ``connection_monitor()`` make one for their sockets."""

    EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
              | zmq.EVENT_HANDSHAKE_FAILED_AUTH)

    def __init__(self, sockets: Mapping[str, zmq.Socket]):
        self._monitors = {name: (s, s.get_monitor_socket(self.EVENTS)) for name, s in sockets.items()}
        self.open = {name: 0 for name in sockets}
        self.refused = 0

    def poll(self) -> None:
        """Take in the events that arrived since the last call (without blocking)."""
        from zmq.utils.monitor import recv_monitor_message
        for name, (_, monitor) in self._monitors.items():
            for _ in range(10_000):
                try:
                    event = recv_monitor_message(monitor, zmq.NOBLOCK)["event"]
                except zmq.Again:
                    break
                if event in (zmq.EVENT_ACCEPTED, zmq.EVENT_CONNECTED):
                    self.open[name] += 1
                elif event == zmq.EVENT_DISCONNECTED:
                    self.open[name] = max(0, self.open[name] - 1)
                elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    self.refused += 1

    def close(self) -> None:
        """Stop monitoring (idempotent; the monitored sockets may be closed already)."""
        for sock, monitor in self._monitors.values():
            try:
                sock.disable_monitor()
            except Exception:  # the socket may be closed already
                pass
            monitor.close(0)
        self._monitors = {}
