"""Free-response ROC (FROC) of a nodule detector, with the LUNA16 definitions.

A detector lists candidates per scan, each with a centre and a score. FROC plots the fraction of
reference nodules found (sensitivity) against the average number of false positives per scan as the
score threshold falls; the competition performance metric (CPM) is the mean sensitivity at 1/8,
1/4, 1/2, 1, 2, 4 and 8 false positives per scan [1]_ [2]_.

Conventions (nodulekit's reading of the LUNA16 rules, kept in one place)
-------------------------------------------------------------------------
* **Reference.** Nodules of at least 3 mm (longest axial diameter) on which the readers' consensus
  agrees; :func:`reference_from_mask` measures them from a consensus mask. Smaller or
  non-consensus findings may be listed with ``ignore=True``: a candidate on one of them is neither
  a hit nor a false positive (LUNA16's "irrelevant findings").
* **Hit.** A candidate hits a nodule when its centre lies *inside* it: on one of the nodule's
  slices (``slice_first <= z <= slice_last``, z rounded to the nearest slice) and within half the
  nodule's diameter of the nodule's centre in-plane (``hypot(dy, dx)`` in mm ``<= d / 2``).
* **Extra hits.** A found nodule counts once; further candidates on it are ignored (neither hits
  nor false positives), whatever their score. A candidate inside two nodules hits both.
* **False positive.** A candidate that hits no nodule (relevant or ignored).
* **Operating points.** Sensitivity at ``f`` false positives per scan is that of the lowest
  threshold whose false positives per scan do not exceed ``f`` (a step function; LUNA16's script
  interpolates linearly between thresholds, which can only give more). Candidates of equal score
  enter together. Where the detector never reaches ``f`` false positives per scan, its sensitivity
  with every candidate counts.

References
----------
.. [1] A. A. A. Setio et al., "Validation, comparison, and combination of algorithms for automatic
   detection of pulmonary nodules in computed tomography images: the LUNA16 challenge",
   Medical Image Analysis 42:1-13, 2017.
.. [2] M. Niemeijer et al., "On combining computer-aided detection systems", IEEE TMI
   30(2):215-223, 2011 (the competition performance metric).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .dataset import Volume
from .errors import InvalidParameterError, MissingDataError, NodulekitError
from .inference import measure_nodules

__all__ = [
    "FP_RATES",
    "MIN_DIAMETER_MM",
    "FrocResult",
    "ScanDetections",
    "ScoredScans",
    "annotated_scans",
    "froc",
    "froc_from_outcomes",
    "hit_matrix",
    "reference_from_mask",
    "score_scans",
]

logger = logging.getLogger(__name__)

#: False positives per scan at which sensitivity is read (LUNA16).
FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

#: Smallest reference nodule (longest axial diameter, mm), as LIDC-IDRI and LUNA16.
MIN_DIAMETER_MM = 3.0

_CANDIDATE_COLUMNS = ("centroid_z", "centroid_y", "centroid_x", "score")
_REFERENCE_COLUMNS = ("slice_first", "slice_last", "centroid_y", "centroid_x", "diameter_mm")


@dataclass
class ScanDetections:
    """One scan's candidates and reference nodules.

    Parameters
    ----------
    candidates : pandas.DataFrame
        One row per candidate: ``centroid_z``, ``centroid_y``, ``centroid_x`` (voxels) and
        ``score`` (higher = more likely a nodule). The nodule table of
        :func:`nodulekit.detection.score_candidates` has them.
    reference : pandas.DataFrame
        One row per reference nodule: ``slice_first``, ``slice_last``, ``centroid_y``,
        ``centroid_x`` (voxels), ``diameter_mm``; optional boolean ``ignore``.
    spacing : sequence of float
        Voxel size in mm (slice, row, column).
    name : str
        The scan's name, for messages.
    """

    candidates: pd.DataFrame
    reference: pd.DataFrame
    spacing: tuple[float, float, float]
    name: str = "scan"


@dataclass
class FrocResult:
    """The FROC curve and its summary.

    Attributes
    ----------
    thresholds : ndarray
        Distinct candidate scores, falling; point ``k`` of the curve keeps the candidates with
        ``score >= thresholds[k]``.
    fp_per_scan, sensitivity : ndarray
        The curve, one value per threshold.
    sensitivities : dict
        Sensitivity at each of :data:`FP_RATES` (keys as floats).
    cpm : float
        Mean of ``sensitivities`` (competition performance metric).
    n_scans, n_nodules, n_candidates, n_found : int
        Scans, relevant reference nodules, candidates, and nodules found with every candidate.
    """

    thresholds: np.ndarray
    fp_per_scan: np.ndarray
    sensitivity: np.ndarray
    sensitivities: dict = field(default_factory=dict)
    cpm: float = float("nan")
    n_scans: int = 0
    n_nodules: int = 0
    n_candidates: int = 0
    n_found: int = 0

    def threshold_at(self, fp_per_scan: float) -> float:
        """The lowest score threshold whose false positives per scan stay at or below ``fp_per_scan``
        (``inf`` when even the best candidate exceeds it)."""
        allowed = np.flatnonzero(self.fp_per_scan <= float(fp_per_scan))
        return float(self.thresholds[allowed[-1]]) if len(allowed) else float("inf")

    def to_dict(self) -> dict:
        """A JSON-serialisable summary (the curve included)."""
        return {
            "cpm": float(self.cpm),
            "sensitivity_at_fp_per_scan": {str(k): float(v) for k, v in self.sensitivities.items()},
            "n_scans": int(self.n_scans),
            "n_nodules": int(self.n_nodules),
            "n_candidates": int(self.n_candidates),
            "n_found_with_all_candidates": int(self.n_found),
            "curve": {
                "threshold": [float(v) for v in self.thresholds],
                "fp_per_scan": [float(v) for v in self.fp_per_scan],
                "sensitivity": [float(v) for v in self.sensitivity],
            },
        }


def reference_from_mask(
    mask: np.ndarray,
    *,
    spacing: Sequence[float],
    min_diameter_mm: float = MIN_DIAMETER_MM,
) -> pd.DataFrame:
    """Reference nodules of a consensus mask: its 3-D components, those under ``min_diameter_mm`` ignored.

    Parameters
    ----------
    mask : ndarray, shape (slices, rows, columns)
        The readers' consensus mask (e.g. 50 %), any non-zero = nodule.
    spacing : sequence of float
        Voxel size in mm (slice, row, column).
    min_diameter_mm : float
        Nodules with a smaller longest axial diameter get ``ignore=True``.

    Returns
    -------
    pandas.DataFrame
        The columns :class:`ScanDetections` needs (measured by
        :func:`nodulekit.inference.measure_nodules`) plus ``ignore``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise InvalidParameterError(f"a reference mask must be (slices, rows, columns), got shape {mask.shape}")
    _, table = measure_nodules(mask > 0, spacing=spacing, connect_slices=True)
    table = table[list(_REFERENCE_COLUMNS) + ["centroid_z"]].copy()
    table["ignore"] = table["diameter_mm"] < float(min_diameter_mm)
    return table.reset_index(drop=True)


