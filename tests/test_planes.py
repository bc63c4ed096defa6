"""Which planes of a volume the 2D prior denoises: axial slices, or axial, coronal and sagittal in
turn; the default follows the voxel spacing and whether the data couple every slice."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_patchdiff import api
from napari_patchdiff.errors import InputError
from napari_patchdiff.priors import Prior
from napari_patchdiff.solvers import Volume, get_solver
from napari_patchdiff.solvers.diffusion.planes import (from_planes, plane_of_step, planes_rule,
                                                        to_planes)


class ShapePrior(Prior):
    """Shrinks towards 0.5 and records the image shapes it was asked to denoise."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def _denoise(self, x, sigma, generator):
        self.shapes.append(tuple(x.shape))
        return 0.5 + (x - 0.5) / (1.0 + float(sigma) ** 2)


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_planes_are_the_volume_seen_from_each_side_and_back(plane):
    x = torch.randn(2 * 5, 1, 6, 7, dtype=torch.float64)  # two volumes of 5 slices
    p = to_planes(x, 5, plane)
    v = x.reshape(2, 5, 6, 7)
    if plane == "coronal":
        assert p.shape == (12, 1, 5, 7) and torch.equal(p[6 + 3, 0], v[1, :, 3, :])
    elif plane == "sagittal":
        assert p.shape == (14, 1, 5, 6) and torch.equal(p[7 + 2, 0], v[1, :, :, 2])
    else:
        assert p is x
    assert torch.equal(from_planes(p, x.shape, 5, plane), x)


def test_the_default_is_triplanar_only_for_isotropic_volumes_whose_data_couple_slices():
    coupled, stack = SimpleNamespace(couples_slices=True), SimpleNamespace(couples_slices=False)
    iso, thick = Volume(32, 1.0, (1.0, 1.2)), Volume(32, 5.0, (0.8, 0.8))

    def rule(op, volume):
        return planes_rule(SimpleNamespace(op=op, volume=volume))

    assert rule(coupled, iso) == "triplanar"
    assert rule(coupled, thick) == "axial"  # 6.25 x as thick as wide: coronal planes look wrong
    assert rule(stack, iso) == "axial"  # windows of a few slices: no whole coronal planes
    assert rule(coupled, Volume(32, 1.0)) == "axial"  # pixel spacing unknown
    assert rule(coupled, None) == "axial"
    assert [plane_of_step("triplanar", i) for i in range(4)] == [
        "axial", "coronal", "sagittal", "axial"]
    assert plane_of_step("axial", 1) == "axial" and plane_of_step("sagittal", 2) == "sagittal"


@pytest.mark.parametrize("method", ["dds", "pnp-admm"])
def test_triplanar_runs_turn_the_planes_and_axial_runs_do_not(method):
    rng = np.random.default_rng(0)
    vol = (0.5 + 0.1 * rng.standard_normal((5, 9, 10))).astype(np.float32)
    truth = api.truth_from_array(vol, {"spacing": (1.0, 1.0, 1.0)}, modality="unit")
    problem = api.simulate(truth, "denoise", noise_std=0.05, seed=0)
    prior = ShapePrior()
    common = dict(prior=prior, nfe=4, z_weight=0.0, z_tv=0.0, batch=5)
    axial = api.solve(problem, method, planes="axial", **common)
    assert set(prior.shapes) == {(5, 1, 9, 10)}
    assert axial.report["method_params"]["planes"] == "axial"
    prior.shapes.clear()
    tri = api.solve(problem, method, planes="triplanar", **common)
    assert prior.shapes == [(5, 1, 9, 10), (9, 1, 5, 10), (10, 1, 5, 9), (5, 1, 9, 10)]
    assert tri.recon.shape == axial.recon.shape == (5, 9, 10)
    assert api.method_params(problem, method)["planes"] == "axial"  # a stack of 2D problems
    prior.shapes.clear()
    api.solve(problem, method, planes="sagittal", **common)
    assert set(prior.shapes) == {(10, 1, 5, 9)}  # every step the sagittal planes only
    with pytest.raises(InputError, match="planes"):
        api.solve(problem, method, planes="oblique", **common)
    assert get_solver(method).names.count("planes") == 1


def test_an_isotropic_3d_kspace_volume_defaults_to_triplanar_and_a_thick_one_to_axial():
    rng = np.random.default_rng(1)
    vol = (0.5 + 0.1 * rng.standard_normal((8, 16, 16))).astype(np.float32)
    for spacing, planes in (((1.0, 1.0, 1.0), "triplanar"), ((6.5, 0.8, 0.8), "axial")):
        truth = api.truth_from_array(vol, {"spacing": spacing}, modality="unit")
        problem = api.simulate(truth, "mri-cartesian-3d", acceleration=4, noise_std=0.0, seed=0)
        assert problem.volume.pixel == spacing[1:]
        assert api.method_params(problem, "dds")["planes"] == planes
        assert api.method_params(problem, "pnp-admm")["planes"] == planes
        stack = api.simulate(truth, "mri-cartesian", acceleration=4, noise_std=0.0, seed=0)
        assert api.method_params(stack, "dds")["planes"] == "axial"
