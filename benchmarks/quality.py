"""Reconstruction quality on the held-out test slices -> benchmarks/results/quality.md / .json.

    python benchmarks/quality.py [--rows ROW ...] [--tasks KEY ...] [--slices N] [--threads 1]
    python benchmarks/quality.py --table        (rewrite the table from quality.json)

Rows: the direct method (FBP / zero-filled / adjoint), ADMM-TV, and the diffusion samplers with
the shipped priors: DDS at 25, 50 and 100 evaluations with the patch prior (assembled denoiser),
DDS (50) with patch averaging, patch stitching and the whole-image prior, the PaDIS reference
(1000), DPS (1000), and PnP-ADMM (50) with the patch denoiser. Columns: the tasks of common.TASKS (measurement noise stated there).
Cells: mean PSNR / SSIM, seconds per slice, evaluations, and the number of slices when fewer
than all were run (diffusion rows on the CPU run on the first ``--slices`` test slices; the
direct and ADMM-TV rows always on all of them). Each (row, task) result is cached in
quality.json as soon as it is done, so long runs can be split over several invocations.
"""
from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np
import torch

from common import RESULTS, TASKS, machine, slice_by_slice, test_slices
from napari_patchdiff import api
from napari_patchdiff.priors import load_prior
from napari_patchdiff.recon.metrics import psnr, ssim

JSON = RESULTS / "quality.json"

#: row label -> (method, prior name or None, prior mode, method overrides)
ROWS = {
    "direct (FBP / zero-filled)": ("initial", None, None, {}),
    "ADMM-TV": ("admm-tv", None, None, {}),
    "dds 25, patch prior": ("dds", "patch", "assembled", {"nfe": 25}),
    "dds 50, patch prior": ("dds", "patch", "assembled", {"nfe": 50}),
    "dds 100, patch prior": ("dds", "patch", "assembled", {"nfe": 100}),
    "dds 50, patch averaging": ("dds", "patch", "average", {"nfe": 50}),
    "dds 50, patch stitching": ("dds", "patch", "stitch", {"nfe": 50}),
    "dds 50, whole-image prior": ("dds", "whole", None, {"nfe": 50}),
    "padis 1000, patch prior": ("padis", "patch", "assembled", {}),
    "dps 1000, patch prior": ("dps", "patch", "assembled", {}),
    "pnp-admm 50, patch prior": ("pnp-admm", "patch", "assembled", {"nfe": 50}),
}
#: the shipped prior for each modality and kind
PRIORS = {("ct", "patch"): "ct", ("ct", "whole"): "ct-whole", ("mri", "patch"): "mri",
          ("mri", "whole"): None}


def run_cell(row: str, task, n_slices: int | None, device="cpu") -> dict:
    method, kind, mode, overrides = ROWS[row]
    x = test_slices(task)
    if kind is not None and n_slices:
        x = x[:n_slices]
    prior = None
    if kind is not None:
        name = PRIORS.get((task.data, kind))
        if name is None:
            return {"skipped": f"no shipped {task.data} {kind} prior"}
        try:
            prior = (load_prior(name, mode=mode, device=device) if kind == "patch"
                     else load_prior(name, device=device))
        except Exception as exc:  # a missing prior is reported, not hidden
            return {"skipped": f"prior {name!r} unavailable: {exc}"}
    truth = api.truth_from_array(x, modality="unit")
    problem = api.simulate(truth, task.operator, noise_std=task.noise, seed=0, device=device,
                           **task.params)
    t0 = time.perf_counter()
    kw = {"prior": prior} if prior is not None else {}
    # all slices in one batch, each on its own (no coupling along z)
    result = api.solve(problem, method, **kw, **{**slice_by_slice(method), **overrides})
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    # evaluations per slice: the report counts the network's calls, one per window of slices
    recon, nfe = result.recon, result.report["method_params"].get("nfe", result.report["nfe"])
    sec = (time.perf_counter() - t0) / x.shape[0]
    per_slice = [psnr(a, b) for a, b in zip(recon, x)]
    return {"psnr": float(np.mean(per_slice)), "psnr_per_slice": per_slice,
            "ssim": float(np.mean([ssim(a, b) for a, b in zip(recon, x)])),
            "seconds_per_slice": sec, "nfe": nfe, "slices": int(x.shape[0]),
            "all_slices": int(test_slices(task).shape[0]), "device": machine(device),
            "prior_steps": None if prior is None else prior.metadata.get("steps"),
            "params": {k: v for k, v in result.report.get("method_params", {}).items()
                       if isinstance(v, (int, float, str, type(None)))}}


def load() -> dict:
    return json.loads(JSON.read_text()) if JSON.exists() else {"cells": {}}


@functools.lru_cache(maxsize=None)
def _operator(task_key: str):
    """The operator of a task at the test slices' size, built once per table (its norm, which
    some default rules need, is computed once too)."""
    from napari_patchdiff.operators import make_operator

    task = next(t for t in TASKS if t.key == task_key)
    return make_operator(task.operator, (256, 256), **task.params)