def hit_matrix(candidates: pd.DataFrame, reference: pd.DataFrame, *, spacing: Sequence[float]) -> np.ndarray:
    """Which candidate centre lies inside which reference nodule (the module's hit rule).

    Parameters
    ----------
    candidates, reference : pandas.DataFrame
        As in :class:`ScanDetections`.
    spacing : sequence of float
        Voxel size in mm (slice, row, column).

    Returns
    -------
    ndarray of bool, shape (len(candidates), len(reference))

    Examples
    --------
    >>> candidates = pd.DataFrame({"centroid_z": [5.0, 5.0, 9.0], "centroid_y": [100.0, 106.0, 100.0],
    ...                            "centroid_x": [100.0, 100.0, 100.0], "score": [0.9, 0.8, 0.7]})
    >>> reference = pd.DataFrame({"slice_first": [3], "slice_last": [7], "centroid_y": [101.0],
    ...                           "centroid_x": [100.0], "diameter_mm": [6.0]})
    >>> hit_matrix(candidates, reference, spacing=(2.0, 0.5, 0.5))[:, 0].tolist()
    [True, True, False]
    """
    _require(candidates, _CANDIDATE_COLUMNS[:3], "candidates")
    _require(reference, _REFERENCE_COLUMNS, "reference")
    row_mm, column_mm = _spacing(spacing)[1:]
    z = np.rint(candidates["centroid_z"].to_numpy(float))[:, None]
    dy = (candidates["centroid_y"].to_numpy(float)[:, None] - reference["centroid_y"].to_numpy(float)[None]) * row_mm
    dx = (candidates["centroid_x"].to_numpy(float)[:, None] - reference["centroid_x"].to_numpy(float)[None]) * column_mm
    on_slices = (z >= reference["slice_first"].to_numpy(float)[None]) & (z <= reference["slice_last"].to_numpy(float)[None])
    return on_slices & (np.hypot(dy, dx) <= reference["diameter_mm"].to_numpy(float)[None] / 2.0)


