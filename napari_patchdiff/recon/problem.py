"""A reconstruction problem: the truth (when known), the operator and the measurement.

The data path starts here: a file or an array becomes a :class:`Truth` on the normalised scale
(:func:`load_truth`, :func:`truth_from_array`), a truth and an operator a simulated
:class:`Problem` (:func:`simulate`), a measured sinogram or k-space a problem without a truth
(:func:`from_measurement`). Solvers, ensembles, the API, the CLI and the GUI all take a Problem.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import conventions, io
from ..devices import parse_device
from ..errors import InputError, InputWarning
from ..io.modality import stated_modality
from ..operators import OPERATORS, Operator, add_noise, make_operator
from ..params import NOISE_STD, SEED

__all__ = ["Truth", "Problem", "load_truth", "truth_from_array", "simulate", "from_measurement",
           "load_measurement", "NOISE_ORIGINS"]

#: where a problem's noise std came from (``Problem.noise_origin``)
NOISE_ORIGINS = ("given", "sidecar", "estimated", "simulated")


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
    defaults); ``noise_origin`` says where it came from (:data:`NOISE_ORIGINS`): "given" (by the
    caller), "sidecar" (the measurement file's sidecar), "estimated" (from the measurement,
    :meth:`~napari_patchdiff.operators.Operator.estimate_noise`) or "simulated" (the noise
    :func:`simulate` added); ``squeeze``: the input was one 2D image, not a volume;
    ``slice_index``: the slice of a volume or stack this problem is (``slice=``), else None.
    """

    op: Operator
    y: torch.Tensor  # (B, 1, *measurement_shape)
    noise_std: float = 0.0
    seed: int = 0
    truth: Truth | None = None
    squeeze: bool = False
    noise_origin: str = "given"
    slice_index: int | None = None

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
    def volume(self):
        """The :class:`~napari_patchdiff.solvers.Volume` a method's defaults see (depth, slice
        and pixel spacing in mm, from the truth's metadata when known), or None for one image."""
        if self.squeeze or self.slices < 2:
            return None
        from ..solvers import Volume

        spacing = (self.truth.meta.get("spacing") if self.truth is not None else None) or ()
        if len(spacing) != 3:
            return Volume(self.slices)
        return Volume(self.slices, float(spacing[0]), (float(spacing[1]), float(spacing[2])))

    @property
    def units(self) -> str:
        """Display units of results: the truth's, else the normalised scale."""
        return self.truth.units if self.truth is not None else conventions.UNITS["unit"]

    def to(self, device) -> "Problem":
        """This problem with its operator and measurement on ``device`` (itself if there)."""
        dev = parse_device(device)
        if dev == self.op.device:
            return self
        return dataclasses.replace(self, op=self.op.to(dev), y=self.y.to(dev))

    def describe_measurement(self) -> dict[str, Any]:
        """The sidecar of the measurement: enough to reconstruct it again without the truth."""
        return {"operator": self.op.name, "operator_params": dict(self.op.params),
                "image_shape": list(self.op.image_shape), "noise_std": self.noise_std,
                "noise_origin": self.noise_origin, "seed": self.seed,
                "units": self.op.measurement_units}


#: image-sized arrays a reconstruction keeps at once (iterates, CG vectors, TV splits, duals):
#: the factor of the memory estimate of :func:`check_problem_memory`
WORKING_ARRAYS = 16


def check_problem_memory(op: Operator, slices: int) -> None:
    """InputError, before anything is computed, when reconstructing ``slices`` images with
    ``op`` would need more than half of this computer's memory (about :data:`WORKING_ARRAYS`
    image-sized arrays and four measurement-sized ones, in the operator's dtype)."""
    itemsize = torch.finfo(op.dtype).bits // 8
    image = slices * math.prod(op.image_shape) * itemsize
    measurement = slices * math.prod(op.measurement_shape) * itemsize * (2 if op.is_complex
                                                                         else 1)
    shape = " x ".join(map(str, ((slices,) if slices > 1 else ()) + tuple(op.image_shape)))
    io.check_memory(WORKING_ARRAYS * image + 4 * measurement,
                    f"reconstructing {shape} pixels with {op.name}")


