"""``napari-patchdiff reconstruct``: simulate a measurement from a ground truth (or read a
measured one) and reconstruct it."""
from __future__ import annotations

import sys

from .. import api
from ..events import Cancelled, CancelToken
from ..solvers import SOLVERS
from ._common import _output_folder, _problem, _Progress
from ._options import (_adaptation, _cluster_options, _collect, _executor, _problem_options,
                       _say_executor)
from .writers import write_reconstruction


def add_parser(sub) -> None:
    rec = sub.add_parser(
        "reconstruct",
        help="simulate a measurement from a ground truth (or read a measured one) and reconstruct",
        description="Simulate y = A x + noise from TRUTH (TIFF, NumPy, DICOM file or folder, "
        "NIfTI; CT in HU) and reconstruct it, or reconstruct a measured Y given with "
        "--measurement. Writes recon.tif (float32, in TRUTH's units when TRUTH is given, else on "
        "the normalised [0, 1] scale), measurement.tif and report.json into --out.",
    )
    rec.add_argument("--method", default="fbp", choices=SOLVERS.names(),
                     help="reconstruction method (default: fbp; use zero-filled for MRI)")
    rec.add_argument("--batch", type=int, help="slices per window of a volume (default 8: "
                     "memory stays that of a window whatever the depth)")
    rec.add_argument("--overlap", type=int, help="context slices on each side of a window "
                     "(default 2 when the method couples slices along z, else 0)")
    _cluster_options(rec, "a volume's windows")
    _problem_options(rec)
    rec.set_defaults(func=cmd_reconstruct)


def cmd_reconstruct(args) -> int:
    folder = _output_folder(args)  # checked and locked before any computation
    adapt = _adaptation(args)
    executor = _executor(args)
    problem = _problem(args)
    method_params = _collect(args, SOLVERS, args.method, "method")
    bar = _Progress(args.method, args.quiet)

    def progress(ev) -> None:
        extra = {"adapt loss": f"{ev.info['adapt_loss']:.3g}"} if "adapt_loss" in ev.info else {}
        bar(ev, **extra)

    try:
        result = api.solve(problem, args.method, cancel=CancelToken(), prior=args.prior,
                           adapt=adapt, on_event=progress, batch=args.batch,
                           overlap=args.overlap, cluster=executor, precision=args.precision,
                           **method_params)
    except (Cancelled, KeyboardInterrupt) as exc:
        partial = getattr(exc, "partial", None)
        if partial is not None:  # keep what was computed, under names that say so
            where = folder.commit(lambda d: write_reconstruction(d, problem, partial, True),
                                  partial=True)
            print(f"\ncancelled after {partial.report['iterations']} steps; wrote "
                  f"{where}/recon_partial.tif, measurement_partial.tif and report_partial.json "
                  f"(earlier results in {where} are as they were)", file=sys.stderr)
        raise
    folder.commit(lambda d: write_reconstruction(d, problem, result))
    _say_executor(args, result.report)
    if args.save_prior:
        saved = result.prior.save(args.save_prior, adapted_to=_measured(args))
        print(f"wrote the adapted prior {saved}", file=sys.stderr)
    r = result.report
    summary = f"{args.method}: {r['seconds']:.2f} s, {r['iterations']} iterations"
    if "psnr" in r:
        summary += f", PSNR {r['psnr']:.2f} dB"
        summary += f", SSIM {r['ssim']:.4f}" if r.get("ssim") is not None else ""
    print(summary)
    print(f"wrote {folder.path}/recon.tif, measurement.tif, report.json")
    return 0


def _measured(args) -> str:
    """What the adaptation was fitted to, in words, for the adapted prior's metadata."""
    source = args.measurement or args.truth
    what = f" slice {args.slice}" if args.slice is not None else ""
    return f"{source}{what} ({args.operator or 'operator from the sidecar'})"
