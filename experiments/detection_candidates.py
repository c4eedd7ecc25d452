"""A second, model-free candidate source for whole-scan detection (issue 18, items 1 and 3).

The shipped segmenter never produces a candidate for 44 % of the synthetic nodules (ground glass,
part-solid, juxtapleural most of all). :func:`nodulekit.detection.blob_candidates` (a multi-scale
Hessian "dot" filter inside the lungs) is a second source; :func:`nodulekit.detection.merge_candidates`
unions both. Steps, on the scans cached by ``experiments/detection.py cache`` (``--cache``):

1. ``candidates``: per scan, the segmenter's candidates (exactly as ``detection.py`` finds them),
   the blob candidates and their union with features (:func:`~nodulekit.detection.candidate_features`
   plus :func:`~nodulekit.detection.source_features`), the FROC hit rule against the exact masks;
   ``scan-<seed>-union.csv`` and ``scan-<seed>-recall.csv`` (which source finds each nodule).
   The segmenter-only features of ``detection.py features`` are computed too (the shipped baseline).
2. ``evaluate``: candidate recall by nodule kind and candidates per scan for each source on the
   held-out (odd) seeds; a logistic second stage on the union refit on the training (even) seeds
   (regularization by scan-grouped CV), one for all candidates and one per source (each candidate
   scored by its source's classifier: the model's probability features mean nothing on a blob),
   their held-out FROC CPM and candidate AUC against the shipped classifier on the segmenter's
   candidates and against the same recipe refit on the segmenter's candidates of the same
   training scans; gradient boosting on the union for comparison (it does not fit the JSON format).
3. ``boost``: gradient-boosted trees (:class:`~nodulekit.detection.BoostedClassifier`, JSON trees):
   settings (:data:`BOOSTING_GRID`, one model for all candidates or one per source) by scan-grouped
   CV CPM on the training scans only, against the per-source logistic in the same folds, on the
   candidate features, the ball features (:func:`~nodulekit.detection.ball_features`, computed once
   per cached union as ``scan-<seed>-ball.csv`` when the union predates them; ``--no-ball-features``:
   without) and the source features; the Platt
   step if it lowers the out-of-fold Brier score (cross-fitted); the operating point at 1 false
   positive per scan on the out-of-fold scores; only then the held-out scans.
   ``lidc``: LIDC-IDRI-0001 (DICOM + XML) end to end with a segmenter folder's second stage (the
   shipped one by default): the nodule's rank and score, what is listed at the operating point.
4. ``stacks``: the real dev nodules (LIDC crop stacks, as ``detection_stacks.py``): which source
   finds each, by the nodule's mean band of pseudo-HU (the crops are min-max scaled, not HU:
   :data:`PSEUDO_HU`). ``stacks-stage``: the synthetic-trained stages (logistic, boosted) on the
   stacks' candidates of ``detection_stacks.py candidates``, as that script's "shipped as is" row.

    python experiments/detection_candidates.py ceiling --cache DIR   # training scans: why a nodule has no candidate
    python experiments/detection_candidates.py candidates --cache NEW --scans-from DIR --training-only --blob '{"max_candidates": 90}'
    python experiments/detection_candidates.py boost --cache NEW --out SCRATCH --cv-only   # compare candidate settings on the training scans
    python experiments/detection_candidates.py candidates --cache /tmp/cands-cache
    python experiments/detection_candidates.py evaluate --cache /tmp/cands-cache
    python experiments/detection_candidates.py boost --cache /tmp/cands-cache --held-out-cache DIR
    python experiments/detection_candidates.py lidc ../shared/data/lidc/LIDC-IDRI-0001
    python experiments/detection_candidates.py stacks
    python experiments/detection_candidates.py stacks-stage --cache /tmp/cands-cache --stacks-cache runs/stacks
    python experiments/detection_candidates.py more-held-out --training --first 120 --count 120 --cache NEW --scans-from DIR --blob JSON   # more training scans (even seeds)
    python experiments/detection_candidates.py ship     # boost's members into the shipped folder
    python experiments/detection_candidates.py shipped --cache DIR   # its held-out FROC, figS5, figS6

0. ``ceiling`` (training scans only): which nodules no candidate hits and why (a blob peak ranked
   beyond ``max_candidates``, a response under the threshold, none at all, or lost to the merge), and
   how many larger caps would reach. ``candidates --blob JSON`` makes the unions of other blob
   settings in a new cache folder (the settings are recorded there; ``--scans-from`` links the same
   scans), ``boost --cv-only`` scores them by the boosted recipe's scan-grouped CV before any
   held-out scan is read; the README's "Candidates at ten radii" were chosen so. ``--blob`` with a
   ``"faint"`` entry (e.g. ``{"faint": {"hu_ceiling": -300.0, "threshold": 5.0, "max_candidates": 15}}``)
   adds :func:`~nodulekit.detection.faint_blob_candidates`'s second pass aimed at ground glass
   (``faint_pass_cv`` in the results; ``ship`` records it as the classifier's ``blob_options``).
5. ``ship``: the per-source members of ``boost`` (``--members boosted``, the default) or of
   ``evaluate`` (``--members logistic``; shipped before), operating point from the training scans'
   out-of-fold scores, as one ``classifier.json`` (:class:`~nodulekit.detection.PerSourceClassifier`)
   in the shipped segmenter folder; ``shipped`` scores it on the held-out scans.
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

#: Features of the union's second stage: the shipped ones plus where a candidate came from.
RESULT = "detection_candidates.json"
CLASSIFIER_FOLDER = "detection_candidates_classifier"
SOURCES = ("segmenter", "blob", "union")


#: A cache folder's blob settings (``candidates --blob``), written once: every union in it uses them.
BLOB_SETTINGS_FILE = "blob_settings.json"


def union_candidates(hu, probabilities, lung, spacing, *, threshold: float = 0.5, blob_settings: dict | None = None):
    """(segmenter labels and table, blob labels and table, union labels and table) of one scan.

    ``blob_settings`` are keyword arguments of :func:`~nodulekit.detection.blob_candidates` (its defaults when None);
    with a ``"faint"`` entry, :func:`~nodulekit.detection.faint_blob_candidates` (that entry its second pass).
    """
    from nodulekit.detection import blob_candidates, faint_blob_candidates, merge_candidates
    from nodulekit.inference import measure_nodules

    segmenter = measure_nodules(probabilities >= threshold, spacing=spacing, probabilities=probabilities, hu=hu, min_diameter_mm=3.0, min_voxels=3)
    start = time.perf_counter()
    settings = dict(blob_settings or {})
    blob = faint_blob_candidates(hu, lung, spacing, **settings) if "faint" in settings else blob_candidates(hu, lung, spacing, **settings)
    seconds = time.perf_counter() - start
    union = merge_candidates(*segmenter, *blob, spacing=spacing)
    return segmenter, blob, union, seconds


def union_features(labels, table, *, probabilities, hu, lung, spacing):
    """The union table joined with the shipped features and the source features."""
    from nodulekit.detection import candidate_features, source_features

    features = candidate_features(labels, table, probabilities=probabilities, hu=hu, lung=lung, spacing=spacing)
    return table.join(features).join(source_features(table))


def scan_union(path: Path, blob_settings: dict | None = None) -> None:
    """``scan-<seed>-union.csv`` and ``scan-<seed>-recall.csv`` beside a cached scan (blob candidates with ``blob_settings``)."""
    import pandas as pd

    from nodulekit.froc import hit_matrix, reference_from_mask

    union_csv = path.with_name(path.stem + "-union.csv")
    if union_csv.exists():
        return
    scan = whole_scan.load_scan(path)
    spacing = scan["spacing"]
    (_, seg_table), (_, blob_table), (labels, table), seconds = union_candidates(scan["hu"], scan["probabilities"], scan["lung"], spacing, blob_settings=blob_settings)
    reference = reference_from_mask(scan["truth"], spacing=spacing)
    reference["kind"] = whole_scan._reference_kinds(reference, scan["info"]["nodules"], spacing)
    relevant = ~reference["ignore"].to_numpy(bool)
    rows = []
    found = {}
    for name, frame in (("segmenter", seg_table), ("blob", blob_table), ("union", table)):
        hits = hit_matrix(frame, reference, spacing=spacing) if len(frame) else np.zeros((0, len(reference)), bool)
        found[name] = hits.any(axis=0)
    for index, record in enumerate(reference.itertuples(index=False)):
        if not relevant[index]:
            continue
        rows.append({"seed": scan["info"]["seed"], "kind": record.kind, "diameter_mm": float(record.diameter_mm), **{f"found_{k}": bool(v[index]) for k, v in found.items()}})
    counts = {"seed": scan["info"]["seed"], "segmenter": len(seg_table), "blob": len(blob_table), "union": len(table), "blob_s": seconds}
    hits = hit_matrix(table, reference, spacing=spacing) & relevant[None] if len(table) else np.zeros((0, len(reference)), bool)
    frame = union_features(labels, table, probabilities=scan["probabilities"], hu=scan["hu"], lung=scan["lung"], spacing=spacing)
    frame["label"] = hits.any(axis=1)
    frame["hit"] = [" ".join(str(k) for k in np.flatnonzero(row)) for row in hits]
    pd.DataFrame(rows).to_csv(path.with_name(path.stem + "-recall.csv"), index=False)
    path.with_name(path.stem + "-counts.json").write_text(json.dumps(counts))
    temporary = union_csv.with_name("." + union_csv.name)
    frame.to_csv(temporary, index=False)
    temporary.replace(union_csv)  # written last and whole: its presence marks the scan done
    reference.to_csv(path.with_name(path.stem + "-reference.csv"), index=False)


def cache_blob_settings(folder: Path, requested: str | None, *, scans_from: str | None = None) -> dict:
    """The blob settings of a cache folder: ``requested`` (JSON) recorded on first use, then checked; scans linked from ``scans_from``.

    A new folder can hold the same scans as another (``scans_from``: the scans, their segmenter-only
    features and references are linked, never copied or changed) with the blob candidates of other
    settings, so that caches of different settings never mix.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if scans_from:
        for source in sorted(Path(scans_from).glob("scan-?????*")):
            if source.name.endswith((".npz", "-candidates.csv")) and not (folder / source.name).exists():
                (folder / source.name).symlink_to(source.resolve())
    settings = json.loads(requested) if requested else {}
    recorded = folder / BLOB_SETTINGS_FILE
    if recorded.exists():
        if requested is not None and json.loads(recorded.read_text()) != settings:
            raise SystemExit(f"{folder} holds unions of other blob settings ({recorded.read_text()}); use a new --cache folder")
        return json.loads(recorded.read_text())
    recorded.write_text(json.dumps(settings))
    return settings


