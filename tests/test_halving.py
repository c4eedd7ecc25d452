"""Tests of successive halving of the grid (``TrainConfig.grid_halving``, issue 21).

The rule is checked on hand-made records; one tiny grid checks end to end that a survivor, paused
at the rung and resumed, is the same trial as in the full grid (same history, same scores), that
the others stop, and that the selection only considers survivors.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from nodulekit.errors import InvalidParameterError
from nodulekit.training import TrainConfig, grid_search, select_hyperparameters
from nodulekit.training.protocol import _grid_epochs_counted, build_parser, halving_survivors, rung_score
from nodulekit.training.units import UnitData, UnitSpec, unit_meta

# The module's eager training and its warning filter, as in tests/test_training.py's protocol tests
# (tracing a tiny model costs more than training it): one definition, used here too.
from test_training import TINY, eager_training, pytestmark, tiny_crops  # noqa: F401


def _record(architecture, val_losses, val_dices, status="paused"):
    history = [{"epoch": e + 1, "val_loss": loss, "val_dice": dice} for e, (loss, dice) in enumerate(zip(val_losses, val_dices))]
    return {"architecture": architecture, "status": status, "history": history}


def test_rung_score_is_the_dice_at_the_lowest_validation_loss_up_to_the_rung():
    record = _record("unet", [0.9, 0.5, 0.7, 0.2], [0.1, 0.6, 0.8, 0.9])
    assert rung_score(record, 1) == 0.1
    assert rung_score(record, 3) == 0.6  # epoch 3 has a higher Dice but not the lowest loss
    assert rung_score(record, 4) == 0.9
    assert math.isnan(rung_score(_record("unet", [math.nan], [0.5]), 1))


def test_halving_keeps_the_best_per_architecture_and_never_a_failed_trial():
    records = [
        _record("unet", [0.5], [0.70]),
        _record("unet", [0.4], [0.80]),
        _record("unet", [0.3], [0.90], status="failed"),
        _record("unet", [0.6], [0.70]),  # ties with the first: grid order decides
        _record("attention_unet", [math.nan], [0.99]),  # no finite loss: never kept
        _record("attention_unet", [0.5], [0.10]),
    ]
    assert halving_survivors(records, rung=1, keep=2) == [True, True, False, False, False, True]
    assert halving_survivors(records, rung=1, keep=1) == [False, True, False, False, False, True]


def test_grid_halving_is_validated_round_trips_and_is_not_part_of_a_units_identity(tmp_path):
    config = TrainConfig(grid_epochs=10, grid_halving=(3, 2))
    assert TrainConfig.load(config.save(tmp_path / "c.json")) == config
    assert TrainConfig.from_dict({**config.to_dict(), "grid_halving": [3, 2]}).grid_halving == (3, 2)
    for bad in [(10, 2), (0, 2), (3, 0), (3,), (3.0, 2), "3,2"]:
        with pytest.raises(InvalidParameterError, match="grid_halving"):
            TrainConfig(grid_epochs=10, grid_halving=bad)
    spec = UnitSpec("grid", "unet", 1e-3, 8, 10)
    data = UnitData(*[None] * 6, fingerprint="f")
    assert unit_meta(spec, config, data) == unit_meta(spec, config.replace(grid_halving=None), data)
    assert config.result_differences(config.replace(grid_halving=None)) == ["grid_halving"]
    args = build_parser().parse_args(["--run-dir", "x", "--grid-halving", "3", "2"])
    assert TrainConfig(grid_epochs=10).replace(grid_halving=args.grid_halving).grid_halving == (3, 2)
    # Progress bar: 9 trials x 3 epochs + 2 survivors x 10 (a resumed survivor reports its 3 again), per model.
    assert _grid_epochs_counted(config) == 2 * (9 * 3 + 2 * 10)


def test_a_survivor_is_the_full_grids_trial_and_the_others_stop(tmp_path):
    crops = tiny_crops()
    config = TrainConfig(**{**TINY, "grid_epochs": 2, "grid_halving": (1, 1)})
    halved = grid_search(crops, run_dir=tmp_path / "halved", config=config, progress=False)
    assert sorted(halved["status"]) == ["ok", "stopped"]
    kept = halved[halved["status"] == "ok"].iloc[0]
    stopped = halved[halved["status"] == "stopped"].iloc[0]
    assert kept["epochs_run"] == 2 and stopped["epochs_run"] == 1
    assert math.isnan(stopped["val_dice"]) and "successive halving" in stopped["reason"]

    # The survivor in a full grid of its own: the same trial, epoch for epoch.
    full_config = config.replace(grid_halving=None, learning_rates=(float(kept["learning_rate"]),))
    full = grid_search(crops, run_dir=tmp_path / "full", config=full_config, progress=False).iloc[0]
    for column in ("best_epoch", "best_val_loss", "val_dice", "val_iou", "val_accuracy"):
        assert full[column] == pytest.approx(kept[column], abs=1e-6), column

    selection = select_hyperparameters(halved)
    assert selection["learning_rate"].tolist() == [kept["learning_rate"]]
    assert selection[["trials_ok", "trials_failed"]].values.tolist() == [[1, 0]]

    # A rerun in the same folder trains nothing and gives the same table.
    again = grid_search(crops, run_dir=tmp_path / "halved", config=config, progress=False)
    pd.testing.assert_frame_equal(halved.drop(columns="seconds"), again.drop(columns="seconds"))
