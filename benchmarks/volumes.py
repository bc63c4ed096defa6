"""Volumes: slices coupled along z, per-orientation quality, time and memory with depth
-> benchmarks/results/volumes.md / .json

    python benchmarks/volumes.py [--tasks KEY ...] [--rows ROW ...] [--memory] [--redo] [--table]
    python benchmarks/volumes.py --errors --tasks KEY ... --rows ROW ...
                                            (how much error neighbouring slices share)
    python benchmarks/volumes.py --tune-z   (the z weight on the validation volume)
    python benchmarks/volumes.py --tune-ztv [W ...] [--tune-tasks ...] [--tune-method M]
                                            (the z-TV weight of DDS or PnP-ADMM)

Quality: the lung test volume (lung2 slices 50-60, 256 x 256, 5 mm apart) under limited-angle
CT (90 and 120 degrees, 60 views) and sparse-view CT (8 and 20 views), noise 0.2, and the brain2
volume (23 slices, 6.5 mm) under 4x MRI (noise 0.005); PSNR / SSIM per axial slice, per sagittal
and per coronal plane (DiffusionBlend's tables). Rows: ADMM-TV slice by slice (2D) and with TV
along z (3D), DDS slice by slice and z-coupled, PnP-ADMM slice by slice and with TV along z
(the shipped CT / MRI priors, 50 evaluations).
The slab prior row is absent: no slab prior is shipped (see the README;
slab_feasibility.py measures what a fine-tuned one gains on the validation gap). Memory: seconds
and peak resident memory of DDS (z-coupled, a few evaluations, 64 x 64 slices of a synthetic stack)
at depths 16, 64 and 256, each in its own process. ``--tune-z`` chooses the z weight on the
validation gap lung2 45-49 (limited angle 90, noise 0.2; slices never trained on) and prints the
runs; ``--tune-ztv`` the z-TV weight there, and for MRI on brain1 13-17.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common import RESULTS, ct_slices, machine, method_values, mri_slices, record

JSON = RESULTS / "volumes.json"
#: ``--errors``: how much of each cell's error neighbouring slices share (:func:`z_error`)
ERRORS = RESULTS / "volumes_errors.json"
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Task:
    key: str
    data: str
    operator: str
    params: dict = field(default_factory=dict)
    noise: float = 0.0
    spacing: float = 5.0


TASKS = (
    Task("CT limited 90", "lung", "ct-parallel", {"views": 60, "angular_range": 90.0}, 0.2),
    Task("CT limited 120", "lung", "ct-parallel", {"views": 60, "angular_range": 120.0}, 0.2),
    Task("CT 8 views", "lung", "ct-parallel", {"views": 8}, 0.2),
    Task("CT 20 views", "lung", "ct-parallel", {"views": 20}, 0.2),
    Task("MRI 4x", "brain2", "mri-cartesian", {"acceleration": 4}, 0.005, 6.5),
    # slices that are correlated along z, which the real volumes (5 and 6.5 mm) are not: lung2
    # 50 -> 51 interpolated linearly to 8 slices 0.714 mm apart (synthetic), limited angle 90
    Task("CT limited 90, thin (synthetic)", "lung-thin", "ct-parallel",
         {"views": 60, "angular_range": 90.0}, 0.2, 5.0 / 7),
)
ROWS = {
    "ADMM-TV 2D": ("admm-tv", {}),
    "ADMM-TV 3D": ("admm-tv", {"tv3d": True}),
    "DDS slice by slice": ("dds", {"z_weight": 0.0, "z_tv": 0.0}),
    # the tuned weight is 0 (volumes_z_tuning.json): the smallest weight tried, to show its effect
    "DDS z-coupled (z_weight 0.03)": ("dds", {"z_weight": 0.03}),
    # the thin synthetic volume: the smallest tried weight scaled to its spacing as the default
    # rule would, 0.03 (5 / 0.714)^2
    "DDS z-coupled (z_weight 1.5)": ("dds", {"z_weight": 1.5}),
    # does the stiff z-term use up DDS's 5 early-stopped CG steps? the same with 20
    "DDS z-coupled (z_weight 1.5, 20 CG steps)": ("dds", {"z_weight": 1.5, "cg_iterations": 20}),
    "DDS z-coupled (z_weight 0.03, 20 CG steps)": ("dds", {"z_weight": 0.03,
                                                           "cg_iterations": 20}),
    # total variation along z by ADMM inside the data step (volumes_ztv_tuning.json: --tune-ztv
    # on lung2 45-49)
    "DDS z-TV (z_tv 0.03)": ("dds", {"z_tv": 0.03, "z_tv_step": "admm"}),
    "DDS z-TV (z_tv 0.1)": ("dds", {"z_tv": 0.1, "z_tv_step": "admm"}),
    # validation preferred 0.2 slightly under limited angle: measured on the test volume too
    "DDS z-TV (z_tv 0.2)": ("dds", {"z_tv": 0.2, "z_tv_step": "admm"}),
    # the thin synthetic volume: 0.03 and the limited-angle default 0.1 scaled to its spacing
    # by the default rule, times 5 / 0.714
    "DDS z-TV (z_tv 0.21)": ("dds", {"z_tv": 0.21, "z_tv_step": "admm"}),
    "DDS z-TV (z_tv 0.7)": ("dds", {"z_tv": 0.7, "z_tv_step": "admm"}),
    # three ADMM iterations of the z-TV term per step (each 5 CG steps), and its control:
    # slice by slice with the same 15 CG steps per data step
    "DDS z-TV (z_tv 0.1, 3 ADMM iterations)": ("dds", {"z_tv": 0.1, "z_tv_iterations": 3,
                                                       "z_tv_step": "admm"}),
    "DDS slice by slice (15 CG steps)": ("dds", {"z_weight": 0.0, "z_tv": 0.0,
                                                 "cg_iterations": 15}),
    # the proximal z-TV step (z_tv_step "prox": the slice-by-slice data step, then the exact
    # proximal map of z_tv ||D_z x||_1; volumes_ztv_tuning.json, "| z_tv_step=prox")
    "DDS z-TV, proximal step (z_tv 0.01)": ("dds", {"z_tv": 0.01, "z_tv_step": "prox"}),
    "DDS z-TV, proximal step (z_tv 0.005)": ("dds", {"z_tv": 0.005, "z_tv_step": "prox"}),
    "DDS z-TV, proximal step (z_tv 0.003)": ("dds", {"z_tv": 0.003, "z_tv_step": "prox"}),
    # the thin synthetic volume: the limited-angle default 0.005 scaled to 0.714 mm
    "DDS z-TV, proximal step (z_tv 0.035)": ("dds", {"z_tv": 0.035, "z_tv_step": "prox"}),
    # MRI (brain2): off by default; every weight tried lost on brain1 13-17
    # (volumes_ztv_tuning.json), the smallest to show its effect on the test volume
    "DDS z-TV (z_tv 0.003)": ("dds", {"z_tv": 0.003, "z_tv_step": "admm"}),
    # PnP-ADMM (its TV along z is off by default: volumes_ztv_tuning_pnp-admm.json)
    "PnP-ADMM slice by slice": ("pnp-admm", {"z_weight": 0.0, "z_tv": 0.0}),
    # its proximal z-TV step, the full-range default (gains under 8 and 20 views on the
    # validation gap, volumes_ztv_tuning_pnp-admm.json)
    "PnP-ADMM z-TV, proximal step (z_tv 0.01)": ("pnp-admm", {"z_tv": 0.01, "z_tv_step": "prox"}),
}
#: the DDS rows as the limited-angle cells ran before limited-angle CT had its own data step:
#: the full-range values, 5 CG steps (where the row does not say otherwise) at gamma 0.25, that
#: is prior_std 0.1 at noise 0.2
FORMER = " (former data step)"
#: the method parameters each cell and tuning run records beside its scores
DATA_STEP = ("z_weight", "z_tv", "z_tv_step", "z_tv_iterations", "cg_iterations", "gamma")
ROWS.update({row + FORMER: (m, {"cg_iterations": 5, "gamma": 0.25, **p})
             for row, (m, p) in list(ROWS.items()) if m == "dds"})


def volume(task: Task) -> np.ndarray:
    if task.data == "lung-thin":
        a, b = ct_slices([50, 51])
        return np.stack([(1 - t) * a + t * b for t in np.linspace(0, 1, 8)]).astype(np.float32)
    return mri_slices("brain2") if task.data == "brain2" else ct_slices(list(range(50, 61)))


def z_correlation() -> dict:
    """How well a slice is predicted by its neighbours: PSNR of ``(x[i-1] + x[i+1]) / 2``
    against ``x[i]`` over the interior slices of each volume (dB)."""
    from napari_patchdiff.recon.metrics import per_slice_psnr

    out = {}
    for task in TASKS:
        if task.data in out:
            continue
        x = volume(task)
        out[task.data] = float(np.mean(per_slice_psnr((x[:-2] + x[2:]) / 2, x[1:-1])))
    return out


def z_error(recon: np.ndarray, truth: np.ndarray) -> dict:
    """How much of the reconstruction error neighbouring slices share, which no coupling along z
    can remove: over each pair of adjacent slices, ``||e_i + e_{i+1}||^2 / (2 (||e_i||^2 +
    ||e_{i+1}||^2))``, the error energy left after averaging the pair relative to the pair's
    (0.5: errors independent from one slice to the next; 1: the same error in both), averaged
    over the pairs (``shared``); ``rmse``: the error per voxel."""
    e = (recon - truth).astype(np.float64).reshape(recon.shape[0], -1)
    a, b = e[:-1], e[1:]
    shared = ((a + b) ** 2).sum(1) / (2.0 * ((a * a).sum(1) + (b * b).sum(1)))
    return {"shared": float(shared.mean()), "rmse": float(np.sqrt((e * e).mean()))}


def orientations(recon: np.ndarray, truth: np.ndarray) -> dict:
    """Mean PSNR / SSIM over axial slices, sagittal and coronal planes."""
    from napari_patchdiff.errors import InputError
    from napari_patchdiff.recon.metrics import per_slice_psnr, per_slice_ssim

    out = {}
    for name, axes in (("axial", (0, 1, 2)), ("coronal", (1, 0, 2)), ("sagittal", (2, 0, 1))):
        a, b = np.transpose(recon, axes), np.transpose(truth, axes)
        keep = b.reshape(b.shape[0], -1).max(axis=1) > 0  # planes that hold the object
        out[f"psnr_{name}"] = float(np.mean(per_slice_psnr(a[keep], b[keep])))
        try:
            out[f"ssim_{name}"] = float(np.mean(per_slice_ssim(a[keep], b[keep])))
        except InputError:  # planes thinner than the SSIM window
            out[f"ssim_{name}"] = None
    return out


def run_cell(task: Task, row: str, errors: bool = False) -> dict:
    from napari_patchdiff import api

    x = volume(task)
    truth = api.truth_from_array(x, {"spacing": (task.spacing, 1.0, 1.0)}, modality="unit")
    problem = api.simulate(truth, task.operator, noise_std=task.noise, seed=0, **task.params)
    method, params = ROWS[row]
    kw = ({"prior": "mri" if task.data == "brain2" else "ct"} if method in ("dds", "pnp-admm")
          else {})
    t0 = time.perf_counter()
    result = api.solve(problem, method, **kw, **params)
    out = orientations(result.recon, x)
    if errors:
        out.update(z_error(result.recon, x))
    used = result.report["method_params"]
    out.update(seconds=time.perf_counter() - t0, slices=int(x.shape[0]),
               **{k: used.get(k) for k in DATA_STEP})
    return out


def memory_child(depth: int) -> dict:
    """DDS (z-coupled, 4 evaluations) on a synthetic stack of ``depth`` 64 x 64 slices."""
    import resource

    import torch

    from napari_patchdiff import api
    from napari_patchdiff.training.phantoms import phantom_slices

    torch.set_num_threads(1)
    x = phantom_slices(depth, (64, 64), seed=3)
    truth = api.truth_from_array(x, {"spacing": (5.0, 1.0, 1.0)}, modality="unit")
    problem = api.simulate(truth, "ct-parallel", noise_std=0.2, seed=0, views=20)
    t0 = time.perf_counter()
    api.solve(problem, "dds", prior="ct", nfe=4, z_weight=0.1)
    return {"seconds": time.perf_counter() - t0,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "volume_mib": x.nbytes / 2**20}


def tune_z(weights) -> None:
    """DDS's ``z_weight_ref`` on the CT validation gap (lung2 45-49, never trained on, 5 mm)."""
    from napari_patchdiff import api

    x, prior, problem = validation_problem(TASKS[0])  # limited angle 90
    for w in weights:
        r = api.solve(problem, "dds", prior=prior, z_weight=w)
        out = orientations(r.recon, x)
        record(RESULTS / "volumes_z_tuning.json", str(w), out)
        print(w, {k: round(v, 3) for k, v in out.items() if v is not None}, flush=True)


