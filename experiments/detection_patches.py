"""A 3-D patch CNN as a third scorer of whole-scan candidates, fused with the boosted trees (issue 18).

On the union candidates cached by ``experiments/detection_candidates.py`` (``scan-<seed>-union.csv``
beside each ``scan-<seed>.npz`` of ``experiments/detection.py cache``):

1. ``patches``: each candidate's two-channel patch (:func:`nodulekit.patch_scorer.candidate_patches`)
   as ``scan-<seed>-patches.npy`` (float32) in the cache.
2. ``cv`` (training scans only, even seeds): scan-grouped 5-fold CV, the same folds as ``boost``
   (``GroupKFold`` on the same rows): per fold a patch scorer
   (:func:`nodulekit.training.patch_scorer.fit_patch_scorer`, :data:`PATCH_RECIPE`) and the shipped
   trees' recipe refit; out-of-fold FROC CPM of the trees, of the CNN, and of their fusion
   ``(1 - w) * trees + w * cnn`` on the log-odds for w in :data:`WEIGHTS`. The smallest weight
   within 0.01 of the best CV CPM is chosen (``detection_candidates.py``'s tie rule: the least
   reliance on a CNN that saw only synthetic scans), then a Platt step and an operating point
   on the out-of-fold fused scores (``calibrate`` refits both for the final models). Nothing held
   out is read.
3. ``ship``: the patch scorer trained on every training scan (seed 0), the chosen fusion written
   into the shipped ``classifier.json`` (its trees unchanged: they were fit on the same 120 scans)
   and ``patch_scorer.keras`` beside it. ``--extra-cache MORE`` (``cv`` and ``ship``): more training
   scans; every CV fold trains on them too and scores only its held-back scans of ``--cache`` (the
   same folds and test scans as without them; results under ``cv_with_extra_scans``), and ``ship``
   refits the trees (the same settings) and the CNN on all of them (``calibrate --trees-too`` then
   fits the refit trees' own Platt step and operating point).
4. ``calibrate``: the Platt step and the operating point of the shipped (final) models refit on
   calibration scans: new even seeds (``detection_candidates.py more-held-out --training --first
   240 --count 60 --cache CAL``), neither trained on nor held out.
5. ``held-out``: the shipped stage (trees alone, and fused) on the held-out scans (odd seeds, no
   stage trained on them), scored once: CPM, sensitivities, AUC, Brier, false positives per scan
   at the operating point, recall by kind, the reliability table, Fig. S5 (FROC) and Fig. S6
   (reliability) against the trees alone; the shipped
   ``classifier.json``'s ``held_out`` record (its model card numbers) gets the fused stage's.

    python experiments/detection_patches.py patches --cache /tmp/c3-train
    python experiments/detection_patches.py patches --cache /tmp/c3-held --held-out
    python experiments/detection_patches.py cv --cache /tmp/c3-train          # ~25 min on 2 cores
    python experiments/detection_patches.py ship --cache /tmp/c3-train        # ~5 min
    python experiments/detection_candidates.py more-held-out --training --first 240 --count 60 --cache /tmp/c4-calib
    python experiments/detection_patches.py patches --cache /tmp/c4-calib
    python experiments/detection_patches.py calibrate --cache /tmp/c4-calib --training-cache /tmp/c3-train
    python experiments/detection_patches.py held-out --cache /tmp/c3-held
    # the shipped stage: 120 more training scans (even seeds 300-538)
    python experiments/detection_candidates.py more-held-out --training --first 300 --count 240 --cache /tmp/c5-more --blob '{"radii_mm": [1.5, 2.0, 2.5, 3.2, 4.0, 5.0, 6.5, 8.0, 10.0, 15.0]}'
    python experiments/detection_patches.py patches --cache /tmp/c5-more
    python experiments/detection_patches.py cv --cache /tmp/c3-train --extra-cache /tmp/c5-more      # ~36 min
    python experiments/detection_patches.py ship --cache /tmp/c3-train --extra-cache /tmp/c5-more    # ~7 min
    python experiments/detection_patches.py calibrate --cache /tmp/c4-calib --training-cache /tmp/c3-train /tmp/c5-more --trees-too
    python experiments/detection_patches.py held-out --cache /tmp/c3-held
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import detection as whole_scan  # noqa: E402  (experiments/detection.py: the cache and the FROC helpers)
import detection_candidates as union  # noqa: E402  (experiments/detection_candidates.py: the union tables, the trees)

RESULTS = Path(__file__).resolve().parent / "results"
RESULT = "detection_patches.json"
#: Fusion weights of the CNN's logit tried by ``cv``.
WEIGHTS = (0.25, 0.5, 0.75)
FOLDS = 5


def _record(key: str, value) -> dict:
    """Set ``key`` of the results file (:data:`RESULT` in ``experiments/results``) to ``value``; the whole record."""
    from nodulekit.utils import write_json

    record = json.loads((RESULTS / RESULT).read_text()) if (RESULTS / RESULT).exists() else {}
    record[key] = value
    write_json(RESULTS / RESULT, record)
    return record


def _patch_file(folder: Path, seed: int) -> Path:
    return folder / f"scan-{seed:05d}-patches.npy"


def command_patches(args) -> int:
    """Each union candidate's patch, per scan, cached."""
    import pandas as pd
    from tqdm.auto import tqdm

    from nodulekit.patch_scorer import candidate_patches

    folder = Path(args.cache)
    paths = [p for p in sorted(folder.glob("scan-?????-union.csv")) if whole_scan.is_held_out(int(p.name[5:10])) == args.held_out]
    for path in tqdm(paths, desc="patches"):
        seed = int(path.name[5:10])
        target = _patch_file(folder, seed)
        if target.exists():
            continue
        table = pd.read_csv(path, dtype={"hit": str}, keep_default_na=False)
        scan = whole_scan.load_scan(folder / f"scan-{seed:05d}.npz")
        patches = candidate_patches(scan["hu"], scan["probabilities"], table[["centroid_z", "centroid_y", "centroid_x"]].to_numpy(float), scan["spacing"])
        temporary = target.with_name(f".{target.stem}.tmp.npy")
        np.save(temporary, patches)
        temporary.replace(target)
    return 0


