"""NIfTI and DICOM through the plugin's npe2 reader and NIfTI writer, in a real napari viewer
(Xvfb): layer scale/translate from the voxel spacing and affine, modality and units in the
metadata, several DICOM series as several layers, clean one-line errors for broken files,
the Measurement widget's "Load volume…", and open -> reconstruct -> save .nii.gz -> reopen
keeping the input's affine. Real files: nibabel-written NIfTI and pydicom's test files."""
import copy

import numpy as np
import pytest

pytest.importorskip("napari")
nibabel = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from napari_patchdiff import io  # noqa: E402
from napari_patchdiff._qt import layer_io  # noqa: E402
from napari_patchdiff._qt.scripting import Session  # noqa: E402
from napari_patchdiff.errors import InputError  # noqa: E402
from napari_patchdiff.io.samples import load_sample  # noqa: E402

PLUGIN = "napari-patchdiff"

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

#: NIfTI (i, j, k) -> world: i along -x (0.8 mm), j along +y (1.2 mm), k along +z (2.5 mm)
AFFINE = np.array([[-0.8, 0.0, 0.0, 10.0],
                   [0.0, 1.2, 0.0, -20.0],
                   [0.0, 0.0, 2.5, 30.0],
                   [0.0, 0.0, 0.0, 1.0]])


def _ct_hu(slices=3, step=8):
    """A few CT slices in HU, (slices, rows, cols), from the sample (32 x 32 at step 8)."""
    data, _ = load_sample("ct")
    return np.ascontiguousarray(data[4:4 + slices, ::step, ::step]).astype(np.int16)


def _write_nifti(path, vol_kij, affine):
    """Write a package-layout volume (k, i, j) as a NIfTI (i, j, k) with ``affine``."""
    img = nibabel.Nifti1Image(np.moveaxis(vol_kij, 0, -1), affine)
    img.header.set_xyzt_units("mm")
    nibabel.save(img, str(path))
    return path


