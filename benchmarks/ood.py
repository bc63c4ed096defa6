"""Data the priors never saw: out-of-distribution reconstructions -> benchmarks/results/ood.md

    python benchmarks/ood.py [--cases KEY ...] [--rows ROW ...] [--slices 3] [--seeds 1]
                             [--redo] [--table] [--device cpu]

Cases (no default was tuned on any of them): the MRI prior (trained on brain1) on brain2, another
scan, at 4x and 8x, with realistic noise and noiseless; the CT prior and the phantom prior (trained
on synthetic images only) on the lung test slices (lung2 50, 55, 60), 20 views (and 60 views for
the phantom prior); full-resolution
512 x 512 lung slices and a non-square 192 x 256 crop with the CT prior trained at 256 x 256.
Rows: ADMM-TV, DDS and PnP-ADMM (50 evaluations) without and with test-time adaptation, every
method with the package's defaults. Each cell runs in its own process, one slice at a time, so
its seconds and peak memory (resident set) are per slice. Cells are cached in ood.json (a cell
with fewer slices or seeds than asked for runs again; several processes may share the file).

``--seeds N`` runs the diffusion rows with the method's seeds 0..N-1 on every slice: one DDS
sample varies by up to 1.1 dB between seeds on a cropped lung slice (lung2 47: 32.50 / 33.61 /
33.48 / 33.63 dB), so a difference between two rows of one seed each can be that variation
rather than the rows'. The adapted rows then also report their paired difference to the same
method unadapted (same slice, same seed) with its standard error.
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

from common import RESULTS, machine

JSON = RESULTS / "ood.json"
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Case:
    key: str
    data: str  # "brain2", "lung", "lung512", "lung-crop"
    operator: str
    params: dict = field(default_factory=dict)
    noise: float = 0.0
    prior: str = "ct"


CASES = (
    Case("MRI 4x, brain2", "brain2", "mri-cartesian", {"acceleration": 4}, 0.005, "mri"),
    Case("MRI 4x, brain2, noiseless", "brain2", "mri-cartesian", {"acceleration": 4}, 0.0, "mri"),
    Case("MRI 8x, brain2", "brain2", "mri-cartesian", {"acceleration": 8}, 0.005, "mri"),
    Case("CT 20 views, ct prior", "lung", "ct-parallel", {"views": 20}, 0.2, "ct"),
    Case("CT 20 views, phantom prior", "lung", "ct-parallel", {"views": 20}, 0.2, "phantom"),
    Case("CT 20 views, phantom prior, noiseless", "lung", "ct-parallel", {"views": 20}, 0.0,
         "phantom"),
    Case("CT 60 views, phantom prior", "lung", "ct-parallel", {"views": 60}, 0.2, "phantom"),
    # line integrals of a 512 x 512 slice are twice as long (pixel size 1): twice the noise
    Case("CT 20 views, 512 x 512", "lung512", "ct-parallel", {"views": 20}, 0.4, "ct"),
    Case("CT 20 views, 192 x 256 crop", "lung-crop", "ct-parallel", {"views": 20}, 0.2, "ct"),
)
ROWS = {
    "ADMM-TV": ("admm-tv", None),
    "DDS": ("dds", None),
    "DDS, adapted": ("dds", True),
    "PnP-ADMM": ("pnp-admm", None),
    "PnP-ADMM, adapted": ("pnp-admm", True),
}
BRAIN2 = [5, 11, 17]
LUNG = [50, 55, 60]


def images(case: Case, n: int) -> np.ndarray:
    """The case's test images on the normalised scale (n, H, W)."""
    from common import ct_slices, mri_slices

    if case.data == "brain2":
        return mri_slices("brain2", BRAIN2[:n])
    if case.data == "lung":
        return ct_slices(LUNG[:n])
    if case.data == "lung-crop":
        return np.ascontiguousarray(ct_slices(LUNG[:n])[:, 32:224, :])
    import tifffile

    from common import DATA
    from napari_patchdiff.conventions import hu_to_unit

    return hu_to_unit(tifffile.imread(DATA / "lung2.tif")[LUNG[:n]].astype(np.float32))