def froc(scans: Sequence[ScanDetections], *, fp_rates: Sequence[float] = FP_RATES) -> FrocResult:
    """FROC curve and CPM of a detector over scans (module docstring: the conventions).

    Parameters
    ----------
    scans : sequence of ScanDetections
        Every scan evaluated, also those without candidates or without nodules (they count in the
        false positives per scan).
    fp_rates : sequence of float
        False positives per scan at which to read sensitivity (> 0); default :data:`FP_RATES`.

    Returns
    -------
    FrocResult

    Raises
    ------
    InvalidParameterError
        On no scans, missing columns, no relevant reference nodule, or a rate <= 0.

    Examples
    --------
    One scan, one nodule, a false positive scored above it: the nodule is found at 1 FP per scan,
    not below.

    >>> scan = ScanDetections(
    ...     candidates=pd.DataFrame({"centroid_z": [0.0, 2.0], "centroid_y": [50.0, 10.0],
    ...                              "centroid_x": [50.0, 10.0], "score": [0.4, 0.9]}),
    ...     reference=pd.DataFrame({"slice_first": [0], "slice_last": [1], "centroid_y": [50.0],
    ...                             "centroid_x": [50.0], "diameter_mm": [6.0]}),
    ...     spacing=(1.0, 1.0, 1.0))
    >>> result = froc([scan])
    >>> result.sensitivities[0.5], result.sensitivities[1.0]
    (0.0, 1.0)
    """
    scans = list(scans)
    if not scans:
        raise InvalidParameterError("froc needs at least one scan")
    rates = _rates(fp_rates)
    scores, kinds, nodule_ids = [], [], []  # kind: 0 false positive, 1 first hit on nodule, 2 ignored
    n_nodules = 0
    for scan in scans:
        candidates, reference = scan.candidates, scan.reference
        _require(candidates, _CANDIDATE_COLUMNS, f"{scan.name}: candidates")
        ignore = reference["ignore"].to_numpy(bool) if "ignore" in reference else np.zeros(len(reference), bool)
        hits = hit_matrix(candidates, reference, spacing=scan.spacing) if len(reference) else np.zeros((len(candidates), 0), bool)
        score = candidates["score"].to_numpy(float)
        if not np.isfinite(score).all():
            raise InvalidParameterError(f"{scan.name}: candidate scores must be finite")
        for index in range(len(candidates)):
            relevant = np.flatnonzero(hits[index] & ~ignore)
            scores.append(score[index])
            if len(relevant):
                kinds.append(1)
                nodule_ids.append([n_nodules + int(k) for k in relevant])
            else:
                kinds.append(2 if hits[index].any() else 0)
                nodule_ids.append([])
        n_nodules += int((~ignore).sum())
    if n_nodules == 0:
        raise InvalidParameterError(f"no reference nodule of at least {MIN_DIAMETER_MM} mm in {len(scans)} scan(s): FROC is undefined")
    return _curve(np.asarray(scores, float), np.asarray(kinds, int), nodule_ids, n_scans=len(scans), n_nodules=n_nodules, rates=rates)


