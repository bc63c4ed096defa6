"""Tune the defaults of the fast diffusion methods on validation slices -> benchmarks/results/.

    python benchmarks/tune_samplers.py [--method dds|pnp-admm|padis|dps] [--prior ct]
                                       [--tasks "CT 20 views"] [--nfe 50] [--start JSON]
                                       [--params NAME ...] [--threads 1] [--device cpu]

Coordinate search, one parameter at a time over the grid below, at 50 network evaluations, on
the validation slice of each task (CT: lung2 47, MRI: brain1 15; never trained on):

* ``dds``: the data weight as the prior's assumed error std ``prior_std`` (``gamma =
  (prior_std / noise)^2``), the CG steps per sampling step, the stochasticity ``eta``, the
  start ``start`` ("noise/10": pure noise at sigma_max 10; "initial/S": the direct reconstruction
  plus noise at sigma_max S, the warm start) and ``anneal_sigma`` (the level below which the
  data weight shrinks like sigma^2; 0: constant);
* ``pnp-admm``: the first and last denoiser levels, the CG steps and the data-term noise std as a
  multiple ``data_scale`` of the measurement noise;
* ``padis``: the step ``zeta`` on the gradient of ``||y - A D(x)||`` (absolute; ``--nfe / 10``
  levels of 10 inner iterations, run with ``--nfe 1000``);
* ``dps``: the step as ``zeta_rel``, in units of ``1 / sqrt(||A^T A||)`` (run with ``--nfe 1000``).

Every run is recorded in ``METHOD_tuning[_PRIOR].json`` (``dds_tuning.json`` for DDS with the
shipped ``ct`` prior) and reused by a later run with the same prior steps and evaluations, so a
second pass from the first's best costs only its new points. Each grid point runs through the
package's own default rules with the tried values in place of the tuned ones
(``napari_patchdiff.solvers.defaults.overriding``); the best values go into the method's data
file (``napari_patchdiff/solvers/diffusion/dds.toml``, ``pnp.toml``, ...), by hand, each citing
the result file and row that chose it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common import CT_VAL, EXTRA_TASKS, MRI_VAL, RESULTS, TASKS, machine, mri_slices, val_slices
from napari_patchdiff import api
from napari_patchdiff.priors import load_prior
from napari_patchdiff.solvers.defaults import overriding

GRIDS = {
    "dds": {
        "prior_std": (0.01, 0.02, 0.05, 0.1, 0.2),
        "cg_iterations": (2, 5, 10, 15, 25, 40),
        "eta": (0.0, 0.15, 0.5, 0.8, 1.0),
        "start": ("noise/10", "initial/1", "initial/0.5", "initial/0.3", "initial/0.15"),
        "anneal_sigma": (0.0, 0.05, 0.1),
    },
    "pnp-admm": {
        "sigma_start": (0.05, 0.1, 0.2, 0.4),
        "sigma_end": (0.01, 0.02, 0.05),
        "cg_iterations": (2, 5, 10),
        "data_scale": (0.5, 1.0, 2.0),
    },
    "padis": {"zeta": (0.03, 0.1, 0.3, 1.0, 3.0)},
    "dps": {"zeta_rel": (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)},
}
STARTS = {
    "dds": {"prior_std": 0.05, "cg_iterations": 5, "eta": 0.15, "start": "noise/10",
            "anneal_sigma": 0.0},
    "pnp-admm": {"sigma_start": 0.1, "sigma_end": 0.02, "cg_iterations": 5, "data_scale": 1.0},
    "padis": {"zeta": 0.3},
    "dps": {"zeta_rel": 0.5},
}
PREFIX = {"dds": "dds", "pnp-admm": "pnp", "padis": "padis", "dps": "dps"}


def table_values(method: str, cfg: dict) -> dict:
    """One grid point as tuned values (``solvers/diffusion/dds.toml``, ...), so the run goes
    through the same default rules as a user's (``dds.prior_std`` -> ``gamma``, ...)."""
    cfg = dict(cfg)
    if method == "dds":
        start, sigma_max = cfg.pop("start").split("/")
        cfg.update(start=start, sigma_max=float(sigma_max))
    return {f"{method}.{k}": v for k, v in cfg.items()}