def run_one(case_key: str, row: str, index: int, n: int, device: str, threads: int,
            seed: int = 0) -> dict:
    """One slice of one cell, in this process (the child)."""
    import torch

    from napari_patchdiff import api
    from napari_patchdiff.recon.metrics import psnr, ssim

    torch.set_num_threads(threads)
    case = next(c for c in CASES if c.key == case_key)
    method, adapt = ROWS[row]
    x = images(case, n)[index]
    truth = api.truth_from_array(x, modality="unit")
    problem = api.simulate(truth, case.operator, noise_std=case.noise, seed=0, device=device,
                           **case.params)
    kw = {}
    if method != "admm-tv":
        kw["prior"] = _prior(case.prior, device)
        kw["seed"] = seed
        if adapt:
            kw["adapt"] = True
    t0 = time.perf_counter()
    result = api.solve(problem, method, **kw)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    out = {"psnr": psnr(result.recon, x), "ssim": ssim(result.recon, x),
           "seconds": time.perf_counter() - t0, "shape": list(x.shape), "slice": index,
           "seed": seed}
    if "adaptation" in result.report:
        a = result.report["adaptation"]
        out["adaptation"] = {k: a[k] for k in ("params", "calls", "evaluations", "loss_first",
                                               "loss_last", "stopped")}
    if device.startswith("cuda"):
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _prior(name: str, device: str):
    from napari_patchdiff.priors import load_prior

    return load_prior(name, device=device)


def run_cell(case: Case, row: str, n: int, device: str, threads: int, seeds: int = 1,
             done: list | None = None, done_seeds: int = 1) -> dict:
    """A cell: each slice and seed in a child process, which reports its own peak resident
    memory; the runs in ``done`` (a cached cell's of ``done_seeds`` seeds, same slice and seed)
    are kept, with their slice and seed written in."""
    have = {_run_key(p, j, done_seeds): p for j, p in enumerate(done or [])}
    per = []
    for i in range(n):
        for seed in range(seeds):
            if (i, seed) in have:
                per.append({**have[(i, seed)], "slice": i, "seed": seed})
                continue
            cmd = [sys.executable, str(HERE / "ood.py"), "--child", case.key, row, str(i),
                   str(n), "--seed", str(seed), "--device", device, "--threads", str(threads)]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=HERE)
            if proc.returncode:
                raise RuntimeError(f"{case.key} / {row} slice {i} seed {seed} failed")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["peak_mib"] = res.pop("peak_mib_self")
            per.append(res)
    cell = {k: float(np.mean([p[k] for p in per])) for k in ("psnr", "ssim", "seconds",
                                                                "peak_mib")}
    cell.update(slices=n, seeds=seeds, per_slice=per)
    return cell


