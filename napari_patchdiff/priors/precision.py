"""Which arithmetic the prior network runs in: :func:`choose_precision`.

``precision="auto"`` (the default of the API, the CLI's ``--precision`` and the Reconstruct
widget) runs the network in bfloat16 where the hardware multiplies bfloat16 natively and in
float32 elsewhere:

* a CPU with AMX tiles (``amx_bf16``) or AVX-512 BF16 (``avx512_bf16``), read from the CPU's
  flags (``/proc/cpuinfo`` on Linux, else torch's own CPU probe): bfloat16. Measured on a
  2-core CPU with both: whole DDS and PnP-ADMM slices 3.2 and 2.5 times as fast as float32 at the
  same PSNR within 0.01 dB (``benchmarks/results/speed_compare_2threads.md``);
* any other CPU (AVX2 only, ARM): float32. There bfloat16 is emulated: one network evaluation
  on a 256 x 256 image took 7.9 times as long as in float32 on a 2-core AMD EPYC with AVX2
  (``benchmarks/results/precision_nobf16.md``; a whole DDS slice 7.4 times, issue 34);
* a CUDA device that supports bfloat16 (``torch.cuda.is_bf16_supported()``, compute capability
  8.0 and up): bfloat16, the same autocast as on the CPU (float32 sums, float32 samplers); older
  GPUs: float32.

An explicit ``"bfloat16"`` on a CPU without those instructions still runs (it gives the same
images) but warns with the measured slowdown. The run's report records the precision that ran
and why (``precision``, ``precision_reason``).
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError, InputWarning
from ..params import PRECISION

__all__ = ["CHOICES", "Precision", "choose_precision", "cpu_bfloat16_instructions",
           "SlowPrecisionWarning"]

#: what a user may ask for ("auto": :func:`choose_precision` decides)
CHOICES = PRECISION.choices
#: measured: one network evaluation in bfloat16 / in float32 on a CPU without bfloat16
#: instructions (benchmarks/results/precision_nobf16.md)
EMULATED_SLOWDOWN = 7.9


class SlowPrecisionWarning(InputWarning):
    """bfloat16 asked for on hardware that only emulates it (the CLI shows it as a note)."""


@dataclass(frozen=True)
class Precision:
    """The precision a run uses (``"float32"`` or ``"bfloat16"``) and why, in words."""
    name: str
    reason: str


@functools.lru_cache(maxsize=1)
def cpu_bfloat16_instructions() -> tuple[str, ...]:
    """The CPU's bfloat16 multiply instructions: a subset of ``("amx_bf16", "avx512_bf16")``,
    from the flags Linux lists in ``/proc/cpuinfo``; elsewhere from torch's CPU probe."""
    try:
        found = bfloat16_flags(Path("/proc/cpuinfo").read_text())
        if found is not None:
            return found
    except OSError:
        pass
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    found = []
    for flag, probe in probes.items():
        fn = getattr(torch.cpu, probe, None)
        try:
            if callable(fn) and fn():
                found.append(flag)
        except RuntimeError:  # pragma: no cover - a probe torch could not run
            pass
    return tuple(found)


def bfloat16_flags(cpuinfo: str) -> tuple[str, ...] | None:
    """The bfloat16 instructions among the first ``flags`` line of a ``/proc/cpuinfo`` text
    (None without such a line)."""
    line = next((ln for ln in cpuinfo.splitlines() if ln.startswith("flags")), None)
    if line is None:
        return None
    flags = line.partition(":")[2].split()
    return tuple(f for f in ("amx_bf16", "avx512_bf16") if f in flags)


def choose_precision(requested: str | None, device="cpu") -> Precision:
    """The precision a network on ``device`` runs at when ``requested`` is asked for
    (``"auto"``, ``"float32"`` or ``"bfloat16"``; None counts as ``"auto"``). See the module
    docstring for the rule; an explicit bfloat16 on emulating hardware warns
    (:class:`SlowPrecisionWarning`)."""
    requested = "auto" if requested is None else requested
    if requested not in CHOICES:
        raise InputError(f"unknown precision {requested!r}; choose one of {', '.join(CHOICES)}")
    if requested == "float32":
        return Precision("float32", "asked for")
    native, where = _native_bfloat16(torch.device(device))
    if requested == "bfloat16":
        if not native:
            warnings.warn(f"bfloat16 asked for, but {where}: it runs emulated, about "
                          f"{EMULATED_SLOWDOWN:g} times as slow as float32 on such a CPU "
                          "(same images); drop the precision option (auto) to run float32",
                          SlowPrecisionWarning, stacklevel=3)
            return Precision("bfloat16", f"asked for ({where}: emulated, slower)")
        return Precision("bfloat16", f"asked for ({where})")
    if native:
        return Precision("bfloat16", f"auto: {where}")
    return Precision("float32", f"auto: {where}")


def _native_bfloat16(dev: torch.device) -> tuple[bool, str]:
    """Whether ``dev`` multiplies bfloat16 natively, and the fact that says so."""
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        if torch.cuda.is_bf16_supported():
            return True, f"{name} supports bfloat16"
        return False, f"{name} has no bfloat16 arithmetic"
    if dev.type == "cpu":
        found = cpu_bfloat16_instructions()
        if found:
            return True, f"the CPU has {' + '.join(found)}"
        return False, "the CPU has no bfloat16 instructions (AMX, AVX-512 BF16)"
    return False, f"bfloat16 speed on {dev.type} is not measured"
