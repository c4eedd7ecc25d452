"""Whole-scan detection (issue 18): candidates, the learned second stage, FROC.

Steps (each cached in ``--cache``, default ``runs/detect``; rerunning reuses what is there):

1. ``cache``: synthetic chest CT series from :func:`nodulekit.phantom.generate_volume` (exact
   truth), segmented with the shipped model (:func:`nodulekit.load_pretrained`); each scan's HU,
   probabilities, lung mask and truth go to ``scan-<seed>.npz`` (no pickle).
2. ``train``: candidate features (:mod:`nodulekit.detection`) on the training scans, a logistic
   regression on standardized features, saved as JSON.
3. ``evaluate``: FROC (:mod:`nodulekit.froc`) on held-out scans that no stage trained on, candidate
   AUC, a reliability diagram.

    python experiments/detection.py cache --scans 200
    python experiments/detection.py train
    python experiments/detection.py evaluate

Real annotated scans (DICOM + LIDC XML, or .mhd + annotations.csv) are scored by ``nodulekit froc``
(:func:`nodulekit.froc.score_scans`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: Every ``HELD_OUT_EVERY``-th seed (odd seeds) is held out from every stage.
HELD_OUT_EVERY = 2
#: Synthetic series: slices and nodules per scan (32 slices of 1-3 mm: 3-10 cm of chest).
N_SLICES = 32
N_NODULES = 4


def is_held_out(seed: int) -> bool:
    """True for the seeds that no stage trains on."""
    return seed % HELD_OUT_EVERY == HELD_OUT_EVERY - 1


def cache_scan(seed: int, folder: Path, segmenter) -> Path:
    """Generate synthetic scan ``seed``, segment it, save what the later steps need."""
    from nodulekit.phantom import generate_volume

    path = folder / f"scan-{seed:05d}.npz"
    if path.exists():
        return path
    start = time.perf_counter()
    volume = generate_volume(n_slices=N_SLICES, n_nodules=N_NODULES, seed=seed, readers=0)
    generated = time.perf_counter() - start
    result = segmenter.segment(volume, progress=False)
    lung = result.lung if result.lung is not None else np.ones(volume.hu.shape, bool)
    info = {
        "seed": seed,
        "spacing": [float(s) for s in volume.spacing],
        "nodules": volume.nodules.to_dict(orient="records"),
        "generate_s": generated,
        "segment_s": result.info["total_s"],
    }
    temporary = folder / f".scan-{seed:05d}.tmp.npz"
    np.savez_compressed(
        temporary,
        hu=np.clip(np.round(volume.hu), -32768, 32767).astype(np.int16),
        probabilities=result.probabilities.astype(np.float16),
        lung=lung,
        truth=volume.mask.astype(np.uint8),
        info=np.array(json.dumps(info)),
    )
    temporary.replace(path)
    return path


def load_scan(path: Path) -> dict:
    """A cached scan: arrays (HU and probabilities as float32) and its info."""
    with np.load(path, allow_pickle=False) as data:
        scan = {name: data[name] for name in ("hu", "probabilities", "lung", "truth")}
        info = json.loads(str(data["info"]))
    scan["hu"] = scan["hu"].astype(np.float32)
    scan["probabilities"] = scan["probabilities"].astype(np.float32)
    scan["info"] = info
    scan["spacing"] = tuple(info["spacing"])
    return scan


def scan_candidates(scan: dict, *, threshold: float = 0.5) -> tuple[object, object]:
    """(candidate table with features, label and hit nodule; reference table) of one cached scan.

    Candidates are found exactly as :meth:`nodulekit.inference.Segmenter.segment` finds them (its
    default threshold, 3 mm and 3 voxels); a candidate's label is the FROC hit rule
    (:func:`nodulekit.froc.hit_matrix`) against the exact masks' nodules of at least 3 mm.
    """
    from nodulekit.detection import candidate_features
    from nodulekit.froc import hit_matrix, reference_from_mask
    from nodulekit.inference import measure_nodules

    spacing = scan["spacing"]
    labels, table = measure_nodules(
        scan["probabilities"] >= threshold,
        spacing=spacing,
        probabilities=scan["probabilities"],
        hu=scan["hu"],
        min_diameter_mm=3.0,
        min_voxels=3,
    )
    features = candidate_features(labels, table, probabilities=scan["probabilities"], hu=scan["hu"], lung=scan["lung"], spacing=spacing)
    reference = reference_from_mask(scan["truth"], spacing=spacing)
    kinds = _reference_kinds(reference, scan["info"]["nodules"], spacing)
    reference["kind"] = kinds
    hits = hit_matrix(table, reference, spacing=spacing) & ~reference["ignore"].to_numpy(bool)[None]
    candidates = table.join(features)
    candidates["label"] = hits.any(axis=1)
    candidates["hit"] = [" ".join(str(k) for k in np.flatnonzero(row)) for row in hits]
    return candidates, reference


def _reference_kinds(reference, nodules: list[dict], spacing) -> list[str]:
    """The generator's kind of each reference component: the nodule whose centre lies closest to it."""
    kinds = []
    for record in reference.itertuples(index=False):
        distances = [
            np.hypot((n["z"] - record.centroid_z) * spacing[0], np.hypot((n["y"] - record.centroid_y) * spacing[1], (n["x"] - record.centroid_x) * spacing[2]))
            for n in nodules
        ]
        kinds.append(nodules[int(np.argmin(distances))]["kind"] if nodules else "")
    return kinds


