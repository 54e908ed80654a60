"""Tests of relayrl.checkpoint: round trips, atomicity, pruning, corruption and pickle refusal."""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import relayrl.checkpoint as ckmod
import relayrl.checkpoint_codec as codecmod
from relayrl.checkpoint import (
    CheckpointError,
    UnsupportedValueError,
    latest_checkpoint,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)

class Evil:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def nested_state() -> dict:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.8, 0.9))
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {
        "agent": {
            "net": net.state_dict(),  # OrderedDict with _metadata
            "opt": opt.state_dict(),  # int keys, tuple betas
            "f32": torch.randn(5, 4),
            "i64": torch.arange(7, dtype=torch.int64),
            "bool": torch.tensor([True, False, True]),
            "scalar_t": torch.tensor(2.5),
            "view": torch.arange(100.0)[10:20:2],  # strided view of a bigger storage
            "grad": torch.ones(2, requires_grad=True),
        },
        "memory": {
            "obs": np.random.rand(6, 3).astype(np.float32),
            "act": np.random.randint(-5, 5, size=(6, 2), dtype=np.int16),
            "done": np.array([True, False, False, True, False, True]),
            "u8": np.arange(12, dtype=np.uint8).reshape(2, 3, 2),
            "f64_fortran": np.asfortranarray(np.random.rand(3, 4)),
            "c64": np.array([1 + 2j, -3j], dtype=np.complex64),
            "empty": np.zeros((0, 5), dtype=np.float64),
            "zero_d": np.array(7, dtype=np.int32),
            "big_endian": np.arange(4, dtype=">i4"),
        },
        "counters": {"epoch": 3, "total_updates": 12345678901234567890, "lr": 3e-4, "ok": True},
        "specials": [math.nan, math.inf, -math.inf, -0.0, 1e308],
        "none": None,
        "text": "héllo\n\"quoted\" $t",
        "raw": b"\x00\xffbytes",
        "nested": [[1, [2, [3, []]]], {"a": [None, "b"]}, ()],
        "tup": (1, "two", (3.0,)),
        "np_scalars": [np.float32(1.5), np.int64(-3), np.bool_(True), np.float64(math.nan), np.complex128(1j)],
        "odd_keys": {1: "int", (2, "x"): "tuple", None: "none", 2.5: "float"},
        "dollar": {"$t": "not a tag", "k": 1},
    }


def assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and b.device.type == "cpu", where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.detach(), b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a, b), where
    elif isinstance(a, np.generic):
        assert type(a) is type(b), where
        assert (a == b) or (np.isnan(a) and np.isnan(b)), where
    elif isinstance(a, dict):
        assert type(b) is dict and list(a.keys()) == list(b.keys()), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(b) is (tuple if isinstance(a, tuple) else list), where
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert type(b) is float, where
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b)), where
    else:
        assert type(a) is type(b) and a == b, where


def rewrite_manifest(ckpt: Path, edit) -> None:
    m = json.loads((ckpt / "manifest.json").read_text())
    edit(m)
    (ckpt / "manifest.json").write_text(json.dumps(m))