def recorded_blob_settings(folder: Path) -> dict:
    """The blob settings a cache folder's unions were made with (``{}``: the defaults of its time)."""
    recorded = Path(folder) / BLOB_SETTINGS_FILE
    return json.loads(recorded.read_text()) if recorded.exists() else {}


def command_candidates(args) -> int:
    from tqdm.auto import tqdm

    folder = Path(args.cache)
    settings = cache_blob_settings(folder, args.blob, scans_from=args.scans_from)
    while True:
        paths = [p for p in sorted(folder.glob("scan-?????.npz")) if not p.with_name(p.stem + "-union.csv").exists()]
        paths.sort(key=lambda p: (not whole_scan.is_held_out(int(p.name[5:10])), p.name))  # held-out scans first
        if args.training_only:
            paths = [p for p in paths if not whole_scan.is_held_out(int(p.name[5:10]))]
        for path in tqdm(paths, desc="union candidates"):
            scan_union(path, settings)
            whole_scan.cache_features(path)
        if not args.follow or not paths and (folder / "cache.done").exists():
            return 0
        if not paths:
            time.sleep(20)


def command_more_scans(args) -> int:
    """Generate, segment (``detection.py``'s ``cache_scan``) and union the held-out seeds of ``[first, first + count)`` only.

    ``--training``: the training (even) seeds of the range instead, never a held-out one; ``--scans-from``
    links another cache folder's training scans (with their unions: the blob settings must be the same).
    """
    from tqdm.auto import tqdm

    from nodulekit import load_pretrained

    folder = Path(args.cache)
    settings = cache_blob_settings(folder, args.blob)
    if args.scans_from:
        link_training_scans(Path(args.scans_from), folder, settings)
    segmenter = load_pretrained(tta=False).segmenter  # as detection.py cache
    seeds = [s for s in range(args.first, args.first + args.count) if whole_scan.is_held_out(s) != args.training]
    for seed in tqdm(seeds, desc="training scans" if args.training else "held-out scans"):
        path = whole_scan.cache_scan(seed, folder, segmenter)
        scan_union(path, settings)
        whole_scan.cache_features(path)
    return 0


def link_training_scans(source: Path, folder: Path, settings: dict) -> None:
    """Link ``source``'s training scans and their union files into ``folder`` (the same blob settings only)."""
    if recorded_blob_settings(source) != settings:
        raise SystemExit(f"{source} holds unions of other blob settings ({recorded_blob_settings(source)}); link scans of the same settings")
    for path in sorted(source.glob("scan-?????*")):
        if not whole_scan.is_held_out(int(path.name[5:10])) and not path.name.startswith(".") and not (folder / path.name).exists():
            (folder / path.name).symlink_to(path.resolve())


# --------------------------------------------------------------------------------------------------
# The ceiling: why a nodule has no candidate (training scans only)
# --------------------------------------------------------------------------------------------------

#: Blob-filter caps at which ``ceiling`` counts how many nodules a larger ``max_candidates`` would reach.
CEILING_CAPS = (60, 90, 120, 150, 200, 300)


def scan_ceiling(path: Path, blob_settings: dict) -> list[dict]:
    """Per nodule of one cached scan: found by which source, and for the missed ones why (blob peaks' rank and response)."""
    import pandas as pd

    from nodulekit.detection import blob_peaks
    from nodulekit.froc import hit_matrix, reference_from_mask

    scan = whole_scan.load_scan(path)
    spacing = scan["spacing"]
    (_, seg_table), (_, blob_table), (_, table), _ = union_candidates(scan["hu"], scan["probabilities"], scan["lung"], spacing, blob_settings=blob_settings)
    reference = reference_from_mask(scan["truth"], spacing=spacing)
    reference["kind"] = whole_scan._reference_kinds(reference, scan["info"]["nodules"], spacing)

    def found(frame):
        return hit_matrix(frame, reference, spacing=spacing) if len(frame) else np.zeros((0, len(reference)), bool)

    def peak_hits(peaks):
        return found(pd.DataFrame(peaks[:, :3], columns=["centroid_z", "centroid_y", "centroid_x"]))

    blob_settings = {k: v for k, v in blob_settings.items() if k != "faint"}  # the first pass's peaks
    every = blob_peaks(scan["hu"], scan["lung"], spacing, **{**blob_settings, "max_candidates": 10**6})  # every distinct peak above the threshold, strongest first
    loose = blob_peaks(scan["hu"], scan["lung"], spacing, **{**blob_settings, "max_candidates": None, "threshold": 0.0, "hu_floor": -1000.0})
    every_hits, loose_hits = peak_hits(every), peak_hits(loose)
    sources = {name: found(frame).any(axis=0) for name, frame in (("segmenter", seg_table), ("blob", blob_table), ("union", table))}
    lung = np.asarray(scan["lung"], bool)
    rows = []
    for index, record in enumerate(reference.itertuples(index=False)):
        if record.ignore:
            continue
        z = slice(int(record.slice_first), int(record.slice_last) + 1)
        voxels = scan["truth"][z] > 0
        ranks = np.flatnonzero(every_hits[:, index])
        strongest = loose[loose_hits[:, index], 4]
        rows.append({
            "seed": scan["info"]["seed"], "kind": record.kind, "diameter_mm": round(float(record.diameter_mm), 1), "slices": int(record.slice_last - record.slice_first + 1),
            "mean_hu": round(float(scan["hu"][z][voxels].mean()), 0), "in_lung_mask": round(float(lung[z][voxels].mean()), 2),
            **{f"found_{name}": bool(hits[index]) for name, hits in sources.items()},
            "peak_rank": int(ranks[0]) if len(ranks) else np.nan, "peak_response": round(float(every[ranks[0], 4]), 1) if len(ranks) else np.nan,
            "peak_radius_mm": float(every[ranks[0], 3]) if len(ranks) else np.nan,
            "response_without_threshold_or_floor": round(float(strongest.max()), 2) if len(strongest) else np.nan,
        })
    return rows


def _why_missed(row: dict, cap: int) -> str:
    """The reason a nodule without a candidate has none."""
    if not np.isfinite(row["peak_rank"]):
        weak = row["response_without_threshold_or_floor"]
        return "no blob response on it (never three negative Hessian eigenvalues)" if not np.isfinite(weak) or weak <= 0 else "response under the threshold or centre under hu_floor"
    if row["peak_rank"] >= cap:
        return "a distinct peak, ranked beyond max_candidates"
    return "a peak within max_candidates, lost to painting or the merge"


