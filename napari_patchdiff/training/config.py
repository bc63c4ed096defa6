"""One training configuration, shared by the CLI, the API and the GUI.

:class:`TrainConfig` holds every option of :func:`~napari_patchdiff.training.train`, checks them
all when it is made (:class:`~napari_patchdiff.errors.InputError`, one line) and fills in the
defaults that depend on other options, here and nowhere else:

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

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..conventions import MODALITIES
from ..errors import InputError
from ..priors.network import unet_config
from .objective import VAL_SIGMAS

__all__ = ["TrainConfig", "KINDS", "PADIS_PATCH_SIZES", "PADIS_PATCH_PROBS"]

KINDS = ("patch", "whole")
#: the patch sizes of PaDIS and their probabilities
PADIS_PATCH_SIZES = (16, 32, 64)
PADIS_PATCH_PROBS = (0.2, 0.3, 0.5)
#: PaDIS's inference patch size, clamped into the trained sizes
PADIS_INFERENCE_PATCH = 56


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run (see :func:`~napari_patchdiff.training.train`).

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

    modality: str | None = None
    network: Any = "cpu"
    kind: str = "patch"
    patch_sizes: tuple[int, ...] = PADIS_PATCH_SIZES
    patch_probs: tuple[float, ...] | None = None
    batch: int | None = None
    steps: int = 20000
    lr: float = 1e-4
    ema: float = 0.999
    pad: int | None = None
    seed: int = 0
    val_fraction: float = 0.1
    val_every: int = 500
    save_every: int = 200
    log_every: int = 10
    val_sigmas: tuple[float, ...] = VAL_SIGMAS
    val_patches: int = 32
    inference_patch_size: int | None = None
    memorisation_probes: int = 32
    stop_on_memorisation: bool = False
    memorisation_threshold: float = 2.0
    device: str = "cpu"
    channels_last: bool | None = None
    resume: bool = False
    overwrite: bool = False
    init: str | None = None

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        if self.modality is not None and self.modality not in MODALITIES:
            raise InputError(f"unknown modality {self.modality!r}; choose one of {MODALITIES}")
        if self.kind not in KINDS:
            raise InputError(f"kind must be 'patch' or 'whole', got {self.kind!r}")
        if not isinstance(self.network, (str, dict)):
            raise InputError(f"network must be a configuration name or an architecture dict, "
                             f"got {type(self.network).__name__}")
        unet_config(self.network)  # InputError for an unknown name
        patch = self.kind == "patch"

        sizes = _sequence(self.patch_sizes)
        sizes = tuple(_integer("patch size", p, 1) for p in sizes)
        if not sizes:
            raise InputError("give at least one training patch size")
        if len(set(sizes)) != len(sizes):
            raise InputError(f"patch sizes must be distinct, got {sizes}")
        set_("patch_sizes", sizes)
        set_("patch_probs", _patch_probs(sizes, self.patch_probs))

        set_("batch", _integer("batch", 8 if patch else 4, 1) if self.batch is None
             else _integer("batch", self.batch, 1))
        set_("pad", (24 if patch else 0) if self.pad is None else _integer("pad", self.pad, 0))
        set_("steps", _integer("steps", self.steps, 1))
        set_("lr", _real("lr", self.lr))
        if self.lr < 0:
            raise InputError(f"lr must be >= 0, got {self.lr:g}")
        set_("ema", _real("ema", self.ema))
        if not 0 < self.ema < 1:
            raise InputError(f"ema must be in (0, 1), got {self.ema:g}")
        set_("seed", _integer("seed", self.seed, None))
        set_("val_fraction", _real("val_fraction", self.val_fraction))
        if not 0 <= self.val_fraction < 0.5:
            raise InputError(f"val_fraction must be in [0, 0.5), got {self.val_fraction:g}")
        for name in ("val_every", "save_every", "log_every", "val_patches",
                     "memorisation_probes"):
            set_(name, _integer(name, getattr(self, name), 0))
        if self.memorisation_probes == 1:
            raise InputError("memorisation_probes must be 0 (off) or at least 2")
        set_("stop_on_memorisation", bool(self.stop_on_memorisation))
        set_("memorisation_threshold", _real("memorisation_threshold",
                                             self.memorisation_threshold))
        if not self.memorisation_threshold > 1:
            raise InputError(f"memorisation_threshold must be > 1 (a gap of 1 is no memorisation "
                             f"at all), got {self.memorisation_threshold:g}")
        if self.stop_on_memorisation and not self.memorisation_probes:
            raise InputError("stop_on_memorisation needs the monitor (memorisation_probes > 0)")
        sigmas = tuple(_real("validation sigma", s) for s in _sequence(self.val_sigmas))
        if any(s <= 0 for s in sigmas):
            raise InputError(f"validation sigmas must be > 0, got {sigmas}")
        set_("val_sigmas", sigmas)

        if not patch:
            ip = None
        elif self.inference_patch_size is None:
            ip = min(max(PADIS_INFERENCE_PATCH, min(sizes)), max(sizes))
        else:
            ip = _integer("inference_patch_size", self.inference_patch_size, 1)
        set_("inference_patch_size", ip)

        from ..devices import parse_device

        device = parse_device(self.device)
        set_("device", str(device))
        set_("channels_last", device.type == "cpu" if self.channels_last is None
             else bool(self.channels_last))
        set_("resume", bool(self.resume))
        set_("overwrite", bool(self.overwrite))
        if self.init is not None and self.resume:
            raise InputError("pass either init (start from a prior's weights) or resume "
                             "(continue the run at out), not both")
        if isinstance(self.init, Path):
            set_("init", str(self.init))

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
    """The probabilities of ``sizes``: checked if given, else PaDIS's or uniform."""
    if probs is None:
        if sizes == PADIS_PATCH_SIZES:
            return PADIS_PATCH_PROBS
        return (1.0 / len(sizes),) * len(sizes)
    probs = tuple(_real("patch probability", q) for q in _sequence(probs))
    if len(probs) != len(sizes):
        raise InputError(f"{len(probs)} patch probabilities for {len(sizes)} patch sizes "
                         f"{list(sizes)}; give one per size")
    if min(probs) < 0:
        raise InputError(f"patch probabilities must be >= 0, got {list(probs)}")
    if abs(sum(probs) - 1.0) > 1e-6:
        raise InputError(f"patch probabilities must sum to 1, got {list(probs)} "
                         f"(sum {sum(probs):g})")
    return probs


def _sequence(value) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = (value,)
    return tuple(value)


def _real(name: str, value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise InputError(f"{name} must be finite, got {value!r}")
    return out


def _integer(name: str, value, minimum: int | None) -> int:
    if isinstance(value, bool):
        raise InputError(f"{name} must be an integer, got {value!r}")
    try:
        out = int(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name} must be an integer, got {value!r}") from None
    if out != value:
        raise InputError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and out < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {out}")
    return out
