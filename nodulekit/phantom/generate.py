"""Synthetic chest CT: nodule crops (:func:`generate_crops`), slices and volumes (:func:`generate_volume`).

Each synthetic patient is one :class:`~nodulekit.phantom.anatomy.Anatomy` scanned once with its own
scanner settings (:class:`Scan`: pixel size from the field of view, slice thickness, reconstruction
kernel sharpness, dose). A slice is rendered in Hounsfield units at native resolution: anatomy and
nodules averaged across the slice thickness (partial volume), blurred by the kernel's point-spread
function, plus correlated (not white) noise whose power spectrum peaks at mid frequencies as in
filtered back-projection, and, for some scans, streaks.

Crops are rendered only over a small window around each nodule (the same anatomy model at the same
resolution as a full slice), so 1,000 64x64 crops take seconds, not minutes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from tqdm.auto import tqdm

from ..dataset import CropSet, Volume
from ..errors import InvalidParameterError
from .anatomy import Anatomy, make_anatomy, render_region
from .nodules import (
    DEFAULT_KIND_WEIGHTS,
    KINDS,
    LOG_SD_DIAMETER,
    MEDIAN_DIAMETER_MM,
    Nodule,
    make_nodule,
    nodule_occupancy,
    sample_diameters,
    simulate_readers,
)

__all__ = ["Scan", "make_scan", "generate_crops", "generate_slice", "generate_volume"]

logger = logging.getLogger(__name__)

#: Slice thicknesses (mm) and how often LIDC-IDRI-like scans use them.
THICKNESSES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
THICKNESS_WEIGHTS = (0.08, 0.3, 0.05, 0.12, 0.4, 0.05)
#: Matrix size of a full axial slice.
MATRIX = 512
#: A pixel belongs to the ground-truth mask when the nodule, as blurred by the scanner, fills at least
#: this fraction of it. Radiologists outline the visible edge and LIDC-IDRI masks keep the partial-volume
#: rim: on the real crops the mask's inner boundary pixels sit at about 0.6 and the pixels just outside
#: at about 0.3 of the nodule-to-background contrast, which this level reproduces.
MASK_LEVEL = 0.4
_MARGIN = 8  # pixels rendered around a crop so blur and noise filters see no edge


@dataclass
class Scan:
    """Acquisition and reconstruction settings of one synthetic scan.

    Attributes
    ----------
    pixel : float
        In-plane pixel size (mm): the field of view over 512.
    thickness : float
        Slice thickness and spacing (mm).
    z0 : float
        Height (mm) of slice 0; slice k is at ``z0 + k * thickness``.
    psf_sigma : float
        Standard deviation (pixels) of the Gaussian point-spread function (kernel blur).
    noise_hu : float
        Noise standard deviation (HU).
    noise_grain : float
        Correlation length (pixels) of the noise.
    streaks : float
        Amplitude (HU) of streak artefacts (0 for most scans).
    """

    pixel: float
    thickness: float
    z0: float
    psf_sigma: float
    noise_hu: float
    noise_grain: float
    streaks: float
    fov_center: tuple = (0.0, 0.0)

    def pixel_grid(self, rows: slice | range, cols: slice | range):
        """Pixel-centre coordinates (mm) of a window of the 512x512 slice."""
        r = np.arange(rows.start, rows.stop)
        c = np.arange(cols.start, cols.stop)
        x = self.fov_center[0] + (c - (MATRIX - 1) / 2) * self.pixel
        y = self.fov_center[1] + (r - (MATRIX - 1) / 2) * self.pixel
        return np.meshgrid(x, y)

    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        """(row, column) of a point in the 512x512 slice."""
        return (
            (y - self.fov_center[1]) / self.pixel + (MATRIX - 1) / 2,
            (x - self.fov_center[0]) / self.pixel + (MATRIX - 1) / 2,
        )


def make_scan(anatomy: Anatomy, rng: np.random.Generator, *, dose: float | None = None) -> Scan:
    """Scanner settings for one patient.

    Parameters
    ----------
    anatomy : Anatomy
    rng : numpy.random.Generator
    dose : float, optional
        Relative dose (1 = routine; noise scales as ``1 / sqrt(dose)``). Default: drawn per scan
        between low-dose screening and routine.

    Returns
    -------
    Scan
    """
    fov = 2 * anatomy.body_a + rng.uniform(25.0, 80.0)
    sharp = rng.uniform(0.0, 1.0)  # 0 = soft (standard) kernel, 1 = sharp lung kernel
    if dose is None:
        dose = float(np.exp(rng.uniform(np.log(0.25), np.log(1.5))))
    noise = (12.0 + 55.0 * sharp**2) / np.sqrt(dose)
    return Scan(
        pixel=float(np.clip(fov / MATRIX, 0.5, 0.95)),
        thickness=float(rng.choice(THICKNESSES, p=THICKNESS_WEIGHTS)),
        z0=float(rng.uniform(-3.0, 3.0)),
        psf_sigma=float(1.0 - 0.5 * sharp),
        noise_hu=float(noise),
        noise_grain=float(0.7 + 0.6 * (1 - sharp)),
        streaks=float(rng.uniform(15.0, 60.0)) if rng.random() < 0.2 else 0.0,
        fov_center=(float(rng.uniform(-10.0, 10.0)), float(anatomy.body_b * 0.08 + rng.uniform(-10.0, 10.0))),
    )


def _noise(shape, scan: Scan, rng: np.random.Generator) -> np.ndarray:
    """Correlated CT noise: band-pass filtered white noise (FBP-like spectrum), std ``scan.noise_hu``."""
    white = rng.normal(size=shape)
    fine = ndi.gaussian_filter(white, scan.noise_grain)
    noise = fine - 0.55 * ndi.gaussian_filter(white, 3.0 * scan.noise_grain)
    noise *= scan.noise_hu / max(float(noise.std()), 1e-6)
    if scan.streaks:
        rows, cols = shape
        yy, xx = np.mgrid[0:rows, 0:cols]
        for _ in range(rng.integers(3, 9)):
            angle = rng.normal(0.0, 0.25)
            offset = rng.uniform(-rows, 2 * rows)
            dist = (yy * np.cos(angle) - xx * np.sin(angle)) - offset * np.cos(angle)
            noise += rng.choice([-1.0, 1.0]) * scan.streaks * rng.uniform(0.3, 1.0) * np.exp(-(dist**2) / 1.5)
    return noise


def _render(
    anatomy: Anatomy,
    scan: Scan,
    nodules: list[Nodule],
    rows: range,
    cols: range,
    z: float,
    rng: np.random.Generator,
) -> dict:
    """One slab of the scan over a window: HU image plus each nodule's occupancy."""
    x, y = scan.pixel_grid(rows, cols)
    drawn = render_region(anatomy, x, y, z, pixel=scan.pixel, thickness=scan.thickness, rng=rng)
    hu = drawn["hu"]
    lung = drawn["lung"]  # nodules live in the lung (vessels included), never in the wall or liver
    occupancies = []
    for nodule in nodules:
        out = nodule_occupancy(nodule, x, y, drawn["z_samples"], scan.pixel, rng)
        occ = out["occupancy"] * lung
        if occ.any():
            if nodule.has_ggo:
                # ground glass adds density: vessels inside it stay visible
                solid = out["solid"] * lung
                target = np.maximum(hu, out["hu"])
                hu = hu + (occ - solid) * (target - hu) + solid * (out["hu"] - hu)
            else:
                hu = hu + occ * (out["hu"] - hu)
        # what a reader sees: the nodule's slab occupancy blurred by the scanner's point-spread function
        occupancies.append(ndi.gaussian_filter(occ, scan.psf_sigma) if occ.any() else occ)
    hu = ndi.gaussian_filter(hu, scan.psf_sigma)
    hu = hu + _noise(hu.shape, scan, rng)
    return {"hu": hu.astype(np.float32), "occupancies": occupancies, "lung": lung}