def command_ceiling(args) -> int:
    """Which training nodules have no candidate, and why; how many larger caps of the blob filter would reach."""
    import pandas as pd
    from tqdm.auto import tqdm

    from nodulekit.utils import write_json

    folder, out = Path(args.cache), Path(args.out)
    settings = json.loads(args.blob) if args.blob else {}
    cap = int(settings.get("max_candidates", 60))
    paths = [p for p in sorted(folder.glob("scan-?????.npz")) if not whole_scan.is_held_out(int(p.name[5:10]))][: args.limit]
    frame = pd.DataFrame([row for path in tqdm(paths, desc="ceiling") for row in scan_ceiling(path, settings)])
    missed = frame[~frame["found_union"]]
    reasons = missed.apply(lambda r: _why_missed(r.to_dict(), cap), axis=1)
    reach = {}
    for c in CEILING_CAPS:
        found = frame["found_union"] | (frame["peak_rank"].notna() & (frame["peak_rank"].fillna(1e9) < c))
        reach[str(c)] = {"all": round(float(found.mean()), 3), "by_kind": {k: round(float(v), 3) for k, v in found.groupby(frame["kind"]).mean().items()}}
    summary = {
        "training_scans": len(paths), "nodules": int(len(frame)), "blob_settings": settings,
        "recall": {name: round(float(frame[f"found_{name}"].mean()), 3) for name in SOURCES},
        "recall_by_kind": {name: {k: round(float(v), 3) for k, v in frame.groupby("kind")[f"found_{name}"].mean().items()} for name in SOURCES},
        "missed": int(len(missed)), "missed_by_reason": {k: int(v) for k, v in reasons.value_counts().items()},
        "missed_by_kind": {k: int(v) for k, v in missed["kind"].value_counts().items()},
        "missed_median": {c: float(missed[c].median()) for c in ("diameter_mm", "slices", "mean_hu", "in_lung_mask", "peak_rank", "peak_response") if missed[c].notna().any()},
        "found_with_a_larger_cap": reach,
        "missed_nodules": missed.assign(reason=reasons).astype(object).where(missed.assign(reason=reasons).notna(), None).to_dict(orient="records"),
    }
    previous = json.loads((out / RESULT).read_text()) if (out / RESULT).exists() else {}
    previous[args.key] = summary
    write_json(out / RESULT, previous)
    print(json.dumps({k: v for k, v in summary.items() if k != "missed_nodules"}, indent=1))
    return 0


# --------------------------------------------------------------------------------------------------
# Evaluation on the cached synthetic scans
# --------------------------------------------------------------------------------------------------


def load_union(folder: Path, *, held_out: bool, limit: int | None = None):
    """Union candidates (with ``seed``), references, recall rows and counts of one side of the split."""
    import pandas as pd

    tables, references, recalls, counts = [], {}, [], []
    paths = [p for p in sorted(folder.glob("scan-?????-union.csv")) if whole_scan.is_held_out(int(p.name[5:10])) == held_out]
    paths = [p for p in paths if p.with_name(p.name.replace("-union", "-candidates")).exists()][:limit]
    for path in paths:
        seed = int(path.name[5:10])
        table = pd.read_csv(path, dtype={"hit": str}, keep_default_na=False)
        tables.append(with_ball_features(path, table).assign(seed=seed))
        references[seed] = pd.read_csv(path.with_name(f"scan-{seed:05d}-reference.csv"))
        recalls.append(pd.read_csv(path.with_name(f"scan-{seed:05d}-recall.csv")))
        counts.append(json.loads(path.with_name(f"scan-{seed:05d}-counts.json").read_text()))
    return pd.concat(tables, ignore_index=True), references, pd.concat(recalls, ignore_index=True), pd.DataFrame(counts)


def with_ball_features(union_csv: Path, table):
    """A union table with :data:`~nodulekit.detection.BALL_FEATURE_NAMES`: its own, or ``scan-<seed>-ball.csv`` beside it (computed once from the scan).

    Unions made before the ball features lack them; they are computed from the union table (centre,
    radius) and the cached scan, never by rewriting the union.
    """
    import pandas as pd

    from nodulekit.detection import BALL_FEATURE_NAMES, ball_features

    if set(BALL_FEATURE_NAMES) <= set(table.columns):
        return table
    cached = union_csv.with_name(union_csv.name.replace("-union.csv", "-ball.csv"))
    if not cached.exists():
        scan = whole_scan.load_scan(union_csv.with_name(union_csv.name.replace("-union.csv", ".npz")))
        temporary = cached.with_name("." + cached.name)
        ball_features(table, hu=scan["hu"], lung=scan["lung"], spacing=scan["spacing"]).to_csv(temporary, index=False)
        temporary.replace(cached)
    return table.join(pd.read_csv(cached)[list(BALL_FEATURE_NAMES)])


def recall_summary(recall, counts) -> dict:
    """Candidate recall by kind and overall, and candidates per scan, for each source."""
    out = {}
    for source in SOURCES:
        column = f"found_{source}"
        by_kind = recall.groupby("kind")[column].mean()
        out[source] = {
            "recall": round(float(recall[column].mean()), 3),
            "recall_by_kind": {k: round(float(v), 3) for k, v in by_kind.items()},
            "candidates_per_scan": round(float(counts[source].mean()), 1),
        }
    out["n_nodules_by_kind"] = {k: int(v) for k, v in recall["kind"].value_counts().sort_index().items()}
    out["blob_seconds_per_scan"] = round(float(counts["blob_s"].mean()), 2)
    return out


def _fit(candidates, labels, *, feature_names, regularization: float, by_source: bool, seed: int = 0) -> dict:
    """One classifier for all candidates (key ``"all"``) or one per source (``"segmenter"``, ``"blob"``)."""
    from nodulekit.detection import CandidateClassifier

    return _by_source(lambda c, y: CandidateClassifier.fit(c, y, feature_names=feature_names, regularization=regularization, seed=seed), candidates, labels, by_source)


def _by_source(fit_one, candidates, labels, by_source: bool) -> dict:
    """``fit_one(candidates, labels)`` on all candidates (key ``"all"``) or on each source's (``"segmenter"``, ``"blob"``)."""
    if not by_source:
        return {"all": fit_one(candidates, labels)}
    out = {}
    for source in ("segmenter", "blob"):
        mine = (candidates["source"] == source).to_numpy()
        out[source] = fit_one(candidates[mine], labels[mine])
    return out


def score(classifiers: dict, candidates, method: str = "predict_proba") -> np.ndarray:
    """Probabilities (or another per-row ``method``) of :func:`_fit`'s classifiers, each candidate by the classifier of its source."""
    if "all" in classifiers:
        return getattr(classifiers["all"], method)(candidates)
    scores = np.zeros(len(candidates))
    for source, classifier in classifiers.items():
        mine = (candidates["source"] == source).to_numpy()
        if mine.any():
            scores[mine] = getattr(classifier, method)(candidates[mine])
    return scores


def fit_union(candidates, references, spacing_of, *, feature_names, folds: int, by_source: bool = False, seed: int = 0):
    """Regularization chosen by scan-grouped CV CPM, then a fit on every training candidate; threshold at 1 FP per scan (CV)."""
    from sklearn.model_selection import GroupKFold

    labels = candidates["label"].to_numpy(bool)
    validation = {}
    for c in (0.01, 0.1, 1.0):
        scores = np.zeros(len(candidates))
        for train, test in GroupKFold(n_splits=folds).split(candidates, labels, candidates["seed"]):
            fitted = _fit(candidates.iloc[train], labels[train], feature_names=feature_names, regularization=c, by_source=by_source, seed=seed)
            scores[test] = score(fitted, candidates.iloc[test])
        validation[c] = whole_scan.froc_of(candidates, references, scores, spacing_of)
    best = max(validation, key=lambda c: validation[c].cpm)
    classifiers = _fit(candidates, labels, feature_names=feature_names, regularization=best, by_source=by_source, seed=seed)
    threshold = float(min(validation[best].threshold_at(1.0), 1.0))
    for classifier in classifiers.values():
        classifier.threshold = threshold
    return classifiers, {str(c): round(float(r.cpm), 4) for c, r in validation.items()}, best