def cache_features(path: Path) -> tuple[Path, Path]:
    """Features and reference of a cached scan as CSV beside it (computed once)."""
    candidates_csv = path.with_name(path.stem + "-candidates.csv")
    reference_csv = path.with_name(path.stem + "-reference.csv")
    if not candidates_csv.exists():
        candidates, reference = scan_candidates(load_scan(path))
        reference.to_csv(reference_csv, index=False)
        candidates.to_csv(candidates_csv, index=False)
    return candidates_csv, reference_csv


def command_features(args) -> int:
    from tqdm.auto import tqdm

    folder = Path(args.cache)
    while True:
        todo = [p for p in sorted(folder.glob("scan-?????.npz")) if not p.with_name(p.stem + "-candidates.csv").exists()]
        for path in tqdm(todo, desc="candidate features"):
            cache_features(path)
        if not args.follow or (folder / "cache.done").exists() and not todo:
            return 0
        if not todo:
            time.sleep(30)


# --------------------------------------------------------------------------------------------------
# Training and validation (training scans only)
# --------------------------------------------------------------------------------------------------

#: Ranking without a second stage, for comparison: what nodules.csv offered before (volume order)
#: and the model's own probabilities.
BASELINES = {"volume (no second stage)": "log_volume_mm3", "mean probability": "probability_mean"}


def load_tables(folder: Path, *, held_out: bool) -> tuple[object, dict]:
    """Candidates (with a ``seed`` column) and references of the cached scans of one side of the split."""
    import pandas as pd

    candidates, references = [], {}
    for path in sorted(folder.glob("scan-?????-candidates.csv")):
        seed = int(path.name[5:10])
        if is_held_out(seed) != held_out:
            continue
        table = pd.read_csv(path, dtype={"hit": str}, keep_default_na=False)
        table["seed"] = seed
        candidates.append(table)
        references[seed] = pd.read_csv(path.with_name(f"scan-{seed:05d}-reference.csv"))
    if not candidates:
        raise SystemExit(f"no cached {'held-out' if held_out else 'training'} scans in {folder}; run `cache` and `features` first")
    return pd.concat(candidates, ignore_index=True), references


def froc_of(candidates, references: dict, scores, spacing_of: dict):
    """FROC of one scoring of the candidates over the scans of ``references``."""
    from nodulekit.froc import ScanDetections, froc

    table = candidates.assign(score=np.asarray(scores, float))
    return froc(
        [
            ScanDetections(candidates=table[table["seed"] == seed], reference=reference, spacing=spacing_of[seed], name=f"scan-{seed}")
            for seed, reference in references.items()
        ]
    )


def spacings(folder: Path, seeds) -> dict:
    """Each cached scan's voxel size, from its npz info (small read)."""
    out = {}
    for seed in seeds:
        with np.load(folder / f"scan-{seed:05d}.npz", allow_pickle=False) as data:
            out[seed] = tuple(json.loads(str(data["info"]))["spacing"])
    return out


def out_of_fold(candidates, *, folds: int, regularization: float, seed: int, model: str = "logistic") -> np.ndarray:
    """Scan-grouped cross-validated scores of the training candidates."""
    from sklearn.model_selection import GroupKFold

    from nodulekit.detection import FEATURE_NAMES, CandidateClassifier

    scores = np.zeros(len(candidates))
    labels = candidates["label"].to_numpy(bool)
    for train, test in GroupKFold(n_splits=folds).split(candidates, labels, candidates["seed"]):
        if model == "logistic":
            fitted = CandidateClassifier.fit(candidates.iloc[train], labels[train], regularization=regularization, seed=seed)
            scores[test] = fitted.predict_proba(candidates.iloc[test])
        else:  # gradient boosting, for comparison only (it would need pickle to ship)
            from sklearn.ensemble import HistGradientBoostingClassifier

            booster = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=seed)
            booster.fit(candidates.iloc[train][list(FEATURE_NAMES)], labels[train])
            scores[test] = booster.predict_proba(candidates.iloc[test][list(FEATURE_NAMES)])[:, 1]
    return scores


