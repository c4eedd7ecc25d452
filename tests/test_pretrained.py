"""The shipped model: loads in a fresh process, takes raw reader crops, segments real nodules."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from nodulekit.errors import MissingDataError
from nodulekit.pretrained import available_models, load_pretrained


def test_shipped_model_is_listed_and_unknown_names_are_refused():
    assert "lidc_attention_unet" in available_models()
    with pytest.raises(MissingDataError, match="available"):
        load_pretrained("no_such_model")


def test_pretrained_loads_in_a_fresh_process():
    code = (
        "import numpy as np, nodulekit\n"
        "m = nodulekit.load_pretrained(tta=False)\n"
        "x = np.random.default_rng(0).integers(0, 255, (2, 64, 64)).astype(np.uint8)\n"
        "p = m.predict(x)\n"
        "assert p.shape == (2, 64, 64) and p.dtype == np.float32 and 0 <= p.min() <= p.max() <= 1\n"
        "print('ok', m.card['training_patients'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok 191"


@pytest.mark.realdata
def test_pretrained_segments_real_lidc_crops(lidc_slices_dir):
    from nodulekit.metrics import per_nodule_dice
    from nodulekit.readers import read_lidc_release

    crops = read_lidc_release(lidc_slices_dir, patients=8, crop_size=64, progress=False)
    model = load_pretrained()
    probabilities = model.predict(crops.images)  # raw 8-bit crops, exactly as the reader gives them
    assert probabilities.shape == crops.images.shape
    masks = model.predict_masks(crops.images)
    assert set(np.unique(masks)) <= {0, 1}
    dice = per_nodule_dice(crops.masks, masks, crops.table["nodule_id"], empty="exclude")["dice"]
    # These patients were in its training data: this checks the model and its preprocessing travel
    # together (a broken pipeline gives Dice near 0), not generalisation (see MODEL_CARD.md).
    assert dice.mean() > 0.7
    single = model.predict(crops.images[0])
    assert single.shape == (64, 64)
    np.testing.assert_allclose(single, probabilities[0], atol=1e-5)