def load_side(folder: Path, *, held_out: bool):
    """Union candidates, references, spacings and patches (rows in the same order) of one side of the split."""
    candidates, references, _, _ = union.load_union(folder, held_out=held_out)
    patches = np.concatenate([np.load(_patch_file(folder, seed)) for seed in references])
    if len(patches) != len(candidates):
        raise SystemExit(f"{folder}: {len(patches)} patches for {len(candidates)} candidates; rerun `patches`")
    return candidates, references, whole_scan.spacings(folder, references), patches


def _tree_members(results_key: str = "boosted_second_stage") -> tuple[tuple, dict]:
    """Feature names and settings of the shipped trees (from their record)."""
    record = json.loads((RESULTS / "detection_candidates.json").read_text())[results_key]
    return tuple(record["features"]), record["chosen"]["settings"]


def _froc_summary(candidates, references, scores, spacing, labels) -> dict:
    from sklearn.metrics import roc_auc_score

    result = whole_scan.froc_of(candidates, references, scores, spacing)
    return {"cpm": round(float(result.cpm), 4), "sensitivity_at_fp": {str(k): round(float(v), 3) for k, v in result.sensitivities.items()},
            "candidate_auc": round(float(roc_auc_score(labels, scores)), 4)}


def _cv_key(extra_cache: str | None) -> str:
    """The results key of a ``cv`` run: ``cv``, or ``cv_with_extra_scans`` when every fold also trained on ``--extra-cache``."""
    return "cv" if extra_cache is None else "cv_with_extra_scans"


def _extra_training(extra_cache: str | None, references: dict):
    """The extra training scans' union rows and patches (``None`` without ``--extra-cache``); never a scan of ``references``."""
    if extra_cache is None:
        return None
    rows, extra_refs, _, patches = load_side(Path(extra_cache), held_out=False)
    if set(extra_refs) & set(references):
        raise SystemExit(f"{extra_cache}: scans {sorted(set(extra_refs) & set(references))} are in the training cache too")
    return rows, patches


def _with_extra(rows, labels: np.ndarray, patches: np.ndarray, extra):
    """Training rows, labels and patches with the extra scans' appended (as they are without ``--extra-cache``)."""
    if extra is None:
        return rows, labels, patches
    import pandas as pd

    return pd.concat([rows, extra[0]], ignore_index=True), np.concatenate([labels, extra[0]["label"].to_numpy(bool)]), np.concatenate([patches, extra[1]])


