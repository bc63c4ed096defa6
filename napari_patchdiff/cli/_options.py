"""The options several commands share, and reading them back: one option per parameter of the
operators and methods (``--views``, ``--nfe``, ...), the options that define a problem
(reconstruct, sample, calibrate), where and how the work runs (``--seed``, ``--device``,
``--precision``, ``--cluster``: :data:`napari_patchdiff.params.RUN_PARAMS`) and the test-time
adaptation of the prior (``--adapt ...``). :func:`_param_option` turns any declared
:class:`~napari_patchdiff.params.Param` into its option (``train``'s come from
:data:`napari_patchdiff.training.config.TRAIN_PARAMS`)."""
from __future__ import annotations

import argparse
import sys

from ..conventions import MODALITIES
from ..errors import InputError
from ..operators import OPERATORS, Param
from ..params import CLUSTER, DEVICE, PRECISION, SEED, WORKERS, render_help
from ..solvers import SOLVERS


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


#: how the help names arguments that are not options
_POSITIONAL = {"volumes": "VOLUMES", "truth": "TRUTH"}


def _cli_help(text: str) -> str:
    """A declared help text as ``--help`` shows it: the parameters it names as their flags."""
    return render_help(text, lambda name: _POSITIONAL.get(name) or _flag(name))


def _param_option(parser, p: Param, *aliases: str, help: str | None = None,
                  metavar: str | None = None) -> None:
    """Add ``--NAME`` (and ``aliases``) for the declared parameter ``p``, read back as
    ``args.NAME``: its type, choices, default and help (``help`` replaces it); a flag for a
    bool, one or more values for a ``many``."""
    kw: dict = dict(dest=p.name, help=_cli_help(p.help if help is None else help))
    value = p.default
    if p.type is bool:
        kw.update(action="store_true", default=bool(value))
    else:
        kw.update(type=p.type, default=list(value) if p.many and value is not None else value)
        if p.many:
            kw["nargs"] = "+"
        if p.choices:
            kw["choices"] = p.choices
        if metavar:
            kw["metavar"] = metavar
    parser.add_argument(_flag(p.name), *aliases, **kw)


#: options of ``reconstruct`` itself that also feed a method parameter of the same name
_GLOBAL_OPTIONS = ("seed",)


def _add_params(parser, registry, what: str) -> list[str]:
    """Add one option per parameter name over all entries of ``registry``; return the names.
    Entries that declare a name differently share its option: its choices are all of theirs
    (each entry's own declaration checks the value it gets, e.g. ``--mask``) and its help
    gives each different meaning with the entries it belongs to."""
    seen: dict[str, list[str]] = {}
    specs: dict[str, Param] = {}
    helps: dict[str, dict[str, list[str]]] = {}
    choices: dict[str, list] = {}
    for entry in registry.names():
        for p in _params_of(registry, entry):
            if p.name in _GLOBAL_OPTIONS:
                continue  # e.g. --seed: one option serves the noise and the sampler
            seen.setdefault(p.name, []).append(entry)
            specs.setdefault(p.name, p)
            helps.setdefault(p.name, {}).setdefault(p.help, []).append(entry)
            if p.choices:
                choices.setdefault(p.name, [])
                choices[p.name] += [c for c in p.choices if c not in choices[p.name]]
    group = parser.add_argument_group(f"{what} parameters (each applies to the {what}s named)")
    for name, p in specs.items():
        text = "; ".join(f"{h} [{', '.join(entries)}]" for h, entries in helps[name].items())
        kw = dict(default=None, help=text)
        if p.type is not bool:
            kw["metavar"] = name.upper()
        if p.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = p.type
            if name in choices:
                kw["choices"] = tuple(choices[name])
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
    _seed_option(p, "also of the measurement noise simulated from TRUTH")
    p.add_argument("--slice", type=int, help="reconstruct only this slice of a volume")
    p.add_argument("--modality", choices=MODALITIES,
                   help="intensity convention of TRUTH (default: guessed from metadata/values)")
    _param_option(p, DEVICE)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    _param_option(p, PRECISION)
    p.add_argument("--out", required=True, help="output folder (new or empty; see --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier "
                   "run in --out (the new ones are written aside and moved in when complete)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _add_params(p, OPERATORS, "operator")
    _add_params(p, SOLVERS, "method")
    _adaptation_options(p)


def _seed_option(p, also: str = "") -> None:
    """``--seed``: the run's seed (:data:`~napari_patchdiff.params.SEED`); ``also``: what else
    this command seeds with it."""
    _param_option(p, SEED, help=f"{SEED.help}; {also}" if also else None)


def _cluster_options(p, what: str) -> None:
    group = p.add_argument_group("where the work runs (napari_patchdiff.recon.executors)")
    _param_option(group, CLUSTER, metavar="local|ray|ray:ADDRESS",
                  help=f"where {what} run: {CLUSTER.help}")
    _param_option(group, WORKERS)


def _executor(args):
    from ..recon.executors import resolve_executor

    executor = resolve_executor(args.cluster, args.workers)
    executor.check_adaptation(args.adapt)  # before the problem is read
    return executor


def _say_executor(args, report) -> None:
    ex = report.get("executor")
    if ex and not args.quiet:
        where = f"{ex.get('workers', '?')} Ray worker(s) at {ex.get('address')}"
        if ex.get("devices"):
            where += f" ({', '.join(ex['devices'])}; hosts: {', '.join(ex.get('hosts', []))})"
        print(f"napari-patchdiff: ran on {where}", file=sys.stderr)


def _adaptation_options(p) -> None:
    from ..recon.adapt import ADAPT_PARAMS

    group = p.add_argument_group("test-time adaptation of the prior (diffusion methods)")
    group.add_argument("--adapt", action="store_true", help="adapt the prior to this "
                       "measurement while reconstructing (low-rank adapters, self-supervised "
                       "data loss; the defaults are tuned per operator and method)")
    for param in ADAPT_PARAMS:
        group.add_argument(f"--adapt-{param.name}", dest=f"adapt_{param.name}", type=param.type,
                           default=None, metavar=param.name.upper(), help=param.help)
    group.add_argument("--save-prior", metavar="PATH", help="save the adapted prior as a "
                       "checkpoint (its metadata names the base prior and this measurement)")


def _adaptation(args):
    """``adapt=`` for the API from the options: None, True or the parameters given."""
    from ..recon.adapt import ADAPT_PARAMS

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
