"""Protocol units side by side: one process per worker, each on its share of the CPU cores.

A grid trial or fold of the paper's protocol trains a small network on 64x64 crops; on a CPU such a
unit keeps barely more than one core busy (measured on the project's 2-core machine: an Attention
U-Net grid trial at batch 8 took 43.2 s with two threads and 42.7 s with one; at batch 32, 31.7 s
and 38.1 s). Units are independent (each has its own seed, folder and data,
:func:`~nodulekit.training.units.unit_seed`), so running them in separate processes, each with
``cores // workers`` threads, uses the machine fully: two single-thread units side by side took 1.2x
the time of one. ``benchmarks/README.md`` has the protocol-level timings.

Every worker process is started with :mod:`multiprocessing`'s "spawn" method (safe with
TensorFlow's threads), sets TensorFlow's thread pools before TensorFlow starts, and reports each
epoch back to the protocol's progress bar. Units are handed out longest first (most epochs, then
smallest batch). Results come back in the order of the units given, as with one process.

The number of threads changes the order of floating-point sums, so a unit trained alone with all
cores and the same unit trained in a worker agree to rounding, not bit for bit; each is
reproducible for a fixed worker count. A worker that dies (e.g. killed for memory) stops the run
with a :class:`~nodulekit.errors.TrainingError`; finished units stay done and an interrupted one
resumes on the next run, as after any interruption.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import queue as queue_module
import sys
from pathlib import Path
from typing import Any, Callable

from ..errors import InvalidParameterError, TrainingError
from ..utils import available_cores, set_seed
from .config import TrainConfig
from .units import UnitData, UnitSpec, train_unit

__all__ = ["available_cores", "resolve_workers", "run_units_in_workers"]

#: Set in each worker process by :func:`_start_worker`: where epochs are reported.
_PROGRESS = None


def resolve_workers(workers: int | str, *, units: int, strategy=None, cores: int | None = None) -> int:
    """How many worker processes train ``units`` units.

    Parameters
    ----------
    workers : int or "auto"
        :attr:`TrainConfig.workers <nodulekit.training.TrainConfig.workers>`. ``"auto"``: 2 on a
        machine without GPU that has at least 2 cores when no distribution strategy is given;
        else 1.
    units : int
        Units still to run (never more workers than units).
    strategy : tf.distribute.Strategy, optional
        With a strategy the units run in this process (1).
    cores : int, optional
        Cores to share (default: :func:`available_cores`).

    Returns
    -------
    int
        1 means: train in this process with TensorFlow's default threads.
    """
    if workers != "auto" and not (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1):
        raise InvalidParameterError(f"workers must be 'auto' or a positive integer, got {workers!r}")
    if units <= 1 or strategy is not None:
        return 1
    if workers != "auto":
        return min(workers, units)
    cores = available_cores() if cores is None else cores
    if cores < 2:
        return 1
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return 1
    return 2


def run_units_in_workers(
    specs: list[UnitSpec],
    data: list[UnitData],
    folders: list[Path],
    *,
    config: TrainConfig,
    workers: int,
    notify: Callable[[int, str], None],
    cores: int | None = None,
    pause_after: int | None = None,
) -> list[dict[str, Any]]:
    """Train ``specs`` in ``workers`` processes; the records in the order of ``specs``.

    Parameters
    ----------
    specs, data, folders : list
        One :class:`UnitSpec`, its :class:`UnitData` and its unit folder per unit.
    config : TrainConfig
        The protocol (as in :func:`~nodulekit.training.units.train_unit`).
    workers : int
        Processes to start (each gets ``cores // workers`` threads, at least 1).
    notify : callable
        ``notify(epochs_advanced, text)``, called in this process for each epoch a worker reports.
    cores : int, optional
        Cores to share (default: :func:`available_cores`).
    pause_after : int, optional
        As in :func:`~nodulekit.training.units.train_unit` (successive halving's rung).

    Raises
    ------
    TrainingError
        When a worker process dies; any error a unit raises is raised here unchanged.
    """
    threads = max(1, (available_cores() if cores is None else cores) // workers)
    context = multiprocessing.get_context("spawn")
    progress = context.Queue()
    order = sorted(range(len(specs)), key=lambda i: (-specs[i].epochs, specs[i].batch_size))
    records: list[dict[str, Any] | None] = [None] * len(specs)
    executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_start_worker,
        initargs=(progress, threads, config.seed, config.deterministic, _runs_eagerly()),
    )
    try:
        with _caller_not_rerun():  # the processes start at the first submits
            futures = {executor.submit(_train, specs[i], data[i], folders[i], config, pause_after): i for i in order}
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(pending, timeout=0.2, return_when=concurrent.futures.FIRST_COMPLETED)
            _drain(progress, notify)
            for future in done:
                records[futures[future]] = future.result()
        _drain(progress, notify)
    except concurrent.futures.process.BrokenProcessPool as exc:
        raise TrainingError(
            f"a training worker process died ({exc}); finished units are kept and the run resumes when "
            "started again (set TrainConfig.workers=1 to train in this process)"
        ) from exc
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            if process.is_alive():  # an error or Ctrl-C: stop the units still training
                process.terminate()
    return records  # type: ignore[return-value]


@contextlib.contextmanager
def _caller_not_rerun():
    """Start processes without re-running the caller's script in them.

    "spawn" imports the parent's ``__main__`` file in each child so that functions defined there
    can be unpickled; the workers only run nodulekit's functions, and a script without an
    ``if __name__ == "__main__":`` guard would start its protocol again in every worker.
    """
    main = sys.modules.get("__main__")
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if main is not None and name in main.__dict__}
    if main is not None:
        main.__dict__.pop("__file__", None)
        main.__spec__ = None
    try:
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def _drain(progress, notify: Callable[[int, str], None]) -> None:
    while True:
        try:
            advance, text = progress.get_nowait()
        except queue_module.Empty:
            return
        notify(advance, text)


def _runs_eagerly() -> bool:
    import tensorflow as tf

    return bool(tf.config.functions_run_eagerly())


def _start_worker(progress, threads: int, seed: int, deterministic: bool, eager: bool) -> None:
    """Worker initializer: thread pools first (before TensorFlow starts), then the seeds and the
    caller's eager mode (the QUICK notebooks run eagerly: tracing would cost more than training)."""
    global _PROGRESS
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    set_seed(seed, deterministic_ops=deterministic)
    tf.config.run_functions_eagerly(eager)
    _PROGRESS = progress


def _report(advance: int, text: str) -> None:
    _PROGRESS.put((advance, text))


def _train(spec: UnitSpec, data: UnitData, folder: Path, config: TrainConfig, pause_after: int | None) -> dict[str, Any]:
    return train_unit(spec, data, folder=folder, config=config, on_epoch=_report, pause_after=pause_after)
