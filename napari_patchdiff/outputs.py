"""Writing a run's results to an output folder, all or nothing.

:class:`OutputFolder` checks the folder before anything is computed (it must not be a file, must
be writable, and must not hold earlier results unless ``overwrite``), and :meth:`OutputFolder.
commit` writes a run's files into a temporary folder beside it and moves them into place only
when all are written: a failure or a cancel while writing leaves the earlier folder as it was,
never a mix of two runs. The writers below produce the files of ``reconstruct``
(:func:`write_reconstruction`) and ``sample`` (:func:`write_ensemble`); a partial result (after
a cancel) goes under its own names (``recon_partial.tif``, ``report_partial.json``, ...).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from . import files, io
from .errors import InputError
from .problem import Problem

__all__ = ["OutputFolder", "write_reconstruction", "write_ensemble", "write_report"]


class OutputFolder:
    """The folder a run writes to (checked on creation, before any computation)."""

    def __init__(self, path, overwrite: bool = False):
        self.path = Path(path).expanduser()
        self.overwrite = bool(overwrite)
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"--out {self.path} is a file, not a folder; choose a folder")
        if self.path.is_dir():
            earlier = sorted(p.name for p in self.path.iterdir())
            if earlier and not self.overwrite:
                shown = ", ".join(earlier[:4]) + (", ..." if len(earlier) > 4 else "")
                raise InputError(f"--out {self.path} holds earlier results ({shown}); pass "
                                 f"--overwrite to replace them, or choose another folder")
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            probe = tempfile.mkdtemp(prefix=f".{self.path.name}.check-", dir=parent)
            os.rmdir(probe)
        except OSError as exc:
            raise InputError(f"cannot write to {parent}: {exc.strerror or exc}") from None

    def commit(self, write: Callable[[Path], None]) -> Path:
        """Call ``write(folder)`` on a new temporary folder beside :attr:`path`, then put that
        folder in the place of :attr:`path` (the earlier one, if any, is removed only then).
        If ``write`` fails (or is interrupted) the temporary folder is removed and :attr:`path`
        is untouched."""
        parent = self.path.parent
        staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.writing-", dir=parent))
        try:
            write(staging)
            _honour_umask(staging, directory=True)
            old = None
            if self.path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old-", dir=parent))
                os.rmdir(old)
                os.replace(self.path, old)
            os.replace(staging, self.path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.path


def _honour_umask(path: Path, directory: bool = False) -> None:
    """``mkdtemp`` makes 0700 folders: give the folder the mode a plain ``mkdir`` would."""
    files.apply_umask(path, directory=directory)


def write_report(path: Path, report: dict) -> None:
    """``report`` as pretty, sorted JSON (non-finite numbers become null)."""
    files.atomic_write_text(path, json.dumps(io.json_safe(report), indent=2, sort_keys=True)
                            + "\n")


def _suffix(partial: bool) -> str:
    return "_partial" if partial else ""


def write_reconstruction(folder: Path, problem: Problem, result, partial: bool = False) -> list:
    """``recon.tif`` (the truth's units when known, else the normalised scale; float32, JSON
    sidecar), ``measurement.tif`` (with the sidecar that reconstructs it again) and
    ``report.json``; a partial result as ``recon_partial.tif`` and ``report_partial.json``.
    Returns the names written."""
    sfx = _suffix(partial)
    truth = problem.truth
    recon = result.recon if truth is None else truth.to_units(result.recon)
    spacing = truth.meta.get("spacing") if truth is not None else None
    extra = {k: truth.meta[k] for k in ("affine", "orientation", "origin")
             if truth is not None and truth.meta.get(k) is not None}
    io.write_tiff(folder / f"recon{sfx}.tif", np.asarray(recon, dtype=np.float32),
                  {**result.report, **extra, "units": problem.units, "spacing": spacing})
    y = problem.y.detach().cpu().numpy()[:, 0]
    io.write_measurement(folder / "measurement.tif", y[0] if problem.squeeze else y,
                         problem.describe_measurement())
    write_report(folder / f"report{sfx}.json", result.report)
    return [f"recon{sfx}.tif", "measurement.tif", f"report{sfx}.json"]


def write_ensemble(folder: Path, problem: Problem, result, method: str, prior,
                   partial: bool = False) -> list:
    """``samples``/``mean``/``std``/``lower``/``upper`` (the calibrated bounds where a
    calibration applied, with the sample quantiles as ``lower_quantile``/``upper_quantile``;
    else the sample quantiles; each file's metadata says which) (+ ``pair_correlation``) TIFFs in the
    truth's units, ``measurement.tif``, ``report.json`` and (with a truth) ``calibration.png``;
    ``_partial`` names after a cancel. Returns the names written."""
    sfx = _suffix(partial)
    units, to_units, scale = problem.units, (lambda a: a), 1.0
    if problem.truth is not None:
        to_units, scale = problem.truth.to_units, problem.truth.unit_scale
    report = {**result.report, "operator": problem.op.describe(),
              "noise_std": problem.noise_std, "measurement_seed": problem.seed,
              "prior": str(prior) if prior is not None else None, "units": units}
    meta = {"method": method, "noise_design": result.report["design"], "units": units}
    arrays = {"samples": to_units(result.samples), "mean": to_units(result.mean),
              "std": result.std * scale, "lower": to_units(result.lower),
              "upper": to_units(result.upper)}
    interval = result.report.get("interval", {"kind": "sample quantiles"})
    if interval["kind"] == "calibrated":  # the raw quantiles under their own names
        arrays.update(lower_quantile=to_units(result.lower_quantile),
                      upper_quantile=to_units(result.upper_quantile))
    if result.pair_correlation is not None:
        arrays["pair_correlation"] = result.pair_correlation
    names = []
    for name, arr in arrays.items():
        extra = {}
        if name in ("lower", "upper"):
            extra = {"interval": interval["kind"], "level": result.report["level"]}
        elif name.endswith("_quantile"):
            extra = {"interval": "sample quantiles", "level": result.report["level"]}
        io.write_tiff(folder / f"{name}{sfx}.tif", np.asarray(arr, dtype=np.float32),
                      {**meta, "quantity": name, **extra,
                       "units": "correlation" if name == "pair_correlation" else units})
        names.append(f"{name}{sfx}.tif")
    y = problem.y.detach().cpu().numpy()[:, 0]
    io.write_measurement(folder / "measurement.tif", y[0] if problem.squeeze else y,
                         problem.describe_measurement())
    names.append("measurement.tif")
    if problem.truth is not None and "calibration" in report:
        from .uncertainty import calibration_figure

        calibration_figure(report["calibration"], folder / f"calibration{sfx}.png",
                           title=f"{method}, {report['samples']} samples ({report['design']})",
                           after=report.get("calibration_calibrated"))
        names.append(f"calibration{sfx}.png")
    write_report(folder / f"report{sfx}.json", report)
    names.append(f"report{sfx}.json")
    return names
