"""The wire format: round trips, and every way a hostile or broken message is refused."""
from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
import zmq

from relayrl.buffer import Buffer, EpisodeStats
from relayrl.transport.codec import (CodecError, decode_buffer, decode_control, decode_hello,
                                     decode_message, decode_weights, encode_buffer, encode_control,
                                     encode_hello, encode_weights)


def make_buffer(n=5, obs_shape=(3,), obs_dtype=np.float32, act_shape=(2,), act_dtype=np.float32,
                episodes=(), **meta) -> Buffer:
    rng = np.random.default_rng(n)
    obs = (rng.random((n + 1, *obs_shape)) * 100).astype(obs_dtype)
    return Buffer(obs=obs[:-1], act=(rng.random((n, *act_shape)) * 10).astype(act_dtype),
                  rew=rng.standard_normal(n).astype(np.float32), next_obs=obs[1:].copy(),
                  terminated=rng.random(n) < 0.3, truncated=rng.random(n) < 0.3,
                  episodes=list(episodes), **meta)


def assert_same_buffer(a: Buffer, b: Buffer) -> None:
    for name, column in a.arrays().items():
        other = getattr(b, name)
        assert other.dtype == column.dtype and other.shape == column.shape, name
        np.testing.assert_array_equal(other, column)
    assert (a.episodes, a.worker_id, a.seq, a.policy_version) == (b.episodes, b.worker_id, b.seq,
                                                                 b.policy_version)


def reheader(frames, drop=(), **changes):
    """The same message with its header edited."""
    header = msgpack.unpackb(bytes(frames[0]))
    header.update(changes)
    for key in drop:
        header.pop(key)
    return [msgpack.packb(header), *[bytes(f) for f in frames[1:]]]


# --- round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize("obs_shape,obs_dtype,act_shape,act_dtype", [
    ((3,), np.float32, (2,), np.float32),
    ((4, 4, 3), np.uint8, (), np.int64),         # images and discrete actions
    ((2, 5), np.float16, (1,), np.float64),
    ((7,), np.float64, (3,), np.int8),
])
def test_buffer_round_trip(obs_shape, obs_dtype, act_shape, act_dtype):
    episodes = [EpisodeStats(12.5, 200, False), EpisodeStats(-3.0, 17, True)]
    buffer = make_buffer(6, obs_shape, obs_dtype, act_shape, act_dtype, episodes=episodes,
                         worker_id="robot-7", seq=41, policy_version=9)
    frames = encode_buffer(buffer)
    assert len(frames) == 7
    decoded = decode_buffer([bytes(f) for f in frames])
    assert_same_buffer(buffer, decoded)
    assert isinstance(decoded.episodes, list) and all(isinstance(e, EpisodeStats) for e in decoded.episodes)


def test_buffer_round_trip_accepts_memoryviews_and_zmq_frames_zero_copy():
    buffer = make_buffer(4, worker_id="w")
    frames = encode_buffer(buffer)
    decoded = decode_buffer([zmq.Frame(bytes(f)) for f in frames])
    assert_same_buffer(buffer, decoded)
    assert not decoded.obs.flags.owndata  # a view on the received frame, no copy
    assert not decode_buffer([bytes(f) for f in frames]).obs.flags.writeable  # read-only view
    copied = decode_buffer(frames, copy=True).obs
    assert copied.flags.owndata and copied.flags.writeable


def test_empty_buffer_with_episodes_round_trips():
    buffer = make_buffer(0, episodes=[EpisodeStats(1.0, 3)], worker_id="w", seq=2)
    decoded = decode_buffer(encode_buffer(buffer))
    assert len(decoded) == 0 and decoded.episodes == [EpisodeStats(1.0, 3)]
    assert decoded.obs.shape == (0, 3)


def test_weights_round_trip():
    weights = {
        "layer.weight": np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32),
        "layer.bias": np.zeros(4, np.float64),
        "bn.num_batches_tracked": np.array(5, np.int64),      # 0-d
        "empty": np.zeros((0, 3), np.float16),
        "strided": np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2],
        "big_endian": np.arange(3, dtype=">f8"),
        "flags": np.array([True, False]),
        "u": np.arange(4, dtype=np.uint16),
    }
    version, decoded = decode_weights(encode_weights(17, weights))
    assert version == 17 and list(decoded) == list(weights)
    for name, array in weights.items():
        assert decoded[name].shape == array.shape, name
        assert decoded[name].dtype == array.dtype.newbyteorder("="), name
        np.testing.assert_array_equal(decoded[name], array)
    assert decode_weights(encode_weights(0, {}))[1] == {}


