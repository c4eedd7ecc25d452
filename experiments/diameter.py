"""Longest axial diameter on the LIDC-IDRI dev crops (issue 9): is the 0001 shortfall general, and
would growing the mask into dense margin structures (spicules) fix it?

On LIDC-IDRI-0001 the model's longest axial diameter is 3.7-4.9 mm short of the consensus, because
the readers drew two thin spicules the model leaves out. This script measures the same quantity on
every dev nodule (64x64 centre crops; the measurement of :func:`nodulekit.inference.measure_nodules`,
the Feret diameter on the nodule's largest slice; the release stores no spacing, so it is measured in
pixels and reported in mm at the release's nominal 0.7 mm/px):

- the shipped model (TTA + central component, as its card) against the 50 % consensus;
- the human reference: each radiologist against the 50 % consensus of the other readers;
- a rule that grows the model's mask geodesically, ``reach`` pixels at most, into pixels brighter
  than ``background + level * (nodule - background)`` (per slice: nodule = median inside the mask,
  background = 25th percentile of a ring 3-6 px outside). The level is relative, so it works on
  per-crop-scaled 8-bit crops and on HU alike. On 0001 (HU) such a rule brings the diameter within
  2 mm; the question is what it does to the other 600 nodules.

The shipped model was trained on all 191 dev patients, so its numbers here are in-sample (better
than on unseen patients); the comparison between the model with and without the rule is not.

    python experiments/diameter.py --release ../shared/data/lidc/LIDC-IDRI-slices --out experiments/results
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
from scipy import ndimage

#: Relative brightness levels and geodesic reaches (pixels) of the growth rule.
LEVELS = (0.3, 0.5, 0.7)
REACHES = (1, 2, 3)
RING = (3, 6)  # background ring, pixels outside the mask
#: The release states "about 0.7 mm/px" and stores no spacing; errors are converted with it.
PIXEL_MM = 0.7


def grow(mask: np.ndarray, image: np.ndarray, *, level: float, reach: int) -> np.ndarray:
    """Grow a 2-D mask at most ``reach`` pixels into pixels brighter than the relative ``level``."""
    if not mask.any():
        return mask
    inside = np.median(image[mask])
    ring = ndimage.binary_dilation(mask, iterations=RING[1]) & ~ndimage.binary_dilation(mask, iterations=RING[0] - 1)
    background = np.percentile(image[ring], 25) if ring.any() else image.min()
    bright = image > background + level * (inside - background)
    return ndimage.binary_dilation(mask, iterations=reach, mask=bright | mask)


def diameters(masks: np.ndarray, table: pd.DataFrame) -> pd.Series:
    """Longest axial diameter (pixels) of each nodule's largest 3-D component; NaN where empty."""
    from nodulekit.inference import measure_nodules

    out = {}
    for nodule, rows in table.groupby("nodule_id", sort=False):
        rows = rows.sort_values("slice_index")
        stack = masks[rows.index.to_numpy()]
        if not stack.any():
            out[nodule] = np.nan
            continue
        _, found = measure_nodules(stack, spacing=(1.0, 1.0, 1.0))  # the release stores no spacing: pixels
        out[nodule] = float(found.sort_values("voxels").iloc[-1]["diameter_px"])
    return pd.Series(out, name="diameter_px")


def summary(errors: pd.Series, dice: pd.Series | None = None) -> dict:
    """Mean, mean absolute and share within 2 mm of the diameter errors (pixels in, mm out)."""
    errors = errors.dropna() * PIXEL_MM
    row = {"n": int(len(errors)), "mean_error_mm": round(float(errors.mean()), 2), "mean_abs_error_mm": round(float(errors.abs().mean()), 2), "within_2mm": round(float((errors.abs() <= 2).mean()), 3), "short_by_over_2mm": round(float((errors < -2).mean()), 3)}
    if dice is not None:
        row["nodule_dice"] = round(float(dice.mean()), 4)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", required=True, help="the LIDC-IDRI PNG release folder")
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args(argv)

    from nodulekit import load_pretrained, metrics
    from nodulekit.crops import center_crop
    from nodulekit.evaluation import reader_versus_others
    from nodulekit.readers import read_lidc_release
    from nodulekit.utils import write_json

    crops = read_lidc_release(args.release)
    model = load_pretrained()
    size = model.segmenter.window
    images = center_crop(crops.images, size)
    truth = center_crop(crops.masks, size).astype(bool)
    readers = np.stack([center_crop(crops.reader_masks[:, k], size) for k in range(crops.reader_masks.shape[1])], axis=1).astype(bool)
    table = crops.table.reset_index(drop=True)
    ids = table["nodule_id"].to_numpy()

    truth_mm = diameters(truth, table)
    predicted = model.predict_masks(images).astype(bool)
    rows = []

    def score(name: str, masks: np.ndarray, **settings) -> None:
        dice = metrics.per_nodule_dice(truth, masks, ids, empty="exclude").set_index("nodule_id")["dice"]
        found = diameters(masks, table)
        missed = int((truth_mm.notna() & found.isna()).sum())  # left out of the diameter errors
        rows.append({"masks": name, **settings, **summary(found - truth_mm, dice), "missed": missed})
        print(rows[-1], flush=True)

    score("shipped model (TTA + central component, in-sample)", predicted)
    for level in LEVELS:
        for reach in REACHES:
            grown = np.stack([grow(m, im, level=level, reach=reach) for m, im in zip(predicted, images)])
            score("shipped model + growth rule", grown, level=level, reach=reach)

    # The human reference: each reader against the 50 % consensus of the others who marked the nodule.
    errors = []
    for reader, keep, others in reader_versus_others(readers, ids):
        sub = table[keep].reset_index(drop=True)
        errors.append(diameters(readers[keep, reader], sub) - diameters(others, sub))
    human = pd.concat(errors)
    rows.append({"masks": "each radiologist vs the others' 50 % consensus", **summary(human)})
    print(rows[-1])
    print(pd.DataFrame(rows).to_string(index=False))
    write_json(Path(args.out) / "diameter.json", {"release": Path(args.release).name, "n_nodules": int(truth_mm.notna().sum()), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
