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
        "truth_equivalent_diameter_mm": round(float(truth["equivalent_diameter_mm"]), 1),
        "found_equivalent_diameter_mm": round(float(truth["found_equivalent_diameter_mm"]), 1),
        "equivalent_diameter_error_mm": round(float(truth["found_equivalent_diameter_mm"] - truth["equivalent_diameter_mm"]), 1),
        "false_positive_nodules": int(len(result.nodules) - len(matched)),
        "seconds": round(seconds, 1),
    }


def reader_sizes(volume) -> list[dict]:
    """Each radiologist's own longest axial and equivalent diameter of the scan's first nodule."""
    from nodulekit.inference import measure_nodules

    readers = next(iter(volume.meta["nodule_masks"].values()))["reader_masks"]
    rows = []
    for reader, mask in enumerate(readers):
        _, table = measure_nodules(mask > 0, spacing=volume.spacing)
        rows.append({"reader": reader, "diameter_mm": round(float(table["diameter_mm"].max()), 1), "equivalent_diameter_mm": round(float(table["equivalent_diameter_mm"].max()), 1)})
    return rows


def plot_contours(volume, segmenters: dict, path: Path, *, margin: int = 50) -> None:
    """The nodule's middle slices: the four readers (cyan), the 50 % consensus (yellow), each model (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from skimage import measure

    from nodulekit.inference import lung_mask
    from nodulekit.plots import save_figure

    record = next(iter(volume.meta["nodule_masks"].values()))
    offset, readers = record["offset"], record["reader_masks"]
    from skimage.measure import regionprops

    _, y, x = (int(round(v)) for v in volume.nodules.iloc[0][["z", "y", "x"]])
    widest = max(range(len(volume.mask)), key=lambda z: max((r.feret_diameter_max for r in regionprops(volume.mask[z].astype(int))), default=0))
    slices = [widest - 2, widest, widest + 2]  # the consensus's longest axial diameter is on the middle one
    box = (slice(y - margin, y + margin), slice(x - margin, x + margin))
    lung = lung_mask(volume.hu, spacing=volume.spacing, progress=False)
    fig, axes = plt.subplots(len(segmenters), len(slices), figsize=(3.2 * len(slices), 3.3 * len(segmenters)), squeeze=False)
    for row, (label, segmenter) in enumerate(segmenters.items()):
        probabilities = segmenter.predict(volume.hu[slices], region=lung[slices], progress=False)
        for column, z in enumerate(slices):
            ax = axes[row, column]
            ax.imshow(np.clip(volume.hu[z][box], -1000, 400), cmap="gray")
            k = z - offset[0]
            for reader in readers[:, k] if 0 <= k < readers.shape[1] else []:
                full = np.zeros(volume.hu.shape[1:], np.float32)
                full[offset[1] : offset[1] + reader.shape[0], offset[2] : offset[2] + reader.shape[1]] = reader
                for c in measure.find_contours(full[box], 0.5):
                    ax.plot(c[:, 1], c[:, 0], color="c", linestyle=":", linewidth=0.8)
            for mask, color in ((volume.mask[z].astype(np.float32), "yellow"), (probabilities[column], "red")):
                for c in measure.find_contours(mask[box], 0.5):
                    ax.plot(c[:, 1], c[:, 0], color=color, linewidth=1)
            ax.set_title(f"{label}, slice {z}", fontsize=8)
            ax.axis("off")
    fig.suptitle("LIDC-IDRI-0001: readers (cyan, dotted), 50 % consensus (yellow), model (red)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, "S4", "whole_scan_lidc0001", folder=path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", required=True, help="the LIDC-IDRI PNG release folder")
    parser.add_argument("--scan", required=True, help="a DICOM + XML scan folder (LIDC-IDRI-0001)")
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--recipe", default="bn_aug_window", choices=sorted(RECIPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figures", default="figures", help="where the contour figure (figS4) goes")
    parser.add_argument("--figure-only", action="store_true", help="only redraw the contour figure")
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
    if args.figure_only:
        plot_contours(volume, {"shipped": shipped, args.recipe: windowed}, Path(args.figures))
        return 0
    rows = []
    for label, segmenter in (("shipped (all 191 patients, 0001 included)", shipped), (f"{args.recipe} (jittered windows)", windowed)):
        for mode in ("full", "sliding"):
            for threshold in (0.5, 0.7, 0.9):
                rows.append(score(segmenter, volume, label=label, mode=mode, threshold=threshold))
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    readers = reader_sizes(volume)
    print("readers:", readers)
    write_json(out / f"whole_scan_{args.recipe}.json", {"scan": patient, "rows": rows, "readers": readers})
    plot_contours(volume, {"shipped": shipped, args.recipe: windowed}, Path(args.figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
