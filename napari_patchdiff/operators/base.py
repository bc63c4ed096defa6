"""The uniform physics-operator interface.

Every operator maps a batch of real images ``(B, 1, H, W)`` on the project's normalised scale to a
batch of measurements ``(B, 1, *measurement_shape)`` (complex for MRI) and back. Volumes
``(D, H, W)`` are handled slice by slice through :func:`as_batch`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import InputError


@dataclass(frozen=True)
class Param:
    """One user-settable operator parameter, used by the CLI and the GUI to build their inputs."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None


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
            if value is None:
                self.params[p.name] = None
                continue
            try:
                value = p.type(value)
            except (TypeError, ValueError):
                raise InputError(f"{self.name}: {p.name} must be {p.type.__name__}, got {value!r}")
            if p.choices is not None and value not in p.choices:
                raise InputError(f"{self.name}: {p.name} must be one of {p.choices}, got {value!r}")
            self.params[p.name] = value
        self._setup()

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
        return y.to(device=self.device, dtype=self.measurement_dtype)


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