def command_train(args) -> int:
    from sklearn.metrics import roc_auc_score

    from nodulekit.detection import CandidateClassifier
    from nodulekit.utils import write_json

    folder = Path(args.cache)
    candidates, references = load_tables(folder, held_out=False)
    spacing_of = spacings(folder, references)
    labels = candidates["label"].to_numpy(bool)
    validation = {}
    for c in args.regularization:
        scores = out_of_fold(candidates, folds=args.folds, regularization=c, seed=args.seed)
        result = froc_of(candidates, references, scores, spacing_of)
        validation[f"logistic C={c}"] = {"cpm": result.cpm, "auc": roc_auc_score(labels, scores), "result": result, "scores": scores}
    boosted = out_of_fold(candidates, folds=args.folds, regularization=1.0, seed=args.seed, model="boosting")
    validation["gradient boosting"] = {"cpm": froc_of(candidates, references, boosted, spacing_of).cpm, "auc": roc_auc_score(labels, boosted)}
    for name, column in BASELINES.items():
        values = candidates[column].to_numpy(float)
        validation[name] = {"cpm": froc_of(candidates, references, values, spacing_of).cpm, "auc": roc_auc_score(labels, values)}
    best = max((k for k in validation if k.startswith("logistic")), key=lambda k: validation[k]["cpm"])
    regularization = float(best.split("=")[1])
    chosen = validation[best]["result"]
    threshold = chosen.threshold_at(args.target_fp)
    classifier = CandidateClassifier.fit(candidates, labels, regularization=regularization, seed=args.seed)
    classifier.threshold = float(min(threshold, 1.0))
    classifier.metadata = {
        "trained_on": f"{len(references)} synthetic scans of nodulekit.phantom.generate_volume ({N_SLICES} slices, {N_NODULES} nodules, even seeds), "
        "candidates of the shipped segmenter (threshold 0.5, >= 3 mm)",
        "n_scans": len(references),
        "n_candidates": int(len(candidates)),
        "n_positive": int(labels.sum()),
        "regularization": regularization,
        "operating_point": {
            "target_fp_per_scan": args.target_fp,
            "threshold": classifier.threshold,
            "validation_sensitivity": float(chosen.sensitivity[np.flatnonzero(chosen.thresholds == threshold)[0]]) if np.isfinite(threshold) else 0.0,
            "chosen_on": f"{args.folds}-fold scan-grouped cross-validation on the training scans",
        },
        "validation_cpm": validation[best]["cpm"],
    }
    out = Path(args.out)
    classifier.save(out / "detection_classifier")
    if args.ship:
        classifier.save(Path(args.ship))
    summary = {
        "n_scans": len(references),
        "n_candidates": int(len(candidates)),
        "n_positive": int(labels.sum()),
        "chosen": best,
        "threshold": classifier.threshold,
        "validation": {k: {"cpm": round(float(v["cpm"]), 4), "auc": round(float(v["auc"]), 4)} for k, v in validation.items()},
        "validation_sensitivity_at_fp": {str(k): v for k, v in chosen.sensitivities.items()},
        "coefficients": dict(zip(classifier.feature_names, np.round(classifier.coefficients, 3).tolist())),
    }
    write_json(out / "detection_train.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "coefficients"}, indent=1))
    return 0


# --------------------------------------------------------------------------------------------------
# Held-out evaluation
# --------------------------------------------------------------------------------------------------


def command_evaluate(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from sklearn.metrics import brier_score_loss, roc_auc_score

    from nodulekit.detection import load_classifier
    from nodulekit.plots import save_figure
    from nodulekit.plots.detection import plot_froc, plot_reliability, reliability_table
    from nodulekit.utils import write_json

    folder, out = Path(args.cache), Path(args.out)
    classifier = load_classifier(out / "detection_classifier")
    candidates, references = load_tables(folder, held_out=True)
    spacing_of = spacings(folder, references)
    labels = candidates["label"].to_numpy(bool)
    scores = classifier.predict_proba(candidates)
    results = {"second stage (logistic regression)": froc_of(candidates, references, scores, spacing_of)}
    for name, column in BASELINES.items():
        results[name] = froc_of(candidates, references, candidates[column].to_numpy(float), spacing_of)
    main = results["second stage (logistic regression)"]
    kept = scores >= classifier.threshold
    per_scan_fp = float((kept & ~labels).sum() / len(references))
    recall = _recall_by_kind(candidates, references, scores, classifier.threshold)
    summary = {
        "held_out_scans": len(references),
        "held_out_seeds": sorted(int(s) for s in references),
        "n_candidates": int(len(candidates)),
        "n_positive_candidates": int(labels.sum()),
        "froc": {name: result.to_dict() for name, result in results.items()},
        "cpm": {name: round(result.cpm, 4) for name, result in results.items()},
        "candidate_auc": round(float(roc_auc_score(labels, scores)), 4),
        "brier": round(float(brier_score_loss(labels, scores)), 4),
        "reliability": reliability_table(scores, labels, bins=10),
        "operating_point": {"threshold": classifier.threshold, "fp_per_scan": per_scan_fp, "sensitivity": _sensitivity_at(main, classifier.threshold)},
        "recall_by_kind": recall,
    }
    write_json(out / "detection.json", summary)
    fig = plot_froc(results, title=f"{len(references)} held-out synthetic scans ({N_SLICES} slices each)")
    save_figure(fig, "S5", "detection_froc", folder=args.figures)
    fig = plot_reliability(scores, labels, title="held-out candidates")
    save_figure(fig, "S6", "detection_reliability", folder=args.figures)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("froc", "held_out_seeds", "reliability")}, indent=1))
    return 0