def set_file_entry(ckpt: Path, rel: str) -> None:
    data = (ckpt / rel).read_bytes()
    rewrite_manifest(
        ckpt, lambda m: m["files"].__setitem__(rel, {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    )


def test_round_trip(tmp_path):
    state = nested_state()
    path = save_checkpoint(tmp_path, "epoch-000001", state)
    assert path == tmp_path / "epoch-000001"
    assert sorted(p.name for p in path.iterdir()) == ["arrays.safetensors", "manifest.json", "tensors.safetensors"]
    m = json.loads((path / "manifest.json").read_text())
    assert m["format"] == "relayrl-checkpoint" and m["schema_version"] == 2
    assert all(len(info["sha256"]) == 64 for info in m["files"].values())
    loaded = load_checkpoint(path)
    assert_same(state, loaded)
    # the loaded agent state works with torch
    net = torch.nn.Linear(3, 2)
    net.load_state_dict(loaded["agent"]["net"])
    opt = torch.optim.Adam(net.parameters())
    opt.load_state_dict(loaded["agent"]["opt"])
    assert opt.param_groups[0]["betas"] == (0.8, 0.9)
    # a view does not drag its whole base storage into the file
    assert loaded["agent"]["view"].untyped_storage().nbytes() == 5 * 4
    # loading the manifest path and memory-mapping work too
    mm = load_checkpoint(path / "manifest.json", mmap_mode="r")
    assert isinstance(mm["memory"]["obs"], np.memmap)
    assert np.array_equal(mm["memory"]["obs"], state["memory"]["obs"])


def test_aliasing_and_no_data_files(tmp_path):
    t = torch.ones(3)
    a = np.zeros(4)
    loaded = load_checkpoint(save_checkpoint(tmp_path, "a", {"t": [t, t], "a": (a, a)}))
    assert loaded["t"][0] is loaded["t"][1] and loaded["a"][0] is loaded["a"][1]
    only_json = save_checkpoint(tmp_path, "b", {"x": 1, "y": [math.nan]})
    assert sorted(p.name for p in only_json.iterdir()) == ["manifest.json"]
    assert load_latest(tmp_path)["x"] == 1


def test_unsupported_values_are_refused_before_writing(tmp_path):
    for bad in (
        {"obj": np.array([1, "a", None], dtype=object)},
        {"s": np.array(["a", "b"])},
        {"rec": np.zeros(2, dtype=[("a", "f4")])},
        {"fn": print},
        {"set": {1, 2}},
        {"key": {object(): 1}},
    ):
        with pytest.raises(UnsupportedValueError) as info:
            save_checkpoint(tmp_path, "x", bad)
        assert isinstance(info.value, TypeError)
    with pytest.raises(UnsupportedValueError, match="object"):
        save_checkpoint(tmp_path, "x", {"deep": [{"obj": np.array([{}], dtype=object)}]})
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(UnsupportedValueError, match="cycle"):
        save_checkpoint(tmp_path, "x", {"c": cyclic})
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, "../escape", {})
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, ".hidden", {})
    assert list(tmp_path.iterdir()) == []
    assert load_latest(tmp_path) is None
    assert load_latest(tmp_path / "does-not-exist") is None
    assert latest_checkpoint(tmp_path) is None


def test_latest_and_keep(tmp_path):
    for i in range(5):
        save_checkpoint(tmp_path, f"epoch-{i:06d}", {"epoch": i}, keep=3)
        assert (tmp_path / "latest").read_text().strip() == f"epoch-{i:06d}"
        assert load_latest(tmp_path)["epoch"] == i
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == ["epoch-000002", "epoch-000003", "epoch-000004", "latest"]
    # order of saving, not of names, decides; re-saving an old name makes it the newest
    save_checkpoint(tmp_path, "aaa", {"epoch": 5}, keep=2)
    save_checkpoint(tmp_path, "epoch-000003", {"epoch": 6}, keep=2)
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == ["aaa", "epoch-000003", "latest"]
    assert load_latest(tmp_path)["epoch"] == 6
    save_checkpoint(tmp_path, "solo", {"epoch": 7}, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "solo"]
    # unrelated folders are never touched
    (tmp_path / "notes").mkdir()
    save_checkpoint(tmp_path, "next", {"epoch": 8}, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "next", "notes"]
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        save_checkpoint(tmp_path, "notes", {})