def froc_from_outcomes(
    scores: Sequence[float],
    nodules: Sequence[int],
    *,
    n_scans: int,
    n_nodules: int,
    ignore: Sequence[bool] | None = None,
    fp_rates: Sequence[float] = FP_RATES,
) -> FrocResult:
    """FROC of candidates whose outcome is already known (a hit rule other than :func:`hit_matrix`).

    The same curve and operating points as :func:`froc`, for callers that decide hits themselves,
    e.g. a candidate whose centre lies on a reader's mark
    (:func:`nodulekit.detection.candidate_outcomes`).

    Parameters
    ----------
    scores : sequence of float
        One finite score per candidate, over all scans.
    nodules : sequence of int
        The reference nodule (``0 .. n_nodules - 1``, numbered over all scans) each candidate hits,
        ``-1`` for a false positive.
    n_scans : int
        Scans evaluated (>= 1), those without candidates included.
    n_nodules : int
        Relevant reference nodules over all scans (>= 1).
    ignore : sequence of bool, optional
        Candidates that are neither hits nor false positives (an irrelevant finding).
    fp_rates : sequence of float
        As in :func:`froc`.

    Returns
    -------
    FrocResult

    Raises
    ------
    InvalidParameterError
        On lengths that differ, a nodule index out of range, non-finite scores, or counts < 1.

    Examples
    --------
    Two stacks with one nodule each: 0.9 hits nodule 0, 0.8 is a false positive, 0.7 hits nodule 1.

    >>> result = froc_from_outcomes([0.9, 0.8, 0.7], [0, -1, 1], n_scans=2, n_nodules=2)
    >>> result.sensitivities[0.25], result.sensitivities[0.5]
    (0.5, 1.0)
    """
    scores = np.asarray(scores, float)
    nodules = np.asarray(nodules, int)
    ignored = np.zeros(len(scores), bool) if ignore is None else np.asarray(ignore, bool)
    rates = _rates(fp_rates)
    if scores.ndim != 1 or nodules.shape != scores.shape or ignored.shape != scores.shape:
        raise InvalidParameterError(f"need one score, nodule and ignore flag per candidate, got {scores.shape}, {nodules.shape}, {ignored.shape}")
    if int(n_scans) < 1 or int(n_nodules) < 1:
        raise InvalidParameterError(f"n_scans and n_nodules must be >= 1, got {n_scans}, {n_nodules}")
    if not np.isfinite(scores).all():
        raise InvalidParameterError("candidate scores must be finite")
    if len(nodules) and (nodules.min() < -1 or nodules.max() >= int(n_nodules)):
        raise InvalidParameterError(f"nodule indices must be -1 (false positive) or in 0..{int(n_nodules) - 1}")
    kinds = np.where(ignored, 2, np.where(nodules >= 0, 1, 0))
    nodule_ids = [[int(k)] if kind == 1 else [] for k, kind in zip(nodules, kinds)]
    return _curve(scores, kinds, nodule_ids, n_scans=int(n_scans), n_nodules=int(n_nodules), rates=rates)


def _curve(scores, kinds, nodule_ids, *, n_scans: int, n_nodules: int, rates: list[float]) -> FrocResult:
    """Sweep the threshold down the distinct scores; each nodule counts at its best-scored hit."""
    thresholds = np.unique(scores)[::-1]
    best = np.full(n_nodules, -np.inf)  # each nodule's best hit score
    for index in np.flatnonzero(kinds == 1):
        for nodule in nodule_ids[index]:
            best[nodule] = max(best[nodule], scores[index])
    false = np.sort(scores[kinds == 0])[::-1]
    fp = np.searchsorted(-false, -thresholds, side="right") / n_scans  # false positives with score >= t
    found_scores = np.sort(best[np.isfinite(best)])[::-1]
    sensitivity = np.searchsorted(-found_scores, -thresholds, side="right") / n_nodules
    sensitivities = {}
    for rate in rates:
        allowed = np.flatnonzero(fp <= rate + 1e-12)
        sensitivities[rate] = float(sensitivity[allowed[-1]]) if len(allowed) else 0.0
    return FrocResult(
        thresholds=thresholds,
        fp_per_scan=fp,
        sensitivity=sensitivity,
        sensitivities=sensitivities,
        cpm=float(np.mean(list(sensitivities.values()))),
        n_scans=n_scans,
        n_nodules=n_nodules,
        n_candidates=int(len(scores)),
        n_found=int(np.isfinite(best).sum()),
    )


def _require(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in getattr(table, "columns", ())]
    if missing:
        raise InvalidParameterError(f"{what} lack column(s) {missing}")


def _rates(fp_rates: Sequence[float]) -> list[float]:
    rates = [float(f) for f in fp_rates]
    if not rates or min(rates) <= 0:
        raise InvalidParameterError(f"fp_rates must be positive, got {fp_rates!r}")
    return rates


def _spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(values[1:])) or min(values[1:]) <= 0:
        raise InvalidParameterError(f"spacing must be 3 mm values (slice, row, column) with a known pixel size, got {spacing!r}")
    return values


# --------------------------------------------------------------------------------------------------
# Annotated whole scans, end to end (``nodulekit froc``)
# --------------------------------------------------------------------------------------------------