def test_control_and_hello_round_trip():
    metered = {"allow": {"a": 10, "b": 0}, "sessions": {"a": "s1"}, "default": 4}
    assert decode_control(encode_control(metered)) == metered
    assert decode_control(encode_control({"allow": {}, "default": None})) == {
        "allow": {}, "sessions": {}, "default": None}
    assert decode_hello(encode_hello("w-1", "abc.1")) == ("w-1", "abc.1")
    kind, payload = decode_message(encode_hello("w", "s"), {"buffer": 100, "hello": 100})
    assert (kind, payload) == ("hello", ("w", "s"))


# --- refusals when encoding ----------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.array([object()], dtype=object), np.array(["hello"]),
                                 np.zeros(2, np.complex64), np.array(["2020-01-01"], "datetime64[D]")])
def test_encode_refuses_unsafe_dtypes(bad):
    with pytest.raises(CodecError, match="dtype"):
        encode_weights(1, {"x": bad})
    buffer = make_buffer(1)
    buffer.act = bad if len(bad) == 1 else bad[:1]
    with pytest.raises(CodecError):
        encode_buffer(buffer)


def test_encode_refuses_invalid_buffers_and_metadata():
    buffer = make_buffer(3)
    buffer.rew = buffer.rew[:2]
    with pytest.raises(CodecError, match="invalid buffer"):
        encode_buffer(buffer)
    with pytest.raises(CodecError, match="finite"):
        encode_buffer(make_buffer(1, episodes=[EpisodeStats(math.nan, 1)]))
    with pytest.raises(CodecError, match="worker_id"):
        encode_buffer(make_buffer(1, worker_id="x" * 1000))
    with pytest.raises(CodecError, match="non-negative"):
        encode_weights(-1, {})


# --- refusals when decoding ----------------------------------------------------------------------
def valid_buffer_frames():
    return [bytes(f) for f in encode_buffer(make_buffer(4, worker_id="evil", seq=1))]


def valid_weights_frames():
    return [bytes(f) for f in encode_weights(3, {"w": np.ones((2, 2), np.float32)})]


def set_descriptor(frames, index, descriptor):
    header = msgpack.unpackb(frames[0])
    header["arrays"][index] = descriptor
    return [msgpack.packb(header), *frames[1:]]


@pytest.mark.parametrize("dtype", ["object", "|O", "<U5", "complex64", "float32 ", "f4", "<f4",
                                   "datetime64", "V8", 5, None])
def test_refuses_dtypes_outside_the_allow_list(dtype):
    frames = set_descriptor(valid_weights_frames(), 0, ["w", dtype, [2, 2]])
    with pytest.raises(CodecError, match="dtype"):
        decode_weights(frames)


@pytest.mark.parametrize("shape,match", [
    ([2, 3], "bytes"),                 # frame holds 16 bytes, 24 declared
    ([4], "bytes"),                    # 16 bytes declared as 4 float32 = ok size... wrong shape below
    ([2**40, 2**40], "shape"),         # huge declared size
    ([-2, -2], "shape"),               # negative
    ([2.0, 2.0], "shape"),             # floats
    ([True, 4], "shape"),              # bools are not ints here
    ("2,2", "shape"),
    ([1] * 40, "shape"),               # too many dimensions
])
def test_refuses_bad_shapes(shape, match):
    frames = set_descriptor(valid_weights_frames(), 0, ["w", "float32", shape])
    if shape == [4]:  # a consistent size is accepted: the codec checks bytes, the model checks shapes
        assert decode_weights(frames)[1]["w"].shape == (4,)
        return
    with pytest.raises(CodecError, match=match):
        decode_weights(frames)


def test_refuses_frame_length_mismatch_and_wrong_frame_counts():
    frames = valid_buffer_frames()
    with pytest.raises(CodecError, match="bytes"):
        decode_buffer([*frames[:2], frames[2][:-1], *frames[3:]])
    with pytest.raises(CodecError, match="frames"):
        decode_buffer(frames[:-1])
    with pytest.raises(CodecError, match="frames"):
        decode_buffer([*frames, b"\x00" * 4])
    with pytest.raises(CodecError):
        decode_buffer([])
    with pytest.raises(CodecError):
        decode_buffer(b"".join(frames))  # one blob is not a list of frames


