"""The options several commands share, and reading them back: one option per parameter of the
operators and methods (``--views``, ``--nfe``, ...), the options that define a problem
(reconstruct, sample, calibrate), where the work runs (``--cluster``) and the test-time
adaptation of the prior (``--adapt ...``)."""
from __future__ import annotations

import argparse
import sys

from ..conventions import MODALITIES
from ..errors import InputError
from ..operators import OPERATORS, Param
from ..solvers import SOLVERS


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
