import odl
import pytest
import torch

from napari_patchdiff.errors import InputError
from napari_patchdiff.events import Cancelled, CancelToken, StepEvent, run_to_end
from napari_patchdiff.operators import OPERATORS, add_noise, make_operator
from napari_patchdiff.recon.metrics import psnr
from napari_patchdiff.solvers import SOLVERS, Method, get_solver, knobs, tv

F64 = torch.float64
N = 64


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def phantom():
    space = odl.uniform_discr([-N / 2, -N / 2], [N / 2, N / 2], (N, N))
    x = odl.phantom.shepp_logan(space, modified=True).asarray()
    return torch.from_numpy(x).to(F64)[None, None]


def _run(name, op, y, noise_std=0.0, **overrides):
    spec = get_solver(name)
    return run_to_end(spec.run(op, y, **spec.resolve(op, noise_std, **overrides))).estimate


def _ls_rescaled(a, x):
    """``a`` scaled by the least-squares factor that best matches the truth (fair to A^T y)."""
    return a * (a * x).sum() / (a * a).sum()


# -- finite differences ----------------------------------------------------------------------


def test_gradient_divergence_adjoint():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 17, 23, generator=g, dtype=F64)
    p = torch.randn(3, 2, 17, 23, generator=g, dtype=F64)
    lhs = (tv.gradient(x) * p).sum()
    rhs = -(x * tv.divergence(p)).sum()
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    q = torch.randn(3, 1, 17, 23, generator=g, dtype=F64)
    lhs = (tv.gradient_z(x) * q).sum()
    rhs = (x * tv.gradient_z_adjoint(q)).sum()
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    # Neumann boundary: constants have zero gradient; a ramp has a constant one inside
    assert tv.gradient(torch.ones(1, 1, 5, 5, dtype=F64)).abs().max() == 0
    ramp = torch.arange(5, dtype=F64).view(1, 1, 5, 1).expand(1, 1, 5, 4)
    assert torch.equal(tv.gradient(ramp)[0, 0, :-1], torch.ones(4, 4, dtype=F64))
    assert tv.gradient_z(torch.ones(4, 1, 3, 3, dtype=F64)).abs().max() == 0


def test_shrinkage_is_the_prox():
    v = torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=F64).T.reshape(1, 2, 1, 2)
    out = tv.shrink_isotropic(v, 1.0)
    assert torch.allclose(out[..., 0].flatten(), torch.tensor([2.4, 3.2], dtype=F64))
    assert out[..., 1].abs().max() == 0  # |(0.3, 0.4)| = 0.5 < 1
    assert torch.equal(tv.shrink(torch.tensor([-2.0, 0.5, 3.0]), 1.0),
                       torch.tensor([-1.0, 0.0, 2.0]))


# -- registry --------------------------------------------------------------------------------


def test_registry_entries_and_defaults():
    for name in ("fbp", "zero-filled", "adjoint", "initial", "cg", "admm-tv"):
        spec = get_solver(name)
        assert isinstance(spec, Method) and spec.name == name and spec.kind == "classical"
        assert SOLVERS.doc(name)
    with pytest.raises(InputError, match="admm-tv.*cg"):
        get_solver("no-such-method")
    # defaults exist for every operator and scale with the noise
    for op_name in OPERATORS.names():
        if OPERATORS.get(op_name).needs_cuda:
            continue  # ct-cone: tests/test_ct_cone.py
        extra = {"views": 8} if "ct" in op_name else {}
        op = make_operator(op_name, (32, 32), dtype=F64, **extra)
        for spec_name in ("cg", "admm-tv"):
            spec = get_solver(spec_name)
            # noise of 0.05 on the image scale (measurements scale like sqrt(||A^T A||))
            d0, d1 = spec.resolve(op, 0.0), spec.resolve(op, 0.05 * op.norm() ** 0.5)
            assert set(d0) == {p.name for p in spec.params}
        assert d1["lam"] > d0["lam"] > 0 and d0["rho"] > 0
        cg0, cg1 = get_solver("cg").resolve(op, 0.0), get_solver("cg").resolve(op, 1.0)
        assert cg0["iterations"] >= cg1["iterations"] >= 1
    with pytest.raises(InputError, match="no parameter"):
        get_solver("cg").resolve(op, 0.0, lam=1.0)
    with pytest.raises(InputError, match="noise_std"):
        get_solver("admm-tv").resolve(op, -1.0)


def test_operator_norm():
    assert make_operator("denoise", (16, 16), dtype=F64).norm() == pytest.approx(1.0)
    assert make_operator("mri-cartesian", (16, 16), dtype=F64).norm() == pytest.approx(
        1.0, rel=1e-6)
    assert make_operator("superres", (16, 16), dtype=F64).norm() == pytest.approx(1 / 16)


