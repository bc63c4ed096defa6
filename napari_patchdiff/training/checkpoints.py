"""What a training run writes and reads back: its checkpoint metadata, the checkpoint and
training state it saves, and the progress it restores from a run to resume or a prior to start
from (``init``).

The metadata of a checkpoint is :func:`checkpoint_metadata` (the run's recipe: network, patch
sizes, data, validation, optimiser) plus the number of parameters, where it was initialised
from, and the progress written with each save (:func:`save_run`): ``steps``, ``wall_time_s``,
``segments`` (each stretch of training: steps, device, seconds, optimiser fresh or resumed),
``final_val_loss``, ``val_history``, ``memorisation_history`` (``[[step, {"gap", "icr"}]]``,
see :mod:`~napari_patchdiff.training.memorisation`), ``early_stop`` when the run stopped at the
memorisation onset, and ``created``.
"""
from __future__ import annotations

import copy
import datetime
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import __version__
from ..errors import InputError
from ..priors.checkpoint import (load_checkpoint, load_training_state, read_metadata,
                                 save_checkpoint, save_training_state)
from ..priors.patches import COORDINATE_NORMALISATION
from .memorisation import MONITOR_RECORD
from .objective import P_MEAN, P_STD, SIGMA_DATA

__all__ = ["INTENSITY", "Progress", "checkpoint_metadata", "save_run", "early_stop_record",
           "resume_from", "init_from", "segments_of"]

#: how each modality is mapped to [0, 1] (recorded in the metadata)
INTENSITY = {
    "ct": "x = clip((HU + 1024) / 2048, 0, 1) (napari_patchdiff.conventions.hu_to_unit)",
    "mri": "x = clip(|m| / s, 0, 1), s = 99.5th percentile of the volume's magnitude "
           "(napari_patchdiff.conventions.normalise)",
    "unit": "already on [0, 1]",
}
#: what a resumed run must share with the run it continues
RESUME_KEYS = ("kind", "architecture", "patch_sizes", "patch_probs", "batch", "pad",
               "image_size", "modality", "training_data", "seed")
#: what a prior to start from must share with the new run
INIT_KEYS = ("kind", "architecture", "modality", "sigma_data")
#: what makes a prior's validation history and wall time carry over to the new run
SAME_DATA_KEYS = ("training_data", "validation_data", "validation", "pad")


@dataclass
class Progress:
    """How far training has got: the step, the wall time of earlier sessions, the validation
    history ``[[step, {sigma: loss}], ...]``, the earlier stretches of training and whether the
    optimiser state is "fresh" or "resumed"."""

    step: int = 0
    wall_before: float = 0.0
    val_history: list = field(default_factory=list)
    segments: list = field(default_factory=list)
    optimiser: str = "fresh"
    memorisation_history: list = field(default_factory=list)


def checkpoint_metadata(config, data, name: str) -> dict[str, Any]:
    """The recipe of a run of ``config`` on ``data`` (a prepared
    :class:`~napari_patchdiff.training.loop.TrainingData`) for the checkpoint ``name``."""
    h, w = data.image_size
    pad = config.pad
    k_val = round(1 / config.val_fraction) if config.val_fraction > 0 else 0
    return {
        "name": name,
        "kind": config.kind,
        "architecture": config.architecture,
        "config_name": config.network_name,
        "sigma_data": SIGMA_DATA,
        "patch_sizes": list(data.patch_sizes),
        "patch_probs": list(data.patch_probs),
        "batch": config.batch,
        "batch_multipliers": data.multipliers,
        "inference_patch_size": config.inference_patch_size,
        "pad": pad,
        "image_size": [int(h), int(w)],
        "canvas_size": [int(h) + 2 * pad, int(w) + 2 * pad],
        "coordinates": COORDINATE_NORMALISATION,
        "modality": config.modality,
        "intensity": {"normalisation": INTENSITY[config.modality],
                      "scales": {v.name: v.scale for v in data.volumes if v.scale is not None}},
        "training_data": _record(data.volumes, data.train_idx),
        "validation_data": _record(data.volumes, data.val_idx),
        "validation": {"rule": (f"every {k_val}-th slice of each volume from local index "
                                f"{k_val // 2}") if k_val else "none",
                       "sigmas": list(config.val_sigmas), "samples": config.val_patches,
                       "patch_size": config.inference_patch_size, "seed": config.seed + 12_345},
        "loss": {"ln_sigma": [P_MEAN, P_STD], "weight": "(s^2 + sd^2) / (s sd)^2",
                 "optimizer": "Adam", "lr": config.lr},
        "total_steps": config.steps,
        "device": config.device,
        "ema_decay": config.ema,
        "ema_warmup": "d = min(ema_decay, (1 + t) / (10 + t))",
        "lr": config.lr,
        "seed": config.seed,
        "package_version": __version__,
        "torch_version": torch.__version__,
    }


def _record(volumes, idx) -> list[dict]:
    """``[{"name", "slices"}]``: the original slice indices of ``idx`` per volume."""
    rec: dict[int, list[int]] = {}
    for v, j in idx:
        rec.setdefault(v, []).append(volumes[v].slices[j])
    return [{"name": volumes[v].name, "slices": s} for v, s in sorted(rec.items())]