#: the validation tasks ``--tune-ztv`` can run (keys of TASKS' operators and noise; the first
#: two by default)
ZTV_TASKS = ("CT limited 90", "CT 8 views", "CT limited 120", "MRI 4x", "CT 20 views")


def validation_problem(task: Task):
    """``(slices, prior name, problem)``: the slices the tunings run on, measured as ``task``
    measures its test volume. For CT the validation gap lung2 45-49 (never trained on, 5 mm);
    for MRI brain1 13-17 (6.5 mm) around the MRI prior's held-out slice 15: the other four are
    training slices (brain1 has no held-out run of slices), on which the prior generalises
    rather than recalls (memorisation.md: gap 1.09 on brain1 against 1.04 on brain2), and
    brain2 stays the test volume."""
    from napari_patchdiff import api

    if task.data == "brain2":
        x, prior = mri_slices("brain1", list(range(13, 18))), "mri"
    else:
        x, prior = ct_slices(list(range(45, 50))), "ct"
    truth = api.truth_from_array(x, {"spacing": (task.spacing, 1.0, 1.0)}, modality="unit")
    return x, prior, api.simulate(truth, task.operator, noise_std=task.noise, seed=0,
                                  **task.params)


def tune_ztv(weights, tasks, method="dds", extra=None, noise=None) -> None:
    """``z_tv`` of ``method`` (DDS or PnP-ADMM), given as is (not scaled by the spacing), on the
    validation volume of each task (:func:`validation_problem`), with the further parameters
    ``extra`` (``{"cg_iterations": 15}``: recorded in the run's key) ->
    volumes_ztv_tuning.json (DDS) / volumes_ztv_tuning_{method}.json. Each run records its
    data step (:data:`DATA_STEP`); runs without that record ran at the defaults of their time
    (limited angle: 5 CG steps at gamma 0.25, the full-range values). ``noise``: another noise
    level than the task's (``0``: noiseless, where the default ``z_tv`` is 0; recorded in the
    key as ``noise=...``)."""
    import dataclasses

    extra = dict(extra or {})
    suffix = "".join(f" | {k}={v}" for k, v in sorted(extra.items()))
    if noise is not None:
        suffix += f" | noise={noise:g}"
    from napari_patchdiff import api

    path = RESULTS / ("volumes_ztv_tuning.json" if method == "dds"
                      else f"volumes_ztv_tuning_{method}.json")
    for task in [t for t in TASKS if t.key in tasks]:
        if noise is not None:
            task = dataclasses.replace(task, noise=float(noise))
        x, prior, problem = validation_problem(task)
        for w in weights:
            r = api.solve(problem, method, prior=prior, z_tv=w, **extra)
            key, out = f"{task.key} | {w}{suffix}", orientations(r.recon, x)
            out.update({k: r.report["method_params"].get(k) for k in DATA_STEP})
            record(path, key, out)
            print(key, {k: round(v, 3) for k, v in out.items() if isinstance(v, float)},
                  flush=True)


