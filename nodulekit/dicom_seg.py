"""Nodule masks as a DICOM Segmentation (SEG) object on their source CT series (highdicom).

A DICOM SEG references the CT slices it was drawn on by their SOP Instance UIDs, so 3D Slicer,
OHIF and PACS viewers show it on the scan without any resampling. :func:`write_dicom_seg` turns a
mask or a labelled nodule volume (``labels.npy`` of ``nodulekit segment``) into one: a binary SEG
with either one segment for all nodule candidates or one segment per listed nodule, labelled with
its rank and score. The source is the :class:`~nodulekit.dataset.Volume` that
:func:`~nodulekit.readers.read_dicom_series` read: its ``meta["files"]`` and ``meta["sop_uids"]``
give the slices in volume order.

Coded concepts (DICOM CID 7150 / 7151 and the anatomic region, as TCIA's LIDC-IDRI SEG
conversions use them): category SCT 49755003 "Morphologically Altered Structure", type SCT
27925004 "Nodule", anatomic region SCT 39607008 "Lung"; algorithm type AUTOMATIC, identified as
nodulekit with its version.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ._version import __version__
from .dataset import Volume
from .errors import DataFormatError, InvalidParameterError, MissingDataError
from .utils import save_atomic

__all__ = ["write_dicom_seg", "SEGMENT_CATEGORY", "SEGMENT_TYPE", "ANATOMIC_REGION"]

logger = logging.getLogger(__name__)

#: (code value, coding scheme, meaning) of the segments' property category, type and region.
SEGMENT_CATEGORY = ("49755003", "SCT", "Morphologically Altered Structure")
SEGMENT_TYPE = ("27925004", "SCT", "Nodule")
ANATOMIC_REGION = ("39607008", "SCT", "Lung")

#: Patient and study attributes a SEG copies from its source and that DICOM allows to be empty
#: (type 2): set empty on the headers where an anonymiser removed them.
EMPTY_ALLOWED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "StudyID", "AccessionNumber", "ReferringPhysicianName",
)

#: The one segment's label when no nodule table is given.
CANDIDATES_LABEL = "Nodule candidates"


def write_dicom_seg(
    mask: np.ndarray,
    source: Volume,
    path: str | os.PathLike,
    *,
    nodules: pd.DataFrame | None = None,
    model_name: str = "nodulekit",
    series_description: str = "nodulekit nodules",
    series_number: int = 9001,
) -> Path:
    """Write ``mask`` as a DICOM SEG that references the CT slices of ``source``.

    Parameters
    ----------
    mask : ndarray, shape (slices, rows, columns)
        Nodule voxels (> 0), in the volume's slice order. With ``nodules``, the values are nodule
        ids (the ``labels`` of a segmentation result, ``labels.npy``).
    source : Volume
        The DICOM series the mask was drawn on, as :func:`~nodulekit.readers.read_dicom_series`
        returns it (its ``meta`` lists the slices' files and SOP Instance UIDs in volume order).
    path : path
        The SEG file to write (``.dcm``); written atomically.
    nodules : DataFrame, optional
        One segment per row, in the table's order (``nodules.csv``: ranked by score): the voxels
        where ``mask`` equals the row's ``nodule_id``, labelled "Nodule <rank>" and, when the
        table has one, its ``score``. Default: one segment "Nodule candidates" for ``mask > 0``.
        An empty table (nothing found) gives that one segment, empty: the SEG then holds every
        slice as an empty frame, so that a viewer shows "no nodules" on the series.
    model_name : str
        The model named in the algorithm identification (e.g. ``lidc_attention_unet``).
    series_description : str
        The SEG series' description.
    series_number : int
        The SEG series' number (viewers sort series by it).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    DataFormatError
        ``source`` is not a DICOM series (NIfTI, MHD, synthetic, ...); ``mask`` does not have
        the series' shape; a slice file now holds another SOP Instance than when it was read;
        the series lacks what a SEG needs (e.g. a FrameOfReferenceUID).
    MissingDataError
        A slice file of the series is gone.
    InvalidParameterError
        ``source`` is not a Volume; ``mask`` is not boolean or integer, or holds negative values;
        ``nodules`` has no ``nodule_id`` column, repeats an id or lists more than 65,535 nodules.

    Examples
    --------
    >>> from nodulekit.inference import load_segmenter            # doctest: +SKIP
    >>> from nodulekit.readers import read_dicom_series           # doctest: +SKIP
    >>> volume = read_dicom_series("LIDC-IDRI-0001")                  # doctest: +SKIP
    >>> result = load_segmenter("lidc_attention_unet").segment(volume)  # doctest: +SKIP
    >>> write_dicom_seg(result.labels, volume, "out/nodules.seg.dcm", nodules=result.nodules)  # doctest: +SKIP
    """
    import highdicom as hd
    from pydicom.sr.coding import Code

    mask = np.asarray(mask)
    files = _source_files(source, mask.shape)
    labelmap, descriptions = _segments(mask, nodules, model_name)
    headers = _headers(files, source.meta["sop_uids"])
    try:
        seg = hd.seg.Segmentation(
            source_images=headers,
            pixel_array=labelmap,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[
                hd.seg.SegmentDescription(
                    segment_number=number,
                    segment_label=label,
                    segmented_property_category=Code(*SEGMENT_CATEGORY),
                    segmented_property_type=Code(*SEGMENT_TYPE),
                    algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                    algorithm_identification=hd.AlgorithmIdentificationSequence(
                        name="nodulekit", family=Code("113100", "DCM", "Artificial Intelligence"),
                        version=__version__, parameters={"model": model_name},
                    ),
                    tracking_id=tracking,
                    tracking_uid=hd.UID(),
                    anatomic_regions=[Code(*ANATOMIC_REGION)],
                )
                for number, label, tracking in descriptions
            ],
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="nodulekit",
            manufacturer_model_name=model_name,
            software_versions=__version__,
            device_serial_number="0",
            series_description=series_description,
            content_label="NODULES",
            content_description="Lung nodules found by nodulekit",
            omit_empty_frames=bool(labelmap.any()),  # an empty SEG keeps its frames (highdicom needs one)
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise DataFormatError(
            f"cannot build a DICOM SEG on this series ({type(exc).__name__}: {exc})", path=source.meta.get("source")
        ) from exc
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_atomic(lambda tmp: seg.save_as(tmp), path)
    logger.info("wrote a DICOM SEG with %d segment(s) on %d slices to %s", len(descriptions), len(files), path)
    return Path(path)


def _source_files(source: Volume, shape: tuple[int, ...]) -> list[str]:
    """The slice files of ``source`` in volume order, checked against the mask's ``shape``."""
    if not isinstance(source, Volume):
        raise InvalidParameterError(f"source must be the Volume that read_dicom_series returned, got {type(source).__name__}")
    meta = source.meta
    if meta.get("format") != "dicom" or "files" not in meta or "sop_uids" not in meta:
        what = meta.get("format") or meta.get("source") or "a volume without slice files"
        raise DataFormatError(
            f"a DICOM SEG references the slices of a DICOM series, but the source is {what!r}: "
            "read the scan with read_dicom_series"
        )
    if shape != source.hu.shape:
        raise DataFormatError(
            f"mask shape {shape} differs from the series' {source.hu.shape} (slices, rows, columns)",
            path=meta.get("source"),
        )
    if len(meta["files"]) != shape[0] or len(meta["sop_uids"]) != shape[0]:
        raise DataFormatError(
            f"the volume lists {len(meta['files'])} slice files for {shape[0]} slices", path=meta.get("source")
        )
    return [str(f) for f in meta["files"]]


def _headers(files: list[str], sop_uids: list[str]) -> list:
    """The slices' DICOM headers (no pixel data), checked to be the SOP Instances that were read."""
    import pydicom

    headers = []
    for file, uid in zip(files, sop_uids):
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except FileNotFoundError as exc:
            raise MissingDataError("a slice of the source series is gone", path=file) from exc
        except Exception as exc:  # noqa: BLE001 - InvalidDicomError and others for damaged files
            raise DataFormatError(f"unreadable DICOM file ({type(exc).__name__}: {exc})", path=file) from exc
        if str(header.get("SOPInstanceUID", "")) != uid:
            raise DataFormatError(
                f"holds SOP Instance {header.get('SOPInstanceUID')}, not the {uid} read before: the series changed",
                path=file,
            )
        for keyword in EMPTY_ALLOWED:
            if keyword not in header:
                setattr(header, keyword, None)
        headers.append(header)
    return headers


def _segments(mask: np.ndarray, nodules: pd.DataFrame | None, model_name: str) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
    """(label map of segment numbers, [(segment number, label, tracking id)])."""
    if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
        raise InvalidParameterError(f"mask must be boolean or integer (nodule ids), got {mask.dtype}")
    # The slices holding any non-zero value (most of a scan's hold none): the checks and the label map look only there.
    marked = np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1)) if mask.ndim and len(mask) else np.zeros(0, int)
    if len(marked) and min(mask[index].min() for index in marked) < 0:
        raise InvalidParameterError("mask must hold 0 (background) and positive nodule ids, not negative values")
    if nodules is None or not len(nodules):
        found = mask > 0 if nodules is None else np.zeros(mask.shape, bool)
        return found.astype(np.uint8), [(1, CANDIDATES_LABEL, "nodule candidates")]
    if "nodule_id" not in nodules:
        raise InvalidParameterError(f"nodules needs a nodule_id column, has {list(nodules.columns)}")
    ids = [int(i) for i in nodules["nodule_id"]]
    if len(set(ids)) != len(ids) or len(ids) > np.iinfo(np.uint16).max:
        raise InvalidParameterError(f"nodules must list at most 65535 distinct nodule_id values, got {len(ids)} ({len(set(ids))} distinct)")
    highest = max((int(mask[index].max()) for index in marked), default=0)
    lookup = np.zeros(max(highest, max(ids)) + 1, np.uint16 if len(ids) > 255 else np.uint8)
    descriptions = []
    scores = nodules["score"] if "score" in nodules else [None] * len(ids)
    for number, (nodule_id, score) in enumerate(zip(ids, scores), start=1):
        lookup[nodule_id] = number
        label = f"Nodule {number}" + ("" if score is None or pd.isna(score) else f" (score {float(score):.2f})")
        descriptions.append((number, label, f"nodule-{nodule_id}"))
    labelmap = np.zeros(mask.shape, lookup.dtype)  # unmarked slices stay 0 (pages never written)
    for index in marked:  # slice by slice: no int64 copy of a whole scan
        labelmap[index] = lookup[mask[index].astype(np.intp, copy=False)]
    return labelmap, descriptions
