"""Tests for napari_patchdiff.io: readers, writer, sidecars and the input checks."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_patchdiff import io
from napari_patchdiff.errors import InputError
from napari_patchdiff.io import files
from napari_patchdiff.io import guess_modality, read_image, read_sidecar, write_tiff

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"


def test_tiff_round_trip_with_sidecar(tmp_path):
    vol = np.random.default_rng(0).normal(size=(3, 8, 9)).astype(np.float64)
    meta = {"modality": "ct", "units": "HU", "spacing": (2.0, np.float32(0.5), 0.5),
            "scale": np.float64(3.5), "window": np.array([1, 2])}
    out = write_tiff(tmp_path / "sub" / "vol.tif", vol, meta)
    assert out.is_file() and (tmp_path / "sub" / "vol.json").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["vol.json", "vol.tif"]
    with tifffile.TiffFile(out) as tif:  # one grey page per slice, not RGB
        assert len(tif.pages) == 3 and tif.pages[0].photometric == 1
        assert tif.pages[0].dtype == np.float32 and tif.pages[0].compression == 8
    side = json.loads((tmp_path / "sub" / "vol.json").read_text())
    assert side["window"] == [1, 2] and side["scale"] == 3.5
    arr, got = read_image(out)
    assert arr.dtype == np.float32 and arr.shape == vol.shape
    np.testing.assert_allclose(arr, vol.astype(np.float32))
    assert got["modality"] == "ct" and got["units"] == "HU"
    assert got["spacing"] == (2.0, 0.5, 0.5)
    assert got["source"] == str(out)
    assert read_sidecar(out)["units"] == "HU"


def test_tiff_description_metadata_without_sidecar(tmp_path):
    out = write_tiff(tmp_path / "img.tiff", np.ones((4, 5)), {"modality": "MR", "spacing": [1, 2]})
    (tmp_path / "img.json").unlink()
    arr, meta = read_image(out)
    assert arr.shape == (4, 5) and meta["modality"] == "mri" and meta["spacing"] == (1.0, 2.0)


def test_write_tiff_failure_leaves_no_file(tmp_path):
    with pytest.raises(InputError):
        write_tiff(tmp_path / "bad.tif", np.array(["a", "b"]), {})
    with pytest.raises(InputError, match=r"\.tif"):
        write_tiff(tmp_path / "bad.png", np.zeros((2, 2)), {})
    assert list(tmp_path.iterdir()) == []


def test_npy_squeezes_and_keeps_int(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(20, dtype=np.int16).reshape(1, 4, 5))
    arr, meta = read_image(tmp_path / "a.npy")
    assert arr.shape == (4, 5) and arr.dtype == np.int16
    assert meta["modality"] is None and meta["spacing"] is None


def test_nifti_round_trip(tmp_path):
    nib = pytest.importorskip("nibabel")
    data = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)  # nibabel (i, j, k)
    img = nib.Nifti1Image(data, np.diag([0.8, 0.9, 2.5, 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, tmp_path / "v.nii.gz")
    arr, meta = read_image(tmp_path / "v.nii.gz")
    assert arr.shape == (3, 4, 5)
    np.testing.assert_array_equal(arr, np.moveaxis(data, -1, 0))
    np.testing.assert_allclose(meta["spacing"], (2.5, 0.8, 0.9))


def _write_ct_slice(path, hu, z, instance, series_uid):
    _write_slice(path, hu, [0.0, 0.0, float(z)], series_uid, instance=instance)


def _write_slice(path, hu, position, series_uid, orientation=(1, 0, 0, 0, 1, 0), instance=1):
    """One CT slice (HU array ``hu``) at ``position`` with ``orientation`` (6 cosines)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = CTImageStorage
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=fm, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [0.7, 0.6]
    ds.SliceThickness = 9.9  # positions give 2.5: they win
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -1024
    ds.PixelData = ((hu + 1024) // 2).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_series_in_hu_and_slice_order(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.uid import generate_uid

    series = generate_uid()
    slices = [np.full((4, 6), hu, dtype=np.int32) for hu in (-1000, 0, 400)]
    # file names and instance numbers scrambled; positions define the order
    for name, idx, z, inst in (("c.dcm", 0, -5.0, 3), ("a.dcm", 1, -2.5, 1), ("b.dcm", 2, 0.0, 2)):
        _write_ct_slice(tmp_path / name, slices[idx], z, inst, series)
    (tmp_path / "README.txt").write_text("not dicom")
    arr, meta = read_image(tmp_path)
    assert arr.shape == (3, 4, 6) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr[:, 0, 0], [-1000, 0, 400])
    assert meta["modality"] == "ct" and meta["units"] == "HU"
    np.testing.assert_allclose(meta["spacing"], (2.5, 0.7, 0.6))
    one, meta1 = read_image(tmp_path / "b.dcm")
    assert one.shape == (4, 6) and one[0, 0] == 400
    np.testing.assert_allclose(meta1["spacing"], (0.7, 0.6))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nope.tif")


