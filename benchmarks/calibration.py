"""Calibrated per-pixel intervals -> benchmarks/results/calibration.md / .json / calibration.png

    python benchmarks/calibration.py [--cases ct mri] [--samples 8] [--redo] [--table] [--ship]

For each case, DDS with its defaults (the shipped prior, 50 evaluations, ``--samples`` samples
in antithetic pairs): ensembles on calibration slices fit the split-conformal factors
(:mod:`napari_patchdiff.uncertainty.calibration`); ensembles on other slices measure the
coverage of the raw sample-quantile intervals and of the calibrated ones at 50/80/90/95%, and
the sparsification error of ``std`` (does it rank pixels by their actual error?).

* ``ct``: 20-view CT, noise 0.2, prior ``ct``; calibrated on lung2 45 and 48 (the gap between
  training and test slices, never trained on), tested on the test slices lung2 50 and 60.
* ``mri``: 4x MRI, noise 0.005, prior ``mri``; calibrated on brain1 15 (the training scan's
  held-out validation slice), tested on brain2 5 and 11: another scan the calibration never saw.

Each ensemble is cached in calibration.json as it finishes (scores are recomputed from its
saved summary statistics: mean, std and truth are stored as .npy files in
``benchmarks/results/calibration_cache/``, which is not committed). ``--ship`` writes the fitted
calibrations to ``napari_patchdiff/priors/shipped/calibration.json``, where ``sample`` and the
napari widget find them (``--calibration auto``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import RESULTS, ct_slices, machine, mri_slices
from napari_patchdiff import api
from napari_patchdiff.priors import load_prior
from napari_patchdiff.uncertainty.calibration import (CALIBRATION_LEVELS, SHIPPED, Calibration,
                                                      calibration_curve, fit_calibration,
                                                      coverage, shaping_params,
                                                      sparsification)

JSON = RESULTS / "calibration.json"
CACHE = RESULTS / "calibration_cache"
CASES = {
    "ct": dict(label="CT 20 views, noise 0.2, prior ct", prior="ct", operator="ct-parallel",
               params={"views": 20}, noise=0.2, calibrate=[("lung2", 45), ("lung2", 48)],
               test=[("lung2", 50), ("lung2", 60)]),
    "mri": dict(label="MRI 4x, noise 0.005, prior mri", prior="mri", operator="mri-cartesian",
                params={"acceleration": 4}, noise=0.005, calibrate=[("brain1", 15)],
                test=[("brain2", 5), ("brain2", 11)]),
}
DESIGN = "antithetic"


def image(volume: str, index: int) -> np.ndarray:
    return ct_slices([index], volume)[0] if volume.startswith("lung") else \
        mri_slices(volume, [index])[0]


def ensemble(case: dict, volume: str, index: int, samples: int, prior) -> dict:
    """One ensemble: its samples' summary and the method parameters used (cached)."""
    key = f"{case['prior']}-{volume}-{index}-{samples}"
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"{key}.npz"
    if path.exists():
        z = np.load(path)
        return {"samples": z["samples"], "truth": z["truth"],
                "params": json.loads(str(z["params"])), "seconds": float(z["seconds"]),
                "operator": json.loads(str(z["operator"]))}
    x = image(volume, index)
    problem = api.simulate(api.truth_from_array(x, modality="unit"), case["operator"],
                           noise_std=case["noise"], seed=index, **case["params"])
    t0 = time.perf_counter()
    res = api.sample(problem, "dds", prior=prior, samples=samples, design=DESIGN, seed=index,
                     calibration=None)
    seconds = time.perf_counter() - t0
    params = shaping_params(api.method_params(problem, "dds"))
    np.savez(path, samples=res.samples, truth=x, params=json.dumps(params), seconds=seconds,
             operator=json.dumps(problem.op.describe()))
    print(f"{key}: {seconds:.0f} s, mean PSNR {res.report['psnr_mean']:.2f}", flush=True)
    return {"samples": res.samples, "truth": x, "params": params, "seconds": seconds,
            "operator": problem.op.describe()}


def run_case(name: str, samples: int) -> dict:
    case = CASES[name]
    prior = load_prior(case["prior"])
    cal_ens = [ensemble(case, v, i, samples, prior) for v, i in case["calibrate"]]
    cal = fit_calibration(
        [e["samples"] for e in cal_ens], [e["truth"] for e in cal_ens], prior=case["prior"],
        operator=cal_ens[0]["operator"], noise_std=case["noise"], method="dds",
        method_params=cal_ens[0]["params"], design=DESIGN,
        images=[f"{v} slice {i}" for v, i in case["calibrate"]],
        source=f"python benchmarks/calibration.py --cases {name} --samples {samples} --ship",
        prior_created=str(prior.metadata.get("created") or ""))
    tests = {}
    for v, i in case["test"]:
        e = ensemble(case, v, i, samples, prior)
        s, t = e["samples"].astype(np.float64), e["truth"]
        sp = sparsification(s.mean(0), s.std(0, ddof=1), t)
        tests[f"{v} {i}"] = {
            "raw": calibration_curve(s, t, CALIBRATION_LEVELS),
            "calibrated": coverage(s, t, cal.factors, cal.floor),
            "ause": sp["ause"], "ause_random": sp["ause_random"],
            "sparsification": {k: sp[k] for k in ("fractions", "std", "oracle")},
            "seconds": e["seconds"]}
    return {"label": case["label"], "calibration": cal.to_dict(), "tests": tests,
            "calibration_seconds": [e["seconds"] for e in cal_ens]}


