"""Shared pieces of the benchmark scripts: the held-out test slices and the task list.

Data: ``../shared/data`` beside the repository (override with ``NAPARI_PATCHDIFF_DATA``), split as in
its DATA.md: CT test = lung2 slices 50-60, MRI test = brain2 (all 23 slices). Validation slices
for tuning: lung2 slice 47 (in the 45-49 gap, never trained on) and brain1 slice 15 (in the
validation split of the shipped MRI prior, never trained on; the classical TV weights in
results/tv_tuning.md were tuned earlier on brain1 slice 12).
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_patchdiff.conventions import hu_to_unit, normalise

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_PATCHDIFF_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"
CT_TEST = list(range(50, 61))
CT_VAL = [47]
MRI_VAL = [15]


def method_values(method: str, pairs, option: str) -> dict:
    """``option``'s NAME=VALUE pairs for ``method``, each value parsed and checked by the
    parameter the method declares under that name (as a form field's text is)."""
    from napari_patchdiff.errors import InputError
    from napari_patchdiff.solvers import get_solver

    declared = {p.name: p for p in get_solver(method).params}
    out = {}
    for name, text in (kv.split("=", 1) for kv in pairs):
        if name not in declared:
            raise InputError(f"{option}: {method} has no parameter {name!r}")
        out[name] = declared[name].check(text, method, text=True)
    return out


def record(path: Path, key: str, value) -> None:
    """Store ``value`` under ``key`` in the JSON file ``path`` (created if missing), keeping the
    runs recorded there before; written after every run, so a stopped tuning keeps its runs."""
    runs = json.loads(path.read_text()) if path.exists() else {}
    runs[key] = value
    path.write_text(json.dumps(runs, indent=1, sort_keys=True) + "\n")


def _downsample(vol: np.ndarray) -> np.ndarray:
    d, h, w = vol.shape
    return vol.reshape(d, h // 2, 2, w // 2, 2).astype(np.float64).mean(axis=(2, 4))


def ct_slices(indices, volume="lung2") -> np.ndarray:
    """CT slices at 256 x 256 on the normalised scale, float32 (D, 256, 256)."""
    vol = tifffile.imread(DATA / f"{volume}.tif")[indices]
    return hu_to_unit(_downsample(vol)).astype(np.float32)


def mri_slices(volume="brain2", indices=None) -> np.ndarray:
    """MRI slices normalised by the whole volume's 99.5th percentile, float32 (D, 256, 256)."""
    vol = tifffile.imread(DATA / f"{volume}.tif").astype(np.float32)
    x, _ = normalise(vol, "mri")
    return x if indices is None else x[indices]


@dataclass(frozen=True)
class Task:
    key: str  # column label
    operator: str
    params: dict = field(default_factory=dict)
    noise: float = 0.0
    data: str = "ct"  # "ct" or "mri"


#: measurement noise: CT 0.2 line-integral units (~0.3% of the largest line integral of a
#: 256 x 256 chest slice), MRI 0.005 per real/imaginary k-space component, image-domain 0.01.
TASKS = (
    Task("CT 20 views", "ct-parallel", {"views": 20}, 0.2),
    Task("CT 8 views", "ct-parallel", {"views": 8}, 0.2),
    Task("CT 60 views", "ct-parallel", {"views": 60}, 0.2),
    Task("CT limited 90", "ct-parallel", {"views": 60, "angular_range": 90.0}, 0.2),
    Task("CT fan beam", "ct-fan", {"views": 60}, 0.2),
    Task("MRI 4x", "mri-cartesian", {"acceleration": 4}, 0.005, "mri"),
    Task("MRI 8x", "mri-cartesian", {"acceleration": 8}, 0.005, "mri"),
    Task("deblur", "blur-gaussian", {"sigma": 2.0}, 0.01),
    Task("SR x4", "superres", {"factor": 4}, 0.01),
)


#: tasks outside the quality table that defaults are tuned and checked on too
EXTRA_TASKS = (Task("denoise", "denoise", {}, 0.1),)


def test_slices(task: Task) -> np.ndarray:
    return mri_slices("brain2") if task.data == "mri" else ct_slices(CT_TEST)


def val_slices(task: Task) -> np.ndarray:
    return mri_slices("brain1", MRI_VAL) if task.data == "mri" else ct_slices(CT_VAL)


def slice_by_slice(method: str) -> dict:
    """Parameters that keep ``method`` from coupling a stack's slices along z (0 for
    ``z_weight`` and ``z_tv`` where it has them): the quality benchmarks solve stacks of test
    slices in one batch, which the defaults would treat as a volume, and report them per slice,
    as they were measured before couplings along z existed."""
    from napari_patchdiff.solvers import get_solver

    return {k: 0.0 for k in ("z_weight", "z_tv") if k in get_solver(method).names}


def _bf16_isa() -> str:
    """The CPU's bfloat16 instructions as Linux lists them (AMX tiles, AVX-512 BF16), or
    'none'; '' where /proc/cpuinfo is not there. bfloat16 speed depends on them."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return ""
    found = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return ", bfloat16 instructions: " + (" + ".join(found) if found else "none")


def machine(device="cpu") -> str:
    """The machine in words (with the CPU's bfloat16 instructions); with a CUDA device, its
    GPU's name too."""
    cpu = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
           f"{_bf16_isa()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA), host {cpu}"
    return cpu
