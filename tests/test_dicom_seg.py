"""DICOM SEG output (nodulekit.dicom_seg): round trips on a real LIDC series and a synthetic one,
the source slices referenced, the errors, and nothing half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("highdicom")

import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402

from nodulekit.dataset import Volume  # noqa: E402
from nodulekit.dicom_seg import ANATOMIC_REGION, SEGMENT_CATEGORY, SEGMENT_TYPE, write_dicom_seg  # noqa: E402
from nodulekit.errors import DataFormatError, InvalidParameterError, MissingDataError, NodulekitError  # noqa: E402
from nodulekit.readers import read_dicom_series, read_lidc_xml, write_dicom_series  # noqa: E402
from nodulekit._version import __version__  # noqa: E402


def _write_series(folder: Path, *, slices: int = 5, shape=(12, 10), frame_of_reference: bool = True) -> Path:
    """A small CT series (write_dicom_series); optionally without a FrameOfReferenceUID."""
    hu = np.arange(slices, dtype=np.float32)[:, None, None] + np.zeros(shape, np.float32)
    write_dicom_series(Volume(hu=hu, spacing=(2.5, 0.7, 0.7)), folder, patient_id="SEG-TEST")
    if not frame_of_reference:
        for path in folder.glob("*.dcm"):
            dataset = pydicom.dcmread(path)
            del dataset.FrameOfReferenceUID
            dataset.save_as(path)
    return folder


@pytest.fixture()
def series(tmp_path) -> Volume:
    return read_dicom_series(_write_series(tmp_path / "ct"))


def _labels(shape) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    labels[1:3, 2:5, 3:6] = 7  # nodule id 7, ranked first below
    labels[3:5, 8:11, 1:3] = 2
    return labels


def _read_back(path: Path, volume: Volume) -> tuple[hd.seg.Segmentation, np.ndarray]:
    seg = hd.seg.segread(path)
    return seg, seg.get_pixels_by_source_instance(source_sop_instance_uids=volume.meta["sop_uids"], combine_segments=True)


def _referenced(seg) -> list[str]:
    return [item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]


def _frame_sources(seg) -> list[str]:
    return [
        frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
    ]


# --- synthetic series (no shared data) ---------------------------------------------------------


def test_one_segment_per_nodule_round_trip(series, tmp_path):
    labels = _labels(series.hu.shape)
    nodules = pd.DataFrame({"nodule_id": [7, 2], "score": [0.91, 0.12]})
    path = write_dicom_seg(labels, series, tmp_path / "out" / "nodules.seg.dcm", nodules=nodules, model_name="toy")
    seg, back = _read_back(path, series)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Nodule 1 (score 0.91)", "Nodule 2 (score 0.12)"]
    assert [s.TrackingID for s in seg.SegmentSequence] == ["nodule-7", "nodule-2"]
    assert np.array_equal(back == 1, labels == 7) and np.array_equal(back == 2, labels == 2)
    assert set(_referenced(seg)) == set(series.meta["sop_uids"])
    sources = _frame_sources(seg)  # only the frames holding a nodule, each on its own slice
    assert set(sources) == {series.meta["sop_uids"][k] for k in range(1, 5)}
    assert seg.SeriesInstanceUID != series.meta["series_uid"] and seg.StudyInstanceUID == series.meta["study_uid"]
    assert seg.ManufacturerModelName == "toy" and seg.SoftwareVersions == __version__
    assert list(tmp_path.joinpath("out").iterdir()) == [path]  # no temporary file left


def test_binary_mask_is_one_candidates_segment_with_coded_concepts(series, tmp_path):
    mask = _labels(series.hu.shape) > 0
    seg, back = _read_back(write_dicom_seg(mask, series, tmp_path / "seg.dcm"), series)
    assert np.array_equal(back, mask.astype(back.dtype))
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "Nodule candidates" and segment.SegmentAlgorithmType == "AUTOMATIC"
    codes = [
        segment.SegmentedPropertyCategoryCodeSequence[0],
        segment.SegmentedPropertyTypeCodeSequence[0],
        segment.AnatomicRegionSequence[0],
    ]
    assert [(c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning) for c in codes] == [SEGMENT_CATEGORY, SEGMENT_TYPE, ANATOMIC_REGION]
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("nodulekit", __version__)


@pytest.mark.parametrize("nodules", [None, pd.DataFrame({"nodule_id": [], "score": []})])
def test_nothing_found_gives_an_empty_segment_on_every_slice(series, tmp_path, nodules, recwarn):
    seg, back = _read_back(write_dicom_seg(np.zeros(series.hu.shape, np.int32), series, tmp_path / "seg.dcm", nodules=nodules), series)
    assert not back.any() and seg.NumberOfFrames == len(series.hu)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Nodule candidates"]
    assert not [w for w in recwarn if "empty" in str(w.message)]


def test_source_that_is_not_dicom_is_refused(series, tmp_path):
    nifti = Volume(hu=series.hu, spacing=series.spacing, meta={"source": "scan.nii.gz", "format": "nifti"})
    with pytest.raises(DataFormatError, match="the source is 'nifti'"):
        write_dicom_seg(np.zeros(series.hu.shape, np.uint8), nifti, tmp_path / "seg.dcm")
    with pytest.raises(DataFormatError, match="read_dicom_series"):
        write_dicom_seg(np.zeros(series.hu.shape, np.uint8), Volume(hu=series.hu, spacing=series.spacing), tmp_path / "seg.dcm")
    with pytest.raises(InvalidParameterError, match="source must be the Volume"):
        write_dicom_seg(np.zeros(series.hu.shape, np.uint8), series.meta["source"], tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_mask_of_another_shape_is_refused(series, tmp_path):
    with pytest.raises(DataFormatError, match=r"mask shape \(4, 12, 10\) differs"):
        write_dicom_seg(np.zeros((4, 12, 10), np.uint8), series, tmp_path / "seg.dcm")


@pytest.mark.parametrize(
    "mask, nodules, match",
    [
        (-np.ones((5, 12, 10), np.int32), None, "negative"),
        (np.zeros((5, 12, 10), np.float32), None, "boolean or integer"),
        (np.zeros((5, 12, 10), np.int32), pd.DataFrame({"label": [1]}), "nodule_id column"),
        (np.zeros((5, 12, 10), np.int32), pd.DataFrame({"nodule_id": [1, 1]}), "distinct"),
    ],
)
def test_bad_mask_or_table_is_refused(series, tmp_path, mask, nodules, match):
    with pytest.raises(InvalidParameterError, match=match):
        write_dicom_seg(mask, series, tmp_path / "seg.dcm", nodules=nodules)


def test_slice_file_gone_or_replaced_is_refused(series, tmp_path):
    mask = np.zeros(series.hu.shape, np.uint8)
    Path(series.meta["files"][2]).unlink()
    with pytest.raises(MissingDataError, match="gone"):
        write_dicom_seg(mask, series, tmp_path / "seg.dcm")
    other = read_dicom_series(_write_series(tmp_path / "other"))  # its files now hold other SOP Instances
    replaced = Volume(hu=other.hu, spacing=other.spacing, meta={**other.meta, "sop_uids": series.meta["sop_uids"]})
    with pytest.raises(DataFormatError, match="the series changed"):
        write_dicom_seg(mask, replaced, tmp_path / "seg.dcm")


def test_series_without_frame_of_reference_is_refused(tmp_path):
    volume = read_dicom_series(_write_series(tmp_path / "ct", frame_of_reference=False))
    with pytest.raises(DataFormatError, match="cannot build a DICOM SEG.*Frame Of Reference"):
        write_dicom_seg(np.zeros(volume.hu.shape, np.uint8), volume, tmp_path / "seg.dcm")


def test_failed_write_leaves_nothing_behind(series, tmp_path, monkeypatch):
    def fail(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", fail)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OSError, match="disk full"):
        write_dicom_seg(_labels(series.hu.shape) > 0, series, out / "seg.dcm")
    assert list(out.iterdir()) == []


def test_errors_are_nodulekit_errors():
    assert issubclass(DataFormatError, NodulekitError) and issubclass(MissingDataError, NodulekitError)


# --- the real LIDC-IDRI-0001 series ------------------------------------------------------------


@pytest.fixture(scope="module")
def lidc_volume(lidc_scan_dir) -> Volume:
    volume = read_dicom_series(lidc_scan_dir)
    return read_lidc_xml(next(lidc_scan_dir.rglob("*.xml")), volume)


@pytest.mark.realdata
def test_lidc_consensus_and_a_sphere_round_trip(lidc_volume, tmp_path):
    volume = lidc_volume
    labels = (volume.mask > 0).astype(np.int32) * 3  # the readers' nodule, id 3
    z, y, x = np.ogrid[: labels.shape[0], : labels.shape[1], : labels.shape[2]]
    sphere = ((z - 40) * volume.spacing[0]) ** 2 + ((y - 200) * volume.spacing[1]) ** 2 + ((x - 150) * volume.spacing[2]) ** 2 <= 5.0**2
    labels[sphere] = 1
    nodules = pd.DataFrame({"nodule_id": [3, 1], "score": [0.88, 0.05]})
    path = write_dicom_seg(labels, volume, tmp_path / "LIDC-IDRI-0001.seg.dcm", nodules=nodules)
    seg, back = _read_back(path, volume)
    assert np.array_equal(back == 1, labels == 3) and np.array_equal(back == 2, labels == 1)
    assert int((back == 1).sum()) == int((volume.mask > 0).sum()) > 1000
    assert _referenced(seg) and set(_referenced(seg)) == set(volume.meta["sop_uids"])
    slices = np.flatnonzero(labels.any(axis=(1, 2)))
    assert set(_frame_sources(seg)) == {volume.meta["sop_uids"][k] for k in slices}
    source = pydicom.dcmread(volume.meta["files"][0], stop_before_pixels=True)
    assert seg.PatientID == source.PatientID and seg.FrameOfReferenceUID == source.FrameOfReferenceUID


@pytest.mark.realdata
def test_lidc_mask_of_another_shape_is_refused(lidc_volume, tmp_path):
    with pytest.raises(DataFormatError, match="differs from the series'"):
        write_dicom_seg(np.zeros((132, 512, 512), np.uint8), lidc_volume, tmp_path / "seg.dcm")


def test_write_dicom_series_reads_back_in_hu(tmp_path):
    hu = np.random.default_rng(0).uniform(-1100, 900, (3, 6, 7)).astype(np.float32)
    volume = read_dicom_series(write_dicom_series(Volume(hu=hu, spacing=(1.25, 0.6, 0.7)), tmp_path / "ct"))
    np.testing.assert_array_equal(volume.hu, np.rint(hu))
    assert volume.spacing == pytest.approx((1.25, 0.6, 0.7)) and volume.meta["patient_id"] == "NODULEKIT"
