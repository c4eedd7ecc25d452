"""The second stage on real LIDC-IDRI crop stacks: patient-grouped CV (issue 18, second stage, real data).

Each nodule of the dev PNG release (191 patients, 602 nodules) is a short stack of consecutive
128x128 axial crops centred on it, with vessels and pleura around it. The shipped segmenter runs
over each stack as a volume, exactly as ``Segmenter.segment`` runs over a scan (full slices, its
threshold, 3-D components of >= 3 mm and >= 3 voxels; ``units="uint8"``, no lung mask on crops);
its components are the candidates. Truth (:func:`nodulekit.detection.candidate_outcomes`): a
candidate whose centre lies on any reader's mark (the union of the readers' masks) is positive, one
that no reader marked anywhere is negative, one that touches a mark with its centre off it is
*partial*: ignored (neither hit nor false positive, like LUNA16's irrelevant findings); the
false positives with partials counted as false positives are reported beside.

Features: :data:`nodulekit.detection.INTENSITY_FREE_FEATURES` only (the PNGs are min-max scaled
per crop, not HU, and have no lung mask). The release stores no spacing: a nominal
(2.5, 0.7, 0.7) mm is assumed (LIDC-IDRI-0001's slices; the release's pixels are about 0.7 mm).

Scored per stack (a stack's reference is its own nodule, 602 in all; FP = negative candidates
scoring at or above the threshold, per stack), with out-of-fold scores of a patient-grouped 5-fold
CV (sklearn ``GroupKFold`` on patient ids):

* ``shipped as is``: ``classifier.json`` on all its 24 features (HU statistics computed on the
  0-255 values, position features 0): what a user gets by feeding crops;
* ``synthetic, refit``: the shipped recipe refit on the synthetic training scans' candidates
  (``experiments/detection.py``'s cache, even seeds) on the intensity-free features only;
* ``real, refit``: a logistic regression (:class:`nodulekit.detection.CandidateClassifier`, the
  same JSON format) refit on the real candidates of the training folds;
* baselines: volume order (what ``nodules.csv`` listed before) and the mean probability.

Then ``scan``: the real-refit classifier trained on every patient but LIDC-IDRI-0001 ranks the
candidates of the whole LIDC-IDRI-0001 DICOM scan (:func:`nodulekit.froc.score_scans`).

The shipped segmenter was trained on these same 191 patients: its candidates here are in-sample
(it finds these nodules more easily than it would on new patients).

    python experiments/detection_stacks.py candidates          # 1.5-2 min on 2 cores, cached in runs/stacks/
    python experiments/detection_stacks.py evaluate --synthetic runs/detect
    python experiments/detection_stacks.py scan ../shared/data/lidc/LIDC-IDRI-0001
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling experiments/detection.py

#: Assumed voxel size (slice, row, column) in mm: the release stores none.
SPACING = (2.5, 0.7, 0.7)
#: Patient-grouped folds.
FOLDS = 5
#: Inverse L2 strength of the real refit, fixed before looking (CandidateClassifier.fit's default).
REGULARIZATION = 1.0
#: Others, reported for sensitivity only.
OTHER_REGULARIZATIONS = (0.01, 0.1, 10.0)
#: The patient of the whole-scan check.
CHECK_PATIENT = "LIDC-IDRI-0001"
DATA = Path("../shared/data/lidc/LIDC-IDRI-slices")
CANDIDATES_CSV = "candidates.csv"
#: One row per stack, those without any candidate included (they count in every per-stack rate).
STACKS_CSV = "stacks.csv"


def stack_candidates(images, marks, segmenter):
    """Candidates of one stack: the nodule table joined with features and each candidate's outcome."""
    from nodulekit.detection import candidate_features, candidate_outcomes

    result = segmenter.segment(images, spacing=SPACING, units="uint8", connect_slices=True, lungs=False, progress=False)
    table = result.nodules
    features = candidate_features(result.labels, table, probabilities=result.probabilities, hu=images, lung=None, spacing=SPACING)
    table = table.join(features)  # every feature, the ball's included (a stage uses the ones it names)
    table["outcome"] = candidate_outcomes(result.labels, table, marks)
    return table, result.info["total_s"]


