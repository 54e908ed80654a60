"""The distributed roles behind ``relayrl keys``, ``relayrl trainer``, ``relayrl worker`` and
``relayrl relay`` (see ``docs/distributed.md`` for the recipes).

* ``keys``: the CURVE key layout of :func:`relayrl.transport.keys.create_keys`.
* ``trainer``: the :class:`~relayrl.trainer.Trainer` of ``relayrl train`` (same configuration,
  checkpoints and resume) with no local workers: it binds the transport's two sockets (or connects to
  a relay) and trains on whatever remote workers send. Every few seconds it prints who is connected,
  samples per second, the policy version and each worker's policy lag; its statistics rows carry the
  transport's accounting (:data:`TRANSPORT_STATS_KEYS`).
* ``worker``: one :class:`~relayrl.worker.RolloutWorker` dialling out to a trainer or a relay; it prints
  its samples per second and the policy version it runs. Ctrl+C (or SIGTERM) stops it cleanly.
* ``relay``: a :class:`~relayrl.transport.relay.Relay`, for a trainer that cannot accept connections;
  it prints its connections and what it forwarded (it never decodes a payload).

Every user mistake that can be checked before starting (an address that is not ``tcp://HOST:PORT``,
a missing key file, plaintext on a public interface) raises :class:`RoleError`: one line, which the
command line prints without a traceback (exit code 2).
"""
from __future__ import annotations

import logging
import math
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .local import LocalWorkersInterface, terminate_as_interrupt, threading_is_main
from .trainer import Trainer

if TYPE_CHECKING:
    import pandas as pd

    from .config import RunConfig
    from .transport.zmq_transport import ZmqTrainerInterface

log = logging.getLogger("relayrl")

DEFAULT_BUFFER_PORT = 5555          # trainer (or relay, worker side): buffers in
DEFAULT_WEIGHTS_PORT = 5556         # trainer (or relay, worker side): weights out
DEFAULT_RELAY_TRAINER_BUFFER_PORT = 5557   # relay, trainer side: buffers out to the trainer
DEFAULT_RELAY_TRAINER_WEIGHTS_PORT = 5558  # relay, trainer side: weights in from the trainer
DEFAULT_STATUS_INTERVAL = 5.0

HOW_TO_MAKE_KEYS = ("create keys with 'relayrl keys KEYS_DIR --workers w0 w1' and pass --keys KEYS_DIR "
                    "(or --insecure on a network you trust completely)")


class RoleError(ValueError):
    """A mistake in a role's command line, explained in one line (the CLI prints it, exit code 2)."""


# --- addresses ------------------------------------------------------------------------------------------
_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.\-]*[A-Za-z0-9_])?$")


def _valid_host(host: str, wildcard: bool) -> bool:
    if wildcard and host == "*":
        return True
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        import ipaddress
        try:
            return ipaddress.ip_address(host).version == 6
        except ValueError:
            return False
    return bool(_HOSTNAME.match(host)) and len(host) <= 253


def parse_endpoint(text: str, what: str, bind: bool = True) -> str:
    """Check a ZeroMQ endpoint given on the command line: ``tcp://HOST:PORT`` (``[::1]`` for IPv6;
    ``*`` or port 0 only to bind) or ``ipc://PATH``."""
    scheme, sep, rest = text.partition("://")
    if sep and scheme == "ipc" and rest:
        return text
    if sep and scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if colon and port.isdigit() and _valid_host(host, wildcard=bind):
            number = int(port)
            if (0 if bind else 1) <= number <= 65535:
                return text
    form = "tcp://HOST:PORT or ipc://PATH" if bind else "tcp://HOST:PORT (port 1-65535)"
    raise RoleError(f"{what}: {text!r} is not an address of the form {form}, e.g. tcp://0.0.0.0:5555")


