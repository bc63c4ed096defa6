"""``napari-patchdiff train``: train a patch (or whole-image) diffusion prior on a few volumes,
with a progress bar that shows the validation losses and the memorisation gap."""
from __future__ import annotations

import sys

import torch

from .. import api
from ..errors import InputError
from ..events import Cancelled, CancelToken
from ._common import _device, _Progress, in_cli_words
from ._options import _param_option


#: the training options this command offers (declared in
#: :data:`napari_patchdiff.training.config.TRAIN_PARAMS`), in the order of ``--help``; the others
#: (validation split and noise levels, logging, channels-last) keep their defaults
OPTIONS = ("modality", "kind", "network", "patch_sizes", "patch_probs", "steps", "batch", "lr",
           "ema", "pad", "seed", "device", "resume", "init", "overwrite", "save_every",
           "memorisation_probes", "stop_on_memorisation", "memorisation_threshold", "val_every")
#: how ``--help`` shows some of them
_METAVARS = {"init": "PRIOR", "memorisation_probes": "N", "memorisation_threshold": "GAP"}
_ALIASES = {"network": ("--config",)}
_NOTES = {"network": "; --config is the older name of this option"}


def add_parser(sub) -> None:
    tr = sub.add_parser(
        "train",
        help="train a patch (or whole-image) diffusion prior on a few volumes",
        description="Train a diffusion prior by denoising score matching (EDM) on patches of "
        "VOLUMES (TIFF, NumPy, NIfTI, DICOM; CT in HU, MRI magnitude), with EMA weights, a "
        "deterministic slice-wise validation split and periodic resumable checkpoints. "
        "Writes PRIOR.safetensors (EMA weights + metadata), PRIOR.json and "
        "PRIOR.state.safetensors.",
    )
    tr.add_argument("volumes", nargs="+", help="training images or volumes; 'ct' / 'mri' name "
                    "the training split of the development data (shared/data), 'phantoms' and "
                    "'textured-phantoms' synthetic CT-like images (no data needed)")
    tr.add_argument("--out", required=True, help="checkpoint path (without or with .safetensors)")
    _option(tr, "modality")
    tr.add_argument("--bin", type=int, default=1, help="average BIN x BIN blocks first "
                    "(2 turns 512 x 512 CT into the 256 x 256 working size)")
    for name in OPTIONS[1:OPTIONS.index("device") + 1]:
        _option(tr, name)
    tr.add_argument("--threads", type=int, help="torch CPU threads")
    for name in OPTIONS[OPTIONS.index("resume"):OPTIONS.index("overwrite") + 1]:
        _option(tr, name)
    tr.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    for name in OPTIONS[OPTIONS.index("overwrite") + 1:]:
        _option(tr, name)
    tr.set_defaults(func=cmd_train)


def _option(tr, name: str) -> None:
    """The option of the declared training option ``name``."""
    from ..training.config import TRAIN_PARAMS

    p = next(p for p in TRAIN_PARAMS if p.name == name)
    _param_option(tr, p, *_ALIASES.get(name, ()), help=p.help + _NOTES.get(name, ""),
                  metavar=_METAVARS.get(name))


def _train_config(args):
    """The :class:`~napari_patchdiff.training.TrainConfig` of ``train``'s options."""
    from ..training import TrainConfig

    options = {name: getattr(args, name) for name in OPTIONS}
    return TrainConfig(**{**options, "device": str(_device(args.device))})


class _CtrlC(CancelToken):
    """Hands a Ctrl-C caught while a progress line is printed (outside the training loop)
    to the loop at its next step, which saves that step and says where."""

    interrupted = False

    def check(self, estimate=None) -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        super().check(estimate)


class _TrainingProgress:
    """The ``on_event`` of the training loop: the bar with the loss and the validation losses;
    keeps each memorisation gap ("step: gap") and the early-stop record, if the run stopped at
    the onset. A Ctrl-C while it prints goes to ``token``."""

    def __init__(self, quiet: bool, token: _CtrlC):
        self.bar = _Progress("training", quiet)
        self.token = token
        self.gaps: list[str] = []
        self.stopped: list[dict] = []

    def __call__(self, ev) -> None:
        try:
            val = {f"val {s:g}": f"{v:.4f}" for s, v in (ev.val_losses or {}).items()}
            if ev.memorisation:
                val["memorisation gap"] = f"{ev.memorisation['gap']:.2f}"
                self.gaps.append(f"{ev.step}: {ev.memorisation['gap']:.2f}")
            self.bar(ev, now=bool(val), loss=f"{ev.loss:.4f}", **val)  # validations at once
            if ev.early_stop:
                self.stopped.append(ev.early_stop)
        except KeyboardInterrupt:
            self.token.interrupted = True


def cmd_train(args) -> int:
    from ..priors.checkpoint import checkpoint_paths
    from ..training.loop import output_paths

    if args.threads:
        torch.set_num_threads(args.threads)
    config = _train_config(args)  # bad options fail before the volumes are read
    output_paths(args.out, config)
    print(f"training a {config.kind} prior ({config.network}) on {' '.join(args.volumes)}, "
          f"device {config.device}", file=sys.stderr)
    weights = checkpoint_paths(args.out)["weights"]
    token = _CtrlC()
    progress = _TrainingProgress(args.quiet, token)
    try:
        meta = api.train(args.volumes, args.out, config, bin=args.bin, cancel=token,
                         on_event=progress)
    except Cancelled as exc:  # the loop saved a checkpoint: say which step and where
        progress.bar.close()
        print(f"napari-patchdiff: {in_cli_words(str(exc))}", file=sys.stderr, flush=True)
        raise
    except KeyboardInterrupt:  # outside the loop (reading the volumes, ...): what is kept
        print(f"napari-patchdiff: training interrupted; {_kept(weights)}", file=sys.stderr,
              flush=True)
        raise
    slices = sum(len(v["slices"]) for v in meta.get("training_data", []))
    print(f"wrote {weights} ({meta['steps']} steps, {slices} training slices, modality "
          f"{meta['modality']})")
    if progress.gaps:
        print(f"memorisation gap by step (about 1: generalises; rising: memorises): "
              f"{', '.join(progress.gaps[-8:])}")
    if progress.stopped:
        print(f"stopped early: {progress.stopped[0]['reason']}")
    return 0


def _kept(weights) -> str:
    """What an interrupted run leaves at ``weights``, in words."""
    from ..priors.checkpoint import read_metadata

    try:
        return (f"{weights} holds step {read_metadata(weights).get('steps')} (resume with "
                "--resume)" if weights.is_file() else "no checkpoint was saved")
    except InputError as exc:
        return f"{weights} is unreadable ({exc})"
