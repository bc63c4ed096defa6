"""The uniform physics-operator interface.

Every operator maps a batch of real images ``(B, 1, H, W)`` on the project's normalised scale to a
batch of measurements ``(B, 1, *measurement_shape)`` (complex for MRI) and back. Volumes
``(D, H, W)`` are handled slice by slice through :func:`as_batch`, except by an operator whose
data couple the slices (``couples_slices``, 3D k-space: :mod:`.mri3d`), which takes the batch as
one volume (or whole volumes of its ``depth``).

Besides ``forward`` and ``adjoint`` every operator offers what the solvers need (in the spirit of
DeepInverse's ``LinearPhysics``): ``normal`` (``A^T A``), ``norm()`` (``||A^T A||``, cached),
``solve`` (the data-consistency solve of ``(I + gamma A^T A) x = z + gamma A^T y``, by conjugate
gradients or in closed form where the operator allows it), ``initial`` (its cheap direct
reconstruction), ``undersampling_factor`` (how much sparser than the tuning reference it samples),
``estimate_noise`` (the measurement noise std, estimated from the measurement alone) and
``to(device, dtype)``.

Noise estimation
----------------
``estimate_noise(y)`` returns the std of additive white Gaussian noise in measurement units
(each of the real and imaginary parts for complex data, as :func:`~.noise.add_noise` draws it)
from the median absolute deviation (MAD / 0.6745, :func:`robust_std`) of a residual from which
the signal has been removed: robust, because the few places where signal leaks into the
residual (edges, texture) lie in the tails the median ignores. The default, used by the
image-domain operators (denoising, blur, super-resolution), is an Immerkaer/Donoho-type
estimator: the tensor product of 4th finite differences over the last two axes
(:func:`highpass`, unit norm, so white noise keeps its std while polynomials up to cubic
along each axis vanish). CT, MRI and inpainting specialise it (see their classes). Every
residual is an upper bound in expectation (signal can only add to it), so where an operator has
two, the smaller is returned. Noiseless data give a small value (the signal's leak), never an
error; an all-zero measurement gives 0.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..errors import InputError
from ..params import Param
from .linalg import cg_steps, conjugate_gradient, fixed_norm, power_iteration

#: the median of |N(0, 1)|: ``std = MAD / MAD_NORMAL`` for Gaussian samples
MAD_NORMAL = 0.6744897501960817
#: fewest residual samples an estimator trusts before it falls back to a coarser one
MIN_NOISE_SAMPLES = 256


def robust_std(values: torch.Tensor, centre: bool = False) -> float:
    """The std of Gaussian noise from samples of it, by the median absolute deviation:
    ``median(|v|) / 0.6745`` (``centre=True``: ``|v - median(v)|``, for samples whose mean
    need not be zero). Complex samples count their real and imaginary parts separately.
    0.0 when there are no samples."""
    v = values.detach()
    if v.is_complex():
        v = torch.view_as_real(v.to(torch.complex128))
    v = v.reshape(-1).to(torch.float64)
    if v.numel() == 0:
        return 0.0
    if centre:
        v = v - v.median()
    return float(v.abs().median()) / MAD_NORMAL


def highpass(y: torch.Tensor, order: int = 4, dims=(-2, -1)) -> torch.Tensor:
    """The ``order``-th finite difference of ``y`` along each of ``dims`` (a tensor product for
    several), scaled to unit norm (``1 / sqrt(binomial(2 order, order))`` per axis): white noise
    of std ``s`` gives samples of std ``s``; polynomials of degree < ``order`` along any one of
    the axes give 0. Only 'valid' positions (no boundary handling); complex data are filtered
    as they are (the filter is real)."""
    out = y
    for d in dims:
        out = torch.diff(out, n=int(order), dim=d) / math.sqrt(math.comb(2 * order, order))
    return out


def image_noise_std(y: torch.Tensor, order: int = 4) -> float:
    """:func:`robust_std` of the :func:`highpass` over the last two axes of ``y`` (the order
    lowered where an axis is too short; one axis when there is only one), pooled over
    everything else (batch, slices; real and imaginary parts)."""
    y = y.detach()
    y = y.to(torch.complex128 if y.is_complex() else torch.float64)
    dims = [d for d in (-2, -1) if y.ndim >= -d and y.shape[d] >= 2]
    if not dims:
        return 0.0
    k = max(1, min([order] + [y.shape[d] - 1 for d in dims]))
    return robust_std(highpass(y, k, dims))


#: conjugate-gradient budget of an exact solve without a closed form: stop when the residual
#: falls below ``EXACT_TOLERANCE`` times the right-hand side, or after ``EXACT_MAX_STEPS`` steps
EXACT_TOLERANCE = 1e-6
EXACT_MAX_STEPS = 500


class Operator:
    """Base class: subclasses set ``name``, ``PARAMS`` and implement ``forward``/``adjoint``.

    Parameters
    ----------
    image_shape : (H, W) of one slice.
    device : torch device the operator works on (CPU or CUDA).
    dtype : real floating dtype of images (float32 by default, float64 in correctness tests).
    **params : the values of ``PARAMS`` (missing ones take their defaults).
    """

    name: str = "operator"
    PARAMS: tuple[Param, ...] = ()
    is_complex: bool = False
    #: what ``initial`` computes, shown in reports ("fbp", "zero-filled", "adjoint", ...)
    initial_name: str = "adjoint"
    #: units of the measurement, for sidecars and documentation
    measurement_units: str = "image units"
    #: whether the data of one slice depend on the others (3D k-space): then the batch is one
    #: volume (or whole volumes), never split into windows of slices, and a 2D image is refused
    couples_slices: bool = False
    #: whether it runs only on a CUDA device (cone-beam CT: ASTRA projects cone beams on the
    #: GPU only); such an operator refuses any other device when it is built
    needs_cuda: bool = False

    def __init__(self, image_shape, device="cpu", dtype=torch.float32, **params):
        if len(tuple(image_shape)) != 2 or min(image_shape) < 8:
            raise InputError(f"image_shape must be (H, W) with H, W >= 8, got {tuple(image_shape)}")
        if dtype not in (torch.float32, torch.float64):
            raise InputError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.image_shape = tuple(int(s) for s in image_shape)
        self.device = torch.device(device)
        self.dtype = dtype
        known = {p.name: p for p in self.PARAMS}
        unknown = set(params) - set(known)
        if unknown:
            raise InputError(
                f"operator {self.name!r} has no parameter(s) {sorted(unknown)}; "
                f"it takes {sorted(known)}"
            )
        self.params: dict[str, Any] = {}
        for p in self.PARAMS:
            value = params.get(p.name, p.default)
            self.params[p.name] = None if value is None else p.check(value, self.name)
        self._setup()

    @classmethod
    def default_device(cls) -> str:
        """Where this operator runs when nothing says: ``"cpu"`` (ct-cone: ``"cuda"`` where it
        can run)."""
        return "cpu"

    @classmethod
    def volume_params(cls, params: dict, depth: int | None, got: str) -> dict:
        """The parameters with which this operator measures a volume of ``depth`` slices
        (None: not a volume, ``got`` says what it is): ``params`` themselves, unless the
        operator couples the slices (:attr:`couples_slices`): then it measures a whole volume
        of at least 2 slices at once (InputError otherwise), and ``depth`` is set to it (one
        given must agree)."""
        if not cls.couples_slices:
            return params
        if depth is None or depth < 2:
            raise InputError(f"{cls.name} measures a whole volume (D, H, W) of at least 2 "
                             f"slices at once (its data couple the slices); got {got}")
        given = params.get("depth")
        if given is not None and given != depth:
            raise InputError(f"{cls.name}: depth {given} was given, but the volume has {depth} "
                             f"slices; drop depth (it is set from the volume)")
        return {**params, "depth": int(depth)}

    # -- to implement -------------------------------------------------------------------------
    def _setup(self) -> None:
        """Check parameter ranges (raise InputError with a clear message) and build the operator."""

    @property
    def measurement_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def initial(self, y: torch.Tensor) -> torch.Tensor:
        """A cheap direct reconstruction (FBP, zero-filled, upsampling); the adjoint by default."""
        return self.adjoint(y)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^T A x``, the operator of the normal equations (conjugate gradients)."""
        return self.adjoint(self.forward(x))

    @property
    def undersampling_factor(self) -> float:
        """How much sparser this operator samples than the reference its method defaults were
        tuned at (1: the reference; CT and MRI override it). Scales ADMM-TV's default weight."""
        return 1.0

    def estimate_noise(self, y: torch.Tensor) -> float:
        """The std of the measurement noise in ``y`` (a ``(B, 1, *measurement_shape)`` batch, as
        :meth:`adjoint` takes it) in measurement units, estimated from ``y`` alone (module
        docstring, "Noise estimation"). This default: :func:`image_noise_std` (4th-difference
        high-pass over the last two axes, MAD) of the whole measurement."""
        return image_noise_std(self.check_measurement(y))

    def _norm_slices(self) -> int:
        """Slices of the random start of :meth:`norm`: one image (a volume where the data
        couple the slices)."""
        return 1

    def norm(self, iterations: int = 20) -> float:
        """``L = ||A^T A||`` (the largest eigenvalue) by power iteration from a fixed seeded
        random image (:meth:`_norm_slices` of them), so the value is deterministic; computed
        once per operator."""
        cache = self.__dict__.setdefault("_norms", {})
        if iterations not in cache:
            g = torch.Generator().manual_seed(0)
            start = torch.rand((self._norm_slices(), 1, *self.image_shape), generator=g,
                               dtype=torch.float64)
            lam = power_iteration(self.normal, start.to(self.device, self.dtype), iterations)
            if not lam > 0:
                raise InputError(f"{self.name}: A^T A appears to be zero; cannot set step sizes")
            cache[iterations] = lam
        return cache[iterations]

    def solve(self, z: torch.Tensor, aty: torch.Tensor, gamma: float = math.inf, *,
              iterations: int = 0, start: torch.Tensor | None = None,
              penalty: Callable[[torch.Tensor], torch.Tensor] | None = None,
              coupling: Callable[[torch.Tensor], torch.Tensor] | None = None,
              per_item: bool = True) -> torch.Tensor:
        """The data-consistency solve, the step every data-consistent solver shares:

        ``(P + gamma (A^T A + Q)) x = z + gamma A^T y``, i.e. ``argmin_x <x, P x>/2 - <x, z> +
        gamma (||A x - y||^2 + <x, Q x>) / 2``, with ``P = I`` (the point nearest ``z`` that
        fits the data with weight ``gamma``) unless a symmetric positive definite ``penalty``
        ``P`` is given (ADMM-TV's ``D^T D + I``), and ``Q = 0`` unless a symmetric positive
        semi-definite ``coupling`` is given, a term weighed like the data (a smoothness penalty
        along z that couples the slices of a volume). ``gamma = inf`` solves the noiseless
        ``(A^T A + Q) x = A^T y`` instead (``z`` is then only the default start).

        ``aty`` is ``A^T y``, computed once by the caller. ``iterations > 0``: that many
        conjugate-gradient steps from ``start`` (default ``z``): early stopping keeps ``x`` near
        the start (the Krylov regularisation of DDS). ``iterations = 0``: the exact solve, in
        closed form where the operator has one (MRI with a line mask, inpainting, denoising;
        ``P = I``, ``Q = 0`` only), else by CG to a relative residual of
        :data:`EXACT_TOLERANCE`. ``per_item = False`` when ``penalty`` or ``coupling`` couples
        the batch items (slices of a volume).
        """
        if gamma <= 0:
            raise InputError(f"the data weight gamma must be positive, got {gamma}")
        noiseless = math.isinf(gamma)
        if noiseless and penalty is not None:
            raise InputError("a penalty needs a finite data weight gamma")
        x0 = z if start is None else start
        if iterations == 0 and penalty is None and coupling is None:
            exact = self._closed_form_solve(z, aty, gamma)
            if exact is not None:
                return exact
        data = self.normal if coupling is None else (lambda v: self.normal(v) + coupling(v))
        if noiseless:
            apply, b = data, aty
        else:
            reg = (lambda v: v) if penalty is None else penalty
            apply, b = (lambda v: reg(v) + gamma * data(v)), z + gamma * aty
        if iterations > 0:
            return conjugate_gradient(apply, b, x0, iterations, per_item)
        bound = EXACT_TOLERANCE * float(fixed_norm(b))
        x = x0
        for k, (x, r) in enumerate(cg_steps(apply, b, x0, per_item), start=1):
            if float(fixed_norm(r)) <= bound or k >= EXACT_MAX_STEPS:
                break
        return x

    def _closed_form_solve(self, z, aty, gamma) -> torch.Tensor | None:
        """The exact solve of :meth:`solve` with ``P = I`` in closed form, or None where the
        operator has none (then CG runs)."""
        return None

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Operator":
        """This operator on ``device`` with image dtype ``dtype`` (itself if nothing changes;
        else a new operator with the same parameters: CT system matrices are cached per
        device)."""
        device = self.device if device is None else torch.device(device)
        dtype = self.dtype if dtype is None else dtype
        if device == self.device and dtype == self.dtype:
            return self
        return type(self)(self.image_shape, device=device, dtype=dtype, **self.params)

    @property
    def measurement_dtype(self) -> torch.dtype:
        if self.is_complex:
            return torch.complex128 if self.dtype == torch.float64 else torch.complex64
        return self.dtype

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for reports and sidecars."""
        return {"operator": self.name, "image_shape": list(self.image_shape), **self.params}

    def check_image(self, x: torch.Tensor) -> torch.Tensor:
        """Validate a ``(B, 1, H, W)`` image batch and move it to this operator's device/dtype."""
        _check_tensor(x, "image")
        if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) != self.image_shape:
            raise InputError(
                f"{self.name}: expected an image batch of shape (B, 1, {self.image_shape[0]}, "
                f"{self.image_shape[1]}), got {tuple(x.shape)}"
            )
        if x.is_complex():
            raise InputError(f"{self.name}: images must be real, got {x.dtype}")
        return x.to(device=self.device, dtype=self.dtype)

    def check_measurement(self, y: torch.Tensor) -> torch.Tensor:
        """Validate a ``(B, 1, *measurement_shape)`` batch and move it to device/dtype."""
        _check_tensor(y, "measurement")
        if y.ndim != 2 + len(self.measurement_shape) or y.shape[1] != 1 or tuple(
            y.shape[2:]
        ) != tuple(self.measurement_shape):
            raise InputError(
                f"{self.name}: expected a measurement batch of shape (B, 1, "
                f"{', '.join(map(str, self.measurement_shape))}), got {tuple(y.shape)}"
            )
        if y.is_complex() and not self.is_complex:
            raise InputError(f"{self.name}: measurements are real, got {y.dtype}")
        if self.is_complex and not y.is_complex():
            raise InputError(f"{self.name} measures complex values (k-space); got real data "
                             f"({y.dtype}), e.g. a magnitude image: give the complex "
                             f"measurement")
        return y.to(device=self.device, dtype=self.measurement_dtype)