def _run_key(run: dict, position: int, seeds: int = 1) -> tuple[int, int]:
    """(slice, seed) of a run of a cell of ``seeds`` seeds; a run recorded before seeds were has
    neither, and sits where :func:`run_cell` fills it in: ``slice * seeds + seed``."""
    return (int(run.get("slice", position // seeds)), int(run.get("seed", position % seeds)))


def paired(adapted: dict, plain: dict) -> tuple[float, float, int] | None:
    """Mean and standard error of adapted - plain PSNR over the runs both cells hold (same
    slice, same seed), and their number; None where they share none."""
    a = {_run_key(p, j, adapted.get("seeds", 1)): p["psnr"]
         for j, p in enumerate(adapted["per_slice"])}
    b = {_run_key(p, j, plain.get("seeds", 1)): p["psnr"]
         for j, p in enumerate(plain["per_slice"])}
    d = np.array([a[k] - b[k] for k in sorted(a.keys() & b.keys())])
    if d.size == 0:
        return None
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
    return float(d.mean()), se, int(d.size)


def table(data: dict) -> None:
    cells = data["cells"]
    lines = ["# Out of distribution: data no prior and no default saw", "",
             "Generated by `python benchmarks/ood.py` (do not edit by hand); raw numbers in "
             "ood.json.", f"Machine of the last run: {data.get('machine', '?')}. Each case "
             "says which of its rows ran on which machine where the cell recorded it (since "
             "2026-12-08; the precision is `auto`: bfloat16 on a CPU with bfloat16 "
             "instructions).", "",
             "Package defaults throughout (50 evaluations; adaptation with its defaults). Test "
             "images: MRI brain2 slices 5, 11, 17 (the MRI prior saw only brain1); CT lung2 "
             "slices 50, 55, 60 (the test split), at 256 x 256, at full resolution 512 x 512 "
             "(noise doubled: line integrals are twice as long) and cropped to 192 x 256 rows x "
             "columns; the `phantom` prior saw only synthetic images. Cells: PSNR (dB) / SSIM, "
             "difference to ADMM-TV, seconds and peak resident memory (MiB) per slice; "
             "'runs': slices x seeds of the method (a diffusion sample varies between seeds); "
             "'vs unadapted': the adapted row minus the same method unadapted, paired by slice "
             "and seed, mean +- standard error over the pairs.", ""]
    for case in CASES:
        tv = cells.get(f"{case.key} | ADMM-TV")
        lines += [f"## {case.key} (noise {case.noise:g}, prior `{case.prior}`)", "",
                  "| row | PSNR / SSIM | vs ADMM-TV | vs unadapted | s / slice | peak MiB | runs |",
                  "|---|---|---|---|---|---|---|"]
        where: dict[str | None, list[str]] = {}  # machine -> its rows (None: not recorded)
        for row in ROWS:
            c = cells.get(f"{case.key} | {row}")
            if c is None:
                continue
            where.setdefault(c.get("machine"), []).append(row)
            d = "" if tv is None or row == "ADMM-TV" else f"{c['psnr'] - tv['psnr']:+.2f}"
            plain = cells.get(f"{case.key} | {row.removesuffix(', adapted')}")
            pair = paired(c, plain) if row.endswith("adapted") and plain else None
            u = "" if pair is None else (f"{pair[0]:+.2f}" if pair[2] == 1 else
                                         f"{pair[0]:+.2f} +- {pair[1]:.2f} ({pair[2]})")
            runs = f"{c['slices']} x {c.get('seeds', 1)}"
            lines.append(f"| {row} | {c['psnr']:.2f} / {c['ssim']:.3f} | {d} | {u} | "
                         f"{c['seconds']:.1f} | {c['peak_mib']:.0f} | {runs} |")
        if any(m is not None for m in where):
            unknown = "not recorded (an earlier run)"
            lines += [""] + [f"Machine of {', '.join(rows)}: {m or unknown}."
                             for m, rows in where.items()]
        lines.append("")
    (RESULTS / "ood.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'ood.md'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="*", default=[c.key for c in CASES])
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--slices", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=1, help="seeds of the diffusion rows per "
                    "slice (ADMM-TV has none)")
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # a child's
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--redo", action="store_true")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import resource

        key, row, i, n = args.child
        out = run_one(key, row, int(i), int(n), args.device, args.threads, args.seed)
        out["peak_mib_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return
    data = json.loads(JSON.read_text()) if JSON.exists() else {"cells": {}}
    if not args.table:
        import torch

        torch.set_num_threads(args.threads)  # as in the children, so machine() says so
        data["machine"] = machine(args.device)
        for case in [c for c in CASES if c.key in args.cases]:
            n = 1 if case.data == "lung512" else args.slices
            for row in args.rows:
                key = f"{case.key} | {row}"
                seeds = 1 if row == "ADMM-TV" else args.seeds
                cached = data["cells"].get(key)
                if (cached is not None and cached["slices"] >= n
                        and cached.get("seeds", 1) >= seeds and not args.redo):
                    continue
                keep = None if args.redo or cached is None else cached["per_slice"]
                c = run_cell(case, row, n, args.device, args.threads, seeds, keep,
                             1 if cached is None else cached.get("seeds", 1))
                # several processes may fill ood.json at once (--cases / --rows split between
                # them): each re-reads it before adding its cell
                data = json.loads(JSON.read_text()) if JSON.exists() else data
                data["machine"] = machine(args.device)
                data["cells"][key] = {**c, "machine": data["machine"]}
                print(f"{key}: {c['psnr']:.2f} dB, {c['seconds']:.1f} s/slice, "
                      f"{c['peak_mib']:.0f} MiB", flush=True)
                JSON.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    table(data)


if __name__ == "__main__":
    main()
