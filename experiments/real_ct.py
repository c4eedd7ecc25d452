"""Accuracy on real CT (issue 12): recipes cross-validated on the LIDC-IDRI dev crops, by patient.

Runs every (recipe, fold) unit as its own process (they are independent), so a GPU machine with
many cores runs several at once. Each unit writes one JSON file into ``--out``; rerunning skips
finished units. Then ``--final RECIPE`` trains that recipe on all dev patients and saves the model
(the one nodulekit ships) with its recipe, and ``--synthetic`` trains on generator crops only and
scores on all real crops.

    python experiments/real_ct.py --data lidc64.npz --out experiments/results --jobs 6

``--data`` is a CropSet ``.npz`` of the LIDC PNG release at 64x64 with 50 % consensus masks
(``read_lidc_release(root, crop_size=64).save(path)``) or the release folder itself. Works on any
Keras backend (``KERAS_BACKEND=jax`` on a GPU machine without TensorFlow; ``experiments/gpu_search.sh``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: The recipes compared, and how each fold model is scored, live in the package (notebook 06 uses them too).
from nodulekit.evaluation import REAL_CT_RECIPES, VARIANTS  # noqa: E402

_BN_AUG = REAL_CT_RECIPES["bn_aug"]
_WIDE = {**_BN_AUG["model_options"], "filters": [32, 64, 128, 256, 512]}
_BALANCED = {"fn_weight": 0.5, "fp_weight": 0.5, "gamma": 0.75}

#: Candidates searched beyond the package's recipes (each a change to ``bn_aug``); one enters
#: ``REAL_CT_RECIPES`` only when patient-grouped CV says it helps.
CANDIDATES: dict[str, dict] = {
    "bn_aug_ep60": {**_BN_AUG, "epochs": 60},
    "bn_aug_lr3e4_ep60": {**_BN_AUG, "learning_rate": 3e-4, "epochs": 60},
    "bn_aug_balanced_ep60": {**_BN_AUG, "loss_options": _BALANCED, "epochs": 60},
    "bn_aug_bce_dice": {**_BN_AUG, "loss": "bce_dice", "loss_options": {}},
    "bn_aug_wide": {**_BN_AUG, "model_options": _WIDE},
    "bn_aug_wide_balanced_ep60": {**_BN_AUG, "model_options": _WIDE, "loss_options": _BALANCED, "epochs": 60},
    # Soft targets (issue 20): train towards the fraction of the marking readers who drew each
    # pixel instead of the hard 50 % consensus; scored against the consensus as every recipe.
}
RECIPES: dict[str, dict] = {**REAL_CT_RECIPES, **CANDIDATES}

#: Scored as well in the search: the same TTA + post-processing at other thresholds (chosen on the
#: test folds, so an optimistic look at whether precision and recall are balanced, not a result).
SEARCH_VARIANTS = {**VARIANTS, **{f"tta_pp_t{t}": {"tta": True, "postprocess": True, "threshold": t} for t in (0.3, 0.4, 0.6, 0.7)}}


def _recipe(name: str, epochs: int = 0, **changes):
    """``name`` from :data:`RECIPES` as a Recipe (``epochs`` > 0 overrides its training length)."""
    from nodulekit import evaluation as ev

    return ev.real_ct_recipe(name, recipes=RECIPES, **({"epochs": epochs} if epochs else {}), **changes)


def _load(data: str):
    """The crops of ``--data``: a CropSet ``.npz`` or the LIDC PNG release folder (64x64 centre crops)."""
    from nodulekit.dataset import CropSet

    if Path(data).is_dir():
        from nodulekit.readers import read_lidc_release

        return read_lidc_release(data, crop_size=64, progress=False)
    return CropSet.load(data)


def _unit(data: str, name: str, fold: int, n_folds: int, out: str, seed: int, precision: str = "float32", epochs: int = 0) -> str:
    """One (recipe, fold): :func:`nodulekit.evaluation.cross_validate` with its JSON cache in ``out``."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from nodulekit import evaluation as ev
    from nodulekit.training.distributed import precision_policy

    recipe = _recipe(name, epochs)
    variants = VARIANTS if name in REAL_CT_RECIPES else SEARCH_VARIANTS
    start = time.perf_counter()
    with precision_policy(precision):
        table = ev.cross_validate(_load(data), recipe, n_folds=n_folds, folds=[fold], seed=seed, variants=variants, cache_dir=out, progress=False)
    scores = table.set_index("variant")["nodule_dice"]
    return f"cv_{name}_fold{fold}: nodule Dice {scores['plain']:.3f} / TTA+PP {scores['tta_pp']:.3f} ({time.perf_counter() - start:.0f} s)"


def _final(data: str, name: str, out: str, seed: int, epochs: int = 0, exclude: tuple[str, ...] = ()) -> str:
    """Train ``name`` on every patient of ``data`` but ``exclude``; saved as ``pretrained_<name>[_without_<patients>]``."""
    import numpy as np

    from nodulekit import evaluation as ev
    from nodulekit.utils import write_json

    crops = _load(data)
    if exclude:
        missing = sorted(set(exclude) - set(crops.groups.astype(str)))
        if missing:
            raise SystemExit(f"--exclude: no such patient in {data}: {', '.join(missing)}")
        crops = crops.subset(np.flatnonzero(~np.isin(crops.groups.astype(str), list(exclude))))
    stem = f"pretrained_{name}" + "".join(f"_without_{patient}" for patient in exclude)
    recipe = _recipe(name, epochs, **VARIANTS["tta_pp"])
    images = recipe.pipeline().apply(crops.images)
    model, history = ev.train_recipe(images, ev.training_targets(crops, recipe), crops.groups, recipe, seed=seed)
    _save_weights_only(model, Path(out) / f"{stem}.keras")
    write_json(Path(out) / f"{stem}.json", {"recipe": recipe.to_dict(), "history": history.to_dict(orient="list"), "patients": sorted(set(crops.groups))})
    return f"final model of {name} saved as {stem}"