def test_corrupt_tiff(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"this is not a tiff at all" * 10)
    with pytest.raises(InputError, match="cannot read .*bad.tif"):
        read_image(bad)


def test_corrupt_sidecar(tmp_path):
    out = write_tiff(tmp_path / "x.tif", np.zeros((2, 2)), {})
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(InputError, match="sidecar"):
        read_image(out)
    assert read_sidecar(tmp_path / "y.tif") == {}


def test_unsupported_extension(tmp_path):
    f = tmp_path / "img.png"
    f.write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match=r"unsupported file type.*\.tif"):
        read_image(f)


def test_not_dicom_directory(tmp_path):
    with pytest.raises(InputError, match="no DICOM"):
        read_image(tmp_path)


def test_4d_array(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 4, 5), dtype=np.float32))
    with pytest.raises(InputError, match=r"2D image or 3D volume.*4D"):
        read_image(tmp_path / "a.npy")


def test_nan_array(tmp_path):
    a = np.zeros((4, 4), dtype=np.float32)
    a[0, :3] = np.nan
    a[1, 0] = np.inf
    np.save(tmp_path / "a.npy", a)
    with pytest.raises(InputError, match="3 NaN and 1 infinite"):
        read_image(tmp_path / "a.npy")


def test_complex_array(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 4), dtype=np.complex64))
    with pytest.raises(InputError, match="complex"):
        read_image(tmp_path / "a.npy")


def test_guess_modality():
    assert guess_modality(np.zeros((2, 2)), {"modality": "CT"}) == "ct"
    assert guess_modality(np.zeros((2, 2)), {"units": "HU"}) == "ct"
    assert guess_modality(np.zeros((2, 2)), {"modality": "MR"}) == "mri"
    assert guess_modality(np.array([-1000.0, 50.0]), {}) == "ct"
    assert guess_modality(np.array([0.0, 0.7, 1.0]), None) == "unit"
    assert guess_modality(np.array([0.0, 1500.5]), {}) == "mri"