def tcp_endpoint(host: str, port: int) -> str:
    """``tcp://host:port``, with brackets around an IPv6 address."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def parse_host(text: str, what: str, bind: bool = False) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT``, ``[IPv6]``, ``[IPv6]:PORT`` or a bare IPv6 address; a ``tcp://`` prefix
    is tolerated. Returns ``(host, port or None)``."""
    original = text
    if text.startswith("tcp://"):
        text = text[len("tcp://"):]
    port: int | None = None
    if text.startswith("["):
        host, bracket, tail = text.partition("]")
        host += bracket
        if tail:
            if not (tail.startswith(":") and tail[1:].isdigit()):
                raise RoleError(f"{what}: {original!r} is not HOST or HOST:PORT")
            port = int(tail[1:])
    elif text.count(":") == 1:
        host, _, tail = text.partition(":")
        if not tail.isdigit():
            raise RoleError(f"{what}: {original!r} is not HOST or HOST:PORT")
        port = int(tail)
    elif text.count(":") > 1:  # a bare IPv6 address
        host = f"[{text}]"
    else:
        host = text
    if not host or not _valid_host(host, wildcard=bind):
        raise RoleError(f"{what}: {original!r} is not a host name or IP address")
    if port is not None and not 1 <= port <= 65535:
        raise RoleError(f"{what}: port {port} is not in 1-65535")
    return host, port


def _check_port(port: int, what: str) -> int:
    if not 1 <= port <= 65535:
        raise RoleError(f"{what}: port {port} is not in 1-65535")
    return port


def _exposed(endpoints) -> list[str]:
    from .transport.keys import is_loopback
    return [e for e in endpoints if not is_loopback(e)]


def _check_security(role: str, endpoints: list[str], keys: bool, insecure: bool) -> None:
    """Plaintext on an address that leaves the machine needs ``--insecure``; keys and ``--insecure``
    together make no sense."""
    if keys and insecure:
        raise RoleError(f"{role}: --keys and --insecure contradict each other; drop --insecure")
    exposed = _exposed(endpoints)
    if exposed and not keys and not insecure:
        verb = "listen on" if role in ("trainer", "relay") else "connect to"
        raise RoleError(f"{role}: refusing to {verb} {', '.join(exposed)} without CURVE keys: anyone who "
                        f"can reach it could inject data or read the policy; {HOW_TO_MAKE_KEYS}")


def _key_file(path: Path, what: str, hint: str = "") -> str:
    if not path.is_file():
        raise RoleError(f"missing {what} {path}: create the keys with 'relayrl keys DIR --workers NAME ...'"
                        f"{hint}")
    return str(path)


def _key_dir(path: Path, what: str) -> str:
    if not path.is_dir():
        raise RoleError(f"missing {what} {path}: create the keys with 'relayrl keys DIR --workers NAME ...'")
    return str(path)


def _zmq_error(exc: Exception, action: str, endpoints) -> RoleError:
    reason = getattr(exc, "strerror", None) or str(exc)
    hint = ""
    if "in use" in reason:
        hint = " (another trainer or relay is running there: stop it or choose other ports)"
    return RoleError(f"cannot {action} {' / '.join(endpoints)}: {reason}{hint}")


# --- printing that does not tear a progress bar ----------------------------------------------------------
def say(text: str) -> None:
    """Print a status line on stdout (above any progress bar) and flush it."""
    try:
        from tqdm import tqdm
        tqdm.write(text, file=sys.stdout)
    except ImportError:  # pragma: no cover
        print(text)
    sys.stdout.flush()