def command_cv(args) -> int:
    """Scan-grouped CV on the training scans: trees, CNN and their fusion; the weight, Platt step and operating point."""
    from scipy.special import expit
    from sklearn.model_selection import GroupKFold

    from nodulekit.detection import fit_platt
    from nodulekit.training.patch_scorer import PATCH_RECIPE, fit_patch_scorer

    folder = Path(args.cache)
    train, refs, spacing, patches = load_side(folder, held_out=False)
    labels = train["label"].to_numpy(bool)
    names, settings = _tree_members()
    folds = list(GroupKFold(n_splits=FOLDS).split(train, labels, train["seed"]))
    extra = _extra_training(args.extra_cache, refs)
    trees, cnn = np.zeros(len(train)), np.zeros(len(train))
    start = time.perf_counter()
    saved = folder / ("patches-oof.npy" if extra is None else f"patches-oof-extra-{Path(args.extra_cache).name}.npy")
    if args.reuse and saved.exists():  # the out-of-fold scores of an earlier run of this command (same folds, same recipe)
        trees, cnn = np.load(saved)
        folds_to_fit = []
    else:
        folds_to_fit = folds
    for k, (fit_on, test) in enumerate(folds_to_fit):
        fit_rows, fit_labels, fit_patches = _with_extra(train.iloc[fit_on], labels[fit_on], patches[fit_on], extra)  # only the cache's scans are scored
        members = union._fit_boosted(fit_rows, fit_labels, settings=settings, by_source=False, feature_names=names)
        trees[test] = union.score(members, train.iloc[test], "raw_score")
        scorer = fit_patch_scorer(fit_patches, fit_labels, seed=k, verbose=args.verbose)
        cnn[test] = scorer.patch_logits(patches[test])
        print(f"fold {k}: {time.perf_counter() - start:.0f} s", flush=True)
    np.save(saved, np.stack([trees, cnn]))
    rows = {"trees": trees, "cnn": cnn, **{f"fused w={w}": (1 - w) * trees + w * cnn for w in WEIGHTS}}
    cv = {}
    for name, raw in rows.items():
        cv[name] = {**_froc_summary(train, refs, expit(raw), spacing, labels), "cpm_by_fold": union._fold_cpms(train, refs, expit(raw), folds, spacing)}
        print(f"{name:14s} CPM {cv[name]['cpm']:.4f} AUC {cv[name]['candidate_auc']:.4f} folds {cv[name]['cpm_by_fold']}", flush=True)
    best = max(cv[f"fused w={w}"]["cpm"] for w in WEIGHTS)
    weight = min(w for w in WEIGHTS if cv[f"fused w={w}"]["cpm"] >= best - union.CPM_TIE)  # the least weight on a CNN that saw only synthetic scans
    fused = (1 - weight) * trees + weight * cnn
    a, b = fit_platt(fused, labels)
    calibrated = expit(a * fused + b)
    threshold = float(min(whole_scan.froc_of(train, refs, calibrated, spacing).threshold_at(1.0), 1.0))
    record = {
        "training_scans": len(refs), "cache": str(folder), "folds": FOLDS, "fold_rule": "GroupKFold by scan over the union rows (the folds of detection_candidates.py boost)",
        "patch_recipe": PATCH_RECIPE, "tree_settings": settings, "cv": cv, "weights_tried": list(WEIGHTS),
        "chosen": {"weight": weight, "rule": f"the smallest CNN weight within {union.CPM_TIE} of the best out-of-fold CPM (detection_candidates.py's tie rule)", "calibration": [float(a), float(b)], "threshold": threshold,
                   "threshold_rule": "1 false positive per scan on the out-of-fold fused scores"},
        "seconds": round(time.perf_counter() - start),
    }
    if extra is not None:
        record["extra_training"] = {"cache": args.extra_cache, "scans": int(extra[0]["seed"].nunique()), "seeds": [int(extra[0]["seed"].min()), int(extra[0]["seed"].max())],
                                    "rule": "added to every fold's training rows; only the cache's scans are scored (the same folds and test scans as `cv`)"}
    _record(_cv_key(args.extra_cache), record)
    print(json.dumps(record["chosen"], indent=1))
    return 0