def test_write_tiff_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = write_tiff(tmp_path / "r.tif", np.ones((2, 2)), {"v": 1})

    def broken(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError, match="disk full"):
        write_tiff(target, np.zeros((2, 2)), {"v": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.tif"]
    monkeypatch.undo()
    arr, meta = read_image(target)
    assert arr[0, 0] == 1 and meta["v"] == 1


# --------------------------------------------------------------------------- modality inference


def test_infer_modality_metadata_wins_and_says_why():
    crop = np.arange(-120, 60, dtype=np.int16).reshape(12, 15)  # refused without metadata
    assert io.infer_modality(crop, {"modality": "CT"}) == ("ct", "the metadata says modality CT")
    assert io.infer_modality(crop, {"units": "HU"}) == ("ct", "the metadata says units HU")
    magnitudes = crop - crop.min()  # whole numbers 0 to 179: refused without metadata too
    assert io.infer_modality(magnitudes, {"modality": "MR"})[0] == "mri"
    with pytest.raises(InputError, match="never negative"):  # but MRI is not signed (issue 30)
        io.infer_modality(crop, {"modality": "MR"})
    assert io.infer_modality(crop, {"modality": "unit"})[0] == "unit"
    for name, expected in (("ct_lung.tif", "ct"), ("mri_brain.tif", "mri")):
        arr, meta = read_image(SAMPLE_DATA / name)
        modality, reason = io.infer_modality(arr, meta)
        assert modality == expected and "metadata" in reason


def test_infer_modality_from_values_says_why():
    assert io.infer_modality(np.array([-1024, 0, 400], np.int16), {}) == (
        "ct", "values from -1024 (air in HU)")
    assert io.infer_modality(np.array([0.0, 0.25, 1.0], np.float32), None) == (
        "unit", "all values in [0, 1]")
    modality, reason = io.infer_modality(np.array([0.0, 3.7, 812.25]), {})
    assert modality == "mri" and "812" in reason
    modality, reason = io.infer_modality(np.array([0, 9000], np.uint16), {})
    assert modality == "mri" and "4095" in reason
    assert guess_modality(np.array([np.nan, -1000.0, 20.0]), {}) == "ct"


@pytest.mark.parametrize("values, words", [
    (np.arange(-120, 61, dtype=np.int16), "-120"),             # a soft-tissue CT crop in HU
    (np.array([-3.0, 0.5, 2.0], np.float32), "-3"),            # signed data (MRI real part)
    (np.array([0, 40, 3000], np.uint16), "4095"),              # raw 12-bit CT or MRI?
    (np.array([0.0, 1500.0]), "4095"),                         # whole numbers in a float array
    (np.array([-20000, 5, 100], np.int32), "-20000"),          # far below any HU
])
def test_infer_modality_refuses_to_guess_ambiguous_values(values, words):
    for guess in (io.infer_modality, guess_modality):
        with pytest.raises(InputError, match="pass modality='ct', 'mri' or 'unit'") as err:
            guess(values.reshape(1, -1), {})
        assert words in str(err.value) and "\n" not in str(err.value)


def test_guessing_never_takes_the_absolute_value_of_a_ct_crop(tmp_path):
    from napari_patchdiff import api

    crop = np.linspace(-120, 60, 64, dtype=np.float32).round().astype(np.int16).reshape(8, 8)
    np.save(tmp_path / "crop.npy", crop)
    with pytest.raises(InputError, match="pass modality='ct'"):
        api.load_truth(tmp_path / "crop.npy")
    truth = api.load_truth(tmp_path / "crop.npy", modality="ct")
    np.testing.assert_allclose(truth.to_units(truth.x), crop, atol=1e-2)


# --------------------------------------------------------------------------- DICOM series


def _series(tmp_path, positions, orientations=None, names=None):
    """A CT series in ``tmp_path``: slice k is filled with 10 k HU, at ``positions[k]``."""
    from pydicom.uid import generate_uid

    uid = generate_uid()
    orientations = orientations or [(1, 0, 0, 0, 1, 0)] * len(positions)
    names = names or [f"s{k:02d}.dcm" for k in range(len(positions))]
    for k, (pos, ori, name) in enumerate(zip(positions, orientations, names)):
        _write_slice(tmp_path / name, np.full((4, 6), 10 * k, np.int32), pos, uid, ori, k + 1)
    return tmp_path


def test_dicom_sagittal_series_sorted_along_the_slice_normal(tmp_path):
    pytest.importorskip("pydicom")
    sagittal = (0, 1, 0, 0, 0, -1)  # rows along +y (posterior), columns along -z: normal -x
    positions = [[15.0, -3.0, 40.0], [10.0, -3.0, 40.0], [12.5, -3.0, 40.0]]
    # names sort as slice 1, 2, 0; along the normal (-x) the order is 0, 2, 1
    _series(tmp_path, positions, [sagittal] * 3, ["c.dcm", "a.dcm", "b.dcm"])
    arr, meta = read_image(tmp_path)
    np.testing.assert_array_equal(arr[:, 0, 0], [0, 20, 10])
    assert meta["orientation"] == [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    assert meta["origin"] == [15.0, -3.0, 40.0]
    np.testing.assert_allclose(meta["spacing"], (2.5, 0.7, 0.6))
    # the affine maps (slice, row, col, 1) to RAS mm: DICOM's LPS with x and y negated
    affine = np.array(meta["affine"])
    np.testing.assert_allclose(affine @ [0, 0, 0, 1], [-15.0, 3.0, 40.0, 1])
    np.testing.assert_allclose(affine @ [1, 0, 0, 1], [-12.5, 3.0, 40.0, 1])
    np.testing.assert_allclose(affine @ [0, 1, 0, 1], [-15.0, 3.0, 40.0 - 0.7, 1])
    np.testing.assert_allclose(affine @ [0, 0, 1, 1], [-15.0, 3.0 - 0.6, 40.0, 1])


def test_dicom_series_in_descending_z_is_reordered(tmp_path):
    pytest.importorskip("pydicom")
    _series(tmp_path, [[0, 0, z] for z in (5.0, 0.0, 2.5)])
    arr, meta = read_image(tmp_path)
    np.testing.assert_array_equal(arr[:, 0, 0], [10, 20, 0])
    assert meta["origin"] == [0.0, 0.0, 0.0] and meta["spacing"][0] == pytest.approx(2.5)


def test_dicom_duplicated_positions_are_refused(tmp_path):
    pytest.importorskip("pydicom")
    _series(tmp_path, [[0, 0, z] for z in (0.0, 2.0, 2.0, 4.0)])
    with pytest.raises(InputError, match=r"s01\.dcm.*s02\.dcm.*same position") as err:
        read_image(tmp_path)
    assert "\n" not in str(err.value)


def test_dicom_missing_slices_are_refused(tmp_path):
    pytest.importorskip("pydicom")
    _series(tmp_path, [[0, 0, z] for z in (0.0, 2.0, 4.0, 8.0, 10.0)])
    with pytest.raises(InputError, match=r"uneven slice spacing.*4 mm.*after 4 mm") as err:
        read_image(tmp_path)
    assert "\n" not in str(err.value)


def test_dicom_mixed_orientations_are_refused(tmp_path):
    pytest.importorskip("pydicom")
    axial, coronal = (1, 0, 0, 0, 1, 0), (1, 0, 0, 0, 0, -1)
    _series(tmp_path, [[0, 0, 0.0], [0, 0, 2.0], [0, 0, 4.0]], [axial, axial, coronal])
    with pytest.raises(InputError, match="orientations"):
        read_image(tmp_path)


# --------------------------------------------------------------------------- NIfTI affine


def _oblique_affine():
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [-40.0, 12.5, 7.0]
    return affine


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_affine_kept_and_written_back(tmp_path, suffix):
    nib = pytest.importorskip("nibabel")
    data = np.random.default_rng(1).normal(size=(4, 5, 3)).astype(np.float32)  # (i, j, k)
    img = nib.Nifti1Image(data, _oblique_affine())
    img.header.set_xyzt_units("mm")
    nib.save(img, tmp_path / f"in{suffix}")
    arr, meta = read_image(tmp_path / f"in{suffix}")
    affine = np.array(meta["affine"])
    assert affine.shape == (4, 4)
    # package index (k, i, j) and nibabel index (i, j, k) name the same point
    np.testing.assert_allclose(affine @ [2, 3, 1, 1], _oblique_affine() @ [3, 1, 2, 1])
    out = io.write_nifti(tmp_path / "out" / f"recon{suffix}", arr, meta)
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, _oblique_affine(), atol=1e-6)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), data)
    again, meta2 = read_image(out)
    np.testing.assert_array_equal(again, arr)
    np.testing.assert_allclose(meta2["affine"], meta["affine"], atol=1e-6)


