"""The files of a command's results: ``reconstruct`` (:func:`write_reconstruction`), ``sample``
(:func:`write_ensemble`) and the JSON report of every command (:func:`write_report`).

A command calls them inside :meth:`napari_patchdiff.cli.outputs.OutputFolder.commit`, on the
temporary folder that the output folder then moves into place (all or nothing); each returns
the names it wrote, and a cancelled run's partial results get ``_partial`` names.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import io
from ..io import files
from ..recon.problem import Problem

__all__ = ["write_reconstruction", "write_ensemble", "write_report"]


def write_report(path: Path, report: dict) -> None:
    """``report`` as pretty, sorted JSON (non-finite numbers become null)."""
    files.atomic_write_text(path, json.dumps(io.json_safe(report), indent=2, sort_keys=True)
                            + "\n")


def _suffix(partial: bool) -> str:
    return "_partial" if partial else ""


def write_reconstruction(folder: Path, problem: Problem, result, partial: bool = False) -> list:
    """``recon.tif`` (the truth's units when known, else the normalised scale; float32, JSON
    sidecar), ``measurement.tif`` (with the sidecar that reconstructs it again) and
    ``report.json``; a partial result as ``recon_partial.tif``, ``measurement_partial.tif`` and
    ``report_partial.json`` (beside an earlier run's complete results, which it leaves alone).
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
    io.write_measurement(folder / f"measurement{sfx}.tif", y[0] if problem.squeeze else y,
                         problem.describe_measurement())
    write_report(folder / f"report{sfx}.json", result.report)
    return [f"recon{sfx}.tif", f"measurement{sfx}.tif", f"report{sfx}.json"]


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
    io.write_measurement(folder / f"measurement{sfx}.tif", y[0] if problem.squeeze else y,
                         problem.describe_measurement())
    names.append(f"measurement{sfx}.tif")
    if problem.truth is not None and "calibration" in report:
        from ..uncertainty import calibration_figure

        calibration_figure(report["calibration"], folder / f"calibration{sfx}.png",
                           title=f"{method}, {report['samples']} samples ({report['design']})",
                           after=report.get("calibration_calibrated"))
        names.append(f"calibration{sfx}.png")
    write_report(folder / f"report{sfx}.json", report)
    names.append(f"report{sfx}.json")
    return names
