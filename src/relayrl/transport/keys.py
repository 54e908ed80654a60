"""CURVE keys for the transport: make them, lay them out, load them, apply them to sockets (with
the ZAP allow-list), and tell loopback addresses from exposed ones.

When the trainer (or a relay) listens on an address other than loopback, every connection is
encrypted and authenticated with ZeroMQ's CURVE: the trainer has a key pair, each worker has its
own, and the trainer accepts only workers whose public key is in its *authorized keys directory*
(revoke a worker by deleting its ``.key`` file there; the trainer rereads the directory when it
changes). :func:`create_keys` makes the whole set::

    DIR/trainer.key                 public key of the trainer: give it to every worker
    DIR/trainer.key_secret          the trainer's key pair: stays on the trainer (mode 0600)
    DIR/authorized_workers/NAME.key public keys the trainer accepts
    DIR/workers/NAME.key_secret     each worker's key pair: copy it to that worker only (mode 0600)

From a shell: ``relayrl keys DIR --workers worker-0 worker-1 ... [--relay]``. Then::

    ZmqTrainerInterface(..., server_secret_key_file="DIR/trainer.key_secret",
                        authorized_keys_dir="DIR/authorized_workers")
    ZmqWorkerClient(..., server_public_key_file="DIR/trainer.key",
                    client_secret_key_file="DIR/workers/worker-0.key_secret")

With a relay (``--relay`` / ``create_keys(..., relay=True)``) there is also ``DIR/relay.key`` and
``DIR/relay.key_secret``: the relay checks workers against ``authorized_workers/`` and the trainer
against ``trainer.key``; workers and the trainer use ``relay.key`` as their server key.

Key files are ZeroMQ certificates (a few lines of text, read by ``zmq.auth.load_certificate``).
"""
from __future__ import annotations

import ipaddress
import itertools
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import zmq
import zmq.auth
from zmq.utils import z85

log = logging.getLogger("relayrl.transport")

HOW_TO_MAKE_KEYS = (
    "create keys with 'relayrl keys KEYS_DIR --workers worker-0 worker-1' (or "
    "relayrl.transport.keys.create_keys), then pass server_secret_key_file='KEYS_DIR/trainer.key_secret' "
    "and authorized_keys_dir='KEYS_DIR/authorized_workers' to the trainer, and "
    "server_public_key_file='KEYS_DIR/trainer.key' and "
    "client_secret_key_file='KEYS_DIR/workers/NAME.key_secret' to each worker"
)


@dataclass(frozen=True)
class KeySet:
    """Where :func:`create_keys` put everything."""

    trainer_public: Path
    trainer_secret: Path
    authorized_keys_dir: Path
    worker_secrets: dict[str, Path]
    relay_public: Path | None = None
    relay_secret: Path | None = None
    tightened: tuple[Path, ...] = ()
    """Existing secret key files whose permissions were narrowed to 0600 (they were readable by others)."""


def protect_secret(path: str | os.PathLike) -> bool:
    """Make a secret key file that its group or others may access readable and writable by its
    owner only (0600); return whether its permissions had to change. (No-op where POSIX permissions
    do not apply.)"""
    if os.name != "posix" or os.stat(path).st_mode & 0o077 == 0:
        return False
    os.chmod(path, 0o600)
    return True


