"""``napari-patchdiff demo``, the README's main job: 20-view CT of a held-out lung slice from
the shipped sample data.

Reconstructs it by FBP, ADMM-TV, the fast diffusion sampler DDS and PnP-ADMM with the diffusion
denoiser (50 network evaluations each, the shipped CT patch prior), and writes ``recon.tif`` (the
last method's reconstruction in HU, float32, with a JSON sidecar), ``figure.png`` (truth, the
reconstructions with PSNR/SSIM, the last one's error) and ``report.json`` into the output folder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import api, io
from ..params import DEVICE
from ._common import _device
from ._options import _param_option, _seed_option
from .outputs import OutputFolder
from .writers import write_report

#: the demo problem: slice 10 of the sample volume is lung2 slice 55 (a test slice)
DEMO_SLICE = 10
DEMO_OPERATOR = dict(operator="ct-parallel", views=20)
DEMO_NOISE = 0.2
DEMO_METHODS = ("fbp", "admm-tv", "dds", "pnp-admm")
#: the prior of the diffusion methods (shipped with the package)
DEMO_PRIOR = "ct"


def run_demo(out: Path, device="cpu", seed: int = 0, methods=DEMO_METHODS,
             prior=DEMO_PRIOR, nfe: int | None = None, overwrite: bool = False) -> dict:
    with OutputFolder(out, overwrite) as folder:  # checked and locked before computing
        out = folder.path
        truth = api.load_truth("sample:ct", slice=DEMO_SLICE)
        problem = api.simulate(truth, noise_std=DEMO_NOISE, seed=seed, device=device,
                               **DEMO_OPERATOR)
        results = {}
        for method in methods:
            print(f"[demo] {method} ...", flush=True)
            kw = {"prior": prior, "seed": seed, "nfe": nfe} if api.needs_prior(method) else {}
            results[method] = api.solve(problem, method, **kw)
            r = results[method].report
            print(f"[demo] {method}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}, "
                  f"{r['seconds']:.2f} s", flush=True)
        best = methods[-1]
        report = {
            "job": "20-view parallel-beam CT of lung2 slice 55 (shipped sample data, test split), "
                   "noise 0.2",
            "result_file": "recon.tif",
            "result_method": best,
            "methods": {m: res.report for m, res in results.items()},
        }

        def write(d: Path) -> None:
            io.write_tiff(d / "recon.tif", truth.to_units(results[best].recon),
                          {**results[best].report, "units": truth.units,
                           "spacing": truth.meta.get("spacing")})
            write_report(d / "report.json", report)
            comparison_figure(d / "figure.png", truth.x, {m: r.recon for m, r in results.items()},
                              {m: r.report for m, r in results.items()})

        folder.commit(write)
    print(f"[demo] wrote {out / 'recon.tif'}, {out / 'figure.png'}, {out / 'report.json'}")
    return report


def comparison_figure(path: Path, truth: np.ndarray, recons: dict, reports: dict,
                      vmin: float = 0.0, vmax: float = 0.8) -> None:
    """Truth, each reconstruction (with PSNR/SSIM) and the last one's absolute error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(recons) + 2
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), constrained_layout=True)
    axes[0].imshow(truth, cmap="gray", vmin=vmin, vmax=vmax)
    axes[0].set_title("ground truth")
    for ax, (name, rec) in zip(axes[1:], recons.items()):
        ax.imshow(rec, cmap="gray", vmin=vmin, vmax=vmax)
        r = reports[name]
        ax.set_title(f"{name}\n{r['psnr']:.2f} dB / SSIM {r['ssim']:.3f}")
    last = list(recons)[-1]
    im = axes[-1].imshow(np.abs(recons[last] - truth), cmap="magma", vmin=0, vmax=0.1)
    axes[-1].set_title(f"|{last} - truth|")
    fig.colorbar(im, ax=axes[-1], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_parser(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="the main job on the shipped sample data (20-view CT of a lung slice)",
        description="Simulates 20-view parallel-beam CT of a test slice of the shipped CT volume, "
        "reconstructs it, and writes recon.tif, figure.png and report.json into --out.",
    )
    demo.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    _param_option(demo, DEVICE)
    _seed_option(demo, "also of the measurement noise")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace the results of an earlier demo in --out")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    run_demo(Path(args.out), device=_device(args.device), seed=args.seed,
             overwrite=args.overwrite)
    return 0
