"""Training patch (PaDIS) and whole-image diffusion priors with the EDM objective.

:func:`train` is a generator yielding :class:`TrainEvent`; the CLI, the GUI and the tests drive it
the same way::

    from napari_patchdiff.training import train, load_training_slices
    vols = load_training_slices("ct")              # lung1 all + lung2 0-44, 256 x 256, [0, 1]
    for ev in train(vols, "ct", "priors/ct_cpu", config="cpu", steps=20000):
        print(ev.step, ev.total, ev.loss, ev.val_losses)

Objective (Karras et al. 2022): ``ln sigma ~ N(-1.2, 1.2^2)``, loss
``(s^2 + sd^2) / (s sd)^2 * |D(x0 + s n, s) - x0|^2`` averaged over pixels and samples, Adam
(lr 1e-4). Patch priors cut one random patch per sample from the zero-padded slice (pad 24),
with the patch size drawn per step (16/32/64 with probabilities 0.2/0.3/0.5) and the batch
``batch * (64 / P)^2`` so every step sees the same number of pixels. Whole-image priors use the
whole padded slices (``pad`` defaults to 0 for them).

Determinism and resume: step ``t`` draws everything (patch size, slices, locations, sigma, noise
and the dropout masks) from generators seeded with ``(seed, t)`` alone, so a run that is stopped
and resumed gives the same weights as an uninterrupted one; the training state file stores the
raw weights, the Adam moments and the counters (the EMA weights are the checkpoint itself).

EMA: ``ema <- d ema + (1 - d) w`` after every step with ``d = min(ema, (1 + t) / (10 + t))`` (a
warm-up so short runs are not dominated by the initial weights).

Validation: every ``k = round(1 / val_fraction)``-th slice of each volume (local indices
``k // 2, k // 2 + k, ...``) is held out. Every ``val_every`` steps and at the end, the EMA model
is scored on a fixed set (seed ``seed + 12345``) of ``val_patches`` patches of the inference
patch size (whole slices for whole-image priors), with fixed noise, at each sigma in
:data:`VAL_SIGMAS`, with the same weighted loss.
"""
from __future__ import annotations

import copy
import datetime
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from . import __version__
from .conventions import hu_to_unit, normalise
from .errors import InputError, SolverError
from .events import Cancelled
from .priors.checkpoint import (checkpoint_paths, load_checkpoint, read_metadata,
                                load_training_state, save_checkpoint, save_training_state)
from .priors.network import EDMDenoiser, build_unet, count_parameters, unet_config
from .priors.patches import (COORDINATE_NORMALISATION, MixedPatchSampler, coordinate_grid,
                             pad_image, random_patches)

__all__ = ["TrainEvent", "TrainingVolume", "train", "load_training_slices", "split_slices",
           "VAL_SIGMAS", "DATA_DIR", "edm_loss"]

VAL_SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
P_MEAN, P_STD, SIGMA_DATA = -1.2, 1.2, 0.5
#: the development data (``shared/data`` beside the repository), overridable by the environment
DATA_DIR = Path(os.environ.get("NAPARI_PATCHDIFF_DATA",
                              Path(__file__).resolve().parents[2] / "shared" / "data"))

INTENSITY = {
    "ct": "x = clip((HU + 1024) / 2048, 0, 1) (napari_patchdiff.conventions.hu_to_unit)",
    "mri": "x = clip(|m| / s, 0, 1), s = 99.5th percentile of the volume's magnitude "
           "(napari_patchdiff.conventions.normalise)",
    "unit": "already on [0, 1]",
}


@dataclass(frozen=True)
class TrainEvent:
    """Progress of :func:`train`.

    step, total : steps done (1-based) and the run's target.
    loss : mean training loss over the steps since the previous event.
    val_losses : {sigma: validation loss} when validation ran at this step, else None.
    seconds : wall time of the whole run so far (earlier sessions included when resumed).
    checkpoint : path of the checkpoint written at this step, else None.
    """

    step: int
    total: int
    loss: float
    val_losses: dict[float, float] | None
    seconds: float
    checkpoint: str | None = None

    @property
    def done(self) -> bool:
        return self.step >= self.total


