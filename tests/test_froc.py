"""FROC with the LUNA16 definitions: hand-worked cases (nodulekit/froc.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nodulekit.errors import InvalidParameterError, NodulekitError
from nodulekit.froc import FP_RATES, ScanDetections, froc, froc_from_outcomes, hit_matrix, reference_from_mask

SPACING = (2.0, 0.5, 0.5)


def _candidates(rows):
    return pd.DataFrame(rows, columns=["centroid_z", "centroid_y", "centroid_x", "score"])


def _reference(rows):
    return pd.DataFrame(rows, columns=["slice_first", "slice_last", "centroid_y", "centroid_x", "diameter_mm", "ignore"])


def _two_scans():
    """Scan A: nodules N1 (10 mm), N2 (6 mm) and an ignored 2 mm finding; scan B: no nodule.

    Worked by hand (scores falling): 0.9 hits N1; 0.85 (B) and 0.8 false positives; 0.7 a second
    hit on N1 (ignored); 0.6 on the ignored finding (ignored); 0.5 hits N2; 0.4 (B) false positive;
    0.3 on N1's centre but one slice above it: a false positive. Two scans, two nodules.
    """
    a = ScanDetections(
        candidates=_candidates(
            [
                (5, 100, 100, 0.9),
                (5, 300, 50, 0.8),
                (6, 104, 100, 0.7),
                (20, 300, 300, 0.6),
                (11, 200, 205, 0.5),
                (2, 100, 100, 0.3),
            ]
        ),
        reference=_reference([(3, 7, 100, 100, 10.0, False), (10, 12, 200, 200, 6.0, False), (20, 20, 300, 300, 2.0, True)]),
        spacing=SPACING,
        name="A",
    )
    b = ScanDetections(
        candidates=_candidates([(4, 50, 50, 0.85), (9, 60, 60, 0.4)]),
        reference=_reference([]),
        spacing=SPACING,
        name="B",
    )
    return [a, b]


def test_froc_hand_worked_curve_and_cpm():
    result = froc(_two_scans())
    assert result.n_scans == 2 and result.n_nodules == 2 and result.n_candidates == 8 and result.n_found == 2
    np.testing.assert_allclose(result.thresholds, [0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    np.testing.assert_allclose(result.fp_per_scan, [0, 0.5, 1, 1, 1, 1, 1.5, 2])
    np.testing.assert_allclose(result.sensitivity, [0.5, 0.5, 0.5, 0.5, 0.5, 1, 1, 1])
    assert [result.sensitivities[f] for f in FP_RATES] == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert result.cpm == pytest.approx(5.5 / 7)
    assert result.threshold_at(1.0) == 0.5 and result.threshold_at(0.25) == 0.9
    summary = result.to_dict()
    assert summary["cpm"] == pytest.approx(5.5 / 7) and summary["sensitivity_at_fp_per_scan"]["1.0"] == 1.0


def test_extra_hit_scored_higher_counts_the_nodule_once_at_its_best_score():
    scans = _two_scans()
    scans[0].candidates.loc[2, "score"] = 0.95  # the second hit on N1 now leads
    result = froc(scans)
    assert result.n_found == 2
    assert result.sensitivity[0] == 0.5 and result.fp_per_scan[0] == 0  # N1 found at 0.95, no false positive
    assert result.fp_per_scan[-1] == 2  # the 0.9 hit is now an extra hit: not a false positive either


def test_hit_rule_slices_and_half_diameter_in_plane():
    reference = _reference([(3, 7, 100, 100, 10.0, False)])  # radius 5 mm = 10 pixels of 0.5 mm
    candidates = _candidates(
        [
            (3, 100, 110, 1),  # first slice, exactly d/2 away: inside
            (7.4, 106, 108, 1),  # rounds to the last slice, 10 px away: inside
            (7.6, 100, 100, 1),  # rounds to slice 8: outside
            (5, 100, 110.5, 1),  # 10.5 px: outside
            (2.6, 100, 100, 1),  # rounds to 3: inside
        ]
    )
    assert hit_matrix(candidates, reference, spacing=SPACING)[:, 0].tolist() == [True, True, False, False, True]


def test_no_candidates_and_unreachable_rates_give_zero_sensitivity():
    scan = _two_scans()[0]
    empty = ScanDetections(candidates=_candidates([]), reference=scan.reference, spacing=SPACING)
    result = froc([empty])
    assert result.cpm == 0.0 and result.n_found == 0
    # Only false positives above the nodule: 3 per scan before it is found.
    crowded = ScanDetections(
        candidates=_candidates([(0, 0, 0, 0.9), (0, 1, 1, 0.8), (0, 2, 2, 0.7), (5, 100, 100, 0.1)]),
        reference=scan.reference,
        spacing=SPACING,
    )
    result = froc([crowded])
    assert [result.sensitivities[f] for f in FP_RATES] == [0, 0, 0, 0, 0, 0.5, 0.5]


def test_tied_scores_enter_together():
    scan = _two_scans()[0]
    tied = ScanDetections(candidates=_candidates([(5, 100, 100, 0.5), (0, 0, 0, 0.5)]), reference=scan.reference, spacing=SPACING)
    result = froc([tied])
    assert result.thresholds.tolist() == [0.5] and result.fp_per_scan.tolist() == [1.0] and result.sensitivity.tolist() == [0.5]
    assert result.sensitivities[0.5] == 0.0 and result.sensitivities[1.0] == 0.5


def test_reference_from_mask_ignores_findings_under_3_mm():
    mask = np.zeros((10, 64, 64), np.uint8)
    zz, yy, xx = np.mgrid[:10, :64, :64]
    mask[((zz - 5) * 2.0) ** 2 + ((yy - 20) * 0.7) ** 2 + ((xx - 20) * 0.7) ** 2 <= 4.0**2] = 1  # 8 mm sphere
    mask[2, 50, 50] = 1  # a 0.7 mm speck
    table = reference_from_mask(mask, spacing=(2.0, 0.7, 0.7))
    assert len(table) == 2
    big = table.loc[~table["ignore"]].iloc[0]
    assert big["slice_first"] == 3 and big["slice_last"] == 7 and 7.5 <= big["diameter_mm"] <= 9.5  # Feret, edge to edge
    assert table["ignore"].sum() == 1


@pytest.mark.parametrize(
    "bad",
    [
        lambda s: [],
        lambda s: [ScanDetections(candidates=s[0].candidates.drop(columns="score"), reference=s[0].reference, spacing=SPACING)],
        lambda s: [s[1]],  # no reference nodule anywhere
        lambda s: [ScanDetections(candidates=s[0].candidates, reference=s[0].reference, spacing=(2.0, float("nan"), 0.5))],
    ],
)
def test_bad_input_is_a_named_error(bad):
    with pytest.raises(InvalidParameterError):
        froc(bad(_two_scans()))
    assert issubclass(InvalidParameterError, NodulekitError)


def test_fp_rates_must_be_positive():
    with pytest.raises(InvalidParameterError):
        froc(_two_scans(), fp_rates=(0.0, 1.0))


def test_froc_from_outcomes_gives_the_hand_worked_curve_of_froc():
    """The same eight candidates with their outcomes decided by hand (the docstring of _two_scans)."""
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.3, 0.85, 0.4]
    nodules = [0, -1, 0, -1, 1, -1, -1, -1]
    ignore = [False, False, False, True, False, False, False, False]
    result = froc_from_outcomes(scores, nodules, n_scans=2, n_nodules=2, ignore=ignore)
    expected = froc(_two_scans())
    for name in ("thresholds", "fp_per_scan", "sensitivity"):
        np.testing.assert_allclose(getattr(result, name), getattr(expected, name))
    assert result.cpm == pytest.approx(expected.cpm) and result.n_found == 2
    # the ignored candidate, counted as a false positive instead, costs a step at 0.6
    strict = froc_from_outcomes(scores, nodules, n_scans=2, n_nodules=2)
    assert strict.fp_per_scan[strict.thresholds == 0.6][0] == 1.5


def test_froc_from_outcomes_refuses_bad_input():
    with pytest.raises(InvalidParameterError, match="one score"):
        froc_from_outcomes([0.5, 0.4], [0], n_scans=1, n_nodules=1)
    with pytest.raises(InvalidParameterError, match="-1"):
        froc_from_outcomes([0.5], [3], n_scans=1, n_nodules=1)
    with pytest.raises(InvalidParameterError, match=">= 1"):
        froc_from_outcomes([0.5], [0], n_scans=0, n_nodules=1)
    with pytest.raises(InvalidParameterError, match="finite"):
        froc_from_outcomes([np.nan], [0], n_scans=1, n_nodules=1)
