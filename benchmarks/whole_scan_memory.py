"""Wall time and peak memory of ``nodulekit segment`` on a whole synthetic scan (issue 18, item 6).

The promise measured: a 600-slice thin-section scan segments with a peak memory of at most 6 GB,
and a whole scan takes at most 60 s on the 2-core machine, second stage included.

Usage (from the repository root)::

    .venv/bin/python benchmarks/whole_scan_memory.py                    # 600 slices, 0.5 mm (~10 min on 2 cores)
    .venv/bin/python benchmarks/whole_scan_memory.py --slices 133 --spacing 2.5
    .venv/bin/python benchmarks/whole_scan_memory.py --slices 600 --slices 133 --spacing 0.5 --spacing 2.5

Each scan is a ``nodulekit.phantom.generate_volume`` chest (512x512 slices, nodules of every kind),
written as a DICOM series (int16, one file per slice, as a scanner exports it) into a temporary
folder; then ``python -m nodulekit segment SCAN --out DIR --no-progress`` runs in a child process
with the shipped models (the default ``--model``). The table gives, per scan, the child's wall
time and its peak resident memory (``os.wait4``'s ``ru_maxrss`` of that one child, imports and
TensorFlow included) and the time at which the RSS, sampled every 0.2 s, peaked.

The synthetic chest is at most 1.3 x its height long (210-270 mm), so 600 slices fit at 0.5 mm
(300 mm), not at 0.625 mm; memory depends on the voxel count (600 x 512 x 512), not on the
spacing. Above 400 slices (the generator's limit) the scan is rendered at half the slices and
twice the spacing, then linearly interpolated along z.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

__all__ = ["make_scan", "write_dicom_series", "measure_segment", "main"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: The promises of issue 18, item 6.
PEAK_BUDGET_GB = 6.0
TIME_BUDGET_S = 60.0

#: ``generate_volume`` renders at most this many slices.
MAX_RENDERED_SLICES = 400


def make_scan(slices: int, spacing: float, *, seed: int = 4):
    """A synthetic chest CT of ``slices`` 512x512 slices ``spacing`` mm apart (a ``Volume``).

    Seed 4's chest is 269 mm high, long enough for 600 slices at 0.5 mm.
    """
    from scipy.ndimage import zoom

    from nodulekit.phantom import generate_volume

    if slices <= MAX_RENDERED_SLICES:
        return generate_volume(n_slices=slices, thickness=spacing, seed=seed, n_nodules=5, progress=True)
    rendered = generate_volume(n_slices=(slices + 1) // 2, thickness=2 * spacing, seed=seed, n_nodules=5, progress=True)
    hu = zoom(rendered.hu, (slices / rendered.hu.shape[0], 1, 1), order=1)
    return dataclasses.replace(rendered, hu=hu, spacing=(spacing, *rendered.spacing[1:]), mask=None, nodules=None)


def write_dicom_series(hu: np.ndarray, spacing: tuple[float, float, float], folder: Path) -> Path:
    """Write ``hu`` (slices, rows, columns) as a CT DICOM series, one int16 file per slice."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    for index, plane in enumerate(hu):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{index:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = series, study, frame
        ds.PatientID, ds.PatientName, ds.Modality, ds.InstanceNumber = f"BENCH-{len(hu)}", "Bench^Scan", "CT", index + 1
        ds.ImagePositionPatient = [-180.0, -180.0, float(index * spacing[0])]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        ds.SliceThickness = float(spacing[0])
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.clip(np.rint(plane + 1024), -32768, 32767).astype(np.int16).tobytes()
        ds.save_as(folder / f"{index:04d}.dcm", enforce_file_format=True)
    return folder


def _sample_rss(pid: int, samples: list[tuple[float, float]], done: threading.Event) -> None:
    """Append (seconds since start, RSS in GB) of process ``pid`` every 0.2 s until ``done``."""
    import psutil

    start = time.perf_counter()
    try:
        process = psutil.Process(pid)
        while not done.is_set():
            samples.append((time.perf_counter() - start, process.memory_info().rss / 1e9))
            done.wait(0.2)
    except psutil.Error:  # the child exited between two samples
        return


def measure_segment(scan: Path, out: Path, extra: list[str] | None = None) -> dict:
    """Run ``python -m nodulekit segment scan --out out`` in a child; its wall time and peak RSS."""
    command = [sys.executable, "-m", "nodulekit", "segment", str(scan), "--out", str(out), "--no-progress", *(extra or [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))}
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples: list[tuple[float, float]] = []
    done = threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=(child.pid, samples, done), daemon=True)
    sampler.start()
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    peak_at = max(samples, key=lambda s: s[1])[0] if samples else float("nan")
    return {
        "returncode": child.returncode,
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,  # Linux: kilobytes
        "peak_at_s": peak_at,
        "samples": samples,
        "output": output,
    }


