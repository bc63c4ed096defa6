"""Can the measurement tell when adaptation hurts? -> benchmarks/results/adapt_guard.md

    python benchmarks/adapt_guard.py --case ct-crop --slice 47 [--threads 1]

Issue 32: the operator's default adaptation costs DDS 1.01 dB with the `ct` prior on the
cropped CT test case (ood.md), while the `phantom` prior's rounds gain 0.6-0.8 dB on the
validation slices. A guard that keeps the adaptation only while it helps needs a signal computed
from the measurement alone. This script records, at every adaptation round and on validation
slices only (lung2 45-49), candidate signals next to the ground truth they should predict:

- ``held``: the squared residual on measurement entries the adapter never trains on, for the
  adapted and for the base network's estimate at the same iterate and patch grid. Two held-out
  kinds: random entries (the package's ``holdout``; neighbours of trained entries) or whole
  projection views (``--holdout views``: the adapted estimate must predict an angle it has not
  seen, which is what sparse-view CT asks of a prior);
- the truth: PSNR of the adapted and of the base estimate against the image (for the analysis
  only; no guard can see it).

A held-out guard is worth building if ``held(adapted) < held(base)`` agrees with ``PSNR(adapted)
> PSNR(base)`` round by round in both cases. It does not (adapt_guard.md), so ``--guard K`` runs
the package's other guard (the adaptation's ``guard`` parameter, ``recon/adapt.py``): revert to the
base network when, over K rounds, the adapter fitted each new iterate's training entries worse
than the base network. ``--case ct-rounds`` gives the `ct` prior the `phantom` prior's rounds,
which hurt it.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from common import RESULTS, ct_slices, machine
from napari_patchdiff import api
from napari_patchdiff.priors import load_prior
from napari_patchdiff.recon.adapt import AdaptingPrior, adaptation_params
from napari_patchdiff.recon.metrics import psnr

#: the `phantom` prior's recommended rounds (priors/shipped/adaptation.toml)
ROUNDS = {"steps": 3, "every": 3, "lr": 3e-3, "rank": 8, "discrepancy": 0.0}
CASES = {
    # (label, prior, crop rows, adaptation given on top of the package's recommendation)
    "ct-crop": ("CT 20 views, 192 x 256 crop, ct prior", "ct", (32, 224), {}),
    "phantom": ("CT 20 views, 256 x 256, phantom prior", "phantom", None, {}),
    "ct": ("CT 20 views, 256 x 256, ct prior", "ct", None, {}),
    # the phantom prior's rounds with the ct prior, which lost 0.9 dB with them on slice 47
    # (adapt_research.md, one seed)
    "ct-rounds": ("CT 20 views, 256 x 256, ct prior, phantom's rounds", "ct", None, ROUNDS),
    # the rounds with the noise-level stop (discrepancy 1): PnP-ADMM's adapter fitted the data
    # of new iterates 30 times better than the base network and lost 1.2 dB (the guard kept it)
    "ct-rounds-stop": ("CT 20 views, 256 x 256, ct prior, rounds with the noise stop", "ct", None,
                       {**ROUNDS, "discrepancy": 1.0}),
    "phantom-rounds-stop": ("CT 20 views, 256 x 256, phantom prior, rounds with the noise stop",
                            "phantom", None, {**ROUNDS, "discrepancy": 1.0}),
    "ct-crop-rounds": ("CT 20 views, 192 x 256 crop, ct prior, phantom's rounds", "ct",
                       (32, 224), ROUNDS),
}


class Probe(AdaptingPrior):
    """:class:`AdaptingPrior` that logs held-out residuals and PSNRs after each round."""

    def __init__(self, prior, op, y, noise_std, truth, views: bool, **params):
        super().__init__(prior, op, y, noise_std, **params)
        self.truth, self.log = truth, []
        if views:  # whole projection views, evenly spread, the same fraction
            v = self.y.shape[-2]
            k = max(1, round(v * float(params["holdout"])))
            held = torch.zeros(self.y.shape[1:], dtype=torch.bool)
            held[..., torch.linspace(v / (2 * k), v - v / (2 * k), k).long(), :] = True
            self.held_out = held.to(op.device)

    def _overfitting(self, train, held):  # held-out views always fit worse than trained ones
        return False

    def _adapt(self, x, sigma):
        idx = torch.arange(x.shape[0])
        g = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(
            self.calls)))
        super()._adapt(x, sigma)
        if self.reverted:
            return
        with torch.no_grad():
            da = self.inner._denoise(x, sigma, torch.Generator().manual_seed(g))
            db = self.base._denoise(x, sigma, torch.Generator().manual_seed(g))
        ta, ha, _ = (float(v) for v in self._losses(da, idx))
        tb, hb, _ = (float(v) for v in self._losses(db, idx))
        self.log.append({"call": self.calls, "sigma": self.history[-1][0],
                         "fresh_log_ratio": self.fresh[-1] if self.fresh else None,
                         "held_adapted": ha, "held_base": hb,
                         "train_adapted": ta, "train_base": tb,
                         "psnr_adapted": psnr(da[0, 0].numpy(), self.truth),
                         "psnr_base": psnr(db[0, 0].numpy(), self.truth)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="ct-crop", choices=list(CASES))
    ap.add_argument("--slice", type=int, default=47, choices=range(45, 50))
    ap.add_argument("--holdout", default="views", choices=["views", "entries"])
    ap.add_argument("--method", default="dds", choices=["dds", "pnp-admm"])
    ap.add_argument("--guard", type=int, default=0, help="the adaptation's guard (rounds; 0: "
                    "off): revert to the base network when the adapter fits new iterates worse")
    ap.add_argument("--seed", type=int, default=0, help="the method's seed")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    label, prior_name, crop, given = CASES[args.case]
    x = ct_slices([args.slice])[0]
    if crop:
        x = np.ascontiguousarray(x[crop[0]:crop[1]])
    problem = api.simulate(api.truth_from_array(x, modality="unit"), "ct-parallel",
                           noise_std=0.2, seed=0, views=20)
    base = load_prior(prior_name)
    plain = api.solve(problem, args.method, prior=base, seed=args.seed)
    # the operator's values (no method's sub-row: each case names the rounds it runs)
    params = adaptation_params(base, problem.op, problem.noise_std, None,
                               **given, **({"guard": args.guard} if args.guard else {}))
    probe = Probe(base, problem.op, problem.y, problem.noise_std, x,
                  args.holdout == "views", **params)
    t0 = time.perf_counter()
    r = api.solve(problem, args.method, prior=probe, seed=args.seed)
    row = {"psnr_plain": plain.report["psnr"], "psnr_adapted": r.report["psnr"],
           "seconds": time.perf_counter() - t0, "params": params, "stopped": probe.stopped,
           "rounds": probe.log}
    out = RESULTS / "adapt_guard.json"
    data = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    data["machine"] = machine()
    key = f"{label} | slice {args.slice} | {args.method} | held-out {args.holdout}" + (
        f" | guard {args.guard}" if args.guard else "") + (
        f" | seed {args.seed}" if args.seed else "")
    data["runs"][key] = row
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    write_table(data)
    for e in probe.log:
        print(f"{e['call']:3d} s={e['sigma']:.3f} held a/b {e['held_adapted']:.4f}/"
              f"{e['held_base']:.4f} train a/b {e['train_adapted']:.4f}/{e['train_base']:.4f} "
              f"psnr a/b {e['psnr_adapted']:.2f}/{e['psnr_base']:.2f}")


def agreement(rounds: list[dict]) -> int:
    """Rounds where the held-out residual ranks adapted vs base as the truth's PSNR does."""
    return sum((e["held_adapted"] < e["held_base"]) == (e["psnr_adapted"] > e["psnr_base"])
               for e in rounds)


