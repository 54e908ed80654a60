"""Pickle-free, atomic, checksummed, schema-versioned checkpoints of a nested state.

tmrl pickled the whole trainer as its checkpoint, so loading one could run arbitrary code and any
refactoring broke old files. Here a checkpoint is data only::

    directory/
      latest                 # text file: the name of the newest complete checkpoint
      <name>/
        manifest.json        # format, schema version, creation time, sha256 + size of each data
                             # file, and the state as JSON with placeholders for tensors/arrays
        tensors.pt           # every torch tensor, one flat {key: tensor} dict (torch.save)
        arrays/<k>.npy       # one file per numpy array (np.save, allow_pickle=False)

What a state may hold: dicts (``str`` keys; int/float/bool/None/tuple keys, e.g. the ``state`` of a
torch optimiser, are stored too), lists, tuples, ``None``, ``bool``, ``int``, ``float`` (nan/inf
included), ``str``, ``bytes``, torch tensors of any device (moved to CPU, strided layout only) and
numpy arrays/scalars of bool, integer, float or complex dtype. Anything else, in particular numpy
object arrays, is refused when saving (:class:`UnsupportedValueError`).

What comes back: mappings come back as plain ``dict`` (an ``OrderedDict`` loses its class, a
module's ``state_dict`` its ``_metadata``, which ``load_state_dict`` does not need); tuples come back
as tuples, namedtuples as plain tuples; tensors come back on the CPU, detached
(``nn.Parameter`` -> plain tensor, no ``requires_grad``), contiguous; the same tensor or array object
appearing twice comes back as one object appearing twice.

Guarantees:

* Loading never executes code: ``torch.load(weights_only=True)``, ``np.load(allow_pickle=False)``,
  JSON for the rest. The size and sha256 of every data file are checked against the manifest before
  it is deserialised; every problem is reported as :class:`CheckpointError` naming the file.
* Saving is atomic: everything is written and fsynced in ``directory/.<name>.tmp-<pid>/``, which is
  then renamed to ``directory/<name>``; only then is ``latest`` replaced (``os.replace``). A crash at
  any point leaves ``latest`` naming a complete checkpoint. Leftovers of crashed saves are cleaned
  up (or, for an interrupted replacement, restored) by the next save.
* One writer per directory at a time (several readers are fine).
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import math
import os
import re
import shutil
import stat
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

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

FORMAT = "relayrl-checkpoint"
SCHEMA_VERSION = 1
_SUPPORTED_SCHEMAS = (1,)

_MANIFEST = "manifest.json"
_TENSORS = "tensors.pt"
_LATEST = "latest"
_CHUNK = 8 << 20  # bytes per read when hashing

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")
_DATA_FILE_RE = re.compile(r"tensors\.pt|arrays/[0-9]{1,9}\.npy")
_LEFTOVER_RE = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old|del)-(?P<pid>[0-9]{1,10})")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_TAG = "$t"
_ARRAY_KINDS = "biufc"


class CheckpointError(Exception):
    """A checkpoint cannot be written or read; the message names the file, the problem and the fix."""


class UnsupportedValueError(CheckpointError, TypeError):
    """The state holds a value that cannot be stored without pickle (raised by ``save_checkpoint``)."""


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


class _HashingWriter:
    """File-like object that hashes and counts the bytes on their way to a real file.

    Large immutable chunks (``np.save`` hands over fresh ``bytes``) are hashed on ``pool``'s
    thread while the main thread writes them and prepares the next one; hashlib and file writes
    release the GIL, so hashing costs little extra wall time.
    """

    _ASYNC_MIN = 1 << 20

    def __init__(self, f, pool: ThreadPoolExecutor | None = None) -> None:
        self._f = f
        self._h = hashlib.sha256()
        self._pool = pool
        self._pending: Future | None = None
        self.size = 0

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def write(self, data) -> int:
        view = memoryview(data)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        self._wait()  # keeps the hash in order and at most one chunk in flight
        if self._pool is not None and isinstance(data, bytes) and view.nbytes >= self._ASYNC_MIN:
            self._pending = self._pool.submit(self._h.update, view)
        else:
            self._h.update(view)
        self._f.write(view)
        self.size += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        self._f.flush()

    def hexdigest(self) -> str:
        self._wait()
        return self._h.hexdigest()


# --------------------------------------------------------------------------------------------------
# encoding the state tree


def _enc_float(x: float) -> Any:
    if math.isfinite(x):
        return x
    return {_TAG: "float", "v": "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}


_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class _Encoder:
    """Turns a state into a JSON tree plus the tensors and arrays it references."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.arrays: list[tuple[str, np.ndarray]] = []
        self._seen: dict[int, Any] = {}  # id(tensor/array) -> placeholder, to keep aliasing
        self._stack: set[int] = set()  # ids of the containers being encoded (cycle detection)

    def encode(self, x: Any, where: str) -> Any:
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, torch.Tensor):
            return self._tensor(x, where)
        if isinstance(x, np.ndarray):
            return self._array(x, where, scalar=False)
        if isinstance(x, np.generic):
            return self._np_scalar(x, where)
        if isinstance(x, int):
            return int(x)
        if isinstance(x, float):
            return _enc_float(float(x))
        if isinstance(x, bytes):
            return {_TAG: "bytes", "b64": base64.b64encode(x).decode("ascii")}
        if isinstance(x, (Mapping, list, tuple)):
            if id(x) in self._stack:
                raise UnsupportedValueError(f"{where}: the state contains a reference cycle")
            self._stack.add(id(x))
            try:
                return self._container(x, where)
            finally:
                self._stack.discard(id(x))
        raise UnsupportedValueError(
            f"{where}: cannot checkpoint a {type(x).__module__}.{type(x).__qualname__} without "
            "pickle; supported are dict, list, tuple, None, bool, int, float, str, bytes, torch "
            "tensors and numeric/bool numpy arrays (convert it, e.g. to a dict of those)"
        )

    def _container(self, x: Any, where: str) -> Any:
        if isinstance(x, Mapping):
            if all(type(k) is str for k in x) and _TAG not in x:
                return {k: self.encode(v, f"{where}[{k!r}]") for k, v in x.items()}
            return {
                _TAG: "dict",
                "items": [[self._key(k, where), self.encode(v, f"{where}[{k!r}]")] for k, v in x.items()],
            }
        items = [self.encode(v, f"{where}[{i}]") for i, v in enumerate(x)]
        return items if isinstance(x, list) else {_TAG: "tuple", "items": items}

    def _key(self, k: Any, where: str) -> Any:
        if k is None or isinstance(k, (bool, str, int, float, np.bool_, np.integer, np.floating)):
            if not (isinstance(k, np.floating) and k.dtype.itemsize > 8):
                return self.encode(k, where)
        if isinstance(k, tuple):
            return {_TAG: "tuple", "items": [self._key(e, where) for e in k]}
        raise UnsupportedValueError(
            f"{where}: dict key {k!r} of type {type(k).__qualname__} is not supported "
            "(use str, int, float, bool, None or tuples of those)"
        )

    def _tensor(self, x: torch.Tensor, where: str) -> Any:
        if id(x) in self._seen:
            return self._seen[id(x)]
        if x.layout != torch.strided or x.is_quantized or x.is_meta:
            raise UnsupportedValueError(
                f"{where}: only dense (strided), non-quantized tensors with data can be checkpointed "
                f"(got layout={x.layout}, quantized={x.is_quantized}, device={x.device}); "
                "convert it first, e.g. with .to_dense()"
            )
        device = str(x.device)
        t = x.detach().to("cpu").resolve_conj().resolve_neg()
        if (
            not t.is_contiguous()
            or t.storage_offset() != 0
            or t.untyped_storage().nbytes() != t.numel() * t.element_size()
        ):
            # torch.save writes whole storages: never let a view drag its base tensor along
            t = t.clone(memory_format=torch.contiguous_format)
        key = f"t{len(self.tensors)}"
        self.tensors[key] = t
        ph = {_TAG: "tensor", "key": key, "dtype": str(t.dtype), "shape": list(t.shape), "device": device}
        self._seen[id(x)] = ph
        return ph

    def _array(self, x: np.ndarray, where: str, scalar: bool) -> Any:
        if not scalar and id(x) in self._seen:
            return self._seen[id(x)]
        if isinstance(x, np.ma.MaskedArray):
            raise UnsupportedValueError(
                f"{where}: masked arrays are not supported; store .data and .mask as two arrays"
            )
        dt = x.dtype
        if dt.kind not in _ARRAY_KINDS or dt.fields is not None or dt.subdtype is not None:
            raise UnsupportedValueError(
                f"{where}: numpy dtype {dt} cannot be checkpointed without pickle; only bool, "
                "integer, float and complex arrays are supported (object arrays in particular are "
                "refused: convert them to a numeric array or a list)"
            )
        rel = f"arrays/{len(self.arrays)}.npy"
        self.arrays.append((rel, x))
        ph: dict[str, Any] = {_TAG: "ndarray", "file": rel, "dtype": dt.str, "shape": list(x.shape)}
        if scalar:
            ph["scalar"] = True
        else:
            self._seen[id(x)] = ph
        return ph

    def _np_scalar(self, x: np.generic, where: str) -> Any:
        dt = x.dtype
        if dt.kind in "biu" or (dt.kind == "f" and dt.itemsize <= 8):
            v = bool(x) if dt.kind == "b" else (int(x) if dt.kind in "iu" else _enc_float(float(x)))
            return {_TAG: "np_scalar", "dtype": dt.str, "v": v}
        return self._array(np.asarray(x), where, scalar=True)  # complex, long double: as a 0-d array