def test_refuses_messages_above_the_size_limit():
    frames = [bytes(f) for f in encode_weights(1, {"w": np.zeros(1000, np.float64)})]
    with pytest.raises(CodecError, match="exceeds"):
        decode_weights(frames, max_bytes=4000)
    assert decode_weights(frames, max_bytes=9000)[0] == 1
    big = [bytes(f) for f in encode_buffer(make_buffer(2000, obs_shape=(64,)))]
    with pytest.raises(CodecError, match="exceeds"):
        decode_buffer(big, max_bytes=100_000)
    # the per-kind limit applies once the header says which kind it is
    with pytest.raises(CodecError, match="buffer message .* exceeds"):
        decode_message(big, {"buffer": 100_000, "weights": 10**9})


@pytest.mark.parametrize("header", [b"", b"\xc1", b"not msgpack at all", b"\x93\x01\x02",
                                    b"\xde\xff\xff", msgpack.packb({"v": 1}) + b"trailing",
                                    b"\x91" * 5000 + b"\x00"])
def test_refuses_garbage_headers(header):
    with pytest.raises(CodecError):
        decode_buffer([header, *valid_buffer_frames()[1:]])


@pytest.mark.parametrize("value", [[1, 2, 3], "buffer", 5, None, 1.5, b"bytes"])
def test_refuses_msgpack_of_the_wrong_type(value):
    with pytest.raises(CodecError, match="map|msgpack"):
        decode_buffer([msgpack.packb(value, use_bin_type=True)])


def test_refuses_extension_types_in_the_header():
    frames = valid_buffer_frames()
    header = msgpack.unpackb(frames[0])
    header["worker_id"] = msgpack.ExtType(42, b"payload")
    with pytest.raises(CodecError):
        decode_buffer([msgpack.packb(header), *frames[1:]])
    import datetime
    header["worker_id"] = datetime.datetime.now(datetime.timezone.utc)
    with pytest.raises(CodecError):
        decode_buffer([msgpack.packb(header, datetime=True), *frames[1:]])


@pytest.mark.parametrize("version", [2, 0, "1", 1.0, True, None])
def test_refuses_other_format_versions(version):
    with pytest.raises(CodecError, match="version"):
        decode_buffer(reheader(valid_buffer_frames(), v=version))
    with pytest.raises(CodecError, match="version"):
        decode_buffer(reheader(valid_buffer_frames(), drop=["v"]))


@pytest.mark.parametrize("kind", ["pickle", "weights", "", None, ["buffer"], {"a": 1}])
def test_refuses_unknown_or_unexpected_kinds(kind):
    with pytest.raises(CodecError, match="kind"):
        decode_buffer(reheader(valid_buffer_frames(), kind=kind))


def test_refuses_unknown_and_missing_fields():
    with pytest.raises(CodecError, match="unknown fields"):
        decode_buffer(reheader(valid_buffer_frames(), exec="import os"))
    with pytest.raises(CodecError, match="missing fields"):
        decode_buffer(reheader(valid_buffer_frames(), drop=["seq"]))
    with pytest.raises(CodecError, match="unknown fields"):
        decode_weights(reheader(valid_weights_frames(), worker_id="x"))
    with pytest.raises(CodecError, match="unknown fields"):
        decode_control(reheader([bytes(f) for f in encode_control(
            {"allow": {}, "default": None})], arrays=[]))


@pytest.mark.parametrize("episodes,match", [
    ([[math.nan, 3, False]], "finite"),
    ([[math.inf, 3, False]], "finite"),
    ([[-math.inf, 3, False]], "finite"),
    ([["1.0", 3, False]], "finite"),
    ([[1.0, -1, False]], "length"),
    ([[1.0, 2.5, False]], "length"),
    ([[1.0, 3, 1]], "bool"),
    ([[1.0, 3]], "return, length, test"),
    ([{"r": 1.0}], "return, length, test"),
    ({"a": 1}, "list"),
])
def test_refuses_bad_episode_statistics(episodes, match):
    with pytest.raises(CodecError, match=match):
        decode_buffer(reheader(valid_buffer_frames(), episodes=episodes))


@pytest.mark.parametrize("field,value,match", [
    ("worker_id", "x" * 129, "worker_id"),
    ("worker_id", 7, "worker_id"),
    ("seq", -1, "seq"),
    ("seq", True, "seq"),
    ("seq", 1.0, "seq"),
    ("policy_version", -5, "policy_version"),
    ("policy_version", "3", "policy_version"),
])
def test_refuses_bad_buffer_metadata(field, value, match):
    with pytest.raises(CodecError, match=match):
        decode_buffer(reheader(valid_buffer_frames(), **{field: value}))