class VolumeOperator(Operator):
    """An operator whose data couple the slices of a volume (:attr:`couples_slices`): it takes
    a batch ``(B, 1, H, W)`` as whole volumes of its parameter ``depth`` (every subclass
    declares it; without it, each call's whole batch is one volume), and its
    data-consistency solve takes its conjugate-gradient step sizes per volume, never per
    slice."""

    couples_slices = True

    def _volumes(self, t: torch.Tensor) -> tuple[torch.Tensor, int]:
        """A batch ``(B, 1, ...)`` as volumes ``(B / depth, depth, ...)``."""
        b = int(t.shape[0])
        depth = self.params["depth"] or b
        if b == 0 or b % depth:
            raise InputError(f"{self.name} couples the {depth} slices of a volume: expected a "
                             f"batch of whole volumes (a multiple of {depth} slices), got {b}")
        return t.reshape(b // depth, depth, *t.shape[2:]), depth

    def _norm_slices(self) -> int:
        """A volume of ``depth`` slices (2 without one): a single slice is not a volume here."""
        return self.params["depth"] or 2

    def solve(self, z, aty, gamma=math.inf, *, iterations=0, start=None, penalty=None,
              coupling=None, per_item=True):
        """:meth:`Operator.solve` with conjugate-gradient step sizes per volume, never per
        slice (the slices are coupled): ``per_item`` (the caller's terms act on each slice
        alone) runs one CG per volume of the batch; ``per_item=False`` one on the batch."""
        kw = dict(iterations=iterations, penalty=penalty, coupling=coupling, per_item=False)
        b = int(z.shape[0])
        depth = self.params["depth"] or b
        exact = iterations == 0 and penalty is None and coupling is None
        if exact or not per_item or b <= depth:
            return super().solve(z, aty, gamma, start=start, **kw)
        if b % depth:
            self._volumes(z)  # the error
        parts = [slice(i, i + depth) for i in range(0, b, depth)]
        return torch.cat([super(VolumeOperator, self).solve(
            z[s], aty[s], gamma, start=None if start is None else start[s], **kw)
            for s in parts])


def _check_tensor(t, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if not (t.is_floating_point() or t.is_complex()):
        raise InputError(f"{what} must be a floating-point tensor, got {t.dtype}")
    if not torch.isfinite(t).all():
        raise InputError(f"{what} contains NaN or infinite values")


def as_batch(x: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """View an image ``(H, W)``, a volume ``(D, H, W)`` or a batch ``(B, 1, H, W)`` as a batch.

    Returns the batch and a function that restores the original layout of a same-sized result.
    """
    if x.ndim == 2:
        return x[None, None], lambda r: r[0, 0]
    if x.ndim == 3:
        return x[:, None], lambda r: r[:, 0]
    if x.ndim == 4 and x.shape[1] == 1:
        return x, lambda r: r
    raise InputError(
        f"expected an image (H, W), a volume (D, H, W) or a batch (B, 1, H, W), got shape "
        f"{tuple(x.shape)}"
    )
