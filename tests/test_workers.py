"""Tests of nodulekit.training.workers: protocol units side by side in worker processes.

One test starts real worker processes (two tiny grid trials from a script without a
``__main__`` guard, as a user would write one; the script trains eagerly, as the QUICK notebooks
do, and its workers take that mode); the others check the choice of the worker count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nodulekit.errors import InvalidParameterError
from nodulekit.training import TrainConfig
from nodulekit.training.workers import resolve_workers

from test_training import EAGER_SOURCE, TINY, TINY_CROPS_SOURCE

REPO = Path(__file__).resolve().parents[1]

SCRIPT = TINY_CROPS_SOURCE + EAGER_SOURCE + '''
import json, sys
from nodulekit.training import TrainConfig, grid_search, select_hyperparameters
config = TrainConfig(**{config})
seen = []
grid = grid_search(tiny_crops(), run_dir=sys.argv[1], config=config, progress=False)
print("RESULT", json.dumps(grid[["learning_rate", "status", "val_dice", "best_epoch"]].to_dict(orient="list")))
'''


def test_two_workers_train_the_grid_and_a_rerun_skips_it_without_workers(tmp_path, monkeypatch):
    config = dict(TINY, workers=2)
    script = tmp_path / "grid.py"  # no `if __name__ == "__main__":` guard: the workers must not rerun it
    script.write_text(SCRIPT.replace("{config}", repr(config)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("RESULT") == 1, done.stdout  # the script ran once, not once per worker
    grid = json.loads(done.stdout.split("RESULT", 1)[1])
    assert grid["learning_rate"] == list(TINY["learning_rates"])  # records in grid order, not finishing order
    assert grid["status"] == ["ok", "ok"] and all(0 <= d <= 1 for d in grid["val_dice"])
    for lr in TINY["learning_rates"]:  # each worker wrote a complete unit folder
        unit = tmp_path / "run" / "grid" / "unet" / f"lr={lr:g}_bs=8"
        assert (unit / "done").exists() and (unit / "best.keras").exists(), sorted(p.name for p in unit.iterdir())

    # The same run folder in this process: both units are finished, skipped here, no worker starts.
    from nodulekit.training import grid_search, protocol

    from test_training import tiny_crops

    def no_workers(*args, **kwargs):
        raise AssertionError("worker processes started for finished units")

    monkeypatch.setattr(protocol, "run_units_in_workers", no_workers)
    again = grid_search(tiny_crops(), run_dir=tmp_path / "run", config=TrainConfig(**config), progress=False)
    assert list(again["val_dice"]) == grid["val_dice"] and list(again["best_epoch"]) == grid["best_epoch"]


@pytest.mark.parametrize("value", [0, -1, 1.5, "two", True])
def test_a_bad_worker_count_is_a_named_error(value):
    with pytest.raises(InvalidParameterError, match="workers"):
        TrainConfig(workers=value)
    with pytest.raises(InvalidParameterError, match="workers"):
        resolve_workers(value, units=4)


def test_auto_uses_two_workers_only_where_they_help(monkeypatch):
    import tensorflow as tf

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    assert resolve_workers("auto", units=18, cores=2) == 2
    assert resolve_workers("auto", units=18, cores=1) == 1  # one core: nothing to share
    assert resolve_workers("auto", units=1, cores=2) == 1  # one unit: nothing side by side
    assert resolve_workers("auto", units=18, cores=2, strategy=object()) == 1
    assert resolve_workers(3, units=2) == 2  # never more workers than units
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    assert resolve_workers("auto", units=18, cores=2) == 1  # the GPU trains; one process feeds it


def test_the_worker_count_does_not_enter_the_results_identity():
    # A run folder made with workers=2 may be resumed with workers=1 (threads change rounding only).
    assert TrainConfig(workers=2).result_differences(TrainConfig(workers=1)) == []
