"""``napari-patchdiff train``: train a patch (or whole-image) diffusion prior on a few volumes,
with a progress bar that shows the validation losses and the memorisation gap."""
from __future__ import annotations

import sys

import torch

from .. import api
from ..conventions import MODALITIES
from ..errors import InputError
from ..events import Cancelled, CancelToken
from ._common import _device, _Progress


def add_parser(sub) -> None:
    from ..priors.network import CONFIGS
    from ..training.config import KINDS, PADIS_PATCH_SIZES

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
    _run_options(tr)
    tr.set_defaults(func=cmd_train)


def _run_options(tr) -> None:
    """Where the training runs, its checkpoints, and its validation and memorisation monitor."""
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
    output_paths(args.out, config, ("--resume", "--overwrite"))  # in this command's words
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
        print(f"napari-patchdiff: {exc}", file=sys.stderr, flush=True)
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
