"""The ``nodulekit`` command line: thin entry points to the library.

Subcommands::

    nodulekit segment INPUT [--model MODEL] --out DIR find, outline and measure nodules
    nodulekit train --run-dir DIR [...]               the paper's protocol (grid search + k-fold CV)
    nodulekit evaluate DATA [--model MODEL]           Dice, IoU, precision, recall on labelled crops
    nodulekit froc SCANS... [--model MODEL] --out DIR detection on annotated whole scans: FROC, CPM, ranks
    nodulekit export MODEL --out DIR                  .keras, TensorFlow SavedModel, ONNX
    nodulekit reproduce [--quick]                     run the notebook series (the whole study)

Exit codes (every subcommand):

* 0 — success;
* 1 — nodulekit refused or failed: bad or unreadable input, unloadable model, unwritable output
  (a one-line message on stderr; nothing half-written is left behind);
* 2 — usage error: unknown option, missing argument (argparse's convention);
* 130 — interrupted (Ctrl-C).

MODEL, wherever a command takes one, is anything :func:`nodulekit.model_names.resolve_model`
accepts: a shipped model's name (``lidc_attention_unet``, alias ``pretrained``: the model inside the
package, :mod:`nodulekit.pretrained`, and the default of ``segment`` and ``evaluate``), a run folder
of ``nodulekit train`` (its ``best.keras`` with the preprocessing it was trained with), a ``.keras``
file, or a folder written by ``nodulekit export``. Weights are never downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import DataFormatError, InvalidParameterError, MissingDataError, NodulekitError, RunFolderError
from .model_names import DEFAULT_MODEL, accepted_forms
from .utils import configure_logging

__all__ = ["main", "build_parser", "load_input", "LoadedInput", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE"]

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_EPILOG = "exit codes: 0 success, 1 error (message on stderr, no partial output), 2 usage error, 130 interrupted"


def build_parser() -> argparse.ArgumentParser:
    """The ``nodulekit`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="nodulekit",
        description="Lung-nodule segmentation on CT (U-Net / Attention U-Net, focal Tversky loss).",
        epilog=_EPILOG,
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    model_help = f"the model: {accepted_forms()}"
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    seg = sub.add_parser(
        "segment",
        help="find, outline and measure the nodules in a scan or images",
        description=(
            "Segment INPUT with a trained model and write, into DIR: masks/<slice>.png, mask.npy, labels.npy, "
            "mask.nii.gz (volumes), overlays/<slice>.png (red contours, green boxes; yellow ground truth), "
            "nodules.csv (one row per nodule, sizes in mm; with a second-stage classifier sorted by its calibrated score, with a source column: "
            "segmenter, or blob for the model-free blob candidates of HU volumes), truth_nodules.csv (when INPUT has annotations), "
            "nodules.seg.dcm (DICOM input: a DICOM SEG, one segment per listed nodule) "
            "and summary.json. INPUT: an image file, a folder of images, an images/+masks/ folder, a DICOM "
            "series folder (an LIDC XML beside it is used as ground truth), an .mhd or .nii(.gz) file, a CropSet .npz, "
            "or the LIDC PNG release layout."
        ),
        epilog=_EPILOG,
    )
    seg.add_argument("input", help="image file, image folder, DICOM folder, .mhd/.nii file, CropSet .npz or LIDC PNG release")
    seg.add_argument("--model", "-m", help=f"{model_help} (default: {DEFAULT_MODEL})")
    seg.add_argument("--out", "-o", required=True, help="output folder (written atomically)")
    seg.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    seg.add_argument("--mode", choices=["sliding", "full"], help="sliding windows (training conditions) or whole slices (default: the model's)")
    seg.add_argument("--overlap", type=float, help="sliding-window overlap in [0, 1) (default 0.5)")
    seg.add_argument("--threshold", type=float, help="probability threshold in (0, 1) (default: the model's, 0.5)")
    seg.add_argument("--lungs", choices=["auto", "on", "off"], default="auto", help="restrict to a lung mask (auto: HU scans; no lung found: nothing is searched, use off)")
    seg.add_argument("--min-diameter", type=float, default=3.0, metavar="MM", help="drop nodules smaller than this (default 3 mm)")
    seg.add_argument(
        "--min-score",
        type=float,
        metavar="P",
        help="list only candidates whose second-stage score is at least P, in [0, 1] (default: the model's operating point; 0 lists all)",
    )
    seg.add_argument("--max-nodules", type=int, metavar="N", help="list at most N nodules, the highest scores first")
    seg.add_argument("--pixel-spacing", type=float, metavar="MM", help="pixel size of image inputs that carry none")
    seg.add_argument("--batch-size", type=int, help="windows or slices per model call")
    seg.add_argument("--overlays", choices=["nodules", "all", "none"], default="nodules", help="which slices get an overlay PNG")
    seg.add_argument("--probabilities", action="store_true", help="also write probabilities.npy (float16)")
    seg.add_argument("--no-progress", action="store_false", dest="progress", help="no progress bars")
    seg.set_defaults(func=_segment)

    from .training.protocol import build_parser as training_parser

    train = sub.add_parser(
        "train",
        help="train models with the paper's protocol (grid search + k-fold CV) into a run folder",
        description="Run (or resume) the paper's protocol; the run folder's best.keras + preprocessing.json are the model for `segment`.",
        epilog=_EPILOG,
    )
    training_parser(train)
    train.set_defaults(func=_train)

    evaluate = sub.add_parser(
        "evaluate",
        help="score a model on labelled crops (Dice, IoU, precision, recall, accuracy)",
        description=(
            "Preprocess DATA's crops exactly as in training, predict, and print the segmentation report "
            "(nodulekit.metrics.segmentation_report). DATA: a CropSet .npz, the LIDC PNG release, an "
            "images/+masks/ folder, or 'phantom' (synthetic crops)."
        ),
        epilog=_EPILOG,
    )
    evaluate.add_argument("data", help="CropSet .npz, LIDC PNG release, images/+masks/ folder, or 'phantom'")
    evaluate.add_argument("--model", "-m", help=f"{model_help} (default: {DEFAULT_MODEL})")
    evaluate.add_argument("--threshold", type=float, help="probability threshold (default: the model's)")
    evaluate.add_argument("--patients", type=int, help="only the first N patients (LIDC release)")
    evaluate.add_argument("--n", type=int, default=64, help="number of synthetic crops for 'phantom' (default 64)")
    evaluate.add_argument("--out", "-o", help="also write the report to this JSON file")
    evaluate.add_argument("--no-progress", action="store_false", dest="progress")
    evaluate.set_defaults(func=_evaluate)

    froc = sub.add_parser(
        "froc",
        help="score whole-scan detection on annotated scans (FROC, CPM, each nodule's rank)",
        description=(
            "Run the model and its second stage over annotated whole scans (every candidate kept) and score them with the "
            "LUNA16 definitions of nodulekit.froc: reference = the readers' consensus nodules >= 3 mm, a hit = a candidate "
            "centre on the nodule's slices within d/2 in-plane, sensitivity at 1/8-8 false positives per scan, CPM their "
            "mean. SCANS: .mhd files (annotations.csv beside them), DICOM series folders with their LIDC XML, or folders "
            "holding either (searched recursively). Writes, into DIR: froc.json (CPM, sensitivities, the curve, the "
            "scans), reference_nodules.csv (each reference nodule's rank, score and the false positives scored above it), "
            "candidates.csv (every candidate with its outcome) and froc.png."
        ),
        epilog=_EPILOG,
    )
    froc.add_argument("scans", nargs="+", help="annotated scans, or folders of them")
    froc.add_argument("--model", "-m", help=f"{model_help}, with its second stage (default: {DEFAULT_MODEL})")
    froc.add_argument("--out", "-o", required=True, help="output folder (written atomically)")
    froc.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    froc.add_argument("--no-progress", action="store_false", dest="progress", help="no progress bar")
    froc.set_defaults(func=_froc)

    export = sub.add_parser(
        "export",
        help="export a model as .keras, TensorFlow SavedModel (TF Serving) and ONNX",
        description=(
            "Write DIR/model.keras, DIR/saved_model/ (model.export) and DIR/model.onnx (tf2onnx, the `export` "
            "extra) plus the preprocessing, so DIR is also a --model for `segment`. --check compares every "
            "exported model with Keras on random inputs (max |difference| must be <= 1e-4)."
        ),
        epilog=_EPILOG,
    )
    export.add_argument("model", help=model_help)
    export.add_argument("--out", "-o", required=True, help="output folder (written atomically)")
    export.add_argument("--formats", default="keras,savedmodel,onnx", help="comma-separated subset of keras,savedmodel,onnx")
    export.add_argument("--size", default="model", help="input height x width: 'model' (as trained), e.g. 512x512, or 'any'")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    export.add_argument("--check", action="store_true", help="verify outputs against Keras (and onnxruntime)")
    export.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    export.set_defaults(func=_export)

    rep = sub.add_parser("reproduce", help="run the notebook series 01-06 (the whole study; 06 only with the LIDC data)", epilog=_EPILOG)
    rep.add_argument("--run-dir", default="runs/reproduce", help="where results and figures go")
    rep.add_argument("--notebooks", default="notebooks", help="folder of the numbered notebooks")
    rep.add_argument("--quick", action="store_true", help="QUICK mode: tiny data and few epochs")
    rep.add_argument("--in-place", action="store_true", help="write outputs back into the notebooks")
    rep.set_defaults(func=_reproduce)
    return parser


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclass
class LoadedInput:
    """What ``segment`` works on: one or more stacks of slices/images with names and ground truth."""

    kind: str  # "volume", "crops", "images"
    stacks: list[dict[str, Any]] = field(default_factory=list)  # data, names, truth, spacing, units, connect


def load_input(path: str | os.PathLike, *, pixel_spacing: float | None = None) -> LoadedInput:
    """Read any input ``nodulekit segment`` accepts.

    Parameters
    ----------
    path : path
        An image file; a folder of images; an ``images/`` + ``masks/`` folder; a DICOM series folder
        (searched below for the ``.dcm`` files; an LIDC ``.xml`` beside them gives the ground
        truth); an ``.mhd`` (LUNA16) or ``.nii``/``.nii.gz`` file; a CropSet ``.npz``; the LIDC PNG release (or one patient).
    pixel_spacing : float, optional
        Pixel size in mm for image inputs that carry none.

    Returns
    -------
    LoadedInput

    Raises
    ------
    MissingDataError
        When ``path`` does not exist or holds nothing readable.
    DataFormatError
        When a file cannot be decoded.
    """
    from .dataset import Volume
    from .readers import IMAGE_EXTENSIONS, read_any

    path = Path(os.path.abspath(path))  # absolute, symbolic links kept as given
    if not path.exists():
        raise MissingDataError("no such file or folder", path=path)
    if path.is_file():
        if path.name.lower().endswith(IMAGE_EXTENSIONS):
            return _images_input([path], pixel_spacing)
        data = read_any(path)
    else:
        plain = sorted((p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS)), key=_natural)
        if not plain and (path / "images").is_dir() and not (path / "masks").is_dir():
            plain = sorted((p for p in (path / "images").iterdir() if p.name.lower().endswith(IMAGE_EXTENSIONS)), key=_natural)
        if plain:
            return _images_input(plain, pixel_spacing)
        data = read_any(path)  # also NIfTI volumes (a file, or a folder with exactly one)
    if isinstance(data, Volume):
        return _volume_input(data)
    return _crops_input(data, pixel_spacing)


def _natural(path: Path) -> tuple:
    from .readers._common import natural_key

    return natural_key(path.name)


def _volume_input(volume) -> LoadedInput:
    return LoadedInput(
        "volume",
        [
            {
                "data": volume,
                "names": [f"slice-{k:04d}" for k in range(len(volume.hu))],
                "truth": volume.mask,
                "spacing": None,
                "units": "HU",
                "connect": True,
                "source": str(volume.meta.get("source", volume.meta.get("path", ""))),
                "slice_gaps": volume.meta.get("slice_gaps", []),
            }
        ],
    )


def _crops_input(crops, pixel_spacing: float | None) -> LoadedInput:
    names = []
    for row, (_, record) in enumerate(crops.table.iterrows()):
        stem = f"{record['nodule_id']}_slice-{int(record['slice_index'])}" if "nodule_id" in record else f"image-{row:05d}"
        names.append(stem.replace("/", "_").replace(os.sep, "_"))
    names = _unique(names)
    truth = crops.masks if crops.masks.any() else None
    spacing = None if pixel_spacing is None else (float("nan"), pixel_spacing, pixel_spacing)
    return LoadedInput("crops", [{"data": crops, "names": names, "truth": truth, "spacing": spacing, "units": None, "connect": False, "source": ""}])


def _images_input(paths: Sequence[Path], pixel_spacing: float | None) -> LoadedInput:
    from .readers._common import as_gray, read_image

    groups: dict[tuple[int, int], dict[str, list]] = {}
    for path in paths:
        image = as_gray(read_image(path)).astype(np.float32)
        group = groups.setdefault(image.shape, {"images": [], "names": []})
        group["images"].append(image)
        group["names"].append(path.stem)
    spacing = (float("nan"), float("nan"), float("nan")) if pixel_spacing is None else (float("nan"), pixel_spacing, pixel_spacing)
    stacks = []
    for shape, group in groups.items():
        stacks.append(
            {
                "data": np.stack(group["images"]),
                "names": _unique(group["names"]),
                "truth": None,
                "spacing": spacing,
                "units": "uint8" if max(float(i.max()) for i in group["images"]) <= 255 else "float",
                "connect": False,
                "source": str(paths[0].parent),
                "shape": shape,
            }
        )
    return LoadedInput("images", stacks)


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}-{count}")
    return out


# --------------------------------------------------------------------------------------------------
# Atomic output folder
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _staging(out: Path, *, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside ``out`` renamed onto ``out`` only when the block succeeds."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise RunFolderError("output exists; choose another --out or pass --overwrite", path=out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    except OSError as exc:
        raise RunFolderError(f"cannot write here ({exc.strerror or exc})", path=out.parent) from exc
    try:
        yield staging
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "previous")
        os.replace(staging, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------------


class _UsageError(Exception):
    """A usage problem found after parsing (exit code 2)."""


def _load_model(args: argparse.Namespace):
    from .inference import load_segmenter

    if args.model is None:
        logger.info("no --model given: using the shipped model %s (see its MODEL_CARD.md)", DEFAULT_MODEL)
        args.model = DEFAULT_MODEL
    return load_segmenter(
        args.model,
        threshold=getattr(args, "threshold", None),
        mode=getattr(args, "mode", None),
        overlap=getattr(args, "overlap", None),
    )


def _segment(args: argparse.Namespace) -> int:
    import pandas as pd

    from .inference import write_segmentation
    from .utils import write_json

    segmenter = _load_model(args)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:  # fail before the long part
        raise RunFolderError("output exists; choose another --out or pass --overwrite", path=out)
    if args.min_score is not None and segmenter.classifier is None:
        raise InvalidParameterError(f"--min-score needs a second-stage classifier, and {args.model} has none (no classifier.json)")
    start = time.perf_counter()
    loaded = load_input(args.input, pixel_spacing=args.pixel_spacing)
    lungs = {"auto": "auto", "on": True, "off": False}[args.lungs]
    with _staging(out, overwrite=args.overwrite) as staging:
        summaries, tables, truths = [], [], []
        for index, stack in enumerate(loaded.stacks):
            result = segmenter.segment(
                stack["data"],
                spacing=stack["spacing"],
                units=stack["units"],
                connect_slices=stack["connect"],
                lungs=lungs,
                min_diameter_mm=args.min_diameter,
                min_score=args.min_score,
                max_nodules=args.max_nodules,
                batch_size=args.batch_size,
                progress=args.progress,
            )
            target = staging if len(loaded.stacks) == 1 else staging / f".stack-{index}"
            written = write_segmentation(
                result,
                target,
                names=stack["names"],
                truth=stack["truth"],
                overlays=args.overlays,
                probabilities=args.probabilities,
                source=stack["data"],
                model_name=str(args.model),
                progress=args.progress,
            )
            summaries.append({"info": result.info, "slice_gaps": stack.get("slice_gaps", []), **{k: v for k, v in written.items() if k != "truth"}})
            if written["truth"] is not None:
                truths.extend(written["truth"])
            if len(loaded.stacks) > 1:
                tables.append(_merge_stack(target, staging, stack.get("shape")))
        if len(loaded.stacks) > 1:
            pd.concat(tables, ignore_index=True).to_csv(staging / "nodules.csv", index=False, float_format="%.4g")
        n_nodules = sum(s["n_nodules"] for s in summaries)
        summary = {
            "input": str(args.input),
            "input_kind": loaded.kind,
            "model": str(args.model),
            "segmenter": segmenter.settings(),
            "n_images": int(sum(len(s["names"]) for s in loaded.stacks)),
            "n_nodules": int(n_nodules),
            "stacks": summaries,
            "truth_nodules": truths or None,
            "seconds": round(time.perf_counter() - start, 2),
        }
        write_json(staging / "summary.json", summary)
    _print_segment_summary(out, summary)
    return EXIT_OK


def _froc(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window
    from .froc import annotated_scans, score_scans
    from .plots.detection import plot_froc
    from .utils import write_json

    segmenter = _load_model(args)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:  # fail before the long part
        raise RunFolderError("output exists; choose another --out or pass --overwrite", path=out)
    paths = [scan for given in args.scans for scan in annotated_scans(given)]
    start = time.perf_counter()
    scored = score_scans(paths, segmenter, progress=args.progress)
    summary = {
        "model": str(args.model),
        "operating_point": scored.threshold,
        **scored.froc.to_dict(),
        "scans": scored.scans.to_dict(orient="records"),
        "seconds": round(time.perf_counter() - start, 1),
    }
    with _staging(out, overwrite=args.overwrite) as staging:
        write_json(staging / "froc.json", summary)
        scored.nodules.to_csv(staging / "reference_nodules.csv", index=False)
        scored.candidates.to_csv(staging / "candidates.csv", index=False, float_format="%.6g")
        figure = plot_froc({f"{args.model}": scored.froc}, title=f"{scored.froc.n_scans} annotated scan(s)")
        figure.savefig(staging / "froc.png", dpi=150, bbox_inches="tight")
    _print_froc_summary(out, scored)
    return EXIT_OK


def _print_froc_summary(out: Path, scored) -> None:
    result = scored.froc
    rates = " ".join(f"{v:.2f}" for v in result.sensitivities.values())
    print(f"nodulekit froc: {result.n_scans} scan(s), {result.n_nodules} nodule(s) >= 3 mm, CPM {result.cpm:.3f} -> {out}")
    print(f"  sensitivity at 1/8, 1/4, 1/2, 1, 2, 4, 8 false positives per scan: {rates}")
    for row in scored.scans.itertuples(index=False):
        if row.error:
            print(f"  skipped {row.path}: {row.error}")
    relevant = scored.nodules[~scored.nodules["ignore"].astype(bool)]
    for row in relevant.itertuples(index=False):
        if row.rank != row.rank:  # NaN: no candidate hits it
            found = "no candidate"
        else:
            found = f"rank {int(row.rank)}, score {row.score:.3f}, {int(row.false_positives_above)} false positive(s) above"
            found += "" if row.listed else ", below the operating point"
        print(f"  {row.scan} nodule {row.nodule} ({row.diameter_mm} mm): {found}")


def _merge_stack(source: Path, staging: Path, shape) -> Any:
    """Move one same-size group's files into the output folder (mixed-size image folders)."""
    import pandas as pd

    for folder in ("masks", "overlays"):
        if (source / folder).is_dir():
            (staging / folder).mkdir(exist_ok=True)
            for file in (source / folder).iterdir():
                os.replace(file, staging / folder / file.name)
    suffix = f"-{shape[0]}x{shape[1]}"
    for name in ("mask", "labels", "probabilities"):
        if (source / f"{name}.npy").exists():
            os.replace(source / f"{name}.npy", staging / f"{name}{suffix}.npy")
    table = pd.read_csv(source / "nodules.csv")
    shutil.rmtree(source)
    return table


def _print_segment_summary(out: Path, summary: dict) -> None:
    print(f"nodulekit segment: {summary['n_nodules']} nodule(s) in {summary['n_images']} image(s), {summary['seconds']:.1f} s -> {out}")
    nodules = out / "nodules.csv"
    if summary["n_nodules"] and nodules.exists():
        import pandas as pd

        table = pd.read_csv(nodules)
        columns = [c for c in ("nodule_id", "score", "slice_name", "n_slices", "diameter_mm", "volume_mm3", "mean_hu", "max_probability") if c in table]
        print(table[columns].head(10).to_string(index=False))
    for truth in summary.get("truth_nodules") or []:
        print(
            f"ground-truth nodule {truth['truth_id']}: {'found' if truth['found'] else 'MISSED'}, "
            f"dice {truth['dice']:.3f}, diameter {truth['diameter_mm']:.1f} mm (found {truth['found_diameter_mm']:.1f} mm)"
        )


def _train(args: argparse.Namespace) -> int:
    from .training.protocol import main as training_main

    return training_main(args.train_argv)


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from .dataset import CropSet
    from .utils import write_json

    segmenter = _load_model(args)
    if args.data == "phantom":
        from .phantom import generate_crops

        crops = generate_crops(int(args.n), size=segmenter.window, seed=12345)
    elif str(args.data).endswith(".npz"):
        crops = CropSet.load(args.data)
    else:
        loaded = load_input(args.data)
        if loaded.kind != "crops":
            raise DataFormatError("evaluate needs labelled crops (a CropSet .npz, the LIDC release or an images/+masks/ folder)", path=args.data)
        crops = loaded.stacks[0]["data"]
        if args.patients:
            keep = list(dict.fromkeys(crops.table["patient_id"]))[: int(args.patients)]
            crops = crops.subset(crops.table["patient_id"].isin(keep).to_numpy())
    report = segmenter.evaluate(crops, threshold=args.threshold, progress=args.progress)
    text = json.dumps(report, indent=2, sort_keys=True, default=float)
    print(text)
    if args.out:
        write_json(args.out, report)
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from .export import export_model

    formats = tuple(f.strip().lower() for f in args.formats.split(",") if f.strip())
    size: Any = args.size
    if size not in ("model", "any"):
        try:
            rows, columns = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise _UsageError(f"--size must be 'model', 'any' or ROWSxCOLUMNS (e.g. 512x512), got {size!r}") from None
        size = (rows, columns)
    out = Path(args.out)
    with _staging(out, overwrite=args.overwrite) as staging:
        report = export_model(args.model, staging, formats=formats, spatial_shape=size, opset=args.opset, check=args.check)
    for name, entry in report.items():
        difference = entry.get("max_abs_difference")
        extra = "" if difference is None else f" (max |difference| vs Keras {difference:.2e})"
        print(f"{name}: {out / entry['path']}{extra}")
    return EXIT_OK


def _reproduce(args: argparse.Namespace) -> int:
    from .reproduce import run_notebooks

    run_notebooks(args.run_dir, folder=args.notebooks, quick=args.quick, in_place=args.in_place)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 success, 1 error, 2 usage, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    if args.command == "train":
        args.train_argv = argv[argv.index("train") + 1 :]
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except _UsageError as exc:
        print(f"nodulekit {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NodulekitError as exc:
        print(f"nodulekit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"nodulekit {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
