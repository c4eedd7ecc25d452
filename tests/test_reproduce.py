"""The notebook runner: which notebooks run, which are skipped and why, what is written."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from nodulekit.errors import MissingDataError
from nodulekit.reproduce import find_notebooks, missing_requirements, strip_runtime_logs

REPO = Path(__file__).resolve().parents[1]


def _write(path, metadata=None):
    nb = new_notebook(cells=[new_code_cell("print(1)")])
    nb.metadata.update(metadata or {})
    nbformat.write(nb, path)
    return path


def test_find_notebooks_in_order_and_complains_when_there_are_none(tmp_path):
    for name in ("02_b.ipynb", "01_a.ipynb", "notes.ipynb"):
        _write(tmp_path / name)
    assert [p.name for p in find_notebooks(tmp_path)] == ["01_a.ipynb", "02_b.ipynb"]
    with pytest.raises(MissingDataError, match="no numbered notebooks"):
        find_notebooks(tmp_path / "empty")


def test_missing_requirements_reads_the_notebook_metadata(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    plain = _write(tmp_path / "01_plain.ipynb")
    present = _write(tmp_path / "02_present.ipynb", {"nodulekit": {"requires": ["data"]}})
    absent = _write(tmp_path / "03_absent.ipynb", {"nodulekit": {"requires": ["data", "nowhere"], "requires_env": "NK_TEST_DATA"}})
    assert missing_requirements(plain) == missing_requirements(present) == []
    assert missing_requirements(absent) == [str(tmp_path / "nowhere")]
    monkeypatch.setenv("NK_TEST_DATA", str(tmp_path / "data"))  # the variable replaces the default paths
    assert missing_requirements(absent) == []
    monkeypatch.setenv("NK_TEST_DATA", str(tmp_path / "elsewhere"))
    assert missing_requirements(absent) == [str(tmp_path / "elsewhere")]


def test_the_real_data_notebook_declares_its_data():
    meta = json.loads(open(REPO / "notebooks" / "06_real_ct.ipynb", encoding="utf-8").read())["metadata"]["nodulekit"]
    assert meta["requires"] == ["../../shared/data/lidc/LIDC-IDRI-slices"] and meta["requires_env"] == "NODULEKIT_LIDC_DIR"


def test_strip_runtime_logs_keeps_what_the_notebook_prints():
    noise = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1795769646.261386   19409 port.cc:153] oneDNN custom operations are on.\n"
        "E0000 00:00:1795769818.747430   19433 node_def_util.cc:682] NodeDef mentions attribute\n"
    )
    cell = new_code_cell("x")
    cell.outputs = [
        new_output("stream", name="stderr", text=noise),
        new_output("stream", name="stderr", text=noise + "a real warning\n"),
        new_output("stream", name="stdout", text="I0000 00:00:1.0 printed by the notebook itself\n"),
    ]
    nb = new_notebook(cells=[cell])
    assert strip_runtime_logs(nb) == 6
    assert [o.get("text") for o in nb.cells[0].outputs] == ["a real warning\n", "I0000 00:00:1.0 printed by the notebook itself\n"]


def test_run_notebooks_keeps_figures_and_skips_what_lacks_data(tmp_path, monkeypatch, capsys):
    """Executed notebooks carry their figures even under the Makefile's MPLBACKEND=Agg."""
    from nodulekit.reproduce import run_notebooks

    monkeypatch.setenv("MPLBACKEND", "Agg")
    for var in ("NODULEKIT_RUN_DIR", "NODULEKIT_QUICK"):
        monkeypatch.setenv(var, "")  # restored after the test (run_notebooks sets them)
    folder = tmp_path / "notebooks"
    folder.mkdir()
    plot = new_notebook(cells=[new_code_cell("import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0])\nplt.show()")])
    nbformat.write(plot, folder / "01_plot.ipynb")
    _write(folder / "02_needs_data.ipynb", {"nodulekit": {"requires": ["nowhere"]}})
    done = run_notebooks(tmp_path / "run", folder=folder, quick=True)
    assert [p.name for p in done] == ["01_plot.ipynb"]
    executed = nbformat.read(done[0], as_version=4)
    assert any("image/png" in output.get("data", {}) for output in executed.cells[0].outputs)
    assert "skipping 02_needs_data.ipynb" in capsys.readouterr().out


def test_reproduce_command_runs_the_series_into_the_run_folder(tmp_path, monkeypatch, capsys):
    """``nodulekit reproduce --quick``: each notebook runs with QUICK and RUN_DIR set; a missing folder is an error."""
    from nodulekit.cli import EXIT_ERROR, EXIT_OK, main

    for var in ("NODULEKIT_RUN_DIR", "NODULEKIT_QUICK", "MPLBACKEND"):
        monkeypatch.setenv(var, "")  # restored after the test (run_notebooks sets them)
    folder = tmp_path / "notebooks"
    folder.mkdir()
    writes = "import os\nopen(os.path.join(os.environ['NODULEKIT_RUN_DIR'], 'quick.txt'), 'w').write(os.environ['NODULEKIT_QUICK'])"
    nbformat.write(new_notebook(cells=[new_code_cell(writes)]), folder / "01_writes.ipynb")
    reads = "import os\nprint('read', open(os.path.join(os.environ['NODULEKIT_RUN_DIR'], 'quick.txt')).read())"
    nbformat.write(new_notebook(cells=[new_code_cell(reads)]), folder / "02_reads.ipynb")
    run_dir = tmp_path / "run"
    assert main(["reproduce", "--run-dir", str(run_dir), "--notebooks", str(folder), "--quick"]) == EXIT_OK
    assert (run_dir / "quick.txt").read_text() == "1"  # the first notebook ran in QUICK mode, in the run folder
    executed = nbformat.read(run_dir / "notebooks" / "02_reads.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "read 1\n"  # the second ran after it and saw its file
    assert "2 notebooks executed" in capsys.readouterr().out
    assert main(["reproduce", "--run-dir", str(run_dir), "--notebooks", str(tmp_path / "none")]) == EXIT_ERROR
    assert "no numbered notebooks" in capsys.readouterr().err


def test_pytest_on_the_notebooks_alone_runs_them_in_quick_mode(tmp_path):
    """``pytest --nbval-lax notebooks`` without the Makefile's NODULEKIT_QUICK=1 must not start the full study."""
    import os
    import shutil
    import subprocess
    import sys

    folder = tmp_path / "notebooks"
    folder.mkdir()
    shutil.copy(REPO / "notebooks" / "conftest.py", folder / "conftest.py")
    check = "import os\nassert os.environ['NODULEKIT_QUICK'] == '1', os.environ.get('NODULEKIT_QUICK')"
    nbformat.write(new_notebook(cells=[new_code_cell(check)]), folder / "01_quick.ipynb")
    env = {k: v for k, v in os.environ.items() if k != "NODULEKIT_QUICK"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider", "-q", str(folder)]
    out = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]
