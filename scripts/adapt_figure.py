"""Before/after figure of test-time adaptation -> docs/adaptation.png

    python scripts/adapt_figure.py [--prior phantom] [--slice 50] [--threads 1]

20-view CT (noise 0.2) of a lung test slice (lung2 50, 256 x 256): ADMM-TV, DDS with the prior
(default: ``phantom``, trained on synthetic images only) and DDS with the same prior adapted to
the measurement (``adapt=True``, its defaults), each with its PSNR; the last panel is the
adapted run's self-supervised loss per adapted denoiser call. Every number in the figure comes
from this run (a few minutes on one CPU core).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import ct_slices  # noqa: E402

from napari_patchdiff import api  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default="phantom")
    ap.add_argument("--slice", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = ct_slices([args.slice])[0]
    problem = api.simulate(api.truth_from_array(x, modality="unit"), "ct-parallel",
                           noise_std=0.2, seed=0, views=20)
    runs = [("ADMM-TV", api.solve(problem, "admm-tv")),
            (f"DDS, prior {args.prior}", api.solve(problem, "dds", prior=args.prior)),
            (f"DDS, prior {args.prior} adapted",
             api.solve(problem, "dds", prior=args.prior, adapt=True))]
    for name, r in runs:
        print(f"{name}: {r.report['psnr']:.2f} dB, {r.report['seconds']:.0f} s")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 3.4), dpi=90)
    FigureCanvasAgg(fig)
    panels = [("truth (lung2 %d)" % args.slice, x)] + [
        (f"{n}: {r.report['psnr']:.2f} dB", r.recon) for n, r in runs]
    for k, (title, img) in enumerate(panels):
        ax = fig.add_subplot(1, 5, k + 1)
        ax.imshow(np.asarray(img), cmap="gray", vmin=0.0, vmax=0.8)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    ax = fig.add_subplot(1, 5, 5)
    history = getattr(runs[-1][1].prior, "history", [])  # (sigma, train loss, held-out loss)
    if history:
        ax.plot([h[1] for h in history], label="training part of y")
        ax.plot([h[2] for h in history], label="held-out part of y")
        ax.set_yscale("log")
        ax.set(xlabel="adapted denoiser call", ylabel="loss per measurement")
        ax.legend(fontsize=8)
    ax.set_title("adaptation loss", fontsize=9)
    fig.tight_layout()
    out = ROOT / "docs" / "adaptation.png"
    fig.savefig(str(out))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