def save_run(paths, meta: dict, run, at_step: int, early_stop: dict | None = None) -> str:
    """Write ``run``'s EMA weights with ``meta`` and its progress, and its training state (raw
    weights, Adam moments, counters); returns the checkpoint path.

    ``early_stop`` (``{"onset_step", "kept_step", "weights"}``, the EMA state dict of
    ``kept_step``): the run stopped at the memorisation onset; the checkpoint gets the kept
    weights at ``kept_step`` with the record, and the training state is removed (the run is
    finished: continue from the checkpoint with ``init``, a fresh optimiser)."""
    seg = {"start_step": run.first_step, "end_step": at_step, "device": meta["device"],
           "seconds": round(run.session_seconds(), 1), "optimiser": run.progress.optimiser}
    history = [[s, _keys_str(v)] for s, v in run.progress.val_history]
    m = dict(meta, steps=at_step, wall_time_s=round(run.elapsed(), 3),
             segments=run.progress.segments + [seg], final_val_loss=_keys_str(run.last_val),
             val_history=history,
             memorisation_history=run.progress.memorisation_history,
             memorisation=MONITOR_RECORD,
             created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    if early_stop is not None:
        m.update(steps=early_stop["kept_step"], early_stop=early_stop_record(early_stop))
        model = copy.deepcopy(run.ema_model)
        model.load_state_dict(early_stop["weights"])
        path = save_checkpoint(paths["weights"], model, m)
        paths["state"].unlink(missing_ok=True)
        return str(path)
    path = save_checkpoint(paths["weights"], run.ema_model, m)
    save_training_state(paths["weights"], run.model, run.opt,
                        {"step": at_step, "wall_time_s": run.elapsed(), "seed": meta["seed"],
                         "val_history": history,
                         "memorisation_history": run.progress.memorisation_history})
    return str(path)


def early_stop_record(onset: dict) -> dict:
    """What a checkpoint records of a stop at the memorisation onset (``onset``: the
    ``{"onset_step", "kept_step", "threshold", ...}`` of the run's monitor)."""
    kept, threshold = onset["kept_step"], onset["threshold"]
    return {"onset_step": onset["onset_step"], "kept_step": kept, "threshold": threshold,
            "reason": f"memorisation gap above {threshold:g} at two validations in a row "
                      f"(steps up to {onset['onset_step']}); the weights are those of step "
                      f"{kept}, the last validation below it"}


def resume_from(paths, meta: dict, model, opt, device):
    """Load the training state at ``paths`` into ``model`` and ``opt`` after checking it was
    the same recipe; returns ``(progress, ema_model)``."""
    old = read_metadata(paths["weights"])
    for key in RESUME_KEYS:
        if _norm(old.get(key)) != _norm(meta.get(key)):
            raise InputError(f"cannot resume {paths['weights']}: its {key} "
                             f"({old.get(key)!r}) differs from this run's ({meta.get(key)!r})")
    info = load_training_state(paths["weights"], model, opt)
    if old.get("steps") is not None and int(old["steps"]) != int(info["step"]):
        raise InputError(f"cannot resume {paths['weights']}: its training state is at step "
                         f"{info['step']} but the checkpoint at step {old['steps']} (a save was "
                         f"interrupted); train into a new checkpoint with init={paths['weights']} "
                         "(a fresh optimiser) or start afresh with overwrite")
    ema_model, _ = load_checkpoint(paths["weights"], device=device)
    progress = Progress(int(info["step"]), float(info.get("wall_time_s", 0.0)),
                        info.get("val_history", []), segments_of(old), "resumed",
                        info.get("memorisation_history", []))
    return progress, ema_model


def init_from(init, meta: dict, model):
    """Load ``init``'s EMA weights (a shipped name or a checkpoint) into ``model`` and a copy
    as the EMA model; returns ``(progress, ema_model, initialised_from)``. The step count
    continues; the validation history and wall time carry over when the data are the same."""
    from ..priors.prior import shipped_priors

    path = shipped_priors().get(str(init), init)
    src, old = load_checkpoint(path, device="cpu")
    for key in INIT_KEYS:
        if _norm(old.get(key)) != _norm(meta.get(key)):
            raise InputError(f"cannot start from {init}: its {key} ({old.get(key)!r}) differs "
                             f"from this run's ({meta.get(key)!r})")
    model.load_state_dict(src.state_dict())
    ema_model = copy.deepcopy(model)
    same_data = all(_norm(old.get(k)) == _norm(meta.get(k)) for k in SAME_DATA_KEYS)
    origin = {"name": old.get("name"), "steps": old.get("steps"), "same_training_data": same_data}
    progress = Progress(int(old.get("steps", 0)), segments=segments_of(old))
    if same_data:
        progress.wall_before = float(old.get("wall_time_s") or 0.0)
        progress.val_history = old.get("val_history", [])
        progress.memorisation_history = old.get("memorisation_history", [])
    return progress, ema_model, origin


def segments_of(meta: dict) -> list[dict]:
    """The training stretches recorded in a checkpoint's metadata (one for older files)."""
    if meta.get("segments"):
        return list(meta["segments"])
    return [{"start_step": 0, "end_step": int(meta.get("steps", 0)),
             "device": meta.get("device", "?"), "seconds": meta.get("wall_time_s"),
             "optimiser": "fresh"}]


def _keys_str(d):
    return None if d is None else {f"{float(k):g}": float(v) for k, v in d.items()}


def _norm(obj):
    return json.loads(json.dumps(obj, default=str))
