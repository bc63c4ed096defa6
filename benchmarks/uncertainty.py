"""Posterior ensembles on real CT -> benchmarks/results/uncertainty.md / .json / uncertainty.png.

    python benchmarks/uncertainty.py [--prior ct] [--slices 50 52 55 58 60] [--samples 16] [--nfe 25]

Each slice's results are cached in ``results/uncertainty_cache/`` (per-pixel conformity scores as
.npz beside them), so slices can run in separate processes and the table is written from every
cached slice (``--table-only`` writes it without computing).
                                     [--designs iid antithetic rqmc]

20-view parallel-beam CT (noise 0.2) of held-out test slices, reconstructed by DDS with the
shipped patch prior. For each slice one ensemble of ``--samples`` samples per noise design, at
EQUAL network evaluations: iid, antithetic (pairs z / -z over the whole noise stream) and rqmc
(groups of 4: an antithetic Latin hypercube). Reported per design: the 90% confidence-interval
half-width of the mean intensity of fixed regions (boxes inside the body; each design's own
interval: t over samples, pair means or group means), its ratio to iid, the estimated variance
reduction and within-pair correlation,
the per-pixel within-pair correlation, the PSNR of the ensemble mean, and the coverage of the
per-pixel 90% intervals (sample quantiles, and the small-sample mean +- t sd sqrt(1 + 1/n)).
The figure shows samples, mean, std and absolute error of the first slice.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from common import RESULTS, ct_slices, machine
from napari_patchdiff import api
from napari_patchdiff.priors import load_prior
from napari_patchdiff.uncertainty.calibration import (conformal_factor, covered, scores,
                                                        sparsification)

CACHE = RESULTS / "uncertainty_cache"
#: nominal levels of the coverage rows
LEVELS = (0.5, 0.8, 0.9, 0.95)

#: regions (y0, y1, x0, x1) on the 256 x 256 slice: right lung, left lung, mediastinum, body wall
BOXES = ((90, 122, 50, 82), (90, 122, 170, 202), (110, 142, 112, 144), (170, 202, 100, 132))
NOISE = 0.2


#: the DDS start of the committed results (pure noise at sigma_max 10, the default when they were
#: measured; DDS's CT default is now the warm start, see dds_tuning.md)
DDS_START = {"start": "noise", "sigma_max": 10.0}


def run_design(problem, prior, design, args):
    cis = []
    res = None
    for box in BOXES:
        roi = [(box[0], box[1]), (box[2], box[3])]
        if res is None:
            t0 = time.perf_counter()
            res = api.sample(problem, "dds", prior=prior, samples=args.samples, design=design,
                             seed=args.seed, roi=roi, nfe=args.nfe, **DDS_START)
            res.report["wall_s"] = time.perf_counter() - t0
            cis.append(res.report["roi"])
        else:  # the same samples, another region
            from napari_patchdiff.uncertainty import roi_mask, region_interval

            m = roi_mask(roi, res.samples.shape[1:])
            cis.append(region_interval(res.samples[:, m].astype(np.float64).mean(1), design))
    return res, cis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prior", default="ct")
    parser.add_argument("--slices", type=int, nargs="+", default=[50, 52, 55, 58, 60])
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--designs", nargs="+", default=["iid", "antithetic", "rqmc"])
    parser.add_argument("--nfe", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    CACHE.mkdir(exist_ok=True)
    if args.table_only:
        write_table(collect())
        return
    prior = load_prior(args.prior, device=args.device)
    head = {"machine": machine(args.device), "prior": args.prior,
            "prior_steps": prior.metadata.get("steps"), "samples": args.samples, "nfe": args.nfe,
            "noise": NOISE, "boxes": BOXES, "designs": args.designs}
    figure_data = None
    for sl in args.slices:
        x = ct_slices([sl])[0]
        truth = api.truth_from_array(x, modality="unit")
        problem = api.simulate(truth, "ct-parallel", noise_std=NOISE, seed=0, views=20,
                               device=args.device)
        row = {}
        for design in args.designs:
            res, cis = run_design(problem, prior, design, args)
            r = res.report
            row[design] = {
                "psnr_mean": r["psnr_mean"], "ssim_mean": r["ssim_mean"],
                "psnr_samples": r["psnr_samples"], "coverage": r["coverage"],
                "coverage_predictive": r["coverage_predictive"], "calibration": r["calibration"],
                "mean_std": r["mean_std"], "nfe": r["nfe"], "seconds": r["wall_s"],
                "half_widths": [c["half_width"] for c in cis],
                "std_errors": [c["std_error"] for c in cis],
                "roi_estimates": [c["estimate"] for c in cis],
                "roi_truth": [float(x[b[0]:b[1], b[2]:b[3]].mean()) for b in BOXES],
            }
            ause = sparsification(res.mean, res.std, x)
            row[design]["ause"], row[design]["ause_random"] = ause["ause"], ause["ause_random"]
            np.savez_compressed(CACHE / f"slice_{sl}_{design}.npz",
                                scores=scores(res.samples, x).astype(np.float32))
            if design != "iid":
                row[design]["variance_reduction"] = [c["variance_reduction"] for c in cis]
            if design == "antithetic":
                row[design]["pixel_pair_correlation"] = r["within_pair_correlation_mean"]
                row[design]["roi_pair_correlation"] = [c["within_pair_correlation"] for c in cis]
            if figure_data is None and design == "iid":
                figure_data = (sl, x, res)
            print(sl, design, {k: v for k, v in row[design].items()
                               if k not in ("calibration", "psnr_samples")}, flush=True)
        for design in args.designs[1:]:
            row[f"half_width_ratio_{design}"] = [
                a / b for a, b in zip(row[design]["half_widths"], row["iid"]["half_widths"])]
        (CACHE / f"slice_{sl}.json").write_text(json.dumps({**head, "row": row}, indent=1))
    out = collect()
    (RESULTS / "uncertainty.json").write_text(json.dumps(out, indent=1))
    write_table(out)
    if figure_data is not None and figure_data[0] == min(int(k) for k in out["slices"]):
        figure(*figure_data)


def collect() -> dict:
    """Every cached slice (run with the same settings) in one result."""
    out = None
    for path in sorted(CACHE.glob("slice_*.json"), key=lambda p: int(p.stem.split("_")[1])):
        cell = json.loads(path.read_text())
        row = cell.pop("row")
        if out is None:
            out = {**cell, "slices": {}}
        elif any(out[k] != cell[k] for k in ("prior", "samples", "nfe", "noise", "designs")):
            raise SystemExit(f"{path} was run with other settings; delete it or rerun it")
        out["slices"][path.stem.split("_")[1]] = row
    if out is None:
        raise SystemExit(f"nothing cached in {CACHE}")
    return out


def conformal_rows(out) -> dict:
    """Leave one slice out: the split-conformal factor fitted on the other slices' scores,
    the coverage it gives on the held-out slice (mean over slices), per design and level."""
    slices = list(out["slices"])
    result = {}
    for design in out["designs"]:
        r = {sl: np.load(CACHE / f"slice_{sl}_{design}.npz")["scores"] for sl in slices}
        cov = []
        for sl in slices:
            rest = np.concatenate([r[o] for o in slices if o != sl])
            factors = {f"{lev:g}": conformal_factor(rest, lev) for lev in LEVELS}
            cov.append(covered(r[sl], factors))
        result[design] = {k: (float(np.mean([c[k] for c in cov])), min(c[k] for c in cov),
                              max(c[k] for c in cov)) for k in cov[0]}
    return result


def write_table(out) -> None:
    rows = list(out["slices"].values())
    designs = out.get("designs", ["iid", "antithetic"])

    def avg(design, key):
        return float(np.mean([r[design][key] for r in rows]))

    def mean_of(design, key):
        return float(np.mean([np.mean(r[design][key]) for r in rows]))

    def cells(fmt, f):
        return " | ".join(fmt.format(f(d)) for d in designs)

    lines = [
        "# Posterior ensembles on 20-view CT: noise designs",
        "",
        "Generated by `python benchmarks/uncertainty.py` (do not edit by hand).",
        f"Machine: {out['machine']}. Prior `{out['prior']}` ({out['prior_steps']} training steps). "
        f"DDS, {out['nfe']} evaluations per sample (pure-noise start, pinned), {out['samples']} "
        f"samples per design (equal evaluations), CT test slices {', '.join(out['slices'])} "
        f"(lung2), 20 views, noise {out['noise']}. Regions: {len(out['boxes'])} 32 x 32 boxes "
        "per slice; CIs at 90%, each design's own (iid: t over samples; antithetic: over pair "
        "means; rqmc: over the means of groups of 4).",
        "",
        "| | " + " | ".join(designs) + " |",
        "|---" * (len(designs) + 1) + "|",
        "| PSNR of the ensemble mean (dB) | " + cells("{:.2f}", lambda d: avg(d, "psnr_mean"))
        + " |",
        "| PSNR of single samples (dB) | "
        + cells("{:.2f}", lambda d: mean_of(d, "psnr_samples")) + " |",
        "| mean per-pixel std (normalised) | " + cells("{:.4f}", lambda d: avg(d, "mean_std"))
        + " |",
        "| region-mean standard error (mean over regions) | "
        + cells("{:.6f}", lambda d: mean_of(d, "std_errors")) + " |",
        "| region-mean CI half-width (mean over regions) | "
        + cells("{:.6f}", lambda d: mean_of(d, "half_widths")) + " |",
        "| coverage of per-pixel 90% quantile intervals | "
        + cells("{:.3f}", lambda d: avg(d, "coverage")) + " |",
        "| coverage of per-pixel 90% mean +- t sd sqrt(1+1/n) | "
        + cells("{:.3f}", lambda d: avg(d, "coverage_predictive")) + " |",
        "| sparsification error AUSE (0 perfect; random ranking in brackets) | "
        + cells("{}", lambda d: f"{avg(d, 'ause'):.3f} ({avg(d, 'ause_random'):.3f})") + " |",
        "| seconds per ensemble | " + cells("{:.0f}", lambda d: avg(d, "seconds")) + " |",
        "",
    ]
    if len(rows) >= 2:
        conf = conformal_rows(out)
        lines += [
            "Per-pixel coverage at each nominal level: the raw sample-quantile interval, and the "
            "split-conformal interval `mean +- q std` with `q` fitted on the other slices (leave "
            "one slice out; the method of `napari-patchdiff calibrate`), mean over slices "
            "(calibrated: range over the held-out slices in brackets):",
            "",
            "| nominal | " + " | ".join(f"{d} raw | {d} calibrated" for d in designs) + " |",
            "|---" * (1 + 2 * len(designs)) + "|",
        ]
        for lev in LEVELS:
            k = f"{lev:g}"
            lines.append(f"| {k} | " + " | ".join(
                f"{np.mean([r[d]['calibration'][k] for r in rows]):.3f} | {conf[d][k][0]:.3f} "
                f"({conf[d][k][1]:.3f}-{conf[d][k][2]:.3f})"
                for d in designs) + " |")
        lines.append("")
    for design in designs[1:]:
        ratios = np.concatenate([r[f"half_width_ratio_{design}"] for r in rows])
        vr = np.concatenate([r[design]["variance_reduction"] for r in rows])
        lines.append(f"{design} / iid CI half-width ratio over {ratios.size} regions: median "
                     f"{np.median(ratios):.2f} (range {ratios.min():.2f}-{ratios.max():.2f}); "
                     f"estimated variance reduction against iid: median {np.median(vr):.2f}.")
    if "antithetic" in designs:
        rho = np.concatenate([r["antithetic"]["roi_pair_correlation"] for r in rows])
        lines.append(f"Within-pair correlation of region means (antithetic): median "
                     f"{np.median(rho):.2f}; per pixel (mean over pixels): "
                     f"{np.mean([r['antithetic']['pixel_pair_correlation'] for r in rows]):.2f}.")
    if {"antithetic", "rqmc"} <= set(designs):
        ratio = np.concatenate([np.divide(r["rqmc"]["half_widths"], r["antithetic"]["half_widths"])
                                for r in rows])
        se = np.concatenate([np.divide(r["rqmc"]["std_errors"], r["antithetic"]["std_errors"])
                             for r in rows])
        lines.append(f"rqmc / antithetic: CI half-width ratio median {np.median(ratio):.2f}, "
                     f"standard-error ratio median {np.median(se):.2f} (the CI also pays for "
                     f"fewer replicates: {out['samples'] // 4} groups against "
                     f"{out['samples'] // 2} pairs).")
    first = rows[0][designs[0]]["calibration"]
    lines += [
        "",
        f"Calibration curve (nominal -> empirical coverage of central per-pixel intervals, "
        f"{designs[0]}, mean over slices):",
        "",
        "| nominal | " + " | ".join(first) + " |",
        "|---" * (1 + len(first)) + "|",
        "| empirical | " + " | ".join(
            f"{np.mean([r[designs[0]]['calibration'][k] for r in rows]):.3f}" for k in first)
        + " |",
        "",
    ]
    (RESULTS / "uncertainty.md").write_text("\n".join(lines))
    print("\n".join(lines))


def figure(sl, x, res) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(res.samples[i], f"sample {i + 1}", "gray", (0, 0.8)) for i in range(3)]
    panels += [(res.mean, "ensemble mean", "gray", (0, 0.8)), (x, "truth", "gray", (0, 0.8)),
               (res.std, "per-pixel std", "magma", (0, float(np.quantile(res.std, 0.995)))),
               (np.abs(res.mean - x), "|mean - truth|", "magma",
                (0, float(np.quantile(res.std, 0.995))))]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.5 * len(panels), 2.9),
                             constrained_layout=True)
    for ax, (img, title, cmap, lim) in zip(axes, panels):
        ax.imshow(img, cmap=cmap, vmin=lim[0], vmax=lim[1])
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"DDS posterior ensemble, lung2 slice {sl}, 20-view CT "
                 f"({res.samples.shape[0]} iid samples)", fontsize=10)
    fig.savefig(RESULTS / "uncertainty.png", dpi=90)
    print(f"wrote {RESULTS / 'uncertainty.png'}")


if __name__ == "__main__":
    main()