def test_corrupt_tensor_byte(tmp_path):
    path = save_checkpoint(tmp_path, "c", {"w": torch.randn(64)})
    data = bytearray((path / "tensors.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "tensors.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256") as info:
        load_checkpoint(path)
    assert "tensors.safetensors" in str(info.value) and "older one" in str(info.value)


def test_truncated_arrays_file(tmp_path):
    path = save_checkpoint(tmp_path, "c", {"a": np.arange(1000.0)})
    arrays = path / "arrays.safetensors"
    arrays.write_bytes(arrays.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    # even with a matching manifest entry the truncated array is refused by the safetensors reader
    set_file_entry(path, "arrays.safetensors")
    for mmap_mode in (None, "r"):
        with pytest.raises(CheckpointError, match="arrays.safetensors"):
            load_checkpoint(path, mmap_mode=mmap_mode)


def test_missing_file(tmp_path):
    path = save_checkpoint(tmp_path, "c", {"a": np.arange(3), "t": torch.zeros(1)})
    (path / "tensors.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"\xff\xfe garbage", b"[1, 2]", b'{"format": "relayrl-checkpoint"', b"[" * 100000],
)
def test_garbage_manifest(tmp_path, content):
    path = save_checkpoint(tmp_path, "c", {"a": 1})
    (path / "manifest.json").write_bytes(content)
    with pytest.raises(CheckpointError, match="manifest.json"):
        load_checkpoint(path)


def test_bad_manifest_entries(tmp_path):
    path = save_checkpoint(tmp_path, "c", {"a": np.arange(3.0), "t": torch.ones(2)})
    original = (path / "manifest.json").read_text()

    def expect(edit, match):
        rewrite_manifest(path, edit)
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(path)
        (path / "manifest.json").write_text(original)

    expect(lambda m: m.__setitem__("schema_version", 99), "schema version 99")
    expect(lambda m: m["state"]["a"].__setitem__("dtype", "<i8"), "manifest says")
    expect(lambda m: m["state"]["t"].__setitem__("shape", [3]), "manifest says")
    expect(lambda m: m["state"]["a"].__setitem__("$t", "pickle"), "unknown entry type")
    expect(lambda m: m["state"].__setitem__("b", {"$t": "np_scalar", "dtype": "<i1", "v": 1000}), "malformed")
    assert load_checkpoint(path)["a"].tolist() == [0.0, 1.0, 2.0]


def test_path_traversal_is_refused(tmp_path):
    root = tmp_path / "ckpts"
    save_checkpoint(tmp_path / "other", "o", {"a": np.arange(3)})
    outside = tmp_path / "x.safetensors"
    outside.write_bytes((tmp_path / "other" / "o" / "arrays.safetensors").read_bytes())
    path = save_checkpoint(root, "c", {"a": np.arange(3)})
    data = outside.read_bytes()
    entry = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def traverse_files(m):
        m["files"]["../../x.safetensors"] = entry
        del m["files"]["arrays.safetensors"]

    rewrite_manifest(path, traverse_files)
    with pytest.raises(CheckpointError, match="unexpected file"):
        load_checkpoint(path)
    # a placeholder pointing at a key the (clean) arrays file does not have
    path = save_checkpoint(root, "d", {"a": np.arange(3)})
    rewrite_manifest(path, lambda m: m["state"]["a"].__setitem__("key", "../../x"))
    with pytest.raises(CheckpointError, match="does not list"):
        load_checkpoint(path)
    # a symlink escaping the checkpoint
    path = save_checkpoint(root, "e", {"a": np.arange(3)})
    (path / "arrays.safetensors").unlink()
    try:
        (path / "arrays.safetensors").symlink_to(outside)
    except OSError:
        pytest.skip("symlinks not available")
    with pytest.raises(CheckpointError, match="outside"):
        load_checkpoint(path)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_pickle_payload_never_runs(tmp_path):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Evil(str(control))))
    assert control.exists()  # the payload is live: plain unpickling runs it
    marker = tmp_path / "pwned"
    path = save_checkpoint(tmp_path / "ck", "c", {"t": torch.ones(2), "a": np.arange(2)})
    # 1) a raw pickle as tensors.safetensors, 2) a torch zip archive whose data.pkl holds the payload
    payloads = [pickle.dumps({"t0": Evil(str(marker))})]
    torch.save({"t0": Evil(str(marker))}, tmp_path / "evil.pt")
    payloads.append((tmp_path / "evil.pt").read_bytes())
    assert not marker.exists()
    for payload in payloads:
        (path / "tensors.safetensors").write_bytes(payload)
        set_file_entry(path, "tensors.safetensors")
        with pytest.raises(CheckpointError, match="tensors.safetensors"):
            load_checkpoint(path)
        with pytest.raises(CheckpointError):
            load_latest(tmp_path / "ck")
        assert not marker.exists()
    # 3) an object-dtype .npy (which np.save pickles) in place of the arrays file
    path = save_checkpoint(tmp_path / "ck", "d", {"a": np.arange(2)})
    with open(path / "arrays.safetensors", "wb") as f:
        np.save(f, np.array([Evil(str(marker))], dtype=object), allow_pickle=True)
    set_file_entry(path, "arrays.safetensors")
    for mmap_mode in (None, "r"):
        with pytest.raises(CheckpointError, match="arrays.safetensors"):
            load_checkpoint(path, mmap_mode=mmap_mode)
    assert not marker.exists()


def test_corrupt_latest_names_path_and_alternatives(tmp_path):
    save_checkpoint(tmp_path, "epoch-000001", {"e": 1})
    newest = save_checkpoint(tmp_path, "epoch-000002", {"e": 2, "a": np.arange(5)})
    (newest / "arrays.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as info:
        load_latest(tmp_path)
    msg = str(info.value)
    assert str(newest) in msg and "epoch-000001" in msg and "latest" in msg
    (tmp_path / "latest").write_text("epoch-000001\n")
    assert load_latest(tmp_path) == {"e": 1}
    (tmp_path / "latest").write_text("../../etc\n")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_latest(tmp_path)
    (tmp_path / "latest").write_text("gone\n")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_latest(tmp_path)


def test_crash_leftover_tmp_folder(tmp_path):
    save_checkpoint(tmp_path, "epoch-000001", {"e": 1})
    dead_pid = 999_999_999
    partial = tmp_path / f".epoch-000002.tmp-{dead_pid}"
    partial.mkdir(parents=True)
    (partial / "arrays.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{half")
    (tmp_path / f".latest.tmp-{dead_pid}").write_text("epoch-000002")
    assert load_latest(tmp_path) == {"e": 1}
    save_checkpoint(tmp_path, "epoch-000002", {"e": 2})
    assert not partial.exists() and not (tmp_path / f".latest.tmp-{dead_pid}").exists()
    assert load_latest(tmp_path) == {"e": 2}


def test_crash_failed_rename_keeps_previous(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, "epoch-000001", {"e": 1})
    real_rename = os.rename

    def failing_rename(src, dst):
        if ".tmp-" in os.fspath(src):
            raise OSError("simulated crash")
        return real_rename(src, dst)

    monkeypatch.setattr(ckmod.os, "rename", failing_rename)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(tmp_path, "epoch-000002", {"e": 2})
    with pytest.raises(OSError, match="simulated"):  # replacing an existing name: old one restored
        save_checkpoint(tmp_path, "epoch-000001", {"e": 99})
    assert load_latest(tmp_path) == {"e": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-000001", "latest"]

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckmod, "os", os)
    monkeypatch.setattr(codecmod, "serialize_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, "epoch-000003", {"a": np.arange(3)})
    assert load_latest(tmp_path) == {"e": 1}


def test_crash_during_replacement(tmp_path):
    """Killed between moving the old version aside and moving the new one in."""
    save_checkpoint(tmp_path, "last", {"e": 1})
    aside = tmp_path / f".last.old-{999_999_999}"
    os.rename(tmp_path / "last", aside)
    os.mkdir(tmp_path / f".last.tmp-{999_999_999}")
    assert latest_checkpoint(tmp_path) == aside
    assert load_latest(tmp_path) == {"e": 1}
    save_checkpoint(tmp_path, "other", {"e": 2}, keep=5)  # cleanup restores the aside
    assert load_checkpoint(tmp_path / "last") == {"e": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "latest", "other"]


def test_missing_latest_file_falls_back_to_newest(tmp_path):
    save_checkpoint(tmp_path, "b", {"e": 1})
    save_checkpoint(tmp_path, "a", {"e": 2})
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "a"
    assert load_latest(tmp_path) == {"e": 2}


def test_module_state_dict_round_trip(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    sd = OrderedDict(net.state_dict())
    save_checkpoint(tmp_path, "n", {"net": sd})
    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    other.load_state_dict(load_latest(tmp_path)["net"])
    for p, q in zip(net.state_dict().values(), other.state_dict().values()):
        assert torch.equal(p, q)


# --------------------------------------------------------------------------------------------------
# schema 2: the safetensors payload


def write_schema_1_checkpoint(directory: Path, name: str, marker: Path) -> Path:
    """The layout relayrl 0.1.0 wrote (schema 1), its tensors.pt a pickle that would create ``marker``."""
    ckpt = directory / name
    (ckpt / "arrays").mkdir(parents=True)
    (ckpt / "tensors.pt").write_bytes(pickle.dumps({"t0": Evil(str(marker))}))
    with open(ckpt / "arrays" / "0.npy", "wb") as f:
        np.save(f, np.arange(3), allow_pickle=False)
    files = {}
    for rel in ("tensors.pt", "arrays/0.npy"):
        data = (ckpt / rel).read_bytes()
        files[rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {
        "format": "relayrl-checkpoint", "schema_version": 1, "name": name, "sequence": 1, "files": files,
        "state": {"t": {"$t": "tensor", "key": "t0", "dtype": "torch.float32", "shape": [1], "device": "cpu"},
                  "a": {"$t": "ndarray", "file": "arrays/0.npy", "dtype": "<i8", "shape": [3]}},
    }
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    (directory / "latest").write_text(name + "\n")
    return ckpt


def test_schema_1_checkpoint_gives_one_clear_error(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    ckpt = write_schema_1_checkpoint(tmp_path / "run", "epoch-000003", marker)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load called"))
    with pytest.raises(CheckpointError) as direct:
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError) as latest:
        load_latest(tmp_path / "run")
    for info in (direct, latest):
        msg = str(info.value)
        assert str(ckpt) in msg
        assert "schema version 1" in msg and "tensors.pt" in msg  # the version found
        assert "schema version 2" in msg  # the version supported
        assert "--run-dir" in msg and "relayrl release that wrote it" in msg  # what to do
        assert "corrupt" not in msg  # one error, not wrapped as a corrupt checkpoint
    assert latest.value is not None and str(latest.value) == str(direct.value)
    assert not marker.exists()


def test_tampered_safetensors_header_and_payload(tmp_path):
    state = {"t": torch.arange(16, dtype=torch.float32), "a": np.arange(16, dtype=np.float32)}
    for rel in ("tensors.safetensors", "arrays.safetensors"):
        path = save_checkpoint(tmp_path, "c", state)
        good = (path / rel).read_bytes()
        header_len = int.from_bytes(good[:8], "little")
        header = good[8 : 8 + header_len]
        assert b'"F32"' in header
        tampered = {
            "header": good[:8] + header.replace(b'"F32"', b'"I32"') + good[8 + header_len :],
            "payload": good[:-4] + bytes(b ^ 0xFF for b in good[-4:]),
            "length": (10**9).to_bytes(8, "little") + good[8:],
        }
        for what, data in tampered.items():
            assert len(data) == len(good) and data != good, what
            (path / rel).write_bytes(data)
            with pytest.raises(CheckpointError, match="sha256") as info:
                load_checkpoint(path)
            assert rel in str(info.value), what
        # with the manifest entry forged to match, the reader refuses the tampered header
        (path / rel).write_bytes(tampered["header"])
        set_file_entry(path, rel)
        with pytest.raises(CheckpointError, match="manifest says"):
            load_checkpoint(path)
        (path / rel).write_bytes(tampered["length"])
        set_file_entry(path, rel)
        for mmap_mode in (None, "r"):
            with pytest.raises(CheckpointError, match="not a valid safetensors file"):
                load_checkpoint(path, mmap_mode=mmap_mode)


def test_tensors_pt_in_a_checkpoint_is_never_deserialised(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    path = save_checkpoint(tmp_path / "ck", "c", {"t": torch.ones(2), "a": np.arange(2)})
    (path / "tensors.pt").write_bytes(pickle.dumps({"t0": Evil(str(marker))}))
    (path / "arrays").mkdir()
    with open(path / "arrays" / "0.npy", "wb") as f:
        np.save(f, np.array([Evil(str(marker))], dtype=object), allow_pickle=True)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load called"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load called"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads called"))
    for mmap_mode in (None, "r"):
        loaded = load_checkpoint(path, mmap_mode=mmap_mode)
        assert loaded["t"].tolist() == [1.0, 1.0] and loaded["a"].tolist() == [0, 1]
    # listed in the manifest (with a matching sha256), with the placeholder pointing at it
    for rel in ("tensors.pt", "arrays/0.npy"):
        set_file_entry(path, rel)
        with pytest.raises(CheckpointError, match="unexpected file"):
            load_checkpoint(path)
        rewrite_manifest(path, lambda m: m["files"].pop(rel))
    rewrite_manifest(path, lambda m: m["state"]["a"].update({"file": "arrays/0.npy", "key": None}))
    with pytest.raises(CheckpointError, match="does not list"):
        load_checkpoint(path)
    assert not marker.exists()


def test_dtypes_and_layouts_round_trip(tmp_path):
    base = torch.arange(24.0).reshape(4, 6)
    shared = np.arange(10, dtype=np.float16)
    tensors = {
        "bf16": torch.randn(3, 2).to(torch.bfloat16),
        "f16": torch.randn(4).half(),
        "c64": torch.randn(3, dtype=torch.complex64),
        "c128": torch.randn(2, 2, dtype=torch.complex128),
        "c128_0d": torch.tensor(1 - 2j, dtype=torch.complex128),
        "conj": torch.randn(3, dtype=torch.complex64).conj(),
        "bool_0d": torch.tensor(True),
        "i8_empty": torch.zeros(0, 3, dtype=torch.int8),
        "transposed": base.t(),
        "column": base[:, 2],
        "offset_view": base[1:3],
        "f8": torch.randn(5).to(torch.float8_e4m3fn),
        "u16": torch.arange(5).to(torch.uint16),
    }
    arrays = {
        "c128": np.array([[1 + 1j, 2], [3j, -4]], dtype=np.complex128),
        "longdouble": np.arange(3, dtype=np.longdouble) / 3,
        "big_f8": np.arange(5, dtype=">f8"),
        "big_c8": np.array([1j, 2], dtype=">c8"),
        "bool_0d": np.array(False),
        "c128_empty": np.zeros((2, 0), dtype=np.complex128),
        "strided": np.arange(40, dtype=np.int64).reshape(5, 8)[::2, 1::3],
        "shared": shared,
    }
    state = {"t": tensors, "a": arrays, "again": [shared, tensors["c128"]]}
    def raw(t: torch.Tensor) -> torch.Tensor:  # torch.equal does not support every dtype
        return t.resolve_conj().contiguous().reshape(-1).view(torch.uint8)

    before = {k: (v.dtype, v.stride(), raw(v).clone()) for k, v in tensors.items()}
    path = save_checkpoint(tmp_path, "d", state)
    for k, v in tensors.items():  # saving never changes the state
        assert (v.dtype, v.stride()) == before[k][:2] and torch.equal(raw(v), before[k][2]), k
    for mmap_mode in (None, "r", "c"):
        loaded = load_checkpoint(path, mmap_mode=mmap_mode)
        for k, v in tensors.items():
            got = loaded["t"][k]
            assert got.dtype == v.dtype and got.shape == v.shape and got.is_contiguous(), k
            assert torch.equal(raw(got), raw(v)) and not got.is_conj(), k
        for k, v in arrays.items():
            got = loaded["a"][k]
            assert got.dtype == v.dtype and got.shape == v.shape and got.flags.c_contiguous, k
            assert np.array_equal(got, v), k
            if mmap_mode and v.size:
                assert isinstance(got, np.memmap), k
        assert loaded["again"][0] is loaded["a"]["shared"] and loaded["again"][1] is loaded["t"]["c128"]
    # the payload files are standard safetensors files
    from safetensors.numpy import load_file as np_load_file
    from safetensors.torch import load_file as torch_load_file

    assert np.array_equal(np_load_file(path / "arrays.safetensors")["a" + "7"], shared)
    assert torch.equal(torch_load_file(path / "tensors.safetensors")["t0"], tensors["bf16"])


def test_loaded_payload_is_independent_of_the_files(tmp_path):
    path = save_checkpoint(tmp_path, "m", {"obs": np.zeros((100, 4), np.float32), "w": torch.zeros(100)})
    snapshot = {p.name: p.read_bytes() for p in path.iterdir()}
    loaded = load_checkpoint(path)
    loaded["obs"][:] = 1  # a resumed replay memory is written into
    loaded["w"] += 1
    cow = load_checkpoint(path, mmap_mode="c")
    cow["obs"][:] = 2
    ro = load_checkpoint(path, mmap_mode="r")
    with pytest.raises(ValueError):
        ro["obs"][0, 0] = 3
    del cow, ro
    assert {p.name: p.read_bytes() for p in path.iterdir()} == snapshot
    # later changes of the files do not reach an already loaded state
    fresh = load_checkpoint(path)
    for rel in ("arrays.safetensors", "tensors.safetensors"):
        data = bytearray((path / rel).read_bytes())
        data[-1] ^= 0xFF
        (path / rel).write_bytes(bytes(data))
    assert not fresh["obs"].any() and not fresh["w"].any()


def test_checkpoint_modules_never_mention_unsafe_loaders():
    for module in (ckmod, codecmod):
        text = Path(module.__file__).read_text()
        assert not re.search(r"torch\.load|np\.load|numpy\.load|import pickle|\bpickle\.[a-z]|Unpickler", text), module
