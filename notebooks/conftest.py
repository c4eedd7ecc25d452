"""Notebook tests (nbval): skip a notebook whose data is absent, with the reason.

A notebook declares what it cannot run without in its metadata (``nodulekit.requires``); see
:func:`nodulekit.reproduce.missing_requirements`. Notebook 06 needs the real LIDC-IDRI release in
``../shared/data/lidc`` (or ``NODULEKIT_LIDC_DIR``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nodulekit.reproduce import missing_requirements


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