def _check_source(source, what: str, hint: str) -> None:
    """InputError unless ``source`` names a file (a str or a path)."""
    if not isinstance(source, (str, os.PathLike)):
        got = f"{type(source).__name__} {source!r}"
        raise InputError(f"{what} needs a file path{hint}, got {got[:80]}")


def load_truth(source, modality: str | None = None, slice: int | None = None,
               operator: str | None = None) -> Truth:
    """Read a ground truth in its own units (a path, or ``sample:ct`` / ``sample:mri``);
    ``operator``: the one it will be measured with (see :func:`truth_from_array`)."""
    _check_source(source, "load_truth", " or 'sample:ct' / 'sample:mri' (for an array: "
                  "truth_from_array)")
    if isinstance(source, str) and source.startswith("sample:"):
        from ..io.samples import load_sample

        arr, meta = load_sample(source.split(":", 1)[1])
    else:
        arr, meta = io.read_image(source)
    return truth_from_array(arr, meta, modality=modality, slice=slice, operator=operator)


def _operator_says(operator: str | None) -> tuple[str, str] | None:
    """``(modality, who)`` of an operator that measures one modality (CT, MRI), else None."""
    if operator is None:
        return None
    said = getattr(OPERATORS.get(operator), "modality", None)
    return (said, f"the operator {operator}") if said else None


def truth_from_array(arr, meta=None, modality=None, slice=None, operator=None) -> Truth:
    """A :class:`Truth` from a real 2D image or 3D volume in its own units (``modality``
    inferred from the metadata or the values when not given, see
    :func:`napari_patchdiff.io.infer_modality`; the reason is kept in ``meta``). Where neither
    the metadata nor the values can tell, the ``operator`` the truth will be measured with may:
    an MRI operator means MRI, a CT operator CT, where the values allow that reading. A
    ``modality`` given that differs from the one the metadata states is used, with an
    :class:`~napari_patchdiff.errors.InputWarning`."""
    meta = dict(meta or {})
    if isinstance(arr, torch.Tensor):  # a copy: the caller's tensor (and its graph) untouched
        arr = arr.detach().to("cpu")
        arr = (arr.float() if arr.dtype == torch.bfloat16 else arr).numpy().copy()
    arr = np.asarray(arr)
    if np.iscomplexobj(arr):
        raise InputError(f"complex data ({arr.dtype}) is not supported; take the magnitude "
                         f"(np.abs) first")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer)
                                 or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"the image must hold numbers, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise InputError(f"expected a 2D image or a 3D volume, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise InputError(f"the image contains {bad} NaN or infinite values")
    if slice is not None:
        if arr.ndim != 3:
            raise InputError("slice= needs a volume (D, H, W); the input is a 2D image")
        index = _slice_index(slice, arr.shape[0])
        arr = arr[index]
        meta["slice"] = index
        if meta.get("spacing") is not None and len(meta["spacing"]) == 3:
            meta["spacing"] = tuple(meta["spacing"])[1:]  # the slice keeps its in-plane spacing
        if meta.get("affine") is not None:  # (slice, row, col, 1) -> world: move the origin
            affine = np.array(meta["affine"], dtype=np.float64)
            affine[:, 3] += index * affine[:, 0]
            meta["affine"] = affine.tolist()
    if modality is None:
        modality, meta["modality_reason"] = io.infer_modality(arr, meta,
                                                              _operator_says(operator))
    elif modality not in conventions.MODALITIES:
        raise InputError(f"unknown modality {modality!r}; choose one of "
                         f"{', '.join(conventions.MODALITIES)}")
    else:
        meta["modality_reason"] = "given"
        stated, reason = stated_modality(meta)
        if stated is not None and stated != modality:
            where = f"{Path(meta['source']).name}: " if meta.get("source") else ""
            warnings.warn(InputWarning(f"{where}using modality {modality} as given, although "
                                       f"{reason}"), stacklevel=2)
    x, scale = conventions.normalise(arr, modality)
    if modality == "unit" and (x.min() < -0.5 or x.max() > 1.5):
        raise InputError(
            f"modality 'unit' expects values on the normalised [0, 1] scale, got "
            f"[{x.min():.3g}, {x.max():.3g}]; pass modality='ct' (HU) or 'mri'"
        )
    return Truth(x=np.ascontiguousarray(x, dtype=np.float32), modality=modality, scale=scale,
                 meta=meta)