@dataclass
class ScoredScans:
    """A detector scored on annotated whole scans (:func:`score_scans`).

    Attributes
    ----------
    froc : FrocResult
        Over the scans that were scored.
    nodules : pandas.DataFrame
        One row per reference nodule: ``scan``, ``nodule`` (its number in the scan), ``diameter_mm``,
        ``ignore`` (under :data:`MIN_DIAMETER_MM`: neither counted nor a false positive), ``rank``
        (1-based, of the best-scored candidate that hits it; missing when none does), ``score``,
        ``false_positives_above`` (false positives of its scan scored above it: the issue's "at most
        4 false positives ranked above it") and ``listed`` (scored at or above ``threshold``).
    candidates : pandas.DataFrame
        Every candidate: ``scan``, ``rank``, ``score``, ``source`` when the detector gives one, the
        centre (voxels) and ``outcome`` (``hit``, ``false_positive`` or ``ignored``).
    scans : pandas.DataFrame
        One row per path: ``scan`` (the DICOM patient ID, or the file's stem), ``path``, ``slices``, ``candidates``, ``seconds`` and ``error``
        (why a scan was skipped: unreadable, no annotations; empty when it was scored).
    threshold : float
        The detector's operating point (its second stage's ``threshold``).
    """

    froc: FrocResult
    nodules: pd.DataFrame
    candidates: pd.DataFrame
    scans: pd.DataFrame
    threshold: float


def annotated_scans(path: str | os.PathLike) -> list[Path]:
    """The whole scans under ``path``, each something :func:`nodulekit.readers.read_any` reads as a volume.

    ``path`` may be one scan (an ``.mhd`` file, a DICOM series folder, an LIDC patient folder) or a
    folder of them: every ``.mhd`` below it, and every folder that holds DICOM files beside an LIDC
    XML (the LIDC-IDRI download's series folders: ``LIDC-IDRI-XXXX/<study>/<series>/``, its reads in
    ``NNN.xml``), in name order. A DICOM series without an XML is not annotated and is not listed.

    Raises
    ------
    MissingDataError
        ``path`` does not exist, or holds no annotated scan.
    """
    from .readers import find_dicom_files

    path = Path(path)
    if not path.exists():
        raise MissingDataError("no such file or folder", path=path)
    if path.is_file():
        return [path]
    found = sorted(p for p in path.rglob("*.mhd") if not p.name.startswith("."))
    series = sorted({file.parent for file in find_dicom_files(path)})
    found += [folder for folder in series if any(folder.glob("*.xml"))]
    if not found:
        raise MissingDataError("no annotated scan found: expected .mhd files, or DICOM series folders with their LIDC XML", path=path)
    return sorted(found)


def _scan_name(path: Path, volume, taken: set) -> str:
    """A scan's name: its DICOM patient ID (or the file's stem), made unique among ``taken``."""
    meta = getattr(volume, "meta", None) or {}
    name = str(meta.get("patient_id") or (path.stem if path.is_file() else path.name))
    unique, count = name, 1
    while unique in taken:
        count += 1
        unique = f"{name}#{count}"
    taken.add(unique)
    return unique


