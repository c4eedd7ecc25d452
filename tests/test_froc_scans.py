"""Detection scored on annotated whole scans: `nodulekit.froc.score_scans` and `nodulekit froc`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from nodulekit.cli import main
from nodulekit.dataset import Volume
from nodulekit.errors import InvalidParameterError, MissingDataError, NodulekitError
from nodulekit.froc import annotated_scans, score_scans

SPACING = (2.0, 1.0, 1.0)


def _volume(patient: str, nodule: bool = True) -> Volume:
    """20 slices of 64x64; one 10 mm cube nodule on slices 4-6 centred at (24.5, 24.5) when ``nodule``."""
    mask = np.zeros((20, 64, 64), np.uint8)
    if nodule:
        mask[4:7, 20:30, 20:30] = 1
    return Volume(hu=np.full(mask.shape, -800, np.float32), spacing=SPACING, mask=mask, meta={"patient_id": patient})


def _table(rows) -> pd.DataFrame:
    """A detector's candidate table, sorted by score as ``Segmenter.segment`` lists it."""
    return pd.DataFrame(rows, columns=["centroid_z", "centroid_y", "centroid_x", "score", "source"]).sort_values("score", ascending=False)


class _Segmenter:
    """Stands in for a Segmenter with a second stage of operating point 0.5."""

    classifier = SimpleNamespace(threshold=0.5)

    def __init__(self, tables: dict):
        self.tables = tables

    def segment(self, volume, *, min_score, progress):
        assert min_score == 0.0  # every candidate is kept: the FROC needs the whole list
        return SimpleNamespace(nodules=self.tables[volume.meta["patient_id"]])


@pytest.fixture
def two_scans_and_a_broken_one(monkeypatch):
    volumes = {"a": _volume("A"), "b": _volume("B", nodule=False)}

    def read(path):
        if Path(path).name == "broken":
            raise MissingDataError("not a DICOM file", path=path)
        return volumes[Path(path).name]

    monkeypatch.setattr("nodulekit.readers.read_any", read)
    tables = {
        # A: a false positive above the nodule, the hit, a second hit (ignored) and a false positive below
        "A": _table([(10, 50, 50, 0.9, "blob"), (5, 24, 25, 0.7, "segmenter"), (5, 26, 24, 0.6, "blob"), (15, 5, 5, 0.2, "blob")]),
        # B: no nodule, two false positives
        "B": _table([(3, 40, 40, 0.8, "segmenter"), (8, 10, 10, 0.1, "blob")]),
    }
    return [Path("a"), Path("broken"), Path("b")], _Segmenter(tables)


def test_score_scans_ranks_each_nodule_and_counts_the_false_positives_above_it(two_scans_and_a_broken_one):
    paths, segmenter = two_scans_and_a_broken_one
    scored = score_scans(paths, segmenter, progress=False)
    nodule = scored.nodules.set_index("scan").loc["A"]
    assert (nodule["rank"], nodule["score"], nodule["false_positives_above"], bool(nodule["listed"])) == (2, 0.7, 1, True)
    assert not nodule["ignore"] and nodule["diameter_mm"] >= 10.0
    assert list(scored.nodules["scan"]) == ["A"]  # B has no nodule
    # the FROC: 4 false positives over 2 scans (0.9, 0.8, 0.2, 0.1); the nodule enters at 0.7 after 2 of them
    assert scored.froc.n_scans == 2 and scored.froc.n_nodules == 1
    assert scored.froc.sensitivities[0.5] == 0.0 and scored.froc.sensitivities[1.0] == 1.0
    outcomes = scored.candidates.groupby("scan")["outcome"].apply(list).to_dict()
    assert outcomes == {"A": ["false_positive", "hit", "hit", "false_positive"], "B": ["false_positive", "false_positive"]}
    assert list(scored.candidates["rank"][scored.candidates["scan"] == "A"]) == [1, 2, 3, 4]
    # the unreadable scan is skipped with its reason, the others scored
    errors = scored.scans.set_index("path")["error"]
    assert "not a DICOM file" in errors["broken"] and errors["a"] == "" and errors["b"] == ""
    assert scored.threshold == 0.5


def test_a_nodule_without_a_candidate_has_no_rank_and_is_not_listed(monkeypatch):
    monkeypatch.setattr("nodulekit.readers.read_any", lambda path: _volume("A"))
    scored = score_scans([Path("a")], _Segmenter({"A": _table([(15, 50, 50, 0.9, "blob")])}), progress=False)
    row = scored.nodules.iloc[0]
    assert pd.isna(row["rank"]) and pd.isna(row["score"]) and not row["listed"]
    assert scored.froc.cpm == 0.0


