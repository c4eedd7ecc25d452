"""Shared test set-up: quiet TensorFlow, QUICK mode, headless matplotlib, the real-data folder."""

from __future__ import annotations

import os
from pathlib import Path

# Before anything imports TensorFlow (notebook kernels inherit this environment too).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NODULEKIT_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NODULEKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
LIDC_SLICES = SHARED_DATA / "lidc" / "LIDC-IDRI-slices"
LIDC_SCAN = SHARED_DATA / "lidc" / "LIDC-IDRI-0001"
RISK_CSV = SHARED_DATA / "risk" / "cancer_patient_data_sets.csv"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (it lives in ../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def lidc_slices_dir() -> Path:
    """The LIDC-IDRI PNG release (191 patients); skips when ../shared/data is absent."""
    return _need(LIDC_SLICES)


@pytest.fixture(scope="session")
def lidc_scan_dir() -> Path:
    """The full LIDC-IDRI-0001 DICOM series with its XML reads; skips when absent."""
    return _need(LIDC_SCAN)


@pytest.fixture(scope="session")
def risk_csv() -> Path:
    """The real Kaggle risk-factor table; skips when absent."""
    return _need(RISK_CSV)


@pytest.fixture(scope="session")
def bright_disc_model():
    """A Keras "segmentation model" whose output is known in advance: a 1x1 convolution + sigmoid,
    probability > 0.5 where its input exceeds 1.5 (after the paper's per-image z-score: a bright
    disc in a flat background)."""
    import keras
    import numpy as np

    inputs = keras.Input((64, 64, 1))
    layer = keras.layers.Conv2D(1, 1, activation="sigmoid")
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([np.full((1, 1, 1, 1), 4.0, np.float32), np.full((1,), -6.0, np.float32)])
    return model