def command_candidates(args) -> int:
    import pandas as pd
    from tqdm.auto import tqdm

    from nodulekit import load_pretrained
    from nodulekit.readers import read_lidc_release
    from nodulekit.utils import write_json

    out = Path(args.cache)
    out.mkdir(parents=True, exist_ok=True)
    crops = read_lidc_release(args.data, consensus="union", progress=False)
    segmenter = load_pretrained(tta=False).segmenter
    table = crops.table.reset_index(drop=True)
    stacks = list(table.groupby("nodule_id", sort=True).groups.items())
    if args.limit:
        stacks = stacks[: args.limit]
    rows, stack_rows, seconds, start = [], [], [], time.perf_counter()
    for nodule_id, index in tqdm(stacks, desc="stacks", unit="stack"):
        order = np.asarray(index)[np.argsort(table.loc[index, "slice_index"].to_numpy())]
        images = crops.images[order]
        marks = crops.reader_masks[order].any(axis=1)
        candidates, segment_s = stack_candidates(images, marks, segmenter)
        seconds.append(segment_s)
        stack = {"patient_id": table.loc[order[0], "patient_id"], "stack": nodule_id, "slices": len(order), "n_readers": int(table.loc[order[0], "n_readers"])}
        rows.append(candidates.assign(**stack))
        stack_rows.append({**stack, "candidates": len(candidates), "marked_voxels": int(marks.sum()), "segment_s": round(segment_s, 3)})
    frame = pd.concat(rows, ignore_index=True)
    name = CANDIDATES_CSV if not args.limit else f"candidates-first{args.limit}.csv"
    frame.to_csv(out / name, index=False)
    pd.DataFrame(stack_rows).to_csv(out / name.replace("candidates", "stacks"), index=False)
    timing = {"stacks": len(stacks), "wall_s": round(time.perf_counter() - start, 1), "segment_s_per_stack": round(float(np.mean(seconds)), 3)}
    write_json(out / (Path(name).stem + "-timing.json"), timing)
    print(json.dumps({**timing, "candidates": len(frame), **frame["outcome"].value_counts().to_dict()}))
    return 0


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


def per_stack_froc(frame, stacks, scores, *, partial_is_fp: bool = False):
    """FROC over stacks: each stack's reference is its nodule; negatives (and partials if asked) are FPs.

    ``stacks`` lists every stack, also those without any candidate: they count in both rates.
    """
    from nodulekit.froc import froc_from_outcomes

    stacks = {name: k for k, name in enumerate(stacks["stack"])}
    outcome = frame["outcome"].to_numpy(str)
    nodules = np.where(outcome == "positive", frame["stack"].map(stacks).to_numpy(int), -1)
    ignore = (outcome == "partial") & (not partial_is_fp)
    return froc_from_outcomes(scores, nodules, n_scans=len(stacks), n_nodules=len(stacks), ignore=ignore)


def summarise(frame, stacks, scores) -> dict:
    """Candidate AUC (partials left out), Brier, and the per-stack FROC of one scoring."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    keep = frame["outcome"].to_numpy(str) != "partial"
    labels = frame["outcome"].to_numpy(str)[keep] == "positive"
    result = per_stack_froc(frame, stacks, scores)
    strict = per_stack_froc(frame, stacks, scores, partial_is_fp=True)
    summary = {
        "candidate_auc": round(float(roc_auc_score(labels, scores[keep])), 4),
        "sensitivity_at_1_fp_per_stack": round(result.sensitivities[1.0], 4),
        "sensitivity_at_fp_per_stack": {str(k): round(v, 4) for k, v in result.sensitivities.items()},
        "cpm": round(result.cpm, 4),
        "sensitivity_at_1_fp_per_stack_partials_as_fp": round(strict.sensitivities[1.0], 4),
    }
    if scores.min() >= 0 and scores.max() <= 1:
        summary["brier"] = round(float(brier_score_loss(labels, scores[keep])), 4)
    return summary, result


def out_of_fold(frame, *, regularization: float, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """Patient-grouped 5-fold CV of the real refit: out-of-fold scores and each fold's size."""
    from sklearn.model_selection import GroupKFold

    from nodulekit.detection import INTENSITY_FREE_FEATURES, CandidateClassifier
    from nodulekit.splits import check_no_leak

    scores = np.zeros(len(frame))
    train_rows = (frame["outcome"] != "partial").to_numpy()
    folds = []
    for k, (train, test) in enumerate(GroupKFold(n_splits=FOLDS).split(frame, groups=frame["patient_id"])):
        check_no_leak(frame["patient_id"].to_numpy(), train, test)
        fit_on = train[train_rows[train]]
        labels = frame["outcome"].to_numpy(str)[fit_on] == "positive"
        model = CandidateClassifier.fit(frame.iloc[fit_on], labels, feature_names=INTENSITY_FREE_FEATURES, regularization=regularization, seed=seed)
        scores[test] = model.predict_proba(frame.iloc[test])
        folds.append({"fold": k, "train_patients": int(frame["patient_id"].iloc[train].nunique()), "test_patients": int(frame["patient_id"].iloc[test].nunique())})
    return scores, folds


