"""End-to-end rows of the benchmark, one process per row (so that each row's peak memory is its own).

``python end_to_end.py ROW [--quick]`` runs one row and prints one ``@@{json}`` line with
``seconds`` (wall), ``cpu_seconds``, ``peak_rss_mb`` (``getrusage`` maxrss of the process, which
includes the imports), ``items`` and ``note``; a row whose nodulekit module is not there yet
answers ``{"error": "n/a (module missing: ...)"}``, a row whose data is absent
``{"error": "skipped (...)"}``.

Rows
----
``import``          import nodulekit with its models, losses and training modules (TensorFlow, Keras)
``phantom``         ``nodulekit.phantom.generate_crops(1000)`` (quick: 100)
``lidc``            ``nodulekit.readers.read_lidc_release`` of the LIDC dev set, 64x64 centre crops
                    (quick: the first 20 patients); skipped when ../shared/data is absent
``quick_protocol``  ``run_protocol(config=TrainConfig.quick())``: the whole grid + CV code path on tiny data
``fold``            one full cross-validation fold as ``run_protocol`` trains it: Attention U-Net,
                    learning rate 1e-3, batch 16, 30 epochs, on the default data (``TrainConfig()``:
                    phantom crops, paper preprocessing, patient split, fold 1 of 4), training,
                    checkpointing and scoring included (quick: 2 epochs)
``fold_proposed``   the same with the changes of ``throughput.PROPOSED`` (precision ``auto``,
                    batched augmentation patched into the training module)
``grid``            ``grid_search`` of four grid trials as the paper's protocol runs them (Attention
                    U-Net, learning rates 1e-3 and 1e-2 x batch sizes 8 and 16, 5 epochs each, the
                    default data), one after the other in this process (``workers=1``); setup and
                    checkpoints included (quick: 1 epoch, 200 crops)
``grid_workers``    the same four trials with the default ``TrainConfig.workers="auto"`` (side by side
                    in worker processes: 2 on a CPU-only machine); the run prints the ratio to ``grid``
``scan``            ``Segmenter.segment`` of a 133-slice 512x512 CT with the shipped pretrained model
                    (``nodulekit/pretrained/lidc_attention_unet``, its saved settings: lung mask,
                    preprocessing, mode, threshold; 3-D nodules), as ``nodulekit segment --model
                    pretrained`` runs it; the real LIDC-IDRI-0001 series when ../shared/data is
                    there, else ``generate_volume(n_slices=133)`` (quick: 16 slices)
``scan_proposed``   the same with the float32 model run in the proposed precision
                    (``variants.with_precision``: bfloat16 on CPUs with AVX512-BF16)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["ROWS", "run_row", "main"]

HERE = Path(__file__).resolve().parent
SHARED_DATA = Path(os.environ.get("NODULEKIT_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
LIDC_SLICES = SHARED_DATA / "lidc" / "LIDC-IDRI-slices"
LIDC_SCAN = SHARED_DATA / "lidc" / "LIDC-IDRI-0001"

ROWS = ("import", "phantom", "lidc", "quick_protocol", "fold", "fold_proposed", "grid", "grid_workers", "scan", "scan_proposed")


class Skip(Exception):
    """The row's input data is absent."""


def _row_import(quick: bool) -> dict[str, Any]:
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    import nodulekit  # noqa: F401
    import nodulekit.losses  # noqa: F401
    import nodulekit.models  # noqa: F401
    import nodulekit.training  # noqa: F401

    return {"items": 1, "note": f"TensorFlow {tensorflow.__version__}, Keras {keras.__version__}"}


def _row_phantom(quick: bool) -> dict[str, Any]:
    from nodulekit.phantom import generate_crops

    n = 100 if quick else 1000
    crops = generate_crops(n, size=64, seed=0)
    return {"items": len(crops.images), "unit": "crops", "note": f"{n} crops, 64x64, seed 0"}


