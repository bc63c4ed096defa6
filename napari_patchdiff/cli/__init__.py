"""The ``napari-patchdiff`` command line: a thin layer over :mod:`napari_patchdiff.api`.

Subcommands: ``reconstruct`` (simulate a measurement from a ground truth, or read a measured
one, and reconstruct it), ``sample`` (a posterior ensemble with uncertainty maps), ``train`` and
``info`` (diffusion priors) and ``demo`` (the README's main job on the shipped sample data).
Exit codes: 0 success, 2 bad input (a clear message on stderr), 1 unexpected failure,
130 cancelled (Ctrl-C).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path

import torch

from .. import __version__, api, io
from ..conventions import MODALITIES
from ..errors import InputError, InputWarning
from ..events import Cancelled, CancelToken
from ..operators import OPERATORS, Param
from ..outputs import OutputFolder, write_ensemble, write_reconstruction
from ..solvers import SOLVERS
from ..uncertainty import DESIGNS


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


#: options of ``reconstruct`` itself that also feed a method parameter of the same name
_GLOBAL_OPTIONS = ("seed",)


def _add_params(parser, registry, what: str) -> list[str]:
    """Add one option per parameter name over all entries of ``registry``; return the names."""
    seen: dict[str, list[str]] = {}
    specs: dict[str, Param] = {}
    for entry in registry.names():
        for p in _params_of(registry, entry):
            if p.name in _GLOBAL_OPTIONS:
                continue  # e.g. --seed: one option serves the noise and the sampler
            seen.setdefault(p.name, []).append(entry)
            specs.setdefault(p.name, p)
    group = parser.add_argument_group(f"{what} parameters (each applies to the {what}s named)")
    for name, p in specs.items():
        kw = dict(default=None, help=f"{p.help} [{', '.join(seen[name])}]")
        if p.type is not bool:
            kw["metavar"] = name.upper()
        if p.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = p.type
            if p.choices:
                kw["choices"] = p.choices
        group.add_argument(_flag(name), dest=f"p_{what}_{name}", **kw)
    return list(specs)


def _params_of(registry, entry) -> tuple[Param, ...]:
    obj = registry.get(entry)
    return tuple(getattr(obj, "PARAMS", None) or getattr(obj, "params", ()) or ())


def _collect(args, registry, entry: str, what: str) -> dict:
    """The parameter values the user gave; refuse ones the chosen entry does not take."""
    given = {
        k[len(f"p_{what}_"):]: v
        for k, v in vars(args).items()
        if k.startswith(f"p_{what}_") and v is not None
    }
    known = {p.name for p in _params_of(registry, entry)}
    for name in _GLOBAL_OPTIONS:
        if name in known and getattr(args, name, None) is not None:
            given[name] = getattr(args, name)
    wrong = sorted(set(given) - known)
    if wrong:
        raise InputError(
            f"{what} {entry!r} does not take {', '.join(_flag(w) for w in wrong)}; "
            f"it takes {', '.join(_flag(k) for k in sorted(known)) or 'no parameters'}"
        )
    return given


def _problem_options(p) -> None:
    """The options that define a problem and a method's parameters (reconstruct and sample)."""
    p.add_argument("truth", nargs="?", help="ground-truth image or volume; 'sample:ct' and "
                   "'sample:mri' name the shipped sample data")
    p.add_argument("--measurement", help="a measured sinogram or k-space (TIFF or .npy; a "
                   "measurement.tif written by this command carries its operator in a sidecar)")
    p.add_argument("--image-shape", type=int, nargs=2, metavar=("H", "W"),
                   help="image size for --measurement when no sidecar gives it")
    p.add_argument("--operator", choices=OPERATORS.names(),
                   help="forward operator (with --measurement: read from its sidecar)")
    p.add_argument("--prior", help="diffusion prior for dds/dps/padis: a shipped name "
                   "(see `napari-patchdiff info`) or a checkpoint path")
    p.add_argument("--noise-std", "--noise", dest="noise_std", type=float, default=None,
                   help="std of the added Gaussian noise in measurement units: CT line "
                   "integrals (pixel-length units), MRI orthonormal k-space (each of real and "
                   "imaginary part), image units otherwise (default 0; with --measurement: the "
                   "sidecar's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the measurement noise and of "
                   "the diffusion samplers' noise stream")
    p.add_argument("--slice", type=int, help="reconstruct only this slice of a volume")
    p.add_argument("--modality", choices=MODALITIES,
                   help="intensity convention of TRUTH (default: guessed from metadata/values)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--precision", choices=("float32", "bfloat16"),
                   help="the prior network's arithmetic (diffusion methods; default float32): "
                   "bfloat16 made DDS and PnP-ADMM 2.4-2.9 times as fast on a CPU with AMX, "
                   "at the PSNR of float32 within 0.02 dB "
                   "(benchmarks/results/speed_compare*.md); slower on CPUs without bfloat16 "
                   "instructions")
    p.add_argument("--out", required=True, help="output folder (new or empty; see --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier "
                   "run in --out (the new ones are written aside and moved in when complete)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _add_params(p, OPERATORS, "operator")
    _add_params(p, SOLVERS, "method")
    _adaptation_options(p)


def _cluster_options(p, what: str) -> None:
    group = p.add_argument_group("where the work runs (napari_patchdiff.executors)")
    group.add_argument("--cluster", default="local", metavar="local|ray|ray:ADDRESS",
                       help=f"local (default): here; ray: {what} on the workers of a Ray "
                       "instance started on this machine; ray:ADDRESS: on an existing Ray "
                       "cluster (the address `ray start --head` prints). Same results; needs "
                       "pip install 'napari-patchdiff[ray]'")
    group.add_argument("--workers", type=int, help="Ray workers (default: one per GPU of the "
                       "cluster, else one per CPU)")


def _executor(args):
    from ..executors import resolve_executor

    executor = resolve_executor(args.cluster, args.workers)
    if executor.remote and args.adapt:
        raise InputError("--adapt trains its adapter through the run in turn, so it runs "
                         "locally only: drop --cluster, or adapt once (reconstruct --adapt "
                         "--save-prior PATH) and use --prior PATH on the cluster")
    return executor


def _say_executor(args, report) -> None:
    ex = report.get("executor")
    if ex and not args.quiet:
        where = f"{ex.get('workers', '?')} Ray worker(s) at {ex.get('address')}"
        if ex.get("devices"):
            where += f" ({', '.join(ex['devices'])}; hosts: {', '.join(ex.get('hosts', []))})"
        print(f"napari-patchdiff: ran on {where}", file=sys.stderr)


def _adaptation_options(p) -> None:
    from ..adapt import ADAPT_PARAMS

    group = p.add_argument_group("test-time adaptation of the prior (diffusion methods)")
    group.add_argument("--adapt", action="store_true", help="adapt the prior to this "
                       "measurement while reconstructing (low-rank adapters, self-supervised "
                       "data loss; the defaults are tuned per operator)")
    for param in ADAPT_PARAMS:
        group.add_argument(f"--adapt-{param.name}", dest=f"adapt_{param.name}", type=param.type,
                           default=None, metavar=param.name.upper(), help=param.help)
    group.add_argument("--save-prior", metavar="PATH", help="save the adapted prior as a "
                       "checkpoint (its metadata names the base prior and this measurement)")


def _adaptation(args):
    """``adapt=`` for the API from the options: None, True or the parameters given."""
    from ..adapt import ADAPT_PARAMS

    given = {p.name: getattr(args, f"adapt_{p.name}") for p in ADAPT_PARAMS
             if getattr(args, f"adapt_{p.name}") is not None}
    if given and not args.adapt:
        raise InputError(f"{', '.join('--adapt-' + k for k in given)} set(s) the adaptation: "
                         f"add --adapt")
    if args.save_prior and not args.adapt:
        raise InputError("--save-prior saves an adapted prior: add --adapt")
    if args.save_prior:
        from ..priors.checkpoint import checkpoint_paths

        target = checkpoint_paths(args.save_prior)["weights"]
        if target.exists() and not args.overwrite:
            raise InputError(f"--save-prior {target} exists; pass --overwrite to replace it")
    return (given or True) if args.adapt else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-patchdiff",
        description="Reconstruct images from incomplete measurements (CT, MRI, deblurring, "
        "super-resolution, inpainting) with classical methods and patch diffusion priors.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rec = sub.add_parser(
        "reconstruct",
        help="simulate a measurement from a ground truth (or read a measured one) and reconstruct",
        description="Simulate y = A x + noise from TRUTH (TIFF, NumPy, DICOM file or folder, NIfTI; "
        "CT in HU) and reconstruct it, or reconstruct a measured Y given with --measurement. "
        "Writes recon.tif (float32, in TRUTH's units when TRUTH is given, else on the normalised "
        "[0, 1] scale), measurement.tif and report.json into --out.",
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

    from ..priors.network import CONFIGS
    from ..training.config import KINDS, PADIS_PATCH_SIZES

    tr = sub.add_parser(
        "train",
        help="train a patch (or whole-image) diffusion prior on a few volumes",
        description="Train a diffusion prior by denoising score matching (EDM) on patches of "
        "VOLUMES (TIFF, NumPy, NIfTI, DICOM; CT in HU, MRI magnitude), with EMA weights, a "
        "deterministic slice-wise validation split and periodic resumable checkpoints. "
        "Writes PRIOR.safetensors (EMA weights + metadata), PRIOR.json and PRIOR.state.safetensors.",
    )
    tr.add_argument("volumes", nargs="+", help="training images or volumes; 'ct' / 'mri' name "
                    "the training split of the development data (shared/data), 'phantoms' "
                    "synthetic CT-like images (no data needed)")
    tr.add_argument("--out", required=True, help="checkpoint path (without or with .safetensors)")
    tr.add_argument("--modality", choices=MODALITIES,
                    help="intensity convention of VOLUMES (default: guessed)")
    tr.add_argument("--bin", type=int, default=1, help="average BIN x BIN blocks first "
                    "(2 turns 512 x 512 CT into the 256 x 256 working size)")
    tr.add_argument("--kind", default="patch", choices=KINDS,
                    help="patch prior (PaDIS) or the whole-image comparison prior")
    tr.add_argument("--network", "--config", dest="network", default="cpu",
                    choices=tuple(CONFIGS), help="network size: tiny (tests), cpu (~3.7 M "
                    "parameters), gpu (~25 M); --config is the older name of this option")
    tr.add_argument("--patch-sizes", type=int, nargs="+", default=list(PADIS_PATCH_SIZES),
                    help="training patch sizes (default 16 32 64)")
    tr.add_argument("--patch-probs", type=float, nargs="+",
                    help="their probabilities, one per size, summing to 1 (default 0.2 0.3 0.5 "
                    "for 16 32 64, else equal)")
    tr.add_argument("--steps", type=int, default=20000, help="total optimiser steps")
    tr.add_argument("--batch", type=int, help="images per step at the largest patch size "
                    "(smaller patches get proportionally more); default 8 (patch) / 4 (whole)")
    tr.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    tr.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights, in (0, 1)")
    tr.add_argument("--pad", type=int, help="zero padding of the canvas (default 24 for "
                    "patch priors, 0 for whole-image priors)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="cpu", help="torch device: cpu, cuda, ...")
    tr.add_argument("--threads", type=int, help="torch CPU threads")
    tr.add_argument("--resume", action="store_true", help="continue from the checkpoint at --out")
    tr.add_argument("--init", metavar="PRIOR", help="start from this prior's weights (shipped "
                    "name or checkpoint) with a fresh optimiser: fine-tuning")
    tr.add_argument("--overwrite", action="store_true", help="start afresh over --out")
    tr.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    tr.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps")
    tr.add_argument("--memorisation-probes", type=int, default=32, metavar="N",
                    help="training patches of the memorisation monitor, measured at every "
                    "validation (0: off); its gap (loss on rotated over loss on drawn training "
                    "patches) is about 1 for a prior that generalises and climbs as it memorises")
    tr.add_argument("--stop-on-memorisation", action="store_true",
                    help="end the run when the memorisation gap exceeds --memorisation-threshold "
                    "at two validations in a row, keeping the weights of the last validation "
                    "before (the checkpoint's early_stop says which steps)")
    tr.add_argument("--memorisation-threshold", type=float, default=2.0, metavar="GAP",
                    help="the onset threshold of --stop-on-memorisation (default 2.0; the shipped "
                    "priors measure 1.06-1.32)")
    tr.add_argument("--val-every", type=int, default=500, help="validation every N steps")
    tr.set_defaults(func=cmd_train)

    info = sub.add_parser("info", help="print a prior's metadata",
                          description="Print the metadata of a shipped prior (by name) or a "
                          "checkpoint file, without loading its weights.")
    info.add_argument("prior", help="shipped prior name or checkpoint path")
    info.add_argument("--json", action="store_true", help="print the raw JSON")
    info.set_defaults(func=cmd_info)

    demo = sub.add_parser(
        "demo",
        help="the main job on the shipped sample data (20-view CT of a lung slice)",
        description="Simulates 20-view parallel-beam CT of a test slice of the shipped CT volume, "
        "reconstructs it, and writes recon.tif, figure.png and report.json into --out.",
    )
    demo.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    demo.add_argument("--device", default="cpu", help="torch device")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--overwrite", action="store_true",
                      help="replace the results of an earlier demo in --out")
    demo.set_defaults(func=cmd_demo)
    return parser


class _Progress:
    """A progress bar on stderr (tqdm: rate and time left) over the steps of a run; ``quiet``
    silences it. Called with each step event; ``position``/``total`` override the event's
    (an ensemble counts the steps of all its batches), ``now`` redraws at once (else at most
    twice a second), keyword arguments are shown after the bar."""

    def __init__(self, label: str, quiet: bool = False, unit: str = "step"):
        self.label, self.quiet, self.unit, self.bar = label, quiet, unit, None

    def __call__(self, ev, position: int | None = None, total: int | None = None,
                 now: bool = False, **postfix) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        position = ev.step if position is None else position
        total = ev.total if total is None else total
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.label, unit=self.unit, file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.5)
        self.bar.total = total
        if getattr(ev, "nfe", 0):
            postfix.setdefault("nfe", ev.nfe)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(position - self.bar.n)
        if now:
            self.bar.refresh()
        if position >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _device(name: str) -> torch.device:
    """``--device`` checked (see :func:`napari_patchdiff.devices.parse_device`)."""
    from ..devices import parse_device

    return parse_device(name, "--device")


