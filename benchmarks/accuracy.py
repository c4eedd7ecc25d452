"""Accuracy check of the speed changes: validation Dice of the faster default vs the float32 one.

A patient-grouped cross-validation (``nodulekit.splits.patient_kfold``) of the Attention U-Net,
trained exactly as ``run_protocol`` trains a fold (``nodulekit.training.units.train_unit``: the
``tf.data`` pipeline with augmentation, focal Tversky loss, Adam, lowest-validation-loss
checkpoint, scored with ``nodulekit.metrics.segmentation_report`` at threshold 0.5), once per
configuration with the same seed, split and initial weights:

* ``float32``  — ``TrainConfig()`` as it is (float32 unless its default changes);
* ``proposed`` — the same with ``throughput.PROPOSED`` (mixed bfloat16 on CPUs with AVX512-BF16,
  batched augmentation);
* ``bfloat16`` — only the precision changed; ``batched`` — only the augmentation changed
  (``--configs float32,bfloat16,batched,proposed`` to tell the two changes apart).

Data: the LIDC dev set (``../shared/data/lidc/LIDC-IDRI-slices``, 64x64 centre crops, paper
preprocessing) when present, else 1,200 phantom crops. Prints one row per fold and configuration
and the paired difference of the mean validation Dice; saves ``results/accuracy_<date>.json``.

Usage::

    .venv/bin/python benchmarks/accuracy.py                  # 4 folds x 6 epochs (about 30 min on 2 busy cores)
    .venv/bin/python benchmarks/accuracy.py --folds 2 --epochs 3 --max-patients 60   # shorter
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from end_to_end import LIDC_SLICES  # noqa: E402


def load_data(*, max_patients: int | None, seed: int):
    """Preprocessed images, masks and patient groups (LIDC dev set, else phantom crops)."""
    from nodulekit.preprocessing import paper_pipeline

    if LIDC_SLICES.is_dir():
        from nodulekit.readers import read_lidc_release

        crops = read_lidc_release(LIDC_SLICES, crop_size=64, progress=False)
        source = "LIDC dev set"
    else:
        from nodulekit.phantom import generate_crops

        crops = generate_crops(1200, seed=seed)
        source = "phantom crops (LIDC dev set absent)"
    groups = np.asarray(crops.table["patient_id"])
    if max_patients is not None:
        chosen = np.random.default_rng(seed).permutation(np.unique(groups))[:max_patients]
        keep = np.isin(groups, chosen)
        images, masks, groups = crops.images[keep], crops.masks[keep], groups[keep]
    else:
        images, masks = crops.images, crops.masks
    images = paper_pipeline().apply(images)
    return np.asarray(images, np.float32), np.asarray(masks, np.uint8), groups, source


def _config(name: str, base):
    """The TrainConfig of a named configuration (``batched``/``proposed`` patch the training module's dataset)."""
    import nodulekit.training.units as units

    from variants import make_dataset_batched

    if name == "float32":
        return base
    if name == "bfloat16":
        return base.replace(mixed_precision="auto")
    if name == "batched":
        units.make_dataset = make_dataset_batched
        return base
    if name == "proposed":
        import end_to_end

        return end_to_end._proposed_config(base)
    raise SystemExit(f"unknown configuration {name!r}; known: float32, bfloat16, batched, proposed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=4, help="folds to train (of a 4-fold split)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-patients", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", default="float32,proposed", help="comma-separated: float32, bfloat16, batched, proposed")
    parser.add_argument(
        "--output-bias", choices=("default", "none", "prior"), default="default",
        help="TrainConfig.output_bias: nodulekit's default, Keras's zero (none) or the foreground prior",
    )
    parser.add_argument("--output", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)

    from nodulekit.splits import patient_kfold
    from nodulekit.training import TrainConfig
    from nodulekit.training.distributed import resolve_precision
    from nodulekit.training.units import UnitData, UnitSpec, train_unit
    from nodulekit.utils import set_seed

    images, masks, groups, source = load_data(max_patients=args.max_patients, seed=args.seed)
    base = TrainConfig(epochs=args.epochs, seed=args.seed)
    if args.output_bias != "default":
        base = base.replace(output_bias=None if args.output_bias == "none" else "prior")
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    set_seed(args.seed, deterministic_ops=base.deterministic)
    folds = patient_kfold(groups, n_folds=4, seed=args.seed)[: args.folds]
    print(
        f"{source}: {len(images)} crops of {len(np.unique(groups))} patients; {len(folds)} folds x {args.epochs} epochs; "
        f"output_bias {getattr(base, 'output_bias', 'n/a (no such TrainConfig field)')}",
        flush=True,
    )

    import nodulekit.training.units as units

    original_make_dataset = units.make_dataset
    rows = []
    for fold, (train, val) in enumerate(folds):
        data = UnitData(images[train], masks[train], images[val], masks[val], fingerprint=f"accuracy-{fold}")
        for name in names:
            units.make_dataset = original_make_dataset
            config = _config(name, base)
            spec = UnitSpec("cv", "attention_unet", args.learning_rate, args.batch_size, args.epochs, fold=fold)
            folder = Path(tempfile.mkdtemp(prefix="nodulekit-accuracy-"))
            start = time.perf_counter()
            try:
                record = train_unit(spec, data, folder=folder, config=config)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            row = {
                "fold": fold,
                "config": name,
                "precision": resolve_precision(config.mixed_precision),
                "status": record["status"],
                "best_epoch": record.get("best_epoch"),
                "val_dice": record.get("val_dice"),
                "val_iou": record.get("val_iou"),
                "val_recall": record.get("val_recall"),
                "val_precision": record.get("val_precision"),
                "seconds": time.perf_counter() - start,
                "val_dice_per_epoch": [round(h.get("val_dice", float("nan")), 4) for h in record.get("history", [])],
                "val_loss_per_epoch": [round(h.get("val_loss", float("nan")), 4) for h in record.get("history", [])],
                "train_crops": int(len(train)),
                "val_crops": int(len(val)),
            }
            rows.append(row)
            print(
                f"fold {fold} {name:9s} {row['precision']:15s} val Dice {row['val_dice']:.4f}  IoU {row['val_iou']:.4f}  "
                f"best epoch {row['best_epoch']}  {row['seconds']:.0f} s  val Dice per epoch {row['val_dice_per_epoch']}",
                flush=True,
            )
    units.make_dataset = original_make_dataset

    mean = {name: statistics.mean(r["val_dice"] for r in rows if r["config"] == name) for name in names}
    parts = ["mean val Dice: " + ", ".join(f"{name} {value:.4f}" for name, value in mean.items())]
    for name in names[1:]:
        differences = [
            other["val_dice"] - first["val_dice"]
            for first, other in zip((r for r in rows if r["config"] == names[0]), (r for r in rows if r["config"] == name))
        ]
        spread = statistics.stdev(differences) if len(differences) > 1 else float("nan")
        speed = statistics.mean(r["seconds"] for r in rows if r["config"] == names[0]) / statistics.mean(
            r["seconds"] for r in rows if r["config"] == name
        )
        parts.append(
            f"{name} - {names[0]}: paired difference {statistics.mean(differences):+.4f} (sd over folds {spread:.4f}, "
            f"n={len(differences)}); trains {speed:.2f}x as fast (wall, same run)"
        )
    summary = "; ".join(parts)
    print(summary)
    args.output.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    path = args.output / f"accuracy_{stamp}_{'-'.join(names)}{'' if args.output_bias == 'default' else '_bias-' + args.output_bias}.json"
    path.write_text(json.dumps({"source": source, "settings": vars(args) | {"output": str(args.output)}, "rows": rows, "summary": summary}, indent=1) + "\n")
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
