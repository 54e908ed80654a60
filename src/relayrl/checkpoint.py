"""Pickle-free, atomic, checksummed, schema-versioned checkpoints of a nested state.

tmrl pickled the whole trainer as its checkpoint, so loading one could run arbitrary code and any
refactoring broke old files. Here a checkpoint is data only (schema version 2)::

    directory/
      latest                 # text file: the name of the newest complete checkpoint
      <name>/
        manifest.json        # format, schema version, creation time, sha256 + size of each data
                             # file, and the state as JSON with placeholders for tensors/arrays
        tensors.safetensors  # every torch tensor (keys t0, t1, ...), if the state holds any
        arrays.safetensors   # every numpy array (keys a0, a1, ...), if the state holds any

The two data files are standard safetensors files (a JSON header, then raw little-endian bytes),
written straight from the tensors' and arrays' memory (each file is then read back once for its
sha256): only tensors on another device or with a lazy conjugation/negation and non-contiguous
tensors and arrays (e.g. transposed, Fortran order) are copied first. A dtype safetensors has no
name for (complex128, long double, torch complex32 and sub-byte floats, big-endian arrays, anything
on a big-endian machine) is stored as its raw bytes viewed as unsigned integers, and the manifest's
placeholder gives the real dtype (``"stored_as"``); it comes back exactly, byte order included.
Schema 1 checkpoints (``tensors.pt`` and ``arrays/<k>.npy``, relayrl up to 0.1.0) are refused with
one :class:`CheckpointError` that says so; their data files are never opened.

What a state may hold: dicts (``str`` keys; int/float/bool/None/tuple keys, e.g. the ``state`` of a
torch optimiser, are stored too), lists, tuples, ``None``, ``bool``, ``int``, ``float`` (nan/inf
included), ``str``, ``bytes``, torch tensors of any device (moved to CPU, strided layout only) and
numpy arrays/scalars of bool, integer, float or complex dtype (any byte order). Anything else, in
particular numpy object arrays, is refused when saving (:class:`UnsupportedValueError`).

What comes back: mappings come back as plain ``dict`` (an ``OrderedDict`` loses its class, a
module's ``state_dict`` its ``_metadata``, which ``load_state_dict`` does not need); tuples come back
as tuples, namedtuples as plain tuples; tensors come back on the CPU, detached
(``nn.Parameter`` -> plain tensor, no ``requires_grad``), contiguous, each in memory of its own
(not a mapping of the file); arrays come back C-contiguous with their dtype, writable and in
memory of their own (with ``mmap_mode``: ``np.memmap`` views of the file, read-only or
copy-on-write); the same tensor or array object appearing twice comes back as one object appearing
twice (distinct objects that merely share memory, e.g. a tensor and a view of it, come back as
independent copies).

Guarantees:

* Loading never executes code: the data files are read only by ``safetensors`` (or, with
  ``mmap_mode``, memory-mapped with ``np.memmap`` at the offsets of their safetensors header), the
  rest is JSON; pickle is never used, and no file but ``latest``, ``manifest.json`` and the two
  above is ever opened (a ``tensors.pt`` or ``.npy`` lying in a checkpoint is ignored). The size and
  sha256 of every data file are checked against the manifest before it is parsed (a file changed
  between its check and its parsing, i.e. by a concurrent writer, can at worst give wrong numbers);
  every problem is reported as :class:`CheckpointError` naming the file.
* Saving is atomic: everything is written and fsynced in ``directory/.<name>.tmp-<pid>/``, which is
  then renamed to ``directory/<name>``; only then is ``latest`` replaced (``os.replace``). A crash at
  any point leaves ``latest`` naming a complete checkpoint. Leftovers of crashed saves are cleaned
  up (or, for an interrupted replacement, restored) by the next save.
* One writer per directory at a time (several readers are fine).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch

from . import __version__ as _RELAYRL_VERSION
from .checkpoint_codec import (
    ARRAYS_FILE as _ARRAYS,
    TENSORS_FILE as _TENSORS,
    CheckpointError,
    Decoder as _Decoder,
    Encoder as _Encoder,
    UnsupportedValueError,
    corrupt as _corrupt,
    write_payload as _write_payload,
)

__all__ = [
    "CheckpointError",
    "UnsupportedValueError",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "load_latest",
    "FORMAT",
    "SCHEMA_VERSION",
]

log = logging.getLogger("relayrl.checkpoint")

FORMAT = "relayrl-checkpoint"
SCHEMA_VERSION = 2
_SUPPORTED_SCHEMAS = (2,)

_MANIFEST = "manifest.json"
_LATEST = "latest"
_CHUNK = 8 << 20  # bytes per read when hashing

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")
_DATA_FILE_RE = re.compile(r"tensors\.safetensors|arrays\.safetensors")
_LEFTOVER_RE = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old|del)-(?P<pid>[0-9]{1,10})")
_SHA_RE = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------------------------------
# small file-system helpers


def _fsync_dir(path: Path) -> None:
    """Make a rename/creation inside ``path`` durable (no-op where directories cannot be fsynced)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete a file or a directory tree, ignoring errors (used for leftovers only)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except OSError:
        pass