def table(data: dict) -> None:
    lines = ["# Calibrated per-pixel intervals", "",
             "Generated by `python benchmarks/calibration.py` (do not edit by hand); raw numbers "
             "in calibration.json.", f"Machine: {data.get('machine', '?')}.", "",
             f"DDS with its defaults (50 evaluations), {data.get('samples')} samples in "
             "antithetic pairs per ensemble. Split-conformal factors q fitted on the calibration "
             "slices (all their pixels); the calibrated interval is mean +- q max(std, 0.002). "
             "Coverage: the fraction of truth pixels inside the central interval of each level, "
             "on slices the calibration never saw. Sparsification error (AUSE): the mean gap "
             "between the RMSE left after removing the pixels of largest std and that after "
             "removing the pixels of largest true error (relative to the RMSE of all pixels; "
             "0 = std ranks the error perfectly, the last column = a ranking that knows "
             "nothing).", ""]
    for name, c in data["cases"].items():
        cal = c["calibration"]
        lines += [f"## {c['label']}", "",
                  f"Calibrated on {', '.join(cal['images'])} ({cal['pixels']} pixels): factors "
                  + ", ".join(f"q({k}) = {q:.2f}" for k, q in cal["factors"].items())
                  + "; raw coverage there: "
                  + ", ".join(f"{cal['coverage_raw'][k]:.3f} at {k}" for k in cal["factors"])
                  + ".", "",
                  "| test slice | interval | 50% | 80% | 90% | 95% | AUSE | AUSE random |",
                  "|---|---|---|---|---|---|---|---|"]
        for sl, t in c["tests"].items():
            for kind in ("raw", "calibrated"):
                cov = " | ".join(f"{t[kind][k]:.3f}" for k in cal["factors"])
                name_ = "sample quantiles" if kind == "raw" else "calibrated"
                extra = (f"{t['ause']:.3f} | {t['ause_random']:.3f}" if kind == "raw"
                         else " | ")
                lines.append(f"| {sl} | {name_} | {cov} | {extra} |")
        mean_raw = np.mean([t["raw"]["0.9"] for t in c["tests"].values()])
        mean_cal = np.mean([t["calibrated"]["0.9"] for t in c["tests"].values()])
        lines += ["", f"90% intervals on the test slices: {mean_raw:.3f} of pixels covered by "
                  f"the sample quantiles, {mean_cal:.3f} by the calibrated intervals.", ""]
    lines += ["![coverage before and after calibration](calibration.png)", ""]
    (RESULTS / "calibration.md").write_text("\n".join(lines) + "\n")
    figure(data)
    print(f"wrote {RESULTS / 'calibration.md'}")


def figure(data: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cases = data["cases"]
    fig = Figure(figsize=(4 * len(cases), 4), dpi=100)
    FigureCanvasAgg(fig)
    for k, (name, c) in enumerate(cases.items()):
        ax = fig.add_subplot(1, len(cases), k + 1)
        ax.plot([0, 1], [0, 1], color="0.6", lw=1)
        levels = [float(v) for v in c["calibration"]["factors"]]
        for kind, style in (("raw", "o-"), ("calibrated", "s-")):
            cov = [np.mean([t[kind][f"{lev:g}"] for t in c["tests"].values()])
                   for lev in levels]
            ax.plot(levels, cov, style, label="sample quantiles" if kind == "raw"
                    else "calibrated")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal coverage",
               ylabel="coverage on unseen slices", title=c["label"])
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(RESULTS / "calibration.png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--ship", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = json.loads(JSON.read_text()) if JSON.exists() else {"cases": {}}
    if not args.table:
        data.update(machine=machine(), samples=args.samples)
        for name in args.cases:
            data["cases"][name] = run_case(name, args.samples)
            JSON.write_text(json.dumps(data, indent=1) + "\n")
    table(data)
    if args.ship:
        cals = [Calibration.from_dict(c["calibration"]) for c in data["cases"].values()]
        SHIPPED.write_text(json.dumps([c.to_dict() for c in cals], indent=1) + "\n")
        print(f"wrote {SHIPPED}", file=sys.stderr)


if __name__ == "__main__":
    main()
