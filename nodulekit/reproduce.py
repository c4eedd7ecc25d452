"""Run the notebook series (``notebooks/0*.ipynb``) in order: the whole study, end to end."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from tqdm.auto import tqdm

from .errors import MissingDataError

__all__ = ["run_notebooks", "find_notebooks", "missing_requirements", "strip_runtime_logs"]

#: Lines of TensorFlow's C++ runtime log (absl: ``I0000 00:00:...``, ``E0000 ...``), its
#: initialisation notice and tf.function retracing notices: written to stderr by TensorFlow, not
#: by the notebook, and different on every machine, so the committed notebooks leave them out.
RUNTIME_LOG = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ .*|WARNING: All log messages before absl::InitializeLog\(\) is called.*"
    r"|WARNING:tensorflow:.*triggered tf\.function retracing.*)$"
)

#: Matplotlib backend of the notebook kernels: figures shown inline, saved into the notebook.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"

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


def strip_runtime_logs(nb) -> int:
    """Remove TensorFlow's runtime log lines (:data:`RUNTIME_LOG`) from a notebook's stderr outputs.

    Outputs left empty are dropped; everything the notebook itself prints or displays is kept.
    Returns the number of lines removed.
    """
    removed = 0
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                text = output.get("text", "")
                text = "".join(text) if isinstance(text, list) else text
                lines = text.splitlines(keepends=True)
                clean = [line for line in lines if not RUNTIME_LOG.match(line.rstrip("\n"))]
                removed += len(lines) - len(clean)
                if not "".join(clean).strip():
                    continue
                output["text"] = "".join(clean)
            kept.append(output)
        cell["outputs"] = kept
    return removed


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
    # Relative to the notebooks (the kernels' working folder): no machine's path in the outputs.
    os.environ["NODULEKIT_RUN_DIR"] = os.path.relpath(run_dir, Path(folder).resolve())
    os.environ["NODULEKIT_QUICK"] = "1" if quick else "0"
    # The kernels inherit this environment: a non-interactive MPLBACKEND (the Makefile's Agg, set
    # for the tests) would leave the executed notebooks without their figures.
    os.environ["MPLBACKEND"] = INLINE_BACKEND
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
        strip_runtime_logs(nb)
        target = path if in_place else out_dir / path.name
        nbformat.write(nb, target)
        logger.info("%s done in %.0f s -> %s", path.name, time.perf_counter() - start, target)
        done.append(target)
    print(f"reproduce: {len(done)} notebooks executed; figures and results in {run_dir}")
    return done