def synthetic_refit(folder: Path):
    """The shipped recipe (logistic regression, its regularization) refit on synthetic training candidates, intensity-free features."""
    from nodulekit.detection import INTENSITY_FREE_FEATURES, CandidateClassifier, load_classifier

    # The stage these numbers were measured with (segmenter candidates, one classifier), shipped until
    # the per-source stage replaced it; kept in experiments/results so that this script reproduces them.
    shipped = load_classifier(Path(__file__).with_name("results") / "detection_classifier")
    detection = _detection_module()
    candidates, references = detection.load_tables(folder, held_out=False)
    labels = candidates["label"].to_numpy(bool)
    regularization = float(shipped.metadata.get("regularization", 1.0))
    model = CandidateClassifier.fit(candidates, labels, feature_names=INTENSITY_FREE_FEATURES, regularization=regularization, seed=0)
    return shipped, model, {"synthetic_scans": len(references), "synthetic_candidates": int(len(candidates)), "regularization": regularization}


def on_held_out_synthetic(folder: Path, frame, shipped) -> dict:
    """The real refit (all stacks) against the shipped classifier on the held-out synthetic scans (whole volumes in HU)."""
    from sklearn.metrics import roc_auc_score

    from nodulekit.detection import INTENSITY_FREE_FEATURES, CandidateClassifier

    detection = _detection_module()
    candidates, references = detection.load_tables(folder, held_out=True)
    spacing_of = detection.spacings(folder, references)
    train = frame[frame["outcome"] != "partial"]
    real = CandidateClassifier.fit(train, (train["outcome"] == "positive").to_numpy(), feature_names=INTENSITY_FREE_FEATURES, regularization=REGULARIZATION)
    labels = candidates["label"].to_numpy(bool)
    out = {"held_out_scans": len(references)}
    for name, model in (("shipped classifier.json", shipped), ("real, refit on all stacks", real)):
        scores = model.predict_proba(candidates)
        result = detection.froc_of(candidates, references, scores, spacing_of)
        out[name] = {"cpm": round(result.cpm, 4), "candidate_auc": round(float(roc_auc_score(labels, scores)), 4)}
    return out


def _detection_module():
    """experiments/detection.py (the whole-scan cache and FROC helpers), imported on first use."""
    import detection

    return detection


def command_evaluate(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from nodulekit.plots import save_figure
    from nodulekit.plots.detection import plot_froc, plot_reliability, reliability_table
    from nodulekit.utils import write_json

    frame = pd.read_csv(Path(args.cache) / CANDIDATES_CSV)
    stacks = pd.read_csv(Path(args.cache) / STACKS_CSV)
    shipped, synthetic, synthetic_info = synthetic_refit(Path(args.synthetic))
    real_scores, folds = out_of_fold(frame, regularization=REGULARIZATION)
    scorings = {
        "real, refit (CV)": real_scores,
        "synthetic, refit on intensity-free features": synthetic.predict_proba(frame),
        "shipped classifier.json as is": shipped.predict_proba(frame),
        "mean probability": frame["probability_mean"].to_numpy(float),
        "volume (no second stage)": frame["log_volume_mm3"].to_numpy(float),
    }
    results, curves = {}, {}
    for name, scores in scorings.items():
        results[name], curves[name] = summarise(frame, stacks, scores)
    others = {f"real, refit C={c} (CV)": summarise(frame, stacks, out_of_fold(frame, regularization=c)[0])[0] for c in OTHER_REGULARIZATIONS}
    outcome = frame["outcome"].value_counts().to_dict()
    positives = frame[frame["outcome"] == "positive"]
    summary = {
        "stacks": int(len(stacks)),
        "patients": int(stacks["patient_id"].nunique()),
        "stacks_without_a_candidate": int((stacks["candidates"] == 0).sum()),
        "spacing_assumed_mm": list(SPACING),
        "candidates": int(len(frame)),
        "outcomes": {k: int(v) for k, v in outcome.items()},
        "stacks_with_a_positive_candidate": round(float(positives["stack"].nunique() / len(stacks)), 4),
        "found_by_a_candidate_by_readers": _found_by(stacks, positives, "n_readers"),
        "candidates_per_stack": round(float(len(frame) / len(stacks)), 2),
        "segment_s_per_stack": round(float(stacks["segment_s"].mean()), 3),
        "features": list(synthetic.feature_names),
        "folds": folds,
        "real_refit_regularization": REGULARIZATION,
        "synthetic_refit": synthetic_info,
        "results": results,
        "real_refit_other_regularization": others,
        "held_out_synthetic_scans": on_held_out_synthetic(Path(args.synthetic), frame, shipped),
    }
    keep = (frame["outcome"] != "partial").to_numpy()
    labels = (frame["outcome"] == "positive").to_numpy(float)[keep]
    summary["reliability"] = {name: reliability_table(scorings[name][keep], labels, bins=10) for name in list(scorings)[:2]}
    path = Path(args.out) / "detection_stacks.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    summary.update({k: v for k, v in previous.items() if k.startswith("whole_scan_")})
    write_json(path, summary)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    plot_froc({k: curves[k] for k in list(curves)[:4]}, ax=axes[0], title=f"{summary['stacks']} LIDC-IDRI crop stacks, patient-grouped {FOLDS}-fold CV")
    axes[0].set_xlabel("false positives per stack")
    plot_reliability(scorings["real, refit (CV)"][keep], labels, ax=axes[1], title="real refit: held-out candidates")
    save_figure(figure, "S7", "detection_stacks", folder=args.figures)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("reliability", "folds")}, indent=1))
    return 0


