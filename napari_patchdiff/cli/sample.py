"""``napari-patchdiff sample``: a posterior ensemble drawn with a diffusion sampler, written
with its mean, std and credible bounds."""
from __future__ import annotations

import sys

from ..errors import InputError
from ..events import Cancelled, CancelToken
from ..solvers import SOLVERS
from ..uncertainty import DESIGNS
from ._common import _output_folder, _problem, _Progress
from ._options import (_adaptation, _cluster_options, _collect, _executor, _problem_options,
                       _say_executor)
from .writers import write_ensemble


def add_parser(sub) -> None:
    smp = sub.add_parser(
        "sample",
        help="draw a posterior ensemble with a diffusion sampler; write mean, std, intervals",
        description="Like reconstruct, but draws --samples posterior samples with a diffusion "
        "sampler under an iid, antithetic or rqmc noise design and writes samples.tif, mean.tif, "
        "std.tif, lower.tif / upper.tif (central --level credible bounds), pair_correlation.tif "
        "(antithetic), report.json (region CI, within-pair correlation, coverage and calibration "
        "when TRUTH is known, timing, seed) and calibration.png (with TRUTH) into --out.",
    )
    smp.add_argument("--method", default="dds", choices=[n for n in SOLVERS.names()
                                                         if SOLVERS.get(n).kind == "diffusion"],
                     help="diffusion sampler (default dds)")
    smp.add_argument("--samples", type=int, default=8, help="ensemble size (default 8)")
    smp.add_argument("--noise-design", default="iid", choices=DESIGNS,
                     help="iid samples, antithetic pairs (z and -z for the whole noise "
                     "stream), or rqmc groups of 4 (an antithetic Latin hypercube)")
    smp.add_argument("--batch", type=int, help="samples per sampler run (default: ~8 slices)")
    smp.add_argument("--roi", help="region for the mean-intensity CI: y0:y1,x0:x1 (pixels; "
                     "z0:z1,y0:y1,x0:x1 for a volume) or a mask file")
    smp.add_argument("--level", type=float, default=0.9, help="credible/confidence level (0.9)")
    smp.add_argument("--calibration", default="auto", metavar="auto|none|FILE",
                     help="per-pixel bounds: 'auto' (default) uses a calibration shipped with "
                     "the prior where one fits this prior, operator, noise, method and "
                     "ensemble size, else the sample quantiles; 'none' the sample quantiles; "
                     "FILE one written by `napari-patchdiff calibrate` (an error if it does "
                     "not fit)")
    _cluster_options(smp, "the ensemble's batches")
    _problem_options(smp)
    smp.set_defaults(func=cmd_sample)


def cmd_sample(args) -> int:
    from ..uncertainty import check_level, parse_region, region_note, run_ensemble

    folder = _output_folder(args)  # checked and locked before any computation
    check_level(args.level)
    adapt = _adaptation(args)
    if args.save_prior:
        raise InputError("sample adapts while it samples but does not save the prior: adapt "
                         "once with reconstruct --adapt --save-prior PATH, then sample with "
                         "--prior PATH")
    executor = _executor(args)
    problem = _problem(args)
    method_params = _collect(args, SOLVERS, args.method, "method")
    seed = method_params.pop("seed", args.seed)
    roi = parse_region(args.roi) if args.roi else None
    note = region_note(roi, problem.image_shape) if roi is not None else None
    if note:
        print(f"napari-patchdiff: note: {note}", file=sys.stderr)
    on_event = _ensemble_progress(args, problem)
    try:
        result = run_ensemble(problem, args.method, prior=args.prior, samples=args.samples,
                              design=args.noise_design, batch=args.batch, seed=seed, roi=roi,
                              level=args.level, cancel=CancelToken(), on_event=on_event,
                              adapt=adapt, calibration=_calibration_arg(args.calibration),
                              cluster=executor, precision=args.precision, **method_params)
    except (Cancelled, KeyboardInterrupt) as exc:
        partial = getattr(exc, "partial", None)
        if partial is not None:
            folder.commit(lambda d: write_ensemble(d, problem, partial, args.method, args.prior,
                                                   partial=True), partial=True)
            print(f"\ncancelled after {partial.samples.shape[0]} samples; wrote them to "
                  f"{folder.path} as *_partial files (earlier results there are as they were)",
                  file=sys.stderr)
        raise
    folder.commit(lambda d: write_ensemble(d, problem, result, args.method, args.prior))
    _say_executor(args, result.report)
    _say_ensemble(args, result, folder)
    return 0


def _ensemble_progress(args, problem):
    """The ``on_event`` of the ensemble: one bar over the steps of all its batches, with the
    samples finished so far."""
    from ..uncertainty import default_batch

    progress = _Progress(f"{args.method} x {args.samples}", args.quiet)
    batch = args.batch or default_batch(args.samples, problem.slices, args.noise_design)
    runs, done, steps = -(-args.samples // batch), [0], {}

    def on_event(ev):
        if hasattr(ev, "sample"):
            done[0] += 1
        else:  # steps of every batch so far (batches may finish in any order on a cluster)
            steps[ev.info["batch"]] = ev.step
            extra = ({"adapt loss": f"{ev.info['adapt_loss']:.3g}"}
                     if "adapt_loss" in ev.info else {})
            progress(ev, sum(steps.values()), runs * ev.total,
                     samples=f"{done[0]}/{args.samples}", **extra)

    return on_event


def _say_ensemble(args, result, folder) -> None:
    """The summary line on stdout, the kind of bounds on stderr and the files written."""
    r = result.report
    line = f"{args.method} x {r['samples']} ({r['design']}): {r['seconds']:.1f} s"
    if "psnr_mean" in r:
        line += (f", mean PSNR {r['psnr_mean']:.2f} dB, {100 * args.level:g}% interval coverage "
                 f"{r['coverage']:.3f}")
    if "roi" in r:
        ci = r["roi"]
        line += f", region mean {ci['estimate']:.4f} [{ci['lower']:.4f}, {ci['upper']:.4f}]"
    print(line)
    if not args.quiet:
        print(f"napari-patchdiff: bounds: {r['interval']['note']}", file=sys.stderr)
    extra = ", lower_quantile.tif, upper_quantile.tif" if result.calibrated else ""
    print(f"wrote {folder.path}/samples.tif, mean.tif, std.tif, lower.tif, upper.tif{extra}, "
          f"report.json")


def _calibration_arg(value: str):
    """``--calibration``: 'auto', 'none' (None) or a file."""
    if value == "none":
        return None
    return value