def create_key_pair(directory: str | os.PathLike, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (the pair, mode 0600) into ``directory``;
    return their paths. Existing files are kept unless ``overwrite``: ``FileExistsError``."""
    if not name or os.sep in name or (os.altsep and os.altsep in name) or name.startswith("."):
        raise ValueError(f"a key name must be a plain file name, got {name!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if not overwrite and (public.exists() or secret.exists()):
        raise FileExistsError(f"{public} or {secret} exists already; remove it or pass overwrite=True")
    old_umask = os.umask(0o077)  # the secret file is never readable by others, even briefly
    try:
        public_file, secret_file = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old_umask)
    os.chmod(public_file, 0o644)
    os.chmod(secret_file, 0o600)  # whatever the file system made of the umask
    return Path(public_file), Path(secret_file)


def create_keys(directory: str | os.PathLike, workers: Iterable[str] = ("worker-0",),
                relay: bool = False) -> KeySet:
    """The trainer's key pair and one per worker, in the layout of the module docstring; every
    worker is authorized. With ``relay``, also ``DIR/relay.key`` and ``DIR/relay.key_secret`` (the
    relay's pair: workers and the trainer then use ``relay.key`` as their server key). Run again
    with new names to add workers (existing keys are kept)."""
    directory = Path(directory)
    trainer_public, trainer_secret = directory / "trainer.key", directory / "trainer.key_secret"
    if not trainer_secret.exists():
        trainer_public, trainer_secret = create_key_pair(directory, "trainer")
    relay_public = relay_secret = None
    if relay:
        relay_public, relay_secret = directory / "relay.key", directory / "relay.key_secret"
        if not relay_secret.exists():
            relay_public, relay_secret = create_key_pair(directory, "relay")
    authorized = directory / "authorized_workers"
    authorized.mkdir(parents=True, exist_ok=True)
    secrets = {}
    for name in workers:
        secret = directory / "workers" / f"{name}.key_secret"
        if not secret.exists():
            public, secret = create_key_pair(directory / "workers", name)
            authorize(public, authorized)
        secrets[name] = secret
    kept = [trainer_secret, relay_secret, *sorted((directory / "workers").glob("*.key_secret"))]
    tightened = tuple(path for path in kept if path is not None and path.is_file() and protect_secret(path))
    return KeySet(trainer_public, trainer_secret, authorized, secrets, relay_public, relay_secret, tightened)


def authorize(public_key_file: str | os.PathLike, authorized_keys_dir: str | os.PathLike) -> Path:
    """Write the public key of ``public_key_file`` (a ``.key`` or ``.key_secret`` file: only the
    public half is copied) into the trainer's authorized keys directory; return the new file."""
    public_key_file = Path(public_key_file)
    public = load_public_key(public_key_file)
    directory = Path(authorized_keys_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / (public_key_file.name.split(".")[0] + ".key")
    target.write_text("# relayrl: an authorized CURVE public key\ncurve\n"
                      f"    public-key = \"{public.decode()}\"\n")
    return target


def load_public_key(path: str | os.PathLike) -> bytes:
    """The (Z85) public key in a ``.key`` or ``.key_secret`` file."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read a CURVE public key from {path}: {exc}") from exc
    _check_z85(public, path)
    return public


def load_key_pair(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """``(public, secret)`` Z85 keys from a ``.key_secret`` file."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read a CURVE key pair from {path}: {exc}") from exc
    if not secret:
        raise ValueError(f"{path} holds no secret key (pass the .key_secret file, not the .key file)")
    _check_z85(public, path)
    _check_z85(secret, path)
    return public, secret


def _check_z85(key: bytes, path) -> None:
    if len(key) != 40:
        raise ValueError(f"{path}: a CURVE key is 40 Z85 characters, got {len(key)}")
    try:
        z85.decode(key)
    except Exception as exc:
        raise ValueError(f"{path}: not a Z85 key ({exc})") from exc


def is_loopback(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint stays on this machine: ``ipc://``, ``inproc://``, or TCP on
    127.0.0.0/8, ``::1`` or ``localhost``. Wildcards, interface names and other hosts are not."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].rsplit(";", 1)[-1]  # tcp://[source;]host:port
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- CURVE on sockets ------------------------------------------------------------------------------------
def check_exposure(role: str, endpoints: Iterable[str], secure: bool, insecure: bool) -> None:
    """Refuse plaintext on an address that leaves the machine, unless ``insecure`` (then warn)."""
    exposed = [e for e in endpoints if not is_loopback(e)]
    if secure or not exposed:
        return
    if not insecure:
        raise ValueError(f"{role}: refusing to use {', '.join(exposed)} without CURVE keys: anyone who "
                         f"can reach it could inject data or read the policy. To fix it, {HOW_TO_MAKE_KEYS}. "
                         "On a network you trust completely, pass insecure=True instead.")
    log.warning("%s: INSECURE: %s carry unencrypted, unauthenticated traffic (insecure=True); anyone "
                "who can reach them can inject data or read the policy", role.upper(), ", ".join(exposed))


class _Authenticators:
    """One ZAP handler (``zmq.auth.thread.ThreadAuthenticator``) per process, shared by every
    secure socket; each server gets its own ZAP domain and key allow-list (a callback). It is
    started on first use and kept for the life of the process (restarting it races with libzmq's
    asynchronous unbind of the ZAP endpoint)."""

    _lock = threading.Lock()
    _auth: Any = None
    _pid = 0
    _ids = itertools.count()

    @classmethod
    def acquire(cls, allow_list: "AllowList") -> str:
        from zmq.auth.thread import ThreadAuthenticator

        with cls._lock:
            if cls._auth is None or cls._pid != os.getpid():
                cls._auth = ThreadAuthenticator(zmq.Context.instance(),
                                                log=logging.getLogger("relayrl.transport.zap"))
                cls._auth.start()
                cls._pid = os.getpid()
            domain = f"relayrl-{next(cls._ids)}"
            cls._auth.configure_curve_callback(domain, credentials_provider=allow_list)
            return domain

    @classmethod
    def release(cls, domain: str) -> None:
        with cls._lock:
            if cls._auth is not None and cls._pid == os.getpid():
                cls._auth.credentials_providers.pop(domain, None)


class AllowList:
    """The public keys a server accepts: the ``*.key`` files of a directory (reread when the directory
    changes, checked at most every ``check_interval`` seconds) or fixed key files."""

    def __init__(self, directory: str | os.PathLike | None = None, key_files: Iterable = (),
                 check_interval: float = 2.0):
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None and not self.directory.is_dir():
            raise ValueError(f"authorized keys directory {self.directory} does not exist; {HOW_TO_MAKE_KEYS}")
        self.fixed = {load_public_key(f) for f in key_files}
        self.check_interval = check_interval
        self.keys: frozenset[bytes] = frozenset()
        self._stamp: Any = None
        self._checked_at = -math.inf
        self._refused: dict[bytes, float] = {}
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked_at < self.check_interval:
            return
        self._checked_at = now
        keys = set(self.fixed)
        if self.directory is not None:
            files = sorted(self.directory.glob("*.key"))
            stamp = [(f.name, f.stat().st_mtime_ns) for f in files if f.is_file()]
            if stamp == self._stamp and not force:
                return
            self._stamp = stamp
            for path in files:
                try:
                    keys.add(load_public_key(path))
                except ValueError as exc:
                    log.warning("ignoring authorized key file %s: %s", path, exc)
            if not keys:
                log.warning("no authorized keys in %s: every client will be refused", self.directory)
        if self.keys and keys != self.keys:
            log.info("authorized keys reloaded: %d keys (was %d)", len(keys), len(self.keys))
        self.keys = frozenset(keys)

    def callback(self, domain: str, client_key: bytes) -> bool:  # called by the ZAP thread
        allowed = client_key in self.keys
        if not allowed:  # refused clients retry: log each key once a minute at most
            now = time.monotonic()
            if now - self._refused.get(client_key, -math.inf) > 60.0:
                if len(self._refused) > 1000:
                    self._refused.clear()
                self._refused[client_key] = now
                log.warning("refused a connection with an unknown CURVE key %s (to authorize it, add "
                            "its .key file to %s)", client_key.decode(errors="replace"),
                            self.directory or "the allow-list")
        return allowed


class ServerSecurity:
    """CURVE for sockets that bind: the server's key pair plus a key allow-list checked over ZAP."""

    def __init__(self, secret_key_file: str | os.PathLike, allow_list: AllowList):
        self.public, self.secret = load_key_pair(secret_key_file)
        self.allow_list = allow_list
        self.domain = _Authenticators.acquire(allow_list)

    def apply(self, socket: zmq.Socket) -> None:
        socket.setsockopt(zmq.ZAP_DOMAIN, self.domain.encode())
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.secret)

    def close(self) -> None:
        if self.domain:
            _Authenticators.release(self.domain)
            self.domain = ""


class ClientSecurity:
    """CURVE for sockets that connect: the server's public key and this client's key pair."""

    def __init__(self, server_public_key_file: str | os.PathLike, client_secret_key_file: str | os.PathLike):
        self.server_public = load_public_key(server_public_key_file)
        self.public, self.secret = load_key_pair(client_secret_key_file)

    def apply(self, socket: zmq.Socket) -> None:
        socket.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


def both_or_neither(role: str, **named: Any) -> bool:
    given = [name for name, value in named.items() if value is not None]
    if given and len(given) != len(named):
        missing = sorted(set(named) - set(given))
        raise ValueError(f"{role}: CURVE needs {' and '.join(named)}; {', '.join(missing)} missing")
    return bool(given)

