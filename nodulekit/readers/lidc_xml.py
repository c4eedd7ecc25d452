"""LIDC-IDRI radiologist reads (``LidcReadMessage`` XML) on top of a DICOM series.

Each ``readingSession`` is one radiologist. Each ``unblindedReadNodule`` (a nodule >= 3 mm) has
``roi`` outlines per slice: an ``edgeMap`` polygon in pixel coordinates (x = column, y = row), the
slice's ``imageSOP_UID`` and ``imageZposition``, and ``inclusion`` (FALSE = a hole). Masks follow
pylidc's convention: the polygon interior is filled and the drawn outline pixels are excluded;
exclusion outlines cut holes. The readers' marks of one physical nodule are grouped (they overlap
or their centroids are close), and the ground truth is the consensus of the readers who marked it.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from ..dataset import Volume
from ..errors import DataFormatError, InvalidParameterError, MissingDataError
from ..crops import consensus_mask

__all__ = ["read_lidc_xml", "parse_lidc_xml", "polygon_mask", "CHARACTERISTICS"]

logger = logging.getLogger(__name__)

#: Radiologist ratings kept per nodule (LIDC scales: malignancy 1-5, subtlety 1-5, ...).
CHARACTERISTICS = (
    "subtlety",
    "internalStructure",
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "malignancy",
)


@dataclass
class Roi:
    """One outline of one reader's nodule on one slice."""

    sop_uid: str
    z_position: float
    inclusion: bool
    points: np.ndarray  # (n, 2) as (row, column)


@dataclass
class Annotation:
    """One reader's mark of one nodule: outlines on several slices and the ratings."""

    reader: int
    radiologist_id: str
    xml_nodule_id: str
    rois: list[Roi]
    characteristics: dict = field(default_factory=dict)


def _strip(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element, name: str):
    for child in element:
        if _strip(child.tag) == name:
            return child
    return None


def _children(element, name: str) -> list:
    return [child for child in element if _strip(child.tag) == name]


def _text(element, name: str, default: str = "") -> str:
    child = _child(element, name)
    return default if child is None or child.text is None else child.text.strip()


def parse_lidc_xml(xml_path: str | os.PathLike) -> tuple[dict, list[Annotation]]:
    """Parse a ``LidcReadMessage`` file into its header and the readers' nodule annotations.

    Returns
    -------
    header : dict
        ``series_uid``, ``study_uid``, ``n_readers`` (reading sessions), ``radiologist_ids``.
    annotations : list of Annotation
        One per ``unblindedReadNodule``, with ``reader`` = the session's position (0, 1, ...).

    Raises
    ------
    MissingDataError
        The file does not exist.
    DataFormatError
        Not well-formed XML, not a ``LidcReadMessage``, no reading session, or a malformed ROI.
    """
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        raise MissingDataError("LIDC XML file not found", path=xml_path)
    try:
        root = ElementTree.parse(xml_path).getroot()
    except (ElementTree.ParseError, ValueError, LookupError) as exc:  # LookupError: unknown encoding
        raise DataFormatError(f"not well-formed XML ({exc})", path=xml_path) from exc
    if _strip(root.tag) != "LidcReadMessage":
        raise DataFormatError(
            f"not an LIDC CT read (root element <{_strip(root.tag)}>, expected <LidcReadMessage>)", path=xml_path
        )
    header_element = _child(root, "ResponseHeader")
    sessions = _children(root, "readingSession")
    if not sessions:
        raise DataFormatError("the XML holds no readingSession (no radiologist reads)", path=xml_path)
    header = {
        "series_uid": "" if header_element is None else _text(header_element, "SeriesInstanceUid"),
        "study_uid": "" if header_element is None else _text(header_element, "StudyInstanceUID"),
        "n_readers": len(sessions),
        "radiologist_ids": [_text(s, "servicingRadiologistID") for s in sessions],
    }
    annotations = []
    for reader, session in enumerate(sessions):
        for nodule in _children(session, "unblindedReadNodule"):
            rois = []
            for roi in _children(nodule, "roi"):
                try:
                    points = np.asarray(
                        [
                            (int(float(_text(edge, "yCoord"))), int(float(_text(edge, "xCoord"))))
                            for edge in _children(roi, "edgeMap")
                        ],
                        dtype=np.int64,
                    ).reshape(-1, 2)
                    z_position = float(_text(roi, "imageZposition", "nan"))
                except (ValueError, OverflowError) as exc:  # "abc", "nan", "inf", "1e300" coordinates
                    raise DataFormatError(
                        f"malformed roi of nodule {_text(nodule, 'noduleID')!r} in reading session {reader} ({exc})",
                        path=xml_path,
                    ) from exc
                if not len(points):
                    continue
                rois.append(
                    Roi(
                        sop_uid=_text(roi, "imageSOP_UID"),
                        z_position=z_position,
                        inclusion=_text(roi, "inclusion", "TRUE").upper() == "TRUE",
                        points=points,
                    )
                )
            if not rois:
                continue
            ratings_element = _child(nodule, "characteristics")
            ratings = {}
            if ratings_element is not None:
                for name in CHARACTERISTICS:
                    value = _text(ratings_element, name)
                    if value:
                        try:
                            ratings[name] = int(float(value))
                        except (ValueError, OverflowError):
                            logger.warning("%s: ignored the %s rating %r (not a number)", xml_path, name, value)
            annotations.append(
                Annotation(
                    reader=reader,
                    radiologist_id=header["radiologist_ids"][reader],
                    xml_nodule_id=_text(nodule, "noduleID"),
                    rois=rois,
                    characteristics=ratings,
                )
            )
    return header, annotations