def _found_by(stacks, positives, column: str) -> dict:
    """Fraction of stacks with a positive candidate, by ``column``: the ceiling of any ranking."""
    found = stacks["stack"].isin(positives["stack"])
    return {str(k): {"n": int(v.size), "found": round(float(v.mean()), 3)} for k, v in found.groupby(stacks[column])}


def command_scan(args) -> int:
    """Refit on every patient but CHECK_PATIENT, then rank the candidates of that patient's whole DICOM scan."""
    import pandas as pd

    from nodulekit import load_pretrained
    from nodulekit.detection import INTENSITY_FREE_FEATURES, CandidateClassifier
    from nodulekit.froc import score_scans
    from nodulekit.utils import write_json

    frame = pd.read_csv(Path(args.cache) / CANDIDATES_CSV)
    train = frame[(frame["patient_id"] != CHECK_PATIENT) & (frame["outcome"] != "partial")]
    model = CandidateClassifier.fit(
        train,
        (train["outcome"] == "positive").to_numpy(),
        feature_names=INTENSITY_FREE_FEATURES,
        regularization=REGULARIZATION,
        metadata={"trained_on": f"LIDC-IDRI crop-stack candidates of {train['patient_id'].nunique()} dev patients, {CHECK_PATIENT} left out"},
    )
    folder = model.save(Path(args.cache) / f"classifier-without-{CHECK_PATIENT}").parent
    segmenter = load_pretrained(tta=False).segmenter
    segmenter.classifier = model
    scored = score_scans([Path(args.scan)], segmenter, progress=False)
    summary = {"classifier": str(folder), "trained_patients": int(train["patient_id"].nunique()), "froc_cpm": scored.froc.cpm, "nodules": scored.nodules.to_dict(orient="records")}
    path = Path(args.out) / "detection_stacks.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored[f"whole_scan_{CHECK_PATIENT}"] = summary
    write_json(path, stored)
    print(json.dumps(summary, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    candidates = sub.add_parser("candidates", help="segment every stack, candidate features and outcomes")
    candidates.add_argument("--data", default=str(DATA))
    candidates.add_argument("--limit", type=int, default=0, help="only the first N stacks (timing)")
    evaluate = sub.add_parser("evaluate", help="patient-grouped CV: AUC, sensitivity at 1 FP per stack, reliability")
    evaluate.add_argument("--synthetic", default="runs/detect", help="experiments/detection.py's cache (synthetic candidates)")
    evaluate.add_argument("--figures", default="figures")
    scan = sub.add_parser("scan", help=f"rank a whole annotated scan with the real refit trained without {CHECK_PATIENT}")
    scan.add_argument("scan", nargs="?", default="../shared/data/lidc/LIDC-IDRI-0001")
    for command in (candidates, evaluate, scan):
        command.add_argument("--cache", default="runs/stacks")
    for command in (evaluate, scan):
        command.add_argument("--out", default="experiments/results")
    args = parser.parse_args(argv)
    return {"candidates": command_candidates, "evaluate": command_evaluate, "scan": command_scan}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
