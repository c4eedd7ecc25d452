"""The ``nodulekit`` command line end to end on synthetic inputs of every kind it accepts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nodulekit.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main
from nodulekit.dataset import Volume
from nodulekit.readers import write_dicom_series

# --------------------------------------------------------------------------------------------------
# A model with a known answer and inputs of every kind


def _disc(shape, centre, radius):
    rows, columns = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2


@pytest.fixture(scope="module")
def models(tmp_path_factory, bright_disc_model) -> dict[str, Path]:
    """A segmenter folder, a bare .keras file and a run-folder layout.

    The segmenter is the paper's preprocessing (gray -> median -> per-image z-score) followed by a
    1x1 convolution + sigmoid: probability > 0.5 where the z-score > 1.5, i.e. on a small bright disc
    in a flat background, so every output below is known in advance.
    """
    import keras

    from nodulekit.inference import Segmenter
    from nodulekit.models import build_unet
    from nodulekit.preprocessing import paper_pipeline

    root = tmp_path_factory.mktemp("models")
    Segmenter(bright_disc_model, paper_pipeline()).save(root / "bright")
    keras.utils.set_random_seed(0)
    build_unet((64, 64, 1), filters=(4, 8, 16, 32, 64)).save(root / "unet.keras")
    run = root / "run"
    run.mkdir()
    (run / "best.keras").write_bytes((root / "bright" / "model.keras").read_bytes())
    paper_pipeline().save(run / "preprocessing.json")
    return {"bright": root / "bright", "unet": root / "unet.keras", "run": run}


def _volume_hu(n_slices=4, size=64) -> np.ndarray:
    """Flat lung-like -850 HU with one 11-pixel nodule (40 HU) on slices 1-2."""
    hu = np.full((n_slices, size, size), -850.0, np.float32)
    hu[1:3][:, _disc((size, size), (30, 34), 5)] = 40.0
    return hu


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


def _crop_png(size=(64, 64), centre=(30, 30), radius=5) -> tuple[np.ndarray, np.ndarray]:
    mask = _disc(size, centre, radius)
    return np.where(mask, 200, 30).astype(np.uint8), mask.astype(np.uint8) * 255


def _write_dicom_series(folder: Path, hu: np.ndarray, spacing=(2.0, 0.7, 0.7)) -> Path:
    return write_dicom_series(Volume(hu=hu, spacing=spacing), folder, patient_id="CLI-TEST")


def _write_sitk(path: Path, hu: np.ndarray, spacing=(2.0, 0.7, 0.7)) -> Path:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing((spacing[2], spacing[1], spacing[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _run(*argv) -> int:
    return main([str(a) for a in argv])


def _segment(input_path: Path, out: Path, model: Path, *extra) -> dict:
    code = _run("segment", input_path, "--model", model, "--out", out, "--no-progress", *extra)
    assert code == EXIT_OK
    return json.loads((out / "summary.json").read_text())


# --------------------------------------------------------------------------------------------------
# segment: every input kind


@pytest.mark.parametrize("kind", ["dicom", "mhd", "nifti"])
def test_segment_volumes(kind, tmp_path, models):
    import SimpleITK as sitk

    hu = _volume_hu()
    if kind == "dicom":
        source = _write_dicom_series(tmp_path / "series" / "1.2.3" / "4.5.6", hu).parents[1]  # nested, as LIDC
    elif kind == "mhd":
        source = _write_sitk(tmp_path / "scan.mhd", hu)
    else:
        source = _write_sitk(tmp_path / "scan.nii.gz", hu)
    out = tmp_path / "out"
    summary = _segment(source, out, models["bright"])
    assert summary["input_kind"] == "volume" and summary["n_images"] == 4 and summary["n_nodules"] == 1
    table = pd.read_csv(out / "nodules.csv")
    row = table.iloc[0]
    assert (row["slice_first"], row["slice_last"], row["n_slices"]) == (1, 2, 2)
    assert row["diameter_mm"] == pytest.approx(11 * 0.7, abs=0.7) and row["mean_hu"] == pytest.approx(40.0)
    # 81 pixels per disc, less the 4 one-pixel tips that the pipeline's 3x3 median filter removes
    assert row["volume_mm3"] == pytest.approx(2 * 77 * 2.0 * 0.7 * 0.7, rel=1e-3)  # CSV keeps 4 digits
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"slice-{k:04d}.png" for k in range(4)]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["slice-0001.png", "slice-0002.png"]
    overlay = np.asarray(Image.open(out / "overlays" / "slice-0001.png"))
    assert ((overlay == (0, 220, 0)).all(axis=-1)).any() and ((overlay == (255, 40, 40)).all(axis=-1)).any()
    mask = np.load(out / "mask.npy")
    assert mask.shape == hu.shape and mask[1].sum() == 77 and mask[1][_disc((64, 64), (30, 34), 4)].all() and mask[0].sum() == 0
    nifti = sitk.ReadImage(str(out / "mask.nii.gz"))
    assert nifti.GetSpacing() == pytest.approx((0.7, 0.7, 2.0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(nifti), mask)
    assert (out / "nodules.seg.dcm").exists() == (kind == "dicom")  # a DICOM SEG for DICOM input only
    if kind == "dicom":
        import highdicom

        seg = highdicom.seg.segread(out / "nodules.seg.dcm")
        assert seg.number_of_segments == 1 and seg.get_segment_description(1).segment_label.startswith("Nodule 1")
        sources = {uid for _, _, uid in seg.get_source_image_uids()}
        assert len(sources) == 4  # every slice of the series is referenced
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left


def test_segment_single_image_and_image_folder_of_mixed_sizes(tmp_path, models):
    image, _ = _crop_png()
    single = _png(tmp_path / "one.png", image)
    summary = _segment(single, tmp_path / "out1", models["bright"], "--pixel-spacing", "0.5")
    assert summary["input_kind"] == "images" and summary["n_nodules"] == 1
    row = pd.read_csv(tmp_path / "out1" / "nodules.csv").iloc[0]
    assert row["slice_name"] == "one" and row["diameter_mm"] == pytest.approx(11 * 0.5, abs=0.5)
    assert not (tmp_path / "out1" / "mask.nii.gz").exists()

    folder = tmp_path / "pngs"
    _png(folder / "a.png", image)
    _png(folder / "b.png", np.full((64, 64), 30, np.uint8))  # nothing to find
    big, _ = _crop_png(size=(80, 96), centre=(40, 60), radius=6)
    _png(folder / "c.png", np.stack([big] * 3, axis=-1))  # RGB, another size
    summary = _segment(folder, tmp_path / "out2", models["bright"])
    assert summary["n_images"] == 3 and summary["n_nodules"] == 2
    out = tmp_path / "out2"
    table = pd.read_csv(out / "nodules.csv")
    assert sorted(table["slice_name"]) == ["a", "c"] and table["diameter_mm"].isna().all()  # no spacing given
    assert sorted(table["diameter_px"].round()) == [11, 13]  # discs 11 and 13 px across
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.png", "b.png", "c.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "c.png"]
    assert np.load(out / "mask-64x64.npy").shape == (2, 64, 64) and np.load(out / "mask-80x96.npy").shape == (1, 80, 96)
    assert not list(out.glob(".stack-*"))


def test_segment_labelled_crops_lidc_release_image_folder_and_npz(tmp_path, models):
    from nodulekit.readers import read_image_folder

    image, mask = _crop_png()
    release = tmp_path / "release"
    for patient, nodule, slices in (("LIDC-IDRI-0001", 1, 2), ("LIDC-IDRI-0002", 1, 1)):
        for k in range(slices):
            _png(release / patient / f"nodule-{nodule}" / "images" / f"slice-{k}.png", image)
            for reader in range(4):
                _png(release / patient / f"nodule-{nodule}" / f"mask-{reader}" / f"slice-{k}.png", mask)
    summary = _segment(release, tmp_path / "out_release", models["bright"])
    assert summary["input_kind"] == "crops" and summary["n_images"] == 3 and summary["n_nodules"] == 3
    truth = pd.read_csv(tmp_path / "out_release" / "truth_nodules.csv")
    assert len(truth) == 3 and truth["found"].all() and truth["dice"].min() > 0.9

    folder = tmp_path / "paper_format"
    _png(folder / "images" / "x1.png", image)
    _png(folder / "masks" / "x1.png", mask)
    summary = _segment(folder, tmp_path / "out_folder", models["bright"])
    assert summary["n_nodules"] == 1 and summary["truth_nodules"][0]["found"]
    assert len(list((tmp_path / "out_folder" / "overlays").iterdir())) == 1

    read_image_folder(folder, progress=False).save(tmp_path / "crops.npz")
    summary = _segment(tmp_path / "crops.npz", tmp_path / "out_npz", models["bright"])
    assert summary["input_kind"] == "crops" and summary["n_nodules"] == 1


def test_segment_with_a_unet_file_and_a_run_folder(tmp_path, models):
    hu = _volume_hu(n_slices=2)
    source = _write_sitk(tmp_path / "scan.mhd", hu)
    summary = _segment(source, tmp_path / "unet_out", models["unet"], "--mode", "full", "--overlays", "none")
    assert summary["stacks"][0]["info"]["mode"] == "full" and not (tmp_path / "unet_out" / "overlays").exists()
    summary = _segment(source, tmp_path / "run_out", models["run"], "--threshold", "0.5")
    assert summary["n_nodules"] == 1 and summary["segmenter"]["window"] == 64


# --------------------------------------------------------------------------------------------------
# Errors, exit codes, atomic output


def test_segment_errors_leave_nothing_behind(tmp_path, models, capsys, monkeypatch):
    from nodulekit import cli
    from nodulekit.errors import RunFolderError

    assert _run("segment", tmp_path / "absent.png", "--model", models["bright"], "--out", tmp_path / "out") == EXIT_ERROR
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert _run("segment", tmp_path, "--model", tmp_path / "nomodel.keras", "--out", tmp_path / "out") == EXIT_ERROR
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    assert _run("segment", tmp_path / "broken.png", "--model", models["bright"], "--out", tmp_path / "out") == EXIT_ERROR
    assert not (tmp_path / "out").exists()

    source = _png(tmp_path / "in" / "one.png", _crop_png()[0])

    def failing(result, folder, **options):  # fails half-way through writing
        (Path(folder) / "masks").mkdir(parents=True)
        (Path(folder) / "masks" / "half.png").write_bytes(b"")
        raise RunFolderError("disk full", path=folder)

    monkeypatch.setattr("nodulekit.inference.write_segmentation", failing)
    assert _run("segment", source, "--model", models["bright"], "--out", tmp_path / "out", "--no-progress") == EXIT_ERROR
    assert "disk full" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    monkeypatch.undo()

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert _run("segment", source, "--model", models["bright"], "--out", existing) == EXIT_ERROR
    assert "--overwrite" in capsys.readouterr().err and (existing / "keep.txt").exists()
    assert _run("segment", source, "--model", models["bright"], "--out", existing, "--overwrite", "--no-progress") == EXIT_OK
    assert not (existing / "keep.txt").exists() and (existing / "nodules.csv").exists()
    assert not list(tmp_path.glob(".existing.*"))
    assert cli.EXIT_USAGE == 2


@pytest.mark.parametrize("command", ["segment", "train", "evaluate", "export", "reproduce"])
def test_every_subcommand_has_help(command, capsys):
    assert _run(command, "--help") == EXIT_OK
    text = capsys.readouterr().out
    assert f"nodulekit {command}" in text and "exit codes" in text


def test_usage_errors_exit_2(capsys):
    assert _run() == EXIT_USAGE
    assert _run("segment") == EXIT_USAGE  # no INPUT / --out
    assert _run("frobnicate") == EXIT_USAGE
    assert _run("export", "m.keras", "--out", "x", "--size", "big") == EXIT_USAGE


def test_train_passes_its_arguments_to_the_training_entry_point(monkeypatch):
    seen = {}

    def fake_main(argv):
        seen["argv"] = list(argv)
        return 0

    monkeypatch.setattr("nodulekit.training.protocol.main", fake_main)
    assert _run("-v", "train", "--run-dir", "somewhere", "--quick", "--epochs", "1") == EXIT_OK
    assert seen["argv"] == ["--run-dir", "somewhere", "--quick", "--epochs", "1"]


def test_train_keeps_the_cli_log_level(monkeypatch, tmp_path):
    """``nodulekit -v train`` logs at DEBUG: the training entry point must not reconfigure logging."""
    seen = {}

    def fake_command(args):
        seen["level"] = logging.getLogger("nodulekit").getEffectiveLevel()
        return 0

    monkeypatch.setattr("nodulekit.training.protocol.train_command", fake_command)
    assert _run("-v", "train", "--run-dir", tmp_path / "run", "--quick") == EXIT_OK
    assert seen["level"] == logging.DEBUG


def test_evaluate_on_labelled_crops(tmp_path, models, capsys):
    image, mask = _crop_png()
    folder = tmp_path / "paper_format"
    for name in ("p1", "p2"):
        _png(folder / "images" / f"{name}.png", image)
        _png(folder / "masks" / f"{name}.png", mask)
    assert _run("evaluate", folder, "--model", models["bright"], "--out", tmp_path / "report.json", "--no-progress") == EXIT_OK
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n_crops"] == 2 and report["dice"] > 0.9
    assert json.loads(capsys.readouterr().out)["n_crops"] == 2
    assert _run("evaluate", "phantom", "--n", "6", "--model", models["bright"], "--no-progress") == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["n_crops"] == 6 and 0.0 <= report["dice"] <= 1.0


def test_export_command_writes_checked_formats(tmp_path, models, capsys):
    out = tmp_path / "exported"
    assert _run("export", models["bright"], "--out", out, "--formats", "keras,savedmodel", "--check") == EXIT_OK
    printed = capsys.readouterr().out
    assert "savedmodel" in printed and "max |difference|" in printed
    assert (out / "model.keras").is_file() and (out / "saved_model" / "saved_model.pb").is_file()
    assert (out / "preprocessing.json").is_file() and (out / "segmenter.json").is_file()
    summary = _segment(_png(tmp_path / "one.png", _crop_png()[0]), tmp_path / "seg", out)  # export folder = model
    assert summary["n_nodules"] == 1


# --------------------------------------------------------------------------------------------------
# One model name everywhere (issue 22): every command and loader resolves MODEL the same way


def test_segment_and_evaluate_default_to_the_shipped_model(tmp_path, capsys):
    from nodulekit.model_names import DEFAULT_MODEL, SHIPPED_DIR

    image, mask = _crop_png()
    assert _run("segment", _png(tmp_path / "one.png", image), "--out", tmp_path / "out", "--no-progress") == EXIT_OK
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model"] == DEFAULT_MODEL and summary["n_images"] == 1
    assert summary["segmenter"]["metadata"]["source"] == str(SHIPPED_DIR / DEFAULT_MODEL)
    capsys.readouterr()
    folder = tmp_path / "paper_format"
    _png(folder / "images" / "x.png", image)
    _png(folder / "masks" / "x.png", mask)
    assert _run("evaluate", folder, "--no-progress") == EXIT_OK
    assert json.loads(capsys.readouterr().out)["n_crops"] == 1


@pytest.mark.parametrize("form", ["name", "alias", "run folder", "keras file", "exported folder"])
def test_every_model_form_loads_through_one_resolver(form, tmp_path, models):
    from nodulekit.inference import load_segmenter
    from nodulekit.model_names import DEFAULT_MODEL, SHIPPED_DIR, resolve_model
    from nodulekit.pretrained import load_pretrained

    if form in ("name", "alias"):
        model, expected_source = {"name": DEFAULT_MODEL, "alias": "pretrained"}[form], SHIPPED_DIR / DEFAULT_MODEL
    elif form == "exported folder":
        assert _run("export", models["bright"], "--out", tmp_path / "exported", "--formats", "keras") == EXIT_OK
        model = expected_source = tmp_path / "exported"
    else:
        model = expected_source = models["run" if form == "run folder" else "unet"]
    assert resolve_model(str(model)) == expected_source
    segmenter = load_segmenter(str(model))
    assert segmenter.metadata["source"] == str(expected_source)
    assert load_pretrained(str(model), tta=False).segmenter.metadata["source"] == str(expected_source)
    out = tmp_path / "again"
    assert _run("export", model, "--out", out, "--formats", "keras") == EXIT_OK
    assert load_segmenter(out).model.count_params() == segmenter.model.count_params()


@pytest.mark.parametrize("command", ["segment", "evaluate", "export"])
def test_unknown_model_lists_the_accepted_forms(command, tmp_path, capsys):
    from nodulekit.errors import MissingDataError
    from nodulekit.inference import load_segmenter
    from nodulekit.model_names import shipped_models
    from nodulekit.pretrained import load_pretrained

    source = _png(tmp_path / "one.png", _crop_png()[0])
    arguments = {
        "segment": ["segment", source, "--model", "no_such_model", "--out", tmp_path / "out"],
        "evaluate": ["evaluate", "phantom", "--model", "no_such_model"],
        "export": ["export", "no_such_model", "--out", tmp_path / "out"],
    }[command]
    assert _run(*arguments) == EXIT_ERROR
    message = capsys.readouterr().err
    assert message.startswith(f"nodulekit {command}: error: no_such_model: no such model")
    for form in [*shipped_models(), "'pretrained'", "run folder", ".keras file", "nodulekit export"]:
        assert form in message
    assert not (tmp_path / "out").exists()
    for loader in (load_segmenter, load_pretrained):
        with pytest.raises(MissingDataError, match=r"a shipped model's name \(available: lidc_attention_unet"):
            loader("no_such_model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingDataError, match=r"no \.keras model in this folder; a model is a shipped model's name"):
        load_segmenter(tmp_path / "empty")


def test_a_shipped_name_is_a_name_and_a_path_is_a_path(tmp_path, monkeypatch):
    from nodulekit.errors import InvalidParameterError
    from nodulekit.model_names import DEFAULT_MODEL, SHIPPED_DIR, resolve_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / DEFAULT_MODEL).mkdir()  # a local folder that carries the shipped model's name
    assert resolve_model(DEFAULT_MODEL) == SHIPPED_DIR / DEFAULT_MODEL
    assert resolve_model(f"./{DEFAULT_MODEL}") == Path(f"./{DEFAULT_MODEL}")
    assert resolve_model(Path(DEFAULT_MODEL)) == Path(DEFAULT_MODEL)
    assert resolve_model(None) == SHIPPED_DIR / DEFAULT_MODEL
    for bad in ("", "  ", 3):
        with pytest.raises(InvalidParameterError, match="a shipped model's name"):
            resolve_model(bad)


@pytest.mark.parametrize("command", ["segment", "evaluate", "export"])
def test_help_lists_the_shipped_models(command, capsys):
    from nodulekit.model_names import shipped_models

    assert shipped_models() == ["lidc_attention_unet"]
    assert _run(command, "--help") == EXIT_OK
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert "a shipped model's name (available: lidc_attention_unet; alias 'pretrained' = lidc_attention_unet)" in text
    assert "run folder" in text and ".keras file" in text


# --------------------------------------------------------------------------------------------------
# Logging (issue 22): the library configures nothing; the CLI prints each record once


def _python(code: str, *arguments) -> subprocess.CompletedProcess:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code, *map(str, arguments)], capture_output=True, text=True, timeout=600)


def test_importing_nodulekit_adds_no_handler_to_the_root_logger():
    code = (
        "import logging\n"
        "import nodulekit, nodulekit.cli, nodulekit.export, nodulekit.inference, nodulekit.training\n"
        "print(len(logging.getLogger().handlers), [type(h).__name__ for h in logging.getLogger('nodulekit').handlers])\n"
    )
    out = _python(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[0] == "0 ['NullHandler']"


def test_cli_prints_each_log_line_once(tmp_path, models):
    # TensorFlow's SavedModel export logs through logging's module functions, which give the root
    # logger a bare handler when it has none: the record then came out twice (issue 22).
    code = "import sys\nfrom nodulekit.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    out = _python(code, "export", models["bright"], "--out", tmp_path / "out", "--formats", "keras,savedmodel", "--check")
    assert out.returncode == EXIT_OK, out.stderr[-2000:]
    records = [line for line in out.stderr.splitlines() if "nodulekit.export" in line]
    assert [line.split(" ", 1)[1] for line in records] == [
        "INFO nodulekit.export: keras export: max |difference| vs Keras 0.00e+00",
        "INFO nodulekit.export: savedmodel export: max |difference| vs Keras 0.00e+00",
    ]


def test_configure_logging_keeps_one_handler():
    import logging

    from nodulekit.utils import configure_logging

    def ours(handler) -> bool:
        return getattr(handler, "_nodulekit", False)

    root, package = logging.getLogger(), logging.getLogger("nodulekit")
    before = (list(root.handlers), root.level, package.level)  # pytest's own handlers are there too
    try:
        configure_logging()
        configure_logging(logging.DEBUG)
        assert len([h for h in root.handlers if ours(h)]) == 1
        assert [h for h in root.handlers if not ours(h)] == [h for h in before[0] if not ours(h)]
        assert package.level == logging.DEBUG and root.level == logging.WARNING
        assert [type(h).__name__ for h in package.handlers] == ["NullHandler"]
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
        package.setLevel(before[2])
