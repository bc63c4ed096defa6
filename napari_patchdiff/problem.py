"""A reconstruction problem: the truth (when known), the operator and the measurement.

The data path starts here: a file or an array becomes a :class:`Truth` on the normalised scale
(:func:`load_truth`, :func:`truth_from_array`), a truth and an operator a simulated
:class:`Problem` (:func:`simulate`), a measured sinogram or k-space a problem without a truth
(:func:`from_measurement`). Solvers, ensembles, the API, the CLI and the GUI all take a Problem.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import conventions, io
from .errors import InputError
from .operators import Operator, add_noise, make_operator

__all__ = ["Truth", "Problem", "load_truth", "truth_from_array", "simulate", "from_measurement"]


@dataclass
class Truth:
    """A ground-truth image or volume on the normalised scale, with how to map it back."""

    x: np.ndarray  # (H, W) or (D, H, W), float32 in [0, 1]
    modality: str  # "ct" | "mri" | "unit"
    scale: float | None = None  # MRI normalisation constant
    meta: dict[str, Any] = field(default_factory=dict)

    def to_units(self, x_unit: np.ndarray) -> np.ndarray:
        """Normalised values in the truth's own units (HU, scanner units)."""
        return conventions.denormalise(x_unit, self.modality, self.scale)

    @property
    def units(self) -> str:
        """The truth's units: its metadata's, else its modality's."""
        return conventions.units_of(self.modality, self.meta)

    @property
    def unit_scale(self) -> float:
        """How many of the truth's units one unit of the normalised scale is (for a std)."""
        return float(np.asarray(self.to_units(np.float32(1)))
                     - np.asarray(self.to_units(np.float32(0))))


@dataclass
class Problem:
    """A measurement ``y = A x + n`` ready to be reconstructed.

    ``noise_std`` is the measurement noise std in measurement units (it sets the methods'
    defaults); ``squeeze``: the input was one 2D image, not a volume.
    """

    op: Operator
    y: torch.Tensor  # (B, 1, *measurement_shape)
    noise_std: float = 0.0
    seed: int = 0
    truth: Truth | None = None
    squeeze: bool = False

    @property
    def truth_batch(self) -> torch.Tensor | None:
        """The truth as a batch ``(B, 1, H, W)`` on the operator's device, or None."""
        if self.truth is None:
            return None
        x = torch.from_numpy(np.ascontiguousarray(self.truth.x))
        x = x[None, None] if x.ndim == 2 else x[:, None]
        return x.to(self.op.device, self.op.dtype)

    @property
    def slices(self) -> int:
        """Slices of one reconstruction (1 for a 2D image)."""
        return int(self.y.shape[0])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(H, W)`` or ``(D, H, W)``: the shape of one reconstruction."""
        hw = tuple(self.op.image_shape)
        return hw if self.squeeze else (self.slices, *hw)

    @property
    def units(self) -> str:
        """Display units of results: the truth's, else the normalised scale."""
        return self.truth.units if self.truth is not None else conventions.UNITS["unit"]

    def to(self, device) -> "Problem":
        """This problem with its operator and measurement on ``device`` (itself if there)."""
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device {device!r}: torch sees no CUDA device")
        if dev == self.op.device:
            return self
        return dataclasses.replace(self, op=self.op.to(dev), y=self.y.to(dev))

    def describe_measurement(self) -> dict[str, Any]:
        """The sidecar of the measurement: enough to reconstruct it again without the truth."""
        return {"operator": self.op.name, "operator_params": dict(self.op.params),
                "image_shape": list(self.op.image_shape), "noise_std": self.noise_std,
                "seed": self.seed, "units": self.op.measurement_units}


def load_truth(source, modality: str | None = None, slice: int | None = None) -> Truth:
    """Read a ground truth in its own units (a path, or ``sample:ct`` / ``sample:mri``)."""
    if isinstance(source, str) and source.startswith("sample:"):
        from .samples import load_sample

        arr, meta = load_sample(source.split(":", 1)[1])
    else:
        arr, meta = io.read_image(source)
    return truth_from_array(arr, meta, modality=modality, slice=slice)


def truth_from_array(arr, meta=None, modality=None, slice=None) -> Truth:
    """A :class:`Truth` from an array in its own units (``modality`` guessed if not given)."""
    meta = dict(meta or {})
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3):
        raise InputError(f"expected a 2D image or a 3D volume, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise InputError(f"the image contains {bad} NaN or infinite values")
    if slice is not None:
        if arr.ndim != 3:
            raise InputError("--slice needs a volume (D, H, W); the input is a 2D image")
        if not -arr.shape[0] <= slice < arr.shape[0]:
            raise InputError(f"slice {slice} is outside the volume's {arr.shape[0]} slices")
        arr = arr[slice]
        meta["slice"] = int(slice)
        if meta.get("spacing") is not None and len(meta["spacing"]) == 3:
            meta["spacing"] = tuple(meta["spacing"])[1:]  # the slice keeps its in-plane spacing
    modality = modality or io.guess_modality(arr, meta)
    x, scale = conventions.normalise(arr, modality)
    if modality == "unit" and (x.min() < -0.5 or x.max() > 1.5):
        raise InputError(
            f"modality 'unit' expects values on the normalised [0, 1] scale, got "
            f"[{x.min():.3g}, {x.max():.3g}]; pass --modality ct (HU) or mri"
        )
    return Truth(x=np.ascontiguousarray(x, dtype=np.float32), modality=modality, scale=scale,
                 meta=meta)


def simulate(truth: Truth, operator: str, noise_std: float = 0.0, seed: int = 0, device="cpu",
             dtype=torch.float32, **op_params) -> Problem:
    """Simulate ``y = A x + n`` from a ground truth (``n`` Gaussian with std ``noise_std`` in
    measurement units, seeded by ``seed``)."""
    op = make_operator(operator, truth.x.shape[-2:], device=device, dtype=dtype, **op_params)
    problem = Problem(op=op, y=None, noise_std=float(noise_std), seed=int(seed), truth=truth,
                      squeeze=truth.x.ndim == 2)
    with torch.no_grad():
        problem.y = add_noise(op(problem.truth_batch), noise_std, seed=seed)
    return problem


def from_measurement(y, operator: str, image_shape, noise_std: float = 0.0, device="cpu",
                     dtype=torch.float32, **op_params) -> Problem:
    """Wrap a measured sinogram / k-space ``(M...)`` or stack ``(D, M...)`` as a problem."""
    op = make_operator(operator, image_shape, device=device, dtype=dtype, **op_params)
    y = torch.as_tensor(np.asarray(y))
    nd = len(op.measurement_shape)
    if y.ndim == nd:
        y, squeeze = y[None, None], True
    elif y.ndim == nd + 1:
        y, squeeze = y[:, None], False
    else:
        raise InputError(
            f"{operator}: expected a measurement of shape {op.measurement_shape} or "
            f"(D, {', '.join(map(str, op.measurement_shape))}), got {tuple(y.shape)}"
        )
    return Problem(op=op, y=op.check_measurement(y), noise_std=float(noise_std), squeeze=squeeze)
