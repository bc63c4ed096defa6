"""Speed of one 20-view CT reconstruction with the shipped prior -> benchmarks/results/speed.md.

    python benchmarks/speed.py [--prior ct] [--method dds] [--threads 2] [--device cpu]

(``--device cuda`` writes speed_cuda.md / .json instead.)

    python benchmarks/speed.py --compare REF [--method dds pnp-admm] [--volume D] [--rounds 3]

writes speed_compare.md / .json (``--output NAME``: NAME.md / .json): the same jobs timed with the code of git revision ``REF``
(checked out into a temporary worktree) and with this tree, each job in its own process,
alternating (REF, this, REF, this, ...) so that a drift of the machine's load falls on both;
the ratio REF / this of the median seconds, and the PSNR of each (equal quality is part of a
speed claim). ``--this-precision bfloat16`` runs this tree's prior in bfloat16 (``REF`` may
be ``HEAD``: then the ratio is that of the precision alone); ``--this-precision float32
bfloat16`` times this tree at both, beside REF, in the same run. ``--volume D``: a D-slice
volume (lung2 50...) instead of one slice, in the default windows of slices (without
``--compare``: this tree only, printed as JSON).

    python benchmarks/speed.py --throughput 16 64 [--nfe N] [--method dds pnp-admm]
        [--precision float32 auto] [--batch B ...] [--max-batch M ...] [--threads 2]
        [--device cpu]

writes speed_volume.md / .json (speed_volume_cuda.* on CUDA; ``--output NAME``: NAME.*): for
each depth a D-slice volume in its own process, with slices per second, seconds per network
evaluation per slice, peak memory and the window of slices it ran in (see speed_volume.py).
lung2 has 61 slices: a D-slice volume is the test slices 50-60 mirrored back and forth
(50, 51, ..., 60, 59, ..., 50, 51, ...; :func:`volume_slices`), the first 11 as before.

One 256 x 256 slice (lung2 55), 20 views, noise 0.2, the method's default evaluations. Reports
wall seconds, network evaluations, seconds per evaluation, the network's GFLOP per evaluation
(torch.utils.flop_counter on one assembled denoiser call), the achieved GFLOP/s of the network
(timed alone) and of the whole run, beside the machine's float32 matrix-multiply GFLOP/s
measured in the same run with the same threads.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import CT_TEST, RESULTS, ct_slices, machine
from napari_patchdiff import api
from napari_patchdiff.priors import load_prior


def matmul_gflops(device, n=2048, repeats=10, dtype=torch.float32) -> float:
    """GFLOP/s of ``repeats`` ``n x n`` matrix products in ``dtype`` on ``device``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


HERE = Path(__file__).resolve().parent
#: the methods that take a prior
DIFFUSION = ("dds", "dps", "padis", "langevin", "pnp-admm")


def volume_slices(depth: int, first: int = CT_TEST[0], last: int = CT_TEST[-1]) -> list[int]:
    """The lung2 slices of a ``depth``-slice volume: ``first..last`` (the test slices 50-60),
    mirrored back and forth as often as ``depth`` needs (lung2 has 61 slices): 50, ..., 60,
    59, ..., 50, 51, ... Neighbours stay neighbours, so a coupling along z sees anatomy."""
    period = 2 * (last - first)
    return [first + (i % period if i % period <= last - first else period - i % period)
            for i in range(depth)]


def _peak_rss_gib() -> float:
    """This process's peak resident memory (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def _window(depth: int, batch: int | None, used: dict) -> dict:
    """The windows of slices a ``depth``-slice run went through (as recon/runs.py cuts them;
    ``{}`` with code that predates them, e.g. REF's in ``--compare``)."""
    try:
        from napari_patchdiff.recon.runs import _coupled_overlap
        from napari_patchdiff.recon.volumes import VOLUME_BATCH, windows
    except ImportError:
        return {}

    batch = VOLUME_BATCH if batch is None else batch
    if depth <= batch:
        return {"batch": batch, "overlap": 0, "windows": 1, "computed_slices": depth}
    parts = windows(depth, batch, _coupled_overlap(used))
    return {"batch": batch, "overlap": _coupled_overlap(used), "windows": len(parts),
            "computed_slices": sum(w.stop - w.start for w in parts)}


def child(args) -> None:
    """One timed job in this process: prints ``{"seconds", "psnr", "package", ...}`` as JSON
    (with ``--volume``: also the evaluations, precision, windows and peak memory)."""
    import napari_patchdiff

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # --max-batch: patches per network call (0: all of a call at once); else load_prior's own
    extra = {"max_batch": args.max_batch[0] or None} if args.max_batch else {}
    prior = load_prior(args.prior, device=device, **extra)
    slices = [args.slice] if not args.volume else volume_slices(args.volume)
    x = ct_slices(slices)
    truth = api.truth_from_array(x[0] if len(slices) == 1 else x,
                                 {"spacing": (5.0, 1.0, 1.0)} if len(slices) > 1 else None,
                                 modality="unit")
    problem = api.simulate(truth, "ct-parallel", noise_std=0.2, seed=0, views=20, device=device)
    t0 = time.perf_counter()
    kw = {"prior": prior} if args.child in DIFFUSION else {}
    if args.precision and args.precision[0] != "default":
        kw["precision"] = args.precision[0]
    if args.nfe:
        kw["nfe"] = args.nfe
    batch = args.batch[0] if args.batch else None
    if batch:  # only when asked: REF's api.solve (--compare) may predate it
        kw["batch"] = batch
    result = api.solve(problem, args.child, **kw)
    _sync(device)
    r = result.report
    out = {"seconds": time.perf_counter() - t0, "psnr": r["psnr"],
           "package": str(Path(napari_patchdiff.__file__).parent)}
    if args.volume:
        out.update(slices=slices, nfe=r["nfe"], nfe_per_slice=r["method_params"].get("nfe"),
                   precision=r.get("prior", {}).get("precision"),
                   precision_reason=r.get("prior", {}).get("precision_reason"),
                   max_batch=getattr(prior, "max_batch", None), peak_rss_gib=_peak_rss_gib(),
                   **_window(len(slices), batch, r["method_params"]))
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(out))


