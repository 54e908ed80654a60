"""CURVE keys for the transport: make them, lay them out, load them, and tell loopback addresses.

When the trainer (or a relay) listens on an address other than loopback, every connection is
encrypted and authenticated with ZeroMQ's CURVE: the trainer has a key pair, each worker has its
own, and the trainer accepts only workers whose public key is in its *authorized keys directory*
(revoke a worker by deleting its ``.key`` file there; the trainer rereads the directory when it
changes). :func:`create_keys` makes the whole set::

    DIR/trainer.key                 public key of the trainer: give it to every worker
    DIR/trainer.key_secret          the trainer's key pair: stays on the trainer (mode 0600)
    DIR/authorized_workers/NAME.key public keys the trainer accepts
    DIR/workers/NAME.key_secret     each worker's key pair: copy it to that worker only (mode 0600)

From a shell: ``python -m relayrl.transport.keys DIR worker-0 worker-1 ... [--relay]``. Then::

    ZmqTrainerInterface(..., server_secret_key_file="DIR/trainer.key_secret",
                        authorized_keys_dir="DIR/authorized_workers")
    ZmqWorkerClient(..., server_public_key_file="DIR/trainer.key",
                    client_secret_key_file="DIR/workers/worker-0.key_secret")

Key files are ZeroMQ certificates (a few lines of text, read by ``zmq.auth.load_certificate``).
"""
from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import zmq.auth
from zmq.utils import z85

HOW_TO_MAKE_KEYS = (
    "create keys with 'python -m relayrl.transport.keys KEYS_DIR worker-0 worker-1' (or "
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
    return KeySet(trainer_public, trainer_secret, authorized, secrets, relay_public, relay_secret)


def authorize(public_key_file: str | os.PathLike, authorized_keys_dir: str | os.PathLike) -> Path:
    """Write the public key of ``public_key_file`` (a ``.key`` or ``.key_secret`` file: only the
    public half is copied) into the trainer's authorized keys directory; return the new file."""
    public_key_file = Path(public_key_file)
    public = load_public_key(public_key_file)
    directory = Path(authorized_keys_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / (public_key_file.name.split(".")[0] + ".key")
    target.write_text(f"# relayrl: authorized CURVE public key\ncurve\n    public-key = \"{public.decode()}\"\n")
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m relayrl.transport.keys KEYS_DIR [WORKER_NAME ...] [--relay]\n\n" + __doc__)
        return 0 if argv else 2
    relay = "--relay" in argv
    argv = [a for a in argv if a != "--relay"]
    keys = create_keys(argv[0], argv[1:] or ["worker-0"], relay=relay)
    print(f"trainer key pair (keep on the trainer): {keys.trainer_secret}")
    print(f"trainer public key (give to workers):   {keys.trainer_public}")
    print(f"authorized worker keys:                 {keys.authorized_keys_dir}")
    if keys.relay_secret is not None:
        print(f"relay key pair (keep on the relay):     {keys.relay_secret}")
        print(f"relay public key (workers and trainer): {keys.relay_public}")
    for name, secret in keys.worker_secrets.items():
        print(f"worker {name!r} key pair (copy to that worker only): {secret}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