def _problem(args) -> api.Problem:
    dtype = getattr(torch, args.dtype)
    device = _device(args.device)
    if (args.truth is None) == (args.measurement is None):
        raise InputError("give either TRUTH (to simulate a measurement) or --measurement Y")
    if args.truth is not None:
        if args.operator is None:
            raise InputError("--operator is needed to simulate a measurement of TRUTH")
        op_params = _collect(args, OPERATORS, args.operator, "operator")
        truth = api.load_truth(args.truth, modality=args.modality, slice=args.slice,
                               operator=args.operator)
        if args.modality is None and not args.quiet:
            print(f"napari-patchdiff: modality {truth.modality}: "
                  f"{truth.meta['modality_reason']}", file=sys.stderr)
        return api.simulate(truth, args.operator, noise_std=args.noise_std or 0.0,
                            seed=args.seed, device=device, dtype=dtype, **op_params)
    operator = args.operator or io.read_sidecar(args.measurement).get("operator")
    if operator is None:
        raise InputError(f"{args.measurement}: no sidecar names the operator; pass --operator")
    op_params = _collect(args, OPERATORS, operator, "operator")
    problem = api.load_measurement(args.measurement, operator=args.operator,
                                   image_shape=args.image_shape, noise_std=args.noise_std,
                                   slice=args.slice, device=device, dtype=dtype, **op_params)
    if problem.noise_origin == "estimated" and not args.quiet:
        print(f"napari-patchdiff: noise std estimated from the measurement: "
              f"{problem.noise_std:.3g} (give --noise-std to set it)", file=sys.stderr)
    return problem