def command_ship(args) -> int:
    """The patch scorer on every training scan, fused into the shipped classifier as ``cv`` chose."""
    from nodulekit.detection import PerSourceClassifier, load_classifier
    from nodulekit.patch_scorer import PatchScorer
    from nodulekit.pretrained import PRETRAINED_DIR
    from nodulekit.training.patch_scorer import PATCH_RECIPE, fit_patch_scorer

    folder = Path(args.cache)
    record = json.loads((RESULTS / RESULT).read_text())
    key = _cv_key(args.extra_cache)
    chosen = record[key]["chosen"]
    train, refs, _, patches = load_side(folder, held_out=False)
    extra = _extra_training(args.extra_cache, refs)
    train, labels, patches = _with_extra(train, train["label"].to_numpy(bool), patches, extra)
    scans = len(refs) + (0 if extra is None else int(extra[0]["seed"].nunique()))
    start = time.perf_counter()
    target = Path(args.model) if args.model else PRETRAINED_DIR / "lidc_attention_unet"
    if args.reuse_scorer:  # the patch scorer already in the folder (trained by an earlier ship: it does not depend on the fusion)
        scorer = PatchScorer.load(target)
    else:
        scorer = fit_patch_scorer(patches, labels, seed=0, verbose=args.verbose)
    classifier = load_classifier(target)
    trees_threshold = classifier.metadata.get("patch_scorer", {}).get("trees_alone_threshold", classifier.threshold)
    members, tree_metadata = classifier.classifiers, {}
    if extra is not None:  # the shipped trees' recipe refit on every training scan; their own Platt step and threshold come from `calibrate --trees-too`
        names, settings = _tree_members()
        trees = union._fit_boosted(train, labels, settings=settings, by_source=False, feature_names=names)["all"]
        trees.metadata = {"one_model_for_both_sources": True, "platt": True, "settings": settings, "trained_on": f"all candidates of the union of {scans} synthetic scans (even seeds)"}
        members = {source: trees for source in classifier.classifiers}
        seeds = sorted(set(train["seed"]))
        tree_metadata = {"n_scans": scans, "trained_on": f"{scans} synthetic scans of nodulekit.phantom.generate_volume (32 slices, 4 nodules, even seeds {seeds[0]}-{seeds[-1]} "
                         f"but the calibration seeds); gradient-boosted trees (scikit-learn HistGradientBoostingClassifier, exported as arrays), one model for both sources (from_blob is a feature)",
                         "validation_cpm": record[key]["cv"]["trees"]["cpm"],
                         "settings_chosen_by": classifier.metadata["settings_chosen_by"] + f" ({len(refs)} scans; refit unchanged on {scans})"}
    cv = record[key]["cv"]
    metadata = {
        **classifier.metadata,
        **tree_metadata,
        "operating_point": {"threshold": chosen["threshold"], "target_fp_per_scan": 1.0, "chosen_on": "out-of-fold fused scores of the training scans"},
        "patch_scorer": {
            "experiment": f"experiments/detection_patches.py ({'cv, ship' if extra is None else 'cv --extra-cache, ship --extra-cache'})",
            "recipe": PATCH_RECIPE,
            "trained_on": f"the union candidates of {scans} synthetic scans (even seeds)",
            "cv_cpm": cv[f"fused w={chosen['weight']}"]["cpm"],
            "cv_cpm_trees_alone": cv["trees"]["cpm"],
            "trees_alone_threshold": trees_threshold,
        },
    }
    fusion = {"weight": chosen["weight"], "calibration": chosen["calibration"]}
    classifier = PerSourceClassifier(members, threshold=chosen["threshold"], metadata=metadata, blob_options=classifier.blob_options, patch_fusion=fusion, patch_scorer=scorer)
    classifier.save(target)
    _record("ship", {"seconds": round(time.perf_counter() - start), "folder": str(target), "seed": 0, "training_scans": scans, "cv_record": key, "trees_refit": extra is not None})
    print(f"wrote {target} in {time.perf_counter() - start:.0f} s")
    return 0