def _kind_weights(kinds) -> tuple[list[str], np.ndarray]:
    if kinds is None:
        kinds = DEFAULT_KIND_WEIGHTS
    if isinstance(kinds, str):
        kinds = [kinds]
    if isinstance(kinds, dict):
        names, weights = list(kinds), np.array([float(v) for v in kinds.values()])
    else:
        names = list(kinds)
        weights = np.array([DEFAULT_KIND_WEIGHTS.get(k, 0.0) for k in names])
        if not weights.sum():
            weights = np.ones(len(names))
    unknown = [k for k in names if k not in KINDS]
    if unknown or not names:
        raise InvalidParameterError(f"kinds must be a non-empty subset of {KINDS}, got {names!r}")
    if (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
        raise InvalidParameterError(f"kinds weights must be non-negative with a positive sum, got {kinds!r}")
    return names, weights / weights.sum()


def _check_common(*, readers, diameter_range, dose, seed):
    if not isinstance(readers, (int, np.integer)) or not 0 <= readers <= 8:
        raise InvalidParameterError(f"readers must be an integer in [0, 8], got {readers!r}")
    try:
        low, high = (float(v) for v in diameter_range)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"diameter_range must be two numbers (low, high) in mm, got {diameter_range!r}") from None
    if not (3.0 <= low <= high <= 30.0):
        raise InvalidParameterError(f"diameter_range must satisfy 3 <= low <= high <= 30 (mm), got {diameter_range!r}")
    if dose is not None and not (0.05 <= dose <= 10.0):
        raise InvalidParameterError(f"dose must be in [0.05, 10] (relative to routine dose), got {dose!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidParameterError(f"seed must be a non-negative integer, got {seed!r}")


def _nodule_slices(nodule: Nodule, scan: Scan) -> np.ndarray:
    """Indices of the slices whose slab meets the nodule."""
    extent = nodule.extent
    first = np.ceil((nodule.center[2] - extent - scan.thickness / 2 - scan.z0) / scan.thickness)
    last = np.floor((nodule.center[2] + extent + scan.thickness / 2 - scan.z0) / scan.thickness)
    return np.arange(int(first), int(last) + 1)


def generate_crops(
    n: int,
    *,
    size: int = 64,
    seed: int = 0,
    kinds=None,
    readers: int = 4,
    diameter_range: tuple[float, float] = (3.0, 30.0),
    median_diameter: float = MEDIAN_DIAMETER_MM,
    nodules_per_patient: tuple[int, int] = (2, 8),
    dose: float | None = None,
    mask: str = "exact",
    progress: bool = False,
) -> CropSet:
    """Synthetic CT crops centred on lung nodules, with exact and simulated readers' masks.

    Patients are drawn one after another; each holds ``nodules_per_patient`` nodules and every
    axial slice through a nodule becomes one crop (as in the LIDC-IDRI PNG release), until ``n``
    crops exist. The same ``seed`` gives the same crops, and a smaller ``n`` gives a prefix of a
    larger one.

    Parameters
    ----------
    n : int
        Number of crops (>= 1).
    size : int
        Crop side in pixels (16-512).
    seed : int
        Seed of everything random.
    kinds : sequence of str or dict, optional
        Nodule kinds to draw (:data:`~nodulekit.phantom.nodules.KINDS`), optionally with weights
        ``{"solid": 2, "ground_glass": 1}``. Default: the LIDC-like mix
        :data:`~nodulekit.phantom.nodules.DEFAULT_KIND_WEIGHTS`.
    readers : int
        Simulated readers (0-8). Their masks are ``reader_masks``; 0 gives none.
    diameter_range : (float, float)
        Nominal diameters (mm) to draw from, within 3-30 mm.
    median_diameter : float
        Median of the log-normal size distribution (mm).
    nodules_per_patient : (int, int)
        Inclusive range of nodules per synthetic patient.
    dose : float, optional
        Relative dose for every scan (noise ~ 1/sqrt(dose)); default varies per scan.
    mask : {"exact", "consensus"}
        ``masks`` holds the exact nodule cross-section (occupancy >= 0.5) or the readers' 50 % consensus.
    progress : bool
        Show a progress bar.

    Returns
    -------
    CropSet
        ``units="HU"``; the table has the standard columns plus ``kind``, ``diameter_mm``,
        ``juxtapleural``, ``juxtavascular``, ``row``/``column`` of the crop centre in the 512x512 slice.

    Raises
    ------
    InvalidParameterError
        A parameter is out of range (each message names it and the allowed range).

    Examples
    --------
    >>> crops = generate_crops(8, seed=1)
    >>> crops.images.shape, crops.units
    ((8, 64, 64), 'HU')
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidParameterError(f"n must be a positive integer, got {n!r}")
    if not isinstance(size, (int, np.integer)) or not 16 <= size <= 512:
        raise InvalidParameterError(f"size must be an integer in [16, 512] pixels, got {size!r}")
    if mask not in ("exact", "consensus"):
        raise InvalidParameterError(f"mask must be 'exact' or 'consensus', got {mask!r}")
    lo, hi = nodules_per_patient
    if not 1 <= lo <= hi <= 50:
        raise InvalidParameterError(f"nodules_per_patient must satisfy 1 <= low <= high <= 50, got {nodules_per_patient!r}")
    if not 3.0 <= median_diameter <= 30.0:
        raise InvalidParameterError(f"median_diameter must be in [3, 30] mm, got {median_diameter!r}")
    _check_common(readers=readers, diameter_range=diameter_range, dose=dose, seed=seed)
    names, weights = _kind_weights(kinds)

    images, exact, reader_masks, rows = [], [], [], []
    bar = tqdm(total=n, disable=not progress, desc="synthetic crops", unit="crop")
    patient = 0
    while len(images) < n:
        patient += 1
        rng = np.random.default_rng([int(seed), patient])
        anatomy = make_anatomy(rng)
        scan = make_scan(anatomy, rng, dose=dose)
        patient_id = f"SYN-{int(seed) % 10000:04d}-{patient:04d}"
        count = int(rng.integers(lo, hi + 1))
        diameters = sample_diameters(count, rng, diameter_range=diameter_range, median=median_diameter, log_sd=LOG_SD_DIAMETER)
        for number, diameter in enumerate(diameters):
            kind = str(rng.choice(names, p=weights))
            if kind == "calcified":  # calcified granulomas are small
                diameter = min(float(diameter), float(rng.uniform(max(4.0, diameter_range[0]), max(12.0, diameter_range[0]))))
            nodule = make_nodule(anatomy, kind, float(diameter), rng)
            for crop in _nodule_crops(anatomy, scan, nodule, size, rng, readers=readers):
                images.append(crop["image"])
                exact.append(crop["exact"])
                reader_masks.append(crop["readers"])
                rows.append(
                    {
                        "patient_id": patient_id,
                        "nodule_id": f"{patient_id}/nodule-{number}",
                        "slice_index": crop["slice"],
                        "pixel_spacing_mm": scan.pixel,
                        "slice_spacing_mm": scan.thickness,
                        "n_readers": crop["n_readers"],
                        "source": "synthetic",
                        "kind": kind,
                        "diameter_mm": round(float(diameter), 3),
                        "juxtapleural": nodule.juxtapleural,
                        "juxtavascular": nodule.juxtavascular,
                        "row": crop["row"],
                        "column": crop["column"],
                        "z_mm": crop["z"],
                        "noise_hu": scan.noise_hu,
                    }
                )
                bar.update(1)
                if len(images) >= n:
                    break
            if len(images) >= n:
                break
    bar.close()
    logger.info("generated %d synthetic crops from %d patients (seed %d)", len(images), patient, seed)
    table = pd.DataFrame(rows)
    exact_masks = np.array(exact, dtype=np.uint8)
    readers_array = np.array(reader_masks, dtype=np.uint8) if readers else None
    if mask == "consensus" and readers_array is not None:
        votes = readers_array.sum(axis=1)
        needed = np.maximum(table["n_readers"].to_numpy(), 1)[:, None, None] * 0.5
        masks = ((votes >= needed) & (votes > 0)).astype(np.uint8)
    else:
        masks = exact_masks
    return CropSet(images=np.array(images, dtype=np.float32), masks=masks, table=table, reader_masks=readers_array, units="HU")


def _nodule_crops(anatomy: Anatomy, scan: Scan, nodule: Nodule, size: int, rng: np.random.Generator, *, readers: int):
    """Render every slice through ``nodule`` over a window of ``size`` pixels around it."""
    row, col = scan.to_pixel(nodule.center[0], nodule.center[1])
    row = int(round(row + rng.normal(0.0, 0.8)))
    col = int(round(col + rng.normal(0.0, 0.8)))
    half = size // 2
    rows = range(row - half - _MARGIN, row - half + size + _MARGIN)
    cols = range(col - half - _MARGIN, col - half + size + _MARGIN)
    inner = (slice(_MARGIN, _MARGIN + size), slice(_MARGIN, _MARGIN + size))
    rendered = []
    for k in _nodule_slices(nodule, scan):
        z = scan.z0 + k * scan.thickness
        out = _render(anatomy, scan, [nodule], rows, cols, z, rng)
        occ = out["occupancies"][0]
        rendered.append((k, z, out["hu"][inner], occ[inner], out["lung"][inner] > 0.5))
    occupancy = [r[3] for r in rendered]
    allowed = [r[4] for r in rendered]
    masks, n_marking = simulate_readers(occupancy, allowed, nodule.diameter, rng, readers=readers) if rendered else (None, 0)
    for i, (k, z, image, occ, _) in enumerate(rendered):
        exact = _main_components(occ >= MASK_LEVEL)
        marked = readers and masks[i].any()
        if not exact.any() and not marked:
            continue
        yield {
            "image": image,
            "exact": exact,
            "readers": masks[i] if readers else None,
            "n_readers": n_marking if readers else 1,
            "slice": int(k),
            "row": row,
            "column": col,
            "z": round(float(z), 3),
        }


def _main_components(mask: np.ndarray, *, keep: float = 0.25) -> np.ndarray:
    """Drop fragments smaller than ``keep`` times the largest connected component."""
    labels, count = ndi.label(mask)
    if count <= 1:
        return mask
    sizes = ndi.sum(mask, labels, index=np.arange(1, count + 1))
    return np.isin(labels, 1 + np.flatnonzero(sizes >= keep * sizes.max()))


def generate_slice(*, seed: int = 0, height: float = 0.5, n_nodules: int = 2, kinds=None, dose: float | None = None) -> Volume:
    """One synthetic 512x512 axial slice (a one-slice :class:`~nodulekit.dataset.Volume`).

    Parameters
    ----------
    seed : int
    height : float
        Where the slice lies between the lung bases (0) and the apices (1).
    n_nodules : int
        Nodules placed in this slice (0-20).
    kinds, dose
        As in :func:`generate_crops`.

    Returns
    -------
    Volume
        Shape (1, 512, 512) with mask and nodule table.
    """
    if not 0.0 <= height <= 1.0:
        raise InvalidParameterError(f"height must be in [0, 1] (lung base to apex), got {height!r}")
    return generate_volume(
        n_slices=1, n_nodules=n_nodules, seed=seed, kinds=kinds, dose=dose, center=height, median_diameter=12.0
    )


def generate_volume(
    *,
    n_slices: int = 24,
    n_nodules: int = 3,
    seed: int = 0,
    kinds=None,
    readers: int = 4,
    diameter_range: tuple[float, float] = (3.0, 30.0),
    median_diameter: float = 9.0,
    thickness: float | None = None,
    dose: float | None = None,
    center: float = 0.55,
    progress: bool = False,
) -> Volume:
    """A synthetic chest CT series: ``n_slices`` consecutive 512x512 axial slices with nodules.

    Parameters
    ----------
    n_slices : int
        Number of slices (1-400); they are centred on the middle of the lungs.
    n_nodules : int
        Nodules placed in the covered lung (0-20); each spans consecutive slices.
    seed : int
    kinds, readers, diameter_range, dose
        As in :func:`generate_crops`.
    median_diameter : float
        Median nominal diameter (mm) of the nodules (larger than for crops, so they are easy to see).
    thickness : float, optional
        Slice thickness and spacing (mm, 0.5-5); default drawn like LIDC-IDRI (1-3 mm).
    center : float
        Height of the middle slice between the lung bases (0) and the apices (1).
    progress : bool

    Returns
    -------
    Volume
        ``hu`` (slices, 512, 512) float32, ``spacing`` (thickness, pixel, pixel), ``mask`` (exact
        nodule masks), ``nodules`` (nodule_id, z, y, x voxel centre, diameter_mm, kind, juxtapleural,
        juxtavascular), ``meta`` with ``reader_masks`` (readers, slices, 512, 512) uint8,
        ``n_readers`` per nodule, the scan settings and ``source="synthetic"``.
    """
    if not isinstance(n_slices, (int, np.integer)) or not 1 <= n_slices <= 400:
        raise InvalidParameterError(f"n_slices must be an integer in [1, 400], got {n_slices!r}")
    if not isinstance(n_nodules, (int, np.integer)) or not 0 <= n_nodules <= 20:
        raise InvalidParameterError(f"n_nodules must be an integer in [0, 20], got {n_nodules!r}")
    if thickness is not None and not 0.5 <= thickness <= 5.0:
        raise InvalidParameterError(f"thickness must be in [0.5, 5] mm, got {thickness!r}")
    if not 3.0 <= median_diameter <= 30.0:
        raise InvalidParameterError(f"median_diameter must be in [3, 30] mm, got {median_diameter!r}")
    _check_common(readers=readers, diameter_range=diameter_range, dose=dose, seed=seed)
    names, weights = _kind_weights(kinds)
    if not 0.0 <= center <= 1.0:
        raise InvalidParameterError(f"center must be in [0, 1] (lung base to apex), got {center!r}")
    rng = np.random.default_rng([int(seed), 0])
    anatomy = make_anatomy(rng)
    scan = make_scan(anatomy, rng, dose=dose)
    if thickness is not None:
        scan.thickness = float(thickness)
    span = n_slices * scan.thickness
    if span > 1.3 * anatomy.height:
        raise InvalidParameterError(
            f"n_slices x thickness = {span:.0f} mm exceeds the synthetic chest ({1.3 * anatomy.height:.0f} mm); "
            f"allowed n_slices <= {int(1.3 * anatomy.height / scan.thickness)}"
        )
    scan.z0 = center * anatomy.height - (n_slices - 1) / 2 * scan.thickness
    z_top = scan.z0 + (n_slices - 1) * scan.thickness
    z_range = (scan.z0 - scan.thickness / 2, z_top + scan.thickness / 2)
    lung_range = (max(z_range[0], 0.03 * anatomy.height), min(z_range[1], 0.97 * anatomy.height))
    nodules = []
    diameters = sample_diameters(n_nodules, rng, diameter_range=diameter_range, median=median_diameter)
    for diameter in diameters:
        kind = str(rng.choice(names, p=weights))
        if kind == "calcified":
            diameter = min(float(diameter), float(rng.uniform(max(4.0, diameter_range[0]), max(12.0, diameter_range[0]))))
        if lung_range[1] <= lung_range[0]:
            raise InvalidParameterError("n_nodules > 0 needs slices that cover the lungs")
        nodules.append(make_nodule(anatomy, kind, float(diameter), rng, z_range=lung_range))
    hu = np.empty((n_slices, MATRIX, MATRIX), dtype=np.float32)
    occupancy = np.zeros((len(nodules), n_slices, MATRIX, MATRIX), dtype=np.float32)
    lung = np.zeros((n_slices, MATRIX, MATRIX), dtype=bool)
    full = range(0, MATRIX)
    for k in tqdm(range(n_slices), disable=not progress, desc="synthetic slices"):
        out = _render(anatomy, scan, nodules, full, full, scan.z0 + k * scan.thickness, rng)
        hu[k] = out["hu"]
        lung[k] = out["lung"] > 0.5
        for i, occ in enumerate(out["occupancies"]):
            occupancy[i, k] = occ
    mask = (occupancy >= MASK_LEVEL).any(axis=0) if nodules else np.zeros(hu.shape, dtype=bool)
    reader_masks = np.zeros((readers, n_slices, MATRIX, MATRIX), dtype=np.uint8)
    table = []
    for i, nodule in enumerate(nodules):
        masks, n_marking = simulate_readers(list(occupancy[i]), list(lung), nodule.diameter, rng, readers=readers)
        if readers:
            reader_masks |= masks.transpose(1, 0, 2, 3)
        r, c = scan.to_pixel(nodule.center[0], nodule.center[1])
        table.append(
            {
                "nodule_id": f"nodule-{i}",
                "z": (nodule.center[2] - scan.z0) / scan.thickness,
                "y": r,
                "x": c,
                "diameter_mm": nodule.diameter,
                "kind": nodule.kind,
                "juxtapleural": nodule.juxtapleural,
                "juxtavascular": nodule.juxtavascular,
                "n_readers": n_marking,
            }
        )
    columns = ["nodule_id", "z", "y", "x", "diameter_mm", "kind", "juxtapleural", "juxtavascular", "n_readers"]
    nodules_table = pd.DataFrame(table, columns=columns)
    meta = {
        "source": "synthetic",
        "patient_id": f"SYN-{int(seed) % 10000:04d}-0000",
        "seed": int(seed),
        "scan": asdict(scan),
        "z_positions": [scan.z0 + k * scan.thickness for k in range(n_slices)],
        "reader_masks": reader_masks if readers else None,
        "contrast": anatomy.extras.get("contrast", False),
    }
    return Volume(
        hu=hu,
        spacing=(scan.thickness, scan.pixel, scan.pixel),
        mask=mask.astype(np.uint8),
        nodules=nodules_table,
        meta=meta,
    )