def test_score_scans_refuses_a_detector_without_a_second_stage_and_a_batch_with_nothing_to_score(monkeypatch):
    with pytest.raises(InvalidParameterError, match="second stage"):
        score_scans([Path("a")], SimpleNamespace(classifier=None), progress=False)
    monkeypatch.setattr("nodulekit.readers.read_any", lambda path: Volume(hu=np.zeros((4, 8, 8), np.float32), spacing=SPACING))
    with pytest.raises(NodulekitError, match="no scan could be scored.*no annotations"):
        score_scans([Path("a")], _Segmenter({}), progress=False)


def test_annotated_scans_finds_mhd_files_and_dicom_series_with_their_xml(tmp_path):
    (tmp_path / "luna" / "subset0").mkdir(parents=True)
    (tmp_path / "luna" / "subset0" / "1.2.3.mhd").write_text("header")
    for patient, with_xml in (("LIDC-IDRI-0002", True), ("LIDC-IDRI-0003", False)):
        series = tmp_path / "lidc" / patient / "study" / "series"
        series.mkdir(parents=True)
        (series / "000001.dcm").write_bytes(b"")
        if with_xml:
            (series / "071.xml").write_text("<LidcReadMessage/>")
    assert annotated_scans(tmp_path) == [tmp_path / "lidc/LIDC-IDRI-0002/study/series", tmp_path / "luna/subset0/1.2.3.mhd"]
    assert annotated_scans(tmp_path / "luna" / "subset0" / "1.2.3.mhd") == [tmp_path / "luna/subset0/1.2.3.mhd"]
    with pytest.raises(MissingDataError, match="no annotated scan"):
        annotated_scans(tmp_path / "lidc" / "LIDC-IDRI-0003")
    with pytest.raises(MissingDataError, match="no such file"):
        annotated_scans(tmp_path / "nowhere")


def test_nodulekit_froc_ranks_lidc_0001s_nodule_first_with_the_shipped_stages(lidc_scan_dir, tmp_path, capsys):
    """The real check of issue 18 on the one whole scan here: the shipped segmenter and second stage
    rank LIDC-IDRI-0001's nodule first, with no false positive above it."""
    out = tmp_path / "froc"
    assert main(["froc", str(lidc_scan_dir), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "froc.json").read_text())
    assert summary["n_scans"] == 1 and summary["n_nodules"] == 1 and summary["cpm"] == 1.0
    nodules = pd.read_csv(out / "reference_nodules.csv")
    assert len(nodules) == 1
    row = nodules.iloc[0]
    assert (row["scan"], row["rank"], row["false_positives_above"], bool(row["listed"])) == ("LIDC-IDRI-0001", 1, 0, True)
    assert row["score"] > 0.9 and 30.0 < row["diameter_mm"] < 34.0
    candidates = pd.read_csv(out / "candidates.csv")
    assert candidates["score"].is_monotonic_decreasing and (candidates["outcome"] == "hit").sum() >= 1
    assert (out / "froc.png").stat().st_size > 10_000
    assert "LIDC-IDRI-0001 nodule 1 (31.8 mm): rank 1" in capsys.readouterr().out


def test_nodulekit_froc_scores_a_luna16_mhd_with_its_annotations_csv(tmp_path):
    """The LUNA16 layout end to end: a synthetic chest written as .mhd, its nodules as annotations.csv (world mm)."""
    import SimpleITK as sitk

    from nodulekit.phantom import generate_volume

    volume = generate_volume(n_slices=32, n_nodules=4, seed=7)
    image = sitk.GetImageFromArray(np.round(volume.hu).astype(np.int16))
    image.SetSpacing(tuple(float(s) for s in volume.spacing[::-1]))
    folder = tmp_path / "luna" / "subset0"
    folder.mkdir(parents=True)
    sitk.WriteImage(image, str(folder / "1.2.3.mhd"))
    rows = [
        {"seriesuid": "1.2.3", "coordX": n.x * volume.spacing[2], "coordY": n.y * volume.spacing[1], "coordZ": n.z * volume.spacing[0], "diameter_mm": n.diameter_mm}
        for n in volume.nodules.itertuples()
    ]
    pd.DataFrame(rows).to_csv(folder / "annotations.csv", index=False)
    out = tmp_path / "froc"
    assert main(["froc", str(tmp_path / "luna"), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "froc.json").read_text())
    assert summary["n_scans"] == 1 and summary["n_nodules"] == 4
    nodules = pd.read_csv(out / "reference_nodules.csv")
    assert set(nodules["scan"]) == {"1.2.3"} and nodules["rank"].notna().sum() >= 3  # 4 of 4 here, ranks 1-4
