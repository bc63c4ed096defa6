"""What the commands share while they run: the progress bar, ``--device``, the problem of the
options (a simulated or a read measurement), the output folder, which :func:`main` releases
whatever happens, and the core's messages in the command line's words (:func:`in_cli_words`)."""
from __future__ import annotations

import re
import sys

import torch

from .. import api, io
from ..errors import InputError
from ..operators import OPERATORS
from ._options import _collect
from .outputs import OutputFolder


#: The core's messages name the API's arguments (``resume=True``), which command-line users never
#: typed: each phrase as the core writes it, and as the command line says it, with its flags.
#: tests/test_cli.py checks that every phrase is still written by the core.
API_WORDS: tuple[tuple[str | re.Pattern, str], ...] = (
    ("resume=True", "--resume"),  # training: continue a checkpoint ...
    ("overwrite=True", "--overwrite"),  # ... or replace it; an output folder's earlier results
    ("modality='ct', 'mri' or 'unit'", "--modality ct|mri|unit"),  # a modality not told
    ("modality='ct' (HU) or 'mri'", "--modality ct (HU) or mri"),
    ("slice= needs", "--slice needs"),
    ("pass operator=", "pass --operator"),  # a measurement without a sidecar
    ("pass image_shape=(H, W)", "pass --image-shape H W"),
    ("the output folder ", "--out "),
    (re.compile(r"adapt=\{'rank': (\d+)\}"), r"--adapt-rank \1"),  # memory estimates
    ("adapt={'batch': ...}", "--adapt-batch"),
    ("a smaller adapt={'lr': ...}", "a smaller --adapt-lr"),  # a diverged adaptation
    ("fewer samples=", "fewer --samples"),
    ("a smaller batch=", "a smaller --batch"),
    ("fewer workers=", "fewer --workers"),
    ("drop cluster=", "drop --cluster"),  # adaptation on a cluster
    ("(solve(..., adapt=True) and result.prior.save(PATH))",
     "(reconstruct --adapt --save-prior PATH)"),
    ("use prior=PATH", "use --prior PATH"),
    ("give device='cuda'", "give --device cuda"),  # ct-cone without CUDA
)


def in_cli_words(message: str) -> str:
    """A core message (an error, a note) with the API's arguments it names written as the
    command line's flags (:data:`API_WORDS`)."""
    for api_words, cli_words in API_WORDS:
        if isinstance(api_words, re.Pattern):
            message = api_words.sub(cli_words, message)
        else:
            message = message.replace(api_words, cli_words)
    return message


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
