"""Tests of toy_lm.io: header-only shape reading, key checks, atomic writes."""

import os
import zipfile

import numpy as np
import pytest

from toy_lm import io
from toy_lm.errors import InputError, OutputError
from toy_lm.outputs import save_npz


def test_npz_shapes_reads_headers(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, a=np.zeros((3, 2)), b=np.arange(5, dtype=np.int32), c=np.array(True))
    shapes = io.npz_shapes(str(path))
    assert shapes == {
        "a": ((3, 2), np.dtype(np.float64)),
        "b": ((5,), np.dtype(np.int32)),
        "c": ((), np.dtype(np.bool_)),
    }
    compressed = tmp_path / "c.npz"
    np.savez_compressed(compressed, a=np.zeros((4, 4)))
    assert io.npz_shapes(str(compressed)) == {"a": ((4, 4), np.dtype(np.float64))}


def test_npz_shapes_does_not_load_data(tmp_path, monkeypatch):
    path = tmp_path / "t.npz"
    np.savez(path, a=np.zeros((3, 2)))
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: pytest.fail("data read"))
    assert io.npz_shapes(str(path))["a"][0] == (3, 2)


def test_npz_shapes_errors(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="no such file"):
        io.npz_shapes(str(tmp_path / "missing.npz"))
    with pytest.raises(InputError, match="directory"):
        io.npz_shapes(str(tmp_path))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(InputError, match="not a valid .npz"):
        io.npz_shapes(str(junk))
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("a.npy", b"\x93NUMPY garbage")
    with pytest.raises(InputError, match="not a valid .npz"):
        io.npz_shapes(str(bad))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    good = tmp_path / "good.npz"
    np.savez(good, a=np.zeros(2))
    monkeypatch.setattr(zipfile, "ZipFile", denied)
    with pytest.raises(InputError, match="permission denied"):
        io.npz_shapes(str(good))


def test_level_keys():
    keys = ["logits_1", "logits_0", "harm", "ref_logits_0", "logits_2", "xlogits_3"]
    assert io.level_keys(keys, "logits") == ["logits_0", "logits_1", "logits_2"]
    assert io.level_keys(keys, "ref_logits") == ["ref_logits_0"]
    assert io.level_keys(["harm"], "logits") == []
    with pytest.raises(InputError, match="missing logits_1"):
        io.level_keys(["logits_0", "logits_2"], "logits")
    with pytest.raises(InputError, match="missing logits_0"):
        io.level_keys(["logits_1"], "logits")


def test_load_npz(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, a=np.arange(3.0), o=np.array([{"x": 1}], dtype=object))
    np.testing.assert_array_equal(io.load_npz(str(path), ["a"])["a"], [0.0, 1.0, 2.0])
    with pytest.raises(InputError, match="cannot read"):
        io.load_npz(str(path), ["o"])  # object arrays need pickle, which is refused


def test_save_npz_round_trip_and_no_partial_file(tmp_path):
    path = tmp_path / "out.npz"
    save_npz(str(path), {"x": np.arange(4), "y": np.float64(2.5)}, tag="npz")
    with np.load(path) as data:
        assert sorted(data.files) == ["x", "y"]
        assert float(data["y"]) == 2.5
    before = path.read_bytes()

    class Boom:
        def __array__(self, dtype=None, copy=None):
            raise RuntimeError("failed while writing")

    with pytest.raises(RuntimeError):
        save_npz(str(path), {"x": np.arange(3), "z": Boom()}, tag="npz")
    assert path.read_bytes() == before  # the old file is untouched ...
    assert sorted(os.listdir(tmp_path)) == ["out.npz"]  # ... and no temporary file is left
    with pytest.raises(OutputError, match="No such file"):
        save_npz(str(tmp_path / "no" / "out.npz"), {"x": np.zeros(1)}, tag="npz")