def command_calibrate(args) -> int:
    """The shipped fused stage's Platt step and operating point, refit on calibration scans that no stage trained on.

    The out-of-fold fused scores of ``cv`` come from five fold CNNs whose logits have five scales;
    the final CNN, trained on every training scan, has its own. Calibration scans (new even seeds,
    ``more-held-out --training --first 240 --count 60`` of ``detection_candidates.py``, not the
    held-out odd seeds) give the final models' own fused log-odds, and the Platt step and the
    operating point (1 false positive per scan) are fit on them.
    """
    from scipy.special import expit
    from sklearn.metrics import brier_score_loss

    from nodulekit.detection import PerSourceClassifier, fit_platt
    from nodulekit.inference import load_segmenter
    from nodulekit.pretrained import PRETRAINED_DIR

    folder = Path(args.cache)
    calibration, refs, spacing, patches = load_side(folder, held_out=False)
    trained_on = {int(p.name[5:10]) for cache in args.training_cache for p in Path(cache).glob("scan-?????-union.csv")}
    if trained_on & set(refs):
        raise SystemExit(f"calibration scans {sorted(trained_on & set(refs))} are training scans too")
    labels = calibration["label"].to_numpy(bool)
    classifier = load_segmenter(None).classifier
    trees_raw = union.score(classifier.classifiers, calibration, "raw_score")
    logits = classifier.patch_scorer.patch_logits(patches)
    trees_record = {}
    if args.trees_too:  # trees refit by `ship --extra-cache`: their own Platt step and operating point (the trees-alone comparison) from the same scans
        step = fit_platt(trees_raw, labels)
        trees_threshold = float(min(whole_scan.froc_of(calibration, refs, expit(step[0] * trees_raw + step[1]), spacing).threshold_at(1.0), 1.0))
        for member in classifier.classifiers.values():
            member.calibration, member.threshold = tuple(float(c) for c in step), trees_threshold
        classifier.metadata["patch_scorer"]["trees_alone_threshold"] = trees_threshold
        classifier.metadata["platt"] = {**classifier.metadata.get("platt", {}), "steps": {"all": [float(c) for c in step]}, "rule": "the trees' own step, fit on the calibration scans' raw scores", "used": True}
        trees_record = {"trees_alone": {"calibration": [float(c) for c in step], "threshold": trees_threshold}}
    weight = classifier.patch_fusion["weight"]
    raw = (1 - weight) * trees_raw + weight * logits
    before = classifier.predict_proba(calibration, logits)
    a, b = fit_platt(raw, labels)
    scores = expit(a * raw + b)
    froc = whole_scan.froc_of(calibration, refs, scores, spacing)
    threshold = float(min(froc.threshold_at(1.0), 1.0))
    record = {"scans": len(refs), "seeds": [int(min(refs)), int(max(refs))], "cache": str(folder), "candidates": len(calibration),
              "calibration_before": classifier.patch_fusion["calibration"], "threshold_before": classifier.threshold,
              "brier_before": round(float(brier_score_loss(labels, before)), 5), "calibration": [float(a), float(b)], "threshold": threshold,
              "brier": round(float(brier_score_loss(labels, scores)), 5), "cpm": round(float(froc.cpm), 4), **trees_record}
    metadata = {**classifier.metadata, "operating_point": {"threshold": threshold, "target_fp_per_scan": 1.0,
                                                           "chosen_on": f"{len(refs)} calibration scans (even seeds {min(refs)}-{max(refs)}; no stage trained on them, not the held-out scans)"},
                "platt": {**classifier.metadata.get("platt", {}), "fused": {"steps": [float(a), float(b)], "fit_on": "the calibration scans' fused log-odds"}}}
    shipped = PerSourceClassifier(classifier.classifiers, threshold=threshold, metadata=metadata, blob_options=classifier.blob_options,
                                  patch_fusion={**classifier.patch_fusion, "calibration": [float(a), float(b)]})
    shipped.save(PRETRAINED_DIR / "lidc_attention_unet")  # classifier.json only: the patch scorer file stays as shipped
    _record("calibration", record)
    print(json.dumps(record, indent=1))
    return 0