#: output folders opened by the running command; :func:`main` releases them
_OPEN_FOLDERS: list[OutputFolder] = []


def _output_folder(args) -> OutputFolder:
    """``--out``, checked and locked; the files the command reads may not lie inside it."""
    inputs = [args.truth, args.measurement, getattr(args, "roi", None),
              getattr(args, "calibration", None), args.prior]
    folder = OutputFolder(args.out, args.overwrite, inputs=[i for i in inputs if i])
    _OPEN_FOLDERS.append(folder)
    return folder


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


def cmd_sample(args) -> int:
    from ..uncertainty import check_level, default_batch, parse_region, region_note, run_ensemble

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
    return 0


def _calibration_arg(value: str):
    """``--calibration``: 'auto', 'none' (None) or a file."""
    if value == "none":
        return None
    return value


def cmd_calibrate(args) -> int:
    from ..uncertainty import calibration_figure

    folder = _output_folder(args)  # checked and locked before any computation
    if args.truth is None or args.measurement is not None:
        raise InputError("calibrate needs TRUTH (images the prior never saw), not --measurement")
    if args.operator is None:
        raise InputError("--operator is needed to simulate the measurements")
    if args.slice is not None:
        raise InputError("calibrate takes --slices (one or more), not --slice")
    if args.adapt or args.save_prior:
        raise InputError("calibrate does not adapt the prior")
    if args.precision not in (None, "float32"):
        raise InputError("calibrate runs the prior in float32; drop --precision")
    if args.prior is None:
        raise InputError(f"{args.method} needs --prior")
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


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), device=_device(args.device), seed=args.seed,
             overwrite=args.overwrite)
    return 0


