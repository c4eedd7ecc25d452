"""Recipes, TTA, post-processing and the per-slice / per-nodule scoring of nodulekit.evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nodulekit import CropSet
from nodulekit import evaluation as ev
from nodulekit.errors import InvalidParameterError, RunFolderError


def _crops(masks, nodules):
    n = len(masks)
    table = pd.DataFrame(
        {
            "patient_id": [f"P{i}" for i in nodules],
            "nodule_id": [f"P{i}/n" for i in nodules],
            "slice_index": range(n),
            "pixel_spacing_mm": 0.7,
            "slice_spacing_mm": 2.5,
            "n_readers": 1,
            "source": "test",
        }
    )
    return CropSet(np.zeros(np.shape(masks), np.float32), np.asarray(masks, np.uint8), table)


def test_keep_central_component_keeps_the_centre_blob_and_fills_holes():
    mask = np.zeros((9, 9), bool)
    mask[3:6, 3:6] = True
    mask[4, 4] = False  # a hole in the central blob
    mask[0:2, 7:9] = True  # a far blob
    out = ev.keep_central_component(mask)
    expected = np.zeros((9, 9), bool)
    expected[3:6, 3:6] = True
    np.testing.assert_array_equal(out, expected)
    # No component on the centre: the nearest one is kept.
    off = np.zeros((9, 9), bool)
    off[0, 0] = True
    off[5:7, 5:7] = True
    assert ev.keep_central_component(off).sum() == 4 and ev.keep_central_component(off)[5, 5]
    assert not ev.keep_central_component(np.zeros((4, 4), bool)).any()


def test_dihedral_tta_maps_every_view_back():
    rng = np.random.default_rng(0)
    images = rng.random((3, 8, 8)).astype(np.float32)
    # An equivariant predictor (pixel-wise) gives back exactly its own output.
    np.testing.assert_allclose(ev.dihedral_tta(lambda x: x**2, images), images**2, rtol=1e-6)
    # A predictor that only looks at the top-left pixel sees all four corners once each, twice.
    corner = lambda x: np.broadcast_to(x[:, :1, :1], x.shape).copy()  # noqa: E731
    expected = (images[:, 0, 0] + images[:, 0, -1] + images[:, -1, 0] + images[:, -1, -1]) / 4
    np.testing.assert_allclose(ev.dihedral_tta(corner, images)[:, 3, 3], expected, rtol=1e-6)


def test_score_predictions_states_the_empty_policy():
    truth = np.zeros((3, 4, 4), np.uint8)
    truth[0, :2, :2] = 1  # 4 px
    truth[1, :2, :2] = 1
    pred = np.zeros_like(truth)
    pred[0, :2, :2] = 1  # perfect
    pred[1, :1, :2] = 1  # half: Dice 2*2/(2+4) = 2/3
    pred[2, 3, 3] = 1  # a false positive on the empty slice
    crops = _crops(truth, [0, 0, 0])
    scores = ev.score_predictions(crops, pred)
    assert scores["slice_dice"] == pytest.approx((1 + 2 / 3) / 2)
    # Nodule pooled over its 3 slices: TP 6, FP 1, FN 2 -> 12 / 15.
    assert scores["nodule_dice"] == pytest.approx(12 / 15)
    assert scores["n_empty_slices"] == 1 and scores["n_empty_slices_kept_empty"] == 0
    assert scores["background_accuracy"] == pytest.approx(1 - 8 / 48)
    assert "non-empty" in scores["empty_policy"]


def test_recipe_round_trip_and_unknown_fields():
    recipe = ev.PAPER_RECIPE.replace(name="x", augment=True)
    assert ev.Recipe.from_dict(recipe.to_dict()) == recipe
    assert [s.name for s in recipe.pipeline().steps] == ["to_grayscale", "median_filter", "zscore"]
    with pytest.raises(InvalidParameterError, match="unknown recipe fields"):
        ev.Recipe.from_dict({"nope": 1})


def test_recipe_augmentation_is_an_augmentation_value():
    from nodulekit.training.augment import RECIPE_AUGMENTATION, Augmentation

    assert ev.PAPER_RECIPE.augmentation is None
    assert ev.PAPER_RECIPE.replace(augment=True).augmentation == RECIPE_AUGMENTATION
    assert ev.PAPER_RECIPE.replace(augment=True).to_dict()["augment"] is True  # cached records still compare equal
    custom = ev.PAPER_RECIPE.replace(name="y", augment=Augmentation(rotation_degrees=0, scale=0, shift_pixels=0, intensity=0.2))
    assert ev.Recipe.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom


def test_augmented_sequence_keeps_images_and_masks_aligned():
    images = np.zeros((4, 8, 8), np.float32)
    images[:, 0, 1] = 1.0  # a marker pixel
    masks = (images > 0).astype(np.uint8)
    seq = ev.AugmentedSequence(images, masks, batch_size=4, augment=True, seed=1)
    x, y = seq[0]
    assert x.shape == (4, 8, 8, 1) and y.shape == (4, 8, 8, 1)
    # Geometry is shared: the marker moved to the same place in image and mask.
    np.testing.assert_array_equal(np.argmax(x.reshape(4, -1), axis=1), np.argmax(y.reshape(4, -1), axis=1))


def test_cross_validate_runs_end_to_end_and_resumes_from_its_cache(tmp_path):
    from nodulekit.phantom import generate_crops

    crops = generate_crops(60, size=64, seed=0)
    recipe = ev.PAPER_RECIPE.replace(
        name="tiny", epochs=1, batch_size=16, model_options={"filters": (4, 8, 16, 32, 64), "batch_norm": True, "output_bias": "prior"},
    )
    table = ev.cross_validate(crops, recipe, n_folds=2, folds=[0], cache_dir=tmp_path, progress=False)
    assert list(table["variant"]) == ["plain", "tta_pp"] and set(table["recipe"]) == {"tiny"}
    for row in table.itertuples():
        assert 0.0 <= row.nodule_dice <= 1.0 and 0.0 <= row.slice_dice <= 1.0
        assert row.n_slices > 0 and row.background_accuracy > 0.8
    assert set(pd.DataFrame(table.attrs["per_nodule"]).columns) >= {"nodule_id", "dice", "fold", "variant"}
    assert (tmp_path / "cv_tiny_fold0.json").is_file()
    again = ev.cross_validate(crops, recipe, n_folds=2, folds=[0], cache_dir=tmp_path, progress=False)  # read, not retrained
    pd.testing.assert_frame_equal(again, table, check_like=True)
    with pytest.raises(RunFolderError, match="epochs"):
        ev.cross_validate(crops, recipe.replace(epochs=2), n_folds=2, folds=[0], cache_dir=tmp_path, progress=False)
    with pytest.raises(RunFolderError, match="n_folds=2"):
        ev.cross_validate(crops, recipe, n_folds=3, folds=[0], cache_dir=tmp_path, progress=False)
    with pytest.raises(RunFolderError, match="seed=0"):
        ev.cross_validate(crops, recipe, n_folds=2, folds=[0], seed=1, cache_dir=tmp_path, progress=False)
    with pytest.raises(RunFolderError, match="lacks the variants"):
        variants = {**ev.VARIANTS, "tta_only": {"tta": True, "postprocess": False}}
        ev.cross_validate(crops, recipe, n_folds=2, folds=[0], variants=variants, cache_dir=tmp_path, progress=False)
    summary = ev.summarise_cv(table)
    assert summary.loc[("tiny", "plain"), "folds"] == 1 and "±" in summary.loc[("tiny", "tta_pp"), "nodule_dice"]


def test_window_training_cuts_shifted_windows_from_larger_crops():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 128, 128)).astype(np.float32) * 5 + 3
    masks = np.zeros((6, 128, 128), np.float32)
    masks[:, 60:68, 60:68] = 1
    sequence = ev.AugmentedSequence(images, masks, batch_size=6, augment=False, seed=0, window=64, jitter=32)
    x, y = sequence[0]
    assert x.shape == y.shape == (6, 64, 64, 1)
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)  # each window z-scored
    np.testing.assert_allclose(x.std(axis=(1, 2, 3)), 1.0, atol=1e-3)
    assert len({int(m.sum()) for m in y}) > 1  # shifted: the nodule is cut differently
    assert ev.centre_windows(masks, 64)[:, 28:36, 28:36].all()
    with pytest.raises(InvalidParameterError, match="does not fit"):
        ev.AugmentedSequence(images, masks, batch_size=6, augment=False, window=64, jitter=33)
    with pytest.raises(InvalidParameterError, match="window"):
        ev.AugmentedSequence(images, masks, batch_size=6, augment=False, jitter=4)


def test_reader_agreement_scores_each_reader_against_the_others():
    square = np.zeros((8, 8), np.uint8)
    square[2:6, 2:6] = 1
    elsewhere = np.zeros((8, 8), np.uint8)
    elsewhere[0:2, 0:2] = 1
    empty = np.zeros((8, 8), np.uint8)
    readers = np.stack(
        [
            [square, square, square, empty],  # nodule P0, slice 1: three readers agree, one did not mark it
            [square, square, empty, empty],  # nodule P0, slice 2: reader 2 stops a slice early
            [square, empty, empty, empty],  # nodule P1: one reader only, nobody to compare with
            [square, elsewhere, empty, empty],  # nodule P2: two readers who disagree completely
        ]
    )
    crops = _crops(readers.max(axis=1), [0, 0, 1, 2])
    crops.reader_masks = readers
    table = ev.reader_agreement(crops).set_index(["nodule_id", "reader"])
    assert sorted(table.index) == [("P0/n", 0), ("P0/n", 1), ("P0/n", 2), ("P2/n", 0), ("P2/n", 1)]
    assert table.loc[("P0/n", 2), "other_readers"] == 2
    # Readers 0 and 1 against the others (2 of them, 50 %: 1 of 2 suffices): the union = both slices.
    assert table.loc[("P0/n", 0), "dice"] == pytest.approx(1.0)
    # Reader 2 drew 16 px of the 32 in the others' consensus.
    assert table.loc[("P0/n", 2), "dice"] == pytest.approx(2 * 16 / (16 + 32))
    assert (table.loc["P2/n", "dice"] == 0).all()
    with pytest.raises(InvalidParameterError, match="per-reader masks"):
        ev.reader_agreement(_crops(readers.max(axis=1), [0, 0, 1, 2]))


def test_reader_versus_others_yields_the_other_readers_consensus():
    square = np.zeros((6, 6), bool)
    square[1:5, 1:5] = True
    corner = np.zeros((6, 6), bool)
    corner[1:3, 1:3] = True
    empty = np.zeros((6, 6), bool)
    readers = np.stack([[square, corner, corner], [square, empty, empty]])  # one crop of nodule "a", one of "b"
    ids = np.array(["a", "b"])
    pairs = {reader: (keep, others) for reader, keep, others in ev.reader_versus_others(readers, ids)}
    assert sorted(pairs) == [0, 1, 2]  # nodule "b" has one reader: nobody to compare with
    keep, others = pairs[0]
    assert keep.tolist() == [True, False]
    np.testing.assert_array_equal(others[0], corner)  # readers 1 and 2 agree on the corner
    keep, others = pairs[1]
    np.testing.assert_array_equal(others[0], square | corner)  # 1 of 2 others suffices at 50 %
    assert not list(ev.reader_versus_others(readers[1:], ids[1:]))


@pytest.mark.realdata
def test_reader_agreement_on_lidc_matches_the_published_range(lidc_slices_dir):
    """Radiologists against each other on the real dev crops (the human reference of notebook 06)."""
    from nodulekit.readers import read_lidc_release

    crops = read_lidc_release(lidc_slices_dir, crop_size=64, patients=40, progress=False)
    table = ev.reader_agreement(crops)
    per_nodule = table.groupby("nodule_id")["dice"].mean()
    assert per_nodule.size > 50 and table["other_readers"].between(1, 3).all()
    assert 0.7 < per_nodule.mean() < 0.9  # published inter-reader agreement on LIDC: about 0.8


def test_synthetic_to_real_trains_on_the_generator_and_caches(tmp_path):
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 64, 64), np.uint8)
    masks[:, 28:36, 28:36] = 1
    real = _crops(masks, [0, 0, 1, 1])
    real.images[:] = rng.normal(80, 10, real.images.shape) + 100 * masks
    recipe = ev.PAPER_RECIPE.replace(name="tiny_synthetic", epochs=1, model_options={"filters": (4, 8, 16, 32, 64), "batch_norm": True})
    cache = tmp_path / "synthetic.json"
    table = ev.synthetic_to_real(real, recipe, n_synthetic=16, cache=cache)
    assert list(table["variant"]) == ["plain", "tta_pp"] and (table["n_synthetic"] == 16).all()
    assert table["nodule_dice"].between(0, 1).all() and cache.is_file()
    again = ev.synthetic_to_real(real, recipe, n_synthetic=16, cache=cache)  # read back, not retrained
    pd.testing.assert_frame_equal(again, table, check_like=True)
    with pytest.raises(RunFolderError, match="n_synthetic=16"):
        ev.synthetic_to_real(real, recipe, n_synthetic=32, cache=cache)
    with pytest.raises(RunFolderError, match="recipe fields"):
        ev.synthetic_to_real(real, recipe.replace(epochs=2), n_synthetic=16, cache=cache)


def test_recipe_comparison_figure_draws_every_anchor():
    import matplotlib

    matplotlib.use("Agg")
    from nodulekit.plots.real_ct import PUBLISHED_ANCHORS, plot_recipe_comparison

    table = pd.DataFrame(
        [{"recipe": r, "variant": v, "fold": f, "nodule_dice": 0.7 + 0.01 * f} for r in ("a", "b") for v in ("plain", "tta_pp") for f in range(4)]
    )
    anchors = {**PUBLISHED_ANCHORS, "radiologists vs each other, measured here": 0.784}
    fig = plot_recipe_comparison(table, anchors=anchors, target=0.85)
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert len(labels) == len(anchors) + 1 and "radiologists vs each other, measured here: 0.784" in labels
    assert len(fig.axes[0].patches) == 4  # one bar per recipe and variant


def test_reader_agreement_scores_a_model_against_the_same_references():
    """A model is scored exactly as each radiologist is: against the consensus of the other readers."""
    square = np.zeros((8, 8), np.uint8)
    square[2:6, 2:6] = 1
    half = np.zeros((8, 8), np.uint8)
    half[2:6, 2:4] = 1
    empty = np.zeros((8, 8), np.uint8)
    readers = np.stack([[square, square, half], [square, empty, empty]])  # nodule P0 (3 readers), P1 (1 reader)
    crops = _crops(readers.max(axis=1), [0, 1])
    crops.reader_masks = readers
    model = np.stack([half, square])  # the model draws the left half of P0
    table = ev.reader_agreement(crops, model).set_index("reader")
    assert list(table.columns) == ["nodule_id", "other_readers", "dice", "model_dice"]
    assert table["nodule_id"].tolist() == ["P0/n"] * 3  # P1 has one reader: no reference, for anyone
    # Reader 0 left out: the others (square, half) at 50 % = their union = the square (16 px).
    assert table.loc[0, "dice"] == pytest.approx(1.0)
    assert table.loc[0, "model_dice"] == pytest.approx(2 * 8 / (8 + 16))
    # Reader 2 left out: the others agree on the square; reader 2 and the model both drew its half.
    assert table.loc[2, "dice"] == pytest.approx(table.loc[2, "model_dice"]) == pytest.approx(2 * 8 / (8 + 16))
    with pytest.raises(InvalidParameterError, match="shape"):
        ev.reader_agreement(crops, model[:1])


def test_real_ct_recipe_applies_its_changes_to_the_paper_recipe():
    paper = ev.real_ct_recipe("paper_unet")
    assert paper == ev.PAPER_RECIPE.replace(name="paper_unet")
    bn_aug = ev.real_ct_recipe("bn_aug", name="mine", epochs=3)
    assert (bn_aug.name, bn_aug.epochs, bn_aug.architecture, bn_aug.batch_size, bn_aug.augment) == ("mine", 3, "attention_unet", 32, True)
    assert bn_aug.model_options == {"output_bias": "prior", "batch_norm": True}
    assert bn_aug.learning_rate == ev.PAPER_RECIPE.learning_rate  # what the entry does not change stays the paper's
    balanced = ev.real_ct_recipe("bn_aug_balanced")
    assert balanced.loss_options == {"fn_weight": 0.5, "fp_weight": 0.5, "gamma": 0.75} and balanced.batch_size == 32
    custom = ev.real_ct_recipe("wide", recipes={"wide": {"batch_size": 8}})
    assert (custom.name, custom.batch_size) == ("wide", 8)
    with pytest.raises(InvalidParameterError, match="unknown recipe 'nope'; known: paper_unet"):
        ev.real_ct_recipe("nope")
    with pytest.raises(InvalidParameterError, match="known: wide"):
        ev.real_ct_recipe("bn_aug", recipes={"wide": {}})


def test_dice_by_size_figure_puts_each_nodule_at_its_size_and_dice():
    import matplotlib

    matplotlib.use("Agg")
    from nodulekit.plots.real_ct import plot_dice_by_size

    per_nodule = pd.DataFrame(
        {
            "nodule_id": ["n1", "n2", "n3", "n1", "n2", "n3"],
            "dice": [0.9, 0.5, np.nan, 0.8, 0.1, 0.7],
            "recipe": ["a", "a", "a", "b", "b", "b"],
            "variant": "plain",
        }
    )
    sizes = pd.Series({"n1": 400, "n2": 20, "n3": 90})
    fig = plot_dice_by_size(per_nodule, sizes)
    ax = fig.axes[0]
    points = [collection.get_offsets().tolist() for collection in ax.collections]
    assert points == [[[400, 0.9], [20, 0.5]], [[400, 0.8], [20, 0.1], [90, 0.7]]]  # n3's NaN left out of a
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    assert ax.get_xscale() == "log" and ax.get_ylim() == (-0.02, 1.02)
    with pytest.raises(InvalidParameterError, match="nodule_id, dice, recipe"):
        plot_dice_by_size(per_nodule.drop(columns="recipe"), sizes)


def test_recipe_targets_round_trip_and_old_records_still_match():
    soft = ev.real_ct_recipe("bn_aug", targets="soft")
    assert ev.Recipe.from_dict(json.loads(json.dumps(soft.to_dict()))) == soft
    old = ev.PAPER_RECIPE.to_dict()
    del old["targets"]  # a recipe saved before the field existed
    assert ev.Recipe.from_dict(old) == ev.PAPER_RECIPE and ev.Recipe.from_dict(old).targets == "consensus"
    with pytest.raises(InvalidParameterError, match="targets"):
        ev.PAPER_RECIPE.replace(targets="mean")
    cached = Path(__file__).resolve().parents[1] / "experiments" / "results" / "cv_bn_aug_fold0.json"
    if cached.is_file():  # the cached fold of the shipped recipe stays valid
        record = json.loads(cached.read_text())
        assert "targets" not in record["recipe_fields"]
        ev._check_cached(record, record["recipe_fields"], ev.real_ct_recipe("bn_aug"), variants=ev.VARIANTS, path=cached, n_folds=4, seed=0)
        with pytest.raises(RunFolderError, match="targets"):
            ev._check_cached(record, record["recipe_fields"], soft.replace(name="bn_aug"), variants=ev.VARIANTS, path=cached, n_folds=4, seed=0)


def _reader_crops(n_patients=4, per_patient=2, size=32):
    """Crops of discs drawn by 3 of 4 readers with radii 4, 5 and 6 (the soft mask has rings)."""
    from nodulekit.crops import consensus_mask

    rng = np.random.default_rng(0)
    n = n_patients * per_patient
    yy, xx = np.mgrid[:size, :size] - size // 2
    readers = np.zeros((n, 4, size, size), np.uint8)
    for reader, radius in enumerate((4, 5, 6)):
        readers[:, reader] = (yy**2 + xx**2) <= radius**2
    images = rng.normal(size=(n, size, size)).astype(np.float32) + 3 * readers[:, 0]
    patients = [f"P{i // per_patient}" for i in range(n)]
    table = pd.DataFrame({"patient_id": patients, "nodule_id": [f"{p}/n{i}" for i, p in enumerate(patients)], "slice_index": 0, "n_readers": 3})
    table = table.assign(pixel_spacing_mm=np.nan, slice_spacing_mm=np.nan, source="synthetic")
    return CropSet(images, consensus_mask(readers, n_readers=3), table, reader_masks=readers)


def test_train_and_score_fold_on_soft_targets_feeds_the_readers_fraction(monkeypatch):
    crops = _reader_crops()
    recipe = ev.real_ct_recipe(
        "bn_aug", name="tiny_soft", targets="soft", epochs=1, batch_size=4, validation_fraction=0.0,
        model_options={"filters": (4, 8, 16, 32, 64), "batch_norm": True, "output_bias": "prior"},
    )
    soft = ev.training_targets(crops, recipe)
    assert set(np.unique(np.rint(soft * 3)).astype(int)) == {0, 1, 2, 3}  # thirds
    np.testing.assert_array_equal(soft >= 0.5, crops.masks.astype(bool))
    seen, getitem = [], ev.AugmentedSequence.__getitem__

    def spy(self, index):
        x, y = getitem(self, index)
        seen.append(y)
        return x, y

    monkeypatch.setattr(ev.AugmentedSequence, "__getitem__", spy)
    result = ev.train_and_score_fold(crops, recipe, 0, n_folds=2, variants={"plain": {"tta": False, "postprocess": False}})
    fed = np.concatenate(seen)
    assert set(np.unique(np.rint(fed * 3)).astype(int)) == {0, 1, 2, 3} and np.allclose(fed * 3, np.rint(fed * 3), atol=1e-5)  # soft values kept
    assert result["recipe_fields"]["targets"] == "soft" and 0.0 <= result["plain"]["nodule_dice"] <= 1.0
    assert ev._prior_bias(soft, "soft") < ev._prior_bias(soft, "consensus")  # mean value, not the union's share
    with pytest.raises(InvalidParameterError, match="reader_masks"):
        ev.training_targets(CropSet(crops.images, crops.masks, crops.table), recipe)