def test_nifti_2d_affine_and_meters(tmp_path):
    nib = pytest.importorskip("nibabel")
    data = np.arange(20, dtype=np.int16).reshape(4, 5, 1)
    affine = np.diag([0.001, 0.002, 0.005, 1.0])
    affine[:3, 3] = [0.01, 0.02, 0.03]
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("meter")
    nib.save(img, tmp_path / "m.nii")
    arr, meta = read_image(tmp_path / "m.nii")
    assert arr.shape == (4, 5) and meta["spacing"] == pytest.approx((1.0, 2.0))
    # a 2D image is the one slice of (1, rows, cols); the affine is in mm
    np.testing.assert_allclose(np.array(meta["affine"]) @ [0, 1, 1, 1], [11, 22, 30, 1])
    back = nib.load(io.write_nifti(tmp_path / "back.nii", arr, meta))
    assert back.shape == (4, 5, 1)
    np.testing.assert_allclose(back.affine, np.diag([1000, 1000, 1000, 1]) @ affine, atol=1e-9)


def test_nifti_time_series_is_refused(tmp_path):
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 1, 3), np.float32), np.eye(4)), tmp_path / "t.nii")
    with pytest.raises(InputError, match="time"):
        read_image(tmp_path / "t.nii")


def test_write_tiff_round_trips_the_affine(tmp_path):
    affine = _oblique_affine().tolist()
    out = write_tiff(tmp_path / "a.tif", np.zeros((3, 4, 5)), {"affine": affine})
    assert read_image(out)[1]["affine"] == affine
    (tmp_path / "a.json").unlink()  # the TIFF description alone keeps it too
    assert read_image(out)[1]["affine"] == affine
    out = write_tiff(tmp_path / "b.tif", np.zeros((4, 5)), {"affine": [[1, 2], [3, 4]]})
    with pytest.raises(InputError, match="affine"):
        read_image(out)


