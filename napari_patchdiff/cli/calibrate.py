"""``napari-patchdiff calibrate``: calibrate a sampler's per-pixel intervals on held-out images
(split-conformal factors, written as a calibration.json for ``sample --calibration``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import api
from ..errors import InputError
from ..operators import OPERATORS
from ..solvers import SOLVERS
from ..uncertainty import DESIGNS
from ._common import _device, _output_folder, _Progress
from ._options import _collect, _problem_options


def add_parser(sub) -> None:
    cal = sub.add_parser(
        "calibrate",
        help="calibrate a sampler's per-pixel intervals on your own held-out images",
        description="Simulates a measurement of each of --slices of TRUTH (images the prior "
        "never saw, with the operator and noise of your real data), draws an ensemble for each, "
        "and fits split-conformal factors q so that mean +- q std contains the truth at the "
        "nominal fraction of pixels (levels 0.5, 0.8, 0.9, 0.95). Writes calibration.json "
        "(pass it to `sample --calibration`), calibration.png (coverage before and after, on "
        "the calibration images themselves) and report.json into --out.",
    )
    cal.add_argument("--method", default="dds", choices=[n for n in SOLVERS.names()
                                                         if SOLVERS.get(n).sampler],
                     help="diffusion sampler (default dds)")
    cal.add_argument("--samples", type=int, default=8, help="ensemble size (default 8); the "
                     "calibration applies to ensembles at least this large")
    cal.add_argument("--noise-design", default="iid", choices=DESIGNS)
    cal.add_argument("--slices", type=int, nargs="+", help="slices of TRUTH to calibrate on "
                     "(default: all)")
    _problem_options(cal)
    cal.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args) -> int:
    from ..uncertainty import calibration_figure

    folder = _output_folder(args)  # checked and locked before any computation
    _check(args)
    op_params = _collect(args, OPERATORS, args.operator, "operator")
    method_params = _collect(args, SOLVERS, args.method, "method")
    seed = method_params.pop("seed", args.seed)
    truth = api.load_truth(args.truth, modality=args.modality, operator=args.operator)
    progress = _Progress(f"calibrate {args.method}", args.quiet)
    slices = args.slices or list(range(truth.x.shape[0] if truth.x.ndim == 3 else 1))
    done = [0]

    def on_event(ev):
        if hasattr(ev, "sample"):
            done[0] += 1
        else:
            progress(ev, ev.step, ev.total, samples=f"{done[0]}/{len(slices) * args.samples}")

    command = "napari-patchdiff " + " ".join(sys.argv[1:]) if sys.argv else ""
    cal = api.calibrate(truth, args.operator, prior=args.prior, method=args.method,
                        samples=args.samples, design=args.noise_design,
                        noise_std=args.noise_std or 0.0, slices=args.slices, seed=seed,
                        device=_device(args.device), on_event=on_event, source=command,
                        operator_params=op_params, **method_params)

    def write(d: Path) -> None:
        (d / "calibration.json").write_text(json.dumps(cal.to_dict(), indent=1) + "\n")
        calibration_figure(cal.coverage_raw, d / "calibration.png",
                           title=f"{args.method}, {args.samples} samples ({args.noise_design})",
                           after=cal.coverage_calibrated)
        (d / "report.json").write_text(json.dumps({"calibration": cal.to_dict()}, indent=1)
                                       + "\n")

    folder.commit(write)
    q = cal.factors.get("0.9")
    print(f"calibrated {cal.describe()}: 90% factor {q:.3g}, sample-quantile coverage at 90% "
          f"{cal.coverage_raw.get('0.9', float('nan')):.3f}")
    print(f"wrote {folder.path}/calibration.json, calibration.png, report.json")
    return 0


def _check(args) -> None:
    """Refuse the problem options that calibrate does not take."""
    if args.truth is None or args.measurement is not None:
        raise InputError("calibrate needs TRUTH (images the prior never saw), not --measurement")
    if args.operator is None:
        raise InputError("--operator is needed to simulate the measurements")
    if args.slice is not None:
        raise InputError("calibrate takes --slices (one or more), not --slice")
    if args.adapt or args.save_prior:
        raise InputError("calibrate does not adapt the prior")
    if args.precision not in (None, "auto", "float32"):
        raise InputError("calibrate runs the prior in float32; drop --precision")
    if args.prior is None:
        raise InputError(f"{args.method} needs --prior")
