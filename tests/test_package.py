"""`import nodulekit` is light, its submodules load on first use, and saved models still load."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(code: str, *, cwd: Path = REPO) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, cwd=cwd
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_import_nodulekit_does_not_load_tensorflow():
    out = _run(
        """
        import sys
        import nodulekit
        from nodulekit import CropSet, load_pretrained, set_seed
        from nodulekit.readers import read_any
        from nodulekit.risk import load_risk_table
        from nodulekit.postprocess import keep_central_component
        print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
        """
    )
    assert out == "[]"


def test_submodules_load_on_first_attribute_access():
    out = _run(
        """
        import sys
        import nodulekit
        print("nodulekit.risk" in sys.modules, callable(nodulekit.risk.load_risk_table), "nodulekit.risk" in sys.modules)
        print("readers" in dir(nodulekit))
        try:
            nodulekit.no_such_module
        except AttributeError as exc:
            print("AttributeError", "no_such_module" in str(exc))
        """
    )
    assert out.splitlines() == ["False True True", "True", "AttributeError True"]


SAVE = """
import keras, numpy as np
from nodulekit.losses import FocalTverskyLoss
from nodulekit.metrics import DiceCoefficient
inputs = keras.Input((8, 8, 1))
outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs)
model = keras.Model(inputs, outputs)
model.compile(optimizer="adam", loss=FocalTverskyLoss(), metrics=[DiceCoefficient()])
model.save({path!r})
"""


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("package") / "tiny.keras"
    _run(SAVE.format(path=str(path)))
    return path


@pytest.mark.parametrize("keras_first", [False, True], ids=["nodulekit-then-keras", "keras-then-nodulekit"])
def test_saved_model_with_nodulekit_objects_loads_without_custom_objects(saved_model, keras_first):
    first, second = ("import keras", "import nodulekit") if keras_first else ("import nodulekit", "import keras")
    out = _run(
        f"""
        {first}
        {second}
        model = keras.saving.load_model({str(saved_model)!r})
        print(type(model.loss).__name__)
        """
    )
    assert out == "FocalTverskyLoss"


def test_without_nodulekit_the_same_file_needs_its_custom_objects(saved_model):
    """The check above means something: plain Keras cannot rebuild nodulekit's loss by itself."""
    code = f"import keras\nkeras.saving.load_model({str(saved_model)!r})\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert out.returncode != 0 and "FocalTversky" in out.stderr