def _sensitivity_at(result, threshold: float) -> float:
    index = np.flatnonzero(result.thresholds >= threshold)
    return float(result.sensitivity[index[-1]]) if len(index) else 0.0


def _recall_by_kind(candidates, references: dict, scores, threshold: float) -> dict:
    """Per generator nodule kind: reference nodules, found by any candidate, found at the operating point."""
    import pandas as pd

    rows = []
    for seed, reference in references.items():
        mine = candidates["seed"].to_numpy() == seed
        hits = candidates.loc[mine, "hit"]
        kept = scores[mine] >= threshold
        for index, record in enumerate(reference.itertuples(index=False)):
            if record.ignore:
                continue
            on = np.array([str(index) in h.split() for h in hits])
            rows.append({"kind": record.kind, "found": bool(on.any()), "kept": bool((on & kept).any())})
    table = pd.DataFrame(rows)
    grouped = table.groupby("kind").agg(n=("found", "size"), found=("found", "mean"), kept=("kept", "mean"))
    return {kind: {"n": int(r.n), "found_by_a_candidate": round(float(r.found), 3), "found_at_operating_point": round(float(r.kept), 3)} for kind, r in grouped.iterrows()}


def command_cache(args) -> int:
    from tqdm.auto import tqdm

    from nodulekit import load_pretrained

    folder = Path(args.cache)
    folder.mkdir(parents=True, exist_ok=True)
    segmenter = load_pretrained(tta=False).segmenter
    for seed in tqdm(range(args.first, args.first + args.scans), desc="synthetic scans"):
        cache_scan(seed, folder, segmenter)
    (folder / "cache.done").touch()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cache = sub.add_parser("cache", help="generate and segment synthetic scans")
    cache.add_argument("--scans", type=int, default=200)
    cache.add_argument("--first", type=int, default=0)
    features = sub.add_parser("features", help="candidate features of the cached scans")
    features.add_argument("--follow", action="store_true", help="keep going while `cache` adds scans")
    train = sub.add_parser("train", help="fit and validate the second stage on the training scans")
    train.add_argument("--folds", type=int, default=5)
    train.add_argument("--regularization", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    train.add_argument("--target-fp", type=float, default=1.0, help="false positives per scan of the default operating point")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--ship", help="also write classifier.json into this segmenter folder")
    evaluate = sub.add_parser("evaluate", help="FROC, AUC and calibration on the held-out scans")
    evaluate.add_argument(
        "--figures",
        default="runs/detection_single_stage",
        help="where its FROC and reliability figures go (not figures/: the README's figS5/S6 are the shipped "
        "stage's, drawn by experiments/detection_candidates.py shipped)",
    )
    for command in (train, evaluate):
        command.add_argument("--out", default="experiments/results")
    for command in (cache, features, train, evaluate):
        command.add_argument("--cache", default="runs/detect")
    args = parser.parse_args(argv)
    return {"cache": command_cache, "features": command_features, "train": command_train, "evaluate": command_evaluate}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