def polygon_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Filled interior of a closed outline, the outline pixels themselves excluded (pylidc).

    Parameters
    ----------
    points : ndarray, shape (n, 2)
        Outline vertices as (row, column) pixel indices.
    shape : (int, int)
        Image rows and columns.

    Returns
    -------
    ndarray of bool, shape ``shape``
        Pixels strictly inside the polygon (matplotlib's point-in-polygon test, as pylidc) minus
        the vertex pixels. A single point or a line encloses nothing.

    Examples
    --------
    LIDC outlines are 8-connected chains of pixels, so every pixel is either a vertex (excluded) or
    clearly inside or outside:

    >>> ring = np.array([(1, 1), (1, 2), (1, 3), (1, 4), (2, 4), (3, 4), (4, 4), (4, 3), (4, 2),
    ...                  (4, 1), (3, 1), (2, 1)])
    >>> polygon_mask(ring, (6, 6)).astype(int)[1:5, 1:5]
    array([[0, 0, 0, 0],
           [0, 1, 1, 0],
           [0, 1, 1, 0],
           [0, 0, 0, 0]])
    """
    from matplotlib.path import Path as PolygonPath

    points = np.asarray(points, dtype=np.int64)
    mask = np.zeros(shape, bool)
    if len(points) < 3:
        return mask
    closed = points if (points[0] == points[-1]).all() else np.vstack([points, points[:1]])
    low = np.maximum(closed.min(axis=0), 0)
    high = np.minimum(closed.max(axis=0), np.asarray(shape) - 1)
    rows, columns = np.mgrid[low[0] : high[0] + 1, low[1] : high[1] + 1]
    inside = PolygonPath(closed.astype(float), closed=True).contains_points(np.c_[rows.ravel(), columns.ravel()])
    mask[low[0] : high[0] + 1, low[1] : high[1] + 1] = inside.reshape(rows.shape)
    mask[closed[:, 0], closed[:, 1]] = False
    return mask


def _slice_lookup(volume: Volume, xml_path: Path):
    """Function mapping a roi to its slice index: by SOP instance UID when the volume knows its
    slices' UIDs (DICOM), else by ``imageZposition`` (within 0.01 mm)."""
    uids = {uid: index for index, uid in enumerate(volume.meta.get("sop_uids") or [])}
    z_positions = np.asarray(volume.meta.get("z_positions") or [], float)
    if not uids and z_positions.size == 0:
        raise DataFormatError(
            "the volume has no slice SOP UIDs or z positions (read it with read_dicom_series)", path=xml_path
        )

    def lookup(roi: Roi) -> int | None:
        if uids:  # DICOM volumes: the SOP instance UID is authoritative
            return uids.get(roi.sop_uid)
        if z_positions.size and np.isfinite(roi.z_position):
            nearest = int(np.argmin(np.abs(z_positions - roi.z_position)))
            if abs(z_positions[nearest] - roi.z_position) < 1e-2:
                return nearest
        return None

    return lookup


def _annotation_masks(annotation: Annotation, lookup, shape, xml_path: Path) -> tuple[dict[int, np.ndarray], int]:
    """Slice index -> 2-D mask of one annotation (inclusions first, then holes), and unmatched rois."""
    rows, columns = shape
    per_slice: dict[int, np.ndarray] = {}
    unmatched = 0
    ordered = [r for r in annotation.rois if r.inclusion] + [r for r in annotation.rois if not r.inclusion]
    for roi in ordered:
        index = lookup(roi)
        if index is None:
            unmatched += 1
            continue
        if (roi.points < 0).any() or (roi.points[:, 0] >= rows).any() or (roi.points[:, 1] >= columns).any():
            raise DataFormatError(
                f"roi of reader {annotation.reader} nodule {annotation.xml_nodule_id!r} has points outside the "
                f"{rows}x{columns} image",
                path=xml_path,
            )
        slice_mask = per_slice.setdefault(index, np.zeros(shape, bool))
        region = polygon_mask(roi.points, shape)
        if roi.inclusion:
            slice_mask |= region
        else:
            slice_mask &= ~region
        slice_mask[roi.points[:, 0], roi.points[:, 1]] = False
    return per_slice, unmatched


def _centroid(per_slice: dict[int, np.ndarray], annotation: Annotation, lookup) -> np.ndarray:
    """Voxel centroid of an annotation's mask, or of its outline points when the mask is empty."""
    voxels = [np.c_[np.full(m.sum(), k), np.argwhere(m)] for k, m in per_slice.items() if m.any()]
    if voxels:
        return np.concatenate(voxels).mean(axis=0)
    points = [np.c_[np.full(len(r.points), lookup(r)), r.points] for r in annotation.rois if lookup(r) is not None]
    return np.concatenate(points).mean(axis=0).astype(float) if points else np.full(3, np.nan)


def read_lidc_xml(
    xml_path: str | os.PathLike,
    volume: Volume,
    *,
    consensus: float | str = 0.5,
    max_distance_mm: float = 5.0,
    include_small: bool = False,
) -> Volume:
    """Add LIDC radiologist reads to a DICOM volume: per-reader masks, nodules, consensus mask.

    Parameters
    ----------
    xml_path : path
        The ``LidcReadMessage`` XML of the series (e.g. ``069.xml``).
    volume : Volume
        The series from :func:`~nodulekit.readers.read_dicom_series` (its ``meta`` holds the slices'
        SOP UIDs and z positions).
    consensus : float in (0, 1] or "union"
        Consensus level among the readers who marked a nodule (pylidc's ``clevel``; default 0.5).
    max_distance_mm : float
        Two readers' marks are one nodule when their masks overlap or their centroids are closer
        than this (in mm, using the voxel spacing).
    include_small : bool
        Also keep nodules < 3 mm (marked by a single point, so their masks are empty).

    Returns
    -------
    Volume
        A copy of ``volume`` with ``mask`` = union of the nodules' consensus masks, ``nodules`` =
        one row per nodule (``nodule_id`` "nodule-0", ... ordered by z; voxel centre ``z, y, x``
        = centre of mass of the consensus mask; ``n_readers``; ``readers``; ``z_min``/``z_max``
        the slices any reader marked; ``diameter_mm``; median ``malignancy``, ``subtlety``, ...
        and the per-reader ``malignancy_ratings``/``subtlety_ratings``) and ``meta`` gaining
        ``annotations`` (one row per reader mark), ``nodule_masks`` ({nodule_id: {"offset":
        (z, y, x), "reader_masks": (readers, dz, dy, dx) uint8}}, readers in session order),
        ``n_readers`` (sessions) and ``xml``.

    Raises
    ------
    MissingDataError
        The XML file does not exist.
    DataFormatError
        Not an LIDC CT read, another series than the volume's, ROIs whose SOP UIDs (and z
        positions) match no slice, or ROI points outside the image.
    InvalidParameterError
        Bad ``consensus`` or ``max_distance_mm``.

    References
    ----------
    Armato et al., Med. Phys. 38:915-931, 2011; Hancock & Magnan, pylidc, 2016.
    """
    xml_path = Path(xml_path)
    consensus_mask(np.zeros((1, 1, 1), np.uint8), level=consensus)  # validate early
    if not max_distance_mm > 0:
        raise InvalidParameterError(f"max_distance_mm must be > 0, got {max_distance_mm}")
    header, annotations = parse_lidc_xml(xml_path)
    series = volume.meta.get("series_uid")
    if header["series_uid"] and series and header["series_uid"] != series:
        raise DataFormatError(
            f"the XML reads series {header['series_uid']}, but the volume is series {series}", path=xml_path
        )
    lookup = _slice_lookup(volume, xml_path)
    shape = volume.hu.shape[1:]
    spacing = np.asarray(volume.spacing)

    marks, rows_out, unmatched, total = [], [], 0, 0
    for annotation in annotations:
        per_slice, missed = _annotation_masks(annotation, lookup, shape, xml_path)
        unmatched += missed
        total += len(annotation.rois)
        small = all(len(r.points) < 3 for r in annotation.rois)
        if not per_slice or (small and not include_small):
            continue
        marks.append((annotation, per_slice, _centroid(per_slice, annotation, lookup), small))
    if total and unmatched == total:
        raise DataFormatError(
            f"none of the {total} ROI SOP UIDs (or z positions) in the XML matches a slice of the series "
            f"({volume.meta.get('source', 'volume')}): the XML belongs to another scan",
            path=xml_path,
        )
    if unmatched:
        logger.warning("%s: %d of %d ROIs match no slice and were skipped", xml_path, unmatched, total)

    groups = _group_marks(marks, spacing, max_distance_mm)
    nodules, nodule_masks, mask = [], {}, np.zeros(volume.hu.shape, np.uint8)
    order = sorted(range(len(groups)), key=lambda g: min(marks[m][2][0] for m in groups[g]))
    for number, group_index in enumerate(order):
        members = groups[group_index]
        nodule_id = f"nodule-{number}"
        slices = sorted({k for m in members for k in marks[m][1]})
        all_masks = [m2 for m in members for m2 in marks[m][1].values()]
        union2d = np.logical_or.reduce(all_masks)
        if union2d.any():
            (r0, c0), (r1, c1) = np.argwhere(union2d).min(axis=0), np.argwhere(union2d).max(axis=0)
        else:  # a small nodule: its outline points
            points = np.concatenate([r.points for m in members for r in marks[m][0].rois])
            (r0, c0), (r1, c1) = points.min(axis=0), points.max(axis=0)
        z0, z1 = slices[0], slices[-1]
        n_sessions = header["n_readers"]
        readers_block = np.zeros((n_sessions, z1 - z0 + 1, r1 - r0 + 1, c1 - c0 + 1), np.uint8)
        readers = sorted({marks[m][0].reader for m in members})
        for m in members:
            annotation, per_slice = marks[m][0], marks[m][1]
            for k, slice_mask in per_slice.items():
                readers_block[annotation.reader, k - z0] |= slice_mask[r0 : r1 + 1, c0 : c1 + 1]
        agree = consensus_mask(readers_block.transpose(1, 0, 2, 3), level=consensus, n_readers=len(readers))
        mask[z0 : z1 + 1, r0 : r1 + 1, c0 : c1 + 1] |= agree
        source = agree if agree.any() else readers_block.max(axis=0)
        if source.any():
            centre = np.asarray(ndimage.center_of_mass(source)) + (z0, r0, c0)
        else:
            centre = np.nanmean([marks[m][2] for m in members], axis=0)
        area = agree.sum(axis=(1, 2)).max() if agree.any() else 0
        row = {
            "nodule_id": nodule_id,
            "z": float(centre[0]),
            "y": float(centre[1]),
            "x": float(centre[2]),
            "n_readers": len(readers),
            "readers": readers,
            "z_min": int(z0),
            "z_max": int(z1),
            "diameter_mm": float(2 * np.sqrt(area / np.pi) * np.sqrt(spacing[1] * spacing[2])),
            "small": all(marks[m][3] for m in members),
        }
        for name in CHARACTERISTICS:
            ratings = [marks[m][0].characteristics[name] for m in members if name in marks[m][0].characteristics]
            row[name] = float(np.median(ratings)) if ratings else np.nan
            if name in ("malignancy", "subtlety"):
                row[f"{name}_ratings"] = ratings
        nodules.append(row)
        nodule_masks[nodule_id] = {"offset": (int(z0), int(r0), int(c0)), "reader_masks": readers_block}
        for m in members:
            annotation, _, centroid, small = marks[m]
            rows_out.append(
                {
                    "nodule_id": nodule_id,
                    "reader": annotation.reader,
                    "radiologist_id": annotation.radiologist_id,
                    "xml_nodule_id": annotation.xml_nodule_id,
                    "n_rois": len(annotation.rois),
                    "z": centroid[0],
                    "y": centroid[1],
                    "x": centroid[2],
                    "small": small,
                    **annotation.characteristics,
                }
            )
    nodule_columns = ["nodule_id", "z", "y", "x", "n_readers", "readers", "z_min", "z_max", "diameter_mm", "small"]
    meta = dict(volume.meta)
    meta.update(
        {
            "xml": str(xml_path),
            "n_readers": header["n_readers"],
            "radiologist_ids": header["radiologist_ids"],
            "consensus_level": consensus,
            "annotations": pd.DataFrame(rows_out),
            "nodule_masks": nodule_masks,
        }
    )
    logger.info("%s: %d reader marks grouped into %d nodules", xml_path.name, len(marks), len(nodules))
    return Volume(
        hu=volume.hu,
        spacing=volume.spacing,
        mask=mask,
        nodules=pd.DataFrame(nodules) if nodules else pd.DataFrame(columns=nodule_columns),
        meta=meta,
    )


def _group_marks(marks: list, spacing: np.ndarray, max_distance_mm: float) -> list[list[int]]:
    """Connected groups of marks that overlap or whose centroids are within ``max_distance_mm``."""
    n = len(marks)
    if n == 0:
        return []
    linked = np.eye(n, dtype=bool)
    for i in range(n):
        for j in range(i + 1, n):
            a, b = marks[i], marks[j]
            close = np.linalg.norm((a[2] - b[2]) * spacing) <= max_distance_mm
            overlap = any(k in b[1] and (a[1][k] & b[1][k]).any() for k in a[1])
            linked[i, j] = linked[j, i] = bool(close or overlap)
    count, labels = connected_components(csr_matrix(linked), directed=False)
    groups = [list(np.flatnonzero(labels == g)) for g in range(count)]
    for group in groups:
        readers = [marks[m][0].reader for m in group]
        if len(readers) != len(set(readers)):
            logger.warning(
                "one reader marked the same nodule twice (reader marks %s); both are kept in one nodule",
                [marks[m][0].xml_nodule_id for m in group],
            )
    return groups