def simulate(truth: Truth, operator: str, noise_std: float = 0.0, seed: int = 0, device="cpu",
             dtype=torch.float32, **op_params) -> Problem:
    """Simulate ``y = A x + n`` from a ground truth (``n`` Gaussian with std ``noise_std`` in
    measurement units, seeded by ``seed``)."""
    if not isinstance(truth, Truth):
        raise InputError(f"simulate needs a Truth (see load_truth, truth_from_array), got "
                         f"{type(truth).__name__}")
    device = parse_device(device)
    noise_std, seed = NOISE_STD.check(noise_std), SEED.check(seed, "the noise seed")
    op_params = OPERATORS.get(operator).volume_params(
        op_params, truth.x.shape[0] if truth.x.ndim == 3 else None, "a 2D image" + (
            " (one slice of a volume: drop slice=)" if truth.meta.get("slice") is not None
            else ""))
    op = make_operator(operator, truth.x.shape[-2:], device=device, dtype=dtype, **op_params)
    check_problem_memory(op, 1 if truth.x.ndim == 2 else truth.x.shape[0])
    problem = Problem(op=op, y=None, noise_std=float(noise_std), seed=int(seed), truth=truth,
                      squeeze=truth.x.ndim == 2, noise_origin="simulated",
                      slice_index=truth.meta.get("slice"))
    with torch.no_grad():
        problem.y = add_noise(op(problem.truth_batch), noise_std, seed=seed)
    return problem


