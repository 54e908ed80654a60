"""What every role shares: default ports, address parsing, key-file checks, :class:`RoleError`,
status printing, the one way signals stop a command (:func:`stop_signals`), and the trainer-side
interface every trainer role hands to ``Trainer.run`` (:class:`WatchedInterface`).

Nothing heavy is imported here (no torch, no pandas, no ZeroMQ at import time), so ``relayrl keys``
and the worker role stay light.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol, Sequence

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..transport.trainer_end import ZmqTrainerInterface

__all__ = ["split_random_steps", "DEFAULT_BUFFER_PORT", "DEFAULT_WEIGHTS_PORT", "DEFAULT_RELAY_TRAINER_BUFFER_PORT",
           "DEFAULT_RELAY_TRAINER_WEIGHTS_PORT", "DEFAULT_STATUS_INTERVAL", "HOW_TO_MAKE_KEYS", "RoleError",
           "parse_endpoint", "tcp_endpoint", "parse_host", "check_port", "check_security", "key_file",
           "key_dir", "zmq_error", "say", "StopRequest", "stop_signals", "WatchedInterface",
           "open_trainer", "trainer_transport"]

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
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
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


def check_port(port: int, what: str) -> int:
    if not 1 <= port <= 65535:
        raise RoleError(f"{what}: port {port} is not in 1-65535")
    return port


# --- keys ------------------------------------------------------------------------------------------------
def check_security(role: str, endpoints: Iterable[str], keys: bool, insecure: bool) -> None:
    """Plaintext on an address that leaves the machine needs ``--insecure``; keys and ``--insecure``
    together make no sense."""
    from ..transport.keys import is_loopback  # (pyzmq, no torch)

    if keys and insecure:
        raise RoleError(f"{role}: --keys and --insecure contradict each other; drop --insecure")
    exposed = [e for e in endpoints if not is_loopback(e)]
    if exposed and not keys and not insecure:
        verb = "listen on" if role in ("trainer", "relay") else "connect to"
        raise RoleError(f"{role}: refusing to {verb} {', '.join(exposed)} without CURVE keys: anyone who "
                        f"can reach it could inject data or read the policy; {HOW_TO_MAKE_KEYS}")


def key_file(path: Path, what: str, hint: str = "") -> str:
    """``path`` as a string if it is a file, else a :class:`RoleError` saying how to make it."""
    if not path.is_file():
        raise RoleError(f"missing {what} {path}: create the keys with 'relayrl keys DIR --workers NAME ...'"
                        f"{hint}")
    return str(path)


def key_dir(path: Path, what: str) -> str:
    """``path`` as a string if it is a directory, else a :class:`RoleError` saying how to make it."""
    if not path.is_dir():
        raise RoleError(f"missing {what} {path}: create the keys with 'relayrl keys DIR --workers NAME ...'")
    return str(path)


def zmq_error(exc: Exception, action: str, endpoints: Sequence[str]) -> RoleError:
    """A one-line :class:`RoleError` for a ZeroMQ bind or connect that failed."""
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


# --- signals ---------------------------------------------------------------------------------------------
class StopRequest:
    """What :func:`stop_signals` yields: call it (``should_stop()``) to learn whether a graceful stop
    was asked for."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested


@contextlib.contextmanager
def stop_signals(graceful: bool = False) -> Iterator[StopRequest]:
    """How every command stops: SIGTERM (kill, a batch scheduler, a container stop) means what
    Ctrl+C means, while the block runs.

    * ``graceful=False`` (``relayrl train``, ``trainer``, ``relay``): SIGTERM raises
      ``KeyboardInterrupt`` like Ctrl+C, so the trainer saves a checkpoint and stops its workers
      instead of dying with them left behind (exit code 130).
    * ``graceful=True`` (``relayrl worker``): the first Ctrl+C or SIGTERM only marks the yielded
      :class:`StopRequest`, so the worker finishes its step, sends what it has and exits 0; a second
      one raises ``KeyboardInterrupt`` at once.

    Handlers can only be installed in the main thread; elsewhere the block runs with the handlers
    as they are. The previous handlers are restored on exit."""
    request = StopRequest()

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    def soft(signum, frame) -> None:
        if request.requested:
            raise KeyboardInterrupt
        request.requested = True  # no printing here: a signal handler must not reenter a stdout write

    signals = (signal.SIGINT, signal.SIGTERM) if graceful else (signal.SIGTERM,)
    previous: dict = {}
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            previous[sig] = signal.signal(sig, soft if graceful else interrupt)
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- the trainer side ------------------------------------------------------------------------------------
class StatusReport(Protocol):
    def maybe_report(self, force: bool = False) -> None: ...