def _series(folder, name="CT_small.dcm", n=4, gap=2.5, description="chest test series",
            uid=None):
    """``n`` slices made from one of pydicom's test files: same series, positions ``gap`` mm
    apart along z, their own instance numbers and SOP instance UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    src = pydicom.dcmread(get_testdata_file(name))
    uid = uid or generate_uid()
    z0 = float(src.ImagePositionPatient[2])
    for i in range(n):
        ds = copy.deepcopy(src)
        ds.ImagePositionPatient = [*src.ImagePositionPatient[:2], z0 + i * gap]
        ds.InstanceNumber = i + 1
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = uid
        ds.SeriesDescription = description
        ds.save_as(folder / f"{name[:2]}{n - i:03d}.dcm")  # file names against the z order
    return folder


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


# --------------------------------------------------------------------------- NIfTI


def test_nifti_opens_with_its_spacing_translation_modality_and_name(viewer, tmp_path):
    vol = _ct_hu()
    path = _write_nifti(tmp_path / "chest scan.nii.gz", vol, AFFINE)
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert layer.name == "chest scan"
    np.testing.assert_array_equal(np.asarray(layer.data), vol)
    # package layout (k, i, j): spacing (2.5, 0.8, 1.2) mm
    np.testing.assert_allclose(layer.scale, (2.5, 0.8, 1.2))
    # the world position of voxel 0 along each axis' own direction: z=30, -x=-10, +y=-20
    np.testing.assert_allclose(layer.translate, (30.0, -10.0, -20.0))
    meta = layer.metadata
    np.testing.assert_allclose(np.array(meta["affine"])[:3, 3], AFFINE[:3, 3])
    assert meta["source"] == str(path) and "units" in meta and "modality" in meta
    assert "oblique" not in meta.get("geometry", "")
    # a plain .nii, opened as a drag and drop does once the user chose this plugin for *.nii
    # in napari's reader dialog ("remember": the extension2reader preference)
    from napari.settings import get_settings

    plugins = get_settings().plugins
    saved = dict(plugins.extension2reader)
    plain = _write_nifti(tmp_path / "plain.nii", vol, AFFINE)
    from napari.errors import MultipleReaderError

    with pytest.raises(MultipleReaderError):  # no choice yet: the GUI asks which reader
        viewer.open(str(plain), plugin=None)
    try:
        plugins.extension2reader = {**saved, "*.nii": PLUGIN}
        (again,) = viewer.open(str(plain), plugin=None)  # what a drag and drop calls
    finally:
        plugins.extension2reader = saved
    np.testing.assert_allclose(again.scale, (2.5, 0.8, 1.2))


def test_oblique_nifti_says_what_the_viewer_drops(viewer, tmp_path):
    t = np.deg2rad(30)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 1.2, 2.5])
    affine[:3, 3] = (5.0, 6.0, 7.0)
    path = _write_nifti(tmp_path / "tilted.nii.gz", _ct_hu(), affine)
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    np.testing.assert_allclose(layer.scale, (2.5, 0.8, 1.2))
    note = layer.metadata["geometry"]
    assert "oblique" in note and "30" in note and "affine" in note, note
    np.testing.assert_allclose(layer.metadata["affine"], np.array(affine)[:, [2, 0, 1, 3]],
                               atol=1e-5)


def test_corrupt_nifti_fails_with_one_clean_line(viewer, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    assert layer_io.get_volume_reader(str(bad)) is not None  # ours to read, and to refuse
    with pytest.raises(InputError) as info:
        layer_io.read_volume(str(bad))
    assert "broken.nii.gz" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(Exception, match="broken.nii.gz|napari-patchdiff"):
        viewer.open(str(bad), plugin=PLUGIN)
    assert len(viewer.layers) == 0


# --------------------------------------------------------------------------- DICOM


def test_pydicom_test_files_open_with_pixel_spacing_and_modality(viewer):
    for name, modality, units in (("CT_small.dcm", "ct", "HU"), ("MR_small.dcm", "mri", None)):
        path = get_testdata_file(name)
        ds = pydicom.dcmread(path)
        (layer,) = viewer.open(path, plugin=PLUGIN)
        assert layer.data.shape == (ds.Rows, ds.Columns)
        np.testing.assert_allclose(layer.scale, [float(v) for v in ds.PixelSpacing])
        assert layer.metadata["modality"] == modality
        if units:
            assert layer.metadata["units"] == units
        assert layer.name == name[:-4]  # no SeriesDescription in these files: the file name


def test_dicom_folder_is_one_volume_in_slice_order(viewer, tmp_path):
    folder = _series(tmp_path / "series", n=4, gap=2.5)
    (tmp_path / "series" / "README.txt").write_text("not an image")
    assert layer_io.get_volume_reader(str(folder)) is not None
    (layer,) = viewer.open(str(folder), plugin=PLUGIN)
    ps = float(pydicom.dcmread(get_testdata_file("CT_small.dcm")).PixelSpacing[0])
    assert layer.data.shape == (4, 128, 128)
    np.testing.assert_allclose(layer.scale, (2.5, ps, ps), rtol=1e-6)
    assert layer.name == "chest test series"
    assert layer.metadata["modality"] == "ct" and layer.metadata["units"] == "HU"
    z0 = -75.699997
    # axial LPS: RAS z is DICOM z, so the first slice sits at z0 along +z
    assert layer.translate[0] == pytest.approx(z0, abs=1e-3)
    data, _ = io.read_image(folder)
    np.testing.assert_array_equal(np.asarray(layer.data), data)


def test_folder_with_two_series_gives_one_layer_each(viewer, tmp_path):
    folder = tmp_path / "study"
    _series(folder, "CT_small.dcm", n=3, gap=5.0, description="CT chest")
    _series(folder, "MR_small.dcm", n=2, gap=0.8, description="MR head")
    layers = viewer.open(str(folder), plugin=PLUGIN)
    by_name = {ly.name: ly for ly in layers}
    assert sorted(by_name) == ["CT chest", "MR head"]
    assert by_name["CT chest"].data.shape == (3, 128, 128)
    assert by_name["MR head"].data.shape == (2, 64, 64)
    np.testing.assert_allclose(by_name["MR head"].scale, (0.8, 0.3125, 0.3125), rtol=1e-6)
    assert by_name["MR head"].metadata["modality"] == "mri"


def test_corrupt_dicom_and_foreign_files(viewer, tmp_path):
    bad = tmp_path / "scan.dcm"
    bad.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00garbage" * 20)
    with pytest.raises(InputError) as info:
        layer_io.read_volume(str(bad))
    assert "scan.dcm" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(Exception, match="scan.dcm|napari-patchdiff"):
        viewer.open(str(bad), plugin=PLUGIN)
    # what is not ours is left to other readers: None, not an error
    (tmp_path / "notes.txt").write_text("hello")
    assert layer_io.get_volume_reader(str(tmp_path / "notes.txt")) is None
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.txt").write_text("x")
    assert layer_io.get_volume_reader(str(plain)) is None
    assert layer_io.get_volume_reader(["a.nii", "b.nii"]) is None  # stacks: not ours
    # a folder whose only DICOM-looking file is broken: a clean error naming the folder
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.dcm").write_bytes(b"junk")
    with pytest.raises(InputError) as info:
        layer_io.read_volume(str(broken))
    assert "broken" in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- widget + writer


def test_measurement_widget_loads_a_volume_and_simulates(viewer, tmp_path):
    _, meas = viewer.window.add_plugin_dock_widget(PLUGIN, "Measurement")
    folder = _series(tmp_path / "series", n=3, gap=2.5)
    layers = meas.load_volume(str(folder))
    assert [ly.name for ly in layers] == ["chest test series"]
    assert meas.layer_box.currentText() == "chest test series"
    meas.configure(slice=1, operator="ct-parallel", views=8, noise_std=0.1)
    problem = meas.simulate()
    assert problem is not None and problem.truth.modality == "ct"
    initial = viewer.layers["initial (fbp)"]
    np.testing.assert_allclose(initial.scale, layers[0].scale[1:])
    np.testing.assert_allclose(initial.translate, layers[0].translate[1:])
    # a broken file: the message in the widget, nothing raised, no layer added
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"junk")
    n = len(viewer.layers)
    assert meas.load_volume(str(bad)) is None
    assert "bad.dcm" in meas.info.text() and len(viewer.layers) == n


@pytest.mark.parametrize("slice_", [-1, 1])
def test_open_reconstruct_save_reopen_keeps_the_affine(viewer, tmp_path, slice_):
    src = _write_nifti(tmp_path / "in.nii.gz", _ct_hu(slices=3), AFFINE)
    _, meas = viewer.window.add_plugin_dock_widget(PLUGIN, "Measurement")
    _, prior = viewer.window.add_plugin_dock_widget(PLUGIN, "Prior")
    _, rec = viewer.window.add_plugin_dock_widget(PLUGIN, "Reconstruct")
    (layer,) = meas.load_volume(str(src))
    meas.configure(layer=layer.name, slice=slice_, operator="ct-parallel", views=8,
                   noise_std=0.1, modality="ct")
    assert meas.simulate() is not None
    rec.configure(method="fbp")
    rec.run()
    assert Session(viewer, meas, prior, rec).wait(60)
    result = viewer.layers["fbp #1"]
    want = np.array(layer.metadata["affine"])
    if slice_ >= 0:  # one slice: its voxel 0 sits slice_ steps along the slice axis
        want[:, 3] += slice_ * want[:, 0]
    np.testing.assert_allclose(result.metadata["affine"], want)

    out = tmp_path / "fbp.nii.gz"
    (written,) = result.save(str(out), plugin=PLUGIN)
    assert written.endswith("fbp.nii.gz")
    img = nibabel.load(written)
    if slice_ < 0:
        np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)  # as the input's header
    (back,) = viewer.open(written, plugin=PLUGIN)
    np.testing.assert_allclose(back.metadata["affine"], want, atol=1e-5)
    np.testing.assert_allclose(back.scale, result.scale, atol=1e-6)
    np.testing.assert_allclose(back.translate, result.translate, atol=1e-4)
    np.testing.assert_allclose(np.asarray(back.data), result.data, rtol=1e-6, atol=1e-3)


def test_writer_without_an_affine_uses_scale_and_translate(viewer, tmp_path):
    layer = viewer.add_image(np.arange(24, dtype=np.float32).reshape(2, 3, 4),
                             scale=(3.0, 0.5, 0.25), translate=(6.0, 1.0, 2.0), name="plain")
    (path,) = layer.save(str(tmp_path / "plain.nii.gz"), plugin=PLUGIN)
    (back,) = viewer.open(path, plugin=PLUGIN)
    np.testing.assert_allclose(back.scale, (3.0, 0.5, 0.25))
    np.testing.assert_allclose(back.translate, (6.0, 1.0, 2.0))
    # a 4D stack cannot be NIfTI here: napari reports "not a valid writer" for any ValueError,
    # so the reason also comes as a notification; nothing is written
    from napari.utils.notifications import notification_manager

    four = viewer.add_image(np.zeros((2, 2, 3, 4), np.float32), name="4d")
    with pytest.warns(UserWarning, match="not a valid writer"):
        assert four.save(str(tmp_path / "4d.nii.gz"), plugin=PLUGIN) == []
    assert not (tmp_path / "4d.nii.gz").exists()
    said = [str(n.message) for n in notification_manager.records]
    assert any("not saved" in m and "2D image or 3D volume" in m for m in said), said[-3:]
