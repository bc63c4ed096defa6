"""Operators: adjoint tests, shapes, devices, agreement of CT with an independent implementation."""
import math

import numpy as np
import pytest
import torch

from napari_patchdiff.errors import InputError
from napari_patchdiff.operators import OPERATORS, add_noise, as_batch, line_mask, make_operator

CT_KW = {"views": 20}
ASTRA = {"ct-parallel", "ct-fan"}  # float32-only backend


#: the operators that run on any device (ct-cone needs CUDA: tests/test_ct_cone.py)
ON_CPU = [n for n in OPERATORS.names() if not OPERATORS.get(n).needs_cuda]


def _params(name):
    return CT_KW if name.startswith("ct") else {}


def _inner(a, b):
    return (torch.conj(a) * b).real.sum() if a.is_complex() else (a * b).sum()


@pytest.mark.parametrize("name", ON_CPU)
def test_adjoint(name):
    g = torch.Generator().manual_seed(0)
    op = make_operator(name, (48, 64), dtype=torch.float64, **_params(name))
    x = torch.rand(3, 1, 48, 64, generator=g, dtype=torch.float64)
    y = op(x)
    assert tuple(y.shape) == (3, 1, *op.measurement_shape)
    assert y.is_complex() == op.is_complex
    yr = torch.randn(y.shape, generator=g, dtype=torch.float64)
    if op.is_complex:
        yr = torch.complex(yr, torch.randn(y.shape, generator=g, dtype=torch.float64))
    lhs, rhs = _inner(y, yr), _inner(x, op.adjoint(yr))
    tol = 1e-4 if name in ASTRA else 1e-5
    assert abs(float(lhs - rhs)) <= tol * abs(float(lhs))
    # normal() is A^T A: <A^T A x, x2> = <A x, A x2>, which uses forward() only, so the check
    # fails for a wrong normal() whether it is inherited or overridden (MRI)
    x2 = torch.rand(3, 1, 48, 64, generator=g, dtype=torch.float64)
    lhs, rhs = _inner(op.normal(x), x2), _inner(op(x), op(x2))
    assert abs(float(lhs - rhs)) <= tol * abs(float(rhs))
    assert op.initial(y).shape == x.shape


@pytest.mark.parametrize("name", ON_CPU)
def test_float32_default_and_autograd(name):
    op = make_operator(name, (32, 32), **_params(name))
    x = torch.rand(2, 1, 32, 32, requires_grad=True)
    y = op(x)
    assert x.dtype == torch.float32 and op.dtype == torch.float32
    loss = (y.abs() ** 2).sum() if y.is_complex() else (y**2).sum()
    loss.backward()
    # d/dx |Ax|^2 = 2 A^T A x
    torch.testing.assert_close(x.grad, 2 * op.normal(x.detach()), rtol=1e-3, atol=1e-3)


def test_ct_parallel_matches_skimage_radon():
    """ODL/ASTRA parallel beam agrees with scikit-image's independent Radon transform."""
    from skimage.transform import radon

    n, views, det = 128, 36, 256
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    img = ((xx / 40) ** 2 + (yy / 25) ** 2 <= 1).astype(np.float64)
    img += 0.5 * (((xx - 10) / 8) ** 2 + ((yy + 5) / 12) ** 2 <= 1)
    op = make_operator("ct-parallel", (n, n), views=views, detectors=det)
    ours = op(torch.from_numpy(img).float()[None, None])[0, 0].numpy()  # (views, det)
    # ODL's angles are cell midpoints of [0, 180); its angle a is skimage's a - 90 degrees.
    angles = (np.arange(views) + 0.5) * 180 / views
    ref = radon(img, theta=angles - 90, circle=False)  # (detector, angle), pixel size 1
    half = math.sqrt(2) * n / 2
    centres = -half + (np.arange(det) + 0.5) * (2 * half / det)
    pos = np.arange(ref.shape[0]) - ref.shape[0] // 2
    resampled = np.stack([np.interp(pos, centres, ours[j]) for j in range(views)], axis=1)
    assert np.linalg.norm(resampled - ref) / np.linalg.norm(ref) < 0.05


def test_ct_limited_angle_and_fan_shapes():
    op = make_operator("ct-parallel", (64, 64), views=30, angular_range=90)
    assert op.measurement_shape[0] == 30
    fan = make_operator("ct-fan", (64, 64), views=40, src_radius=200, det_radius=100)
    assert fan.measurement_shape == (40, 128)
    with pytest.raises(InputError, match="src_radius"):
        make_operator("ct-fan", (64, 64), src_radius=10)


def test_fbp_reconstructs_a_disc():
    n = 64
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    img = torch.from_numpy(((xx**2 + yy**2) <= 20**2).astype(np.float32))[None, None] * 0.5
    op = make_operator("ct-parallel", (n, n), views=180)
    rec = op.initial(op(img))
    assert float((rec - img).abs().mean()) < 0.03


