"""The wire format: a msgpack header frame followed by raw array frames. No pickle, ever.

A message is a list of frames ``[header, array_0, array_1, ...]``. The header is a msgpack map::

    {"v": 1, "kind": "buffer" | "weights" | "control" | "hello",
     "arrays": [[name, dtype, shape], ...],      # one descriptor per array frame, in frame order
     ...kind-specific fields...}

Kind-specific fields:

* ``buffer``  (worker -> trainer): ``worker_id`` (str), ``seq`` (int >= 0), ``policy_version`` (int >= 0),
  ``episodes`` (list of ``[return: finite float, length: int >= 0, test: bool]``); the arrays are
  exactly the six transition columns of :class:`~relayrl.buffer.Buffer`.
* ``weights`` (trainer -> workers): ``version`` (int >= 0); the arrays are the actor's weights.
* ``control`` (trainer -> workers): ``allow`` ({worker_id: int >= 0}), ``sessions`` ({worker_id: str}),
  ``default`` (int >= 0 or None), optionally ``end`` (bool: true once the trainer has finished the
  run, so workers stop); no arrays. See :mod:`relayrl.transport.credits` for the meaning. (A peer
  of an earlier release refuses the ``end`` field as unknown: it drops and logs that message.)
* ``hello``   (worker -> trainer, first message of a worker process): ``worker_id``, ``session`` (str).

Each array frame holds the array's bytes, C order, little-endian. ``dtype`` is a name from
:data:`WIRE_DTYPES` (an allow-list: no objects, strings, structured or datetime types), ``shape`` a list
of non-negative ints whose product times the item size must equal the frame length.

Decoding is strict: anything unexpected (unknown version, kind or field, a wrong type, a string too
long, too many or too few frames, a size mismatch, a message above the size limit) raises
:class:`CodecError` naming the problem, so a receiver can drop and log the message and carry on.
Arrays are decoded zero-copy with ``np.frombuffer`` (read-only views on the received frames) unless
``copy=True`` is asked for.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence, Union

import msgpack
import numpy as np

from ..buffer import TRANSITION_FIELDS, Buffer, EpisodeStats

FORMAT_VERSION = 1
KINDS = ("buffer", "weights", "control", "hello")

#: dtype names allowed on the wire, and the exact (little-endian) numpy dtype each one means.
WIRE_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(code) for name, code in {
        "bool": "|b1", "int8": "|i1", "uint8": "|u1",
        "int16": "<i2", "uint16": "<u2", "float16": "<f2",
        "int32": "<i4", "uint32": "<u4", "float32": "<f4",
        "int64": "<i8", "uint64": "<u8", "float64": "<f8",
    }.items()
}

MiB = 1 << 20
DEFAULT_MAX_BUFFER_BYTES = 64 * MiB
DEFAULT_MAX_WEIGHTS_BYTES = 1024 * MiB
DEFAULT_MAX_CONTROL_BYTES = 4 * MiB
MAX_HEADER_BYTES = 16 * MiB   # a header describes arrays and episodes; it is never this big honestly
MAX_ARRAYS = 100_000
MAX_NDIM = 32
MAX_NAME_LEN = 512            # array names (state-dict keys)
MAX_WORKER_ID_LEN = 128
MAX_SESSION_LEN = 64
MAX_EPISODES = 1_000_000
MAX_WORKERS_IN_CONTROL = 100_000

Frame = Union[bytes, bytearray, memoryview, Any]  # anything with the buffer protocol (zmq.Frame too)

_FIELDS = {  # kind -> (required fields, optional fields), beyond "v" and "kind"
    "buffer": ({"arrays", "worker_id", "seq", "policy_version", "episodes"}, set()),
    "weights": ({"arrays", "version"}, set()),
    "control": ({"allow", "default"}, {"sessions", "end"}),
    "hello": ({"worker_id", "session"}, set()),
}


class CodecError(ValueError):
    """A message that does not follow the wire format. ``sender`` is the worker id claimed in the
    header when it could be read (for logs; it is not authenticated by the codec)."""

    def __init__(self, message: str, sender: str | None = None):
        super().__init__(message)
        self.sender = sender


# --- encoding ------------------------------------------------------------------------------------
def _wire_array(name: str, value: Any) -> tuple[list, memoryview]:
    """The descriptor and the raw bytes (zero-copy when possible) of one array."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LEN:
        raise CodecError(f"array names must be non-empty str of at most {MAX_NAME_LEN} chars, got {name!r}")
    array = np.asarray(value)
    wire_name = array.dtype.name if array.dtype.kind in "biuf" else None
    if wire_name not in WIRE_DTYPES:
        raise CodecError(f"array {name!r} has dtype {array.dtype.str!r}, which cannot travel; allowed: "
                         f"{', '.join(WIRE_DTYPES)}")
    if array.ndim > MAX_NDIM:
        raise CodecError(f"array {name!r} has {array.ndim} dimensions (at most {MAX_NDIM})")
    wire_dtype = WIRE_DTYPES[wire_name]
    if array.dtype != wire_dtype or not array.flags.c_contiguous:  # e.g. big-endian or strided
        array = np.array(array, dtype=wire_dtype, order="C")
    raw = memoryview(array.reshape(-1).view(np.uint8))  # zero-copy view on the array's bytes
    return [name, wire_name, list(array.shape)], raw


