"""Tests of nodulekit.training: config, tf.data pipeline, the protocol, resume, failures, plots.

The protocol tests train tiny U-Nets (filters 4/8/16 on 32x32 crops, 48 crops) so that they are
quick on 2 CPU cores; the numbers they check are structural and hand-checkable (row counts, the
all-background accuracy of the test masks, the selection rule, bit-identical reruns). One test,
``test_unet_learns_the_phantom_nodules``, checks that training learns: a U-Net trained for 4 epochs
on 300 phantom crops must beat the all-background answer on held-out crops by stated margins.

The protocol tests train eagerly (``tf.config.run_functions_eagerly``, as the QUICK notebooks and
their workers do): tracing a tiny model into a graph costs more than training it, and what they
check (tables, failures, resume, bit-identical reruns) is the same in both modes. The learning
test trains in graph mode, the way a full run trains.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nodulekit.errors import InvalidParameterError, RunFolderError, TrainingError
from nodulekit.training import (
    Augmentation,
    TrainConfig,
    load_results,
    main,
    make_dataset,
    run_protocol,
    select_hyperparameters,
)

REPO = Path(__file__).resolve().parents[1]

#: Builds the tiny data set; also run inside subprocesses (kill-and-resume).
TINY_CROPS_SOURCE = '''
import numpy as np, pandas as pd
from nodulekit.dataset import CropSet

def tiny_crops(n=48, size=32, seed=0):
    """Bright discs (the "nodules") on noise, 3 crops per patient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    radius = rng.uniform(2.5, 7.0, n)
    centre = size / 2 + rng.uniform(-3, 3, (n, 2))
    masks = ((yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2 < radius[:, None, None] ** 2).astype(np.uint8)
    images = (rng.normal(0, 40, (n, size, size)) + 120 * masks).astype(np.float32)
    table = pd.DataFrame({
        "patient_id": [f"P{i // 3:02d}" for i in range(n)],
        "nodule_id": [f"P{i // 3:02d}/n{i}" for i in range(n)],
        "slice_index": 0, "pixel_spacing_mm": np.nan, "slice_spacing_mm": np.nan,
        "n_readers": 1, "source": "test",
    })
    return CropSet(images, masks, table, units="float")
'''
_namespace: dict = {}
exec(TINY_CROPS_SOURCE, _namespace)
tiny_crops = _namespace["tiny_crops"]

#: Tiny model and protocol shared by the tests (two learning rates, 2 folds).
TINY = dict(
    workers=1,  # in this process (the kill-and-resume hooks run here); tests/test_workers.py runs workers
    architectures=("unet",),
    learning_rates=(1e-3, 1e-2),
    batch_sizes=(8,),
    grid_epochs=1,
    epochs=2,
    n_folds=2,
    filters=(4, 8, 16),
)

#: The kill-and-resume driver and the tests in this process train eagerly (see the module docstring).
EAGER_SOURCE = """
import tensorflow as tf
tf.config.run_functions_eagerly(True)
"""


#: TensorFlow says so at every tf.data map while functions run eagerly (the maps stay graphs, as meant).
pytestmark = pytest.mark.filterwarnings("ignore:Even though the `tf.config.experimental_run_functions_eagerly` option is set:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def eager_training():
    """Every test of this module trains eagerly unless it asks for :func:`graph_mode`."""
    import tensorflow as tf

    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(before)


@pytest.fixture
def graph_mode():
    """Graph mode (tf.function), as a full run trains, for one test."""
    import tensorflow as tf

    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(False)
    yield
    tf.config.run_functions_eagerly(before)


#: Columns whose values are wall-clock times (they differ between identical runs).
TIME_COLUMNS = ("seconds",)


def _without_times(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=[c for c in TIME_COLUMNS if c in table]).reset_index(drop=True)


def _assert_same_tables(first: dict, second: dict, *, atol: float = 1e-6) -> None:
    for name in ("grid", "selection", "folds", "summary", "histories"):
        pd.testing.assert_frame_equal(_without_times(first[name]), _without_times(second[name]), check_exact=False, atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------------
# Configuration


def test_config_defaults_are_the_papers_and_round_trip(tmp_path):
    config = TrainConfig()
    assert config.learning_rates == (1e-4, 1e-3, 1e-2)
    assert config.batch_sizes == (8, 16, 32)
    assert (config.epochs, config.n_folds, config.fractions) == (30, 4, (0.6, 0.2, 0.2))
    assert (config.fn_weight, config.fp_weight, config.gamma) == (0.7, 0.3, 0.75)
    assert config.filters == (16, 32, 64, 128, 256)
    assert config.architectures == ("unet", "attention_unet")
    assert config.trial_epochs == 30 and config.replace(grid_epochs=5).trial_epochs == 5
    quick = TrainConfig.quick()
    assert len(quick.learning_rates) * len(quick.batch_sizes) == 9 and quick.n_folds == 2 and quick.epochs <= 2
    path = quick.save(tmp_path / "config.json")
    assert TrainConfig.load(path) == quick
    assert json.loads(path.read_text())["augmentation"]["rotation_degrees"] == 10.0


@pytest.mark.parametrize(
    "change",
    [
        {"learning_rates": (0.0,)},
        {"batch_sizes": (8, 8)},
        {"fractions": (0.5, 0.2, 0.2)},
        {"n_folds": 1},
        {"architectures": ("resnet",)},
        {"mixed_precision": "float8"},
        {"empty": "never"},
        {"model_options": {"filters": (1, 2)}},
    ],
)
def test_config_refuses_bad_values(change):
    with pytest.raises(InvalidParameterError, match="TrainConfig"):
        TrainConfig(**change)


# ------------------------------------------------------------------------------------------------
# tf.data pipeline and augmentation


def _batches(dataset):
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def test_make_dataset_batches_in_order_without_shuffle():
    images = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((10, 8, 8), np.float32)
    masks = np.zeros((10, 8, 8), np.uint8)
    batches = _batches(make_dataset(images, masks, batch_size=4))
    assert [b[0].shape for b in batches] == [(4, 8, 8, 1), (4, 8, 8, 1), (2, 8, 8, 1)]
    assert np.concatenate([b[0][:, 0, 0, 0] for b in batches]).tolist() == list(range(10))
    assert batches[0][1].dtype == np.float32


def test_shuffle_is_a_function_of_seed_and_epoch():
    images = np.arange(32, dtype=np.float32)[:, None, None] * np.ones((32, 8, 8), np.float32)
    masks = np.zeros((32, 8, 8), np.uint8)

    def order(seed, epoch):
        batches = _batches(make_dataset(images, masks, batch_size=32, shuffle=True, seed=seed, epoch=epoch))
        return batches[0][0][:, 0, 0, 0].astype(int).tolist()

    assert order(1, 3) == order(1, 3)  # rebuilt for a resumed epoch: the same batches
    assert order(1, 3) != order(1, 4)  # another epoch: another order
    assert order(1, 3) != order(2, 3)
    assert sorted(order(1, 3)) == list(range(32))


def test_geometric_augmentation_moves_the_mask_with_the_image():
    masks = tiny_crops(12).masks
    images = masks.astype(np.float32)  # image == mask: any mismatch would show
    turns_only = Augmentation(rotation_degrees=0, scale=0, shift_pixels=0, intensity=0)
    batches = _batches(make_dataset(images, masks, batch_size=12, augment=turns_only, seed=3))
    augmented_images, augmented_masks = batches[0]
    np.testing.assert_array_equal(augmented_images, augmented_masks)  # flips and 90-degree turns are exact
    assert not np.array_equal(augmented_masks[..., 0], masks)  # something did move
    np.testing.assert_array_equal(augmented_masks.sum(axis=(1, 2, 3)), masks.sum(axis=(1, 2)))  # areas kept

    affine = Augmentation(intensity=0)
    images_affine, masks_affine = _batches(make_dataset(images, masks, batch_size=12, augment=affine, seed=3))[0]
    assert set(np.unique(masks_affine)) <= {0.0, 1.0}  # nearest neighbour keeps the mask binary
    agreement = np.mean((images_affine > 0.5) == (masks_affine > 0.5))
    assert agreement > 0.99  # bilinear image and nearest mask differ only on a few edge pixels
    ratio = masks_affine.sum() / masks.sum()
    assert 0.75 < ratio < 1.3  # zoom of at most 10 % changes areas by at most ~21 %


def test_intensity_jitter_changes_only_the_image():
    masks = tiny_crops(8).masks
    images = np.ones(masks.shape, np.float32)
    jitter = Augmentation(flips=False, rotate90=False, rotation_degrees=0, scale=0, shift_pixels=0, intensity=0.1)
    augmented_images, augmented_masks = _batches(make_dataset(images, masks, batch_size=8, augment=jitter, seed=0))[0]
    np.testing.assert_array_equal(augmented_masks[..., 0], masks)
    values = augmented_images.reshape(8, -1)
    assert np.allclose(values, values[:, :1])  # one affine intensity change per image
    assert np.all(np.abs(values[:, 0] - 1.0) <= 0.2 + 1e-6) and np.std(values[:, 0]) > 0


def test_normal_intensity_jitter_in_the_tf_pipeline():
    masks = tiny_crops(8).masks
    images = np.ones(masks.shape, np.float32)
    jitter = Augmentation(flips=False, rotate90=False, rotation_degrees=0, scale=0, shift_pixels=0, intensity_noise="normal")
    augmented_images, augmented_masks = _batches(make_dataset(images, masks, batch_size=8, augment=jitter, seed=0))[0]
    np.testing.assert_array_equal(augmented_masks[..., 0], masks)
    values = augmented_images.reshape(8, -1)
    assert np.allclose(values, values[:, :1]) and np.std(values[:, 0]) > 0


def test_numpy_augmentation_is_the_same_description():
    from nodulekit.training.augment import RECIPE_AUGMENTATION, augment_batch

    masks = tiny_crops(12).masks[..., np.newaxis].astype(np.float32)
    rng = np.random.default_rng(0)
    for moves in ({}, {"flips": False}, {"rotate90": False}):
        geometric = Augmentation(rotation_degrees=0, scale=0, shift_pixels=0, intensity=0, **moves)
        x, y = augment_batch(masks, masks, geometric, rng)
        np.testing.assert_array_equal(x, y)  # image == mask: the geometry is shared and exact
        np.testing.assert_array_equal(y.sum(axis=(1, 2, 3)), masks.sum(axis=(1, 2, 3)))
        assert not np.array_equal(y, masks)
    ones = np.ones((6, 8, 8, 1), np.float32)
    for noise in ("uniform", "normal"):
        jitter = Augmentation(flips=False, rotate90=False, rotation_degrees=0, scale=0, shift_pixels=0, intensity_noise=noise)
        x, _ = augment_batch(ones, ones, jitter, rng)
        assert np.allclose(x.reshape(6, -1), x.reshape(6, -1)[:, :1]) and np.std(x[:, 0, 0, 0]) > 0
    assert RECIPE_AUGMENTATION.flips and RECIPE_AUGMENTATION.rotate90 and not RECIPE_AUGMENTATION.affine
    with pytest.raises(InvalidParameterError, match="affine"):
        augment_batch(ones, ones, Augmentation(), rng)
    with pytest.raises(InvalidParameterError, match="intensity_noise"):
        Augmentation(intensity_noise="laplace")


def test_config_with_the_default_augmentation_saves_as_before():
    saved = TrainConfig().to_dict()["augmentation"]
    assert "intensity_noise" not in saved  # config.json of existing run folders still compares equal
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
    normal = TrainConfig(augmentation=Augmentation(intensity_noise="normal"))
    assert TrainConfig.from_dict(normal.to_dict()) == normal


def test_the_protocols_units_are_recipes():
    from nodulekit.evaluation import PAPER_RECIPE, Recipe
    from nodulekit.training.recipe import PAPER_RECIPE as ENGINE_PAPER_RECIPE

    assert PAPER_RECIPE is ENGINE_PAPER_RECIPE  # evaluation re-exports the engine's recipes
    config = TrainConfig(early_stopping_patience=3, model_options={"batch_norm": True, "dropout": 0.1})
    grid, fold = config.recipe("attention_unet", 1e-2, 32, phase="grid"), config.recipe("attention_unet", 1e-2, 32)
    assert isinstance(grid, Recipe) and (grid.learning_rate, grid.batch_size, grid.architecture) == (1e-2, 32, "attention_unet")
    assert (grid.epochs, fold.epochs) == (config.trial_epochs, config.epochs)
    assert fold.model_options == {"filters": config.filters, "output_bias": "prior", "batch_norm": True, "dropout": 0.1}
    assert fold.loss_options == {"fn_weight": 0.7, "fp_weight": 0.3, "gamma": 0.75} and fold.early_stopping_patience == 3
    assert fold.augmentation == config.augmentation and config.replace(augment=False).recipe("unet", 1e-3, 8).augmentation is None
    assert Recipe.from_dict(json.loads(json.dumps(fold.to_dict()))) == fold.replace(model_options={**fold.model_options, "filters": list(config.filters)})
    with pytest.raises(InvalidParameterError, match="phase"):
        config.recipe("unet", 1e-3, 8, phase="test")


def test_make_dataset_refuses_mismatched_arrays():
    with pytest.raises(InvalidParameterError, match="same|shape"):
        make_dataset(np.zeros((4, 8, 8)), np.zeros((3, 8, 8)), batch_size=2)
    with pytest.raises(InvalidParameterError, match="batch_size"):
        make_dataset(np.zeros((4, 8, 8)), np.zeros((4, 8, 8)), batch_size=0)


# ------------------------------------------------------------------------------------------------
# The protocol on tiny data (one run shared by several tests)


class _NaNLoss:
    """Wraps get_loss so that the n-th loss created returns NaN from its third batch on."""

    def __init__(self, which: int):
        self.which, self.created = which, 0

    def __call__(self, name, **options):
        import keras

        from nodulekit import losses

        self.created += 1
        loss = losses.LOSSES[name](**options)
        if self.created != self.which:
            return loss

        class Diverging(keras.losses.Loss):
            def __init__(self):
                super().__init__(name="diverging")
                self.calls = keras.Variable(0.0, trainable=False)

            def call(self, y_true, y_pred):
                self.calls.assign_add(1.0)
                value = loss.call(y_true, y_pred)
                return value + keras.ops.where(self.calls > 2.0, float("nan"), 0.0)

        return Diverging()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The protocol on tiny data; the second grid trial (lr 1e-2) is made to diverge."""
    from nodulekit import losses

    run_dir = tmp_path_factory.mktemp("run")
    config = TrainConfig(**TINY)
    crops = tiny_crops()
    patch = pytest.MonkeyPatch()
    patch.setattr(losses, "get_loss", _NaNLoss(which=2))
    try:
        results = run_protocol(crops, run_dir=run_dir, config=config, progress=False)
    finally:
        patch.undo()
    return {"dir": run_dir, "config": config, "crops": crops, "results": results}


def test_protocol_tables(tiny_run):
    results, config = tiny_run["results"], tiny_run["config"]
    grid, folds, summary, histories = (results[k] for k in ("grid", "folds", "summary", "histories"))
    assert len(grid) == 2 and set(grid["learning_rate"]) == {1e-3, 1e-2}
    assert len(folds) == config.n_folds and (folds["status"] == "ok").all()
    for metric in ("dice", "iou", "precision", "recall", "accuracy", "background_accuracy"):
        assert f"test_{metric}" in folds
        row = summary[(summary["architecture"] == "unet") & (summary["metric"] == metric)].iloc[0]
        values = folds[f"test_{metric}"]
        assert row["mean"] == pytest.approx(values.mean())
        assert row["sd"] == pytest.approx(values.std(ddof=1))
        assert row["text"] == f"{row['mean']:.3f} ± {row['sd']:.3f}"
    assert folds["test_dice"].between(0, 1).all()
    # The all-background accuracy is the background share of the held-out test masks.
    split = json.loads((tiny_run["dir"] / "data.json").read_text())["split"]
    test = np.isin(tiny_run["crops"].groups, split["test"])
    expected = float(np.mean(tiny_run["crops"].masks[test] == 0))
    assert folds["test_background_accuracy"].to_numpy() == pytest.approx([expected] * config.n_folds)
    # No patient in two of train / validation / test.
    assert not (set(split["train"]) & set(split["val"])) and not (set(split["val"]) & set(split["test"]))
    # One history row per trained epoch of every unit that did not fail.
    ok_grid = grid[grid["status"] == "ok"]
    assert len(histories) == ok_grid["epochs_run"].sum() + folds["epochs_run"].sum()
    for column in ("loss", "val_loss", "accuracy", "val_accuracy", "dice", "val_dice"):
        assert histories[column].notna().all()


def test_diverged_trial_is_failed_excluded_and_the_grid_goes_on(tiny_run):
    grid, selection = tiny_run["results"]["grid"], tiny_run["results"]["selection"]
    failed = grid[grid["learning_rate"] == 1e-2].iloc[0]
    assert failed["status"] == "failed"
    assert "NaN" in failed["reason"] and "epoch 1" in failed["reason"]
    assert np.isnan(failed["val_dice"])
    assert selection.iloc[0]["learning_rate"] == 1e-3 and selection.iloc[0]["trials_failed"] == 1
    assert grid.loc[grid["learning_rate"] == 1e-3, "selected"].item()
    done = json.loads((tiny_run["dir"] / "grid/unet/lr=0.01_bs=8/done").read_text())
    assert done["status"] == "failed" and not (tiny_run["dir"] / "grid/unet/lr=0.01_bs=8/best.keras").exists()


def test_run_folder_layout(tiny_run):
    import keras

    from nodulekit.preprocessing import Pipeline, paper_pipeline

    run_dir = tiny_run["dir"]
    assert TrainConfig.load(run_dir / "config.json") == tiny_run["config"]
    assert Pipeline.load(run_dir / "preprocessing.json") == paper_pipeline()
    for unit in ("grid/unet/lr=0.001_bs=8", "cv/unet/fold-0", "cv/unet/fold-1"):
        folder = run_dir / unit
        assert {p.name for p in folder.iterdir()} == {"unit.json", "best.keras", "history.csv", "metrics.json", "done"}
        history = pd.read_csv(folder / "history.csv")
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["best_epoch"] == int(history.loc[history["val_loss"].idxmin(), "epoch"])
    model = keras.models.load_model(run_dir / "cv/unet/fold-0/best.keras", compile=False)
    assert model.output_shape == (None, 32, 32, 1)
    assert (run_dir / "best.keras").exists() and json.loads((run_dir / "best.json").read_text())["architecture"] == "unet"
    saved = load_results(run_dir)
    pd.testing.assert_frame_equal(saved["folds"], tiny_run["results"]["folds"], check_dtype=False, atol=1e-9)


def test_rerun_skips_every_finished_unit(tiny_run, monkeypatch):
    """No model is built on a rerun (its speed is checked in benchmarks/speed_checks.py)."""
    from nodulekit import models

    def refuse(*args, **options):
        raise AssertionError("a finished unit was trained again")

    run_dir = tiny_run["dir"]
    stamps = {p: p.stat().st_mtime_ns for p in run_dir.glob("*/unet/*/done")}
    monkeypatch.setattr(models, "build_model", refuse)
    again = run_protocol(tiny_run["crops"], run_dir=run_dir, config=tiny_run["config"], progress=False)
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("*/unet/*/done")} == stamps
    _assert_same_tables(tiny_run["results"], again, atol=0)


def test_corrupted_checkpoint_is_detected_and_the_unit_redone(tiny_run):
    run_dir = tiny_run["dir"]
    checkpoint = run_dir / "cv/unet/fold-1/best.keras"
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])  # a truncated file
    untouched = run_dir / "cv/unet/fold-0/done"
    stamp = untouched.stat().st_mtime_ns
    again = run_protocol(tiny_run["crops"], run_dir=run_dir, config=tiny_run["config"], progress=False)
    assert untouched.stat().st_mtime_ns == stamp
    assert checkpoint.stat().st_size > len(data) // 2
    # Retrained from scratch with the same seed: the same numbers (deterministic ops).
    _assert_same_tables(tiny_run["results"], again)


def test_other_config_in_the_same_folder_is_refused(tiny_run):
    with pytest.raises(TrainingError, match="another configuration"):
        run_protocol(tiny_run["crops"], run_dir=tiny_run["dir"], config=tiny_run["config"].replace(seed=1), progress=False)


def test_unwritable_run_folder_is_refused_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(RunFolderError, match="not writable") as error:
        run_protocol(tiny_crops(), run_dir=blocker / "run", config=TrainConfig(**TINY), progress=False)
    assert error.value.path == str(blocker / "run")


def test_all_trials_failed_is_an_error():
    grid = pd.DataFrame(
        {"architecture": ["unet"], "learning_rate": [0.01], "batch_size": [8], "status": ["failed"],
         "reason": ["diverged"], "val_dice": [np.nan]}
    )
    with pytest.raises(TrainingError, match="every grid trial of unet failed: lr=0.01 bs=8: diverged"):
        select_hyperparameters(grid)


def test_command_line_resumes_a_finished_run(tiny_run, tmp_path, capsys):
    data = tiny_run["crops"].save(tmp_path / "crops.npz")
    code = main(["--run-dir", str(tiny_run["dir"]), "--data", str(data), "--config", str(tiny_run["dir"] / "config.json"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "unet" in out and "±" in out
    code = main(["--run-dir", str(tiny_run["dir"]), "--data", str(data), "--seed", "3", "--no-progress"])
    assert code == 1 and "another configuration" in capsys.readouterr().err


def test_command_line_crop_size_crops_the_masks_too(tmp_path, capsys):
    """--crop-size on larger crops (the LIDC release is 128x128): the masks follow the images."""
    import dataclasses

    crops = tiny_crops(n=24)
    pad = [(0, 0), (16, 16), (16, 16)]
    large = dataclasses.replace(crops, images=np.pad(crops.images, pad, mode="edge"), masks=np.pad(crops.masks, pad))
    data = large.save(tmp_path / "crops64.npz")
    config = TrainConfig(**{**TINY, "learning_rates": (1e-3,), "epochs": 1}).save(tmp_path / "config.json")
    run_dir = tmp_path / "run"
    code = main(["--run-dir", str(run_dir), "--data", str(data), "--crop-size", "32", "--config", str(config), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert (run_dir / "results" / "folds.csv").is_file()
    assert json.loads((run_dir / "data.json").read_text())["crop_shape"] == [32, 32]


# ------------------------------------------------------------------------------------------------
# A model learns (QUICK, no real data needed)

#: What the learning check demands on the held-out crops, above the all-background answer (which
#: scores Dice 0, every crop holding a nodule, and pixel accuracy 0.789). Measured with this set-up
#: (300 phantom crops, 32x32, U-Net 8/16/32, 4 epochs, lr 1e-2, no augmentation), seeds 0/1/2:
#: Dice 0.71/0.72/0.76, accuracy 0.931/0.909/0.935, precision 0.85/0.79/0.72.
#: Broken on purpose (issue 23): a sign-flipped loss gives Dice 0.0001; masks divided by 255
#: give Dice 0; masks multiplied by 255 give Dice 0.57-0.58 but accuracy 0.785-0.798 (no better
#: than all-background) and precision 0.49 (it paints everything near the nodule).
DICE_MARGIN = 0.4
ACCURACY_MARGIN = 0.05
MIN_PRECISION = 0.6


def test_unet_learns_the_phantom_nodules(tmp_path, graph_mode):
    """A few epochs on a few hundred synthetic crops beat the all-background answer on held-out crops.

    Fails for a training bug that `make test` would otherwise miss without ../shared/data: a
    sign-flipped loss, masks in the wrong units (0/255 or 0/1/255), a broken pipeline or metric.
    """
    from nodulekit.metrics import segmentation_report
    from nodulekit.phantom import generate_crops
    from nodulekit.preprocessing import paper_pipeline
    from nodulekit.splits import patient_split
    from nodulekit.training.units import UnitData, UnitSpec, train_unit

    crops = generate_crops(300, size=32, seed=0, readers=0)
    images = paper_pipeline().apply(crops.images)
    split = patient_split(crops.groups, fractions=(0.6, 0.2, 0.2), seed=0)
    train, val, test = (np.sort(split[k]) for k in ("train", "val", "test"))
    data = UnitData(
        images[train], crops.masks[train], images[val], crops.masks[val], images[test], crops.masks[test], fingerprint="phantom-300"
    )
    config = TrainConfig(filters=(8, 16, 32), augment=False, seed=0)
    result = train_unit(UnitSpec("cv", "unet", 1e-2, 16, 4, fold=0), data, folder=tmp_path / "unit", config=config)

    background = segmentation_report(crops.masks[test], np.zeros(crops.masks[test].shape, np.float32), empty=config.empty)
    assert result["status"] == "ok" and result["test_n_images"] == len(test) >= 40
    scores = {k: round(v, 3) for k, v in result.items() if k.startswith("test_") and isinstance(v, float)}
    assert result["test_dice"] > background["dice"] + DICE_MARGIN, scores
    assert result["test_accuracy"] > background["background_accuracy"] + ACCURACY_MARGIN, scores
    assert result["test_precision"] > MIN_PRECISION and result["test_recall"] > 0.5, scores  # not "all nodule"
    history = pd.DataFrame(result["history"])
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]  # the training loss went down


# ------------------------------------------------------------------------------------------------
# Plots


def test_training_curves_figure(tiny_run):
    from nodulekit.plots.training import TRAIN_COLOR, VALIDATION_COLOR, plot_training_curves

    fig = plot_training_curves(tiny_run["results"]["histories"])
    axes = fig.axes
    assert len(axes) == 3  # accuracy, loss, Dice for the one architecture
    assert [ax.get_ylabel() for ax in axes] == ["pixel accuracy", "loss (focal Tversky)", "Dice"]
    colors = {line.get_color() for line in axes[0].get_lines()}
    assert colors == {TRAIN_COLOR, VALIDATION_COLOR}
    mean_line = [line for line in axes[1].get_lines() if line.get_linewidth() == 2][0]
    histories = tiny_run["results"]["histories"]
    expected = histories[histories["phase"] == "cv"].groupby("epoch")["loss"].mean().to_numpy()
    np.testing.assert_allclose(mean_line.get_ydata(), expected)


def test_grid_heatmap_marks_failed_trials(tiny_run):
    from nodulekit.plots.training import plot_grid_heatmap

    fig = plot_grid_heatmap(tiny_run["results"]["grid"])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "failed" in texts
    ok = tiny_run["results"]["grid"].query("status == 'ok'")["val_dice"].iloc[0]
    assert f"{ok:.3f}" in texts


# ------------------------------------------------------------------------------------------------
# Kill and resume


DRIVER = TINY_CROPS_SOURCE + EAGER_SOURCE + '''
import json, os, signal, sys
from pathlib import Path
from nodulekit.training import TrainConfig, protocol, run_protocol

if len(sys.argv) > 2:  # kill this process right after UNIT saved the resume state of epoch EPOCH
    kill_unit, kill_epoch = sys.argv[2], int(sys.argv[3])
    train_unit = protocol.train_unit

    def train_unit_then_die(spec, data, *, folder, on_epoch, **options):
        def hook(advance, text):
            on_epoch(advance, text)
            state = Path(folder) / "state" / "state.json"
            if spec.name == kill_unit and state.exists() and json.loads(state.read_text())["epoch"] == kill_epoch:
                print("KILLING", spec.name, kill_epoch, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

        return train_unit(spec, data, folder=folder, on_epoch=hook, **options)

    protocol.train_unit = train_unit_then_die

config = TrainConfig(**{tiny!r})
run_protocol(tiny_crops(), run_dir=sys.argv[1], config=config, progress=False)
print("FINISHED", flush=True)
'''.replace("{tiny!r}", repr(dict(TINY, learning_rates=(1e-3,), grid_epochs=2, epochs=2)))


def _start(run_dir: Path, *kill_at) -> subprocess.Popen:
    """The driver on ``run_dir``, started; ``kill_at=(unit, epoch)`` makes it SIGKILL itself at that point."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0")
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(run_dir), *map(str, kill_at)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait(process: subprocess.Popen) -> subprocess.CompletedProcess:
    """A started driver's exit status and output (it prints a few lines), after at most 10 minutes."""
    try:
        stdout, _ = process.communicate(timeout=600)
    except BaseException:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout)


def _run(run_dir: Path, *kill_at) -> subprocess.CompletedProcess:
    """The driver on ``run_dir`` to its end (or its kill)."""
    return _wait(_start(run_dir, *kill_at))


def _killed_at(run_dir: Path, unit: str, epoch: int) -> None:
    process = _run(run_dir, unit, epoch)
    assert process.returncode == -signal.SIGKILL and f"KILLING {unit} {epoch}" in process.stdout, process.stdout[-3000:]
    state = json.loads((run_dir / unit / "state" / "state.json").read_text())
    assert state["epoch"] == epoch and not (run_dir / unit / "done").exists()


def _finish(run_dir: Path, process: subprocess.Popen | None = None) -> None:
    """Run the driver on ``run_dir`` to its end, or wait for ``process`` (already started on it)."""
    done = _wait(process) if process is not None else _run(run_dir)
    assert done.returncode == 0 and "FINISHED" in done.stdout, done.stdout[-3000:]


@pytest.mark.slow
def test_sigkill_mid_unit_then_rerun_gives_the_same_tables(tmp_path):
    """Tolerance: 1e-6 on every number (deterministic ops, the same seed, the same machine).

    The uninterrupted reference runs beside the killed run (its own process and folder; one core
    each on a 2-core machine): the kills and resumes stay in order among themselves.
    """
    reference = tmp_path / "uninterrupted"
    uninterrupted = _start(reference)
    try:
        killed = tmp_path / "killed"
        # 1) inside the grid trial, right after its first epoch's state was saved;
        _killed_at(killed, "grid/unet/lr=0.001_bs=8", 1)
        # 2) inside the second fold (the trial and fold 0 done), after its first epoch.
        _killed_at(killed, "cv/unet/fold-1", 1)
        assert (killed / "cv/unet/fold-0/done").exists()
        _finish(killed)
    except BaseException:
        uninterrupted.kill()
        uninterrupted.communicate()
        raise
    _finish(reference, uninterrupted)

    first, second = load_results(reference), load_results(killed)
    _assert_same_tables(first, second, atol=1e-6)
    assert not list(killed.rglob("state"))  # no resume state left behind
    assert not [p for p in killed.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
