"""Tests of nodulekit.runfolder: the run-folder layout, finished folds, SHA-256, writable check."""

from __future__ import annotations

import hashlib

import pytest

from nodulekit.errors import RunFolderError
from nodulekit.runfolder import RunFolder, UnitFolder, file_sha256
from nodulekit.training import UnitSpec


def test_the_layout_matches_the_unit_names(tmp_path):
    run = RunFolder(tmp_path)
    assert run.config == tmp_path / "config.json" and run.preprocessing == tmp_path / "preprocessing.json"
    assert run.results_table("folds") == tmp_path / "results" / "folds.csv"
    spec = UnitSpec(phase="cv", architecture="unet", learning_rate=1e-3, batch_size=16, epochs=2, fold=3)
    assert run.unit(spec.name) == run.fold("unet", 3) == UnitFolder(tmp_path / "cv" / "unet" / "fold-3")
    assert run.fold("unet", 3).checkpoint == tmp_path / "cv" / "unet" / "fold-3" / "best.keras"


def test_finished_folds_are_those_with_a_done_marker(tmp_path):
    run = RunFolder(tmp_path)
    for architecture, fold, finished in [("unet", 0, True), ("unet", 1, False), ("attention_unet", 2, True)]:
        unit = run.fold(architecture, fold)
        unit.path.mkdir(parents=True)
        if finished:
            unit.done.write_text("{}")
    assert run.finished_folds() == [("attention_unet", 2), ("unet", 0)]
    assert not run.fold("unet", 0).is_finished()  # a marker without its checkpoint
    run.fold("unet", 0).checkpoint.write_bytes(b"model")
    assert run.fold("unet", 0).is_finished()


def test_file_sha256_is_the_sha_of_the_bytes(tmp_path):
    path = tmp_path / "best.keras"
    path.write_bytes(b"x" * 3_000_000)  # more than one read chunk
    assert file_sha256(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_check_writable_is_the_hardened_one(tmp_path):
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(RunFolderError, match="not writable: cannot write to this folder"):
        RunFolder(tmp_path / "blocker" / "run").check_writable()
    assert RunFolder(tmp_path / "run").check_writable(min_free_mb=0) == tmp_path / "run"
    assert list((tmp_path / "run").iterdir()) == []  # the probe is gone
