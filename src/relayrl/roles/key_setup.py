"""``relayrl keys``: the CURVE key layout of :func:`relayrl.transport.keys.create_keys` (the trainer's
key pair, one per worker, the trainer's allow-list, and with ``--relay`` the relay's pair), and the
lines that say where each file must go. Imports pyzmq only (no torch), so it runs anywhere at once.

Secret key files are made (or narrowed to) mode 0600. A keys folder inside a git work tree gets a
warning (:func:`git_warnings`): secret keys must never be committed."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .common import RoleError

__all__ = ["make_keys", "git_work_tree", "git_warnings"]


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
    for path in keys.tightened:
        lines.append(f"{path} was readable by others: its permissions are now 0600 (owner only)")
    lines.append("revoke a worker: delete its file in authorized_workers/ (reread within seconds)")
    return lines


def git_work_tree(directory: str | os.PathLike) -> Path | None:
    """The top of the git work tree that holds ``directory`` (which may not exist yet): the nearest
    folder above it with a ``.git`` entry (a folder, or the file of a linked work tree or a
    submodule); None outside any. Git itself is not needed."""
    path = Path(os.path.abspath(directory))
    for folder in (path, *path.parents):
        if (folder / ".git").exists():
            return folder
    return None


def _ignored_by_git(directory: Path, top: Path) -> bool | None:
    """Whether git ignores ``directory`` (``git check-ignore``); None if git cannot tell (not
    installed, or it failed)."""
    git = shutil.which("git")
    if git is None:
        return None
    target = str(directory) + ("" if directory.is_file() else os.sep)  # a folder, even before it exists
    try:
        result = subprocess.run([git, "-C", str(top), "check-ignore", "-q", "--no-index", target],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {0: True, 1: False}.get(result.returncode)


def git_warnings(directory: str | os.PathLike) -> list[str]:
    """What to tell about a keys folder inside a git work tree (nothing outside one)."""
    top = git_work_tree(directory)
    if top is None:
        return []
    path = Path(os.path.abspath(directory))
    try:
        relative = path.relative_to(top).as_posix() + "/"
    except ValueError:  # pragma: no cover
        relative = f"{path.name}/"
    ignored = _ignored_by_git(path, top)
    where = f"{directory} is inside the git work tree {top}"
    if ignored:
        return [f"relayrl: note: {where}; git ignores it (.gitignore): keep it that way, the "
                "*.key_secret files are secrets"]
    told = "git does not ignore it" if ignored is False else "make sure git ignores it"
    return [f"relayrl: warning: {where} and {told}: add '{relative}' to {top / '.gitignore'} "
            "(or keep the keys outside the repository) so that the secret keys are never committed"]