def table(data: dict) -> None:
    cells = data.get("cells", {})
    lines = ["# Volumes: coupled along z, quality per orientation, memory with depth", "",
             "Generated by `python benchmarks/volumes.py` (do not edit by hand); raw numbers in "
             "volumes.json.", f"Machine: {data.get('machine', '?')}.", "",
             "Lung test volume (lung2 50-60, 11 slices of 256 x 256, 5 mm apart; noise 0.2) and "
             "brain2 (23 slices, 6.5 mm; noise 0.005). Cells: PSNR (dB) / SSIM averaged over "
             "the axial slices, the coronal and the sagittal planes that hold the object "
             "(SSIM needs 11 rows: the lung volume's planes have exactly that many); seconds per "
             "volume on one CPU thread, except the 20-CG-step row of the lung volume, the "
             "limited-angle-120 z-TV 0.1 row, the PnP-ADMM z-TV rows and the 20-view PnP-ADMM "
             "row (two threads); rows ran at different times beside "
             "other jobs, so seconds are indicative "
             "(the thin synthetic rows at lower priority). The 20-CG-step rows test whether the "
             "stiff z-term uses up DDS's 5 early-stopped CG steps. `--tune-z` on lung2 45-49 "
             "(5 mm, the validation gap) chose "
             "the default z weight 0: every weight tried lost in every orientation "
             "(volumes_z_tuning.json); the z-coupled row shows the smallest weight tried, 0.03. "
             "The z-TV rows add total variation along z instead (DDS's `z_tv`), by ADMM inside "
             "the data step (`z_tv_step` admm) or, in the 'proximal step' rows, by the exact "
             "proximal map of the term after the slice-by-slice data step (`z_tv_step` prox); "
             "`--tune-ztv` on the same gap chose ADMM at 0.03 for full-range CT volumes "
             "(volumes_ztv_tuning.json) and the proximal step at 0.005 for limited angle at its "
             "own data step (with the former data step ADMM at 0.1); on the thin synthetic "
             "volume its rows have 0.21 and 0.7, 0.03 and 0.1 scaled to that spacing by the "
             "default rule. PnP-ADMM's TV along z, tuned the same way "
             "(volumes_ztv_tuning_pnp-admm.json), lost under limited angle 90 at every weight, "
             "so limited-angle volumes run slice by slice; for full-range CT its proximal step "
             "at 0.01 gained in every orientation under both 8 and 20 views and is the "
             "default there. For MRI, `--tune-ztv` on "
             "brain1 13-17 (6.5 mm) lost at every weight (0.003-0.1), so MRI volumes run slice by "
             "slice; the MRI z-TV row shows the smallest weight tried, 0.003. The row with 3 "
             "ADMM iterations runs the z-TV step three times per sampling step (15 CG steps in "
             "all, `z_tv_iterations`); its control runs slice by slice with 15 CG steps per "
             "data step. Limited-angle CT has its own data step since these rows ran (40 CG "
             "steps at prior_std 0.05, gamma 0.0625 at noise 0.2; dds_tuning.md): rows marked "
             "'(former data step)' ran with the full-range one, 5 CG steps (unless the row says "
             "otherwise) at gamma 0.25, and pin it. "
             "The thin synthetic task is lung2 50 -> 51 interpolated linearly to 8 slices 0.71 mm "
             "apart: slices as correlated along z as slices can be, to show what coupling along "
             "z can do at best under the same limited-angle operator (its coronal and sagittal "
             "planes are 8 rows high, too few for SSIM).",
             "",
             "| task | row | axial | coronal | sagittal | s / volume |",
             "|---|---|---|---|---|---|"]

    def fmt(c, o):
        s = c.get(f"ssim_{o}")
        return f"{c[f'psnr_{o}']:.2f}" + (f" / {s:.3f}" if s is not None else "")

    for task in TASKS:
        for row in ROWS:
            c = cells.get(f"{task.key} | {row}")
            if c is not None:
                lines.append(f"| {task.key} | {row} | {fmt(c, 'axial')} | {fmt(c, 'coronal')} | "
                             f"{fmt(c, 'sagittal')} | {c['seconds']:.0f} |")
    zc = z_correlation()
    lines += ["", "How much the neighbours say about a slice: PSNR (dB) of the mean of slices "
              "i - 1 and i + 1 against slice i, interior slices. A z-coupling pulls each slice "
              "towards its neighbours, so it can only help where this is well above what the "
              "slices reach on their own:", "",
              "| volume | spacing | neighbour-mean PSNR |", "|---|---|---|"]
    names = {"lung": ("lung2 50-60", "5 mm"), "brain2": ("brain2", "6.5 mm"),
             "lung-thin": ("lung2 50 -> 51 interpolated (synthetic)", "0.71 mm")}
    for key, v in zc.items():
        lines.append(f"| {names[key][0]} | {names[key][1]} | {v:.2f} |")
    errors = json.loads(ERRORS.read_text()) if ERRORS.exists() else {}
    if errors:
        lines += ["", "How much of the error neighbouring slices share (`--errors --threads "
                  "2`: the cells run again on two threads, to volumes_errors.json; their PSNR "
                  "repeats the table's, the DDS rows exactly, ADMM-TV's within 0.01 dB): over "
                  "each pair of adjacent slices, the error energy left after averaging the "
                  "pair, relative to the pair's (0.5: independent errors from one slice to the "
                  "next, 1: the same error in both). A coupling along z pulls a slice towards "
                  "its neighbours, so it acts on the part of the error that is not shared:", "",
                  "| task | row | shared error | RMSE | axial / coronal / sagittal PSNR | "
                  "s / volume |", "|---|---|---|---|---|---|"]
        for key, c in errors.items():
            task, row = key.split(" | ", 1)
            lines.append(f"| {task} | {row} | {c['shared']:.3f} | {c['rmse']:.4f} | "
                         f"{c['psnr_axial']:.2f} / {c['psnr_coronal']:.2f} / "
                         f"{c['psnr_sagittal']:.2f} | {c['seconds']:.0f} |")
    mem = data.get("memory", {})
    if mem:
        lines += ["", "Time and peak memory with depth (DDS z-coupled, 4 evaluations, 64 x 64 "
                  "slices of a synthetic stack, windows of 8 slices with 2 of overlap, each "
                  "depth in its own process):", "",
                  "| depth | seconds | peak resident MiB | volume MiB |", "|---|---|---|---|"]
        for depth, m in sorted(mem.items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {depth} | {m['seconds']:.1f} | {m['peak_mib']:.0f} | "
                         f"{m['volume_mib']:.1f} |")
    (RESULTS / "volumes.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'volumes.md'}")


