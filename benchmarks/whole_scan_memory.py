"""Wall time and peak memory of ``nodulekit segment`` on a whole synthetic scan (issue 18, item 6).

The promise measured: a 600-slice thin-section scan segments with a peak memory of at most 6 GB,
and a whole scan takes at most 60 s on the 2-core machine, second stage included.

Usage (from the repository root)::

    .venv/bin/python benchmarks/whole_scan_memory.py                    # 600 slices, 0.5 mm (~10 min on 2 cores)
    .venv/bin/python benchmarks/whole_scan_memory.py --slices 133 --spacing 2.5
    .venv/bin/python benchmarks/whole_scan_memory.py --slices 600 --slices 133 --spacing 0.5 --spacing 2.5
    .venv/bin/python benchmarks/whole_scan_memory.py --keep /tmp/scan600 --steps   # reuses a kept scan; per step
    .venv/bin/python benchmarks/whole_scan_memory.py --keep /tmp/scan600 --baseline c3c6074   # before / after, back to back

Each scan is a ``nodulekit.phantom.generate_volume`` chest (512x512 slices, nodules of every kind),
written as a DICOM series (int16, one file per slice, as a scanner exports it) into a temporary
folder; then ``python -m nodulekit segment SCAN --out DIR --no-progress`` runs in a child process
with the shipped models (the default ``--model``). The table gives, per scan, the child's wall
time and its peak resident memory (``os.wait4``'s ``ru_maxrss`` of that one child, imports and
TensorFlow included) and the time at which the RSS, sampled every 0.2 s, peaked; then the seconds
per step from ``summary.json`` and the RSS over time. ``--steps`` runs the same command inside a
child of this script that wraps each step (reading, lung mask, prediction, measurement, the second
stage's features and ranking, writing) and prints its seconds and RSS before, at its peak and
after. ``--keep DIR`` keeps the scans (a rerun reuses them), the outputs and every RSS sample.
``--baseline REV`` first runs the same command with the ``nodulekit`` package of git revision REV
(``git archive`` into a temporary folder, the shipped model included), then with this tree's, back
to back on the same scan, and prints this tree's wall and CPU seconds and peak RSS as ratios of REV's,
and whether the two wrote the same results (``nodules.csv``, ``labels.npy``, the mask PNGs).

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

__all__ = ["make_scan", "measure_segment", "main"]

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


def measure_segment(scan: Path, out: Path, extra: list[str] | None = None, *, steps: bool = False, code: Path = REPO) -> dict:
    """Run ``python -m nodulekit segment scan --out out`` in a child; its wall time and peak RSS.

    With ``steps``, the child is this script, which runs the same command in-process and prints
    each step's seconds and RSS (``extra`` options are then not passed). ``code`` is the folder
    whose ``nodulekit`` package the child imports (default this repository's).
    """
    scan, out = Path(scan).resolve(), Path(out).resolve()
    if steps:
        command = [sys.executable, str(Path(__file__).resolve()), "--steps-child", str(scan), str(out)]
    else:
        command = [sys.executable, "-m", "nodulekit", "segment", str(scan), "--out", str(out), "--no-progress", *(extra or [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH", "")]))}
    start = time.perf_counter()
    # In ``code`` (``python -m`` puts the working folder first on sys.path, before PYTHONPATH).
    child = subprocess.Popen(command, env=env, cwd=code, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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


#: The steps ``--steps`` times: (module that defines it, name or Class.method), patched wherever the
#: object is bound among the loaded nodulekit modules, so a moved import still gets caught.
STEPS = (
    ("nodulekit.cli", "load_input"),
    ("nodulekit.inference", "lung_mask"),
    ("nodulekit.inference", "Segmenter.predict"),
    ("nodulekit.inference", "measure_nodules"),
    ("nodulekit.detection", "candidate_features"),
    ("nodulekit.detection", "rank_candidates"),
    ("nodulekit.inference", "write_segmentation"),
)


def _patch_step(module_name: str, name: str, report) -> None:
    """Wrap one step so that ``report(name, seconds, rss_before, rss_after)`` runs after each call."""
    import importlib

    import psutil

    process = psutil.Process()
    owner = importlib.import_module(module_name)
    path = name.split(".")
    for part in path[:-1]:
        owner = getattr(owner, part, None)
    original = getattr(owner, path[-1], None)
    if original is None:
        print(f"step {module_name}.{name} not found: not timed", flush=True)
        return

    def timed(*args, **kwargs):
        before, start = process.memory_info().rss, time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            report(name, time.perf_counter() - start, before, process.memory_info().rss)

    if len(path) > 1:
        setattr(owner, path[-1], timed)
        return
    for module in [m for n, m in sys.modules.items() if n.startswith("nodulekit") and m is not None]:
        if getattr(module, path[-1], None) is original:
            setattr(module, path[-1], timed)


def _steps_child(scan: str, out: str) -> int:
    """In this process: ``nodulekit segment scan --out out`` with each step's seconds and RSS peak."""
    import importlib

    import psutil

    process = psutil.Process()
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), process.memory_info().rss / 1e9))
            done.wait(0.05)

    def report(name: str, seconds: float, before: int, after: int) -> None:
        now = time.perf_counter()
        peak = max([gb for t, gb in samples if now - seconds <= t <= now] + [before / 1e9, after / 1e9])
        print(f"step {name:<22} {seconds:7.1f} s   RSS {before / 1e9:5.2f} -> peak {peak:5.2f} -> {after / 1e9:5.2f} GB", flush=True)

    for module_name in {module for module, _ in STEPS}:
        importlib.import_module(module_name)
    for module_name, name in STEPS:
        _patch_step(module_name, name, report)
    threading.Thread(target=sample, daemon=True).start()
    from nodulekit.cli import main as cli_main

    return cli_main(["segment", scan, "--out", out, "--no-progress"])


