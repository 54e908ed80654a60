"""State tree <-> (JSON tree, safetensors payload) for :mod:`relayrl.checkpoint`.

Only the checkpoint module uses this; the layout and the guarantees are described there. The
encoder turns a state into a JSON-able tree whose tensors and arrays are placeholders
(``{"$t": "tensor" | "ndarray", "key": ..., "dtype": ..., "shape": ...}``) and collects the
objects; :func:`write_payload` writes them, without copying contiguous data, into
``tensors.safetensors`` (torch tensors) and ``arrays.safetensors`` (numpy arrays). The decoder
rebuilds the state from a verified manifest, reading the payload only through ``safetensors``
(a JSON header and raw little-endian bytes: nothing in a payload file is ever executed) or, for
``mmap_mode``, through ``np.memmap`` at the offsets of that header.

A dtype that safetensors cannot name (complex128, long double, torch complex32, sub-byte floats,
big-endian numpy arrays, anything on a big-endian host) is stored as its raw bytes, viewed as
unsigned integers (``uint8`` for tensors; for arrays of the dtype's alignment, up to ``uint64``, so
that memory-mapped arrays are aligned); the placeholder then carries ``"stored_as"`` next to the real
dtype, and the loader views the bytes back.
"""
from __future__ import annotations

import base64
import json
import math
import struct
import sys
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import TensorSpec, safe_open, serialize_file

TAG = "$t"
TENSORS_FILE = "tensors.safetensors"
ARRAYS_FILE = "arrays.safetensors"
_ARRAY_KINDS = "biufc"
_LITTLE = sys.byteorder == "little"
# dtypes stored under their own name (everything else as raw bytes, see the module docstring)
_NATIVE_NP = frozenset(
    "bool int8 uint8 int16 uint16 int32 uint32 int64 uint64 float16 float32 float64 complex64".split()
)
_NATIVE_TORCH = _NATIVE_NP | {"bfloat16", "float8_e4m3fn", "float8_e5m2"}
_VIEWS = {1: "uint8", 2: "uint16", 4: "uint32", 8: "uint64"}
_TORCH_DTYPES = {str(d): d for d in vars(torch).values() if isinstance(d, torch.dtype)}
_MAX_HEADER = 100_000_000  # safetensors' own limit


class CheckpointError(Exception):
    """A checkpoint cannot be written or read; the message names the file, the problem and the fix."""


class UnsupportedValueError(CheckpointError, TypeError):
    """The state holds a value that cannot be stored without pickle (raised by ``save_checkpoint``)."""


CheckpointError.__module__ = UnsupportedValueError.__module__ = "relayrl.checkpoint"


def corrupt(ckpt: Path, problem: str) -> CheckpointError:
    err = CheckpointError(
        f"corrupt or unreadable checkpoint {ckpt}: {problem}. Delete it or resume from an older one: {ckpt}"
    )
    err.problem = problem  # type: ignore[attr-defined]
    return err


