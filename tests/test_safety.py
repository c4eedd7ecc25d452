"""Untrusted files are safe: no pickle, safe_mode model loading, decompression-bomb limits, path
containment, and output folders proven writable before work starts (nodulekit.safety)."""

from __future__ import annotations

import ast
import errno
import json
import os
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nodulekit import safety
from nodulekit.errors import DataFormatError, MissingDataError, ModelFileError, RunFolderError

PACKAGE = Path(safety.__file__).resolve().parent


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return "?"


def _package_sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


# --- no pickle -------------------------------------------------------------------------------------
def test_every_np_load_in_the_package_refuses_pickles():
    found = []
    for path, tree in _package_sources():
        for call in _calls(tree):
            if _dotted(call.func) in ("np.load", "numpy.load"):
                keywords = {k.arg: k.value for k in call.keywords}
                value = keywords.get("allow_pickle")
                found.append(path.name)
                assert isinstance(value, ast.Constant) and value.value is False, (
                    f"{path}:{call.lineno}: np.load without allow_pickle=False"
                )
    assert "dataset.py" in found  # the check does look at the package's np.load calls


def test_no_module_unpickles_or_unmarshals_user_data():
    forbidden_modules = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}
    forbidden_calls = {"pd.read_pickle", "pandas.read_pickle", "torch.load", "yaml.load", "yaml.unsafe_load"}
    for path, tree in _package_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                names = set()
            assert not names & forbidden_modules, f"{path}:{node.lineno} imports {names & forbidden_modules}"
        for call in _calls(tree):
            assert _dotted(call.func) not in forbidden_calls, f"{path}:{call.lineno}: {_dotted(call.func)}"
            for keyword in call.keywords:  # allow_pickle=True / safe_mode=False anywhere
                if keyword.arg in ("allow_pickle", "safe_mode"):
                    expected = keyword.arg == "safe_mode"
                    assert isinstance(keyword.value, ast.Constant) and keyword.value.value is expected, (
                        f"{path}:{call.lineno}: {keyword.arg}={ast.unparse(keyword.value)}"
                    )


def _keras_loads():
    for path, tree in _package_sources():
        for call in _calls(tree):
            name = _dotted(call.func)
            if name.endswith("load_model") and name.split(".")[0] in ("keras", "tf", "tensorflow"):
                yield path, call


def test_keras_load_model_is_only_called_with_safe_mode():
    calls = list(_keras_loads())
    assert any(path.name == "safety.py" for path, _ in calls)
    for path, call in calls:
        keywords = {k.arg: k.value for k in call.keywords}
        assert "safe_mode" not in keywords or keywords["safe_mode"].value is True


def test_models_are_loaded_only_through_nodulekit_safety():
    outside = [f"{path.relative_to(PACKAGE)}:{call.lineno}" for path, call in _keras_loads() if path.name != "safety.py"]
    assert outside == []


def test_cropset_files_are_written_and_read_without_pickle(tmp_path):
    from nodulekit.phantom import generate_crops

    crops = generate_crops(4, size=16, seed=0)
    path = crops.save(tmp_path / "crops.npz")
    with np.load(path, allow_pickle=False) as data:  # every member is a plain array
        assert all(data[name].dtype != object for name in data.files)


# --- decompression bombs -----------------------------------------------------------------------------
def _png_declaring(path: Path, width: int, height: int) -> Path:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def test_bomb_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    from PIL import ImageFile

    from nodulekit.readers import read_image

    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("the bomb was decoded"))
    path = _png_declaring(tmp_path / "bomb.png", 9000, 9000)  # 81 Mpx: nodulekit's limit, not Pillow's
    with pytest.raises(DataFormatError, match=r"declares 9000 x 9000 = 81,000,000 pixels.*decompression bomb") as info:
        read_image(path)
    assert info.value.path == str(path)
    path = _png_declaring(tmp_path / "huge.png", 20000, 20000)  # 400 Mpx: Pillow's own limit
    with pytest.raises(DataFormatError, match=r"decompression bomb"):
        read_image(path)