def score_scans(paths: Sequence[str | os.PathLike], segmenter, *, progress: bool = True) -> ScoredScans:
    """Run a detector over annotated whole scans and score it the LUNA16 way (module docstring).

    Each scan is read with :func:`nodulekit.readers.read_any` (its consensus mask is the
    reference: :func:`reference_from_mask`), segmented with every candidate kept
    (``segmenter.segment(volume, min_score=0.0)``) and released before the next one is read. A scan
    that cannot be read, or has no annotations, is skipped with its reason in ``scans["error"]``
    (and a logged warning); the rest are scored.

    Parameters
    ----------
    paths : sequence of path
        Scans (:func:`annotated_scans` finds them in a folder).
    segmenter : nodulekit.inference.Segmenter
        With a second stage (``classifier``): the candidates need a score to be ranked.
    progress : bool
        A progress bar over the scans.

    Returns
    -------
    ScoredScans

    Raises
    ------
    InvalidParameterError
        The segmenter has no second stage.
    NodulekitError
        No scan could be scored (every reason is in the message).
    """
    from tqdm.auto import tqdm

    from .readers import read_any

    if getattr(segmenter, "classifier", None) is None:
        raise InvalidParameterError("scoring detections needs a segmenter with a second stage (classifier.json): its candidates have no score to rank")
    threshold = float(segmenter.classifier.threshold)
    paths = [Path(p) for p in paths]
    taken: set = set()
    detections, nodule_rows, candidate_tables, scan_rows = [], [], [], []
    for path in tqdm(paths, desc="scans", unit="scan", disable=not progress):
        row = {"scan": None, "path": str(path), "slices": None, "candidates": None, "seconds": None, "error": ""}
        scan_rows.append(row)
        start = time.perf_counter()
        try:
            volume = read_any(path)
            row["scan"] = name = _scan_name(path, volume, taken)
            if not isinstance(volume, Volume):
                raise MissingDataError(f"not a whole scan (read as {type(volume).__name__})", path=path)
            if volume.mask is None:
                raise MissingDataError("no annotations to score against (an LIDC XML beside the DICOM files, or annotations.csv beside the .mhd)", path=path)
            result = segmenter.segment(volume, min_score=0.0, progress=False)
        except NodulekitError as exc:
            row["scan"] = row["scan"] or _scan_name(path, None, taken)
            row["error"] = str(exc)
            logger.warning("skipped %s: %s", path, exc)
            continue
        row["slices"], row["seconds"] = int(volume.hu.shape[0]), round(time.perf_counter() - start, 1)
        reference = reference_from_mask(volume.mask, spacing=volume.spacing)
        table = result.nodules.reset_index(drop=True)
        row["candidates"] = int(len(table))
        detections.append(ScanDetections(candidates=table, reference=reference, spacing=volume.spacing, name=name))
        hits = hit_matrix(table, reference, spacing=volume.spacing) if len(table) and len(reference) else np.zeros((len(table), len(reference)), bool)
        nodule_rows += _nodule_rows(name, table, reference, hits, threshold)
        candidate_tables.append(_candidate_rows(name, table, reference, hits))
        del volume, result
    if not detections:
        reasons = "; ".join(r["error"] if r["path"] in r["error"] else f"{r['path']}: {r['error']}" for r in scan_rows)
        raise NodulekitError(f"no scan could be scored ({reasons})")
    return ScoredScans(
        froc=froc(detections),
        nodules=pd.DataFrame(nodule_rows),
        candidates=pd.concat(candidate_tables, ignore_index=True),
        scans=pd.DataFrame(scan_rows),
        threshold=threshold,
    )


def _nodule_rows(name: str, table: pd.DataFrame, reference: pd.DataFrame, hits: np.ndarray, threshold: float) -> list[dict]:
    """Each reference nodule's rank, score and the false positives scored above it (``table`` is sorted by score; ``hits`` its :func:`hit_matrix`)."""
    ignore = reference["ignore"].to_numpy(bool)
    false = ~hits.any(axis=1)  # a candidate on an ignored finding is not a false positive either
    scores = table["score"].to_numpy(float) if len(table) else np.zeros(0)
    rows = []
    for index in range(len(reference)):
        first = np.flatnonzero(hits[:, index])
        score = float(scores[first[0]]) if len(first) else None
        rows.append(
            {
                "scan": name,
                "nodule": index + 1,
                "diameter_mm": round(float(reference["diameter_mm"].iloc[index]), 1),
                "ignore": bool(ignore[index]),
                "rank": int(first[0]) + 1 if len(first) else None,
                "score": score,
                "false_positives_above": int((false & (scores > score)).sum()) if score is not None else None,
                "listed": bool(score is not None and score >= threshold),
            }
        )
    return rows


def _candidate_rows(name: str, table: pd.DataFrame, reference: pd.DataFrame, hits: np.ndarray) -> pd.DataFrame:
    """Every candidate with its outcome under the hit rule (``hits``: :func:`hit_matrix` of ``table`` on ``reference``)."""
    ignore = reference["ignore"].to_numpy(bool) if len(reference) else np.zeros(0, bool)
    relevant = (hits & ~ignore[None]).any(axis=1)
    outcome = np.where(relevant, "hit", np.where(hits.any(axis=1), "ignored", "false_positive"))
    columns = [c for c in ("score", "source", "centroid_z", "centroid_y", "centroid_x", "diameter_mm") if c in table]
    frame = table[columns].copy()
    frame.insert(0, "rank", np.arange(1, len(table) + 1))
    frame.insert(0, "scan", name)
    frame["outcome"] = outcome
    return frame