def command_evaluate(args) -> int:
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from nodulekit.detection import FEATURE_NAMES, SOURCE_FEATURE_NAMES, load_classifier
    from nodulekit.utils import write_json

    folder, out = Path(args.cache), Path(args.out)
    test, test_refs, test_recall, test_counts = load_union(folder, held_out=True, limit=args.held_out)
    train, train_refs, _, train_counts = load_union(folder, held_out=False, limit=args.train)
    test_spacing = whole_scan.spacings(folder, test_refs)
    train_spacing = whole_scan.spacings(folder, train_refs)
    union_names = tuple(FEATURE_NAMES) + tuple(SOURCE_FEATURE_NAMES)
    fits = {}
    for by_source in (False, True):
        classifiers, validation, regularization = fit_union(train, train_refs, train_spacing, feature_names=union_names, folds=args.folds, by_source=by_source)
        for source, classifier in classifiers.items():
            classifier.metadata = {
                "trained_on": f"{source} candidates of the union (shipped segmenter + blob_candidates) of {len(train_refs)} synthetic scans (even seeds)",
                "n_candidates": int(len(train)),
                "n_positive": int(train["label"].sum()),
                "regularization": regularization,
                "validation_cpm_by_regularization": validation,
                "threshold_target_fp_per_scan": 1.0,
            }
            classifier.save(out / CLASSIFIER_FOLDER / ("one" if source == "all" else source))
        fits["per source" if by_source else "one"] = (classifiers, validation, regularization)

    # the segmenter's candidates alone, as detection.py scores them
    def segmenter_only(refs):
        frames = []
        for seed in refs:
            table = pd.read_csv(folder / f"scan-{seed:05d}-candidates.csv", dtype={"hit": str}, keep_default_na=False)
            frames.append(table.assign(seed=seed))
        return pd.concat(frames, ignore_index=True)

    seg_test, seg_train = segmenter_only(test_refs), segmenter_only(train_refs)
    shipped = load_classifier(Path(__file__).with_name("results") / "detection_classifier")  # the segmenter-only stage shipped before the per-source ones
    refit, refit_validation, _ = fit_union(seg_train, train_refs, train_spacing, feature_names=FEATURE_NAMES, folds=args.folds)
    from sklearn.ensemble import HistGradientBoostingClassifier

    booster = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0).fit(train[list(union_names)], train["label"].to_numpy(bool))
    scorings = {
        "union, one logistic classifier": (test, score(fits["one"][0], test)),
        "union, one logistic classifier per source": (test, score(fits["per source"][0], test)),
        "union, gradient boosting (comparison only: not JSON)": (test, booster.predict_proba(test[list(union_names)])[:, 1]),
        "segmenter, shipped classifier": (seg_test, shipped.predict_proba(seg_test)),
        "segmenter, same recipe refit on these training scans": (seg_test, score(refit, seg_test)),
        "blob only, blob strength": (test[test["source"] == "blob"], test.loc[test["source"] == "blob", "blob_strength"].to_numpy(float)),
    }
    froc = {}
    for name, (table, scores) in scorings.items():
        result = whole_scan.froc_of(table, test_refs, scores, test_spacing)
        labels = table["label"].to_numpy(bool)
        froc[name] = {
            "cpm": round(float(result.cpm), 4),
            "sensitivity_at_fp": {str(k): round(float(v), 3) for k, v in result.sensitivities.items()},
            "candidate_auc": round(float(roc_auc_score(labels, scores)), 4) if labels.any() and not labels.all() else None,
            "candidates": int(len(table)),
        }
    classifiers = fits["per source"][0]
    kept = whole_scan._recall_by_kind(test, test_refs, score(classifiers, test), classifiers["blob"].threshold)
    summary = {
        "held_out_seeds": sorted(int(s) for s in test_refs),
        "training_seeds": sorted(int(s) for s in train_refs),
        "candidate_recall_held_out": recall_summary(test_recall, test_counts),
        "froc_held_out": froc,
        "union_classifiers": {
            name: {"regularization": c, "validation_cpm": v, "threshold_at_1_fp_per_scan_cv": next(iter(f.values())).threshold,
                   "coefficients": {s: dict(zip(k.feature_names, np.round(k.coefficients, 3).tolist())) for s, k in f.items()}}
            for name, (f, v, c) in fits.items()
        },
        "per_source_recall_by_kind_at_threshold": kept,
        "segmenter_refit_validation_cpm": refit_validation,
        "training_candidates_per_scan": {s: round(float(train_counts[s].mean()), 1) for s in SOURCES},
    }
    previous = json.loads((out / RESULT).read_text()) if (out / RESULT).exists() else {}
    previous.update(summary)
    write_json(out / RESULT, previous)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("held_out_seeds", "training_seeds")}, indent=1))
    return 0


# --------------------------------------------------------------------------------------------------
# Boost: gradient-boosted trees as the union's second stage (JSON trees, BoostedClassifier)
# --------------------------------------------------------------------------------------------------

#: Where ``boost`` writes its per-source boosted members (``ship --members boosted`` reads them).
BOOSTED_FOLDER = "detection_candidates_boosted"
#: The boosting settings tried (scikit-learn's names), simplest first; "all": one model for every
#: candidate (its ``from_blob`` feature tells the sources apart), "per source": one per source.
BOOSTING_GRID = (
    {"max_leaf_nodes": 4, "max_iter": 100, "learning_rate": 0.1, "min_samples_leaf": 20},
    {"max_leaf_nodes": 8, "max_iter": 100, "learning_rate": 0.1, "min_samples_leaf": 20},
    {"max_leaf_nodes": 8, "max_iter": 200, "learning_rate": 0.05, "min_samples_leaf": 50},
    {"max_leaf_nodes": 16, "max_iter": 100, "learning_rate": 0.1, "min_samples_leaf": 20},
    {"max_leaf_nodes": 16, "max_iter": 200, "learning_rate": 0.05, "min_samples_leaf": 50},
    {"max_leaf_nodes": 31, "max_iter": 200, "learning_rate": 0.05, "min_samples_leaf": 20},
)
#: CPM within this of the best counts as a tie, broken for the fewest leaves in all.
CPM_TIE = 0.01


def _fit_boosted(candidates, labels, *, settings: dict, by_source: bool, feature_names) -> dict:
    """Boosted members of :func:`score`'s form: ``{"all": ...}`` or one per source."""
    from nodulekit.detection import BoostedClassifier

    return _by_source(lambda c, y: BoostedClassifier.fit(c, y, feature_names=feature_names, **settings), candidates, labels, by_source)


def _platt(raw, labels, groups, candidates) -> dict:
    """Platt steps (a, b) per group ("all" or each source) fitted on ``raw``; their probabilities."""
    from scipy.special import expit

    from nodulekit.detection import fit_platt

    steps, probabilities = {}, np.zeros(len(raw))
    for group in groups:
        mine = np.ones(len(raw), bool) if group == "all" else (candidates["source"] == group).to_numpy()
        steps[group] = fit_platt(raw[mine], labels[mine])
        probabilities[mine] = expit(steps[group][0] * raw[mine] + steps[group][1])
    return steps, probabilities


def _calibration_check(raw, labels, folds, candidates, groups) -> dict:
    """Brier and reliability of the out-of-fold scores, raw and with a Platt step cross-fitted over the same folds."""
    from scipy.special import expit
    from sklearn.metrics import brier_score_loss, log_loss

    from nodulekit.plots.detection import reliability_table

    crossed = np.zeros(len(raw))
    for train, test in folds:
        steps, _ = _platt(raw[train], labels[train], groups, candidates.iloc[train])
        for group, (a, b) in steps.items():
            mine = np.ones(len(test), bool) if group == "all" else (candidates["source"].iloc[test] == group).to_numpy()
            crossed[test[mine]] = expit(a * raw[test[mine]] + b)
    out = {}
    for name, p in (("boosted", expit(raw)), ("boosted + Platt (cross-fitted)", crossed)):
        out[name] = {"brier": round(float(brier_score_loss(labels, p)), 5), "log_loss": round(float(log_loss(labels, np.clip(p, 1e-12, 1 - 1e-12))), 5),
                     "reliability": reliability_table(p, labels, bins=10)}
    return out


def _union_recall(candidates, references: dict) -> dict:
    """Share of the reference nodules (not ignored) hit by any candidate, overall and by kind (the ceiling of any ranking)."""
    found, kinds = [], []
    for seed, reference in references.items():
        hit = set()
        for text in candidates.loc[candidates["seed"] == seed, "hit"]:
            hit.update(int(k) for k in str(text).split())
        for index, record in enumerate(reference.itertuples(index=False)):
            if not record.ignore:
                found.append(index in hit)
                kinds.append(record.kind)
    found, kinds = np.array(found), np.array(kinds)
    return {"all": round(float(found.mean()), 3), "nodules": int(len(found)), "by_kind": {str(k): round(float(found[kinds == k].mean()), 3) for k in sorted(set(kinds))}}


def _fold_cpms(candidates, references: dict, scores, folds, spacing_of) -> list[float]:
    """CPM of each fold's held-back scans alone (the spread of the CV CPM: fold noise)."""
    out = []
    for _, test in folds:
        seeds = sorted(set(candidates["seed"].iloc[test]))
        mine = candidates["seed"].isin(seeds).to_numpy()
        out.append(round(float(whole_scan.froc_of(candidates[mine], {s: references[s] for s in seeds}, scores[mine], spacing_of).cpm), 4))
    return out


def _leaves_in_all(settings: dict, by_source: bool) -> int:
    return settings["max_leaf_nodes"] * settings["max_iter"] * (2 if by_source else 1)


