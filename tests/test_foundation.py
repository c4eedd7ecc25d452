"""The package's foundation: version, errors, seeding, atomic writes, the common data types, CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import nodulekit
from nodulekit import CropSet, Volume
from nodulekit.errors import DataFormatError, InvalidParameterError, NodulekitError
from nodulekit.utils import atomic_write, read_json, write_json


def _cropset(n=4, size=8):
    rng = np.random.default_rng(0)
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, 2:5, 2:5] = 1
    table = pd.DataFrame(
        {
            "patient_id": [f"P{i // 2}" for i in range(n)],
            "nodule_id": [f"P{i // 2}/n0" for i in range(n)],
            "slice_index": list(range(n)),
            "pixel_spacing_mm": 0.7,
            "slice_spacing_mm": 2.5,
            "n_readers": 1,
            "source": "synthetic",
        }
    )
    return CropSet(rng.normal(size=(n, size, size)), masks, table)


def test_version_is_a_string():
    assert isinstance(nodulekit.__version__, str) and nodulekit.__version__.count(".") == 2


def test_errors_name_the_path_and_keep_builtin_bases():
    err = DataFormatError("truncated PNG", path="a/b.png")
    assert str(err) == "a/b.png: truncated PNG" and err.path == "a/b.png"
    assert isinstance(err, ValueError) and isinstance(err, NodulekitError)
    assert str(InvalidParameterError("bad")) == "bad"


def test_set_seed_makes_numpy_and_keras_repeatable():
    import keras

    nodulekit.set_seed(3)
    a = np.random.rand(3), keras.random.uniform((3,)).numpy()
    nodulekit.set_seed(3)
    b = np.random.rand(3), keras.random.uniform((3,)).numpy()
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(InvalidParameterError):
        nodulekit.set_seed(-1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), (" Yes ", True), ("ON", True), ("0", False), ("", False), ("no", False), ("quick", False), (None, False)],
)
def test_is_quick_reads_the_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("NODULEKIT_QUICK", raising=False)
    else:
        monkeypatch.setenv("NODULEKIT_QUICK", value)
    assert nodulekit.is_quick() is expected


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": np.float32(1.5)})
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert read_json(target) == {"a": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_cropset_validates_subsets_and_round_trips(tmp_path):
    crops = _cropset()
    assert len(crops) == 4 and list(crops.groups) == ["P0", "P0", "P1", "P1"]
    part = crops.subset(crops.groups == "P1")
    assert len(part) == 2 and part.table["slice_index"].tolist() == [2, 3]
    both = CropSet.concat([part, part])
    assert len(both) == 4
    loaded = CropSet.load(crops.save(tmp_path / "c.npz"))
    np.testing.assert_array_equal(loaded.images, crops.images)
    np.testing.assert_array_equal(loaded.masks, crops.masks)
    pd.testing.assert_frame_equal(loaded.table, crops.table, check_dtype=False)
    with pytest.raises(DataFormatError, match="binary"):
        CropSet(crops.images, crops.masks * 3, crops.table)
    with pytest.raises(DataFormatError, match="shape"):
        CropSet(crops.images, crops.masks[:, :4], crops.table)
    with pytest.raises(DataFormatError, match="lacks columns"):
        CropSet(crops.images, crops.masks, crops.table.drop(columns="patient_id"))


def test_cropset_load_rejects_other_files(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match="x.npz"):
        CropSet.load(bad)


def test_volume_checks_spacing_and_mask():
    vol = Volume(np.zeros((3, 8, 8)), (2.5, 0.7, 0.7), mask=np.ones((3, 8, 8)))
    assert vol.mask.dtype == np.uint8 and vol.spacing == (2.5, 0.7, 0.7)
    with pytest.raises(DataFormatError, match="spacing"):
        Volume(np.zeros((3, 8, 8)), (0, 0.7, 0.7))
    with pytest.raises(DataFormatError, match="mask shape"):
        Volume(np.zeros((3, 8, 8)), (1, 1, 1), mask=np.ones((2, 8, 8)))


def test_cli_help_and_exit_codes():
    out = subprocess.run([sys.executable, "-m", "nodulekit", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "reproduce" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "nodulekit", "no-such-command"], capture_output=True, text=True)
    assert bad.returncode == 2