def stale(row: str, task, cell: dict) -> dict:
    """``{name: (the cell's value, today's default)}`` for the parameters a diffusion cell ran
    with that its row no longer runs with: a cell computed before a default changed."""
    from napari_patchdiff.solvers import get_solver

    method, kind, _, overrides = ROWS[row]
    if kind is None or not cell.get("params"):
        return {}
    now = get_solver(method).resolve(_operator(task.key), task.noise,
                                     **{**slice_by_slice(method), **overrides})
    return {k: (v, now[k]) for k, v in cell["params"].items()
            if k in now and v != now[k] and not (isinstance(v, float) and isinstance(now[k], float)
                                               and np.isclose(v, now[k]))}


def table(data: dict) -> None:
    tasks = [t.key for t in TASKS]
    former = []
    lines = [
        "# Reconstruction quality on the held-out test slices",
        "",
        "Generated by `python benchmarks/quality.py` (do not edit by hand); raw numbers in "
        "quality.json.",
        f"Machine: {data.get('machine', '?')}. Priors: {data.get('priors', '?')}.",
        "Data: CT lung2 slices 50-60, MRI brain2 (all slices), 256 x 256. Measurement noise: "
        "CT 0.2 (line-integral units), MRI 0.005 per k-space component, deblurring / "
        "super-resolution 0.01 (image units). Cells: mean PSNR (dB) / SSIM, seconds per slice, "
        "network evaluations; `[k slices]` when only the first k test slices were run (CPU "
        "budget); `-` not run.",
    ]
    gpus = sorted({c["device"] for r in data["cells"].values() for c in r.values()
                   if "CUDA" in c.get("device", "")})
    if gpus:
        lines.append(f"Cells marked GPU ran on {'; '.join(gpus)} (`--device cuda`); their seconds "
                     "are GPU seconds, the others' are the CPU machine's.")
    lines += [
        "",
        "| method | " + " | ".join(tasks) + " |",
        "|---" * (len(tasks) + 1) + "|",
    ]
    for row in ROWS:
        cells = []
        for key in tasks:
            c = data["cells"].get(row, {}).get(key)
            if c is None:
                cells.append("-")
            elif "skipped" in c:
                cells.append(f"n/a ({c['skipped'].split(':')[0]})")
            else:
                gpu = " GPU" if "CUDA" in c.get("device", "") else ""
                s = f"{c['psnr']:.2f} / {c['ssim']:.3f}, {c['seconds_per_slice']:.1f} s{gpu}"
                if c["nfe"]:
                    s += f", {c['nfe']} ev"
                if c["slices"] < c["all_slices"]:
                    s += f" [{c['slices']} slices]"
                changed = stale(row, next(t for t in TASKS if t.key == key), c)
                if changed:
                    s += " *"
                    former.append(f"{row}, {key}: " + ", ".join(
                        f"{k} {a:.4g} (now {b:.4g})" if isinstance(b, float)
                        else f"{k} {a} (now {b})" for k, (a, b) in changed.items()))
                cells.append(s)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if former:
        lines += ["", "Cells marked * ran before a default they use changed (not re-run yet): "
                  + "; ".join(former) + "."]
    lines += ["", "CT 20 views, rows run on all test slices, against ADMM-TV:", ""]
    tv20 = data["cells"].get("ADMM-TV", {}).get("CT 20 views")
    for row in ROWS:
        c = data["cells"].get(row, {}).get("CT 20 views")
        if tv20 and row != "ADMM-TV" and c and "psnr" in c and c["slices"] == c["all_slices"]:
            lines.append(f"- {row}: {c['psnr']:.2f} dB ({c['psnr'] - tv20['psnr']:+.2f} dB)")
    lines += ["", "Same-slice comparison (rows run on fewer slices against ADMM-TV on those slices):", ""]
    tv = data["cells"].get("ADMM-TV", {})
    for row in ROWS:
        if ROWS[row][1] is None:
            continue
        for key, c in data["cells"].get(row, {}).items():
            ref = tv.get(key, {}).get("psnr_per_slice")
            if "psnr" in c and ref and c["slices"] < c["all_slices"]:
                k = c["slices"]
                lines.append(f"- {row}, {key}, first {k} slice(s): {c['psnr']:.2f} dB vs ADMM-TV "
                             f"{np.mean(ref[:k]):.2f} dB ({c['psnr'] - np.mean(ref[:k]):+.2f})")
    (RESULTS / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--tasks", nargs="*", default=[t.key for t in TASKS])
    parser.add_argument("--slices", type=int, default=3,
                        help="test slices for the diffusion rows (0: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--redo", action="store_true", help="recompute cached cells")
    parser.add_argument("--device", default="cpu", help="torch device (cells record it)")
    parser.add_argument("--table", action="store_true", help="only rewrite quality.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load()
    if not args.table:
        data.setdefault("machine", machine())
        data["priors"] = {name: load_prior(name).metadata.get("steps") if _exists(name) else None
                          for name in {n for n in PRIORS.values() if n}}
        for row in args.rows:
            for task in TASKS:
                if task.key not in args.tasks:
                    continue
                if not args.redo and task.key in data["cells"].get(row, {}):
                    continue
                cell = run_cell(row, task, args.slices or None, args.device)
                print(row, task.key, cell, flush=True)
                data = {**data, "cells": load()["cells"]}  # merge with concurrent runs
                data["cells"].setdefault(row, {})[task.key] = cell
                JSON.write_text(json.dumps(data, indent=1))
    table(data)


def _exists(name: str) -> bool:
    from napari_patchdiff.priors import shipped_priors

    return name in shipped_priors()


if __name__ == "__main__":
    main()
