"""Whole-scan accuracy (issue 9): does a model find and measure the radiologists' nodule on a real CT?

Trains a recipe on the LIDC-IDRI PNG release's 128x128 crops of every patient except the scan's
(random 64x64 windows, so the model also sees nodule-free lung, vessels and pleura), then segments
the whole scan (DICOM + XML, 50 % consensus) with :class:`nodulekit.inference.Segmenter` in each
mode and threshold, and compares with the consensus mask (found, Dice, longest axial diameter,
false-positive nodules, seconds). The shipped crop-trained model is scored the same way.

    python experiments/whole_scan.py --release ../shared/data/lidc/LIDC-IDRI-slices \
        --scan ../shared/data/lidc/LIDC-IDRI-0001 --out experiments/results

Rerunning reuses a trained model found in ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: Recipes trained here: the shipped recipe (bn_aug) on jittered windows of the 128x128 crops.
RECIPES = {
    "bn_aug_window": {
        "architecture": "attention_unet",
        "model_options": {"output_bias": "prior", "batch_norm": True},
        "augment": True,
        "batch_size": 32,
        "epochs": 20,
        "window": 64,
        "jitter": 32,
    },
}


def train(release: str, scan_patient: str, name: str, out: Path, seed: int):
    """Train ``name`` on every release patient but ``scan_patient``; cached in ``out``."""
    import keras
    import numpy as np

    from nodulekit import evaluation as ev
    from nodulekit.readers import read_lidc_release
    from nodulekit.utils import write_json

    path = out / f"whole_scan_{name}.keras"
    recipe = ev.PAPER_RECIPE.replace(name=name, **RECIPES[name])
    if path.exists():
        return keras.saving.load_model(path, compile=False), recipe
    crops = read_lidc_release(release)  # 128x128 as stored
    keep = np.flatnonzero(crops.groups.astype(str) != scan_patient)
    crops = crops.subset(keep)
    images = recipe.pipeline().apply(crops.images)
    start = time.perf_counter()
    model, history = ev.train_recipe(images, crops.masks, crops.groups, recipe, seed=seed, verbose=2)
    seconds = time.perf_counter() - start
    clean = keras.Model.from_config(model.get_config())  # uncompiled copy: no optimizer state
    clean.set_weights(model.get_weights())
    clean.save(path)
    write_json(out / f"whole_scan_{name}_training.json", {"recipe": recipe.to_dict(), "seconds": seconds, "n_crops": len(crops), "history": history.to_dict(orient="list")})
    return clean, recipe


def score(segmenter, volume, *, label: str, **options) -> dict:
    """Segment ``volume`` and compare with its consensus mask."""
    from nodulekit.inference import match_nodules

    start = time.perf_counter()
    result = segmenter.segment(volume, progress=False, **options)
    seconds = time.perf_counter() - start
    truth = match_nodules(result, volume.mask).iloc[0]
    matched = {int(i) for i in str(truth["matched_ids"]).split()} if truth["found"] else set()
    return {
        "model": label,
        **{k: v for k, v in options.items()},
        "found": bool(truth["found"]),
        "dice": round(float(truth["dice"]), 3),
        "truth_diameter_mm": round(float(truth["diameter_mm"]), 1),
        "found_diameter_mm": round(float(truth["found_diameter_mm"]), 1),
        "diameter_error_mm": round(float(truth["found_diameter_mm"] - truth["diameter_mm"]), 1),
        "false_positive_nodules": int(len(result.nodules) - len(matched)),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", required=True, help="the LIDC-IDRI PNG release folder")
    parser.add_argument("--scan", required=True, help="a DICOM + XML scan folder (LIDC-IDRI-0001)")
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--recipe", default="bn_aug_window", choices=sorted(RECIPES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import pandas as pd

    from nodulekit import load_pretrained
    from nodulekit.inference import Segmenter
    from nodulekit.readers import read_any
    from nodulekit.utils import write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    volume = read_any(args.scan)
    patient = Path(args.scan).name
    model, recipe = train(args.release, patient, args.recipe, out, args.seed)
    shipped = load_pretrained(tta=False).segmenter
    windowed = Segmenter(model, recipe.pipeline(), window=64, units="uint8", mode="full")
    rows = []
    for label, segmenter in (("shipped (centre crops)", shipped), (f"{args.recipe} (jittered windows)", windowed)):
        for mode in ("full", "sliding"):
            for threshold in (0.5, 0.7, 0.9):
                rows.append(score(segmenter, volume, label=label, mode=mode, threshold=threshold))
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    write_json(out / f"whole_scan_{args.recipe}.json", {"scan": patient, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
