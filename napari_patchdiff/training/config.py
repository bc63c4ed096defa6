"""One training configuration, shared by the CLI, the API and the GUI.

Every training option is declared once, in :data:`TRAIN_PARAMS` (name, type, default, bounds,
meaning: :class:`~napari_patchdiff.params.Param`): :class:`TrainConfig`'s fields and defaults,
its checks (:meth:`Param.check <napari_patchdiff.params.Param.check>`), the options of
``napari-patchdiff train`` and the training fields of the Prior widget are all built from it.
The widget differs in one default only, :data:`WIDGET_DEFAULTS` (and says why there).

:class:`TrainConfig` holds every option of :func:`~napari_patchdiff.training.train`, checks them
all when it is made (:class:`~napari_patchdiff.errors.InputError`, one line) and fills in the
defaults that depend on other options (declared with the default ``None``), here and nowhere
else:

================================  =================================================================
``patch_probs``                   (0.2, 0.3, 0.5) for the PaDIS sizes (16, 32, 64), else uniform
``batch``                         8 for patch priors, 4 for whole-image priors
``pad``                           24 for patch priors, 0 for whole-image priors
``inference_patch_size``          ``min(max(56, min(sizes)), max(sizes))`` (PaDIS's 56 within the
                                  trained sizes); None for whole-image priors
``channels_last``                 on for the CPU (~10 % faster there), off elsewhere
================================  =================================================================

The defaults are resolved when the config is made, so ``dataclasses.replace(config, kind=...)``
keeps the values resolved for the old kind: make a new config to change what they depend on.
What needs the data (patch sizes that are multiples of the network's downsampling and fit the
canvas) is checked by :func:`~napari_patchdiff.training.train` before its first step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..conventions import MODALITIES
from ..errors import InputError
from ..params import DEVICE, Param
from ..priors.network import CONFIGS, unet_config
from .objective import VAL_SIGMAS

__all__ = ["TrainConfig", "TRAIN_PARAMS", "WIDGET_DEFAULTS", "KINDS", "PADIS_PATCH_SIZES",
           "PADIS_PATCH_PROBS"]

KINDS = ("patch", "whole")
#: the patch sizes of PaDIS and their probabilities
PADIS_PATCH_SIZES = (16, 32, 64)
PADIS_PATCH_PROBS = (0.2, 0.3, 0.5)
#: PaDIS's inference patch size, clamped into the trained sizes
PADIS_INFERENCE_PATCH = 56

#: every training option, in the order of :class:`TrainConfig`'s fields; a default of None is
#: resolved from the other options (module docstring). ``network`` also takes an architecture
#: dict (checked by :func:`~napari_patchdiff.priors.network.unet_config`) and ``device`` is
#: checked by :func:`~napari_patchdiff.devices.parse_device`.
TRAIN_PARAMS = (
    Param("modality", str, None, "intensity convention of ``volumes`` (default: guessed)",
          choices=MODALITIES),
    Param("network", str, "cpu", "network size: tiny (tests), cpu (~3.7 M parameters), gpu "
          "(~25 M)", choices=tuple(CONFIGS)),
    Param("kind", str, "patch", "patch prior (PaDIS) or the whole-image comparison prior",
          choices=KINDS),
    Param("patch_sizes", int, PADIS_PATCH_SIZES, "training patch sizes (default 16 32 64)",
          low=1, many=True),
    Param("patch_probs", float, None, "probabilities of the ``patch_sizes``, one per size, "
          "summing to 1 (default 0.2 0.3 0.5 for 16 32 64, else equal)", low=0, many=True),
    Param("batch", int, None, "images per step at the largest patch size (smaller patches get "
          "proportionally more); default 8 (patch) / 4 (whole)", low=1),
    Param("steps", int, 20000, "total optimiser steps", low=1),
    Param("lr", float, 1e-4, "Adam learning rate (0 freezes the weights)", low=0),
    Param("ema", float, 0.999, "EMA decay of the weights, in (0, 1)", low=0, high=1,
          open_low=True, open_high=True),
    Param("pad", int, None, "zero padding of the canvas (default 24 for patch priors, 0 for "
          "whole-image priors)", low=0),
    Param("seed", int, 0, "seed of every random draw of the run (patches, noise, initial "
          "weights, validation set)"),
    Param("val_fraction", float, 0.1, "every round(1 / val_fraction)-th slice is held out for "
          "validation (0: none)", low=0, high=0.5, open_high=True),
    Param("val_every", int, 500, "validation every N steps", low=0),
    Param("save_every", int, 200, "checkpoint every N steps", low=0),
    Param("log_every", int, 10, "a training event every N steps", low=0),
    Param("val_sigmas", float, VAL_SIGMAS, "the validation noise levels", low=0, open_low=True,
          many=True),
    Param("val_patches", int, 32, "validation patches", low=0),
    Param("inference_patch_size", int, None, "the patch size the prior will be used with, "
          "validated at it (default: PaDIS's 56 within the trained sizes)", low=1),
    Param("memorisation_probes", int, 32, "training patches of the memorisation monitor, "
          "measured at every validation (0: off); its gap (loss on rotated over loss on drawn "
          "training patches) is about 1 for a prior that generalises and climbs as it "
          "memorises", low=0),
    Param("stop_on_memorisation", bool, False, "end the run when the memorisation gap exceeds "
          "``memorisation_threshold`` at two validations in a row, keeping the weights of the "
          "last validation before (the checkpoint's early_stop says which steps)"),
    Param("memorisation_threshold", float, 2.0, "the onset threshold of "
          "``stop_on_memorisation`` (default 2.0; the shipped priors measure 1.06-1.32)",
          low=1, open_low=True),
    DEVICE,
    Param("channels_last", bool, None, "the channels-last memory format (default: on for the "
          "CPU, ~10 % faster there)"),
    Param("resume", bool, False, "continue from the checkpoint at ``out``"),
    Param("overwrite", bool, False, "start afresh over ``out``"),
    Param("init", str, None, "start from this prior's weights (shipped name or checkpoint) "
          "with a fresh optimiser: fine-tuning"),
)
_PARAMS = {p.name: p for p in TRAIN_PARAMS}
_DEFAULTS = {p.name: p.default for p in TRAIN_PARAMS}
#: options whose checks need more than their declaration (see :data:`TRAIN_PARAMS`)
_OWN_CHECKS = ("network", "device")

#: the Prior widget's defaults where they differ from the API's and the CLI's, on purpose:
#: the widget trains interactively on image layers, typically on a CPU, so its default run is
#: the quick one of the shipped ``mri`` prior (2,000 steps: about 2 h of the cpu network on one
#: core, against about 19 h for 20,000); training continues to more steps with "continue that
#: checkpoint". tests/test_widgets.py checks that this is the only difference.
WIDGET_DEFAULTS = {"steps": 2000}


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run (see :func:`~napari_patchdiff.training.train`); declared,
    with their defaults, bounds and meaning, in :data:`TRAIN_PARAMS`.

    modality : "ct", "mri" or "unit", recorded in the checkpoint and checked when the prior is
        used; None: that of the data (:func:`~napari_patchdiff.training.training_volumes`).
    network : network size "tiny" (tests), "cpu" (~3.7 M parameters), "gpu" (~25 M), or an
        architecture dict.
    kind : "patch" (PaDIS) or "whole" (the whole-image comparison prior).
    patch_sizes, patch_probs : training patch sizes and their probabilities (patch priors).
    batch : patches of the largest size per step; smaller sizes get ``batch * (max / P)^2``.
    steps : total steps of the run (a resumed or initialised run continues up to ``steps``).
    lr, ema : Adam learning rate (0 freezes the weights) and EMA decay, in (0, 1).
    pad : zero padding of each slice.
    seed : seeds every random draw (steps, weights, validation set).
    val_fraction : every ``round(1 / val_fraction)``-th slice is held out (0: none), < 0.5.
    val_every, save_every, log_every : validation, checkpoint and event periods in steps (0:
        validate and save only at the end; log every step).
    val_sigmas, val_patches : validation noise levels and number of validation patches.
    inference_patch_size : the patch size the prior will be used with (validated at it).
    memorisation_probes : training patches of the memorisation monitor, measured at every
        validation (0: off; see :mod:`~napari_patchdiff.training.memorisation`).
    stop_on_memorisation : end the run at the memorisation onset (the monitor's gap above
        ``memorisation_threshold`` at two validations in a row) and keep the weights of the last
        validation before it.
    device : torch device; channels_last : the channels-last memory format.
    resume : continue the run at ``out`` from its training state (or start afresh if none).
    overwrite : allow replacing an existing checkpoint when not resuming.
    init : start from this prior's EMA weights (shipped name or checkpoint path) with a fresh
        optimiser; its kind, architecture and modality must match. Not with ``resume``.
    """

    modality: str | None = _DEFAULTS["modality"]
    network: Any = _DEFAULTS["network"]
    kind: str = _DEFAULTS["kind"]
    patch_sizes: tuple[int, ...] = _DEFAULTS["patch_sizes"]
    patch_probs: tuple[float, ...] | None = _DEFAULTS["patch_probs"]
    batch: int | None = _DEFAULTS["batch"]
    steps: int = _DEFAULTS["steps"]
    lr: float = _DEFAULTS["lr"]
    ema: float = _DEFAULTS["ema"]
    pad: int | None = _DEFAULTS["pad"]
    seed: int = _DEFAULTS["seed"]
    val_fraction: float = _DEFAULTS["val_fraction"]
    val_every: int = _DEFAULTS["val_every"]
    save_every: int = _DEFAULTS["save_every"]
    log_every: int = _DEFAULTS["log_every"]
    val_sigmas: tuple[float, ...] = _DEFAULTS["val_sigmas"]
    val_patches: int = _DEFAULTS["val_patches"]
    inference_patch_size: int | None = _DEFAULTS["inference_patch_size"]
    memorisation_probes: int = _DEFAULTS["memorisation_probes"]
    stop_on_memorisation: bool = _DEFAULTS["stop_on_memorisation"]
    memorisation_threshold: float = _DEFAULTS["memorisation_threshold"]
    device: str = _DEFAULTS["device"]
    channels_last: bool | None = _DEFAULTS["channels_last"]
    resume: bool = _DEFAULTS["resume"]
    overwrite: bool = _DEFAULTS["overwrite"]
    init: str | None = _DEFAULTS["init"]

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        for p in TRAIN_PARAMS:  # types, bounds, choices: as declared
            value = getattr(self, p.name)
            if p.name in _OWN_CHECKS or (value is None and p.default is None):
                continue  # checked below, or resolved below from the other options
            set_(p.name, p.check(value))
        if not isinstance(self.network, (str, dict)):
            raise InputError(f"network must be a configuration name or an architecture dict, "
                             f"got {type(self.network).__name__}")
        unet_config(self.network)  # InputError for an unknown name or a bad architecture
        patch = self.kind == "patch"

        sizes = self.patch_sizes
        if not sizes:
            raise InputError("give at least one training patch size")
        if len(set(sizes)) != len(sizes):
            raise InputError(f"patch sizes must be distinct, got {sizes}")
        set_("patch_probs", _patch_probs(sizes, self.patch_probs))
        if self.batch is None:
            set_("batch", 8 if patch else 4)
        if self.pad is None:
            set_("pad", 24 if patch else 0)
        if self.memorisation_probes == 1:
            raise InputError("memorisation_probes must be 0 (off) or at least 2")
        if self.stop_on_memorisation and not self.memorisation_probes:
            raise InputError("stop_on_memorisation needs the monitor (memorisation_probes > 0)")
        if not patch:
            set_("inference_patch_size", None)
        elif self.inference_patch_size is None:
            set_("inference_patch_size", min(max(PADIS_INFERENCE_PATCH, min(sizes)), max(sizes)))

        from ..devices import parse_device

        device = parse_device(self.device)
        set_("device", str(device))
        if self.channels_last is None:
            set_("channels_last", device.type == "cpu")
        if self.init is not None and self.resume:
            raise InputError("pass either init (start from a prior's weights) or resume "
                             "(continue the run at out), not both")

    @property
    def architecture(self) -> dict:
        """The network's architecture dict (the checkpoint's ``architecture``)."""
        return unet_config(self.network)

    @property
    def network_name(self) -> str | None:
        """The configuration name, or None for an architecture dict."""
        return self.network if isinstance(self.network, str) else None

    @property
    def downsampling(self) -> int:
        """The factor the network downsamples by: patch sizes must be multiples of it."""
        return 2 ** (len(self.architecture["channels"]) - 1)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def _patch_probs(sizes: tuple[int, ...], probs) -> tuple[float, ...]:
    """The probabilities of ``sizes``: checked against them if given (each is checked by its
    declaration), else PaDIS's or uniform."""
    if probs is None:
        if sizes == PADIS_PATCH_SIZES:
            return PADIS_PATCH_PROBS
        return (1.0 / len(sizes),) * len(sizes)
    if len(probs) != len(sizes):
        raise InputError(f"{len(probs)} patch probabilities for {len(sizes)} patch sizes "
                         f"{list(sizes)}; give one per size")
    if abs(sum(probs) - 1.0) > 1e-6:
        raise InputError(f"patch probabilities must sum to 1, got {list(probs)} "
                         f"(sum {sum(probs):g})")
    return probs
