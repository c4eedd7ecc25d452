"""Speed expectations that used to be asserts in tests/ (issue 23), checked here as ratios to a budget.

Unit tests check what code does, not how fast a shared machine runs it; these checks keep the
speed promises in one place. Each prints its measurement, its budget and their ratio (under 1
passes), and the script exits with 1 when any ratio is 1 or more.

Usage (from the repository root)::

    .venv/bin/python benchmarks/speed_checks.py            # all three (~1 min; the LIDC read needs ../shared/data)
    .venv/bin/python benchmarks/speed_checks.py --only rerun

Checks
------
``phantom``  CPU time of ``generate_crops(100, size=64)`` over 6 s (about 10-15 ms of CPU per crop
             measured; 1,000 crops then stay well under a minute).
``lidc``     wall time of reading the whole LIDC-IDRI PNG release (3,163 crops) over 20 s;
             skipped when ../shared/data is absent.
``rerun``    wall time of ``run_protocol`` on a finished run folder over half the first run's time
             (a rerun must skip every finished unit, not retrain it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
SHARED_DATA = Path(os.environ.get("NODULEKIT_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
LIDC_SLICES = SHARED_DATA / "lidc" / "LIDC-IDRI-slices"


def check_phantom() -> tuple[float, float, str]:
    """CPU seconds of 100 phantom crops (64x64) and the 6 s budget."""
    from nodulekit.phantom import generate_crops

    start = time.process_time()
    generate_crops(100, size=64, seed=11)
    return time.process_time() - start, 6.0, "s CPU, 100 crops 64x64"


def check_lidc() -> tuple[float, float, str] | None:
    """Wall seconds of reading the LIDC release and the 20 s budget (None when the data is absent)."""
    if not LIDC_SLICES.exists():
        return None
    from nodulekit.readers import read_lidc_release

    start = time.perf_counter()
    crops = read_lidc_release(LIDC_SLICES, progress=False)
    return time.perf_counter() - start, 20.0, f"s wall, {len(crops)} crops"


def check_rerun() -> tuple[float, float, str]:
    """Wall seconds of rerunning a finished tiny protocol and half of the first run's time."""
    from nodulekit.phantom.realism import blob_crops
    from nodulekit.training import TrainConfig, run_protocol

    crops = blob_crops(48, size=32, seed=0)
    config = TrainConfig(
        architectures=("unet",), learning_rates=(1e-3,), batch_sizes=(8,), grid_epochs=1, epochs=2, n_folds=2, filters=(4, 8, 16)
    )
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        run_protocol(crops, run_dir=run_dir, config=config, progress=False)
        first = time.perf_counter() - start
        start = time.perf_counter()
        run_protocol(crops, run_dir=run_dir, config=config, progress=False)
        again = time.perf_counter() - start
    return again, first / 2, f"s wall (first run {first:.1f} s)"


CHECKS: dict[str, Callable[[], tuple[float, float, str] | None]] = {
    "phantom": check_phantom,
    "lidc": check_lidc,
    "rerun": check_rerun,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated checks among {', '.join(CHECKS)}")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(CHECKS)
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        parser.error(f"unknown checks {unknown}; choose among {', '.join(CHECKS)}")
    failed = []
    for name in names:
        result = CHECKS[name]()
        if result is None:
            print(f"{name:8s} skipped (data not found under {SHARED_DATA})")
            continue
        measured, budget, unit = result
        ratio = measured / budget
        verdict = "ok" if ratio < 1 else "TOO SLOW"
        print(f"{name:8s} {measured:7.2f} {unit}; budget {budget:.2f}; ratio {ratio:.2f} {verdict}")
        if ratio >= 1:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