def test_pixel_limit_is_configurable_and_read_at_call_time(tmp_path, monkeypatch):
    from nodulekit.readers import read_image

    gray = tmp_path / "gray.png"
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(gray)
    assert read_image(gray).shape == (40, 50)
    monkeypatch.setattr(safety, "MAX_IMAGE_PIXELS", 1999)
    with pytest.raises(DataFormatError, match=r"50 x 40 = 2,000 pixels, more than the limit of 1,999"):
        read_image(gray)
    import tifffile

    float64 = tmp_path / "float64.tif"  # Pillow cannot open it: the tifffile path checks too
    tifffile.imwrite(float64, np.ones((40, 50)))
    with pytest.raises(DataFormatError, match="2,000 pixels"):
        read_image(float64)
    monkeypatch.setattr(safety, "MAX_IMAGE_PIXELS", 2000)
    assert read_image(float64).shape == (40, 50)


def test_volume_limit_applies_to_dicom_and_metaimage(tmp_path, monkeypatch):
    import SimpleITK as sitk

    from nodulekit.readers import read_luna16

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)), str(tmp_path / "v.mhd"))
    assert read_luna16(tmp_path / "v.mhd").hu.shape == (3, 4, 5)
    monkeypatch.setattr(safety, "MAX_VOLUME_VOXELS", 59)
    with pytest.raises(DataFormatError, match="60 voxels"):
        read_luna16(tmp_path / "v.mhd")


# --- path containment ------------------------------------------------------------------------------
def test_contained_follows_dots_and_links(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images/a.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("secret")
    assert safety.contained(root, root / "images/a.png") == (root / "images/a.png").resolve()
    assert safety.contained(root, "images/../images/a.png") == (root / "images/a.png").resolve()
    with pytest.raises(DataFormatError, match="outside the data-set folder"):
        safety.contained(root, "images/../../secret.txt")
    with pytest.raises(DataFormatError, match="outside the data-set folder"):
        safety.contained(root, tmp_path / "secret.txt")
    (root / "images/link.png").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(DataFormatError, match="outside the data-set folder") as info:
        safety.contained(root, root / "images/link.png")
    assert info.value.path == str(root / "images/link.png")
    (root / "images/inside.png").symlink_to(root / "images/a.png")  # a link that stays inside is fine
    assert safety.contained(root, root / "images/inside.png") == (root / "images/a.png").resolve()
    (root / "data2").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(DataFormatError):  # a sibling whose name starts like the root does not count
        safety.contained(root, root / "data2/data-other")


def test_check_inside_catches_links_and_dots_deep_in_a_tree(tmp_path):
    from nodulekit.readers._common import check_inside

    root = tmp_path / "release"
    (root / "P1/nodule-0/images").mkdir(parents=True)
    (root / "P1/nodule-0/images/slice-0.png").write_bytes(b"x")
    (tmp_path / "outside/images").mkdir(parents=True)
    (tmp_path / "outside/images/slice-0.png").write_bytes(b"x")
    check_inside(root, [root / "P1/nodule-0/images/slice-0.png"])
    check_inside(root, [root / "P1/nodule-0/../nodule-0/images/slice-0.png"])
    (root / "P1/nodule-1").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(DataFormatError, match="nodule-1"):
        check_inside(root, [root / "P1/nodule-0/images/slice-0.png", root / "P1/nodule-1/images/slice-0.png"])
    with pytest.raises(DataFormatError, match="outside the data-set folder"):
        check_inside(root, [root / "P1/../../outside/images/slice-0.png"])


def test_a_data_set_reached_through_a_link_still_reads(tmp_path):
    from nodulekit.readers import read_image_folder

    real = tmp_path / "disk/set"
    for folder in ("images", "masks"):
        (real / folder).mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(real / "images/a.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(real / "masks/a.png")
    (real / "images/b.png").symlink_to(real / "images/a.png")  # a link inside the set
    (real / "masks/b.png").symlink_to("a.png")
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    crops = read_image_folder(tmp_path / "alias", progress=False)
    assert len(crops) == 2 and (crops.images == 9).all()


# --- model files -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    import keras

    folder = tmp_path_factory.mktemp("models")
    inputs = keras.Input((4,))
    good = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))
    good.save(folder / "good.keras")
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(folder / "lambda.keras")
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(folder / "lambda.h5")
    return folder, good


def test_load_model_round_trip(saved_models):
    folder, good = saved_models
    model = safety.load_model(folder / "good.keras")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(model.predict(x, verbose=0), good.predict(x, verbose=0), rtol=1e-6)


