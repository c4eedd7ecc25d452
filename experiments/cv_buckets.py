"""What to expect on new patients (issue 20): the cached CV of a recipe, by reader count and by size.

Reads the per-nodule Dice of every held-out nodule from the cached folds
(``experiments/results/cv_<recipe>_fold<k>.json``, written by ``nodulekit.evaluation.cross_validate``;
no training here), joins each nodule's reader count and largest consensus area from the LIDC release,
and writes the per-bucket means, the spread over folds, and the CV mean re-weighted to another
population's mix of reader counts (``--mix``): whether a population's case mix alone explains a lower
score there.

    python experiments/cv_buckets.py --release ../shared/data/lidc/LIDC-IDRI-slices --recipe bn_aug \
        --mix 638,394,371,621 --out experiments/results

About 15 s on the 2-core CPU (reading the release).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nodulekit.readers import read_lidc_release  # noqa: E402
from nodulekit.utils import read_json, write_json  # noqa: E402

#: Size buckets of issue 20: the largest consensus area of the nodule on one slice, in pixels (~0.7 mm).
AREA_EDGES = (0, 30, 100, 400, np.inf)
AREA_LABELS = ("<=30 px", "31-100 px", "101-400 px", ">400 px")


def nodule_facts(release: str) -> pd.DataFrame:
    """Reader count and largest consensus area (pixels, 64x64 crops) of every dev nodule."""
    crops = read_lidc_release(release, crop_size=64, progress=False)
    table = crops.table.assign(area=crops.masks.reshape(len(crops.masks), -1).sum(axis=1))
    facts = table.groupby("nodule_id").agg(patient_id=("patient_id", "first"), readers=("n_readers", "first"), area=("area", "max"))
    facts["size"] = pd.cut(facts["area"], AREA_EDGES, labels=AREA_LABELS, include_lowest=True)
    return facts


def fold_scores(results: Path, recipe: str) -> pd.DataFrame:
    """Per-nodule Dice of every held-out nodule, one row per (fold, variant, nodule)."""
    rows = []
    paths = sorted(results.glob(f"cv_{recipe}_fold*.json"))
    if not paths:
        raise SystemExit(f"no cached folds cv_{recipe}_fold*.json in {results}")
    for path in paths:
        record = read_json(path)
        for variant in ("plain", "tta_pp"):
            if variant in record:
                rows.append(pd.DataFrame(record[variant]["per_nodule"]).assign(fold=record["fold"], variant=variant))
    return pd.concat(rows, ignore_index=True)


def summarise(scores: pd.DataFrame, facts: pd.DataFrame, mix: dict[int, int] | None) -> dict:
    joined = scores.join(facts, on="nodule_id")
    out: dict = {}
    for variant, part in joined.groupby("variant"):
        per_fold = part.groupby("fold")["dice"].mean()
        by_readers = part.groupby("readers")["dice"].agg(["mean", "size"])
        entry = {
            "nodules": int(len(part)),
            "mean": float(part["dice"].mean()),
            "fold_means": [round(float(v), 4) for v in per_fold],
            "fold_sd": float(per_fold.std(ddof=1)),
            "by_readers": {int(k): {"mean": round(float(v["mean"]), 4), "nodules": int(v["size"])} for k, v in by_readers.iterrows()},
            "by_size": {
                str(k): {"mean": round(float(v["mean"]), 4), "nodules": int(v["size"])}
                for k, v in part.groupby("size", observed=True)["dice"].agg(["mean", "size"]).iterrows()
            },
            "readers_ge3": float(part.loc[part["readers"] >= 3, "dice"].mean()),
        }
        if mix:
            weights = pd.Series(mix, dtype=float)
            entry["reweighted_to_mix"] = float((by_readers["mean"].reindex(weights.index) * weights).sum() / weights.sum())
        out[variant] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", required=True, help="the LIDC PNG release (LIDC-IDRI-slices)")
    parser.add_argument("--recipe", default="bn_aug")
    parser.add_argument("--results", default="experiments/results", help="folder of the cached folds")
    parser.add_argument("--mix", help="nodules marked by 1,2,3,4 readers in another population, e.g. 638,394,371,621")
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args(argv)
    mix = None
    if args.mix:
        counts = [int(c) for c in args.mix.split(",")]
        mix = dict(zip(range(1, len(counts) + 1), counts))
    summary = summarise(fold_scores(Path(args.results), args.recipe), nodule_facts(args.release), mix)
    summary["mix"] = mix
    path = Path(args.out) / f"cv_{args.recipe}_buckets.json"
    write_json(path, summary)
    for variant in ("plain", "tta_pp"):
        if variant in summary:
            s = summary[variant]
            print(f"{variant}: {s['mean']:.3f} over {s['nodules']} nodules (folds sd {s['fold_sd']:.3f}); >=3 readers {s['readers_ge3']:.3f}")
            print("  by readers:", {k: v["mean"] for k, v in s["by_readers"].items()})
            print("  by size:   ", {k: v["mean"] for k, v in s["by_size"].items()})
            if mix:
                print(f"  re-weighted to the mix {mix}: {s['reweighted_to_mix']:.3f}")
    print("written", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
