"""Synthetic chest CT with lung nodules: nodulekit's built-in default data.

Real LIDC-IDRI cannot ship with the package, so nodulekit draws its own CT: 512x512 axial slices in
Hounsfield units of a whole chest (body outline, fat, muscle, ribs, spine, sternum, scapulae,
mediastinum with heart and great vessels, two lungs with branching vessels and airways), nodules of
the kinds radiologists annotate (solid, spiculated, part-solid, ground-glass, calcified, juxtapleural,
juxtavascular; 3-30 mm), partial-volume blur, correlated noise at a dose level, exact masks and four
simulated readers' masks.

* :func:`generate_crops` — nodule crops (a :class:`~nodulekit.dataset.CropSet` in HU), rendered
  only around each nodule: 1,000 64x64 crops take about 10-15 s of one CPU core.
* :func:`generate_volume`, :func:`generate_slice` — whole slices / series (a
  :class:`~nodulekit.dataset.Volume` with mask and nodule table).
* :func:`write_image_folder`, :func:`write_lidc_release` — the same crops as files in the formats
  the readers read (the paper's RGB PNG folder, the LIDC-IDRI PNG release), so the synthetic path
  and the real path share the reader code.
* :func:`realism_report` — how far the crops are from real ones, statistic by statistic, with
  :func:`blob_crops` (a naive phantom) as the reference to beat.

Examples
--------
>>> from nodulekit.phantom import generate_crops
>>> crops = generate_crops(16, size=64, seed=0)
>>> crops.units, crops.images.shape, crops.reader_masks.shape
('HU', (16, 64, 64), (16, 4, 64, 64))
"""

from __future__ import annotations

from .anatomy import Anatomy, make_anatomy
from .export import write_image_folder, write_lidc_release
from .generate import Scan, generate_crops, generate_slice, generate_volume, make_scan
from .nodules import DEFAULT_KIND_WEIGHTS, KINDS, LOG_SD_DIAMETER, MEDIAN_DIAMETER_MM, Nodule
from .realism import blob_crops, crop_statistics, realism_report, scale_per_crop

__all__ = [
    "generate_crops",
    "generate_volume",
    "generate_slice",
    "write_image_folder",
    "write_lidc_release",
    "realism_report",
    "crop_statistics",
    "blob_crops",
    "scale_per_crop",
    "KINDS",
    "DEFAULT_KIND_WEIGHTS",
    "MEDIAN_DIAMETER_MM",
    "LOG_SD_DIAMETER",
    "Anatomy",
    "Nodule",
    "Scan",
    "make_anatomy",
    "make_scan",
]