@pytest.mark.parametrize("name", ["lambda.keras", "lambda.h5"])
def test_load_model_refuses_python_code(saved_models, name):
    folder, _ = saved_models
    with pytest.raises(ModelFileError, match="refused by Keras safe_mode") as info:
        safety.load_model(folder / name)
    assert info.value.path == str(folder / name)


def test_load_model_refuses_a_config_naming_an_arbitrary_function(saved_models, tmp_path):
    folder, _ = saved_models
    marker = tmp_path / "PWNED"
    with zipfile.ZipFile(folder / "good.keras") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    layer = config["config"]["layers"][1]
    layer.update({"module": "os", "class_name": "system", "registered_name": None, "config": f"touch {marker}"})
    members["config.json"] = json.dumps(config).encode()
    hostile = tmp_path / "hostile.keras"
    with zipfile.ZipFile(hostile, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ModelFileError, match="hostile.keras"):
        safety.load_model(hostile)
    assert not marker.exists()


def test_load_model_refuses_folders_and_missing_files(tmp_path):
    with pytest.raises(MissingDataError, match="model file not found"):
        safety.load_model(tmp_path / "absent.keras")
    with pytest.raises(ModelFileError, match="is a folder"):
        safety.load_model(tmp_path)
    truncated = tmp_path / "cut.keras"
    truncated.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(ModelFileError, match="cut.keras"):
        safety.load_model(truncated)


# --- writable output folders -----------------------------------------------------------------------
def test_check_writable_creates_the_folder_and_leaves_nothing(tmp_path):
    folder = safety.check_writable(tmp_path / "runs/a", min_free_mb=0)
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_check_writable_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "runs").write_text("a file")
    with pytest.raises(RunFolderError, match="exists and is not a folder"):
        safety.check_writable(tmp_path / "runs")
    with pytest.raises(RunFolderError, match="a path component is a file|exists and is not a folder"):
        safety.check_writable(tmp_path / "runs/a")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions (see the simulated test below)")
def test_check_writable_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(RunFolderError, match="permission denied") as info:
            safety.check_writable(folder)
        assert info.value.path == str(folder)
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize(
    "code, reason", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system")]
)
def test_check_writable_reports_why_it_cannot_write(tmp_path, monkeypatch, code, reason):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(safety.tempfile, "mkstemp", refuse)
    with pytest.raises(RunFolderError, match=reason) as info:
        safety.check_writable(tmp_path / "run")
    assert info.value.path == str(tmp_path / "run")


def test_check_writable_detects_a_full_disk(tmp_path, monkeypatch):
    def full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safety.os, "fsync", full)
    with pytest.raises(RunFolderError, match=r"disk full"):
        safety.check_writable(tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []  # the probe is removed

    monkeypatch.undo()
    monkeypatch.setattr(safety.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 10 * 2**20))
    with pytest.raises(RunFolderError, match=r"only 10.0 MiB free"):
        safety.check_writable(tmp_path / "run", min_free_mb=50)


def test_training_on_a_full_disk_stops_before_any_training(tmp_path, monkeypatch):
    from nodulekit.phantom import generate_crops
    from nodulekit.training import TrainConfig, run_protocol

    import nodulekit.training.protocol as protocol

    crops = generate_crops(8, size=16, seed=0)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 2**20))
    monkeypatch.setattr(protocol._Protocol, "run_unit", lambda *args, **kwargs: pytest.fail("a unit started"))
    with pytest.raises(RunFolderError, match=r"Mi?B free"):
        run_protocol(crops, run_dir=tmp_path / "run", config=TrainConfig.quick(), progress=False)
    assert [p for p in (tmp_path / "run").rglob("*") if p.is_file()] == []


def test_cli_output_under_a_file_is_refused_cleanly(tmp_path, capsys):
    from nodulekit.cli import main

    image = tmp_path / "ct.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(image)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    model = tmp_path / "m.keras"
    model.write_text("x")
    code = main(["export", str(model), "--out", str(blocker / "out"), "--formats", "keras"])
    err = capsys.readouterr().err
    assert code == 1 and "blocker" in err and "cannot write" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "ct.png", "m.keras"]
