"""Evidence that the shipped priors are real -> benchmarks/results/prior.md and prior_samples.png.

    python benchmarks/prior.py [--ct ct] [--ct-whole ct-whole] [--mri mri] [--samples 4]
                               [--device cpu]

Denoising PSNR on the held-out CT test slices (lung2 50-60) at sigma 0.02, 0.05, 0.1, 0.2 on the
normalised scale for: the assembled patch denoiser (one call, a fresh random grid shift),
patch averaging and patch stitching (fixed grids, the ablations), the whole-image prior, and TV
denoising with its weight tuned per sigma on a validation slice (lung2 slice 47). Then a few
unconditional samples drawn through the patch prior (deterministic EDM Heun) beside real test
slices. The same table for the MRI patch prior on the MRI test volume (brain2), TV tuned on
brain1 slice 15.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import CT_TEST, CT_VAL, MRI_VAL, RESULTS, ct_slices, machine, mri_slices
from napari_patchdiff import api
from napari_patchdiff.priors import load_prior
from napari_patchdiff.priors.sampling import sample_unconditional
from napari_patchdiff.recon.metrics import psnr, ssim

SIGMAS = (0.02, 0.05, 0.1, 0.2)
#: torch device of the priors and TV (``--device``); noise is drawn on the CPU either way
DEVICE = torch.device("cpu")
TV_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)


def noisy(x: np.ndarray, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.from_numpy(x)[:, None]
    return t + sigma * torch.randn(t.shape, generator=g)


def tv_denoise(y: torch.Tensor, sigma: float, lam: float | None = None):
    problem = api.from_measurement(y[:, 0].numpy(), "denoise", y.shape[-2:], noise_std=sigma,
                                   device=DEVICE)
    return api.solve(problem, "admm-tv", lam=lam).recon


def tune_tv(x_val: np.ndarray, sigma: float) -> float:
    y = noisy(x_val, sigma, seed=99)
    problem = api.from_measurement(y[:, 0].numpy(), "denoise", y.shape[-2:], noise_std=sigma,
                                   device=DEVICE)
    lam0 = api.method_params(problem, "admm-tv")["lam"]
    scores = {f: psnr(tv_denoise(y, sigma, lam0 * f), x_val) for f in TV_FACTORS}
    return lam0 * max(scores, key=scores.get)


def prior_denoise(prior, y: torch.Tensor, sigma: float) -> np.ndarray:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        return prior.denoise(y.to(DEVICE), sigma, generator=g).cpu().numpy()[:, 0]


def load_rows(patch: str, whole: str | None) -> dict:
    """The prior rows of one table; a missing prior is reported, not hidden."""
    rows = {}
    for name, spec, mode in (("patch prior, assembled (random shift)", patch, "assembled"),
                             ("patch averaging (fixed grid, overlap 8)", patch, "average"),
                             ("patch stitching (fixed grid)", patch, "stitch"),
                             ("whole-image prior", whole, None)):
        if spec is None:
            continue
        try:
            rows[name] = (load_prior(spec, device=DEVICE) if mode is None
                          else load_prior(spec, mode=mode, device=DEVICE))
        except Exception as exc:  # noqa: BLE001 - reported in the output
            print(f"{name} ({spec}) unavailable: {exc}")
    return rows


def denoise_table(x: np.ndarray, x_val: np.ndarray, rows: dict, tv_label: str) -> dict:
    """{row: {sigma: (psnr, ssim, seconds per slice)}} for the priors, tuned TV, the input."""
    results: dict[str, dict[float, tuple[float, float, float]]] = {k: {} for k in rows}
    results[tv_label] = {}
    results["noisy input"] = {}
    for sigma in SIGMAS:
        y = noisy(x, sigma, seed=0)
        results["noisy input"][sigma] = (psnr(y.numpy()[:, 0], x), ssim(y.numpy()[:, 0], x), 0.0)
        for name, prior in rows.items():
            t0 = time.perf_counter()
            d = prior_denoise(prior, y, sigma)
            sec = (time.perf_counter() - t0) / len(x)
            results[name][sigma] = (psnr(d, x), ssim(d, x), sec)
            print(f"sigma {sigma}: {name}: {results[name][sigma][0]:.2f} dB", flush=True)
        lam = tune_tv(x_val, sigma)
        t0 = time.perf_counter()
        d = tv_denoise(y, sigma, lam)
        sec = (time.perf_counter() - t0) / len(x)
        results[tv_label][sigma] = (psnr(d, x), ssim(d, x), sec)
        print(f"sigma {sigma}: TV lam {lam:.4g}: {results[tv_label][sigma][0]:.2f} dB", flush=True)
    return results


def prior_table(priors: dict) -> list[str]:
    """One row per prior: what it is and how it was trained (from its metadata)."""
    lines = ["| prior | kind | parameters | steps | pixels seen | wall time | device | "
             "validation loss at sigma 0.05 / 0.1 / 0.2 |", "|---" * 8 + "|"]
    for name, prior in priors.items():
        m = prior.metadata
        per_step = m.get("batch", 0) * (max(m.get("patch_sizes") or [0]) ** 2
                                        if m.get("kind") == "patch" else
                                        m["image_size"][0] * m["image_size"][1])
        loss = m.get("final_val_loss") or {}
        lines.append(
            f"| `{name}` | {m.get('kind')} | {m.get('parameters') / 1e6:.2f} M | {m.get('steps')} | "
            f"{per_step * m.get('steps', 0) / 1e6:.0f} M | {m.get('wall_time_s', 0) / 3600:.2f} h | "
            f"{_devices(m)} | " + " / ".join(f"{loss.get(k, float('nan')):.4f}"
                                                  for k in ("0.05", "0.1", "0.2")) + " |")
    return lines


def _devices(m: dict) -> str:
    """Where the prior was trained: its segments (steps per device), else its device."""
    segs = m.get("segments") or []
    if not segs:
        return str(m.get("device"))
    return " + ".join(f"{s['device']} {s['end_step'] - s['start_step']:,} steps "
                      f"({(s['seconds'] or 0) / 3600:.2f} h)" for s in segs)


def table_lines(results: dict) -> list[str]:
    lines = ["| method | " + " | ".join(f"sigma {s}" for s in SIGMAS) + " |",
             "|---" * (len(SIGMAS) + 1) + "|"]
    for name, cells in results.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{cells[s][0]:.2f} / {cells[s][1]:.3f} ({cells[s][2]:.2f} s)" for s in SIGMAS) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ct", default="ct", help="patch prior (shipped name or path)")
    parser.add_argument("--ct-whole", default="ct-whole", help="whole-image prior")
    parser.add_argument("--mri", default="mri", help="MRI patch prior ('' to skip)")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--sample-steps", type=int, default=18)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="torch device of the priors and TV")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)

    lines = [
        "# Denoising with the shipped priors",
        "",
        "Generated by `python benchmarks/prior.py` (do not edit by hand).",
        f"Machine: {machine(DEVICE)}.",
        "",
        "Gaussian noise of the given sigma on the normalised scale (seed 0). Cells: mean PSNR (dB) / "
        "mean SSIM, (seconds per slice). Each prior row is ONE denoiser call D(y, sigma).",
        "",
    ]
    x = ct_slices(CT_TEST)
    rows = load_rows(args.ct, args.ct_whole)
    ct_results = denoise_table(x, ct_slices(CT_VAL), rows,
                               f"TV (weight tuned per sigma on lung2 slice {CT_VAL[0]})")
    priors = {args.ct: rows["patch prior, assembled (random shift)"]}
    if "whole-image prior" in rows:
        priors[args.ct_whole] = rows["whole-image prior"]
    lines += [f"## CT: lung2 slices {CT_TEST[0]}-{CT_TEST[-1]} (never trained on), 256 x 256",
              ""] + table_lines(ct_results) + [""]
    if args.mri:
        xm = mri_slices("brain2")
        mri_rows = load_rows(args.mri, None)
        if mri_rows:
            mri_results = denoise_table(xm, mri_slices("brain1", MRI_VAL), mri_rows,
                                        f"TV (weight tuned per sigma on brain1 slice {MRI_VAL[0]})")
            priors[args.mri] = mri_rows["patch prior, assembled (random shift)"]
            lines += [f"## MRI: brain2, all {len(xm)} slices (never trained on), 256 x 256, "
                      "magnitude", ""] + table_lines(mri_results) + [""]
    lines += ["## The priors", "",
              "Training data: the DATA.md split (CT: lung1 and lung2 slices 0-44; MRI: brain1), "
              "every 10th slice held out for validation; pixels seen = steps x batch x pixels per "
              "sample (patch prior: the largest patch size, smaller patches come in proportionally "
              "larger batches); validation loss: EDM-weighted denoising loss on held-out slices.",
              ""] + prior_table(priors) + [""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "prior.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / 'prior.md'}")
    if args.samples:
        sample_figure(rows["patch prior, assembled (random shift)"], x, args.samples,
                      args.sample_steps)


def sample_figure(prior, real: np.ndarray, n: int, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = time.perf_counter()
    s = sample_unconditional(prior, (n, 1, *real.shape[-2:]), steps=steps,
                             generator=torch.Generator().manual_seed(0)).cpu().numpy()[:, 0]
    sec = time.perf_counter() - t0
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.6), constrained_layout=True)
    for i in range(n):
        axes[0, i].imshow(np.clip(s[i], 0, 1), cmap="gray", vmin=0, vmax=0.8)
        axes[0, i].set_title(f"patch prior sample {i + 1}")
        axes[1, i].imshow(real[i * (len(real) // n)], cmap="gray", vmin=0, vmax=0.8)
        axes[1, i].set_title(f"test slice {CT_TEST[i * (len(real) // n)]}")
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"Unconditional samples (EDM Heun, {2 * steps - 1} evaluations, "
                 f"{sec:.0f} s for {n}) vs real held-out slices")
    fig.savefig(RESULTS / "prior_samples.png", dpi=90)
    plt.close(fig)
    print(f"wrote {RESULTS / 'prior_samples.png'}")


if __name__ == "__main__":
    main()