def command_boost(args) -> int:
    """Boosting settings by scan-grouped CV on the training scans, against the per-source logistic; then the held-out scans."""
    from scipy.special import expit
    from sklearn.metrics import brier_score_loss, roc_auc_score
    from sklearn.model_selection import GroupKFold
    from tqdm.auto import tqdm

    from nodulekit.detection import BALL_FEATURE_NAMES, FEATURE_NAMES, SOURCE_FEATURE_NAMES, load_classifier
    from nodulekit.plots.detection import reliability_table
    from nodulekit.utils import write_json

    folder, out = Path(args.cache), Path(args.out)
    train, train_refs, _, _ = load_union(folder, held_out=False)
    train_spacing = whole_scan.spacings(folder, train_refs)
    names = tuple(FEATURE_NAMES) + (tuple(BALL_FEATURE_NAMES) if args.ball_features else ()) + tuple(SOURCE_FEATURE_NAMES)
    labels = train["label"].to_numpy(bool)
    folds = list(GroupKFold(n_splits=args.folds).split(train, labels, train["seed"]))
    _, logistic_cv, logistic_c = fit_union(train, train_refs, train_spacing, feature_names=names, folds=args.folds, by_source=True)
    trials = []
    for by_source in (False, True):
        for settings in tqdm(BOOSTING_GRID, desc="per source" if by_source else "one for all"):
            raw = np.zeros(len(train))
            for fit_on, test in folds:
                members = _fit_boosted(train.iloc[fit_on], labels[fit_on], settings=settings, by_source=by_source, feature_names=names)
                raw[test] = score(members, train.iloc[test], "raw_score")
            result = whole_scan.froc_of(train, train_refs, expit(raw), train_spacing)
            trials.append({"by_source": by_source, "settings": settings, "cv_cpm": round(float(result.cpm), 4),
                           "cv_auc": round(float(roc_auc_score(labels, raw)), 4), "leaves_in_all": _leaves_in_all(settings, by_source), "raw": raw})
            print(f"{'per source' if by_source else 'one for all'} {settings}: CV CPM {result.cpm:.4f}")
    best_cpm = max(t["cv_cpm"] for t in trials)
    chosen = min((t for t in trials if t["cv_cpm"] >= best_cpm - CPM_TIE), key=lambda t: (t["leaves_in_all"], not t["by_source"]))
    groups = ("segmenter", "blob") if chosen["by_source"] else ("all",)
    calibration = _calibration_check(chosen["raw"], labels, folds, train, groups)
    use_platt = calibration["boosted + Platt (cross-fitted)"]["brier"] < calibration["boosted"]["brier"]
    steps, oof = _platt(chosen["raw"], labels, groups, train) if use_platt else ({g: (1.0, 0.0) for g in groups}, expit(chosen["raw"]))
    oof_result = whole_scan.froc_of(train, train_refs, oof, train_spacing)
    threshold = float(min(oof_result.threshold_at(1.0), 1.0))
    # the chosen settings refit on every training scan, the Platt step and operating point from the out-of-fold scores
    members = _fit_boosted(train, labels, settings=chosen["settings"], by_source=chosen["by_source"], feature_names=names)
    members = {s: members.get(s, members.get("all")) for s in ("segmenter", "blob")}
    for source, member in members.items():
        member.calibration = steps.get(source, steps.get("all"))
        member.threshold = threshold
        member.metadata = {"settings": chosen["settings"], "one_model_for_both_sources": not chosen["by_source"], "platt": use_platt,
                           "trained_on": f"{'all' if not chosen['by_source'] else source} candidates of the union of {len(train_refs)} synthetic scans (even seeds)"}
        member.save(out / BOOSTED_FOLDER / source)
    cv = {
        "training_scans": len(train_refs), "folds": args.folds, "cache": str(folder), "blob_settings": recorded_blob_settings(folder), "features": list(names),
        "training_candidates_per_scan": round(len(train) / len(train_refs), 1), "training_recall": _union_recall(train, train_refs),
        "cv_per_source_logistic": {"cpm_by_regularization": logistic_cv, "regularization": logistic_c, "cpm": logistic_cv[str(logistic_c)]},
        "cv_boosting": [{k: v for k, v in t.items() if k != "raw"} for t in trials],
        "chosen": {"by_source": chosen["by_source"], "settings": chosen["settings"], "cv_cpm": chosen["cv_cpm"], "rule": f"fewest leaves within {CPM_TIE} CPM of the best",
                   "cv_cpm_by_fold": _fold_cpms(train, train_refs, expit(chosen["raw"]), folds, train_spacing)},
        "calibration_out_of_fold": calibration,
        "platt": {"used": use_platt, "steps": {g: list(s) for g, s in steps.items()}, "rule": "used when the cross-fitted Platt step lowers the out-of-fold Brier score"},
        "operating_point": {"threshold": threshold, "target_fp_per_scan": 1.0, "chosen_on": "out-of-fold scores of the training scans"},
        "cv_cpm_after_calibration": round(float(oof_result.cpm), 4),
    }
    previous = json.loads((out / RESULT).read_text()) if (out / RESULT).exists() else {}
    if args.cv_only:  # the training scans only: settings of the candidate stage compared before any held-out scan is scored
        previous[args.key] = cv
        write_json(out / RESULT, previous)
        print(json.dumps({k: v for k, v in cv.items() if k not in ("calibration_out_of_fold", "cv_boosting")}, indent=1, default=str))
        return 0
    # only now: the held-out scans
    held_out_folder = Path(args.held_out_cache or args.cache)
    test, test_refs, _, _ = load_union(held_out_folder, held_out=True)
    test_spacing = whole_scan.spacings(held_out_folder, test_refs)
    test_labels = test["label"].to_numpy(bool)
    before = {source: load_classifier(out / CLASSIFIER_FOLDER / source) for source in ("segmenter", "blob")}  # evaluate's: the stage shipped before
    held_out = {}
    for name, scores in (("boosted", score(members, test)), ("per-source logistic (shipped before)", score(before, test))):
        result = whole_scan.froc_of(test, test_refs, scores, test_spacing)
        kept = scores >= (threshold if name == "boosted" else before["segmenter"].threshold)
        held_out[name] = {
            "cpm": round(float(result.cpm), 4),
            "sensitivity_at_fp": {str(k): round(float(v), 3) for k, v in result.sensitivities.items()},
            "candidate_auc": round(float(roc_auc_score(test_labels, scores)), 4),
            "brier": round(float(brier_score_loss(test_labels, scores)), 5),
            "fp_per_scan_at_operating_point": round(float((kept & ~test_labels).sum() / len(test_refs)), 2),
            "reliability": reliability_table(scores, test_labels, bins=10),
        }
    summary = {**cv, "held_out_scans": len(test_refs), "held_out_cache": str(held_out_folder), "held_out": held_out}
    previous[args.key] = summary
    write_json(out / RESULT, previous)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("calibration_out_of_fold",)}, indent=1, default=str)[:6000])
    return 0


# --------------------------------------------------------------------------------------------------
# LIDC-IDRI-0001
# --------------------------------------------------------------------------------------------------


def command_lidc(args) -> int:
    """LIDC-IDRI-0001 end to end as ``nodulekit segment SCAN --model FOLDER`` ranks it: the nodule's rank, score and the list at the operating point."""
    from nodulekit.froc import hit_matrix, reference_from_mask
    from nodulekit.inference import load_segmenter
    from nodulekit.readers import read_any
    from nodulekit.utils import write_json

    out = Path(args.out)
    volume = read_any(args.scan)
    segmenter = load_segmenter(args.folder)
    result = segmenter.segment(volume, min_score=0.0, progress=False)
    ranked, spacing = result.nodules, volume.spacing
    reference = reference_from_mask(volume.mask, spacing=spacing)
    hits = hit_matrix(ranked, reference, spacing=spacing) if len(ranked) else np.zeros((0, len(reference)), bool)
    rows = []
    for index, record in enumerate(reference.itertuples(index=False)):
        rank = int(np.flatnonzero(hits[:, index])[0]) + 1 if hits[:, index].any() else None
        rows.append({"nodule": index, "diameter_mm": round(float(record.diameter_mm), 1), "rank": rank,
                     "score": round(float(ranked["score"].iloc[rank - 1]), 4) if rank else None,
                     "source": str(ranked["source"].iloc[rank - 1]) if rank else None})
    listed = ranked[ranked["score"] >= segmenter.classifier.threshold]
    summary = {"scan": Path(args.scan).name, "model": str(args.folder), "candidates": int(len(ranked)),
               "candidates_by_source": {str(k): int(v) for k, v in ranked["source"].value_counts().items()},
               "operating_point": segmenter.classifier.threshold, "listed_at_operating_point": int(len(listed)),
               "listed_by_source": {str(k): int(v) for k, v in listed["source"].value_counts().items()},
               "nodules": rows, "top_scores": [round(float(s), 4) for s in ranked["score"].head(5)]}
    previous = json.loads((out / RESULT).read_text()) if (out / RESULT).exists() else {}
    previous["lidc_idri_0001_shipped"] = summary
    write_json(out / RESULT, previous)
    print(json.dumps(summary, indent=1))
    return 0