def _pid_alive(pid: int) -> bool:
    """Whether another process with this pid may still be writing (conservative on POSIX)."""
    if pid == os.getpid():
        return False  # a leftover of an earlier, failed save of this very process
    if os.name != "posix":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _sha256_file(path: Path, fsync: bool = False) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in chunks; optionally fsync it on the way."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    size = 0
    with open(path, "r+b" if fsync else "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            size += n
        if fsync:
            os.fsync(f.fileno())
    return size, h.hexdigest()



# --------------------------------------------------------------------------------------------------
# manifest reading and verification


def _schema_error(ckpt: Path, version: Any) -> CheckpointError:
    """The one error for a checkpoint of another schema version (``load_latest`` passes it on as is)."""
    if version == 1:
        what = ("was written by relayrl 0.1.0 or earlier (checkpoint schema version 1: tensors.pt and "
                "arrays/<k>.npy, a format this relayrl never opens)")
        fix = "start a new --run-dir, or resume this run with the relayrl release that wrote it"
    else:
        what = f"has schema version {version!r}"
        fix = "use the relayrl version that wrote it, or resume from another checkpoint"
    err = CheckpointError(
        f"checkpoint {ckpt} {what}; this relayrl ({_RELAYRL_VERSION}) reads checkpoint schema version "
        f"{SCHEMA_VERSION} only (safetensors): {fix}"
    )
    err.schema_version = version  # type: ignore[attr-defined]
    return err


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _read_manifest(ckpt: Path) -> dict:
    """Parse and validate ``manifest.json`` (structure only; data files are checked separately)."""
    mpath = ckpt / _MANIFEST
    try:
        st = os.lstat(mpath)
    except FileNotFoundError as e:
        if not ckpt.is_dir():
            raise CheckpointError(f"no checkpoint directory at {ckpt}") from e
        raise _corrupt(ckpt, f"{mpath} is missing") from e
    except OSError as e:
        raise _corrupt(ckpt, f"cannot stat {mpath} ({e})") from e
    if not stat.S_ISREG(st.st_mode):
        raise _corrupt(ckpt, f"{mpath} is not a regular file")
    try:
        manifest = json.loads(mpath.read_bytes().decode("utf-8"), parse_constant=_reject_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _corrupt(ckpt, f"{mpath} is not valid JSON ({type(e).__name__}: {e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _corrupt(ckpt, f"{mpath} is not a {FORMAT} manifest")
    version = manifest.get("schema_version")
    if version not in _SUPPORTED_SCHEMAS or type(version) is not int:
        raise _schema_error(ckpt, version)  # before anything else of the manifest is trusted
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise _corrupt(ckpt, f"{mpath} has no 'files' table")
    for rel, info in files.items():
        if not _DATA_FILE_RE.fullmatch(rel):
            raise _corrupt(ckpt, f"{mpath} lists an unexpected file {rel!r} (only {_TENSORS} and {_ARRAYS})")
        if (
            not isinstance(info, dict)
            or type(info.get("bytes")) is not int
            or info["bytes"] < 0
            or not isinstance(info.get("sha256"), str)
            or not _SHA_RE.fullmatch(info["sha256"])
        ):
            raise _corrupt(ckpt, f"{mpath} has a bad entry for {rel!r}")
    if not isinstance(manifest.get("state"), dict):
        raise _corrupt(ckpt, f"{mpath} has no state")
    return manifest


def _verify_files(ckpt: Path, files: dict) -> None:
    """Check that every data file is a regular file inside ``ckpt`` with the recorded size and sha256."""
    root = ckpt.resolve()
    for rel, info in files.items():
        path = ckpt / rel
        try:
            inside = path.resolve().is_relative_to(root)
        except OSError:
            inside = False
        if not inside:
            raise _corrupt(ckpt, f"{rel!r} points outside the checkpoint directory")
        try:
            st = os.lstat(path)
        except FileNotFoundError as e:
            raise _corrupt(ckpt, f"{path} is missing") from e
        except OSError as e:
            raise _corrupt(ckpt, f"cannot stat {path} ({e})") from e
        if not stat.S_ISREG(st.st_mode):
            raise _corrupt(ckpt, f"{path} is not a regular file")
        if st.st_size != info["bytes"]:
            raise _corrupt(ckpt, f"{path} has {st.st_size} bytes, the manifest says {info['bytes']} (truncated?)")
        try:
            size, digest = _sha256_file(path)
        except OSError as e:
            raise _corrupt(ckpt, f"cannot read {path} ({e})") from e
        if size != info["bytes"] or digest != info["sha256"]:
            raise _corrupt(ckpt, f"{path} fails its sha256 check (the file was modified or damaged)")



# --------------------------------------------------------------------------------------------------
# scanning a checkpoint directory


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name == _LATEST:
        raise ValueError(
            f"bad checkpoint name {name!r}: use letters, digits, '.', '_' and '-' (not starting "
            f"with '.' or '-', at most 200 characters, not {_LATEST!r}), e.g. 'epoch-000003'"
        )


def _scan(directory: Path) -> tuple[list[tuple[int, str]], list[str]]:
    """(``[(sequence, name)]`` of readable checkpoints in save order, names of unreadable ones)."""
    good: list[tuple[int, str]] = []
    bad: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return good, bad
    for entry in entries:
        if entry.name.startswith(".") or not _NAME_RE.fullmatch(entry.name):
            continue
        if not entry.is_dir(follow_symlinks=False) or not os.path.isfile(os.path.join(entry.path, _MANIFEST)):
            continue
        try:
            with open(os.path.join(entry.path, _MANIFEST), "rb") as f:
                m = json.loads(f.read().decode("utf-8"))
            seq = m["sequence"] if m.get("format") == FORMAT else None
        except (OSError, ValueError, UnicodeDecodeError, RecursionError, AttributeError, KeyError):
            seq = None
        if type(seq) is int:
            good.append((seq, entry.name))
        else:
            bad.append(entry.name)
    good.sort()
    bad.sort()
    return good, bad


def _cleanup(directory: Path) -> None:
    """Remove leftovers of crashed saves; put back a checkpoint whose replacement was interrupted."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        m = _LEFTOVER_RE.fullmatch(entry.name)
        if not m or _pid_alive(int(m["pid"])):
            continue
        path = Path(entry.path)
        target = directory / m["name"]
        if (
            m["kind"] == "old"
            and entry.is_dir(follow_symlinks=False)
            and not os.path.lexists(target)
            and (path / _MANIFEST).is_file()
        ):
            try:
                os.rename(path, target)
                _fsync_dir(directory)
                continue
            except OSError:
                pass
        _remove(path)


def _interrupted_replacement(directory: Path, name: str) -> Path | None:
    """The previous version of ``name`` set aside by a save that crashed before putting the new one in."""
    for p in sorted(directory.glob(f".{name}.old-*")):
        if _LEFTOVER_RE.fullmatch(p.name) and p.is_dir() and (p / _MANIFEST).is_file():
            return p
    return None


def _others(directory: Path, exclude: str | None) -> str:
    good, bad = _scan(directory)
    names = [n for _, n in good if n != exclude] + [f"{n} (unreadable)" for n in bad if n != exclude]
    return ", ".join(names) if names else "none"


# --------------------------------------------------------------------------------------------------
# public API


def save_checkpoint(directory: str | os.PathLike, name: str, state: dict, keep: int | None = 3) -> Path:
    """Atomically write ``state`` as checkpoint ``directory/<name>`` and point ``directory/latest`` at it.

    An existing checkpoint of the same name is replaced safely. Afterwards only the ``keep`` most
    recently saved checkpoints are kept (``None``: keep all); the one just written is never deleted.
    Raises :class:`UnsupportedValueError` (a ``TypeError``) before writing anything if the state holds
    a value that cannot be stored without pickle. Returns the checkpoint's path.
    """
    _check_name(name)
    if not isinstance(state, Mapping):
        raise UnsupportedValueError(f"the state must be a dict, not a {type(state).__qualname__}")
    if keep is not None and (type(keep) is not int or keep < 1):
        raise ValueError(f"keep must be a positive int or None, not {keep!r}")
    directory = Path(directory)
    enc = _Encoder()
    tree = enc.encode(state, "state")

    directory.mkdir(parents=True, exist_ok=True)
    _cleanup(directory)
    target = directory / name
    if os.path.lexists(target) and not (target.is_dir() and not target.is_symlink() and (target / _MANIFEST).is_file()):
        raise CheckpointError(
            f"refusing to replace {target}: it exists and is not a checkpoint; move it away or choose another name"
        )
    good, _ = _scan(directory)
    sequence = max((s for s, _ in good), default=0) + 1

    pid = os.getpid()
    tmp = directory / f".{name}.tmp-{pid}"
    _remove(tmp)
    try:
        tmp.mkdir()
        files: dict[str, dict[str, Any]] = {}
        meta = {"format": FORMAT, "schema_version": str(SCHEMA_VERSION), "described_by": _MANIFEST}
        for rel in _write_payload(enc, tmp, meta):
            size, digest = _sha256_file(tmp / rel, fsync=True)  # read back from the page cache
            files[rel] = {"bytes": size, "sha256": digest}
        del enc  # the buffers kept alive for writing (copies of non-contiguous data, CPU tensors)
        now = time.time()
        manifest = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "sequence": sequence,
            "created": _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(timespec="milliseconds"),
            "created_unix": now,
            "relayrl_version": _RELAYRL_VERSION,
            "torch_version": torch.__version__,
            "numpy_version": np.__version__,
            "safetensors_version": safetensors.__version__,
            "files": files,
            "state": tree,
        }
        data = json.dumps(manifest, allow_nan=False, indent=1, ensure_ascii=False).encode("utf-8")
        with open(tmp / _MANIFEST, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)

        # swap the complete folder in
        if os.path.lexists(target):
            aside = directory / f".{name}.old-{pid}"
            _remove(aside)
            os.rename(target, aside)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(aside, target)
                raise
            _fsync_dir(directory)
            _remove(aside)
        else:
            os.rename(tmp, target)
        _fsync_dir(directory)
    except BaseException:
        _remove(tmp)
        raise

    # only now does `latest` name the new checkpoint
    latest_tmp = directory / f".{_LATEST}.tmp-{pid}"
    with open(latest_tmp, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(latest_tmp, directory / _LATEST)
    _fsync_dir(directory)

    if keep is not None:
        good, _ = _scan(directory)
        old = [n for _, n in good if n != name]
        for victim in old[: max(0, len(old) - (keep - 1))]:
            trash = directory / f".{victim}.del-{pid}"
            try:
                os.rename(directory / victim, trash)  # never leave a half-deleted visible checkpoint
            except OSError:
                continue
            _remove(trash)
        _fsync_dir(directory)
    return target


def load_checkpoint(path: str | os.PathLike, *, mmap_mode: str | None = None) -> dict:
    """Load and verify the checkpoint at ``path`` (its directory, or its ``manifest.json``).

    Every data file's size and sha256 are checked before it is parsed; tensors come back on the CPU.
    ``mmap_mode='r'`` (read-only) or ``'c'`` (copy-on-write) memory-maps the numpy arrays (as
    ``np.memmap`` into ``arrays.safetensors``; zero-size arrays come back as plain arrays) instead of
    reading them into memory. Raises :class:`CheckpointError` on any problem, including a checkpoint
    of another schema version (e.g. schema 1, ``tensors.pt``), which is refused before any of its
    data files is opened.
    """
    if mmap_mode not in (None, "r", "c"):
        raise ValueError(f"mmap_mode must be None, 'r' or 'c' (never write into a checkpoint), not {mmap_mode!r}")
    ckpt = Path(path)
    if ckpt.name == _MANIFEST and ckpt.is_file():
        ckpt = ckpt.parent
    manifest = _read_manifest(ckpt)
    files = manifest["files"]
    _verify_files(ckpt, files)
    try:
        with _Decoder(ckpt, files, mmap_mode) as dec:
            state = dec.decode(manifest["state"], "state")
    except CheckpointError:
        raise
    except RecursionError as e:
        raise _corrupt(ckpt, "the state tree is nested too deeply") from e
    except (TypeError, ValueError, OverflowError, KeyError) as e:
        raise _corrupt(ckpt, f"malformed state tree in {ckpt / _MANIFEST} ({type(e).__name__}: {e})") from e
    return state


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """Path of the checkpoint ``directory/latest`` names, or ``None`` if there is no checkpoint.

    Without a ``latest`` file (e.g. a crash right after the first save), the most recently saved
    readable checkpoint. If a save crashed while replacing the named checkpoint, the intact previous
    version it set aside. Raises :class:`CheckpointError` if ``latest`` is unreadable or names a
    checkpoint that does not exist.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    lfile = directory / _LATEST
    try:
        text = lfile.read_bytes().decode("utf-8")
    except FileNotFoundError:
        good, bad = _scan(directory)
        if good:
            return directory / good[-1][1]
        if bad:
            raise CheckpointError(
                f"no readable checkpoint in {directory} and no {lfile}: every checkpoint here is "
                f"unreadable ({', '.join(bad)}); delete them to start fresh"
            )
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"cannot read {lfile} ({e}); write the name of an existing checkpoint into it "
            f"(here: {_others(directory, None)}) or delete it"
        ) from e
    name = text.strip()
    if not _NAME_RE.fullmatch(name) or name == _LATEST:
        raise CheckpointError(
            f"{lfile} is corrupt (it holds {text[:80]!r}); write the name of an existing checkpoint "
            f"into it (here: {_others(directory, None)}) or delete it"
        )
    path = directory / name
    if path.is_dir():
        return path
    aside = _interrupted_replacement(directory, name)
    if aside is not None:
        return aside
    raise CheckpointError(
        f"{lfile} names checkpoint {name!r} but {path} does not exist; write the name of an existing "
        f"checkpoint into {lfile} (here: {_others(directory, name)}) or delete it to start fresh"
    )


def load_latest(directory: str | os.PathLike, *, mmap_mode: str | None = None,
                fallback: bool = False) -> dict | None:
    """Load the latest checkpoint of ``directory``; ``None`` if the directory holds no checkpoint.

    A corrupt latest checkpoint, or a ``latest`` file that is unreadable or names a checkpoint that
    is gone, raises :class:`CheckpointError`; with ``fallback``, the newest checkpoint that loads
    is used instead, with a warning naming what was skipped (and a :class:`CheckpointError` that
    says how to start afresh if none loads). A checkpoint of another schema version always raises.
    """
    directory = Path(directory)
    if fallback:
        return _load_newest_complete(directory, mmap_mode)
    path = latest_checkpoint(directory)
    if path is None:
        return None
    try:
        return load_checkpoint(path, mmap_mode=mmap_mode)
    except CheckpointError as e:
        if getattr(e, "schema_version", None) is not None:
            raise  # not corrupt, and removing it is not the advice: the message says what to do
        problem = getattr(e, "problem", None) or str(e)
        raise CheckpointError(
            f"the latest checkpoint {path} is corrupt: {problem}. To resume from an older one, write "
            f"its name into {directory / _LATEST} (here: {_others(directory, path.name)})"
        ) from e


def _load_newest_complete(directory: Path, mmap_mode: str | None) -> dict | None:
    """``load_latest(..., fallback=True)``: the checkpoint ``latest`` names, else the newest that loads."""
    skipped: list[str] = []
    first: Path | None = None
    try:
        first = latest_checkpoint(directory)
    except CheckpointError as e:  # latest unreadable, garbled, or naming a checkpoint that is gone
        skipped.append(str(e))
    good, bad = _scan(directory)
    candidates = ([first] if first is not None else []) + [
        directory / name for _, name in reversed(good) if first is None or name != first.name]
    if not candidates and not bad and not skipped:
        return None
    for path in candidates:
        try:
            state = load_checkpoint(path, mmap_mode=mmap_mode)
        except CheckpointError as e:
            if getattr(e, "schema_version", None) is not None:
                raise
            skipped.append(f"{path} is corrupt: {getattr(e, 'problem', None) or e}")
            continue
        if skipped:
            log.warning("%s; resuming from the newest complete checkpoint instead: %s (what was trained "
                        "after it is trained again)", "; ".join(skipped), path)
        return state
    skipped += [f"{directory / n} is unreadable" for n in bad if str(directory / n) not in "; ".join(skipped)]
    raise CheckpointError(
        f"no complete checkpoint in {directory} ({'; '.join(skipped)}): to start the run afresh, delete "
        f"{directory}"
    )