def test_write_nifti_without_affine_uses_the_spacing(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = np.zeros((3, 4, 5), np.float32)
    out = io.write_nifti(tmp_path / "s.nii.gz", vol, {"spacing": (2.5, 0.7, 0.6), "units": "HU"})
    back = nib.load(out)
    assert back.shape == (4, 5, 3)
    np.testing.assert_allclose(back.header.get_zooms(), (0.7, 0.6, 2.5))
    assert read_image(out)[1]["units"] == "HU"  # the sidecar beside it
    with pytest.raises(InputError, match=r"\.nii"):
        io.write_nifti(tmp_path / "s.tif", vol, {})


# --------------------------------------------------------------------------- large / lying files


def _lying_npy(path, shape=(200000, 200000)):
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f4", "fortran_order": False, "shape": shape})
        fh.write(b"\0" * 16)
    return path


def test_npy_with_a_lying_header_is_reported_without_reading(tmp_path):
    bad = _lying_npy(tmp_path / "big.npy")
    size = bad.stat().st_size
    for read in (read_image, io.read_measurement):
        with pytest.raises(InputError, match=r"\(200000, 200000\).*float32.*" + str(size)) as e:
            read(bad)
        assert "truncated" in str(e.value) and "\n" not in str(e.value)


def test_tiff_with_a_lying_header_is_reported_without_reading(tmp_path):
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((4, 4), np.float32))
    with tifffile.TiffFile(tmp_path / "big.tif", mode="r+") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(200000)
        tif.pages[0].tags["ImageLength"].overwrite(200000)
    size = (tmp_path / "big.tif").stat().st_size
    for read in (read_image, io.read_measurement):
        with pytest.raises(InputError, match=r"\(200000, 200000\).*" + str(size)):
            read(tmp_path / "big.tif")


def test_check_memory():
    io.check_memory(1024, "a small array")
    with pytest.raises(InputError, match=r"a huge array needs 9\.31e\+05 GiB.*GiB") as err:
        io.check_memory(10**15, "a huge array")
    assert "\n" not in str(err.value)


def test_arrays_larger_than_memory_are_refused(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((64, 64), np.float32))
    write_tiff(tmp_path / "a.tif", np.zeros((64, 64)), {})
    # check_memory (napari_patchdiff.io.files) looks physical_memory up in its own module
    monkeypatch.setattr(files, "physical_memory", lambda: 10_000)
    for name in ("a.npy", "a.tif"):
        with pytest.raises(InputError, match="memory"):
            read_image(tmp_path / name)


# --------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    pytest.importorskip("nibabel")
    old = os.umask(umask)
    try:
        write_tiff(tmp_path / "r.tif", np.zeros((2, 2)), {"v": 1})
        io.write_measurement(tmp_path / "m.tif", np.zeros((2, 2), np.complex64), {})
        io.write_nifti(tmp_path / "n.nii.gz", np.zeros((2, 3, 4)), {})
        io.atomic_write_text(tmp_path / "report.json", "{}\n")
        with io.atomic_output(tmp_path / "ckpt.bin") as tmp:
            tmp.write_bytes(b"weights")
    finally:
        os.umask(old)
    files = sorted(tmp_path.iterdir())
    assert [p.name for p in files] == ["ckpt.bin", "m.json", "m.tif", "n.json", "n.nii.gz",
                                       "r.json", "r.tif", "report.json"]
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(mode)}


def test_atomic_output_keeps_the_old_file_on_failure(tmp_path):
    io.atomic_write_text(tmp_path / "report.json", "old\n")
    with pytest.raises(RuntimeError, match="boom"), io.atomic_output(tmp_path / "report.json") as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    assert (tmp_path / "report.json").read_text() == "old\n"


def test_units_describe_the_values_before_the_modality():
    x = np.array([0.0, 0.4, 1.0], np.float32)  # a CT reconstruction on the normalised scale
    assert io.infer_modality(x, {"modality": "ct", "units": "normalised [0, 1]"}) == (
        "unit", "the metadata says units normalised [0, 1]")
    assert guess_modality(np.array([0, 3000]), {"units": "scanner units"}) == "mri"
    for meta in ({"modality": "MR", "units": "HU"}, {"modality": "PET"}):
        with pytest.raises(InputError, match="pass modality='ct', 'mri' or 'unit'"):
            io.infer_modality(x, meta)