# --------------------------------------------------------------------------------------------------
# Real dev nodules: the LIDC crop stacks, by (pseudo-)HU band
# --------------------------------------------------------------------------------------------------

#: The release's crops are min-max scaled per crop (not HU): 0..255 is mapped linearly to this
#: range of pseudo-HU (the darkest voxel of a lung crop is air/parenchyma, the brightest soft tissue
#: or bone), so bands and the blob filter's HU settings are approximate on them.
PSEUDO_HU = (-1000.0, 400.0)
#: Mean (pseudo-)HU bands of a nodule's marked voxels.
HU_BANDS = ((-np.inf, -600.0, "< -600"), (-600.0, -300.0, "-600..-300"), (-300.0, np.inf, "> -300"))


def command_stacks(args) -> int:
    """Segmenter against union candidate recall on the dev crop stacks, by the nodules' mean pseudo-HU band."""
    import pandas as pd
    from tqdm.auto import tqdm

    from nodulekit import load_pretrained
    from nodulekit.detection import blob_candidates, candidate_outcomes, merge_candidates
    from nodulekit.readers import read_lidc_release
    from nodulekit.utils import write_json

    import detection_stacks as stacks_module  # experiments/detection_stacks.py (this folder is on sys.path)
    spacing = stacks_module.SPACING
    crops = read_lidc_release(args.data, consensus="union", progress=False)
    segmenter = load_pretrained(tta=False).segmenter
    table = crops.table.reset_index(drop=True)
    groups = list(table.groupby("nodule_id", sort=True).groups.items())[: args.limit]
    rows = []
    for nodule_id, index in tqdm(groups, desc="stacks", unit="stack"):
        order = np.asarray(index)[np.argsort(table.loc[index, "slice_index"].to_numpy())]
        images = crops.images[order]
        images = images[..., 0] if images.ndim == 4 else images
        marks = crops.reader_masks[order].any(axis=1)
        marks = marks[..., 0] if marks.ndim == 4 else marks
        if not marks.any():
            continue
        result = segmenter.segment(images, spacing=spacing, units="uint8", connect_slices=True, lungs=False, progress=False)
        hu = PSEUDO_HU[0] + images.astype(np.float32) * ((PSEUDO_HU[1] - PSEUDO_HU[0]) / 255.0)
        blob_labels, blob_table = blob_candidates(hu, np.ones(hu.shape, bool), spacing)
        labels, union = merge_candidates(result.labels, result.nodules, blob_labels, blob_table, spacing=spacing)
        found = {}
        for name, (lab, tab) in {"segmenter": (result.labels, result.nodules), "blob": (blob_labels, blob_table), "union": (labels, union)}.items():
            found[name] = bool(len(tab) and (candidate_outcomes(lab, tab, marks) == "positive").any())
            found[f"{name}_candidates"] = int(len(tab))
        rows.append({"patient_id": table.loc[order[0], "patient_id"], "stack": nodule_id, "mean_pseudo_hu": float(hu[marks].mean()), **found})
    frame = pd.DataFrame(rows)
    frame["band"] = pd.cut(frame["mean_pseudo_hu"], [b[0] for b in HU_BANDS] + [np.inf], labels=[b[2] for b in HU_BANDS], right=False)
    summary = {"stacks": int(len(frame)), "pseudo_hu": list(PSEUDO_HU), "by_band": {}, "all": {}}
    for name, group in [("all", frame)] + [(str(b), g) for b, g in frame.groupby("band", observed=True)]:
        entry = {"n": int(len(group))}
        for source in SOURCES:
            entry[f"recall_{source}"] = round(float(group[source].mean()), 3)
            entry[f"candidates_per_stack_{source}"] = round(float(group[f"{source}_candidates"].mean()), 2)
        (summary if name == "all" else summary["by_band"])[name] = entry
    out = Path(args.out)
    previous = json.loads((out / RESULT).read_text()) if (out / RESULT).exists() else {}
    previous["dev_crop_stacks"] = summary
    write_json(out / RESULT, previous)
    print(json.dumps(summary, indent=1))
    return 0


# --------------------------------------------------------------------------------------------------
# The synthetic-trained second stages on the real LIDC crop stacks
# --------------------------------------------------------------------------------------------------


def command_stacks_stage(args) -> int:
    """The per-source logistic and the boosted stage, trained on synthetic scans, on the dev crop stacks' candidates.

    As the README row "previous shipped classifier.json as is": the stacks' candidates are the
    segmenter's components, scored by each stage's segmenter member on every feature it uses (the
    HU features computed on the 0-255 crops, position features 0, no blob: ``from_blob`` and
    ``log_blob_strength`` 0). Beside them, both recipes refit on the synthetic training scans'
    segmenter candidates on :data:`~nodulekit.detection.INTENSITY_FREE_FEATURES` only.
    """
    import pandas as pd

    from nodulekit.detection import INTENSITY_FREE_FEATURES, BoostedClassifier, CandidateClassifier, load_classifier
    from nodulekit.utils import write_json

    import detection_stacks as stacks_module  # experiments/detection_stacks.py (this folder is on sys.path)

    out = Path(args.out)
    frame = pd.read_csv(Path(args.stacks_cache) / stacks_module.CANDIDATES_CSV)
    stacks = pd.read_csv(Path(args.stacks_cache) / stacks_module.STACKS_CSV)
    frame = frame.assign(source="segmenter", from_blob=0.0, log_blob_strength=0.0)
    train, _, _, _ = load_union(Path(args.cache), held_out=False)
    train = train[train["source"] == "segmenter"]
    labels = train["label"].to_numpy(bool)
    boosted = load_classifier(out / BOOSTED_FOLDER / "segmenter")
    refits = {
        "per-source logistic refit on the intensity-free features": CandidateClassifier.fit(train, labels, feature_names=INTENSITY_FREE_FEATURES, regularization=1.0),
        "boosted refit on the intensity-free features": BoostedClassifier.fit(train, labels, feature_names=INTENSITY_FREE_FEATURES, **boosted.metadata["settings"]),
    }
    scorings = {
        "previous shipped classifier.json as is": load_classifier(out / "detection_classifier").predict_proba(frame),
        "per-source logistic (segmenter member) as is": load_classifier(out / CLASSIFIER_FOLDER / "segmenter").predict_proba(frame),
        "boosted (segmenter member) as is": boosted.predict_proba(frame),
        **{name: model.predict_proba(frame) for name, model in refits.items()},
    }
    summary = {"stacks": int(len(stacks)), "candidates": int(len(frame)), "results": {name: stacks_module.summarise(frame, stacks, s)[0] for name, s in scorings.items()}}
    previous = json.loads((out / RESULT).read_text()) if (out / RESULT).exists() else {}
    previous["dev_crop_stacks_second_stage"] = summary
    write_json(out / RESULT, previous)
    print(json.dumps(summary, indent=1))
    return 0


# --------------------------------------------------------------------------------------------------
# Ship: the per-source classifiers become the shipped segmenter's second stage
# --------------------------------------------------------------------------------------------------


def command_ship(args) -> int:
    """Write the per-source members of ``boost`` (``--members boosted``) or ``evaluate`` (``logistic``) as one ``classifier.json`` into a segmenter folder."""
    from nodulekit.detection import CANDIDATE_SOURCES, PerSourceClassifier, load_classifier

    out = Path(args.out)
    members = BOOSTED_FOLDER if args.members == "boosted" else CLASSIFIER_FOLDER
    classifiers = {source: load_classifier(out / members / source) for source in CANDIDATE_SOURCES}
    thresholds = {c.threshold for c in classifiers.values()}
    if len(thresholds) != 1:
        raise SystemExit(f"the per-source classifiers disagree on their operating point: {sorted(thresholds)}")
    threshold = thresholds.pop()
    results = json.loads((out / RESULT).read_text())
    metadata = _boosted_metadata(results, threshold) if args.members == "boosted" else _logistic_metadata(results, threshold)
    path = PerSourceClassifier(classifiers, threshold=threshold, metadata=metadata, blob_options=_shipped_blob_options(results) if args.members == "boosted" else None).save(args.folder)
    print(path)
    return 0


def _shipped_blob_options(results: dict) -> dict:
    """The blob settings of ``boost``'s cache that differ from :func:`~nodulekit.detection.blob_candidates`'s defaults (empty: the defaults)."""
    import inspect

    from nodulekit.detection import blob_candidates

    defaults = {name: p.default for name, p in inspect.signature(blob_candidates).parameters.items()}
    settings = results["boosted_second_stage"].get("blob_settings", {})
    return {k: v for k, v in settings.items() if k not in defaults or list(np.atleast_1d(v)) != list(np.atleast_1d(defaults[k]))}