def _row(slices: int, spacing: float, folder: Path, extra: list[str]) -> dict:
    start = time.perf_counter()
    scan = folder / f"scan_{slices}"
    if len(list(scan.glob("*.dcm"))) != slices:  # a kept scan of this size is reused
        volume = make_scan(slices, spacing)
        write_dicom_series(volume.hu, volume.spacing, scan)
        del volume
    prepared = time.perf_counter() - start
    print(f"{slices} slices: scan made and written in {prepared:.0f} s; segmenting ...", flush=True)
    shutil.rmtree(folder / f"out_{slices}", ignore_errors=True)
    result = measure_segment(scan, folder / f"out_{slices}", extra)
    result.update(slices=slices, spacing=spacing, phases=_phases(folder / f"out_{slices}"))
    if result["returncode"] != 0:
        print(result["output"][-3000:], file=sys.stderr)
    return result


def _phases(out: Path) -> dict:
    """The seconds per step that ``nodulekit segment`` wrote in ``summary.json`` (empty on failure)."""
    try:
        info = json.loads((out / "summary.json").read_text())["stacks"][0]["info"]
    except (OSError, KeyError, IndexError, ValueError):
        return {}
    return {key: value for key, value in info.items() if key.endswith("_s")}


def _timeline(samples: list[tuple[float, float]], points: int = 12) -> str:
    """``seconds:GB`` at about ``points`` evenly spaced samples of the child's RSS."""
    if not samples:
        return "no samples"
    step = max(1, len(samples) // points)
    return "  ".join(f"{t:.0f}s:{gb:.2f}" for t, gb in samples[::step] + samples[-1:])


def _table(rows: list[dict]) -> str:
    lines = [
        f"{'scan':<26} {'wall s':>7} {'CPU s':>7} {'peak RSS GB':>12} {'peak at s':>10}  verdict",
    ]
    for row in rows:
        scan = f"{row['slices']} x 512 x 512, {row['spacing']:g} mm"
        verdict = "failed (exit %d)" % row["returncode"] if row["returncode"] else (
            f"memory {'ok' if row['peak_rss_gb'] <= PEAK_BUDGET_GB else 'OVER'} (<= {PEAK_BUDGET_GB:g} GB), "
            f"time {'ok' if row['seconds'] <= TIME_BUDGET_S else 'OVER'} (<= {TIME_BUDGET_S:g} s)"
        )
        lines.append(
            f"{scan:<26} {row['seconds']:>7.1f} {row['cpu_seconds']:>7.1f} {row['peak_rss_gb']:>12.2f} {row['peak_at_s']:>10.1f}  {verdict}"
        )
    for row in rows:
        steps = ", ".join(f"{key[:-2]} {value:.1f}" for key, value in row["phases"].items())
        lines.append(f"{row['slices']} slices, seconds per step (summary.json): {steps or 'n/a'}")
        lines.append(f"{row['slices']} slices, RSS over time (s:GB): {_timeline(row['samples'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, action="append", help="slices of a scan (repeatable; default 600)")
    parser.add_argument("--spacing", type=float, action="append", help="slice spacing in mm, one per --slices (default 0.5)")
    parser.add_argument("--keep", type=Path, help="keep the scans, outputs and RSS samples (whole_scan_memory.json) here")
    parser.add_argument("segment_options", nargs=argparse.REMAINDER, help="after --: more `nodulekit segment` options")
    args = parser.parse_args(argv)
    slices = args.slices or [600]
    spacings = args.spacing or [0.5] * len(slices)
    if len(spacings) != len(slices):
        parser.error("give one --spacing per --slices")
    extra = [option for option in args.segment_options if option != "--"]
    folder = args.keep or Path(tempfile.mkdtemp(prefix="nodulekit-bench-scan-"))
    try:
        rows = [_row(n, s, folder, extra) for n, s in zip(slices, spacings)]
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(_table(rows))
    if args.keep is not None:  # every RSS sample and the child's output, for a closer look
        (args.keep / "whole_scan_memory.json").write_text(json.dumps(rows, default=list, indent=1))
    return int(any(row["returncode"] for row in rows))


if __name__ == "__main__":
    raise SystemExit(main())
