"""Tests of nodulekit.study (the notebooks' helpers) and nodulekit.plots.study (their figures)."""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from nodulekit import study  # noqa: E402
from nodulekit.dataset import CropSet, Volume  # noqa: E402
from nodulekit.errors import InvalidParameterError, MissingDataError  # noqa: E402
from nodulekit.plots import study as plots  # noqa: E402


#: Scores of an all-background prediction, for the tables and figures below.
BASELINE = {"dice": 0.1, "iou": 0.1, "precision": 0.1, "recall": 0.1, "accuracy": 0.96, "background_accuracy": 0.96}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def make_crops(patients=("A", "B", "C"), per_patient=2, size=32, radius=4, empty=()) -> CropSet:
    """Hand-made crops: a disc of 1000 on 0 at the centre; crops listed in ``empty`` have none."""
    n = len(patients) * per_patient
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= radius**2).astype(np.uint8)
    masks = np.repeat(disc[None], n, axis=0)
    for index in empty:
        masks[index] = 0
    rng = np.random.default_rng(0)
    images = masks * 1000.0 + rng.normal(0, 10, masks.shape)
    rows = []
    for k in range(n):
        patient = patients[k // per_patient]
        rows.append(
            {
                "patient_id": patient,
                "nodule_id": f"{patient}/nodule-{k % per_patient}",
                "slice_index": 0,
                "pixel_spacing_mm": 0.7,
                "slice_spacing_mm": 2.5,
                "n_readers": 1,
                "source": "test",
            }
        )
    return CropSet(images=images.astype(np.float32), masks=masks, table=pd.DataFrame(rows), units="HU")


def folds_table(unet, attention, **extra) -> pd.DataFrame:
    rows = []
    for architecture, values in (("unet", unet), ("attention_unet", attention)):
        for fold, value in enumerate(values):
            row = {"architecture": architecture, "fold": fold, "status": "ok", "reason": "", "epochs_run": 3}
            row["val_dice"] = value
            for metric in ("dice", "iou", "precision", "recall", "accuracy"):
                row[f"test_{metric}"] = value
            row["test_background_accuracy"] = 0.97
            row.update(extra)
            rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# configuration and data


def test_study_config_quick_and_full():
    from nodulekit.training import TrainConfig

    quick = study.study_config(quick=True, seed=3)
    assert quick == TrainConfig.quick(seed=3)
    assert (quick.grid_epochs, quick.n_folds, quick.synthetic_crops, quick.seed) == (1, 2, 96, 3)
    assert quick.learning_rates == (1e-4, 1e-3, 1e-2) and quick.batch_sizes == (8, 16, 32)  # the full grid
    assert study.study_config(quick=False) == TrainConfig()
    assert study.study_config(quick=True, epochs=5).epochs == 5


def test_load_study_data_synthetic_default():
    crops = study.load_study_data(None, quick=True, seed=0, n_synthetic=12)
    assert len(crops) == 12 and crops.images.shape[1:] == (64, 64) and crops.units == "HU"


def test_load_study_data_reads_an_image_folder_and_centre_crops(tmp_path):
    from nodulekit.phantom import generate_crops, write_image_folder

    write_image_folder(generate_crops(4, size=96, seed=1), tmp_path / "data")
    crops = study.load_study_data(tmp_path / "data", crop_size=64)
    assert len(crops) == 4 and crops.images.shape == (4, 64, 64) and crops.masks.shape == (4, 64, 64)


def test_load_study_data_cuts_crops_from_a_volume(monkeypatch, tmp_path):
    hu = np.full((3, 80, 80), -1000.0, np.float32)
    mask = np.zeros(hu.shape, np.uint8)
    mask[1, 38:43, 38:43] = 1
    volume = Volume(hu=hu, spacing=(2.5, 0.7, 0.7), mask=mask)
    monkeypatch.setattr("nodulekit.readers.read_any", lambda path, **options: volume)
    crops = study.load_study_data(tmp_path, crop_size=32)
    assert crops.images.shape == (1, 32, 32) and crops.masks.sum() == 25


def test_load_study_data_missing_folder(tmp_path):
    with pytest.raises(MissingDataError):
        study.load_study_data(tmp_path / "absent")


def test_describe_crops_counts_by_hand():
    crops = make_crops(patients=("A", "B"), per_patient=2, size=8, radius=1, empty=(0,))
    summary = study.describe_crops(crops)["value"]
    assert summary["crops"] == 4 and summary["patients"] == 2 and summary["nodules"] == 4
    assert summary["crops without nodule pixels"] == 1 and summary["median nodule pixels"] == 5.0  # radius-1 disc = 5 px
    assert summary["background fraction"] == round(1 - 15 / 256, 4)


def test_paper_style_inputs_are_rgb_lung_window_crops():
    hu = np.full((1, 100, 100), -1000.0, np.float32)
    mask = np.zeros(hu.shape, np.uint8)
    mask[0, 45:55, 45:55] = 1
    hu[mask > 0] = 0.0
    images, masks = study.paper_style_inputs(Volume(hu=hu, spacing=(2.5, 0.7, 0.7), mask=mask), size=64)
    assert images.shape == (1, 64, 64, 3) and images.dtype == np.uint8 and masks.shape == (1, 64, 64)
    assert (images[..., 0] == images[..., 2]).all()
    # lung window -600/1500 maps -1350..150 HU to 0..255: 0 HU -> 229.5 -> 230, -1000 HU -> 59.5 -> 60
    assert images[0, 32, 32, 0] == 230 and images[0, 2, 2, 0] == 60
    assert masks.sum() == 100


def test_paper_style_inputs_needs_a_nodule():
    volume = Volume(hu=np.zeros((1, 16, 16)), spacing=(1, 1, 1), mask=np.zeros((1, 16, 16)))
    with pytest.raises(InvalidParameterError):
        study.paper_style_inputs(volume)


# ------------------------------------------------------------------------------------------------
# grid and training tables


def grid_frame() -> pd.DataFrame:
    rows = []
    for architecture in ("unet", "attention_unet"):
        for lr in (1e-3, 1e-2):
            for bs in (8, 16):
                failed = architecture == "unet" and lr == 1e-2 and bs == 16
                rows.append(
                    {
                        "architecture": architecture,
                        "learning_rate": lr,
                        "batch_size": bs,
                        "status": "failed" if failed else "ok",
                        "reason": "diverged: loss became NaN" if failed else "",
                        "val_dice": math.nan if failed else lr * 10 + bs / 100,
                        "selected": False,
                    }
                )
    return pd.DataFrame(rows)


def test_grid_table_marks_failures_and_the_choice():
    from nodulekit.training import select_hyperparameters

    grid = grid_frame()
    selection = select_hyperparameters(grid)
    grid = study.mark_selected(grid, selection)
    assert grid["selected"].sum() == 2
    table = study.grid_table(grid)
    assert list(table.columns) == ["batch 8", "batch 16"]
    assert table.loc[("unet", 0.01), "batch 16"] == "failed: diverged: loss became NaN"
    assert table.loc[("unet", 0.01), "batch 8"] == "0.180 *"  # 0.1 + 0.08 beats 0.01 + 0.16
    assert table.loc[("attention_unet", 0.01), "batch 16"] == "0.260 *"
    with pytest.raises(InvalidParameterError):
        study.grid_table(grid, metric="val_nothing")


def test_overfitting_gap_by_hand():
    rows = []
    curves = [((0.5, 0.8), (0.4, 0.5), (0.6, 0.7)), ((0.6, 0.9), (0.5, 0.6), (0.5, 0.4))]  # train Dice, val Dice, val loss
    for fold, (train_dice, val_dice, val_loss) in enumerate(curves):
        for epoch in (1, 2):
            rows.append(
                {
                    "phase": "cv", "architecture": "unet", "learning_rate": 1e-3, "batch_size": 8,
                    "fold": fold, "epoch": epoch,
                    "loss": 0.3, "val_loss": val_loss[epoch - 1], "accuracy": 0.99, "val_accuracy": 0.97,
                    "dice": train_dice[epoch - 1], "val_dice": val_dice[epoch - 1],
                }
            )
    gap = study.overfitting_gap(pd.DataFrame(rows)).iloc[0]
    assert gap["epochs"] == 2 and gap["best_epoch"] == 1.5  # fold 0 kept epoch 1, fold 1 epoch 2
    assert gap["dice_gap"] == pytest.approx(((0.8 - 0.5) + (0.9 - 0.6)) / 2)
    assert gap["loss_gap"] == pytest.approx(((0.7 - 0.3) + (0.4 - 0.3)) / 2)
    assert gap["accuracy_gap"] == pytest.approx(0.02)
    assert gap["dice_gap_at_best"] == pytest.approx(((0.5 - 0.4) + (0.9 - 0.6)) / 2)
    with pytest.raises(InvalidParameterError):
        study.overfitting_gap(pd.DataFrame(rows), phase="grid")


# ------------------------------------------------------------------------------------------------
# baseline, folds, examples


def test_baseline_scores_of_predicting_nothing():
    masks = np.zeros((4, 8, 8), np.uint8)
    masks[1:, 2:4, 2:4] = 1  # three crops with a 4-pixel nodule, one empty
    one = study.baseline_scores(masks, empty="one")
    assert one["dice"] == 0.25 and one["global_dice"] == 0.0 and one["n_true_empty"] == 1
    assert one["accuracy"] == one["background_accuracy"] == 1 - 12 / 256
    assert study.baseline_scores(masks, empty="zero")["dice"] == 0.0


def test_fold_metrics_table_puts_the_baseline_beside():
    folds = folds_table([0.6, 0.7], [0.65, 0.75])
    table = study.fold_metrics_table(folds, baseline=BASELINE)
    metrics = ["dice", "iou", "precision", "recall", "accuracy"]
    assert list(table.columns) == ["architecture", "fold", *metrics, "background_accuracy"]
    assert len(table) == 5 and table.iloc[-1]["architecture"] == "all background" and table.iloc[-1]["accuracy"] == 0.96
    with pytest.raises(InvalidParameterError):
        study.fold_metrics_table(folds.drop(columns="test_iou"))


def test_pick_examples_best_worst_random():
    scores = pd.DataFrame(
        {
            "crop": range(6),
            "nodule_id": ["n0", "n0", "n1", "n2", "n3", "n4"],
            "dice": [0.9, 0.95, 0.1, 0.5, 0.0, 1.0],
            "true_empty": [False, False, False, False, False, True],
        }
    )
    assert list(study.pick_examples(scores, n=2, which="best")) == [1, 3]  # crop 5 is empty, crop 0 repeats n0
    assert list(study.pick_examples(scores, n=2, which="worst")) == [4, 2]
    # fewer nodules than n: a nodule may repeat
    assert sorted(study.pick_examples(scores, n=5, which="random")) == [0, 1, 2, 3, 4]
    assert study.example_titles(scores, [1]) == ["n0: Dice 0.95"]
    assert study.example_titles(scores.assign(slice_index=7), [2]) == ["n1 slice 7: Dice 0.10"]
    with pytest.raises(InvalidParameterError):
        study.pick_examples(scores, which="median")


# ------------------------------------------------------------------------------------------------
# paired comparison


def test_paired_comparison_by_hand():
    unet = [0.5, 0.6, 0.7, 0.8]
    attention = [0.6, 0.8, 0.8, 1.0]  # differences 0.1, 0.2, 0.1, 0.2
    table = study.paired_comparison(folds_table(unet, attention), metrics=("dice",))
    row = table.iloc[0]
    differences = np.array([0.1, 0.2, 0.1, 0.2])
    t = differences.mean() / (differences.std(ddof=1) / 2)
    assert row["n_folds"] == 4 and row["mean_difference"] == pytest.approx(0.15)
    assert row["sd_difference"] == pytest.approx(differences.std(ddof=1))
    assert row["t"] == pytest.approx(t) and row["p_t_test"] == pytest.approx(2 * stats.t.sf(t, df=3))
    assert row["p_wilcoxon"] == pytest.approx(0.125)  # 4 positive differences: the smallest exact p
    assert row["conclusion"].startswith("attention_unet higher")


def test_paired_comparison_equal_models_and_errors():
    same = study.paired_comparison(folds_table([0.5, 0.6], [0.5, 0.6]), metrics=("dice",)).iloc[0]
    assert same["p_t_test"] == 1.0 and same["p_wilcoxon"] == 1.0 and same["conclusion"].startswith("no significant")
    with pytest.raises(InvalidParameterError):
        study.paired_comparison(folds_table([0.5], [0.6]), first="segnet")
    single = study.paired_comparison(folds_table([0.5], [0.6]), metrics=("dice",)).iloc[0]
    assert math.isnan(single["p_t_test"]) and single["conclusion"].startswith("not testable")


# ------------------------------------------------------------------------------------------------
# held-out predictions from a run folder


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """A run folder with one finished fold and patient C held out.

    Its "model" has a known output: one 1x1 convolution (weight 50, bias 0) and a sigmoid, so a
    pixel is called nodule exactly where the preprocessed (z-scored) input is above 0.
    """
    import keras

    from nodulekit.preprocessing import paper_pipeline
    from nodulekit.utils import write_json

    run = tmp_path_factory.mktemp("run")
    study.study_config(quick=True).save(run / "config.json")
    paper_pipeline().save(run / "preprocessing.json")
    write_json(run / "data.json", {"split": {"train": ["A"], "val": ["B"], "test": ["C"]}})
    folder = run / "cv" / "unet" / "fold-0"
    folder.mkdir(parents=True)
    inputs = keras.Input((32, 32, 1))
    above_zero = keras.layers.Conv2D(
        1, 1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(50.0), bias_initializer="zeros", name="mask"
    )(inputs)
    keras.Model(inputs, above_zero).save(folder / "best.keras")
    write_json(folder / "done", {"status": "ok"})
    return run


def test_predict_held_out_scores_the_test_patients(fake_run):
    crops = make_crops(empty=(5,))
    held = study.predict_held_out(crops, run_dir=fake_run)
    assert held.images.shape == (2, 32, 32) and set(held.table["patient_id"]) == {"C"}
    assert np.abs(held.inputs.mean(axis=(1, 2))).max() < 1e-3  # the run's pipeline z-scored them
    assert list(held.probabilities) == [("unet", 0)]
    assert list(held.scores.columns[:6]) == ["architecture", "fold", "crop", "patient_id", "nodule_id", "slice_index"]
    # Worked out by hand. Crop 4 (patient C's first) is a disc of radius 4 (49 pixels) of 1000 on
    # noise of sd 10. The run's pipeline median-filters (3x3) then z-scores it: the filter removes
    # the disc's 4 tips (each has only 4 disc pixels in its 3x3 neighbourhood, fewer than the 5 of
    # a majority), then the disc is near +4.4 and the background near -0.2, so the model draws 45
    # of the 49 pixels and nothing else: Dice 2*45 / (45 + 49) = 90/94. Crop 5 is noise only:
    # z-scored, about half its pixels are above 0, a false positive on an empty mask, which the
    # run's empty policy ("one") scores 0.
    prediction = held.prediction("unet", 0)
    assert prediction.dtype == np.uint8
    tips = np.zeros((32, 32), np.uint8)
    tips[[12, 20, 16, 16], [16, 16, 12, 20]] = 1
    np.testing.assert_array_equal(prediction[0], crops.masks[4] - tips)
    assert 0.2 < prediction[1].mean() < 0.8
    np.testing.assert_allclose(held.scores["dice"], [90 / 94, 0.0])
    assert len(study.held_out_crops(crops, run_dir=fake_run)) == 2
    assert study.load_fold_model(fake_run, "unet", 0).input_shape == (None, 32, 32, 1)


def test_predict_held_out_refuses_what_it_cannot_use(fake_run, tmp_path):
    with pytest.raises(MissingDataError):
        study.predict_held_out(make_crops(), run_dir=tmp_path)  # not a run folder
    with pytest.raises(MissingDataError):
        study.predict_held_out(make_crops(patients=("X", "Y")), run_dir=fake_run)  # no test patient
    with pytest.raises(MissingDataError):
        study.load_fold_model(fake_run, "attention_unet", 0)


def test_best_fold_uses_validation():
    folds = folds_table([0.5, 0.9, 0.7], [0.6, 0.6, 0.8])
    assert study.best_fold(folds, "unet") == 1 and study.best_fold(folds, "attention_unet") == 2
    with pytest.raises(InvalidParameterError):
        study.best_fold(folds, "segnet")


# ------------------------------------------------------------------------------------------------
# summary, results.json, figures list


def results_tables() -> dict[str, pd.DataFrame]:
    from nodulekit.training import summarize_folds

    folds = folds_table([0.6, 0.7], [0.65, 0.8])
    return {
        "selection": pd.DataFrame(
            {"architecture": ["unet", "attention_unet"], "learning_rate": [1e-3, 1e-2], "batch_size": [8, 16], "val_dice": [0.7, 0.8]}
        ),
        "grid": grid_frame(),
        "folds": folds,
        "summary": summarize_folds(folds),
    }


def test_summary_table_one_page():
    results = results_tables()
    comparison = study.paired_comparison(results["folds"], metrics=("dice",))
    table = study.summary_table(results, comparison=comparison, baseline=BASELINE, data={"n_crops": 96, "n_patients": 4})
    assert list(table.columns) == ["unet", "attention_unet", "all background", "paper / literature"]
    assert table.loc["learning rate (grid)", "attention_unet"] == "0.01"
    assert table.loc["grid trials ok / failed", "unet"] == "3 / 1"
    assert table.loc["test Dice (mean ± sd over folds)", "unet"] == "0.650 ± 0.071"
    assert table.loc["test pixel accuracy", "all background"] == "0.960"
    assert table.loc["data", "unet"] == "96 crops of 4 patients"
    assert "p = " in table.loc["paired test over folds (Dice)", "attention_unet"]


def test_write_results_json_round_trip(tmp_path):
    results = results_tables()
    path = study.write_results_json(
        tmp_path / "results.json", results=results, baseline={"dice": np.float64(0.25)}, figures=["fig01_a.png"],
        extra={"quick": True},
    )
    saved = json.loads(path.read_text())
    assert saved["all_background_baseline"] == {"dice": 0.25} and saved["figures"] == ["fig01_a.png"]
    assert saved["quick"] is True
    assert len(saved["folds"]) == 4 and saved["selection"][1]["batch_size"] == 16


def test_figure_index_and_missing_figures(tmp_path):
    assert study.figure_index(tmp_path / "absent") == []
    for name in ("fig05_accuracy.png", "fig03_risk_heatmap_synthetic.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert study.figure_index(tmp_path) == ["fig03_risk_heatmap_synthetic.png", "fig05_accuracy.png"]
    assert study.missing_figures(tmp_path, ["05_results"]) == ["fig05b_unet_vs_attention.png", "fig06_summary.png"]
    assert "fig01_lung_ct.png" in study.missing_figures(tmp_path)


def test_risk_data_synthetic_default():
    risk = study.risk_data(None, seed=0)
    assert risk.attrs["synthetic"] and len(risk) == 1000


# ------------------------------------------------------------------------------------------------
# figures


def disc_volume(center=(60, 70), radius=5, shape=(128, 128)) -> Volume:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = ((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2).astype(np.uint8)
    hu = np.where(mask > 0, 20.0, -850.0).astype(np.float32)
    return Volume(hu=hu[None], spacing=(2.5, 0.7, 0.7), mask=mask[None])


def test_plot_lung_ct_crop_box_around_the_nodule():
    from matplotlib.patches import Rectangle

    fig = plots.plot_lung_ct(disc_volume(center=(60, 70)), crop_size=32)
    boxes = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert len(boxes) == 1
    assert boxes[0].get_xy() == (70 - 16 - 0.5, 60 - 16 - 0.5) and boxes[0].get_width() == 32
    assert fig.axes[1].images[0].get_array().shape == (32, 32)
    with pytest.raises(InvalidParameterError):
        plots.plot_lung_ct(Volume(hu=np.zeros((1, 16, 16)), spacing=(1, 1, 1), mask=np.zeros((1, 16, 16))))


def test_plot_research_stages_draws_one_box_per_stage():
    fig = plots.plot_research_stages()
    boxes = [p for p in fig.axes[0].patches if (p.get_gid() or "").startswith("stage-")]
    assert len(boxes) == len(plots.RESEARCH_STAGES) == 6
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "Data" in texts and "Training" in texts
    with pytest.raises(InvalidParameterError):
        plots.plot_research_stages([])


def test_plot_preprocessing_crops_grid():
    from nodulekit.preprocessing import paper_pipeline

    crops = make_crops(size=32)
    rgb = np.repeat(crops.images[:2, ..., None], 3, axis=-1)
    pipeline = paper_pipeline(crop_size=16, equalize=True)
    fig = plots.plot_preprocessing_crops(rgb, pipeline, masks=crops.masks[:2])
    assert len(fig.axes) == 3 * (len(pipeline) + 1)  # two crop rows + histograms, input + each step
    with pytest.raises(InvalidParameterError):
        plots.plot_preprocessing_crops(rgb, pipeline, masks=crops.masks[:1])


def test_plot_fold_metrics_and_honest_accuracy():
    table = study.fold_metrics_table(folds_table([0.6, 0.7], [0.65, 0.75]), baseline=BASELINE)
    fig = plots.plot_fold_metrics(table, metrics=("dice", "accuracy"))
    assert len(fig.axes[0].patches) == 2 * 3  # two metrics x (two models + baseline)
    fig = plots.plot_honest_accuracy(table)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == pytest.approx([0.96, 0.65, 0.7])  # baseline, U-Net mean, Attention U-Net mean accuracy
    with pytest.raises(InvalidParameterError):
        plots.plot_honest_accuracy(table[table["architecture"] != "all background"])


def test_plot_prediction_pairs_and_attention_maps():
    crops = make_crops(size=32)
    fig = plots.plot_prediction_pairs(crops.images[:3], crops.masks[:3], crops.masks[:3], titles=["a", "b", "c"], columns=2)
    assert sum(bool(ax.images) for ax in fig.axes) == 6
    with pytest.raises(InvalidParameterError):
        plots.plot_prediction_pairs(crops.images[:3], crops.masks[:2], crops.masks[:3])
    maps = {"attention_gate_1_coefficients": np.full((2, 8, 8), 0.5), "attention_gate_2_coefficients": np.ones((2, 16, 16))}
    fig = plots.plot_attention_maps(crops.images[:2], maps, truths=crops.masks[:2], predictions=crops.masks[:2])
    assert len([ax for ax in fig.axes if ax.images]) == 2 * 4
    with pytest.raises(InvalidParameterError):
        plots.plot_attention_maps(crops.images[:2], {"gate": np.ones((1, 8, 8))})


def test_plot_model_comparison_and_summary_table():
    folds = folds_table([0.5, 0.6, 0.7], [0.6, 0.8, 0.8])
    comparison = study.paired_comparison(folds)
    fig = plots.plot_model_comparison(folds, comparison=comparison, metrics=("dice", "recall"))
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 3 + 1  # one line per fold and the mean
    assert "Wilcoxon" in fig.axes[0].get_title()
    table = pd.DataFrame({"unet": ["0.5", "x" * 80]}, index=["a", "b"])
    fig = plots.plot_summary_table(table, title="t")
    assert fig.axes[0].tables and fig.axes[0].get_title(loc="left") == "t"