def test_direct_methods_check_the_operator(phantom):
    mri = make_operator("mri-cartesian", (N, N), dtype=F64)
    ct = make_operator("ct-parallel", (N, N), dtype=F64, views=8)
    blur = make_operator("blur-gaussian", (N, N), dtype=F64)
    with pytest.raises(InputError, match="'zero-filled'"):
        _run("fbp", mri, mri(phantom))
    with pytest.raises(InputError, match="'fbp'"):
        _run("zero-filled", ct, ct(phantom))
    with pytest.raises(InputError, match="'initial'"):
        _run("fbp", blur, blur(phantom))
    y = mri(phantom)
    assert torch.equal(_run("zero-filled", mri, y), mri.initial(y))
    assert torch.equal(_run("adjoint", mri, y), mri.adjoint(y))
    assert torch.equal(_run("initial", blur, blur(phantom)), blur.initial(blur(phantom)))


# -- quality on a phantom --------------------------------------------------------------------


def test_ct_sparse_view_quality(phantom):
    op = make_operator("ct-parallel", (N, N), dtype=F64, views=20)
    noise = 0.1  # line integrals reach ~16 here
    y = add_noise(op(phantom), noise, seed=1)
    p_adj = psnr(_ls_rescaled(op.adjoint(y), phantom), phantom)
    p_fbp = psnr(_run("fbp", op, y, noise), phantom)
    p_cg = psnr(_run("cg", op, y, noise), phantom)
    p_tv = psnr(_run("admm-tv", op, y, noise, iterations=40), phantom)
    assert p_fbp > p_adj + 2
    assert p_cg > p_adj + 2
    assert p_cg > p_fbp
    assert p_tv > p_fbp + 5


def test_mri_quality(phantom):
    op = make_operator("mri-cartesian", (N, N), dtype=F64, acceleration=4)
    y = add_noise(op(phantom), 0.01, seed=1)
    p_zf = psnr(_run("zero-filled", op, y, 0.01), phantom)
    assert psnr(_run("cg", op, y, 0.01), phantom) > p_zf
    est = _run("admm-tv", op, y, 0.01, iterations=40)
    assert psnr(est, phantom) > p_zf + 10
    assert est.min() >= 0 and est.dtype == F64


@pytest.mark.parametrize("name", ["blur-gaussian", "superres"])
def test_cg_beats_initial(phantom, name):
    op = make_operator(name, (N, N), dtype=F64)
    y = add_noise(op(phantom), 0.005, seed=1)
    p_init = psnr(_run("initial", op, y, 0.005), phantom)
    assert psnr(_run("cg", op, y, 0.005), phantom) > p_init
    assert psnr(_run("cg", op, y, 0.005, start="zero"), phantom) > psnr(op.adjoint(y), phantom)


def test_cg_solves_the_damped_normal_equations():
    op = make_operator("blur-gaussian", (12, 12), dtype=F64, sigma=1.0)
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 1, 12, 12, generator=g, dtype=F64)
    basis = torch.eye(144, dtype=F64).view(144, 1, 12, 12)
    a = op.normal(basis).view(144, 144).T + 0.05 * torch.eye(144, dtype=F64)
    exact = torch.linalg.solve(a, op.adjoint(y).view(2, 144).T).T.view(2, 1, 12, 12)
    est = _run("cg", op, y, iterations=150, damping=0.05, start="zero")
    assert torch.allclose(est, exact, atol=1e-8)


def test_batch_uses_per_slice_step_sizes(phantom):
    op = make_operator("blur-gaussian", (N, N), dtype=F64)
    batch = torch.cat([phantom, 0.5 * phantom.flip(-1) + 0.2])
    y = op(batch)
    together = _run("cg", op, y, iterations=8)
    for i in range(2):
        alone = _run("cg", op, y[i : i + 1], iterations=8)
        assert torch.allclose(together[i : i + 1], alone, rtol=0, atol=1e-10)


def test_admm_tv_minimises_its_objective(phantom):
    op = make_operator("denoise", (N, N), dtype=F64)
    y = add_noise(op(phantom), 0.1, seed=2)
    lam = 0.05

    def objective(x):
        return 0.5 * float(((op(x) - y) ** 2).sum()) + lam * float(tv.tv_norm(x))

    est = _run("admm-tv", op, y, lam=lam, iterations=80, nonneg=False)
    fine = _run("admm-tv", op, y, lam=lam, iterations=200, nonneg=False)
    assert objective(est) < objective(phantom) < objective(y)
    assert objective(est) <= objective(fine) * (1 + 1e-3)
    assert psnr(est, phantom) > psnr(y, phantom) + 4