def _row(slices: int, spacing: float, folder: Path, extra: list[str], steps: bool = False, code: Path = REPO, label: str = "this tree") -> dict:
    from nodulekit.readers import write_dicom_series

    start = time.perf_counter()
    scan = folder / f"scan_{slices}"
    if len(list(scan.glob("*.dcm"))) != slices:  # a kept scan of this size is reused
        volume = make_scan(slices, spacing)
        write_dicom_series(volume, scan, patient_id=f"BENCH-{slices}")
        del volume
    prepared = time.perf_counter() - start
    print(f"{slices} slices: scan made and written in {prepared:.0f} s; segmenting with {label} ...", flush=True)
    out = folder / (f"out_{slices}" if code == REPO else f"out_{slices}_{label}")
    shutil.rmtree(out, ignore_errors=True)
    result = measure_segment(scan, out, extra, steps=steps, code=code)
    if steps:
        print("\n".join(line for line in result["output"].splitlines() if line.startswith("step ")))
    result.update(slices=slices, spacing=spacing, code=label, out=str(out), phases=_phases(out))
    if result["returncode"] != 0:
        print(result["output"][-3000:], file=sys.stderr)
    return result


def _checkout(revision: str, folder: Path) -> Path:
    """The ``nodulekit`` package of git ``revision`` extracted into ``folder`` (returned, for PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "nodulekit"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def _same_results(first: dict, second: dict) -> bool:
    """Whether two runs wrote byte-identical ``nodules.csv``, ``labels.npy`` and mask PNGs."""
    import filecmp

    a, b = Path(first["out"]), Path(second["out"])
    names = sorted(p.name for p in (a / "masks").glob("*.png"))
    if not names or names != sorted(p.name for p in (b / "masks").glob("*.png")):
        return False
    files = ["nodules.csv", "labels.npy", *(f"masks/{name}" for name in names)]
    return all(filecmp.cmp(a / name, b / name, shallow=False) for name in files)


def _ratios(rows: list[dict]) -> list[str]:
    """Per scan size: this tree's wall and CPU seconds and peak RSS as ratios of the baseline's."""
    lines = []
    for row in rows:
        base = next((r for r in rows if r["slices"] == row["slices"] and r is not row and row["code"] == "this tree"), None)
        if base is None or row["returncode"] or base["returncode"]:
            continue
        lines.append(
            f"{row['slices']} slices, this tree / {base['code']} (run back to back): wall {row['seconds'] / base['seconds']:.2f}x, "
            f"CPU {row['cpu_seconds'] / base['cpu_seconds']:.2f}x, peak RSS {row['peak_rss_gb'] / base['peak_rss_gb']:.2f}x; "
            f"results {'identical' if _same_results(base, row) else 'DIFFERENT'}"
        )
    return lines


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
        f"{'scan':<26} {'code':<10} {'wall s':>7} {'CPU s':>7} {'peak RSS GB':>12} {'peak at s':>10}  verdict",
    ]
    for row in rows:
        scan = f"{row['slices']} x 512 x 512, {row['spacing']:g} mm"
        verdict = "failed (exit %d)" % row["returncode"] if row["returncode"] else (
            f"memory {'ok' if row['peak_rss_gb'] <= PEAK_BUDGET_GB else 'OVER'} (<= {PEAK_BUDGET_GB:g} GB), "
            f"time {'ok' if row['seconds'] <= TIME_BUDGET_S else 'OVER'} (<= {TIME_BUDGET_S:g} s)"
        )
        lines.append(
            f"{scan:<26} {row['code'][:10]:<10} {row['seconds']:>7.1f} {row['cpu_seconds']:>7.1f} {row['peak_rss_gb']:>12.2f} {row['peak_at_s']:>10.1f}  {verdict}"
        )
    for row in rows:
        steps = ", ".join(f"{key[:-2]} {value:.1f}" for key, value in row["phases"].items())
        lines.append(f"{row['slices']} slices ({row['code']}), seconds per step (summary.json): {steps or 'n/a'}")
        lines.append(f"{row['slices']} slices ({row['code']}), RSS over time (s:GB): {_timeline(row['samples'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, action="append", help="slices of a scan (repeatable; default 600)")
    parser.add_argument("--spacing", type=float, action="append", help="slice spacing in mm, one per --slices (default 0.5)")
    parser.add_argument("--keep", type=Path, help="keep the scans, outputs and RSS samples (whole_scan_memory.json) here")
    parser.add_argument("--steps", action="store_true", help="also time each step in the child (RSS before, peak, after)")
    parser.add_argument("--baseline", metavar="REV", help="first run each scan with the nodulekit of git revision REV, then this tree's; print the ratios")
    parser.add_argument("--steps-child", nargs=2, metavar=("SCAN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("segment_options", nargs=argparse.REMAINDER, help="after --: more `nodulekit segment` options")
    args = parser.parse_args(argv)
    if args.steps_child:
        return _steps_child(*args.steps_child)
    slices = args.slices or [600]
    spacings = args.spacing or [0.5] * len(slices)
    if len(spacings) != len(slices):
        parser.error("give one --spacing per --slices")
    extra = [option for option in args.segment_options if option != "--"]
    folder = args.keep or Path(tempfile.mkdtemp(prefix="nodulekit-bench-scan-"))
    rows, ratios = [], []
    try:
        baseline = _checkout(args.baseline, Path(tempfile.mkdtemp(prefix="nodulekit-baseline-"))) if args.baseline else None
        for n, s in zip(slices, spacings):
            if baseline is not None:
                rows.append(_row(n, s, folder, extra, args.steps, code=baseline, label=args.baseline))
            rows.append(_row(n, s, folder, extra, args.steps))
        if baseline is not None:
            ratios = _ratios(rows) or ["no ratio (a run failed)"]  # compares the outputs: before they go
            shutil.rmtree(baseline, ignore_errors=True)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    print("\n".join([_table(rows), *ratios]))
    if args.keep is not None:  # every RSS sample and the child's output, for a closer look
        (args.keep / "whole_scan_memory.json").write_text(json.dumps(rows, default=list, indent=1))
    return int(any(row["returncode"] for row in rows))


if __name__ == "__main__":
    raise SystemExit(main())