def test_mri_masks():
    for acc in (4, 8):
        for kind in ("equispaced", "random"):
            m = line_mask(256, acc, kind, seed=1)
            assert abs(m.sum() - 256 / acc) <= 1
            c = m[128 - 4 : 128 + 4]
            assert c.all(), "centre must be fully sampled"
    assert not np.array_equal(line_mask(256, 4, "random", 1), line_mask(256, 4, "random", 2))
    op = make_operator("mri-cartesian", (64, 64), acceleration=4)
    y = op(torch.rand(1, 1, 64, 64))
    assert y.dtype == torch.complex64
    assert float(y.abs()[0, 0, op.mask == 0].max()) == 0.0


def test_mri_full_sampling_is_unitary():
    op = make_operator("mri-cartesian", (32, 32), acceleration=1, dtype=torch.float64)
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(op.adjoint(op(x)), x)
    torch.testing.assert_close(op(x).abs().pow(2).sum(), x.pow(2).sum().to(torch.float64))


def test_noise_is_seeded_and_scaled():
    y = torch.zeros(4, 1, 100, 100)
    a, b = add_noise(y, 0.1, seed=3), add_noise(y, 0.1, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, add_noise(y, 0.1, seed=4))
    assert abs(float(a.std()) - 0.1) < 0.005
    c = add_noise(torch.zeros(2, 1, 50, 50, dtype=torch.complex64), 0.2, seed=0)
    assert abs(float(c.real.std()) - 0.2) < 0.01 and abs(float(c.imag.std()) - 0.2) < 0.01
    with pytest.raises(InputError):
        add_noise(y, -1.0)


def test_bad_inputs_give_clear_errors():
    op = make_operator("blur-gaussian", (32, 32))
    with pytest.raises(InputError, match="shape"):
        op(torch.rand(1, 1, 16, 32))
    with pytest.raises(InputError, match="NaN"):
        op(torch.full((1, 1, 32, 32), float("nan")))
    with pytest.raises(InputError, match="floating"):
        op(torch.ones(1, 1, 32, 32, dtype=torch.int64))
    with pytest.raises(InputError, match="unknown operator"):
        make_operator("ct-helical", (32, 32))
    with pytest.raises(InputError, match="no parameter"):
        make_operator("superres", (32, 32), views=3)
    with pytest.raises(InputError, match="divide"):
        make_operator("superres", (30, 30), factor=4)
    with pytest.raises(InputError, match="odd"):
        make_operator("blur-gaussian", (32, 32), kernel_size=4)


def test_as_batch_roundtrip():
    for shape in [(8, 9), (3, 8, 9), (2, 1, 8, 9)]:
        x = torch.rand(shape)
        b, back = as_batch(x)
        assert b.ndim == 4 and torch.equal(back(b), x)
    with pytest.raises(InputError):
        as_batch(torch.rand(2, 2, 8, 9))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ON_CPU)
def test_cuda_matches_cpu(name):
    x = torch.rand(2, 1, 32, 32)
    cpu = make_operator(name, (32, 32), **_params(name))
    gpu = make_operator(name, (32, 32), device="cuda", **_params(name))
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", ["ct-parallel", "ct-fan"])
def test_ct_matrix_backend_equals_odl_ray_transform(name):
    """The sparse-matrix backend is ODL's ASTRA projector itself: same numbers as RayTransform."""
    x = torch.rand(2, 1, 48, 48, dtype=torch.float64)
    fast = make_operator(name, (48, 48), views=15, dtype=torch.float64)
    ref = make_operator(name, (48, 48), views=15, dtype=torch.float64, backend="odl")
    assert fast.backend == "matrix" and ref.backend == "odl"
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-4)
    y = ref(x)
    torch.testing.assert_close(fast.adjoint(y), ref.adjoint(y), rtol=1e-5, atol=1e-4)


