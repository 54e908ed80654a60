"""``relayrl keys``: the CURVE key layout of :func:`relayrl.transport.keys.create_keys` (the trainer's
key pair, one per worker, the trainer's allow-list, and with ``--relay`` the relay's pair), and the
lines that say where each file must go. Imports pyzmq only (no torch), so it runs anywhere at once."""
from __future__ import annotations

from .common import RoleError

__all__ = ["make_keys"]


def make_keys(directory: str, workers: list[str], relay: bool = False) -> list[str]:
    """Create (or complete: existing keys are kept) the key layout in ``directory``; return the
    lines to print."""
    from ..transport.keys import create_keys
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