def _train_config(args):
    """The :class:`~napari_patchdiff.training.TrainConfig` of ``train``'s options."""
    from ..training import TrainConfig

    return TrainConfig(modality=args.modality, network=args.network, kind=args.kind,
                       patch_sizes=tuple(args.patch_sizes),
                       patch_probs=None if args.patch_probs is None else tuple(args.patch_probs),
                       batch=args.batch, steps=args.steps, lr=args.lr, ema=args.ema, pad=args.pad,
                       seed=args.seed, device=str(_device(args.device)), resume=args.resume,
                       overwrite=args.overwrite, init=args.init, save_every=args.save_every,
                       val_every=args.val_every, memorisation_probes=args.memorisation_probes,
                       stop_on_memorisation=args.stop_on_memorisation,
                       memorisation_threshold=args.memorisation_threshold)


def cmd_train(args) -> int:
    from ..priors.checkpoint import checkpoint_paths, read_metadata
    from ..training.loop import output_paths

    if args.threads:
        torch.set_num_threads(args.threads)
    config = _train_config(args)  # bad options fail before the volumes are read
    output_paths(args.out, config, ("--resume", "--overwrite"))  # in this command's words
    print(f"training a {config.kind} prior ({config.network}) on {' '.join(args.volumes)}, "
          f"device {config.device}", file=sys.stderr)
    weights = checkpoint_paths(args.out)["weights"]

    class CtrlC(CancelToken):
        """Hands a Ctrl-C caught while a progress line is printed (outside the training loop)
        to the loop at its next step, which saves that step and says where."""

        interrupted = False

        def check(self, estimate=None) -> None:
            if self.interrupted:
                raise KeyboardInterrupt
            super().check(estimate)

    token = CtrlC()

    bar = _Progress("training", args.quiet)

    gaps: list[str] = []  # "step: gap" of each memorisation measurement
    stopped: list[dict] = []  # the early-stop record, if the run stopped at the onset

    def progress(ev) -> None:
        try:
            val = {f"val {s:g}": f"{v:.4f}" for s, v in (ev.val_losses or {}).items()}
            if ev.memorisation:
                val["memorisation gap"] = f"{ev.memorisation['gap']:.2f}"
                gaps.append(f"{ev.step}: {ev.memorisation['gap']:.2f}")
            bar(ev, now=bool(val), loss=f"{ev.loss:.4f}", **val)  # show validations at once
            if ev.early_stop:
                stopped.append(ev.early_stop)
        except KeyboardInterrupt:
            token.interrupted = True

    try:
        meta = api.train(args.volumes, args.out, config, bin=args.bin, cancel=token,
                         on_event=progress)
    except Cancelled as exc:  # the loop saved a checkpoint: say which step and where
        bar.close()
        print(f"napari-patchdiff: {exc}", file=sys.stderr, flush=True)
        raise
    except KeyboardInterrupt:  # outside the loop (reading the volumes, ...): what is kept
        try:
            kept = (f"{weights} holds step {read_metadata(weights).get('steps')} (resume with "
                    "--resume)" if weights.is_file() else "no checkpoint was saved")
        except InputError as exc:
            kept = f"{weights} is unreadable ({exc})"
        print(f"napari-patchdiff: training interrupted; {kept}", file=sys.stderr, flush=True)
        raise
    slices = sum(len(v["slices"]) for v in meta.get("training_data", []))
    print(f"wrote {weights} ({meta['steps']} steps, {slices} training slices, modality "
          f"{meta['modality']})")
    if gaps:
        print(f"memorisation gap by step (about 1: generalises; rising: memorises): "
              f"{', '.join(gaps[-8:])}")
    if stopped:
        print(f"stopped early: {stopped[0]['reason']}")
    return 0


