"""The paper's protocol on the LIDC-IDRI dev set (issue 6): its tables, and each fold model per nodule.

``nodulekit train --data ../shared/data/lidc/LIDC-IDRI-slices --crop-size 64 --run-dir runs/lidc``
runs the paper's grid search and 4-fold cross-validation on the real crops and writes its tables
to ``runs/lidc/results`` (per-slice scores on the held-out test patients, empty policy "one").
``runs/`` is not committed, so this script copies the tables into ``--out``, and scores every fold
model of the run once more the way notebook 06 scores recipes: per nodule (3-D Dice pooled over a
nodule's slices), plain and with 8-view TTA + central component, on the same test patients.

    python experiments/lidc_protocol.py --release ../shared/data/lidc/LIDC-IDRI-slices \
        --run-dir runs/lidc --out experiments/results/lidc_protocol
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: The run's tables copied next to the per-nodule scores.
TABLES = ("summary.csv", "selection.csv", "grid.csv", "folds.csv")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", required=True, help="the LIDC-IDRI PNG release folder")
    parser.add_argument("--run-dir", default="runs/lidc", help="the finished `nodulekit train` run folder")
    parser.add_argument("--out", default="experiments/results/lidc_protocol")
    args = parser.parse_args(argv)

    import numpy as np
    import pandas as pd

    from nodulekit import evaluation as ev
    from nodulekit import losses  # noqa: F401  (registers the loss the checkpoints name)
    from nodulekit.crops import center_crop
    from nodulekit.dataset import CropSet
    from nodulekit.preprocessing import Pipeline
    from nodulekit.readers import read_lidc_release
    from nodulekit.safety import load_model
    from nodulekit.utils import write_json

    run, out = Path(args.run_dir), Path(args.out)
    models = sorted(run.glob("cv/*/fold-*/best.keras"))
    missing = [name for name in TABLES if not (run / "results" / name).is_file()]
    if missing or not models:
        raise SystemExit(f"{run}: the run has not finished (missing {missing or 'cv/*/fold-*/best.keras'}); rerun `nodulekit train` with the same arguments")
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        shutil.copyfile(run / "results" / name, out / name)

    test = set(json.loads((run / "data.json").read_text())["split"]["test"])
    crops = read_lidc_release(args.release, progress=False)
    crops = crops.subset(np.flatnonzero(np.isin(crops.groups.astype(str), sorted(test))))
    images = Pipeline.from_config(json.loads((run / "preprocessing.json").read_text())).apply(crops.images)
    scored = CropSet(images, center_crop(crops.masks, images.shape[1:3]), crops.table.reset_index(drop=True), units="zscore")
    rows = []
    for path in models:
        model = load_model(path)
        for variant, change in ev.VARIANTS.items():  # as notebook 06 scores its recipes
            _, binary = ev.predict_recipe(model, images, ev.PAPER_RECIPE.replace(**change))
            scores = ev.score_predictions(scored, binary)
            rows.append({"architecture": path.parts[-3], "fold": path.parts[-2], "variant": variant, **{k: scores[k] for k in ("nodule_dice", "slice_dice", "slice_precision", "slice_recall", "n_nodules", "n_slices")}})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby(["architecture", "variant"])[["nodule_dice", "slice_dice"]].agg(["mean", "std"]).round(3)
    print(summary.to_string())
    write_json(out / "per_nodule.json", {"run": str(run), "test_patients": len(test), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