def _write(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")


def run_cells(args, cells: dict, save, errors: bool = False) -> None:
    """Run the cells of ``args.tasks`` x ``args.rows`` missing from ``cells`` (all of them with
    ``args.redo``) into it, calling ``save()`` after each (``errors``: see :func:`run_cell`)."""
    for task in [t for t in TASKS if t.key in args.tasks]:
        for row in args.rows:
            key = f"{task.key} | {row}"
            if key in cells and not args.redo:
                continue
            cells[key] = run_cell(task, row, errors=errors)
            print(key, {k: round(v, 3) for k, v in cells[key].items() if isinstance(v, float)},
                  flush=True)
            save()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="*", default=[t.key for t in TASKS])
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--memory", action="store_true", help="the memory columns only")
    ap.add_argument("--errors", action="store_true", help="run the cells of --tasks x --rows "
                    "again and record how much of their error neighbouring slices share "
                    "(volumes_errors.json), not their cells")
    ap.add_argument("--tune-z", nargs="*", type=float, metavar="W",
                    help="tune z_weight_ref over these weights (default 0 0.03 0.1 0.3)")
    ap.add_argument("--tune-ztv", nargs="*", type=float, metavar="W",
                    help="tune z_tv over these weights, given as is at the validation volume's "
                         "spacing (default 0 0.01 0.03)")
    ap.add_argument("--tune-tasks", nargs="*", default=list(ZTV_TASKS[:2]), choices=ZTV_TASKS,
                    help="with --tune-ztv: the tasks")
    ap.add_argument("--tune-with", nargs="*", default=[], metavar="NAME=VALUE",
                    help="with --tune-ztv: parameters of the method for every run "
                         "(cg_iterations=15, z_tv_iterations=3, gamma=0.0625, z_tv_step=prox)")
    ap.add_argument("--tune-method", default="dds", choices=("dds", "pnp-admm"),
                    help="with --tune-ztv: the method")
    ap.add_argument("--tune-noise", type=float, help="with --tune-ztv: this noise level "
                    "instead of the task's (0: noiseless data, which run slice by slice by "
                    "default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--redo", action="store_true")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(memory_child(args.child)))
        return
    import torch

    torch.set_num_threads(args.threads)
    if args.tune_z is not None:
        tune_z(args.tune_z or [0.0, 0.03, 0.1, 0.3])
        return
    if args.tune_ztv is not None:
        tune_ztv(args.tune_ztv or [0.0, 0.01, 0.03], args.tune_tasks, args.tune_method,
                 method_values(args.tune_method, args.tune_with, "--tune-with"), args.tune_noise)
        return
    data = json.loads(JSON.read_text()) if JSON.exists() else {"cells": {}}
    if not args.table:
        data["machine"] = machine()
        if args.errors:  # the cells again, their scores and errors kept apart from the table's
            errors = json.loads(ERRORS.read_text()) if ERRORS.exists() else {}
            run_cells(args, errors, lambda: _write(ERRORS, errors), errors=True)
        elif args.memory:
            data["memory"] = {}
            for depth in (16, 64, 256):
                proc = subprocess.run([sys.executable, str(HERE / "volumes.py"), "--child",
                                       str(depth)], stdout=subprocess.PIPE, text=True, check=True)
                data["memory"][str(depth)] = json.loads(proc.stdout.strip().splitlines()[-1])
                print(depth, data["memory"][str(depth)], flush=True)
                _write(JSON, data)
        else:
            run_cells(args, data["cells"], lambda: _write(JSON, data))
    table(data)


if __name__ == "__main__":
    main()
