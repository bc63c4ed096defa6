"""Tune the DDS defaults on the validation slices -> benchmarks/results/dds_tuning.md / .json.

    python benchmarks/tune_dds.py [--prior ct] [--tasks "CT 20 views"] [--threads 1]

Coordinate search, one parameter at a time, over the data weight (as the prior's assumed error
std ``prior_std``, ``gamma = (prior_std / noise)^2``), the CG steps per sampling step and the
stochasticity ``eta``, at 50 evaluations, on the validation slice of each task (never a test
slice). Every run is recorded (and reused by a later run with the same prior steps and nfe); the best values go into the tables at the top of
``napari_patchdiff/solvers/diffusion.py`` by hand (with a pointer to this file).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from common import RESULTS, TASKS, machine, val_slices
from napari_patchdiff import api
from napari_patchdiff.priors import load_prior

GRID = {
    "prior_std": (0.01, 0.02, 0.05, 0.1),
    "cg_iterations": (2, 5, 10),
    "eta": (0.0, 0.15, 0.5, 0.8, 1.0),
}
START = {"prior_std": 0.05, "cg_iterations": 5, "eta": 0.15}


def run(task, x, prior, nfe, prior_std, cg_iterations, eta):
    truth = api.truth_from_array(x, modality="unit")
    problem = api.simulate(truth, task.operator, noise=task.noise, seed=0, **task.params)
    gamma = (prior_std / task.noise) ** 2
    t0 = time.perf_counter()
    res = api.solve(problem, "dds", prior=prior, nfe=nfe, gamma=gamma,
                    cg_iterations=cg_iterations, eta=eta, seed=0)
    return res.report["psnr"], res.report["ssim"], time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prior", default="ct")
    parser.add_argument("--tasks", nargs="*", default=["CT 20 views"])
    parser.add_argument("--nfe", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--start", type=json.loads, default=START,
                        help="starting point as JSON (a second pass starts from the first's best)")
    parser.add_argument("--params", nargs="*", default=list(GRID), choices=list(GRID),
                        help="parameters to search, in this order")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prior = load_prior(args.prior)
    out = {"machine": machine(), "prior": str(args.prior), "prior_steps": prior.metadata.get("steps"),
           "nfe": args.nfe, "tasks": {}}
    previous = {}
    if (RESULTS / "dds_tuning.json").exists():  # reuse runs recorded with the same prior and nfe
        old = json.loads((RESULTS / "dds_tuning.json").read_text())
        if (old.get("prior_steps"), old.get("nfe")) == (out["prior_steps"], out["nfe"]):
            previous = old["tasks"]
            out["tasks"].update(previous)
    for task in TASKS:
        if task.key not in args.tasks:
            continue
        x = val_slices(task)
        best, runs, cache = dict(args.start), [], {}
        for r in previous.get(task.key, {}).get("runs", []):
            cfg = {k: r[k] for k in START}
            cache[tuple(sorted(cfg.items()))] = (r["psnr"], r["ssim"], r["seconds"])
            runs.append(r)
        for name in args.params:
            values, scores = GRID[name], {}
            for v in values:
                cfg = {**best, name: v}
                key = tuple(sorted(cfg.items()))
                if key not in cache:
                    cache[key] = run(task, x, prior, args.nfe, **cfg)
                    runs.append({**cfg, "psnr": cache[key][0], "ssim": cache[key][1],
                                 "seconds": round(cache[key][2], 1)})
                    print(task.key, runs[-1], flush=True)
                scores[v] = cache[key][0]
            best[name] = max(scores, key=scores.get)
        out["tasks"][task.key] = {"best": best, "runs": runs,
                                  "passes": previous.get(task.key, {}).get("passes", []) + [
                                      {"start": args.start, "params": args.params, "best": best}]}
        (RESULTS / "dds_tuning.json").write_text(json.dumps(out, indent=1))
    lines = ["# DDS tuning on validation slices", "",
             f"`python benchmarks/tune_dds.py --prior {args.prior}` ({out['machine']}); prior "
             f"trained {out['prior_steps']} steps; {args.nfe} evaluations; validation slices only "
             "(CT: lung2 47, MRI: brain1 12); coordinate search, one parameter at a time.", ""]
    for key, t in out["tasks"].items():
        lines += [f"## {key}", "", f"best: `{json.dumps(t['best'])}`", "", "Passes: " + "; ".join(
            f"from `{json.dumps(p['start'])}` over {', '.join(p['params'])} -> "
            f"`{json.dumps(p['best'])}`" for p in t.get("passes", [])), "",
                  "| prior_std | cg_iterations | eta | PSNR | SSIM | s |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['prior_std']} | {r['cg_iterations']} | {r['eta']} | {r['psnr']:.2f} | "
                  f"{r['ssim']:.3f} | {r['seconds']} |" for r in t["runs"]]
        lines.append("")
    (RESULTS / "dds_tuning.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