def test_separable_blur_equals_2d_convolution():
    op = make_operator("blur-gaussian", (40, 40), sigma=1.7, dtype=torch.float64)
    x = torch.rand(2, 1, 40, 40, dtype=torch.float64)
    ref = torch.nn.functional.conv2d(x, op.kernel, padding=op.kernel.shape[-1] // 2)
    torch.testing.assert_close(op(x), ref)
    assert op.params["kernel_size"] == 13
    torch.testing.assert_close(op.kernel.sum(), torch.tensor(1.0, dtype=torch.float64))


# -- the rest of the operator interface: solve, norm, to, undersampling_factor -------------------


def _solve_case(name, shape=(32, 30)):
    g = torch.Generator().manual_seed(3)
    op = make_operator(name, shape, dtype=torch.float64, **_params(name))
    x = torch.rand(2, 1, *shape, generator=g, dtype=torch.float64)
    z = torch.rand(2, 1, *shape, generator=g, dtype=torch.float64)
    return op, z, op.adjoint(op(x))


@pytest.mark.parametrize("name", ["mri-cartesian", "inpaint", "denoise"])
@pytest.mark.parametrize("gamma", [0.5, 40.0, math.inf])
def test_closed_form_solve_equals_converged_cg(name, gamma):
    """The exact solve (iterations=0) is in closed form for these operators and equals
    conjugate gradients run to convergence on the same system."""
    from napari_patchdiff.operators.linalg import conjugate_gradient

    op, z, aty = _solve_case(name)
    assert op._closed_form_solve(z, aty, gamma) is not None
    if math.isinf(gamma):
        ref = conjugate_gradient(op.normal, aty, z, 100)
    else:
        ref = conjugate_gradient(lambda v: v + gamma * op.normal(v), z + gamma * aty, z, 100)
    torch.testing.assert_close(op.solve(z, aty, gamma), ref, rtol=1e-9, atol=1e-9)
    # the solution satisfies its normal equations
    x = op.solve(z, aty, gamma)
    if math.isinf(gamma):
        torch.testing.assert_close(op.normal(x), aty, rtol=1e-9, atol=1e-9)
    else:
        torch.testing.assert_close(x + gamma * op.normal(x), z + gamma * aty, rtol=1e-9,
                                   atol=1e-9)


def test_solve_by_cg_early_stopped_and_exact():
    from napari_patchdiff.operators.linalg import conjugate_gradient

    op, z, aty = _solve_case("blur-gaussian")
    assert op._closed_form_solve(z, aty, 2.0) is None
    early = op.solve(z, aty, 2.0, iterations=3)
    ref = conjugate_gradient(lambda v: v + 2.0 * op.normal(v), z + 2.0 * aty, z, 3)
    assert torch.equal(early, ref)
    exact = op.solve(z, aty, 2.0)
    residual = exact + 2.0 * op.normal(exact) - (z + 2.0 * aty)
    assert float(residual.norm()) <= 1e-6 * float((z + 2.0 * aty).norm())
    # a penalty replaces the identity; start= warm-starts
    lap = lambda v: 2.0 * v  # noqa: E731
    pen = op.solve(z, aty, 2.0, penalty=lap)
    residual = 2.0 * pen + 2.0 * op.normal(pen) - (z + 2.0 * aty)
    assert float(residual.norm()) <= 1e-6 * float((z + 2.0 * aty).norm())
    with pytest.raises(InputError, match="gamma"):
        op.solve(z, aty, 0.0)


def test_norm_is_cached_and_deterministic():
    op = make_operator("ct-parallel", (32, 32), views=10)
    assert op.norm() == op.norm() == make_operator("ct-parallel", (32, 32), views=10).norm()
    assert op.norm() > 0 and "_norms" in op.__dict__


def test_to_moves_with_the_same_parameters():
    op = make_operator("mri-cartesian", (32, 32), acceleration=8, mask="random", mask_seed=4)
    assert op.to() is op and op.to("cpu", torch.float32) is op
    op64 = op.to(dtype=torch.float64)
    assert op64 is not op and op64.dtype == torch.float64 and op64.params == op.params
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(op64(x), op(x.float()).to(torch.complex128), rtol=1e-5, atol=1e-5)


def test_undersampling_factor_lives_on_the_operator():
    assert make_operator("ct-parallel", (32, 32), views=60).undersampling_factor == 1.0
    assert make_operator("ct-parallel", (32, 32), views=20).undersampling_factor == 3.0
    assert make_operator("ct-parallel", (32, 32), views=60,
                         angular_range=90).undersampling_factor == pytest.approx(8.0)
    assert make_operator("ct-fan", (32, 32), views=30).undersampling_factor == 2.0
    assert make_operator("mri-cartesian", (32, 32), acceleration=8).undersampling_factor == 2.0
    assert make_operator("blur-gaussian", (32, 32)).undersampling_factor == 1.0


def _smooth_phantom(h, w, dtype=torch.float32):
    r = torch.arange(h, dtype=torch.float64)[:, None] / h - 0.5
    c = torch.arange(w, dtype=torch.float64)[None, :] / w - 0.5
    disc = ((r / 0.4) ** 2 + (c / 0.45) ** 2 < 1).to(torch.float64)
    return (disc * (0.5 + 0.3 * r + 0.2 * c))[None, None].to(dtype)


@pytest.mark.parametrize("name", ON_CPU)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_estimate_noise_interface(name, dtype):
    """Every operator estimates its measurement noise std (in measurement units) from the
    measurement alone: a float, near the truth on a simple phantom, small (not an error) for
    noiseless data. Accuracy on real slices: tests/test_noise_estimate.py."""
    if name in ASTRA and dtype == torch.float64:
        pytest.skip("ASTRA computes in float32; the float32 case covers CT")
    op = make_operator(name, (96, 128), dtype=dtype, **_params(name))
    with torch.no_grad():
        y = op(_smooth_phantom(96, 128, dtype))
    clean = op.estimate_noise(y)
    assert isinstance(clean, float) and 0 <= clean < 0.02
    sigma = 0.5 if name in ASTRA else 0.05
    noisy = op.estimate_noise(add_noise(y, sigma, seed=4))
    assert isinstance(noisy, float) and noisy == pytest.approx(sigma, rel=0.25)
    with pytest.raises(InputError):
        op.estimate_noise(y[..., :-1])
