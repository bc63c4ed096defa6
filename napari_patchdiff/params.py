"""Declared parameters: each operator and method parameter is declared once (name, type, bounds,
choices, meaning) and checked in one place, :meth:`Param.check`.

The CLI builds its options from these declarations, the napari widgets their forms, and the
solver registry validates and fills a method's parameters with them
(:meth:`napari_patchdiff.solvers.Method.resolve`). A ``default`` of ``None`` means "automatic":
the operator computes it (a CT detector count) or the method's defaults choose it for the
operator and noise level (see :mod:`napari_patchdiff.solvers.defaults`).

Besides the operators' and methods' parameters, the options of a run are declared here
(:data:`RUN_PARAMS`: where and how it computes, shared by the ``reconstruct``, ``sample``,
``calibrate`` and ``demo`` commands and the Reconstruct widget), and the training options in
:data:`napari_patchdiff.training.config.TRAIN_PARAMS`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import InputError

__all__ = ["Param", "NOISE_STD", "SEED", "DEVICE", "PRECISION", "CLUSTER", "WORKERS",
           "RUN_PARAMS", "render_help"]


@dataclass(frozen=True)
class Param:
    """One user-settable parameter.

    Attributes
    ----------
    name : the keyword (``views``, ``eta``, ...); ``--views`` on the command line.
    type : ``int``, ``float``, ``bool`` or ``str``.
    default : the value when not given; ``None``: automatic (chosen per operator/noise).
    help : one line for ``--help`` and tooltips; another parameter or argument is named in
        double backquotes (````out````), which :func:`render_help` writes the way each surface
        names it (``--out`` on the command line, a field's label in a form).
    choices : the allowed values (strings), if restricted.
    low, high : bounds of a number (inclusive unless ``open_low`` / ``open_high``).
    allow_inf : ``float('inf')`` is a valid value (e.g. DDS's data weight: noiseless data).
    measured : for an operator, whether the value defines the measurement (a measured file's
        sidecar must then agree with it), not only how it is computed (a CT backend).
    many : a sequence of values of ``type`` (a tuple; each value is checked), e.g. the training
        patch sizes; ``--name A B ...`` on the command line, space-separated in a form.
    """

    name: str
    type: type
    default: Any = None
    help: str = ""
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    allow_inf: bool = False
    measured: bool = True
    many: bool = False

    def check(self, value, where: str = "", text: bool = False) -> Any:
        """``value`` converted to ``type`` and checked against the bounds and choices;
        InputError with a one-line message naming the parameter otherwise. A number given as a
        string is refused unless ``text`` (a form field's text). With ``many``: a tuple of such
        values (one value counts as a sequence of one; with ``text``, a string of values
        separated by spaces or commas)."""
        if self.many:
            if text and isinstance(value, str):
                value = value.replace(",", " ").split()
            elif isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                value = (value,)
            one = dataclasses.replace(self, many=False)
            return tuple(one.check(v, where, text) for v in value)
        name = f"{where}: {self.name}" if where else self.name
        if isinstance(value, str) and self.type in (int, float) and not text:
            raise InputError(f"{name} must be a number, got the string {value!r}")
        if self.type is bool:
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise InputError(f"{name} must be true or false, got {value!r}")
        if self.type is str:
            value = str(value)
        elif self.type is int:
            if isinstance(value, bool):
                raise InputError(f"{name} must be an integer, got {value!r}")
            try:
                converted = int(value)
                integral = converted == float(value)
            except (TypeError, ValueError, OverflowError):
                raise InputError(f"{name} must be an integer, got {value!r}") from None
            if not integral:
                raise InputError(f"{name} must be an integer, got {value!r}")
            value = converted
        elif self.type is float:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise InputError(f"{name} must be a number, got {value!r}") from None
            if math.isnan(value) or (math.isinf(value) and not (self.allow_inf and value > 0)):
                raise InputError(f"{name} must be a finite number, got {value!r}")
        else:
            try:
                value = self.type(value)
            except (TypeError, ValueError):
                raise InputError(f"{name} must be {self.type.__name__}, got {value!r}") from None
        if self.choices is not None and value not in self.choices:
            raise InputError(f"{name} must be one of {', '.join(map(str, self.choices))}, "
                             f"got {value!r}")
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            raise InputError(f"{name} must be {'>' if self.open_low else '>='} {self.low:g}, "
                             f"got {value!r}")
        if self.high is not None and (value > self.high or (self.open_high and value == self.high)):
            raise InputError(f"{name} must be {'<' if self.open_high else '<='} {self.high:g}, "
                             f"got {value!r}")
        return value


#: the measurement noise std (measurement units), which every method takes to choose its
#: defaults and every problem records
NOISE_STD = Param("noise_std", float, 0.0, "measurement noise std (measurement units)", low=0)
#: a seed of torch's and NumPy's generators
SEED = Param("seed", int, 0, "seed of the diffusion samplers' noise stream (initial and injected "
             "noise)", low=0, high=2**63 - 1)
#: the options of a run: where and how it computes (the CLI's ``--seed``, ``--device``,
#: ``--precision``, ``--cluster``, ``--workers`` and the Reconstruct widget's fields). ``seed`` is
#: :data:`SEED`, the diffusion methods' parameter, which the run passes on.
DEVICE = Param("device", str, "cpu", "torch device: cpu, cuda, cuda:1, ...")
PRECISION = Param("precision", str, "auto", "the prior network's arithmetic (diffusion methods): "
                  "auto (default) runs bfloat16 where the CPU has AMX or AVX-512 BF16 (or on a "
                  "CUDA GPU with bfloat16), float32 elsewhere; bfloat16 made DDS and PnP-ADMM "
                  "2.5-3.2 times as fast on a CPU with AMX at the PSNR of float32 within 0.01 "
                  "dB, and 7.9 times as slow on a CPU without bfloat16 instructions "
                  "(benchmarks/results/speed_compare_2threads.md, precision_nobf16.md)",
                  choices=("auto", "float32", "bfloat16"))
#: where the work runs (each surface says which work: a volume's windows, an ensemble's batches)
CLUSTER = Param("cluster", str, "local", "local (default): here; ray: on the workers of a Ray "
                "instance started on this machine; ray:ADDRESS: on an existing Ray cluster (the "
                "address `ray start --head` prints). Same results; needs pip install "
                "'napari-patchdiff[ray]'")
WORKERS = Param("workers", int, None, "Ray workers (default: one per GPU of the cluster, else "
                "one per CPU)", low=1)
RUN_PARAMS = (SEED, DEVICE, PRECISION, CLUSTER, WORKERS)

_REFERENCE = re.compile(r"``(\w+)``")


def render_help(text: str, name: Callable[[str], str]) -> str:
    """``text`` (a :attr:`Param.help`) with each parameter it names in double backquotes
    written as ``name(parameter)``: the command line's flag, a form's label."""
    return _REFERENCE.sub(lambda m: name(m.group(1)), text)