def _shipped_candidates() -> str:
    from nodulekit.detection import BLOB_RADII_MM

    return (f"the shipped segmenter's components (threshold 0.5, >= 3 mm) and nodulekit.detection.blob_candidates (defaults: radii {list(BLOB_RADII_MM)} mm, "
            "at most 60) inside the lung mask, merged by merge_candidates")


def _boosted_metadata(results: dict, threshold: float) -> dict:
    """``classifier.json`` metadata of the boosted stage (``boost``'s results)."""
    boosted = results["boosted_second_stage"]
    chosen = boosted["chosen"]
    held_out = boosted["held_out"]["boosted"]
    return {
        "candidates": _shipped_candidates(),
        "trained_on": f"{boosted['training_scans']} synthetic scans of nodulekit.phantom.generate_volume (32 slices, 4 nodules, even seeds 0-{2 * boosted['training_scans'] - 2}); "
                      f"gradient-boosted trees (scikit-learn HistGradientBoostingClassifier, exported as arrays), "
                      f"{'one model for both sources (from_blob is a feature)' if not chosen['by_source'] else 'one model per candidate source'}",
        "n_scans": boosted["training_scans"],
        "settings": chosen["settings"],
        "features": boosted.get("features"),
        "settings_chosen_by": f"{boosted['folds']}-fold scan-grouped CV CPM on the training scans, {chosen['rule']}",
        "validation_cpm": chosen["cv_cpm"],
        "validation_cpm_per_source_logistic": boosted["cv_per_source_logistic"]["cpm"],
        "platt": boosted["platt"],
        "operating_point": {
            "chosen_on": "out-of-fold scores of 5-fold scan-grouped cross-validation on the training scans (never the held-out scans)",
            "target_fp_per_scan": 1.0,
            "threshold": threshold,
        },
        "held_out": {"scans": f"{boosted['held_out_scans']} synthetic scans, odd seeds 1-{2 * boosted['held_out_scans'] - 1} (no stage trained on them)", "cpm": held_out["cpm"], "sensitivity_at_fp": held_out["sensitivity_at_fp"]},
        "experiment": "experiments/detection_candidates.py (boost, ship --members boosted)",
    }


def _logistic_metadata(results: dict, threshold: float) -> dict:
    """``classifier.json`` metadata of the per-source logistic stage (``evaluate``'s results; shipped before the boosted one)."""
    per_source = results["union_classifiers"]["per source"]
    held_out = results.get("shipped_per_source_held_out") or results["froc_held_out"]["union, one logistic classifier per source"]
    return {
        "candidates": _shipped_candidates(),
        "trained_on": f"{len(results['training_seeds'])} synthetic scans of nodulekit.phantom.generate_volume (32 slices, 4 nodules, even seeds 0-118); one logistic regression per candidate source",
        "n_scans": len(results["training_seeds"]),
        "regularization": per_source["regularization"],
        "validation_cpm": per_source["validation_cpm"][str(per_source["regularization"])],
        "operating_point": {
            "chosen_on": "out-of-fold scores of 5-fold scan-grouped cross-validation on the training scans (never the held-out scans)",
            "target_fp_per_scan": 1.0,
            "threshold": threshold,
        },
        "held_out": {"scans": f"{len(results['held_out_seeds'])} synthetic scans, odd seeds 1-59 (no stage trained on them)", "cpm": held_out["cpm"], "sensitivity_at_fp": held_out["sensitivity_at_fp"]},
        "experiment": "experiments/detection_candidates.py (evaluate, ship)",
    }


def command_shipped(args) -> int:
    """The shipped stage on the held-out scans: FROC, recall by kind, the stage before, and ``rank_union`` against the cached scores."""
    from sklearn.metrics import roc_auc_score

    from nodulekit.detection import load_classifier
    from nodulekit.utils import write_json

    folder, out = Path(args.cache), Path(args.out)
    classifier = load_classifier(Path(args.folder))
    test, test_refs, _, _ = load_union(folder, held_out=True)
    spacing_of = whole_scan.spacings(folder, test_refs)
    scores = classifier.predict_proba(test)
    result = whole_scan.froc_of(test, test_refs, scores, spacing_of)
    previous_stage = score({source: load_classifier(out / CLASSIFIER_FOLDER / source) for source in ("segmenter", "blob")}, test)
    previous_result = whole_scan.froc_of(test, test_refs, previous_stage, spacing_of)
    shipped_before = None
    if args.previous_folder:  # the stage shipped before, on the candidates of its own time (another cache of the same scans)
        old_folder = Path(args.previous_cache or args.cache)
        old, old_refs, _, _ = load_union(old_folder, held_out=True)
        if sorted(old_refs) != sorted(test_refs):
            raise SystemExit(f"{old_folder} holds other held-out scans than {folder}")
        before_stage = load_classifier(Path(args.previous_folder))
        old_scores = before_stage.predict_proba(old)
        shipped_before = whole_scan.froc_of(old, old_refs, old_scores, whole_scan.spacings(old_folder, old_refs))
        ceiling_before = _union_recall(old, old_refs)
    summary = {
        "classifier": str(args.folder),
        "held_out_scans": len(test_refs),
        "cpm": round(float(result.cpm), 4),
        "sensitivity_at_fp": {str(k): round(float(v), 3) for k, v in result.sensitivities.items()},
        "candidate_auc": round(float(roc_auc_score(test["label"].to_numpy(bool), scores)), 4),
        "operating_point": classifier.threshold,
        "per_source_logistic_before": {"cpm": round(float(previous_result.cpm), 4), "sensitivity_at_fp": {str(k): round(float(v), 3) for k, v in previous_result.sensitivities.items()}},
        "candidate_recall": _union_recall(test, test_refs),
        "candidates_per_scan": round(len(test) / len(test_refs), 1),
        **({"shipped_before": {"classifier": str(args.previous_folder), "cache": str(args.previous_cache or args.cache), "cpm": round(float(shipped_before.cpm), 4),
                               "sensitivity_at_fp": {str(k): round(float(v), 3) for k, v in shipped_before.sensitivities.items()},
                               "candidate_auc": round(float(roc_auc_score(old["label"].to_numpy(bool), old_scores)), 4),
                               "recall_by_kind_at_operating_point": whole_scan._recall_by_kind(old, old_refs, old_scores, before_stage.threshold),
                               "candidate_recall": ceiling_before, "candidates_per_scan": round(len(old) / len(old_refs), 1),
                               "fp_per_scan_at_operating_point": round(float(((old_scores >= before_stage.threshold) & ~old["label"].to_numpy(bool)).sum() / len(old_refs)), 2)}}
           if shipped_before is not None else {}),
        "recall_by_kind_at_operating_point": whole_scan._recall_by_kind(test, test_refs, scores, classifier.threshold),
        "fp_per_scan_at_operating_point": round(float(((scores >= classifier.threshold) & ~test["label"].to_numpy(bool)).sum() / len(test_refs)), 2),
        **_rank_union_check(folder, test, test_refs, scores, classifier, spacing_of, args.check),
    }
    if args.figures:
        _plot_shipped_froc(folder, test_refs, spacing_of, result, previous_result, shipped_before, labels=(args.label, args.previous_label))
        if shipped_before is not None:
            _plot_shipped_reliability(test["label"].to_numpy(bool), scores, old_scores, len(test_refs), old["label"].to_numpy(bool), args.previous_label)
        else:
            _plot_shipped_reliability(test["label"].to_numpy(bool), scores, previous_stage, len(test_refs))
    previous = json.loads((out / RESULT).read_text()) if (out / RESULT).exists() else {}
    previous[args.key] = summary
    write_json(out / RESULT, previous)
    print(json.dumps(summary, indent=1))
    return 0


def _rank_union_check(folder: Path, test, test_refs, scores, classifier, spacing_of, count: int) -> dict:
    """The first ``count`` held-out scans end to end through ``rank_union`` (what ``Segmenter.segment`` runs) against the cached unions' scores."""
    import pandas as pd

    from nodulekit.inference import measure_nodules, rank_union

    differences, end_to_end = [], []
    checked = {seed: test_refs[seed] for seed in sorted(test_refs)[:count]}
    for seed in checked:
        scan = whole_scan.load_scan(folder / f"scan-{seed:05d}.npz")
        seg_labels, seg_table = measure_nodules(scan["probabilities"] >= 0.5, spacing=scan["spacing"], probabilities=scan["probabilities"], hu=scan["hu"], min_diameter_mm=3.0, min_voxels=3)
        _, ranked, _ = rank_union(seg_labels, seg_table, probabilities=scan["probabilities"], hu=scan["hu"], lung=scan["lung"], spacing=scan["spacing"], classifier=classifier, min_score=0.0)
        cached = scores[test["seed"].to_numpy() == seed]
        # rank_union lists each cached candidate but the blobs on a better-scoring segmenter candidate: every listed score is a cached one
        end_to_end.append(ranked.assign(seed=seed))
        differences.append({"listed": int(len(ranked)), "cached": int(len(cached)),
                            "max_score_difference": float(np.abs(ranked["score"].to_numpy()[:, None] - cached[None]).min(axis=1).max()) if len(ranked) else 0.0})
    if not checked:
        return {}
    listed = pd.concat(end_to_end, ignore_index=True)
    mine = test["seed"].isin(list(checked)).to_numpy()
    return {
        "rank_union_vs_cache_max_score_difference": differences,
        "rank_union_end_to_end": {
            "scans": len(checked),
            "cpm": round(float(whole_scan.froc_of(listed, checked, listed["score"].to_numpy(float), spacing_of).cpm), 4),
            "cpm_of_the_cached_unions": round(float(whole_scan.froc_of(test[mine], checked, scores[mine], spacing_of).cpm), 4),
            "listed_per_scan_at_operating_point": round(float((listed["score"] >= classifier.threshold).sum() / len(checked)), 2),
            "cached_per_scan_at_operating_point": round(float((scores[mine] >= classifier.threshold).sum() / len(checked)), 2),
        },
    }