# -- events, cancel, determinism ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["cg", "admm-tv"])
def test_events_and_cancel(phantom, name):
    op = make_operator("ct-parallel", (N, N), dtype=F64, views=8)
    y = op(phantom)
    token = CancelToken()
    seen = []
    with pytest.raises(Cancelled) as info:
        for ev in get_solver(name)(op, y, cancel=token, iterations=5):
            assert isinstance(ev, StepEvent)
            assert ev.total == 5 and ev.nfe == 0 and ev.denoised is None
            assert ev.estimate.shape == (1, 1, N, N) and ev.estimate.dtype == F64
            assert ev.info
            seen.append(ev)
            if ev.step == 2:
                token.cancel()
    assert [e.step for e in seen] == [1, 2]
    assert torch.equal(info.value.estimate, seen[-1].estimate)
    events = list(get_solver(name)(op, y, iterations=3))
    assert [e.step for e in events] == [1, 2, 3] and events[-1].done


def test_direct_method_cancel_and_event(phantom):
    op = make_operator("mri-cartesian", (N, N), dtype=F64)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        run_to_end(get_solver("zero-filled")(op, op(phantom), cancel=token))
    (ev,) = list(get_solver("zero-filled")(op, op(phantom)))
    assert (ev.step, ev.total, ev.nfe) == (1, 1, 0)


def test_determinism(phantom):
    op = make_operator("ct-parallel", (N, N), dtype=torch.float32, views=8)
    y = add_noise(op(phantom.float()), 0.1, seed=3)
    a = _run("admm-tv", op, y, 0.1, iterations=10)
    b = _run("admm-tv", op, y, 0.1, iterations=10)
    assert a.dtype == torch.float32 and torch.equal(a, b)
    assert torch.equal(_run("cg", op, y, 0.1), _run("cg", op, y, 0.1))


def test_parameter_validation(phantom):
    op = make_operator("denoise", (N, N), dtype=F64)
    y = op(phantom)
    with pytest.raises(InputError, match="iterations"):
        _run("cg", op, y, iterations=0)
    with pytest.raises(InputError, match="rho"):
        _run("admm-tv", op, y, rho=0.0)
    with pytest.raises(InputError, match="start"):
        _run("cg", op, y, start="middle")
    with pytest.raises(InputError, match="measurement"):
        _run("cg", op, y[:, :, :10])


# -- 3D ----------------------------------------------------------------------------------------


def test_tv3d_reduces_slice_variation(phantom):
    op = make_operator("mri-cartesian", (N, N), dtype=F64)
    volume = phantom.repeat(4, 1, 1, 1) * torch.tensor([1.0, 0.98, 0.96, 0.94], dtype=F64).view(
        4, 1, 1, 1)
    y = add_noise(op(volume), 0.03, seed=4)
    spec = get_solver("admm-tv")
    params = spec.resolve(op, 0.03, iterations=30)
    flat = run_to_end(spec.run(op, y, **params))
    ev3d = run_to_end(spec.run(op, y, **{**params, "tv3d": True}))
    assert ev3d.estimate.shape == (4, 1, N, N)

    def zvar(x):
        return float(tv.gradient_z(x).abs().sum())

    assert zvar(ev3d.estimate) < 0.7 * zvar(flat.estimate)
    assert psnr(ev3d.estimate, volume) > psnr(flat.estimate, volume)
    # the z term couples the slices: without it each slice is reconstructed on its own
    alone = run_to_end(spec.run(op, y[1:2], **params)).estimate
    assert torch.allclose(flat.estimate[1:2], alone, atol=1e-10)


def test_admm_rho_follows_a_user_lam():
    """Dependent defaults are computed from the caller's overrides, not the default lam."""
    from napari_patchdiff.operators import make_operator
    from napari_patchdiff.solvers import get_solver

    op = make_operator("denoise", (16, 16))
    spec = get_solver("admm-tv")
    small, big = spec.resolve(op, 0.1, lam=1e-3), spec.resolve(op, 0.1, lam=10.0)
    assert big["rho"] >= knobs(op.name, "admm-tv")["rho_per_lam"] * 10.0 > small["rho"]
    assert big["lam_z"] == 10.0


def test_limited_angle_values_replace_the_plain_ones_layer_by_layer():
    """A ``_limited_angle`` value is the default for views short of a complete scan only; a
    tuning script's override of the plain name still wins over the table's limited value."""
    from napari_patchdiff.solvers.defaults import overriding

    full = make_operator("ct-parallel", (16, 16), views=8)
    short = make_operator("ct-parallel", (16, 16), views=8, angular_range=90.0)
    dds = get_solver("dds")
    with overriding(full.name, {"dds.cg_iterations_limited_angle": 11}):
        assert dds.resolve(short, 0.1)["cg_iterations"] == 11
        assert dds.resolve(full, 0.1)["cg_iterations"] == knobs(full.name, "dds")["cg_iterations"]
        assert not any(k.endswith("_limited_angle") for k in knobs(full.name, "dds", True))
        assert dds.resolve(short, 0.1, cg_iterations=3)["cg_iterations"] == 3
    with overriding(full.name, {"dds.cg_iterations": 7}):
        assert dds.resolve(short, 0.1)["cg_iterations"] == 7