@dataclass
class TrainingVolume:
    """Training slices on the normalised scale: ``data`` (D, H, W) float32, the source ``name``,
    the original slice indices ``slices`` and the intensity ``scale`` (MRI) if any."""

    data: np.ndarray
    name: str
    slices: list[int] = field(default_factory=list)
    scale: float | None = None

    def __post_init__(self):
        self.data = np.asarray(self.data, dtype=np.float32)
        if self.data.ndim == 2:
            self.data = self.data[None]
        if self.data.ndim != 3:
            raise InputError(f"training volume {self.name!r} must be (D, H, W), "
                             f"got shape {self.data.shape}")
        if not self.slices:
            self.slices = list(range(self.data.shape[0]))
        self.slices = [int(s) for s in self.slices]
        if len(self.slices) != self.data.shape[0]:
            raise InputError(f"training volume {self.name!r}: {len(self.slices)} slice indices "
                             f"for {self.data.shape[0]} slices")


def _downsample2(vol: np.ndarray) -> np.ndarray:
    d, h, w = vol.shape
    return vol[:, : h // 2 * 2, : w // 2 * 2].reshape(d, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def _read_tif(path: Path) -> np.ndarray:
    import tifffile

    if not path.is_file():
        raise InputError(f"training data not found: {path} (set NAPARI_PATCHDIFF_DATA or "
                         "pass data_dir)")
    try:
        return np.asarray(tifffile.imread(str(path)))
    except Exception as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def load_training_slices(spec: str = "ct", data_dir=None) -> list[TrainingVolume]:
    """The training split of DATA.md, normalised to [0, 1] at 256 x 256.

    ``"ct"``: lung1.tif (all 48 slices) and lung2.tif slices 0-44; each 512 x 512 slice is averaged
    over 2 x 2 blocks in HU, then mapped by :func:`~napari_patchdiff.conventions.hu_to_unit`.
    ``"mri"``: brain1.tif (all 25 slices) normalised by its 99.5th percentile
    (:func:`~napari_patchdiff.conventions.normalise`). ``data_dir`` defaults to
    ``$NAPARI_PATCHDIFF_DATA`` or ``shared/data`` beside the repository.
    """
    root = Path(data_dir) if data_dir is not None else DATA_DIR
    if spec == "ct":
        out = []
        for fname, sl in (("lung1.tif", None), ("lung2.tif", range(0, 45))):
            vol = _read_tif(root / fname).astype(np.float32)
            idx = list(range(vol.shape[0])) if sl is None else list(sl)
            vol = vol[idx]
            if vol.shape[-1] == 512:
                vol = _downsample2(vol)
            out.append(TrainingVolume(hu_to_unit(vol), fname, idx))
        return out
    if spec == "mri":
        vol = _read_tif(root / "brain1.tif")
        x, scale = normalise(vol, "mri")
        return [TrainingVolume(x, "brain1.tif", list(range(x.shape[0])), scale)]
    raise InputError(f"unknown training data spec {spec!r}; choose 'ct' or 'mri'")


def _as_volumes(volumes, modality: str) -> list[TrainingVolume]:
    if isinstance(volumes, str) and volumes in ("ct", "mri"):
        return load_training_slices(volumes)
    if isinstance(volumes, (str, Path, np.ndarray, TrainingVolume)) or (
            isinstance(volumes, tuple) and len(volumes) in (2, 3) and isinstance(volumes[1], str)):
        volumes = [volumes]
    out = []
    for i, item in enumerate(volumes):
        if isinstance(item, TrainingVolume):
            out.append(item)
        elif isinstance(item, (str, Path)):
            p = Path(item)
            raw = _read_tif(p)
            if raw.ndim == 2:
                raw = raw[None]
            x, scale = normalise(raw, modality)
            out.append(TrainingVolume(x, p.name, list(range(x.shape[0])), scale))
        elif isinstance(item, tuple):
            out.append(TrainingVolume(item[0], str(item[1]),
                                      list(item[2]) if len(item) > 2 else []))
        elif isinstance(item, np.ndarray):
            out.append(TrainingVolume(item, f"volume{i}"))
        else:
            raise InputError(f"cannot use {type(item).__name__} as a training volume; pass "
                             "(array (D, H, W), name) tuples or file paths")
    if not out:
        raise InputError("no training volumes given")
    shapes = {v.data.shape[1:] for v in out}
    if len(shapes) != 1:
        raise InputError(f"all training slices must have the same size, got {sorted(shapes)}")
    for v in out:
        if not np.isfinite(v.data).all():
            raise InputError(f"training volume {v.name!r} contains NaN/Inf")
        lo, hi = float(v.data.min()), float(v.data.max())
        if lo < -0.5 or hi > 1.5:
            raise InputError(f"training volume {v.name!r} has values in [{lo:g}, {hi:g}]; "
                             "normalise it to [0, 1] first (napari_patchdiff.conventions)")
    return out


def split_slices(volumes: Sequence[TrainingVolume], val_fraction: float):
    """Deterministic split by slices: ``(train, val)`` lists of ``(volume_index, local_index)``.

    Every ``k = round(1 / val_fraction)``-th slice of each volume (local indices ``k // 2 + j k``)
    goes to validation; ``val_fraction = 0`` keeps every slice for training.
    """
    if not 0 <= val_fraction < 0.5:
        raise InputError(f"val_fraction must be in [0, 0.5), got {val_fraction}")
    train, val = [], []
    k = round(1 / val_fraction) if val_fraction > 0 else 0
    for vi, v in enumerate(volumes):
        for j in range(v.data.shape[0]):
            (val if k and j % k == k // 2 else train).append((vi, j))
    if not train:
        raise InputError("no training slices left after the validation split")
    return train, val


def edm_loss(denoiser, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
             coords: torch.Tensor | None, reduce: bool = True) -> torch.Tensor:
    """EDM-weighted denoising loss; per-sample values if ``reduce`` is False."""
    s = sigma.reshape(-1, 1, 1, 1)
    weight = (s * s + SIGMA_DATA ** 2) / (s * SIGMA_DATA) ** 2
    d = denoiser(x0 + s * noise, sigma, coords)
    per = (weight * (d - x0) ** 2).mean(dim=(1, 2, 3))
    return per.mean() if reduce else per


def _step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7_919 + 12_345) % (2 ** 62)


class _Validator:
    """A fixed validation set (patches or whole slices, noise) scored at fixed sigmas."""

    def __init__(self, images, kind, patch_size, pad, seed, n, sigmas, device, max_batch=32):
        self.sigmas = tuple(float(s) for s in sigmas)
        self.max_batch = max_batch
        self.empty = images.shape[0] == 0 or n <= 0 or not self.sigmas
        if self.empty:
            return
        g = torch.Generator().manual_seed(int(seed) + 12_345)
        if kind == "patch":
            idx = torch.randint(0, images.shape[0], (n,), generator=g)
            x0, coords, _ = random_patches(images.cpu(), patch_size, pad, g, index=idx)
        else:
            x0 = pad_image(images.cpu()[:n], pad)
            coords = coordinate_grid(*x0.shape[-2:]).expand(x0.shape[0], -1, -1, -1)
        self.x0 = x0.to(device)
        self.coords = coords.to(device)
        self.noise = torch.randn(self.x0.shape, generator=g).to(device)

    @torch.no_grad()
    def __call__(self, model) -> dict[float, float] | None:
        if self.empty:
            return None
        out = {}
        n = self.x0.shape[0]
        for s in self.sigmas:
            tot = 0.0
            for i in range(0, n, self.max_batch):
                sl = slice(i, i + self.max_batch)
                sig = torch.full((self.x0[sl].shape[0],), s, device=self.x0.device)
                tot += float(edm_loss(model, self.x0[sl], sig, self.noise[sl], self.coords[sl],
                                      reduce=False).sum())
            out[s] = tot / n
        return out


def train(volumes, modality: str, out, config="cpu", patch_sizes=(16, 32, 64),
          probs=(0.2, 0.3, 0.5), batch: int | None = None, steps: int = 20000, lr: float = 1e-4,
          ema: float = 0.999, device="cpu", resume: bool = False, seed: int = 0,
          val_fraction: float = 0.1, kind: str = "patch", cancel=None, log_every: int = 10,
          val_every: int = 500, save_every: int = 200, pad: int | None = None,
          inference_patch_size: int | None = None, val_sigmas=VAL_SIGMAS, val_patches: int = 32,
          overwrite: bool = False, channels_last: bool | None = None,
          init=None) -> Iterator[TrainEvent]:
    """Train a prior, yielding :class:`TrainEvent`; see the module docstring.

    Parameters
    ----------
    volumes : ``"ct"``/``"mri"`` (the DATA.md split via :func:`load_training_slices`), or a list
        of :class:`TrainingVolume`, ``(array (D, H, W) on [0, 1], name[, slice indices])``
        tuples, or TIFF paths (normalised here with ``modality``).
    modality : "ct", "mri" or "unit"; recorded and checked when the prior is used.
    out : checkpoint path (``out.safetensors``, ``out.json``, ``out.state.safetensors``).
    config : network configuration name (``CONFIGS``) or architecture dict.
    batch : patches of the largest size per step (default 8 for patches, 4 for whole images);
        smaller patch sizes get ``batch * (max / P)^2``.
    steps : total steps of the run (a resumed run continues up to ``steps``).
    resume : continue from ``out``'s training state if it exists (else start afresh).
    overwrite : allow replacing an existing checkpoint when not resuming.
    kind : "patch" (PaDIS) or "whole" (whole-image ablation).
    cancel : a :class:`~napari_patchdiff.events.CancelToken`; when set, a checkpoint is written
        and :class:`~napari_patchdiff.events.Cancelled` is raised.
    log_every, val_every, save_every : event, validation and checkpoint periods (steps).
    pad : zero padding of each slice (default 24 for patches, 0 for whole images).
    channels_last : use the channels-last memory format (default: on for CPU, ~10 % faster).
    init : start from the (EMA) weights of this prior, a shipped name or a checkpoint path, with
        a fresh optimiser: fine-tuning on other volumes, or continuing a run whose optimiser state
        is not at hand (on another machine, say). Its kind, architecture and modality must match;
        the step count continues from its ``steps`` (``steps`` is the new total), and its
        validation history and wall time carry over when the training data are the same.
        The metadata's ``segments`` record each stretch of training (steps, device, seconds,
        optimiser fresh or resumed).
    """
    t_start = time.perf_counter()
    if kind not in ("patch", "whole"):
        raise InputError(f"kind must be 'patch' or 'whole', got {kind!r}")
    if modality not in INTENSITY:
        raise InputError(f"unknown modality {modality!r}; choose one of {tuple(INTENSITY)}")
    if steps < 1:
        raise InputError("steps must be >= 1")
    device = torch.device(device)
    if channels_last is None:
        channels_last = device.type == "cpu"
    mem = torch.channels_last if channels_last else torch.contiguous_format
    pad = (24 if kind == "patch" else 0) if pad is None else int(pad)
    batch = int(batch or (8 if kind == "patch" else 4))
    paths = checkpoint_paths(out)
    if not resume and not overwrite and paths["weights"].exists():
        raise InputError(f"{paths['weights']} exists; pass resume=True to continue it or "
                         "overwrite=True to replace it")
    if init is not None and resume:
        raise InputError("pass either init (start from a prior's weights) or resume (continue "
                         "the run at out), not both")
    if resume and not overwrite and paths["weights"].exists() and not paths["state"].exists():
        raise InputError(f"cannot resume {paths['weights']}: its training state "
                         f"{paths['state'].name} is missing (pass overwrite=True to start afresh)")

    vols = _as_volumes(volumes, modality)
    train_idx, val_idx = split_slices(vols, val_fraction)
    h, w = vols[0].data.shape[1:]
    arch = unet_config(config)
    mult = 2 ** (len(arch["channels"]) - 1)
    if kind == "patch":
        sampler = MixedPatchSampler(tuple(patch_sizes), tuple(probs), batch)
        bad = [p for p in sampler.patch_sizes if p % mult or p > min(h, w) + 2 * pad]
        if bad:
            raise InputError(f"patch sizes {bad} must be multiples of {mult} and fit the canvas")
        sizes = list(sampler.patch_sizes)
        if inference_patch_size is None:  # PaDIS's 56, within the trained sizes
            inference_patch_size = min(max(56, min(sizes)), max(sizes))
        ip = int(inference_patch_size)
        if ip % mult or ip > min(h, w) + 2 * pad:
            raise InputError(f"inference patch size {ip} must be a multiple of {mult} and fit "
                             "the canvas")
        multipliers = {str(k): v for k, v in sampler.multipliers.items()}
    else:
        sampler = None
        sizes = [h + 2 * pad] if h == w else [h + 2 * pad, w + 2 * pad]
        multipliers = None
        inference_patch_size = None

    def stack(idx):
        arr = np.stack([vols[v].data[j] for v, j in idx]) if idx else np.zeros((0, h, w), np.float32)
        return torch.from_numpy(arr)[:, None].to(device)

    train_images, val_images = stack(train_idx), stack(val_idx)

    def record(idx):
        rec: dict[int, list[int]] = {}
        for v, j in idx:
            rec.setdefault(v, []).append(vols[v].slices[j])
        return [{"name": vols[v].name, "slices": s} for v, s in sorted(rec.items())]

    k_val = round(1 / val_fraction) if val_fraction > 0 else 0
    meta: dict[str, Any] = {
        "name": paths["weights"].name[: -len(".safetensors")],
        "kind": kind,
        "architecture": arch,
        "config_name": config if isinstance(config, str) else None,
        "sigma_data": SIGMA_DATA,
        "patch_sizes": sizes,
        "patch_probs": list(sampler.probs) if sampler else [1.0],
        "batch": batch,
        "batch_multipliers": multipliers,
        "inference_patch_size": inference_patch_size,
        "pad": pad,
        "image_size": [int(h), int(w)],
        "canvas_size": [int(h) + 2 * pad, int(w) + 2 * pad],
        "coordinates": COORDINATE_NORMALISATION,
        "modality": modality,
        "intensity": {"normalisation": INTENSITY[modality],
                      "scales": {v.name: v.scale for v in vols if v.scale is not None}},
        "training_data": record(train_idx),
        "validation_data": record(val_idx),
        "validation": {"rule": (f"every {k_val}-th slice of each volume from local index "
                                f"{k_val // 2}") if k_val else "none",
                       "sigmas": list(val_sigmas), "samples": val_patches,
                       "patch_size": inference_patch_size, "seed": seed + 12_345},
        "loss": {"ln_sigma": [P_MEAN, P_STD], "weight": "(s^2 + sd^2) / (s sd)^2",
                 "optimizer": "Adam", "lr": lr},
        "total_steps": int(steps),
        "device": str(device),
        "ema_decay": ema,
        "ema_warmup": "d = min(ema_decay, (1 + t) / (10 + t))",
        "lr": lr,
        "seed": seed,
        "package_version": __version__,
        "torch_version": torch.__version__,
    }

    torch_state = torch.get_rng_state()
    torch.manual_seed(seed)
    model = EDMDenoiser(build_unet(arch), SIGMA_DATA)
    torch.set_rng_state(torch_state)
    model.to(device, memory_format=mem)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    step, wall_before, val_history, segments, optimiser = 0, 0.0, [], [], "fresh"
    if init is not None:
        step, wall_before, val_history, segments, ema_model = _init_from(init, meta, model, device)
    elif resume and paths["state"].exists():
        old = read_metadata(paths["weights"])
        for key in ("kind", "architecture", "patch_sizes", "patch_probs", "batch", "pad",
                    "image_size", "modality", "training_data", "seed"):
            if _norm(old.get(key)) != _norm(meta.get(key)):
                raise InputError(f"cannot resume {paths['weights']}: its {key} "
                                 f"({old.get(key)!r}) differs from this run's ({meta.get(key)!r})")
        info = load_training_state(paths["weights"], model, opt)
        step = int(info["step"])
        wall_before = float(info.get("wall_time_s", 0.0))
        val_history = info.get("val_history", [])
        ema_model, _ = load_checkpoint(paths["weights"], device=device)
        segments, optimiser = _segments(old), "resumed"
    else:
        ema_model = copy.deepcopy(model)
    ema_model.to(device, memory_format=mem).eval().requires_grad_(False)
    model.train()
    meta["parameters"] = count_parameters(model)

    validator = _Validator(val_images, kind, inference_patch_size or 0, pad, seed, val_patches,
                           val_sigmas, device)
    full_coords = (coordinate_grid(h + 2 * pad, w + 2 * pad, device=device)
                   if kind == "whole" else None)

    def elapsed():
        return wall_before + time.perf_counter() - t_start

    first_step = step

    last_val: dict | None = val_history[-1][1] if val_history else None

    def save(at_step):
        seg = {"start_step": first_step, "end_step": at_step, "device": str(device),
               "seconds": round(time.perf_counter() - t_start, 1), "optimiser": optimiser}
        m = dict(meta, steps=at_step, wall_time_s=round(elapsed(), 3), segments=segments + [seg],
                 final_val_loss=_keys_str(last_val),
                 val_history=[[s, _keys_str(v)] for s, v in val_history],
                 created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        path = save_checkpoint(paths["weights"], ema_model, m)
        save_training_state(paths["weights"], model, opt,
                            {"step": at_step, "wall_time_s": elapsed(), "seed": seed,
                             "val_history": [[s, _keys_str(v)] for s, v in val_history]})
        return str(path)

    if step >= steps:
        yield TrainEvent(step, steps, float("nan"), None, elapsed(), None)
        return

    n_train = train_images.shape[0]
    losses: list[float] = []
    bad_steps = 0
    fork_devices = ([device.index if device.index is not None else torch.cuda.current_device()]
                    if device.type == "cuda" else [])
    while step < steps:
        if cancel is not None and getattr(cancel, "cancelled", False):
            path = save(step)
            raise Cancelled(f"training cancelled at step {step}; checkpoint saved to {path}")
        t = step + 1
        g = torch.Generator().manual_seed(_step_seed(seed, t))
        if kind == "patch":
            p, n = sampler.draw(g)
            idx = torch.randint(0, n_train, (n,), generator=g)
            x0, coords, _ = random_patches(train_images, p, pad, g, index=idx)
        else:
            n = batch
            idx = torch.randint(0, n_train, (n,), generator=g)
            x0 = pad_image(train_images[idx.to(device)], pad)
            coords = full_coords.expand(n, -1, -1, -1)
        sigma = torch.exp(P_MEAN + P_STD * torch.randn(n, generator=g)).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        x0 = x0.contiguous(memory_format=mem)
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(_step_seed(seed, t) ^ 0x5EED)
            loss = edm_loss(model, x0, sigma, noise, coords)
            if torch.isfinite(loss):
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bad_steps = 0
            else:
                bad_steps += 1
                if bad_steps >= 5:
                    raise SolverError(f"training diverged: non-finite loss at step {t}")
        decay = min(ema, (1 + t) / (10 + t))
        with torch.no_grad():
            for pe, pm in zip(ema_model.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 - decay)
        step = t
        losses.append(float(loss.detach()))

        val = None
        if (val_every and step % val_every == 0) or step == steps:
            val = validator(ema_model)
            if val is not None:
                val_history.append([step, val])
                last_val = val
        ckpt = None
        if (save_every and step % save_every == 0) or step == steps:
            ckpt = save(step)
        if step % max(1, log_every) == 0 or val is not None or ckpt or step == steps:
            yield TrainEvent(step, steps, float(np.mean(losses)) if losses else float("nan"),
                             val, elapsed(), ckpt)
            losses = []


def _segments(meta: dict) -> list[dict]:
    """The training stretches recorded in a checkpoint's metadata (one for older files)."""
    if meta.get("segments"):
        return list(meta["segments"])
    return [{"start_step": 0, "end_step": int(meta.get("steps", 0)),
             "device": meta.get("device", "?"), "seconds": meta.get("wall_time_s"),
             "optimiser": "fresh"}]


def _init_from(init, meta: dict, model, device):
    """Load ``init``'s EMA weights into ``model`` (and a copy as the EMA model) for
    :func:`train`; returns ``(step, wall_before, val_history, segments, ema_model)``."""
    from .priors.prior import shipped_priors

    path = shipped_priors().get(str(init), init)
    src, old = load_checkpoint(path, device="cpu")
    for key in ("kind", "architecture", "modality", "sigma_data"):
        if _norm(old.get(key)) != _norm(meta.get(key)):
            raise InputError(f"cannot start from {init}: its {key} ({old.get(key)!r}) differs "
                             f"from this run's ({meta.get(key)!r})")
    model.load_state_dict(src.state_dict())
    ema_model = copy.deepcopy(model)
    same_data = all(_norm(old.get(k)) == _norm(meta.get(k))
                    for k in ("training_data", "validation_data", "validation", "pad"))
    meta["initialised_from"] = {"name": old.get("name"), "steps": old.get("steps"),
                                "same_training_data": same_data}
    step = int(old.get("steps", 0))
    if not same_data:
        return step, 0.0, [], _segments(old), ema_model
    return (step, float(old.get("wall_time_s") or 0.0), old.get("val_history", []),
            _segments(old), ema_model)


def _keys_str(d):
    return None if d is None else {f"{float(k):g}": float(v) for k, v in d.items()}


def _norm(obj):
    import json

    return json.loads(json.dumps(obj, default=str))