def test_refuses_buffers_with_wrong_columns():
    frames = valid_buffer_frames()
    with pytest.raises(CodecError, match="exactly the arrays"):
        decode_buffer(set_descriptor(frames, 0, ["observations", "float32", [4, 3]]))
    header = msgpack.unpackb(frames[0])
    header["arrays"][1] = list(header["arrays"][0])  # 'obs' twice, no 'act'
    with pytest.raises(CodecError, match="exactly the arrays"):
        decode_buffer([msgpack.packb(header), frames[1], frames[1], *frames[3:]])
    # rows that disagree: 'rew' declared with 2 rows while the others have 4
    with pytest.raises(CodecError, match="inconsistent buffer"):
        decode_buffer(set_descriptor([*frames[:3], frames[3][:8], *frames[4:]], 2,
                                     ["rew", "float32", [2]]))


def test_refuses_bool_bytes_other_than_zero_and_one():
    frames = valid_buffer_frames()
    terminated = bytearray(frames[5])
    terminated[0] = 2
    with pytest.raises(CodecError, match="bool"):
        decode_buffer([*frames[:5], bytes(terminated), frames[6]])


def test_refuses_weights_with_duplicate_names_and_other_kinds():
    frames = valid_weights_frames()
    header = msgpack.unpackb(frames[0])
    header["arrays"].append(header["arrays"][0])
    with pytest.raises(CodecError, match="twice"):
        decode_weights([msgpack.packb(header), frames[1], frames[1]])
    with pytest.raises(CodecError, match="kind"):
        decode_weights(valid_buffer_frames())
    with pytest.raises(CodecError, match="kind"):
        decode_control(valid_weights_frames())


@pytest.mark.parametrize("message", [
    {"allow": {"a": -1}, "default": 3},
    {"allow": {"a": "10"}, "default": 3},
    {"allow": {"a": 1}, "default": -3},
    {"allow": {"a": 1}, "default": 2.5},
    {"allow": [], "default": None},
    {"allow": {}, "default": None, "sessions": {"a": 5}},
    {"allow": {"x" * 200: 1}, "default": None},
])
def test_refuses_bad_control_messages(message):
    good = [bytes(f) for f in encode_control({"allow": {}, "default": None})]
    with pytest.raises(CodecError):
        decode_control(reheader(good, **message))
    with pytest.raises(CodecError):
        encode_control(message)


def test_codec_error_is_a_value_error_that_names_the_claimed_sender():
    with pytest.raises(ValueError) as info:
        decode_buffer(reheader(valid_buffer_frames(), seq=-1))
    assert isinstance(info.value, CodecError) and info.value.sender == "evil"
    with pytest.raises(CodecError) as info:
        decode_buffer([b"\xc1"])
    assert info.value.sender is None


def test_random_corruption_raises_only_codec_errors():
    """Flip, cut and splice bytes of valid messages: decoding either succeeds or raises CodecError,
    never anything else (a receiver catches CodecError only)."""
    rng = np.random.default_rng(1234)
    samples = [valid_buffer_frames(), valid_weights_frames(),
               [bytes(f) for f in encode_control({"allow": {"a": 3}, "sessions": {"a": "s"}, "default": 1})],
               [bytes(f) for f in encode_hello("w", "s")]]
    limits = {"buffer": 1 << 20, "weights": 1 << 20, "control": 1 << 20, "hello": 1 << 20}
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(3000):
        frames = [bytearray(f) for f in samples[rng.integers(len(samples))]]
        for _ in range(rng.integers(1, 4)):
            target = frames[rng.integers(len(frames))] if rng.random() < 0.3 else frames[0]
            action = rng.integers(4)
            if action == 0 and target:      # flip a byte
                target[rng.integers(len(target))] = rng.integers(256)
            elif action == 1 and target:    # cut
                del target[rng.integers(len(target)):]
            elif action == 2:               # insert garbage
                at = rng.integers(len(target) + 1)
                target[at:at] = rng.integers(0, 256, rng.integers(1, 9), dtype=np.uint8).tobytes()
            elif len(frames) > 1:           # drop or duplicate a frame
                if rng.random() < 0.5:
                    frames.pop(rng.integers(1, len(frames)))
                else:
                    frames.append(bytearray(frames[-1]))
        try:
            decode_message([bytes(f) for f in frames], limits)
            outcomes["ok"] += 1
        except CodecError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 1000