def _pack(header: dict, arrays: Iterable[tuple[str, Any]] = ()) -> list[Frame]:
    descriptors, frames = [], []
    for name, value in arrays:
        descriptor, raw = _wire_array(name, value)
        descriptors.append(descriptor)
        frames.append(raw)
    if descriptors or "arrays" in _FIELDS[header["kind"]][0]:
        header = {**header, "arrays": descriptors}
    return [msgpack.packb({"v": FORMAT_VERSION, **header}, use_bin_type=True), *frames]


def encode_buffer(buffer: Buffer) -> list[Frame]:
    """Frames of one :class:`Buffer` (validated first). Array frames are views on the buffer's
    arrays when they are already contiguous little-endian: do not modify them until sent."""
    try:
        buffer.validate()
    except ValueError as exc:
        raise CodecError(f"cannot encode an invalid buffer: {exc}") from exc
    header = {
        "kind": "buffer",
        "worker_id": _check_str(buffer.worker_id, "worker_id", MAX_WORKER_ID_LEN),
        "seq": _check_count(buffer.seq, "seq"),
        "policy_version": _check_count(buffer.policy_version, "policy_version"),
        "episodes": [[float(e.episode_return), int(e.length), bool(e.test)] for e in buffer.episodes],
    }
    _check_episodes(header["episodes"])
    return _pack(header, ((name, getattr(buffer, name)) for name in TRANSITION_FIELDS))


def encode_weights(version: int, weights: dict[str, np.ndarray]) -> list[Frame]:
    """Frames of a versioned weights dictionary (``ActorModule.weights()``)."""
    if not isinstance(weights, dict):
        raise CodecError(f"weights must be a dict of arrays, got {type(weights).__name__}")
    return _pack({"kind": "weights", "version": _check_count(version, "version")}, weights.items())


def encode_control(message: dict) -> list[Frame]:
    """Frames of a control message ``{"allow": {...}, "default": int | None, "sessions": {...}}``
    (and ``"end": True`` once the run is over)."""
    _check_control(message)
    return _pack({"kind": "control", **message})


def encode_hello(worker_id: str, session: str) -> list[Frame]:
    """Frames of the hello a worker process sends first (starts a new accounting session)."""
    return _pack({"kind": "hello", "worker_id": _check_str(worker_id, "worker_id", MAX_WORKER_ID_LEN),
                  "session": _check_str(session, "session", MAX_SESSION_LEN)})


# --- decoding ------------------------------------------------------------------------------------
def _check_str(value: Any, what: str, max_len: int) -> str:
    if type(value) is not str:
        raise CodecError(f"{what} must be a str, got {type(value).__name__}")
    if len(value) > max_len:
        raise CodecError(f"{what} is {len(value)} chars long (at most {max_len})")
    return value