def cmd_info(args) -> int:
    from ..priors import read_metadata, shipped_priors

    path = shipped_priors().get(args.prior, args.prior)
    meta = read_metadata(path)
    if args.json:
        print(json.dumps(meta, indent=2, sort_keys=True))
        return 0
    for key in sorted(meta):
        value = meta[key]
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        print(f"{key:24s} {value}")
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops at its next step and keeps what it did."""


def _terminate(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import signal
    import threading

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        return _run(args)
    finally:
        while _OPEN_FOLDERS:
            _OPEN_FOLDERS.pop().close()
        if in_main:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _notes():
    """Each :class:`~napari_patchdiff.errors.InputWarning` of the core (an explicit modality
    over the sidecar's, ...) as one ``napari-patchdiff: note:`` line on stderr, every time;
    other warnings as Python shows them. Restored afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", InputWarning)
        show = warnings.showwarning

        def note(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, InputWarning):
                print(f"napari-patchdiff: note: {message}", file=sys.stderr, flush=True)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = note
        yield


def _run(args) -> int:
    try:
        with _notes():
            return args.func(args)
    except InputError as exc:
        print(f"napari-patchdiff: error: {exc}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt) as exc:
        print("\nnapari-patchdiff: cancelled", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except torch.cuda.OutOfMemoryError as exc:
        print(f"napari-patchdiff: error: out of GPU memory ({exc}); use fewer slices, "
              f"--slice, or --device cpu", file=sys.stderr)
        return 1
    except MemoryError:
        print("napari-patchdiff: error: out of memory: crop or bin the image, or reconstruct "
              "fewer slices of a volume (--slice)", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader of our output went away (`| head`): nothing is wrong
        sys.stderr.close()
        return 0
    except OSError as exc:  # a full disk, a file removed under us: the earlier results are kept
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"napari-patchdiff: error: {exc.strerror or exc}{where}; the output folder was "
              f"left as it was", file=sys.stderr)
        return 1