def _synthetic(data: str, name: str, out: str, seed: int, n_crops: int, epochs: int = 0) -> str:
    from nodulekit import evaluation as ev
    from nodulekit import phantom
    from nodulekit.utils import write_json

    real = _load(data)
    recipe = _recipe(name, epochs, name=f"synthetic_{name}")
    synthetic = phantom.generate_crops(n_crops, size=64, seed=seed)
    pipeline = recipe.pipeline()
    model, history = ev.train_recipe(pipeline.apply(synthetic.images), ev.training_targets(synthetic, recipe), synthetic.groups, recipe, seed=seed)
    result = {"recipe": recipe.to_dict(), "n_synthetic": n_crops, "history": history.to_dict(orient="list")}
    for variant, change in VARIANTS.items():
        _, binary = ev.predict_recipe(model, pipeline.apply(real.images), recipe.replace(**change))
        result[variant] = ev.score_predictions(real, binary)
    write_json(Path(out) / f"synthetic_{name}.json", result)
    _save_weights_only(model, Path(out) / f"synthetic_only_{name}.keras")
    return f"synthetic-only {name}: real nodule Dice {result['plain']['nodule_dice']:.3f} / TTA+PP {result['tta_pp']['nodule_dice']:.3f}"


def _save_weights_only(model, path: Path) -> None:
    """Save an uncompiled copy (no optimizer state: a third of the size)."""
    import keras

    clean = keras.Model.from_config(model.get_config())  # uncompiled: no optimizer state saved
    clean.set_weights(model.get_weights())
    clean.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CropSet .npz of 64x64 LIDC crops, or the LIDC PNG release folder")
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe names")
    parser.add_argument("--folds", default="0,1,2,3")
    parser.add_argument("--n-folds", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=1, help="units run at once (processes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--final", default="", help="also train these recipes (comma-separated) on all patients and save them")
    parser.add_argument(
        "--final-best", action="store_true", help="after the CV, train the recipe of the best TTA+PP nodule Dice (all folds done, default width) on all patients"
    )
    parser.add_argument("--exclude", default="", help="--final without these patients (comma-separated), e.g. a scan kept for a whole-scan check")
    parser.add_argument("--synthetic", default="", help="also train this recipe on synthetic crops only")
    parser.add_argument("--synthetic-crops", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=0, help="override every recipe's epochs (for a quick check)")
    parser.add_argument(
        "--precision", default="float32", help="Keras dtype policy of the CV units: float32, mixed_bfloat16, mixed_float16 or auto (TrainConfig.mixed_precision)"
    )
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    tasks = []
    # spawn, not fork: a forked JAX/CUDA process can deadlock (the parent has imported Keras).
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for name in filter(None, args.final.split(",")):
            tasks.append(pool.submit(_final, args.data, name, args.out, args.seed, args.epochs, tuple(filter(None, args.exclude.split(",")))))
        if args.synthetic:
            tasks.append(pool.submit(_synthetic, args.data, args.synthetic, args.out, args.seed, args.synthetic_crops, args.epochs))
        for fold in (int(f) for f in args.folds.split(",")):  # fold-major: every recipe gets fold 0 first
            for name in filter(None, args.recipes.split(",")):
                tasks.append(pool.submit(_unit, args.data, name, fold, args.n_folds, args.out, args.seed, args.precision, args.epochs))
        for task in as_completed(tasks):
            try:
                print(task.result(), flush=True)
            except Exception as exc:  # one failed unit must not stop the others
                print(f"unit failed: {type(exc).__name__}: {exc}", flush=True)
    summary = summarise(args.out)
    print(json.dumps(summary, indent=1))
    if args.final_best:
        best = best_recipe(args.out, n_folds=args.n_folds)
        print(f"best recipe: {best}; training it on all patients", flush=True)
        print(_final(args.data, best, args.out, args.seed, args.epochs), flush=True)
    return 0


def best_recipe(folder: str, *, n_folds: int = 4, variant: str = "tta_pp") -> str:
    """The recipe in ``folder`` with the best mean ``variant`` nodule Dice over all ``n_folds`` folds
    (recipes of the default width only: the shipped model stays a few MB)."""
    import numpy as np

    scores: dict = {}
    for path in sorted(Path(folder).glob("cv_*_fold*.json")):
        result = json.loads(path.read_text())
        if result.get("recipe_fields", {}).get("model_options", {}).get("filters") is None:
            scores.setdefault(result["recipe"], []).append(result[variant]["nodule_dice"])
    complete = {name: float(np.mean(v)) for name, v in scores.items() if len(v) == n_folds}
    if not complete:
        raise SystemExit(f"no recipe with all {n_folds} folds in {folder}")
    return max(complete, key=complete.get)


def summarise(folder: str) -> dict:
    """Mean ± sd over folds of every recipe and variant found in ``folder``."""
    import numpy as np

    table: dict = {}
    for path in sorted(Path(folder).glob("cv_*_fold*.json")):
        result = json.loads(path.read_text())
        for variant in (v for v in SEARCH_VARIANTS if v in result):
            key = f"{result['recipe']}/{variant}"
            for metric in ("nodule_dice", "slice_dice"):
                table.setdefault(key, {}).setdefault(metric, []).append(result[variant][metric])
    return {key: {m: f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.3f} (n={len(v)})" for m, v in metrics.items()} for key, metrics in table.items()}


if __name__ == "__main__":
    raise SystemExit(main())