def from_measurement(y, operator: str, image_shape, noise_std: float = 0.0, device="cpu",
                     dtype=torch.float32, noise_origin: str = "given", **op_params) -> Problem:
    """Wrap a measured sinogram / k-space ``(M...)`` or stack ``(D, M...)`` as a problem.

    ``noise_std`` is taken as it is (0 unless given); ``noise_origin`` records where it came
    from (see :class:`Problem`). :func:`load_measurement` estimates it when nothing gives it."""
    noise_std = NOISE_STD.check(noise_std)
    device = parse_device(device)
    if isinstance(y, torch.Tensor):  # a copy: the caller's tensor (and its graph) untouched
        y = y.detach().to("cpu").clone()
    if noise_origin not in NOISE_ORIGINS:
        raise InputError(f"noise_origin must be one of {', '.join(NOISE_ORIGINS)}, got "
                         f"{noise_origin!r}")
    op_params = OPERATORS.get(operator).volume_params(  # a stack (D, H, W): one volume
        op_params, np.shape(y)[0] if len(np.shape(y)) == 3 else None,
        f"a measurement of shape {tuple(np.shape(y))}")
    op = make_operator(operator, image_shape, device=device, dtype=dtype, **op_params)
    check_problem_memory(op, int(np.prod(np.shape(y)[:-len(op.measurement_shape)] or (1,))))
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
    return Problem(op=op, y=op.check_measurement(y), noise_std=float(noise_std), squeeze=squeeze,
                   noise_origin=noise_origin)


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def load_measurement(path, operator: str | None = None, image_shape=None,
                     noise_std: float | None = None, slice: int | None = None, device="cpu",
                     dtype=torch.float32, **op_params) -> Problem:
    """A measured sinogram / k-space file (TIFF or ``.npy``) as a problem without a truth.

    Its JSON sidecar (written with every ``measurement.tif``) records the operator, its
    parameters, the image shape and the noise std; values given here fill what the sidecar
    lacks, and one that contradicts it is an error naming both (a wrong geometry would
    reconstruct the wrong image without a word). ``slice`` picks one measurement of a stack.

    The noise std is ``noise_std`` if given, else the sidecar's, else estimated from the
    measurement (of the chosen slice, if any) by the operator's
    :meth:`~napari_patchdiff.operators.Operator.estimate_noise`; ``problem.noise_origin`` says
    which ("given", "sidecar" or "estimated").
    """
    _check_source(path, "load_measurement", "")
    y, meta = io.read_measurement(path)
    name = Path(path).name
    recorded = {"operator": meta.get("operator"), "image_shape": meta.get("image_shape")}
    given = {"operator": operator,
             "image_shape": None if image_shape is None else [int(v) for v in image_shape]}
    for key in ("operator", "image_shape"):
        if given[key] is not None and recorded[key] is not None and \
                list(np.atleast_1d(given[key])) != list(np.atleast_1d(recorded[key])):
            raise InputError(f"{name} was measured with {key} {recorded[key]}, not "
                             f"{given[key]} (its sidecar says so); drop the option or use the "
                             f"right file")
    operator = operator or recorded["operator"]
    shape = given["image_shape"] or recorded["image_shape"]
    if operator is None:
        raise InputError(f"{name}: no sidecar names the operator; pass operator=")
    if shape is None:
        raise InputError(f"{name}: no sidecar gives the image size; pass image_shape=(H, W)")
    cls = OPERATORS.get(operator)
    declared = {p.name: p for p in cls.PARAMS}
    params = dict(meta.get("operator_params") or {})
    for key, value in op_params.items():
        if value is None:
            continue
        if key in params and params[key] is not None and key in declared and \
                declared[key].measured:
            ours = declared[key].check(value, operator)
            theirs = declared[key].check(params[key], operator)
            if not _same(ours, theirs):
                raise InputError(f"{name} was measured with {key} {theirs}, but {key} {ours} "
                                 f"was given; drop the option (the sidecar knows) or use the "
                                 f"right file")
        params[key] = value
    recorded_noise = meta.get("noise_std")
    if recorded_noise is not None:
        recorded_noise = NOISE_STD.check(recorded_noise, f"{name}'s sidecar")
        if noise_std is not None and not _same(float(noise_std), recorded_noise):
            raise InputError(f"{name} was measured with noise std {recorded_noise}, but "
                             f"{noise_std} was given; drop the option or use the right file")
    if noise_std is not None:
        noise, origin = NOISE_STD.check(noise_std), "given"
    elif recorded_noise is not None:
        noise, origin = recorded_noise, "sidecar"
    else:
        noise, origin = 0.0, "estimated"  # estimated below, once the operator is built
    problem = from_measurement(y, operator, shape, noise_std=noise, device=device, dtype=dtype,
                               noise_origin=origin, **params)
    if slice is not None:
        problem = _one_slice(problem, slice)
    if origin == "estimated":
        with torch.no_grad():
            estimate = float(problem.op.estimate_noise(problem.y))
        if not math.isfinite(estimate) or estimate < 0:  # never expected; keep today's 0
            estimate = 0.0
        problem.noise_std = NOISE_STD.check(estimate)
    return problem


def _one_slice(problem: Problem, index) -> Problem:
    """One measurement of a stack as a problem of its own."""
    if problem.squeeze:
        raise InputError("slice= needs a stack of measurements; this is a single one")
    if problem.op.couples_slices:
        raise InputError(f"slice= picks one measurement of a stack, but {problem.op.name}'s "
                         f"are planes of one volume's k-space: reconstruct the whole volume")
    index = _slice_index(index, problem.slices)
    return dataclasses.replace(problem, y=problem.y[index:index + 1], squeeze=True,
                               slice_index=index)


def _slice_index(index, count: int) -> int:
    """``index`` as a slice number of a stack of ``count``, from 0; a negative one is refused
    (``-1`` would quietly take the last slice while ``count`` is refused)."""
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
        raise InputError(f"the slice must be a whole number, got {index!r}")
    if index < 0:
        raise InputError(f"slice {index} is negative; slices count from 0 (0 to {count - 1})")
    if index >= count:
        raise InputError(f"slice {index} is outside the {count} slices (0 to {count - 1})")
    return int(index)