# --------------------------------------------------------------------------------------------------
# decoding


class _Decoder:
    """Rebuilds the state from a verified manifest tree, the loaded tensors and the array files."""

    def __init__(self, ckpt: Path, files: dict, tensors: dict[str, torch.Tensor], mmap_mode: str | None):
        self.ckpt = ckpt
        self.files = files
        self.tensors = tensors
        self.mmap_mode = mmap_mode
        self._arrays: dict[str, np.ndarray] = {}

    def bad(self, problem: str) -> CheckpointError:
        return _corrupt(self.ckpt, problem)

    def decode(self, x: Any, where: str) -> Any:
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, list):
            return [self.decode(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if not isinstance(x, dict):
            raise self.bad(f"unexpected JSON value at {where}")
        tag = x.get(_TAG)
        if tag is None:
            return {k: self.decode(v, f"{where}[{k!r}]") for k, v in x.items()}
        if tag == "float":
            v = x.get("v")
            if v not in _SPECIAL_FLOATS:
                raise self.bad(f"bad float {v!r} at {where}")
            return _SPECIAL_FLOATS[v]
        if tag == "tuple":
            return tuple(self.decode(v, f"{where}[{i}]") for i, v in enumerate(self._list(x, "items", where)))
        if tag == "dict":
            out = {}
            for pair in self._list(x, "items", where):
                if not isinstance(pair, list) or len(pair) != 2:
                    raise self.bad(f"bad dict item at {where}")
                k = self.decode(pair[0], where)
                try:
                    out[k] = self.decode(pair[1], f"{where}[{k!r}]")
                except TypeError as e:  # unhashable key
                    raise self.bad(f"bad dict key at {where}") from e
            return out
        if tag == "bytes":
            try:
                return base64.b64decode(x["b64"], validate=True)
            except (KeyError, TypeError, ValueError) as e:
                raise self.bad(f"bad bytes at {where}") from e
        if tag == "np_scalar":
            dt = self._dtype(x, where)
            v = x.get("v")
            if isinstance(v, dict):
                v = self.decode(v, where)
            if dt.kind not in "biuf" or not isinstance(v, (bool, int, float)):
                raise self.bad(f"bad numpy scalar at {where}")
            return dt.type(v)
        if tag == "tensor":
            return self._tensor(x, where)
        if tag == "ndarray":
            return self._array(x, where)
        raise self.bad(f"unknown entry type {tag!r} at {where}")

    def _list(self, x: dict, key: str, where: str) -> list:
        v = x.get(key)
        if not isinstance(v, list):
            raise self.bad(f"missing {key!r} list at {where}")
        return v

    def _shape(self, x: dict, where: str) -> tuple[int, ...]:
        shape = x.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise self.bad(f"bad shape at {where}")
        return tuple(shape)

    def _dtype(self, x: dict, where: str) -> np.dtype:
        try:
            dt = np.dtype(str(x["dtype"]))
        except (KeyError, TypeError, ValueError) as e:
            raise self.bad(f"bad dtype at {where}") from e
        if dt.kind not in _ARRAY_KINDS or dt.fields is not None or dt.subdtype is not None:
            raise self.bad(f"unsupported dtype {dt} at {where}")
        return dt

    def _tensor(self, x: dict, where: str) -> torch.Tensor:
        key = x.get("key")
        if not isinstance(key, str) or key not in self.tensors:
            raise self.bad(f"{where} refers to tensor {key!r}, which is not in {_TENSORS}")
        t = self.tensors[key]
        if str(t.dtype) != x.get("dtype") or tuple(t.shape) != self._shape(x, where):
            raise self.bad(
                f"tensor {key!r} at {where} is {t.dtype}{list(t.shape)}, the manifest says "
                f"{x.get('dtype')}{x.get('shape')}"
            )
        return t

    def _array(self, x: dict, where: str) -> Any:
        rel = x.get("file")
        if not isinstance(rel, str) or rel not in self.files or not rel.startswith("arrays/"):
            raise self.bad(f"{where} refers to array file {rel!r}, which the manifest does not list")
        dt, shape = self._dtype(x, where), self._shape(x, where)
        if rel not in self._arrays:
            path = self.ckpt / rel
            try:
                arr = np.load(path, allow_pickle=False, mmap_mode=self.mmap_mode)
            except Exception as e:  # noqa: BLE001 - any library error means a bad file
                raise _corrupt(self.ckpt, f"{path} is not a readable pickle-free .npy file ({e})") from e
            if not isinstance(arr, np.ndarray):
                raise _corrupt(self.ckpt, f"{path} is not a single .npy array")
            self._arrays[rel] = arr
        arr = self._arrays[rel]
        if arr.dtype != dt or arr.shape != shape:
            raise _corrupt(
                self.ckpt, f"{self.ckpt / rel} holds {arr.dtype}{list(arr.shape)}, the manifest says {dt}{list(shape)}"
            )
        return arr[()] if x.get("scalar") is True else arr


# --------------------------------------------------------------------------------------------------
# manifest reading and verification


def _corrupt(ckpt: Path, problem: str) -> CheckpointError:
    err = CheckpointError(
        f"corrupt or unreadable checkpoint {ckpt}: {problem}. Delete it or resume from an older one: {ckpt}"
    )
    err.problem = problem  # type: ignore[attr-defined]
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
        raise CheckpointError(
            f"checkpoint {ckpt} has schema version {version!r}, this relayrl reads "
            f"{list(_SUPPORTED_SCHEMAS)}; use the relayrl version that wrote it, or resume from an "
            f"older checkpoint: {ckpt}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise _corrupt(ckpt, f"{mpath} has no 'files' table")
    for rel, info in files.items():
        if not _DATA_FILE_RE.fullmatch(rel):
            raise _corrupt(ckpt, f"{mpath} lists an unexpected file {rel!r} (only {_TENSORS} and arrays/<k>.npy)")
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


def _load_tensors(ckpt: Path, files: dict) -> dict[str, torch.Tensor]:
    if _TENSORS not in files:
        return {}
    path = ckpt / _TENSORS
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, ... all mean a bad file
        raise _corrupt(ckpt, f"{path} is not a weights-only tensor file ({type(e).__name__})") from e
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and type(v) is torch.Tensor for k, v in tensors.items()
    ):
        raise _corrupt(ckpt, f"{path} does not hold a flat dict of tensors")
    return tensors


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
        if enc.arrays:
            (tmp / "arrays").mkdir()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="relayrl-ckpt-sha") as pool:
            for rel, arr in enc.arrays:
                with open(tmp / rel, "wb") as f:
                    w = _HashingWriter(f, pool)
                    try:
                        np.save(w, arr, allow_pickle=False)
                    finally:
                        digest = w.hexdigest()
                    f.flush()
                    os.fsync(f.fileno())
                files[rel] = {"bytes": w.size, "sha256": digest}
        if enc.tensors:
            torch.save(enc.tensors, tmp / _TENSORS)
            size, digest = _sha256_file(tmp / _TENSORS, fsync=True)
            files[_TENSORS] = {"bytes": size, "sha256": digest}
        now = time.time()
        manifest = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "sequence": sequence,
            "created": _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(timespec="milliseconds"),
            "created_unix": now,
            "torch_version": torch.__version__,
            "numpy_version": np.__version__,
            "files": files,
            "state": tree,
        }
        data = json.dumps(manifest, allow_nan=False, indent=1, ensure_ascii=False).encode("utf-8")
        with open(tmp / _MANIFEST, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if enc.arrays:
            _fsync_dir(tmp / "arrays")
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

    Every data file's size and sha256 are checked before it is read; tensors come back on the CPU.
    ``mmap_mode='r'`` (read-only) or ``'c'`` (copy-on-write) memory-maps the numpy arrays instead of
    reading them into memory. Raises :class:`CheckpointError` on any problem.
    """
    if mmap_mode not in (None, "r", "c"):
        raise ValueError(f"mmap_mode must be None, 'r' or 'c' (never write into a checkpoint), not {mmap_mode!r}")
    ckpt = Path(path)
    if ckpt.name == _MANIFEST and ckpt.is_file():
        ckpt = ckpt.parent
    manifest = _read_manifest(ckpt)
    files = manifest["files"]
    _verify_files(ckpt, files)
    tensors = _load_tensors(ckpt, files)
    try:
        state = _Decoder(ckpt, files, tensors, mmap_mode).decode(manifest["state"], "state")
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


def load_latest(directory: str | os.PathLike, *, mmap_mode: str | None = None) -> dict | None:
    """Load the latest checkpoint of ``directory``; ``None`` if the directory holds no checkpoint."""
    path = latest_checkpoint(directory)
    if path is None:
        return None
    try:
        return load_checkpoint(path, mmap_mode=mmap_mode)
    except CheckpointError as e:
        directory = Path(directory)
        problem = getattr(e, "problem", None) or str(e)
        raise CheckpointError(
            f"the latest checkpoint {path} is corrupt: {problem}. Remove it, or write the name of an "
            f"older checkpoint into {directory / _LATEST} to resume from that one; other checkpoints "
            f"here: {_others(directory, path.name)}"
        ) from e
