"""Cone-beam CT (``ct-cone``): refused with a clear message where ASTRA cannot project cone
beams (no CUDA: every CPU-only machine and CI), and, where a CUDA GPU is lent
(``scripts/gpu_check.sh`` runs this file), the operator itself."""
import numpy as np
import pytest
import torch

from napari_patchdiff import api
from napari_patchdiff.cli import main
from napari_patchdiff.errors import InputError
from napari_patchdiff.operators import OPERATORS, make_operator
from napari_patchdiff.operators.ct_cone import cuda_ready

READY, WHY = cuda_ready()
needs_cuda = pytest.mark.skipif(not READY, reason=f"ct-cone needs CUDA: {WHY}")


def _volume(depth=8, size=32, z_constant=False):
    r = np.linspace(-1, 1, size)[:, None]
    c = np.linspace(-1, 1, size)[None, :]
    disc = ((r / 0.7) ** 2 + (c / 0.8) ** 2 < 1).astype(np.float32)
    z = np.linspace(0.6, 1.0, depth)[:, None, None]
    return (disc * (0.5 + 0.2 * r) * (1.0 if z_constant else z)).astype(np.float32)


def test_registered_as_a_cuda_only_ct_operator():
    cls = OPERATORS.get("ct-cone")
    assert cls.needs_cuda and cls.couples_slices and cls.modality == "ct"
    assert {"views", "angular_range", "src_radius", "det_radius", "slice_thickness",
            "depth"} <= {p.name for p in cls.PARAMS}


@pytest.mark.skipif(READY, reason="CUDA and ASTRA's CUDA build are present")
def test_refused_without_cuda_with_the_reason():
    with pytest.raises(InputError, match=r"ct-cone needs a CUDA GPU.*ct-fan"):
        make_operator("ct-cone", (32, 32), depth=8)
    vol = _volume()
    before = vol.copy()
    with pytest.raises(InputError, match="needs a CUDA GPU"):
        api.simulate(api.truth_from_array(vol, modality="unit"), "ct-cone", views=12)
    np.testing.assert_array_equal(vol, before)  # the user's data untouched


def test_a_2d_image_is_refused_before_the_device():
    with pytest.raises(InputError, match="whole volume"):
        api.simulate(api.truth_from_array(_volume()[0], modality="unit"), "ct-cone")


@pytest.mark.skipif(READY, reason="CUDA and ASTRA's CUDA build are present")
def test_command_line_says_why_in_one_line(capsys):
    code = main(["reconstruct", "sample:ct", "--operator", "ct-cone", "--views", "12",
                 "--method", "fbp", "--out", "unused", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "ct-cone needs a CUDA GPU" in err and "Traceback" not in err


@needs_cuda
def test_adjoint_and_normal_on_cuda():
    op = make_operator("ct-cone", (32, 40), device="cuda", views=16, depth=6)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 32, 40, generator=g).cuda()
    y = op(x)
    assert tuple(y.shape) == (6, 1, 16, 80)
    yr = torch.rand(y.shape, generator=g).cuda()
    lhs, rhs = float((y * yr).sum()), float((x * op.adjoint(yr)).sum())
    # ASTRA's CUDA cone-beam back-projection is voxel-driven, not the exact transpose of its
    # ray-driven projection: a few percent apart
    assert abs(lhs - rhs) <= 0.05 * abs(lhs)
    assert op.initial(y).shape == x.shape and op.norm() > 0
    with pytest.raises(InputError, match="whole volumes"):
        op(x[:5])


@needs_cuda
def test_central_rows_are_the_fan_beam_sinogram():
    """A volume constant along z: the detector rows next to the central plane see what ct-fan
    sees of one slice (same source and detector distances)."""
    vol = torch.from_numpy(_volume(8, 48, z_constant=True))[:, None]
    cone = make_operator("ct-cone", (48, 48), device="cuda", views=20, depth=8)
    fan = make_operator("ct-fan", (48, 48), views=20)
    rows = cone(vol.cuda()).cpu()[3:5, 0].mean(0)
    ref = fan(vol[:1])[0, 0]
    assert float((rows - ref).norm() / ref.norm()) < 0.03


@needs_cuda
def test_reconstructs_a_volume_on_cuda():
    truth = api.truth_from_array(_volume(8, 48), modality="unit")
    problem = api.simulate(truth, "ct-cone", views=30, noise_std=0.05, device="cuda")
    fdk = api.solve(problem, "fbp")
    cg = api.solve(problem, "admm-tv")
    assert fdk.recon.shape == cg.recon.shape == (8, 48, 48)
    assert cg.report["psnr"] > fdk.report["psnr"] > 15