def _check_count(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:  # bool is an int subclass: refused by the type() test
        raise CodecError(f"{what} must be a non-negative int, got {value!r:.50}")
    return value


def _check_episodes(episodes: Any) -> list[EpisodeStats]:
    if type(episodes) is not list or len(episodes) > MAX_EPISODES:
        raise CodecError(f"episodes must be a list of at most {MAX_EPISODES} entries")
    out = []
    for i, entry in enumerate(episodes):
        if type(entry) is not list or len(entry) != 3:
            raise CodecError(f"episodes[{i}] must be [return, length, test], got {entry!r:.80}")
        ret, length, test = entry
        if type(ret) not in (float, int) or not math.isfinite(ret):
            raise CodecError(f"episodes[{i}] return must be a finite number, got {ret!r:.50}")
        _check_count(length, f"episodes[{i}] length")
        if type(test) is not bool:
            raise CodecError(f"episodes[{i}] test flag must be a bool, got {test!r:.50}")
        out.append(EpisodeStats(float(ret), length, test))
    return out


def _check_control(message: Any) -> dict:
    if type(message) is not dict:
        raise CodecError(f"a control message must be a dict, got {type(message).__name__}")
    unknown = set(message) - {"allow", "default", "sessions", "end"}
    if unknown or not {"allow", "default"} <= set(message):
        raise CodecError(f"a control message has exactly 'allow', 'default' and optionally 'sessions' "
                         f"and 'end'; got fields {sorted(map(str, message))}")
    if "end" in message and type(message["end"]) is not bool:
        raise CodecError(f"control 'end' must be a bool, got {message['end']!r:.50}")
    allow, default = message["allow"], message["default"]
    sessions = message.get("sessions", {})
    for name, mapping in (("allow", allow), ("sessions", sessions)):
        if type(mapping) is not dict or len(mapping) > MAX_WORKERS_IN_CONTROL:
            raise CodecError(f"control {name!r} must be a dict of at most {MAX_WORKERS_IN_CONTROL} entries")
    for worker_id, total in allow.items():
        _check_str(worker_id, "control worker id", MAX_WORKER_ID_LEN)
        _check_count(total, f"control allow[{worker_id!r}]")
    for worker_id, session in sessions.items():
        _check_str(worker_id, "control worker id", MAX_WORKER_ID_LEN)
        _check_str(session, "control session", MAX_SESSION_LEN)
    if default is not None:
        _check_count(default, "control default")
    checked = {"allow": dict(allow), "sessions": dict(sessions), "default": default}
    if "end" in message:
        checked["end"] = message["end"]
    return checked


def _as_view(frame: Frame) -> memoryview:
    try:
        view = memoryview(frame)
    except TypeError as exc:
        raise CodecError(f"a frame must be bytes-like, got {type(frame).__name__}") from exc
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _read_header(view: memoryview) -> dict:
    if len(view) > MAX_HEADER_BYTES:
        raise CodecError(f"header of {len(view)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(view, raw=False, strict_map_key=True, use_list=True,
                                 max_str_len=len(view), max_bin_len=0, max_ext_len=0,
                                 max_array_len=len(view), max_map_len=len(view))
    except Exception as exc:  # msgpack raises several types (ValueError, ExtraData, StackError...)
        raise CodecError(f"header is not valid msgpack: {type(exc).__name__}: {exc}") from None
    if type(header) is not dict:
        raise CodecError(f"header must be a msgpack map, got {type(header).__name__}")
    return header


def _decode(frames: Sequence[Frame], max_bytes: dict[str, int], copy: bool) -> tuple[str, Any]:
    """Validate a message of one of the kinds in ``max_bytes``; return ``(kind, payload)``."""
    if isinstance(frames, (bytes, bytearray, memoryview, str)) or not hasattr(frames, "__len__"):
        raise CodecError("a message must be a list of frames")
    if not 1 <= len(frames) <= MAX_ARRAYS + 1:
        raise CodecError(f"a message has 1 to {MAX_ARRAYS + 1} frames, got {len(frames)}")
    views = [_as_view(f) for f in frames]
    total = sum(len(v) for v in views)
    if total > max(max_bytes.values()):
        raise CodecError(f"message of {total} bytes exceeds the limit of {max(max_bytes.values())}")
    header = _read_header(views[0])
    try:
        kind, arrays = _decode_header(header, views, max_bytes, total, copy)
        return kind, _BUILDERS[kind](header, arrays)
    except CodecError as exc:
        sender = header.get("worker_id")
        exc.sender = sender if type(sender) is str and len(sender) <= MAX_WORKER_ID_LEN else None
        raise


def _decode_header(header: dict, views: list[memoryview], max_bytes: dict[str, int], total: int,
                   copy: bool) -> tuple[str, list]:
    version = header.get("v")
    if version != FORMAT_VERSION or type(version) is not int:
        raise CodecError(f"unsupported format version {version!r:.40} (this side speaks {FORMAT_VERSION})")
    kind = header.get("kind")
    if type(kind) is not str or kind not in max_bytes:
        raise CodecError(f"unexpected message kind {kind!r:.40} (expected one of {sorted(max_bytes)})")
    if total > max_bytes[kind]:
        raise CodecError(f"{kind} message of {total} bytes exceeds the limit of {max_bytes[kind]}")
    required, optional = _FIELDS[kind]
    fields = set(header) - {"v", "kind"}
    unknown, missing = fields - required - optional, required - fields
    if unknown or missing:
        raise CodecError(f"{kind} header: unknown fields {sorted(map(str, unknown))}, "
                         f"missing fields {sorted(missing)}")
    descriptors = header.get("arrays", [])
    if type(descriptors) is not list:
        raise CodecError("'arrays' must be a list of [name, dtype, shape]")
    if len(descriptors) != len(views) - 1:
        raise CodecError(f"header describes {len(descriptors)} arrays but {len(views) - 1} array "
                         "frames came")
    arrays = [_decode_array(d, v, max_bytes[kind], copy) for d, v in zip(descriptors, views[1:])]
    return kind, arrays


def _decode_array(descriptor: Any, view: memoryview, max_bytes: int, copy: bool) -> tuple[str, np.ndarray]:
    if type(descriptor) is not list or len(descriptor) != 3:
        raise CodecError(f"an array descriptor must be [name, dtype, shape], got {descriptor!r:.80}")
    name, dtype_name, shape = descriptor
    _check_str(name, "array name", MAX_NAME_LEN)
    if type(dtype_name) is not str or dtype_name not in WIRE_DTYPES:
        raise CodecError(f"array {name!r}: dtype {dtype_name!r:.40} is not allowed "
                         f"(allowed: {', '.join(WIRE_DTYPES)})")
    if type(shape) is not list or len(shape) > MAX_NDIM:
        raise CodecError(f"array {name!r}: shape must be a list of at most {MAX_NDIM} ints")
    for dim in shape:
        if type(dim) is not int or not 0 <= dim <= max_bytes:
            raise CodecError(f"array {name!r}: shape {shape!r:.80} must hold ints in [0, {max_bytes}]")
    dtype = WIRE_DTYPES[dtype_name]
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(view):
        raise CodecError(f"array {name!r}: shape {shape} x {dtype.itemsize} bytes = {expected} bytes, "
                         f"but its frame holds {len(view)} bytes")
    array = np.frombuffer(view, dtype=dtype).reshape(shape)
    if dtype.kind == "b" and array.size and array.view(np.uint8).max() > 1:
        raise CodecError(f"array {name!r}: bool bytes must be 0 or 1")
    return name, array.copy() if copy else array


def decode_buffer(frames: Sequence[Frame], max_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
                  copy: bool = False) -> Buffer:
    """A validated :class:`Buffer` from frames; raises :class:`CodecError` on anything unexpected."""
    return _decode(frames, {"buffer": max_bytes}, copy)[1]


def decode_weights(frames: Sequence[Frame], max_bytes: int = DEFAULT_MAX_WEIGHTS_BYTES,
                   copy: bool = False) -> tuple[int, dict[str, np.ndarray]]:
    """``(version, {name: array})`` from frames; raises :class:`CodecError` on anything unexpected."""
    return _decode(frames, {"weights": max_bytes}, copy)[1]


def decode_control(frames: Sequence[Frame], max_bytes: int = DEFAULT_MAX_CONTROL_BYTES) -> dict:
    """``{"allow": {worker_id: int}, "sessions": {worker_id: str}, "default": int | None}``."""
    return _decode(frames, {"control": max_bytes}, False)[1]


def decode_hello(frames: Sequence[Frame], max_bytes: int = DEFAULT_MAX_CONTROL_BYTES) -> tuple[str, str]:
    """``(worker_id, session)`` from a hello message."""
    return _decode(frames, {"hello": max_bytes}, False)[1]


def decode_message(frames: Sequence[Frame], max_bytes: dict[str, int], copy: bool = False
                   ) -> tuple[str, Any]:
    """Decode a message of any kind listed in ``max_bytes`` (kind -> size limit); return
    ``(kind, payload)`` where the payload is what the matching ``decode_*`` function returns."""
    unknown = set(max_bytes) - set(KINDS)
    if unknown or not max_bytes:
        raise ValueError(f"max_bytes must map message kinds {KINDS} to limits; unknown: {sorted(unknown)}")
    return _decode(frames, max_bytes, copy)


# --- payload builders (run on a header already checked for version, kind, fields and arrays) ----
def _buffer_from(header: dict, arrays: list) -> Buffer:
    columns = dict(arrays)
    if len(columns) != len(arrays) or set(columns) != set(TRANSITION_FIELDS):
        raise CodecError(f"a buffer carries exactly the arrays {list(TRANSITION_FIELDS)}, got "
                         f"{[name for name, _ in arrays]}")
    buffer = Buffer(**columns, episodes=_check_episodes(header["episodes"]),
                    worker_id=_check_str(header["worker_id"], "worker_id", MAX_WORKER_ID_LEN),
                    seq=_check_count(header["seq"], "seq"),
                    policy_version=_check_count(header["policy_version"], "policy_version"))
    try:
        return buffer.validate()
    except ValueError as exc:
        raise CodecError(f"inconsistent buffer: {exc}") from None


def _weights_from(header: dict, arrays: list) -> tuple[int, dict[str, np.ndarray]]:
    weights = dict(arrays)
    if len(weights) != len(arrays):
        raise CodecError("a weights message names an array twice")
    return _check_count(header["version"], "version"), weights


def _control_from(header: dict, arrays: list) -> dict:
    return _check_control({k: v for k, v in header.items() if k not in ("v", "kind")})


def _hello_from(header: dict, arrays: list) -> tuple[str, str]:
    return (_check_str(header["worker_id"], "worker_id", MAX_WORKER_ID_LEN),
            _check_str(header["session"], "session", MAX_SESSION_LEN))


_BUILDERS = {"buffer": _buffer_from, "weights": _weights_from, "control": _control_from,
             "hello": _hello_from}