class WatchedInterface:
    """The interface a trainer role hands to ``Trainer.run``: the transport, watched.

    * ``processes``: local worker processes (``relayrl train``). When all of them have exited, the
      next wait raises a clear ``RuntimeError`` instead of waiting forever for data.
    * ``status``: an object whose ``maybe_report()`` prints a status line when one is due
      (``relayrl trainer``); called after every pull and every wait.
    """

    def __init__(self, transport: "ZmqTrainerInterface", processes: Sequence[Any] = (),
                 status: StatusReport | None = None):
        self.transport = transport
        self.processes = list(processes)
        self.status = status

    def retrieve_buffer(self):
        buffer = self.transport.retrieve_buffer()
        if self.status is not None:
            self.status.maybe_report()
        return buffer

    def broadcast_model(self, actor) -> None:
        self.transport.broadcast_model(actor)

    def report_progress(self, **counters) -> None:
        self.transport.report_progress(**counters)

    def announce_end(self) -> None:
        """The run is over: the workers are told to stop."""
        announce = getattr(self.transport, "announce_end", None)
        if callable(announce):
            announce()

    def wait_for_data(self, timeout: float) -> bool:
        if self.processes and not any(p.is_alive() for p in self.processes):
            codes = [p.exitcode for p in self.processes]
            raise RuntimeError(f"all {len(self.processes)} worker processes exited (exit codes {codes});"
                               " their errors are printed above")
        arrived = self.transport.wait_for_data(timeout)
        if self.status is not None:
            self.status.maybe_report()
        return arrived


def open_trainer(config: "RunConfig", *, progress: bool, print_tables: bool, role: str = "train"):
    """The :class:`~relayrl.trainer.Trainer` of ``config`` (resumed from its run directory if that
    holds checkpoints), or ``None`` if all its epochs are done already (said in the log). Without
    ``config.run_dir``, the run directory is ``role``'s default (:func:`relayrl.config.default_run_dir`)."""
    from ..trainer import Trainer  # the trainer side only: never imported by a worker

    trainer = Trainer(config.with_run_dir(role), progress=progress, print_tables=print_tables, role=role)
    config = trainer.config
    if trainer.resumed_from is not None:
        log.warning("resuming %s from epoch %d", config.run_dir, trainer.resumed_from)
    if trainer.done:
        log.warning("%s already holds %d finished epochs; raise --epochs to train further",
                    config.run_dir, trainer.training.epoch)
        return None
    return trainer


def split_random_steps(random_steps: int, samples_so_far: int, workers: int) -> list[int]:
    """Each of ``workers`` workers' share of the run's ``workers.random_steps`` still to take
    (a resumed run that already has ``samples_so_far`` samples takes only the rest)."""
    left = max(0, int(random_steps) - int(samples_so_far))
    base, extra = divmod(left, max(1, workers))
    return [base + (1 if i < extra else 0) for i in range(workers)]


def trainer_transport(trainer, buffer_endpoint: str, weights_endpoint: str,
                      **options: Any) -> "ZmqTrainerInterface":
    """The transport of ``trainer`` (a :class:`~relayrl.trainer.Trainer`), metering the workers by
    its ``config.workers`` (the first ``max(start_training, batch_size)`` samples are always allowed,
    so training can start); its statistics rows get the transport's accounting
    (:data:`~relayrl.transport.accounting.TRANSPORT_STATS_KEYS`) through ``trainer.row_extras``."""
    from ..transport.accounting import TransportAccounting
    from ..transport.trainer_end import ZmqTrainerInterface

    workers, training = trainer.config.workers, trainer.training
    transport = ZmqTrainerInterface(buffer_endpoint, weights_endpoint,
                                    env_steps_per_update=workers.env_steps_per_update,
                                    initial_samples=max(training.start_training, training.batch_size),
                                    slack_samples=workers.slack_samples,
                                    samples_on_top_of_initial=training.ratio_from_start, **options)
    trainer.row_extras = TransportAccounting(transport).row_stats
    return transport
