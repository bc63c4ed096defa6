"""Which adaptation gains? Variants of test-time adaptation on a validation slice
-> benchmarks/results/adapt_research.md

    python benchmarks/adapt_research.py [--variants none default warm40 ...] [--threads 2]

Issue 32: today's adaptation (one Adam step per denoiser call, stopped at the noise level after
~40 calls) moves DDS by -0.2 to +0.3 dB. The papers adapt in rounds of several steps (SCD), with
data consistency inside the loss (DDIP), larger adapters, and nothing stops them at the noise
level. This script tries those ingredients one at a time and together, on the validation slice
only (lung2 slice 47, 20-view CT, noise 0.2, the `phantom` prior trained on synthetic images),
never on the test slices of ood.py. Each variant is a dict of :data:`ADAPT_PARAMS` values plus the
research-only keys below, run by :class:`Variant` (a subclass, so the package is unchanged until a
variant wins):

Keys that became package parameters (``ADAPT_PARAMS``: ``every``, ``tv``, ``discrepancy``) are
passed on; ``stop: False`` means ``discrepancy`` 0. The research-only keys:

- ``warmup``: Adam steps on the adapter before sampling, on noisy copies ``x_ref + sigma z`` of
  the ADMM-TV reconstruction (sigma log-uniform in ``warm_sigma``), loss ``||y - A D(.)||^2`` on
  the training entries of the measurement;
- ``until``: adapt during this fraction of the denoiser calls only (the first ones), then freeze;
- ``method``: the method's parameters (else its defaults); ``none``: no adaptation (a baseline
  for ``method``);
- ``full``: train every weight of (a copy of) the network instead of low-rank adapters (the
  patch TTA paper refines the whole network);
- ``passes``: 2 reconstructs twice, the second time from fresh noise with the adapter the
  first pass trained, frozen (the time is both passes').

Several processes may run at once (``--variants`` split between them): each re-reads the JSON
before writing its row.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from common import RESULTS, ct_slices, machine, mri_slices
from napari_patchdiff import api
from napari_patchdiff.priors import load_prior
from napari_patchdiff.recon.adapt import ADAPTATION, AdaptingPrior

CASES = {
    "phantom": ("CT 20 views, lung2 slice 47, phantom prior", "ct-parallel", {"views": 20}, 0.2,
                "phantom"),
    "mri": ("MRI 4x, brain2 slice 2, mri prior", "mri-cartesian", {"acceleration": 4}, 0.005,
            "mri"),
    "ct": ("CT 20 views, lung2 slice 47, ct prior", "ct-parallel", {"views": 20}, 0.2, "ct"),
    "phantom-noiseless": ("CT 20 views noiseless, lung2 slice 47, phantom prior", "ct-parallel",
                          {"views": 20}, 0.0, "phantom"),
    "phantom60": ("CT 60 views, lung2 slice 47, phantom prior", "ct-parallel", {"views": 60},
                  0.2, "phantom"),
}

VARIANTS = {
    "none": None,
    "default": {},
    "nostop": {"stop": False},
    "rounds": {"steps": 3, "every": 3, "stop": False, "lr": 3e-3, "rank": 8},
    "warm40": {"warmup": 40, "lr": 1e-3, "rank": 8, "stop": False, "freeze": True},
    "warm40lr3": {"warmup": 40, "lr": 3e-3, "rank": 8, "stop": False, "freeze": True},
    "warm40+rounds": {"warmup": 40, "steps": 3, "every": 3, "lr": 3e-3, "rank": 8,
                      "stop": False},
    "warm80lr3": {"warmup": 80, "lr": 3e-3, "rank": 8, "stop": False, "freeze": True},
    "warm40lr3cg": {"warmup": 40, "lr": 3e-3, "rank": 8, "stop": False, "freeze": True,
                    "cg": 3},
    "warm40lr3tv": {"warmup": 40, "lr": 3e-3, "rank": 8, "stop": False, "freeze": True,
                    "tv": 0.02},
    "warm40lr1e2": {"warmup": 40, "lr": 1e-2, "rank": 8, "stop": False, "freeze": True},
    "rounds5x2": {"steps": 5, "every": 2, "stop": False, "lr": 3e-3, "rank": 8},
    "rounds-lr1e2": {"steps": 3, "every": 3, "stop": False, "lr": 1e-2, "rank": 8},
    # the rounds above with the other papers' ingredients, one at a time
    "rounds-cg3": {"steps": 3, "every": 3, "stop": False, "lr": 3e-3, "rank": 8, "cg": 3},
    "rounds-tv0.1": {"steps": 3, "every": 3, "stop": False, "lr": 3e-3, "rank": 8, "tv": 0.1},
    "rounds-tv0.5": {"steps": 3, "every": 3, "stop": False, "lr": 3e-3, "rank": 8, "tv": 0.5},
    "rounds-r16": {"steps": 3, "every": 3, "stop": False, "lr": 3e-3, "rank": 16},
    "rounds-r4": {"steps": 3, "every": 3, "stop": False, "lr": 3e-3, "rank": 4},
    "rounds-every5": {"steps": 3, "every": 5, "stop": False, "lr": 3e-3, "rank": 8},
    "rounds-lr1e3x5": {"steps": 5, "every": 3, "stop": False, "lr": 1e-3, "rank": 8},
    "rounds-2pass": {"steps": 3, "every": 3, "stop": False, "lr": 3e-3, "rank": 8,
                     "passes": 2},
    # the papers sample from pure noise, where the adapter can shape the image's structure;
    # the package's DDS starts from the FBP plus noise at 0.3 (tuned for the ct prior)
    "noise-start": {"method": {"start": "noise", "sigma_max": 10.0}, "none": True},
    "noise-start-rounds": {"steps": 3, "every": 3, "stop": False, "lr": 3e-3, "rank": 8,
                           "method": {"start": "noise", "sigma_max": 10.0}},
    "full-rounds": {"steps": 3, "every": 3, "stop": False, "lr": 1e-4, "full": True},
    "full-rounds-lr3e4": {"steps": 3, "every": 3, "stop": False, "lr": 3e-4, "full": True},
    "full-rounds-lr3e5": {"steps": 3, "every": 3, "stop": False, "lr": 3e-5, "full": True},
    "long150-none": {"method": {"nfe": 150}, "none": True},
    "long150-rounds": {"steps": 3, "every": 3, "stop": False, "lr": 1e-3, "rank": 8,
                       "method": {"nfe": 150}},
    # the guard (adapt.py, ``guard``): revert to the base network when the adapter fits new
    # iterates worse than it over 5 rounds (adapt_guard.py)
    "rounds-guard5": {"steps": 3, "every": 3, "stop": False, "lr": 3e-3, "rank": 8, "guard": 5},
    "default-guard5": {"guard": 5},
    # the gentle default at smaller learning rates (DDS with the phantom prior at step 10,000)
    "default-lr3e4": {"lr": 3e-4},
    "default-lr1e4": {"lr": 1e-4},
    # half the adapter steps (every 2nd call): bfloat16 makes the network 2x as fast but not
    # the adapter's backward pass, so adapted DDS took 5.8x the unadapted run there
    "default-lr3e4-every2": {"lr": 3e-4, "every": 2},
    "default-lr6e4-every2": {"lr": 6e-4, "every": 2},
    "rounds-first": {"steps": 3, "every": 3, "stop": False, "lr": 3e-3, "rank": 8,
                     "until": 0.5},
}
EXTRA = {"warmup": 0, "freeze": False, "warm_sigma": (0.02, 0.3), "until": 1.0, "passes": 1,
         "method": {}, "none": False, "full": False}


def _count(row: dict) -> str:
    """The adapter evaluations of a row ('not recorded' for the runs whose counter was read
    from a copy of the adapting prior before that was fixed)."""
    if row.get("unrecorded"):
        return "not recorded"
    return str(row.get("evaluations", ""))


def package_params(setting: dict) -> dict:
    """A variant's values for :data:`ADAPT_PARAMS` (the research names that became package
    parameters: ``stop: False`` is ``discrepancy 0``)."""
    given = {k: v for k, v in setting.items() if k not in EXTRA and k != "stop"}
    if setting.get("stop") is False:
        given["discrepancy"] = 0.0
    return given


class Variant(AdaptingPrior):
    """:class:`AdaptingPrior` with the research keys of the module docstring."""

    def __init__(self, prior, op, y, noise_std, x_ref, extra, **params):
        super().__init__(prior, op, y, noise_std, **params)
        self.extra, self.x_ref, self.warm_log = extra, x_ref, []
        if extra["full"]:  # every weight of a copy of the network trains, no adapters
            import copy

            net = copy.deepcopy(prior.denoiser).requires_grad_(True)
            self.inner.denoiser = net
            self.adapters = list(net.parameters())
            self.optimizer = torch.optim.Adam(self.adapters, lr=float(params["lr"]))
        self.total = 50  # denoiser calls of DDS and PnP-ADMM at their defaults

    def _warmup(self) -> None:
        lo, hi = self.extra["warm_sigma"]
        for k in range(int(self.extra["warmup"])):
            u = float(torch.rand((), generator=self.generator))
            sigma = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
            z = torch.randn(self.x_ref.shape, generator=self.generator)
            x = self.x_ref + sigma * z
            grid = int(torch.randint(0, 2**62, (1,), generator=self.generator))
            with torch.enable_grad():
                d = self.inner._denoise(x, torch.tensor([sigma]),
                                        torch.Generator().manual_seed(grid))
                train, held, penalty = self._losses(d, torch.zeros(1, dtype=torch.long))
                self.optimizer.zero_grad(set_to_none=True)
                (train + penalty).backward()
                self.optimizer.step()
            self.evaluations += 1
            self.warm_log.append((sigma, float(train), float(held)))

    def _denoise(self, x, sigma, generator):
        if self.calls == 0 and self.extra["warmup"]:
            self._warmup()
            if self.extra["freeze"]:
                self.stopped = "frozen after the warm-up"
        if self.extra["until"] < 1.0 and self.calls >= self.extra["until"] * self.total:
            self.stopped = self.stopped or f"frozen after {self.extra['until']:g} of the calls"
        return super()._denoise(x, sigma, generator)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="phantom", choices=list(CASES))
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--methods", nargs="*", default=["dds"], choices=["dds", "pnp-admm"])
    ap.add_argument("--slice", type=int, help="another validation slice (CT: lung2 45-49, "
                    "the gap between the training and test slices; MRI: brain2 0-4)")
    ap.add_argument("--seed", type=int, default=0, help="the method's seed: one DDS sample "
                    "varies by up to 1.1 dB between seeds (ood.py's docstring), more than most "
                    "differences between variants, so compare variants over several seeds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prior", help="another checkpoint in place of the case's prior (e.g. a "
                    "longer-trained phantom prior); its name joins the case label")
    ap.add_argument("--redo", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = RESULTS / "adapt_research.json"
    data = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    data["machine"] = machine()
    label, operator, params, noise, prior_name = CASES[args.case]
    default_slice = 2 if args.case == "mri" else 47
    if args.slice is not None and args.slice != default_slice:
        label = label.replace(f"slice {default_slice}", f"slice {args.slice}")
    if args.prior:
        prior_name = args.prior
        label = f"{label}, checkpoint {Path(args.prior).name}"
    index = default_slice if args.slice is None else args.slice
    x = mri_slices("brain2", [index])[0] if args.case == "mri" else ct_slices([index])[0]
    problem = api.simulate(api.truth_from_array(x, modality="unit"), operator,
                           noise_std=noise, seed=0, **params)
    ref = api.solve(problem, "admm-tv")
    data["runs"][f"{label} | ADMM-TV"] = {"psnr": ref.report["psnr"]}
    x_ref = torch.as_tensor(ref.recon, dtype=torch.float32).reshape(1, 1, *ref.recon.shape[-2:])
    for method in args.methods:
        for name in args.variants:
            key = f"{label} | {method} | {name}" + (f" | seed {args.seed}" if args.seed else "")
            if key in data["runs"] and not args.redo:
                continue
            prior = load_prior(prior_name)
            setting = VARIANTS[name]
            extra = {**EXTRA, **{k: v for k, v in (setting or {}).items() if k in EXTRA}}
            if setting is not None and extra["none"]:
                setting = None
            if setting is not None:
                given = package_params(setting)
                resolved = ADAPTATION.resolve(problem.op, problem.noise_std, **given)
                prior = Variant(prior, problem.op, problem.y, problem.noise_std, x_ref, extra,
                                **resolved)
            t0 = time.perf_counter()
            r = api.solve(problem, method, prior=prior, seed=args.seed, **extra["method"])
            if setting is not None and extra["passes"] == 2:
                prior.stopped = "frozen for the second pass"
                r = api.solve(problem, method, prior=prior, seed=args.seed, **extra["method"])
            seconds = time.perf_counter() - t0
            row = {"psnr": r.report["psnr"], "ssim": r.report["ssim"], "seconds": seconds,
                   "setting": VARIANTS[name]}
            if setting is not None:
                row.update(evaluations=prior.evaluations, stopped=prior.stopped,
                           calls=len(prior.history),
                           warm_first=prior.warm_log[0] if prior.warm_log else None,
                           warm_last=prior.warm_log[-1] if prior.warm_log else None)
            data = json.loads(out.read_text()) if out.exists() else data  # others' rows
            data["machine"] = machine()
            data["runs"][f"{label} | ADMM-TV"] = {"psnr": ref.report["psnr"]}
            data["runs"][key] = row
            print(key, round(r.report["psnr"], 3), f"{seconds:.0f} s", flush=True)
            out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    lines = ["# Which adaptation gains? (validation slice only)", "",
             "Generated by `python benchmarks/adapt_research.py` (do not edit by hand); raw "
             "numbers in adapt_research.json; the variants are defined in the script.",
             f"Machine: {data['machine']}.", "",
             "Rows naming the `phantom` prior without a checkpoint ran with its first version "
             "(3,400 steps on 400 untextured phantoms); `checkpoint textured-sN` rows with the "
             "textured continuation at step N (the shipped prior is its step 10,000 checkpoint "
             "since 2026-12-08, step 5,100 before; `scripts/train_phantom_prior.py`). The "
             "step 10,000 rows ran at `precision=\"auto\"` on a CPU with AVX-512 BF16, so in "
             "bfloat16; the step 5,100 rows in float32 (a CPU without bfloat16 instructions).", "",
             "| case | method | variant | setting | PSNR (dB) | SSIM | s | adapter evaluations "
             "| stopped |", "|---|---|---|---|---|---|---|---|---|"]
    for key, r in data["runs"].items():
        parts = key.split(" | ")
        if len(parts) == 4:  # another seed of the method
            parts[2] = f"{parts[2]} ({parts[3]})"
        if len(parts) == 2:
            lines.append(f"| {parts[0]} | {parts[1]} | | | {r['psnr']:.2f} | | | | |")
            continue
        lines.append(f"| {parts[0]} | {parts[1]} | {parts[2]} | `{json.dumps(r['setting'])}` | "
                     f"{r['psnr']:.2f} | {r['ssim']:.3f} | {r['seconds']:.0f} | "
                     f"{_count(r)} | {r.get('stopped') or ''} |")
    (RESULTS / "adapt_research.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'adapt_research.md'}")


if __name__ == "__main__":
    main()