def _storage(name: str, native: frozenset, align: int, shape: tuple, nbytes: int) -> tuple[str, list, str | None]:
    """(safetensors dtype, stored shape, ``stored_as`` or None) of a C-contiguous buffer."""
    if _LITTLE and name in native:
        return name, list(shape), None
    return _VIEWS[align], [nbytes // align], _VIEWS[align]


# --------------------------------------------------------------------------------------------------
# encoding


def _enc_float(x: float) -> Any:
    if math.isfinite(x):
        return x
    return {TAG: "float", "v": "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}


_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class Encoder:
    """Turns a state into a JSON tree plus the tensors and arrays it references."""

    def __init__(self) -> None:
        # key -> (object kept alive until written, safetensors dtype, stored shape, data_ptr, nbytes)
        self.tensors: dict[str, tuple[Any, str, list, int, int]] = {}
        self.arrays: dict[str, tuple[Any, str, list, int, int]] = {}
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
            return {TAG: "bytes", "b64": base64.b64encode(x).decode("ascii")}
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
            if all(type(k) is str for k in x) and TAG not in x:
                return {k: self.encode(v, f"{where}[{k!r}]") for k, v in x.items()}
            return {
                TAG: "dict",
                "items": [[self._key(k, where), self.encode(v, f"{where}[{k!r}]")] for k, v in x.items()],
            }
        items = [self.encode(v, f"{where}[{i}]") for i, v in enumerate(x)]
        return items if isinstance(x, list) else {TAG: "tuple", "items": items}

    def _key(self, k: Any, where: str) -> Any:
        if k is None or isinstance(k, (bool, str, int, float, np.bool_, np.integer, np.floating)):
            if not (isinstance(k, np.floating) and k.dtype.itemsize > 8):
                return self.encode(k, where)
        if isinstance(k, tuple):
            return {TAG: "tuple", "items": [self._key(e, where) for e in k]}
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
        if not t.is_contiguous():
            t = t.contiguous()  # the only copy; a contiguous view is written from its own bytes
        nbytes = t.numel() * t.element_size()
        # raw bytes as uint8 (torch < 2.3 has no uint16..uint64; tensors are read into fresh memory)
        st, shape, view = _storage(str(t.dtype).removeprefix("torch."), _NATIVE_TORCH, 1, t.shape, nbytes)
        key = f"t{len(self.tensors)}"
        self.tensors[key] = (t, st, shape, t.data_ptr(), nbytes)
        ph = {TAG: "tensor", "key": key, "dtype": str(t.dtype), "shape": list(t.shape), "device": device}
        if view:
            ph["stored_as"] = view
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
        c = x if x.flags.c_contiguous else x.copy(order="C")  # the only copy (Fortran order, views)
        little = dt.byteorder in "<|" or (dt.byteorder == "=" and _LITTLE)
        name = dt.name if little else "big-endian"
        # raw bytes as unsigned integers of the dtype's alignment, so that np.memmap gets aligned data
        st, shape, view = _storage(name, _NATIVE_NP, math.gcd(dt.itemsize, 8), c.shape, c.nbytes)
        key = f"a{len(self.arrays)}"
        self.arrays[key] = (c, st, shape, c.ctypes.data, c.nbytes)
        ph: dict[str, Any] = {TAG: "ndarray", "key": key, "dtype": dt.str, "shape": list(x.shape)}
        if view:
            ph["stored_as"] = view
        if scalar:
            ph["scalar"] = True
        else:
            self._seen[id(x)] = ph
        return ph

    def _np_scalar(self, x: np.generic, where: str) -> Any:
        dt = x.dtype
        if dt.kind in "biu" or (dt.kind == "f" and dt.itemsize <= 8):
            v = bool(x) if dt.kind == "b" else (int(x) if dt.kind in "iu" else _enc_float(float(x)))
            return {TAG: "np_scalar", "dtype": dt.str, "v": v}
        return self._array(np.asarray(x), where, scalar=True)  # complex, long double: as a 0-d array


def write_payload(enc: Encoder, directory: Path, metadata: dict[str, str]) -> list[str]:
    """Write the encoder's tensors and arrays into ``directory``; the names of the files written."""
    written = []
    for rel, items in ((TENSORS_FILE, enc.tensors), (ARRAYS_FILE, enc.arrays)):
        if items:
            specs = {k: TensorSpec(dtype=st, shape=shape, data_ptr=ptr, data_len=n)
                     for k, (_, st, shape, ptr, n) in items.items()}
            serialize_file(specs, directory / rel, metadata=metadata)  # `enc` keeps the buffers alive
            written.append(rel)
    return written


# --------------------------------------------------------------------------------------------------
# decoding


class Decoder:
    """Rebuilds the state from a verified manifest tree and the payload files (a context manager)."""

    def __init__(self, ckpt: Path, files: dict, mmap_mode: str | None):
        self.ckpt = ckpt
        self.files = files
        self.mmap_mode = mmap_mode
        self._stack = ExitStack()
        self._handles: dict[str, tuple[Any, set]] = {}
        self._header: tuple[int, dict] | None = None
        self._loaded: dict[tuple[str, str], Any] = {}

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def bad(self, problem: str) -> CheckpointError:
        return corrupt(self.ckpt, problem)

    def decode(self, x: Any, where: str) -> Any:
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, list):
            return [self.decode(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if not isinstance(x, dict):
            raise self.bad(f"unexpected JSON value at {where}")
        tag = x.get(TAG)
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
        if tag in ("tensor", "ndarray"):
            key = x.get("key")
            rel = TENSORS_FILE if tag == "tensor" else ARRAYS_FILE
            ph = {k: v for k, v in x.items() if k != "scalar"}
            if not isinstance(key, str) or (rel, key) not in self._loaded:
                load = self._tensor if tag == "tensor" else self._array
                self._loaded[(rel, key)] = (ph, load(x, key, self._handle(rel, key, where), where))
            first, obj = self._loaded[(rel, key)]
            if ph != first:  # one object appearing twice has one placeholder
                raise self.bad(f"{where} describes {key!r} differently from an earlier reference to it")
            return obj[()] if tag == "ndarray" and x.get("scalar") is True else obj
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

    def _stored_as(self, x: dict, where: str) -> str | None:
        view = x.get("stored_as")
        if view is not None and view not in _VIEWS.values():
            raise self.bad(f"bad 'stored_as' {view!r} at {where}")
        return view

    def _handle(self, rel: str, key: Any, where: str) -> Any:
        """The open safetensors file ``rel``, after checking that it holds ``key``."""
        path = self.ckpt / rel
        if rel not in self.files:
            raise self.bad(f"{where} refers to {key!r} in {rel}, which the manifest does not list")
        if rel not in self._handles:
            framework = "pt" if rel == TENSORS_FILE else "numpy"
            # "pread": tensors get memory of their own, never a mapping of the file
            backend = "pread" if rel == TENSORS_FILE else "mmap"
            try:
                handle = self._stack.enter_context(safe_open(path, framework, backend=backend))
                self._handles[rel] = handle, set(handle.keys())
            except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...: a bad file
                raise self.bad(f"{path} is not a valid safetensors file ({type(e).__name__}: {e})") from e
        handle, keys = self._handles[rel]
        if not isinstance(key, str) or key not in keys:
            raise self.bad(f"{where} refers to {key!r}, which {path} does not list")
        return handle

    def _read(self, handle: Any, key: str, rel: str) -> Any:
        try:
            return handle.get_tensor(key)
        except Exception as e:  # noqa: BLE001 - any library error means a bad file
            raise self.bad(f"cannot read {key!r} from {self.ckpt / rel} ({type(e).__name__}: {e})") from e

    def _mismatch(self, key: str, where: str, got: str, want: str) -> CheckpointError:
        return self.bad(f"{key!r} at {where} is {got}, the manifest says {want}")

    def _tensor(self, x: dict, key: str, handle: Any, where: str) -> torch.Tensor:
        shape, view = self._shape(x, where), self._stored_as(x, where)
        dtype = _TORCH_DTYPES.get(x.get("dtype"))  # type: ignore[arg-type]
        want_dtype = dtype if view is None else _TORCH_DTYPES.get(f"torch.{view}")
        if dtype is None or want_dtype is None:
            raise self.bad(f"bad tensor dtype {x.get('dtype')!r} (stored as {view!r}) at {where}")
        t = self._read(handle, key, TENSORS_FILE)
        nbytes = math.prod(shape) * dtype.itemsize
        want_shape = shape if view is None else (nbytes // want_dtype.itemsize,)
        if t.dtype != want_dtype or tuple(t.shape) != want_shape or nbytes % want_dtype.itemsize:
            raise self._mismatch(key, where, f"{t.dtype}{list(t.shape)}", f"{dtype}{list(shape)}")
        return t if view is None else t.view(dtype).reshape(shape)

    def _array(self, x: dict, key: str, handle: Any, where: str) -> np.ndarray:
        dt, shape, view = self._dtype(x, where), self._shape(x, where), self._stored_as(x, where)
        want_dt = dt if view is None else np.dtype(view)
        nbytes = math.prod(shape) * dt.itemsize
        want_shape = shape if view is None else (nbytes // want_dt.itemsize,)
        try:
            info = handle.get_slice(key)
            got_dtype, got_shape = info.get_dtype(), tuple(info.get_shape())
        except Exception as e:  # noqa: BLE001 - any library error means a bad file
            raise self.bad(f"cannot read {key!r} from {self.ckpt / ARRAYS_FILE} ({type(e).__name__}: {e})") from e
        try:
            st_dtype = TensorSpec(dtype=want_dt.name, shape=[0], data_ptr=0, data_len=0).dtype
        except Exception:  # noqa: BLE001 - a dtype safetensors cannot name: never stored as such
            st_dtype = None
        if got_dtype != st_dtype or got_shape != want_shape or nbytes % want_dt.itemsize or not want_dt.isnative:
            raise self._mismatch(key, where, f"{got_dtype}{list(got_shape)}", f"{dt}{list(shape)}")
        if self.mmap_mode is None or nbytes == 0:
            arr = self._read(handle, key, ARRAYS_FILE)
            return arr if view is None else arr.view(dt).reshape(shape)
        path = self.ckpt / ARRAYS_FILE
        try:
            if self._header is None:
                self._header = _read_header(path)
            start, (begin, end) = self._header[0], self._header[1][key]["data_offsets"]
            if not (type(begin) is int and type(end) is int and 0 <= begin) or end - begin != nbytes:
                raise ValueError(f"{key!r} has {end - begin} bytes, not {nbytes}")
            return np.memmap(path, dtype=dt, mode=self.mmap_mode, offset=start + begin, shape=shape)
        except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
            raise self.bad(f"cannot memory-map {key!r} of {path} ({type(e).__name__}: {e})") from e


def _read_header(path: Path) -> tuple[int, dict]:
    """(start of the data section, header) of a safetensors file that safe_open has accepted."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _MAX_HEADER:
            raise ValueError("header too large")
        return 8 + n, json.loads(f.read(n).decode("utf-8"))