def run(method, task, x, prior, nfe, cfg, device="cpu"):
    truth = api.truth_from_array(x, modality="unit")
    problem = api.simulate(truth, task.operator, noise_std=task.noise, seed=0, device=device,
                           **task.params)
    t0 = time.perf_counter()
    with overriding(task.operator, table_values(method, cfg)):
        res = api.solve(problem, method, prior=prior, seed=0, nfe=nfe)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return res.report["psnr"], res.report["ssim"], time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", default="dds", choices=list(GRIDS))
    parser.add_argument("--prior", default="ct")
    parser.add_argument("--tasks", nargs="*", default=["CT 20 views"])
    parser.add_argument("--nfe", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--start", type=json.loads, default=None,
                        help="starting point as JSON (a second pass starts from the first's best)")
    parser.add_argument("--mri-val", default=None, metavar="VOLUME:SLICE",
                        help="the MRI validation slice instead of brain1 15, e.g. brain2:2 (the "
                        "other scan; results go to a file with the volume in its name)")
    parser.add_argument("--params", nargs="*", default=None,
                        help="parameters to search, in this order (default: all of the grid)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grid, start = GRIDS[args.method], {**STARTS[args.method], **(args.start or {})}
    params = args.params or list(grid)
    unknown = set(params) - set(grid)
    if unknown:
        parser.error(f"unknown parameters {sorted(unknown)} for {args.method}")
    prior = load_prior(args.prior, device=args.device)
    prefix = PREFIX[args.method]
    stem = f"{prefix}_tuning" + ("" if args.prior == "ct" else f"_{Path(args.prior).stem}")
    mri_val = None
    if args.mri_val:
        volume, index = args.mri_val.split(":")
        mri_val = (volume, int(index))
        stem += f"_{volume}"
    out = {"machine": machine(args.device), "method": args.method, "prior": str(args.prior),
           "prior_steps": prior.metadata.get("steps"), "nfe": args.nfe, "tasks": {}}
    previous = {}
    if (RESULTS / f"{stem}.json").exists():  # reuse runs recorded with the same prior and nfe
        old = json.loads((RESULTS / f"{stem}.json").read_text())
        if (old.get("prior_steps"), old.get("nfe")) == (out["prior_steps"], out["nfe"]):
            previous = old["tasks"]
            out["tasks"].update(previous)
    for task in TASKS + EXTRA_TASKS:
        if task.key not in args.tasks:
            continue
        x = (mri_slices(mri_val[0], [mri_val[1]]) if mri_val and task.data == "mri"
             else val_slices(task))
        best, runs, cache = dict(start), [], {}
        for r in previous.get(task.key, {}).get("runs", []):
            cfg = {k: r.get(k, STARTS[args.method][k]) for k in grid}
            cache[tuple(sorted(cfg.items()))] = (r["psnr"], r["ssim"], r["seconds"])
            runs.append({**cfg, **{k: r[k] for k in ("psnr", "ssim", "seconds")}})
        for name in params:
            scores = {}
            for v in grid[name]:
                cfg = {**best, name: v}
                key = tuple(sorted(cfg.items()))
                if key not in cache:
                    cache[key] = run(args.method, task, x, prior, args.nfe, cfg, args.device)
                    runs.append({**cfg, "psnr": cache[key][0], "ssim": cache[key][1],
                                 "seconds": round(cache[key][2], 1)})
                    print(task.key, runs[-1], flush=True)
                scores[v] = cache[key][0]
            best[name] = max(scores, key=scores.get)
        out["tasks"][task.key] = {"best": best, "runs": runs,
                                  "passes": previous.get(task.key, {}).get("passes", []) + [
                                      {"start": start, "params": params, "best": best}]}
        (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    write_table(out, stem, args, list(grid))


def write_table(out: dict, stem: str, args, keys: list[str]) -> None:
    lines = [f"# {args.method} tuning on validation slices", "",
             f"`python benchmarks/tune_samplers.py --method {args.method} --prior {args.prior}"
             f"{' --mri-val ' + args.mri_val if args.mri_val else ''}` "
             f"({out['machine']}); prior trained {out['prior_steps']} steps; {args.nfe} "
             f"evaluations; validation slices only (CT: lung2 {CT_VAL[0]}, MRI: "
             f"{args.mri_val.replace(':', ' ') if args.mri_val else f'brain1 {MRI_VAL[0]}'}); "
             "coordinate search, one parameter at a time.", ""]
    for key, t in out["tasks"].items():
        lines += [f"## {key}", "", f"best: `{json.dumps(t['best'])}`", "", "Passes: " + "; ".join(
            f"from `{json.dumps(p['start'])}` over {', '.join(p['params'])} -> "
            f"`{json.dumps(p['best'])}`" for p in t.get("passes", [])), "",
                  "| " + " | ".join(keys) + " | PSNR | SSIM | s |",
                  "|---" * (len(keys) + 3) + "|"]
        lines += ["| " + " | ".join(str(r.get(k, STARTS[args.method][k])) for k in keys) +
                  f" | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['seconds']} |" for r in t["runs"]]
        lines.append("")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / stem}.md")


if __name__ == "__main__":
    main()
