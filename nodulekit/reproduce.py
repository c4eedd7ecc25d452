"""Run the notebook series (``notebooks/0*.ipynb``) in order: the whole study, end to end."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from .errors import MissingDataError

__all__ = ["run_notebooks", "find_notebooks", "missing_requirements"]

logger = logging.getLogger(__name__)


def find_notebooks(folder: str | os.PathLike = "notebooks") -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` in ``folder``, in order."""
    paths = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise MissingDataError("no numbered notebooks (NN_name.ipynb) found", path=folder)
    return paths


def missing_requirements(path: str | os.PathLike) -> list[str]:
    """What a notebook needs and this machine lacks.

    A notebook declares the data it cannot run without in its metadata, ``{"nodulekit":
    {"requires": ["../../shared/data/lidc/LIDC-IDRI-slices"]}}`` (paths relative to the notebook;
    an environment variable named in ``"requires_env"`` may point elsewhere). The notebook tests
    (``notebooks/conftest.py``) and :func:`run_notebooks` skip such a notebook with this reason.
    """
    import json

    path = Path(path)
    meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get("nodulekit", {})
    override = os.environ.get(meta.get("requires_env", ""), "") if meta.get("requires_env") else ""
    wanted = [override] if override else [str(path.parent / p) for p in meta.get("requires", [])]
    return [p for p in wanted if not Path(p).exists()]


def run_notebooks(
    run_dir: str | os.PathLike = "runs/reproduce",
    *,
    folder: str | os.PathLike = "notebooks",
    quick: bool = False,
    timeout: int = 4 * 3600,
    in_place: bool = False,
) -> list[Path]:
    """Execute every numbered notebook in order with ``NODULEKIT_RUN_DIR=run_dir``.

    Executed copies go to ``run_dir/notebooks/`` (or back onto the originals with ``in_place``, which
    is how the committed notebooks get their full-run outputs). Returns the executed paths.
    """
    import nbformat
    from nbclient import NotebookClient

    run_dir = Path(run_dir).resolve()
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ["NODULEKIT_RUN_DIR"] = str(run_dir)
    os.environ["NODULEKIT_QUICK"] = "1" if quick else "0"
    done = []
    notebooks = find_notebooks(folder)
    for path in tqdm(notebooks, desc="notebooks", unit="nb"):
        missing = missing_requirements(path)
        if missing:
            print(f"reproduce: skipping {path.name}: it needs {', '.join(missing)}, which is not here")
            continue
        start = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
        target = path if in_place else out_dir / path.name
        nbformat.write(nb, target)
        logger.info("%s done in %.0f s -> %s", path.name, time.perf_counter() - start, target)
        done.append(target)
    print(f"reproduce: {len(done)} notebooks executed; figures and results in {run_dir}")
    return done