def command_held_out(args) -> int:
    """The shipped stage, trees alone and fused, on the held-out scans (scored once)."""
    from sklearn.metrics import brier_score_loss

    from nodulekit.inference import load_segmenter
    from nodulekit.plots.detection import reliability_table
    from nodulekit.pretrained import PRETRAINED_DIR

    folder = Path(args.cache)
    test, refs, spacing, patches = load_side(folder, held_out=True)
    labels = test["label"].to_numpy(bool)
    classifier = load_segmenter(args.model).classifier
    trees_alone = union.score(classifier.classifiers, test)
    fused = classifier.predict_proba(test, classifier.patch_scorer.patch_logits(patches))
    out = {"held_out_scans": len(refs), "cache": str(folder)}
    trees_row = "trees alone (the shipped trees, their own Platt step)"
    for name, scores in ((trees_row, trees_alone), ("trees + patch CNN (shipped)", fused)):
        threshold = classifier.threshold if "CNN" in name else classifier.metadata["patch_scorer"]["trees_alone_threshold"]
        kept = scores >= threshold
        out[name] = {**_froc_summary(test, refs, scores, spacing, labels), "brier": round(float(brier_score_loss(labels, scores)), 5),
                     "fp_per_scan_at_operating_point": round(float((kept & ~labels).sum() / len(refs)), 2),
                     "recall_by_kind_at_operating_point": whole_scan._recall_by_kind(test, refs, scores, threshold),
                     "reliability": reliability_table(scores, labels, bins=10)}
        print(name, json.dumps({k: v for k, v in out[name].items() if k != "reliability"}), flush=True)
    _record("held_out", out)
    if args.model is None:  # the shipped stage: its card numbers
        shipped = out["trees + patch CNN (shipped)"]
        classifier.metadata["held_out"] = {"cpm": shipped["cpm"], "sensitivity_at_fp": shipped["sensitivity_at_fp"], "scans": f"{len(refs)} synthetic scans, odd seeds (no stage trained on them)",
                                           "trees_alone_cpm": out[trees_row]["cpm"]}
        classifier.patch_scorer = None  # classifier.json only: the patch scorer file stays as shipped
        classifier.save(PRETRAINED_DIR / "lidc_attention_unet")
    _plot(folder, test, refs, spacing, {"trees + patch CNN (shipped)": fused, "trees alone": trees_alone})
    return 0


def _plot(folder, candidates, references, spacing, scored: dict) -> None:
    """Fig. S5 (FROC) and Fig. S6 (reliability) of the shipped stage against the trees alone, on the held-out scans."""
    import matplotlib.pyplot as plt

    from nodulekit.plots import save_figure
    from nodulekit.plots.detection import plot_froc, plot_reliability

    figures = Path(__file__).resolve().parents[1] / "figures"
    results = {name: whole_scan.froc_of(candidates, references, scores, spacing) for name, scores in scored.items()}
    figure = plot_froc(results, title=f"{len(references)} held-out synthetic scans ({whole_scan.N_SLICES} slices each)")
    figure.axes[0].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below the axes: the curves stay visible
    figure.savefig(figures / "figS5_detection_froc.png", dpi=150, bbox_inches="tight")
    labels = candidates["label"].to_numpy(bool)
    figure, axes = plt.subplots(1, len(scored), figsize=(5 * len(scored), 4.2))
    for axis, (name, scores) in zip(np.atleast_1d(axes), scored.items()):
        plot_reliability(scores, labels, ax=axis, title=f"{name}: {len(references)} held-out scans")
    save_figure(figure, "S6", "detection_reliability", folder=figures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    patches = sub.add_parser("patches", help="each union candidate's patch, cached per scan")
    patches.add_argument("--cache", required=True)
    patches.add_argument("--held-out", action="store_true", help="the held-out (odd) seeds instead of the training ones")
    cv = sub.add_parser("cv", help="scan-grouped CV of trees, CNN and their fusion on the training scans")
    cv.add_argument("--cache", required=True)
    ship = sub.add_parser("ship", help="train the patch scorer on every training scan and fuse it into the shipped classifier")
    ship.add_argument("--cache", required=True)
    ship.add_argument("--model", help="segmenter folder to write into (default: the shipped one)")
    calibrate = sub.add_parser("calibrate", help="the shipped fused stage's Platt step and operating point on calibration scans")
    calibrate.add_argument("--cache", required=True, help="calibration scans (even seeds no stage trained on)")
    calibrate.add_argument("--training-cache", required=True, nargs="+", help="the training scans' caches (checked not to overlap)")
    calibrate.add_argument("--trees-too", action="store_true", help="also refit the trees' own Platt step and operating point (trees refit by ship --extra-cache)")
    held = sub.add_parser("held-out", help="the shipped stage on the held-out scans")
    held.add_argument("--cache", required=True)
    held.add_argument("--model", help="segmenter folder (default: the shipped one)")
    for command in (cv, ship):
        command.add_argument("--verbose", type=int, default=2, help="Keras's output per epoch")
        command.add_argument("--extra-cache", default=None, help="more training scans (even seeds, a cache of the same blob settings): every fold and the final models train on them too")
    cv.add_argument("--reuse", action="store_true", help="the out-of-fold scores saved by an earlier cv run (patches-oof.npy in the cache)")
    ship.add_argument("--reuse-scorer", action="store_true", help="keep the patch scorer already in the folder; refit only the fusion")
    args = parser.parse_args(argv)
    return {"patches": command_patches, "cv": command_cv, "ship": command_ship, "calibrate": command_calibrate, "held-out": command_held_out}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