def _row_lidc(quick: bool) -> dict[str, Any]:
    from nodulekit.readers import read_lidc_release

    if not LIDC_SLICES.is_dir():
        raise Skip(f"skipped (LIDC dev set absent: {LIDC_SLICES})")
    options: dict[str, Any] = {"crop_size": 64, "progress": False}
    if quick:
        options["patients"] = 20
    crops = read_lidc_release(LIDC_SLICES, **options)
    patients = crops.table["patient_id"].nunique() if "patient_id" in crops.table else "?"
    return {"items": len(crops.images), "unit": "crops", "note": f"{len(crops.images)} crops of {patients} patients, 64x64"}


def _row_quick_protocol(quick: bool) -> dict[str, Any]:
    from nodulekit.training import TrainConfig, run_protocol

    config = TrainConfig.quick()
    folder = Path(tempfile.mkdtemp(prefix="nodulekit-bench-quick-"))
    try:
        results = run_protocol(None, run_dir=folder, config=config, progress=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    units = len(results["grid"]) + len(results["folds"])
    return {"items": units, "unit": "units", "note": f"{units} units (grid {len(results['grid'])} + folds {len(results['folds'])}), precision {config.mixed_precision}"}


def _proposed_config(config):
    sys.path.insert(0, str(HERE))
    from throughput import PROPOSED

    if PROPOSED["mixed_precision"] is not None:
        config = config.replace(mixed_precision=PROPOSED["mixed_precision"])
    if PROPOSED["batched_augmentation"]:
        import nodulekit.training.units as units
        from variants import make_dataset_batched

        units.make_dataset = make_dataset_batched  # prototype only; see README for the change to data.py
    return config


def _row_fold(quick: bool, *, proposed: bool = False) -> dict[str, Any]:
    from nodulekit.training import TrainConfig
    from nodulekit.training.distributed import resolve_precision
    from nodulekit.training.protocol import _Protocol
    from nodulekit.training.units import UnitSpec

    config = TrainConfig(architectures=("attention_unet",), learning_rates=(1e-3,), batch_sizes=(16,))
    if quick:
        config = config.replace(epochs=2, synthetic_crops=200)
    if proposed:
        config = _proposed_config(config)
    folder = Path(tempfile.mkdtemp(prefix="nodulekit-bench-fold-"))
    try:
        protocol = _Protocol(None, run_dir=folder, config=config, progress=False)
        spec = UnitSpec("cv", "attention_unet", 1e-3, 16, config.epochs, fold=0)
        data = protocol.unit_data(spec)
        start = time.perf_counter()
        record = protocol.run_unit(spec)
        train_seconds = time.perf_counter() - start
        protocol.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    n_train = len(data.train_images)
    return {
        "items": config.epochs,
        "unit": "epochs",
        "note": (
            f"{n_train} train / {len(data.val_images)} val / {len(data.test_images)} test crops, "
            f"{config.epochs} epochs, {resolve_precision(config.mixed_precision)}; unit {train_seconds:.0f} s; "
            f"val Dice {record.get('val_dice', float('nan')):.3f}"
        ),
        "unit_seconds": train_seconds,
        "train_images": n_train,
        "epochs": config.epochs,
        "status": record.get("status"),
    }


def _row_grid(quick: bool, *, workers: int | str = 1) -> dict[str, Any]:
    from nodulekit.training import TrainConfig, grid_search
    from nodulekit.training.workers import resolve_workers

    config = TrainConfig(architectures=("attention_unet",), learning_rates=(1e-3, 1e-2), batch_sizes=(8, 16), grid_epochs=5, workers=workers)
    if quick:
        config = config.replace(grid_epochs=1, synthetic_crops=200)
    folder = Path(tempfile.mkdtemp(prefix="nodulekit-bench-grid-"))
    try:
        grid = grid_search(None, run_dir=folder, config=config, progress=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    used = resolve_workers(workers, units=len(grid))
    dice = ", ".join(f"{d:.3f}" for d in grid["val_dice"])
    return {"items": len(grid), "unit": "trials", "note": f"{len(grid)} trials x {config.trial_epochs} epochs, {used} process(es); val Dice {dice}"}


def _row_scan(quick: bool, *, proposed: bool = False) -> dict[str, Any]:
    import numpy as np

    from nodulekit.inference import Segmenter, load_segmenter

    n_slices = 16 if quick else 133
    if LIDC_SCAN.is_dir():
        from nodulekit.readers import read_dicom_series

        volume = read_dicom_series(LIDC_SCAN)
        source = "LIDC-IDRI-0001"
        if quick:
            middle = volume.hu.shape[0] // 2
            volume = type(volume)(hu=volume.hu[middle - n_slices // 2 : middle + n_slices // 2], spacing=volume.spacing)
    else:
        from nodulekit.phantom import generate_volume

        volume = generate_volume(n_slices=n_slices, seed=0)
        source = "phantom"
    # The shipped LIDC-trained model, as `nodulekit segment --model pretrained` uses it: an untrained
    # network thresholds at p ~ 0.5 into thousands of noise components, which would time
    # measure_nodules instead of inference.
    pretrained = Path(__import__("nodulekit").__file__).parent / "pretrained" / "lidc_attention_unet"
    if (pretrained / "model.keras").is_file():
        segmenter = load_segmenter(pretrained)
        model_note = "pretrained lidc_attention_unet"
    else:
        from nodulekit.models import build_model

        segmenter = Segmenter(build_model("attention_unet", (64, 64, 1), output_bias=-6.0), None, window=64, units="HU")
        model_note = "untrained model, output bias -6 (no pretrained model shipped)"
    policy = _policy_name(segmenter.model)
    if proposed:
        sys.path.insert(0, str(HERE))
        from throughput import PROPOSED, _resolve_precision
        from variants import with_precision

        target = _resolve_precision(PROPOSED["mixed_precision"])
        if target != "float32" and policy == "float32":
            segmenter.model = with_precision(segmenter.model, target)
            segmenter._functions.clear()
            policy = target
    start = time.perf_counter()
    result = segmenter.segment(volume, progress=False)
    seconds = time.perf_counter() - start
    slices = int(np.asarray(volume.hu).shape[0])
    counts = getattr(segmenter, "_last_counts", {})
    return {
        "items": slices,
        "unit": "slices",
        "note": (
            f"{source}, {slices}x{volume.hu.shape[1]}x{volume.hu.shape[2]}, {model_note}, mode {segmenter.mode}, {policy}; "
            f"{len(getattr(result, 'nodules', []))} nodules; {counts}"
        ),
        "segment_seconds": seconds,
    }


def _policy_name(model) -> str:
    names = {getattr(getattr(layer, "dtype_policy", None), "name", "float32") for layer in model.layers}
    return "mixed_bfloat16" if "mixed_bfloat16" in names else "mixed_float16" if "mixed_float16" in names else "float32"


_FUNCTIONS = {
    "import": _row_import,
    "phantom": _row_phantom,
    "lidc": _row_lidc,
    "quick_protocol": _row_quick_protocol,
    "fold": _row_fold,
    "fold_proposed": lambda quick: _row_fold(quick, proposed=True),
    "grid": _row_grid,
    "grid_workers": lambda quick: _row_grid(quick, workers="auto"),
    "scan": _row_scan,
    "scan_proposed": lambda quick: _row_scan(quick, proposed=True),
}


def run_row(row: str, *, quick: bool = False) -> dict[str, Any]:
    """Run one row in this process and return its record (see the module docstring)."""
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        record = _FUNCTIONS[row](quick)
    except Skip as exc:
        return {"error": str(exc)}
    except ImportError as exc:
        return {"error": f"n/a (module missing: {exc.name or exc})"}
    except Exception as exc:  # noqa: BLE001 - reported as the row's result
        return {"error": f"failed: {type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}
    record.update(
        seconds=time.perf_counter() - wall,
        cpu_seconds=time.process_time() - cpu,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    )
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one end-to-end benchmark row.")
    parser.add_argument("row", choices=ROWS)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    record = run_row(args.row, quick=args.quick)
    sys.stdout.write("@@" + json.dumps(record, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