def write_table(data: dict) -> None:
    lines = ["# Can the measurement tell when adaptation hurts? (validation slices only)", "",
             "Generated by `python benchmarks/adapt_guard.py` (do not edit by hand); raw numbers "
             "and every round in adapt_guard.json.", f"Machine: {data['machine']}.", "",
             "Per run: the final PSNR without and with the package's adaptation (the method's "
             "seed 0 unless the run says); per adaptation round, the PSNR of the adapted network's estimate minus the base "
             "network's at the same iterate (mean, min, max over the rounds), and the rounds "
             "where the held-out residual (adapted < base) agrees with that sign; why the "
             "adaptation ended, if it did.", "",
             "| run | plain | adapted | change | per-round gain mean / min / max | held-out "
             "agrees | ended |", "|---|---|---|---|---|---|---|"]
    for key, r in data["runs"].items():
        g = [e["psnr_adapted"] - e["psnr_base"] for e in r["rounds"]]
        run = key.replace(" | ", ", ")
        lines.append(f"| {run} | {r['psnr_plain']:.2f} | {r['psnr_adapted']:.2f} | "
                     f"{r['psnr_adapted'] - r['psnr_plain']:+.2f} | {sum(g) / len(g):+.3f} / "
                     f"{min(g):+.3f} / {max(g):+.3f} | {agreement(r['rounds'])}/{len(g)} | "
                     f"{r['stopped'] or ''} |")
    (RESULTS / "adapt_guard.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'adapt_guard.md'}")


if __name__ == "__main__":
    main()