# --- connections, seen through ZeroMQ socket monitors ----------------------------------------------------
class ConnectionMonitor:
    """Counts the TCP connections of some sockets from ZeroMQ's socket-monitor events (open =
    accepted or connected minus disconnected; refused = CURVE handshakes the key allow-list
    refused). Create it and call :meth:`poll` in the thread that uses the sockets."""

    def __init__(self, sockets: dict[str, Any]):
        import zmq
        events = (zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
                  | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        self._zmq = zmq
        self._monitors = {name: (s, s.get_monitor_socket(events)) for name, s in sockets.items()}
        self.open = {name: 0 for name in sockets}
        self.refused = 0

    def poll(self) -> None:
        from zmq.utils.monitor import recv_monitor_message
        zmq = self._zmq
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
        for sock, monitor in self._monitors.values():
            try:
                sock.disable_monitor()
            except Exception:  # the socket may be closed already
                pass
            monitor.close(0)
        self._monitors = {}


# --- the trainer's accounting in the statistics rows -----------------------------------------------------
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
    """Computes :data:`TRANSPORT_STATS_KEYS` from a :class:`ZmqTrainerInterface` (round by round)."""

    def __init__(self, transport: "ZmqTrainerInterface"):
        self.transport = transport
        self._buffers, self._lag_sum = self._totals()

    def _totals(self) -> tuple[int, int]:
        accounts = list(self.transport.workers.values())
        return sum(a.buffers for a in accounts), sum(a.lag_sum for a in accounts)

    def row_stats(self) -> dict[str, float]:
        stats = self.transport.stats()
        buffers, lag_sum = self._totals()
        new_buffers = buffers - self._buffers
        lag = (lag_sum - self._lag_sum) / new_buffers if new_buffers > 0 else float("nan")
        self._buffers, self._lag_sum = buffers, lag_sum
        return {"connected_workers": stats["active_workers"], "lost_buffers": stats["lost_buffers"],
                "duplicate_buffers": stats["duplicate_buffers"],
                "dropped_messages": stats["dropped_messages"], "policy_lag_mean": lag,
                "policy_version": stats["policy_version"]}


# --- trainer ---------------------------------------------------------------------------------------------
def format_trainer_status(stats: dict, samples_per_second: float, per_worker_rate: dict[str, float],
                          connections: ConnectionMonitor | None = None, max_workers_listed: int = 20) -> str:
    """The trainer's status: one summary line, then one line per worker (most recently seen first)."""
    head = (f"trainer: policy version {stats['policy_version']} | {stats['active_workers']} workers active"
            f" | {stats['samples']} samples ({samples_per_second:.1f}/s) | lost {stats['lost_buffers']}"
            f" duplicate {stats['duplicate_buffers']} dropped {stats['dropped_messages']} buffers")
    if connections is not None:
        head += (f" | connections: buffers {connections.open.get('buffers', 0)}, weights "
                 f"{connections.open.get('weights', 0)}, refused {connections.refused}")
    lines = [head]
    workers = sorted(stats["workers"].items(), key=lambda item: item[1]["seconds_since_seen"])
    for wid, w in workers[:max_workers_listed]:
        version = w["last_policy_version"]
        lag = "-" if version < 0 else str(stats["policy_version"] - version)
        mean = w["policy_lag_mean"]
        lines.append(f"  worker {wid}: {w['samples']} samples ({per_worker_rate.get(wid, 0.0):.1f}/s), "
                     f"policy version {version if version >= 0 else '-'} (lag {lag}, mean "
                     f"{'-' if mean is None else f'{mean:.2f}'}), last seen "
                     f"{w['seconds_since_seen']:.1f} s ago, session {w['sessions']}")
    if len(workers) > max_workers_listed:
        lines.append(f"  ... and {len(workers) - max_workers_listed} more workers")
    return "\n".join(lines)


class RemoteWorkersInterface(LocalWorkersInterface):
    """The trainer's interface when the workers are remote: the transport (no local processes to
    watch) plus a status report at most every ``status_interval`` seconds."""

    def __init__(self, transport: "ZmqTrainerInterface", status_interval: float = DEFAULT_STATUS_INTERVAL,
                 connections: ConnectionMonitor | None = None, printer: Callable[[str], None] = say):
        super().__init__(transport, [])
        self.status_interval = float(status_interval)
        self.connections = connections
        self.printer = printer
        self._last_time = time.monotonic()
        self._last_samples = 0
        self._last_per_worker: dict[str, int] = {}

    def retrieve_buffer(self):
        buffer = super().retrieve_buffer()
        self.maybe_report()
        return buffer

    def wait_for_data(self, timeout: float) -> bool:
        arrived = super().wait_for_data(timeout)
        self.maybe_report()
        return arrived

    def maybe_report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_time < self.status_interval:
            return
        if self.connections is not None:
            self.connections.poll()
        stats = self.transport.stats()
        elapsed = max(now - self._last_time, 1e-9)
        rate = (stats["samples"] - self._last_samples) / elapsed
        per_worker = {wid: (w["samples"] - self._last_per_worker.get(wid, 0)) / elapsed
                      for wid, w in stats["workers"].items()}
        self._last_time, self._last_samples = now, stats["samples"]
        self._last_per_worker = {wid: w["samples"] for wid, w in stats["workers"].items()}
        self.printer(format_trainer_status(stats, rate, per_worker, self.connections))


@dataclass
class TrainerPlan:
    """Where a ``relayrl trainer`` listens (or which relay it joins) and with which keys."""

    buffer_endpoint: str
    weights_endpoint: str
    connect: bool = False
    security: dict = field(default_factory=dict)
    insecure: bool = False


def plan_trainer(args) -> TrainerPlan:
    """Validate the trainer's addresses and keys (before anything heavy is built)."""
    if args.connect_relay:
        if args.bind_buffers or args.bind_weights:
            raise RoleError("trainer: --connect-relay and --bind-buffers/--bind-weights exclude each other")
        host, port = parse_host(args.connect_relay, "--connect-relay")
        buffer_port = _check_port(args.relay_buffer_port or port or DEFAULT_RELAY_TRAINER_BUFFER_PORT,
                                  "--relay-buffer-port")
        weights_port = _check_port(args.relay_weights_port or buffer_port + 1, "--relay-weights-port")
        buffers, weights = tcp_endpoint(host, buffer_port), tcp_endpoint(host, weights_port)
    else:
        buffers = parse_endpoint(args.bind_buffers or tcp_endpoint("127.0.0.1", DEFAULT_BUFFER_PORT),
                                 "--bind-buffers")
        weights = parse_endpoint(args.bind_weights or tcp_endpoint("127.0.0.1", DEFAULT_WEIGHTS_PORT),
                                 "--bind-weights")
        if buffers == weights and not buffers.endswith(":0"):
            raise RoleError("trainer: --bind-buffers and --bind-weights must be different addresses")
    _check_security("trainer", [buffers, weights], bool(args.keys), args.insecure)
    security: dict = {}
    if args.keys:
        keys = Path(args.keys)
        security["server_secret_key_file"] = _key_file(keys / "trainer.key_secret", "trainer key pair")
        if args.connect_relay:
            security["relay_public_key_file"] = _key_file(
                keys / "relay.key", "relay public key", " --relay (and copy relay.key to the trainer)")
        else:
            security["authorized_keys_dir"] = _key_dir(keys / "authorized_workers",
                                                       "authorized workers directory")
    return TrainerPlan(buffers, weights, bool(args.connect_relay), security, args.insecure)


def run_trainer(config: "RunConfig", plan: TrainerPlan, *, progress: bool = True, print_tables: bool = True,
                status_interval: float = DEFAULT_STATUS_INTERVAL) -> list:
    """Train ``config`` on remote workers through ``plan``'s transport; return the rows. Ctrl+C or
    SIGTERM saves a checkpoint and raises ``KeyboardInterrupt``."""
    import zmq

    from .transport.zmq_transport import ZmqTrainerInterface

    trainer = Trainer(config, progress=progress, print_tables=print_tables)
    training = trainer.training
    if trainer.resumed_from is not None:
        log.warning("resuming %s from epoch %d", config.run_dir, trainer.resumed_from)
    if trainer.done:
        say(f"trainer: {config.run_dir} already holds {training.epoch} finished epochs; raise --epochs "
            "to train further")
        return []
    # a resumed trainer continues the version numbers from its update count (one broadcast per
    # update_model_interval updates, plus one at the start), so workers see them keep increasing
    initial_version = (1 + training.total_updates // training.update_model_interval
                       if trainer.resumed_from is not None else 0)
    try:
        transport = ZmqTrainerInterface(
            plan.buffer_endpoint, plan.weights_endpoint,
            env_steps_per_update=config.workers.env_steps_per_update,
            initial_samples=max(training.start_training, training.batch_size),
            slack_samples=config.workers.slack_samples, initial_version=initial_version,
            insecure=plan.insecure, connect=plan.connect, **plan.security)
    except zmq.ZMQError as exc:
        raise _zmq_error(exc, "connect to" if plan.connect else "listen on",
                         (plan.buffer_endpoint, plan.weights_endpoint)) from None
    connections = None
    previous = signal.getsignal(signal.SIGTERM)
    try:
        connections = ConnectionMonitor({"buffers": transport._pull, "weights": transport._xpub})
        trainer.row_extras = TransportAccounting(transport).row_stats
        if plan.connect:
            where = f"joined the relay at {transport.buffer_endpoint} and {transport.weights_endpoint}"
        else:
            where = (f"workers connect to {transport.buffer_endpoint} (buffers) and "
                     f"{transport.weights_endpoint} (weights)")
        curve = "CURVE on" if transport.secure else "plaintext (no keys)"
        rate = (f"{config.workers.env_steps_per_update:g} env steps per update" if
                config.workers.env_steps_per_update is not None else "no rate limit")
        say(f"trainer: {where}; {curve}; {rate}; run directory {config.run_dir}")
        if threading_is_main():
            signal.signal(signal.SIGTERM, terminate_as_interrupt)
        interface = RemoteWorkersInterface(transport, status_interval, connections)
        try:
            rows = trainer.run(interface)
            time.sleep(0.2)  # let ZeroMQ hand the final weights to the workers before closing (LINGER 0)
        finally:
            interface.maybe_report(force=True)
        return rows
    finally:
        if threading_is_main():
            signal.signal(signal.SIGTERM, previous)
        if connections is not None:
            connections.close()
        transport.close()


# --- worker ----------------------------------------------------------------------------------------------
@dataclass
class WorkerPlan:
    buffer_endpoint: str
    weights_endpoint: str
    worker_id: str
    security: dict = field(default_factory=dict)
    insecure: bool = False


def plan_worker(args) -> WorkerPlan:
    """Validate a worker's addresses, name and keys."""
    host, port = parse_host(args.connect, "--connect")
    buffer_port = _check_port(args.buffer_port or port or DEFAULT_BUFFER_PORT, "--buffer-port")
    weights_port = _check_port(args.weights_port or buffer_port + 1, "--weights-port")
    if buffer_port == weights_port:
        raise RoleError("worker: --buffer-port and --weights-port must differ")
    buffers, weights = tcp_endpoint(host, buffer_port), tcp_endpoint(host, weights_port)
    from .transport.codec import MAX_WORKER_ID_LEN
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    if not 0 < len(name) <= MAX_WORKER_ID_LEN:
        raise RoleError(f"worker: --name must have 1 to {MAX_WORKER_ID_LEN} characters")
    keyed = bool(args.keys or args.key or args.server_key)
    _check_security("worker", [buffers, weights], keyed, args.insecure)
    security: dict = {}
    if keyed:
        keys = Path(args.keys) if args.keys else None
        if args.key:
            secret = Path(args.key)
        elif keys is not None and args.name:
            secret = keys / "workers" / f"{args.name}.key_secret"
        else:
            raise RoleError("worker: with --keys, give --name NAME (the key pair is KEYS_DIR/workers/"
                            "NAME.key_secret) or --key FILE")
        if args.server_key:
            server = Path(args.server_key)
        elif keys is not None:
            server = keys / ("relay.key" if args.via_relay else "trainer.key")
        else:
            raise RoleError("worker: with --key, give --keys KEYS_DIR or --server-key FILE (the trainer's "
                            "or relay's public key)")
        other = "trainer.key (drop --via-relay)" if args.via_relay else "relay.key (add --via-relay)"
        hint = f"; if this worker connects to a {'trainer' if args.via_relay else 'relay'}, use {other}"
        security = {"server_public_key_file": _key_file(server, "server public key", hint),
                    "client_secret_key_file": _key_file(secret, "worker key pair")}
    return WorkerPlan(buffers, weights, name, security, args.insecure)


class _Stopper:
    """Ctrl+C / SIGTERM set a flag the worker checks every step; a second Ctrl+C quits at once."""

    def __init__(self):
        self.stopping = False
        self._previous: dict = {}

    def install(self) -> None:
        if threading_is_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.stopping:
            raise KeyboardInterrupt
        self.stopping = True  # no printing here: a signal handler must not reenter a stdout write


class PatientConnection:
    """A worker's connection that keeps trying while the trainer is away: a send that times out (the
    queue toward an absent, restarting or stalled trainer is full) is retried, with a notice, until it
    goes through or the worker is told to stop (then the buffer is dropped)."""

    def __init__(self, client, should_stop: Callable[[], bool], printer: Callable[[str], None] = say,
                 notice_interval: float = 10.0):
        self.client = client
        self.should_stop = should_stop
        self.printer = printer
        self.notice_interval = notice_interval

    def send_buffer(self, buffer) -> None:
        waited_since = last_notice = time.monotonic()
        while True:
            try:
                self.client.send_buffer(buffer)
                return
            except TimeoutError:
                if self.should_stop():
                    return
                now = time.monotonic()
                if now - last_notice >= self.notice_interval:
                    last_notice = now
                    self.printer(f"worker {self.client.worker_id}: the trainer has taken no buffer for "
                                 f"{now - waited_since:.0f} s (not running, restarting, or refusing this "
                                 "worker's key?); still trying")

    def __getattr__(self, name: str):  # poll_weights, allowed_samples, wait_for_message, ...
        return getattr(self.client, name)


def _worker_status(name: str, worker, client, rate: float) -> str:
    allowed = client.allowed_samples()
    paused = allowed is not None and worker.samples_sent + len(worker.builder) >= allowed
    version = worker.policy_version if worker.policy_version >= 0 else "-"
    return (f"worker {name}: policy version {version} | {worker.samples_sent} samples sent ({rate:.1f}/s) "
            f"| {worker.train_episodes_done} episodes{' | paused by the rate limit' if paused else ''}")


def run_worker(config: "RunConfig", plan: WorkerPlan, *, seed: int | None = None,
               status_interval: float = DEFAULT_STATUS_INTERVAL, send_timeout: float = 1.0,
               should_stop: Callable[[], bool] = lambda: False) -> int:
    """Run one rollout worker until Ctrl+C, SIGTERM or ``should_stop()``; return the samples sent.
    A trainer that goes away is waited for (a blocked send is retried every ``send_timeout`` seconds,
    which also bounds how long a stop request can wait)."""
    import torch
    import zmq

    from .trainer import actor_factory, validate_env
    from .transport.zmq_transport import ZmqWorkerClient
    from .worker import RolloutWorker

    validate_env(config)  # the trainer's checks: a clear error for ids and spaces SAC cannot use
    torch.set_num_threads(1)
    cfg = config.workers
    try:
        client = ZmqWorkerClient(plan.buffer_endpoint, plan.weights_endpoint, plan.worker_id,
                                 send_timeout=send_timeout, insecure=plan.insecure, **plan.security)
    except zmq.ZMQError as exc:
        raise _zmq_error(exc, "connect to", (plan.buffer_endpoint, plan.weights_endpoint)) from None
    stopper = _Stopper()
    name = plan.worker_id
    worker = None
    try:
        stop = lambda: stopper.stopping or should_stop()  # noqa: E731
        worker = RolloutWorker(config.env, actor_factory(config), PatientConnection(client, stop),
                               worker_id=name,
                               max_samples_per_episode=cfg.max_samples_per_episode,
                               test_episode_interval=cfg.test_episode_interval,
                               buffer_steps=cfg.buffer_steps, pause_mid_episode=cfg.pause_mid_episode,
                               seed=seed)
        stopper.install()
        curve = "CURVE on" if client.secure else "plaintext"
        say(f"worker {name}: {config.env}, connecting to {plan.buffer_endpoint} (buffers) and "
            f"{plan.weights_endpoint} (weights), {curve}; waiting for the trainer's weights")
        started = last_notice = time.monotonic()
        while worker.policy_version < 0 and not stop():
            try:
                worker.update_weights(0.5)
            except ValueError as exc:
                raise RoleError(f"worker {name}: the trainer's weights do not fit this worker's actor ({exc});"
                                " start the worker with the trainer's --config and --env") from None
            if worker.policy_version < 0 and time.monotonic() - last_notice > 30.0:
                last_notice = time.monotonic()
                say(f"worker {name}: no weights after {last_notice - started:.0f} s: is the trainer (or "
                    "relay) running and reachable, and is this worker's key in its authorized_workers?")
        if worker.policy_version >= 0:
            say(f"worker {name}: first weights received, policy version {worker.policy_version}")
        last = {"time": time.monotonic(), "samples": 0}

        def tick() -> bool:
            now = time.monotonic()
            if now - last["time"] >= status_interval:
                rate = (worker.samples_sent - last["samples"]) / (now - last["time"])
                last.update(time=now, samples=worker.samples_sent)
                say(_worker_status(name, worker, client, rate))
            return stop()

        try:
            worker.run(should_stop=tick)
        except ValueError as exc:
            if "actor weight" not in str(exc):
                raise
            raise RoleError(f"worker {name}: the trainer's weights do not fit this worker's actor ({exc}); "
                            "start the worker with the trainer's --config and --env") from None
        say(f"worker {name}: stopped; {worker.samples_sent} samples sent, {worker.train_episodes_done} "
            f"episodes, policy version {worker.policy_version}")
        return worker.samples_sent
    finally:
        stopper.uninstall()
        if worker is not None:
            worker.close()
        client.close(linger=1.0)  # a second to hand the last buffers to the network


# --- relay -----------------------------------------------------------------------------------------------
@dataclass
class RelayPlan:
    worker_buffer: str
    worker_weights: str
    trainer_buffer: str
    trainer_weights: str
    security: dict = field(default_factory=dict)
    insecure: bool = False


def plan_relay(args) -> RelayPlan:
    host, _ = parse_host(args.bind, "--bind", bind=True)
    ports = [_check_port(p, flag) for p, flag in ((args.worker_buffer_port, "--worker-buffer-port"),
                                                  (args.worker_weights_port, "--worker-weights-port"),
                                                  (args.trainer_buffer_port, "--trainer-buffer-port"),
                                                  (args.trainer_weights_port, "--trainer-weights-port"))]
    if len(set(ports)) != 4:
        raise RoleError(f"relay: the four ports must differ, got {ports}")
    endpoints = [tcp_endpoint(host, p) for p in ports]
    _check_security("relay", endpoints, bool(args.keys), args.insecure)
    security: dict = {}
    if args.keys:
        keys = Path(args.keys)
        security = {"secret_key_file": _key_file(keys / "relay.key_secret", "relay key pair",
                                                 " --relay"),
                    "authorized_keys_dir": _key_dir(keys / "authorized_workers", "authorized workers directory"),
                    "trainer_keys": _key_file(keys / "trainer.key", "trainer public key")}
    return RelayPlan(*endpoints, security=security, insecure=args.insecure)


def run_relay(plan: RelayPlan, *, status_interval: float = DEFAULT_STATUS_INTERVAL,
              duration: float | None = None) -> dict:
    """Forward until Ctrl+C, SIGTERM or ``duration`` seconds; print status every ``status_interval``."""
    import zmq

    from .transport.relay import Relay

    endpoints = (plan.worker_buffer, plan.worker_weights, plan.trainer_buffer, plan.trainer_weights)
    try:
        relay = Relay(*endpoints, insecure=plan.insecure, **plan.security)
    except zmq.ZMQError as exc:
        raise _zmq_error(exc, "listen on", endpoints) from None
    previous = signal.getsignal(signal.SIGTERM)
    monitor = None
    try:
        monitor = ConnectionMonitor({"worker buffers": relay._from_workers,
                                     "worker weights": relay._to_workers,
                                     "trainer buffers": relay._to_trainer,
                                     "trainer weights": relay._from_trainer})
        say(f"relay: workers connect to {relay.worker_buffer_endpoint} (buffers) and "
            f"{relay.worker_weights_endpoint} (weights); the trainer to {relay.trainer_buffer_endpoint} and "
            f"{relay.trainer_weights_endpoint}; {'CURVE on' if plan.security else 'plaintext (no keys)'}")
        if threading_is_main():
            signal.signal(signal.SIGTERM, terminate_as_interrupt)
        deadline = math.inf if duration is None else time.monotonic() + duration
        before, last = relay.stats(), time.monotonic()
        try:
            while time.monotonic() < deadline:
                relay.run(duration=min(status_interval, max(0.0, deadline - time.monotonic())))
                monitor.poll()
                now, stats = time.monotonic(), relay.stats()
                elapsed = max(now - last, 1e-9)
                o = monitor.open
                say(f"relay: workers connected {o['worker buffers']} (buffers) / {o['worker weights']} "
                    f"(weights), trainer {'connected' if o['trainer buffers'] and o['trainer weights'] else 'absent'}"
                    f", refused {monitor.refused} | forwarded {stats['buffers_forwarded']} buffers "
                    f"({(stats['buffers_forwarded'] - before['buffers_forwarded']) / elapsed:.1f}/s), "
                    f"{stats['publications_forwarded']} weights/control messages")
                before, last = stats, now
        except KeyboardInterrupt:
            say("relay: stopped")
        return relay.stats()
    finally:
        if threading_is_main():
            signal.signal(signal.SIGTERM, previous)
        if monitor is not None:
            monitor.close()
        relay.close()


# --- keys ------------------------------------------------------------------------------------------------
def make_keys(directory: str, workers: list[str], relay: bool = False) -> list[str]:
    """Create (or complete) the key layout; return the lines to print."""
    from .transport.keys import create_keys
    try:
        keys = create_keys(directory, workers, relay=relay)
    except FileExistsError as exc:
        raise RoleError(str(exc)) from None
    lines = [f"trainer key pair (keep on the trainer only):    {keys.trainer_secret}",
             f"trainer public key (workers, relay):            {keys.trainer_public}",
             f"authorized worker keys (trainer or relay):      {keys.authorized_keys_dir}/"]
    if keys.relay_secret is not None:
        lines += [f"relay key pair (keep on the relay only):        {keys.relay_secret}",
                  f"relay public key (workers and the trainer):     {keys.relay_public}"]
    for name, secret in keys.worker_secrets.items():
        lines.append(f"worker {name!r} key pair (copy to that worker only): {secret}")
    lines.append("revoke a worker: delete its file in authorized_workers/ (reread within seconds)")
    return lines
