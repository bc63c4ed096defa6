"""Tests for napari_patchdiff.io: readers, writer, sidecars and the input checks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_patchdiff.errors import InputError
from napari_patchdiff.io import guess_modality, read_image, read_sidecar, write_tiff


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
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
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
    assert guess_modality(np.array([0.0, 1500.0]), {}) == "mri"


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