def _plot_shipped_froc(folder: Path, refs, spacing_of, shipped, per_source_logistic, shipped_before=None, *, labels: tuple[str, str]) -> None:
    """Fig. S5: the shipped boosted stage against the boosted stage before it (its own candidates; when given), the per-source logistic one and the first stage (segmenter candidates, one classifier) on the same scans."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from nodulekit.detection import load_classifier
    from nodulekit.plots.detection import plot_froc

    tables = [pd.read_csv(folder / f"scan-{seed:05d}-candidates.csv", dtype={"hit": str}, keep_default_na=False).assign(seed=seed) for seed in sorted(refs)]
    segmenter_only = pd.concat(tables, ignore_index=True)
    previous = load_classifier(Path(__file__).with_name("results") / "detection_classifier")
    before = whole_scan.froc_of(segmenter_only, refs, previous.predict_proba(segmenter_only), spacing_of)
    curves = {labels[0]: shipped}
    if shipped_before is not None:
        curves[labels[1]] = shipped_before
    curves["blob at 10 radii + segmenter, logistic per source"] = per_source_logistic
    curves["segmenter only, one logistic (first stage)"] = before
    fig = plot_froc(
        curves,
        title=f"{len(refs)} held-out synthetic scans ({whole_scan.N_SLICES} slices each)",
    )
    fig.axes[0].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below the axes: the curves stay visible
    path = Path(__file__).resolve().parents[1] / "figures" / "figS5_detection_froc.png"
    fig.savefig(path, dpi=150, bbox_inches="tight")
    print(f"wrote {path} (previous stages CPM {per_source_logistic.cpm:.3f}, {before.cpm:.3f})")


def _plot_shipped_reliability(labels, shipped, previous, scans: int, previous_labels=None, previous_title: str = "logistic per source (previous)") -> None:
    """Fig. S6: reliability of the shipped stage's scores on the held-out candidates, beside the previous stage's (on its own candidates when ``previous_labels`` are given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nodulekit.plots import save_figure
    from nodulekit.plots.detection import plot_reliability

    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    plot_reliability(shipped, labels, ax=axes[0], title=f"boosted trees + Platt (shipped): {scans} held-out scans")
    plot_reliability(previous, labels if previous_labels is None else previous_labels, ax=axes[1], title=previous_title)
    save_figure(figure, "S6", "detection_reliability", folder=Path(__file__).resolve().parents[1] / "figures")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    candidates = sub.add_parser("candidates", help="segmenter, blob and union candidates of the cached scans")
    candidates.add_argument("--follow", action="store_true", help="keep going while `detection.py cache` adds scans")
    candidates.add_argument("--scans-from", default=None, help="link the cached scans of this folder into --cache first (a cache of other blob settings)")
    candidates.add_argument("--training-only", action="store_true", help="only the training (even) seeds: held-out unions wait until the settings are chosen")
    more = sub.add_parser("more-held-out", help="more held-out scans (odd seeds of a range; --training: even ones): generate, segment, union candidates")
    more.add_argument("--first", type=int, default=60)
    more.add_argument("--count", type=int, default=40)
    more.add_argument("--training", action="store_true", help="the training (even) seeds of the range instead of the held-out ones")
    more.add_argument("--scans-from", default=None, help="link this cache folder's training scans and unions into --cache first (same blob settings)")
    ceiling = sub.add_parser("ceiling", help="training scans: which nodules have no candidate and why")
    ceiling.add_argument("--blob", default=None, help="blob_candidates keyword arguments as JSON (default: its defaults)")
    ceiling.add_argument("--limit", type=int, default=None, help="at most this many training scans")
    ceiling.add_argument("--key", default="ceiling_training", help="the entry of the results file to write")
    evaluate = sub.add_parser("evaluate", help="recall by source and the union's second stage on held-out scans")
    evaluate.add_argument("--held-out", type=int, default=None, help="at most this many held-out scans")
    evaluate.add_argument("--train", type=int, default=None, help="at most this many training scans")
    evaluate.add_argument("--folds", type=int, default=5)
    boost = sub.add_parser("boost", help="boosted trees: settings by scan-grouped CV on the training scans, then the held-out scans")
    boost.add_argument("--folds", type=int, default=5)
    boost.add_argument("--held-out-cache", default=None, help="the held-out scans' union tables from here (default: --cache)")
    boost.add_argument("--cv-only", action="store_true", help="the training scans' CV only (no held-out scan is read)")
    boost.add_argument("--key", default="boosted_second_stage", help="the entry of the results file to write")
    boost.add_argument("--no-ball-features", dest="ball_features", action="store_false", help="without the ball features (the stage shipped before them)")
    lidc = sub.add_parser("lidc", help="LIDC-IDRI-0001: candidates by source and the nodule's rank")
    lidc.add_argument("scan")
    stacks = sub.add_parser("stacks", help="dev crop stacks: segmenter against union recall by pseudo-HU band")
    stacks.add_argument("--data", default="../shared/data/lidc/LIDC-IDRI-slices")
    stacks.add_argument("--limit", type=int, default=None)
    stacks_stage = sub.add_parser("stacks-stage", help="the synthetic-trained second stages on the dev crop stacks' candidates (detection_stacks.py candidates)")
    stacks_stage.add_argument("--stacks-cache", default="runs/stacks", help="detection_stacks.py's cache (candidates.csv, stacks.csv)")
    ship_parser = sub.add_parser("ship", help="write the per-source classifiers as the second stage of a segmenter folder")
    ship_parser.add_argument("--members", choices=("boosted", "logistic"), default="boosted", help="boost's boosted members or evaluate's logistic ones")
    ship_parser.add_argument("--folder", default=str(Path(__file__).resolve().parents[1] / "nodulekit" / "pretrained" / "lidc_attention_unet"))
    lidc.add_argument("--folder", default=ship_parser.get_default("folder"), help="the segmenter folder whose classifier.json ranks the union")
    shipped = sub.add_parser("shipped", help="the shipped per-source stage on the held-out scans (FROC, recall by kind, end-to-end check)")
    shipped.add_argument("--folder", default=ship_parser.get_default("folder"))
    shipped.add_argument("--check", type=int, default=3, help="held-out scans run end to end through rank_union")
    shipped.add_argument("--no-figures", dest="figures", action="store_false", help="leave figS5 and figS6 as they are")
    shipped.add_argument("--key", default="shipped_per_source_held_out", help="the entry of the results file to write")
    shipped.add_argument("--previous-folder", default=None, help="a folder with the classifier.json shipped before, scored on --previous-cache's unions beside the shipped one")
    shipped.add_argument("--previous-cache", default=None, help="the same held-out scans' unions of the candidate settings shipped before")
    shipped.add_argument("--label", default="blob at 10 radii + segmenter, boosted (shipped)", help="the shipped stage's name in figS5")
    shipped.add_argument("--previous-label", default="blob at 6 radii + segmenter, boosted (before)", help="the stage shipped before's name in figS5 and figS6")
    for command in (candidates, more, ceiling, evaluate, boost, stacks_stage, shipped):
        command.add_argument("--cache", default="runs/detect")
    for command in (candidates, more):
        command.add_argument("--blob", default=None, help="blob_candidates keyword arguments as JSON, recorded in the cache folder (default: its defaults)")
    for command in (ceiling, evaluate, boost, lidc, stacks, stacks_stage, ship_parser, shipped):
        command.add_argument("--out", default="experiments/results")
    args = parser.parse_args(argv)
    commands = {"ceiling": command_ceiling, "candidates": command_candidates, "more-held-out": command_more_scans, "evaluate": command_evaluate, "boost": command_boost, "lidc": command_lidc, "stacks": command_stacks, "stacks-stage": command_stacks_stage, "ship": command_ship, "shipped": command_shipped}
    return commands[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
