"""The one fit path (nodulekit.training.callbacks) and the cached real-CT folds it must keep accepting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nodulekit import evaluation as ev
from nodulekit.errors import RunFolderError
from nodulekit.training.data import batches_per_epoch, make_dataset

REPO = Path(__file__).resolve().parents[1]
CACHED_FOLDS = sorted((REPO / "experiments" / "results").glob("cv_*_fold*.json"))


def test_the_committed_cached_folds_are_there():
    # 4 folds each of paper_unet, paper_attention_unet, bn_aug and bn_aug_balanced (README numbers).
    assert len(CACHED_FOLDS) >= 16, [p.name for p in CACHED_FOLDS]


@pytest.mark.parametrize("path", CACHED_FOLDS, ids=lambda p: p.stem)
def test_cross_validate_accepts_every_committed_cached_fold(path):
    """Each cached fold is read back, not retrained: the recipe of its name, as defined today, still
    serialises to the fields the record was made with (crops=None: any retraining would fail)."""
    record = json.loads(path.read_text())
    name, fold = record["recipe"], int(record["fold"])
    assert path.name == f"cv_{name}_fold{fold}.json"
    if name not in ev.REAL_CT_RECIPES:
        pytest.fail(f"{path.name}: recipe {name!r} is not in evaluation.REAL_CT_RECIPES")
    variants = ev.VARIANTS
    table = ev.cross_validate(
        None, ev.real_ct_recipe(name), n_folds=4, folds=[fold], seed=0, variants=variants, cache_dir=path.parent, progress=False
    )
    assert list(table["variant"]) == list(variants)
    for variant in variants:
        row = table.set_index("variant").loc[variant]
        assert row["nodule_dice"] == record[variant]["nodule_dice"]
        assert row["slice_dice"] == record[variant]["slice_dice"]


def test_a_changed_recipe_is_refused_by_the_cache(tmp_path):
    path = CACHED_FOLDS[0]
    record = json.loads(path.read_text())
    (tmp_path / path.name).write_text(path.read_text())
    recipe = ev.real_ct_recipe(record["recipe"]).replace(epochs=7)
    with pytest.raises(RunFolderError, match="epochs"):
        ev.cross_validate(None, recipe, n_folds=4, folds=[int(record["fold"])], seed=0, cache_dir=tmp_path, progress=False)


def test_a_dataset_of_several_epochs_is_those_epochs_one_after_the_other():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(10, 16, 16)).astype(np.float32)
    masks = (rng.random((10, 16, 16)) > 0.7).astype(np.uint8)
    options = dict(batch_size=4, shuffle=True, augment=True, seed=3)
    chained = [x.numpy() for x, _ in make_dataset(images, masks, epoch=1, epochs=3, **options)]
    separate = [x.numpy() for epoch in (1, 2, 3) for x, _ in make_dataset(images, masks, epoch=epoch, **options)]
    assert len(chained) == 3 * batches_per_epoch(10, 4) == len(separate)
    for a, b in zip(chained, separate):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(chained[0], chained[batches_per_epoch(10, 4)])  # each epoch its own shuffle
    assert batches_per_epoch(10, 4, drop_remainder=True) == 2


def test_keep_best_weights_puts_back_the_lowest_val_loss_epoch():
    import keras

    from nodulekit.training.callbacks import KeepBestWeights, fit_model

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.weights = []

        def on_epoch_end(self, epoch, logs=None):
            self.weights.append((logs["val_loss"], self.model.get_weights()))

    model, train, validation = _rising_val_loss_model()
    record, keep = Record(), KeepBestWeights()
    history, failure = fit_model(model, train, epochs=6, validation_data=validation, callbacks=[record, keep])
    assert failure is None and len(history.history["val_loss"]) == 6
    losses = [loss for loss, _ in record.weights]
    best = int(np.argmin(losses))
    assert keep.best_epoch == best < 5, losses  # the last epoch is not the best one
    for kept, expected in zip(model.get_weights(), record.weights[best][1]):
        np.testing.assert_array_equal(kept, expected)
    assert not all(np.array_equal(a, b) for a, b in zip(model.get_weights(), record.weights[-1][1]))


def _rising_val_loss_model():
    """A linear model, its training data and a validation set that wants the zero model: the better
    it fits the training targets, the higher val_loss (so the lowest one is an early epoch)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, x_val = rng.normal(size=(64, 4)).astype(np.float32), rng.normal(size=(16, 4)).astype(np.float32)
    y = x @ np.arange(1, 5, dtype=np.float32)[:, None]
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model, tf.data.Dataset.from_tensor_slices((x, y)).batch(16), (x_val, np.zeros((16, 1), np.float32))


def test_unit_callbacks_keep_the_best_checkpoint_stop_early_and_save_a_resumable_state(tmp_path):
    from nodulekit.training.callbacks import BestCheckpoint, EpochRecord, ResumableEarlyStopping, UnitBackup, fit_model, new_state

    model, train, validation = _rising_val_loss_model()
    state = new_state({"unit": "toy"})
    stopping = ResumableEarlyStopping(state, patience=2)
    callbacks = [EpochRecord(state, learning_rate=0.05), BestCheckpoint(state, directory=tmp_path), stopping, UnitBackup(state, directory=tmp_path)]
    history, failure = fit_model(model, train, epochs=10, validation_data=validation, callbacks=callbacks)
    assert failure is None
    losses = history.history["val_loss"]
    best = int(np.argmin(losses)) + 1
    assert state["best_epoch"] == best and state["epoch"] == best + 2 == len(losses) < 10  # stopped 2 epochs after the best
    assert stopping.reason.startswith(f"early stopping after epoch {best + 2}")
    assert [row["epoch"] for row in state["history"]] == list(range(1, best + 3))
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["epoch"] == best + 2 and saved["wait"] == 2 and saved["best_val_loss"] == pytest.approx(min(losses))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["state.json", saved["weights"], saved["best"]])
    assert saved["best"] == f"best-epoch-{best:04d}.keras"

    # Resume: a fresh model restores the saved epoch's weights in on_train_begin, then trains on.
    last = model.get_weights()
    fresh, train, validation = _rising_val_loss_model()
    resumed = new_state({"unit": "toy"}) | saved
    backup = UnitBackup(resumed, directory=tmp_path)
    fit_model(fresh, train, epochs=best + 2, initial_epoch=best + 2, validation_data=validation, callbacks=[backup])
    for restored, expected in zip(fresh.get_weights(), last):
        np.testing.assert_array_equal(restored, expected)


def test_predict_probabilities_gives_the_first_output_as_float32_images():
    import keras

    from nodulekit.models import predict_probabilities

    inputs = keras.Input((8, 8, 1))
    first = keras.layers.Activation("sigmoid")(inputs)
    model = keras.Model(inputs, [first, keras.layers.Lambda(lambda t: 1.0 - t)(first)])
    images = np.linspace(-3, 3, 3 * 8 * 8).reshape(3, 8, 8)
    out = predict_probabilities(model, images, batch_size=2)
    assert out.shape == (3, 8, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-images)), rtol=1e-6)
