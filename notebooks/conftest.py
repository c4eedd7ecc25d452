"""Notebook tests (nbval): QUICK mode by default; skip a notebook whose data is absent, with the reason.

``pytest --nbval-lax notebooks`` alone (without the Makefile) runs the notebooks in QUICK mode, as
``make test`` does: the kernels inherit this process's environment, set here before any starts.
``NODULEKIT_QUICK=0`` in the environment runs them at full size (hours; ``make reproduce`` is the
usual way).

A notebook declares what it cannot run without in its metadata (``nodulekit.requires``); see
:func:`nodulekit.reproduce.missing_requirements`. Notebook 06 needs the real LIDC-IDRI release in
``../shared/data/lidc`` (or ``NODULEKIT_LIDC_DIR``).
"""

from __future__ import annotations

import os
from pathlib import Path

# Before any kernel starts (and before anything imports TensorFlow).
os.environ.setdefault("NODULEKIT_QUICK", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from nodulekit.reproduce import missing_requirements  # noqa: E402


def pytest_collection_modifyitems(config, items):
    reasons: dict[Path, list[str]] = {}
    for item in items:
        path = Path(str(item.fspath))
        if path.suffix != ".ipynb":
            continue
        if path not in reasons:
            reasons[path] = missing_requirements(path)
        if reasons[path]:
            item.add_marker(pytest.mark.skip(reason=f"{path.name} needs {', '.join(reasons[path])} (real data, not in this checkout)"))