def compare(args) -> None:
    """Time ``args.method`` jobs with the code at ``args.compare`` and with this tree."""
    torch.set_num_threads(args.threads)  # as the children: machine() reports it
    repo = HERE.parent
    ref = subprocess.run(["git", "rev-parse", "--short", args.compare], cwd=repo, check=True,
                         capture_output=True, text=True).stdout.strip()
    here = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=repo, capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "ref"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), ref], cwd=repo,
                       check=True, capture_output=True)
        try:
            # B: this tree once per --this-precision (or once at the defaults)
            sides = [("ref", tree, args.ref_precision)] + [
                (f"this ({prec})" if prec else "this", repo, prec)
                for prec in (args.this_precision or [None])]
            runs = {m: {side: [] for side, _, _ in sides} for m in args.method}
            slices = [0] if args.volume else args.slices
            for r in range(args.rounds):
                for m, sl in [(m, sl) for m in args.method for sl in slices]:
                    for side, root, prec in sides:
                        cmd = [sys.executable, str(HERE / "speed.py"), "--child", m,
                               "--threads", str(args.threads), "--device", args.device,
                               "--prior", args.prior, "--volume", str(args.volume),
                               "--slice", str(sl)]
                        if prec:
                            cmd += ["--precision", prec]
                        env = dict(os.environ, PYTHONPATH=str(root))
                        out = subprocess.run(cmd, env=env, check=True, capture_output=True,
                                             text=True).stdout.strip().splitlines()[-1]
                        res = json.loads(out)
                        if Path(res["package"]).resolve() != (root / "napari_patchdiff").resolve():
                            raise SystemExit(f"{side} imported {res['package']}, not {root}")
                        runs[m][side].append({**res, "round": r, "slice": sl})
                        print(r, m, side, res, flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=repo,
                           capture_output=True)
    job = (f"a {args.volume}-slice volume (lung2 50-{49 + args.volume})" if args.volume
           else f"256 x 256 slices (lung2 {', '.join(map(str, args.slices))}), one per run")
    ref_label = args.compare + (f" ({args.ref_precision})" if args.ref_precision else "")
    out = {"machine": machine(args.device), "ref": ref, "this": here + ("+" if dirty else ""),
           "threads": args.threads, "job": job, "rounds": args.rounds, "runs": runs}
    (RESULTS / f"{args.output}.json").write_text(json.dumps(out, indent=1))
    lines = ["# Speed, side by side: two versions of the code in one run", "",
             "Generated by `python benchmarks/speed.py " + " ".join(sys.argv[1:])
             + "` (do not edit by hand).",
             f"Machine: {out['machine']}. Job: {job}, 20 views, noise 0.2, the shipped prior "
             f"`{args.prior}`, each method's defaults; each run in its own process, the two "
             f"versions alternating, {args.rounds} rounds.", "",
             f"A: {ref_label} = {ref}; B: this tree = {out['this']}, at the precision in the "
             "B column (the default: float32). Seconds: the median over rounds of the seconds "
             "summed over the slices; PSNR: the mean over the slices (dB).", "",
             "| method | B | seconds A | seconds B | ratio A / B | PSNR A | PSNR B | PSNR B - A |",
             "|---|---|---|---|---|---|---|---|"]

    def per_round(rows):
        return statistics.median(sum(x["seconds"] for x in rows if x["round"] == k)
                                 for k in range(args.rounds))

    def psnr(rows):
        return statistics.mean(x["psnr"] for x in rows if x["round"] == 0)

    for m, r in runs.items():
        a, pa = per_round(r["ref"]), psnr(r["ref"])
        for side, rows in r.items():
            if side == "ref":
                continue
            b, pb = per_round(rows), psnr(rows)
            label = side.removeprefix("this").strip(" ()") or "defaults"
            lines.append(f"| {m} | {label} | {a:.1f} | {b:.1f} | {a / b:.2f} | {pa:.2f} | "
                         f"{pb:.2f} | {pb - pa:+.3f} |")
    (RESULTS / f"{args.output}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default="ct")
    parser.add_argument("--method", default=None, nargs="+",
                        help="method(s) (default dds; with --compare: dds pnp-admm)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compare", metavar="REF", help="a git revision to time against")
    parser.add_argument("--volume", type=int, default=0, metavar="D",
                        help="with --compare: a D-slice volume instead of one slice")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=None, metavar="NAME",
                        help="with --compare or --throughput: write benchmarks/results/NAME.md "
                             "/ .json (default speed_compare; speed_volume[_cuda])")
    parser.add_argument("--throughput", type=int, nargs="+", metavar="D",
                        help="the volume throughput table: a D-slice volume per depth, each in "
                             "its own process (speed_volume.py)")
    parser.add_argument("--nfe", type=int, default=None, metavar="N",
                        help="with --throughput or --volume: N network evaluations instead of "
                             "the method's default (the table says so)")
    parser.add_argument("--batch", type=int, nargs="+", default=None, metavar="B",
                        help="with --throughput or --volume: slices per window (default "
                             "recon/volumes.py VOLUME_BATCH); several: one row each")
    parser.add_argument("--max-batch", type=int, nargs="+", default=None, metavar="M",
                        help="with --throughput or --volume: patches per network call (0: all "
                             "of a call at once; default load_prior's); several: one row each")
    parser.add_argument("--slices", type=int, nargs="+", default=[55],
                        help="with --compare: the test slices (lung2), one run each")
    parser.add_argument("--ref-precision", choices=("float32", "bfloat16"),
                        help="with --compare: the prior's precision in REF's runs")
    parser.add_argument("--this-precision", choices=("float32", "bfloat16"), nargs="+",
                        help="with --compare: the prior's precision(s) in this tree's runs "
                             "(several: one B column each, all in the same run)")
    parser.add_argument("--slice", type=int, default=55, help=argparse.SUPPRESS)
    parser.add_argument("--precision", nargs="+", default=None,
                        help="with --throughput or --volume: the prior's precision (float32, "
                             "bfloat16, auto; default: the API's); several: one row each")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.compare:
        args.method = args.method or ["dds", "pnp-admm"]
        args.output = args.output or "speed_compare"
        return compare(args)
    if args.throughput:
        from speed_volume import throughput

        args.method = args.method or ["dds"]
        return throughput(args)
    args.method = (args.method or ["dds"])[0]
    if args.volume:  # this tree only: seconds and PSNR of the volume job
        args.child = args.method
        return child(args)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    prior = load_prior(args.prior, device=device)
    truth = api.truth_from_array(ct_slices([55])[0], modality="unit")
    problem = api.simulate(truth, "ct-parallel", noise_std=0.2, seed=0, views=20, device=device)
    x = problem.truth_batch + 0.1 * torch.randn_like(problem.truth_batch)

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        prior.denoise(x, 0.1, generator=torch.Generator().manual_seed(0))
    gflop = counter.get_total_flops() / 1e9
    with torch.no_grad():  # the network alone, warm
        prior.denoise(x, 0.1)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(5):
            prior.denoise(x, 0.1)
        _sync(device)
        net_s = (time.perf_counter() - t0) / 5
    mm = matmul_gflops(device)

    t0 = time.perf_counter()
    result = api.solve(problem, args.method, prior=prior)
    _sync(device)
    wall = time.perf_counter() - t0
    r = result.report
    nfe = r["nfe"]
    out = {"machine": machine(device), "device": str(device), "method": args.method,
           "prior": args.prior, "prior_steps": prior.metadata.get("steps"),
           "params": r["method_params"], "seconds": wall, "nfe": nfe, "s_per_eval": wall / nfe,
           "gflop_per_eval": gflop, "network_s_per_eval": net_s,
           "network_gflops": gflop / net_s, "run_gflops": gflop * nfe / wall,
           "matmul_gflops": mm, "psnr": r["psnr"], "ssim": r["ssim"]}
    stem = "speed" if device.type == "cpu" else f"speed_{device.type}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1, default=str))
    lines = [
        "# Speed of one reconstruction",
        "",
        "Generated by `python benchmarks/speed.py` (do not edit by hand).",
        f"Machine: {out['machine']}; device {out['device']}. Prior `{args.prior}` "
        f"({out['prior_steps']} steps). One 256 x 256 CT slice (lung2 55), 20 views, noise 0.2, "
        f"`{args.method}` with its defaults.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| wall time | {wall:.1f} s |",
        f"| network evaluations | {nfe} |",
        f"| seconds per evaluation (whole run) | {wall / nfe:.3f} |",
        f"| seconds per evaluation (network alone) | {net_s:.3f} |",
        f"| network GFLOP per evaluation (torch FLOP counter) | {gflop:.1f} |",
        f"| achieved GFLOP/s, network alone | {gflop / net_s:.1f} |",
        f"| achieved GFLOP/s, whole run (network FLOPs / wall) | {gflop * nfe / wall:.1f} |",
        f"| float32 matmul GFLOP/s, same machine and threads | {mm:.1f} |",
        f"| PSNR / SSIM of this run | {r['psnr']:.2f} dB / {r['ssim']:.3f} |",
        "",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
