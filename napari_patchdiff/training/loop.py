"""The training loop: :func:`train` as a short sequence of named steps.

1. :func:`output_paths`: where the checkpoint goes, and whether it may be written or resumed;
2. :func:`prepare_data`: normalised volumes, the slice split, the patch sampler and the checks
   that need the data, all before the first step;
3. :func:`checkpoint_metadata` (the recipe) and :func:`build_run`: the network, its EMA copy and
   Adam, restored from the run to ``resume`` or the prior to start from (``init``);
4. per step: :func:`draw_batch`, :func:`optimisation_step` (which also moves the EMA),
   validation and the memorisation monitor every ``val_every`` steps (and, with
   ``stop_on_memorisation``, the end of the run at its onset), :func:`save_run` every ``save_every`` steps and at the
   end, and a :class:`TrainEvent` every ``log_every`` steps.

Determinism and resume: step ``t`` draws everything (patch size, slices, locations, sigma, noise
and the dropout masks) from generators seeded with ``(seed, t)`` alone, so a run that is stopped
and resumed gives the same weights as an uninterrupted one; the training state file stores the
raw weights, the Adam moments and the counters (the EMA weights are the checkpoint itself).

Stopping: a set cancel token (checked before every step) or Ctrl-C (``KeyboardInterrupt``,
between or during a step) saves a checkpoint of the last completed step and raises
:class:`~napari_patchdiff.events.Cancelled` saying which step and where. A step's weight update
(Adam, EMA, step counter) is one unit: Ctrl-C during it is held back until it is done, so a
step is either wholly in the checkpoint or not at all.

Kept as one module: it is the one training loop, already cut into the named steps listed
above, and its rules of determinism and stopping hold across all of them (every draw of step
``t`` seeded by ``(seed, t)``, a checkpoint at every way out); the small types it passes between
the steps (:class:`TrainingData`, :class:`Run`, :class:`Watch`, :class:`Batch`) exist only for
it. What the loop uses lives beside it (:mod:`.config`, :mod:`.data`, :mod:`.objective`,
:mod:`.checkpoints`, :mod:`.memorisation`).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import signal
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..errors import InputError, SolverError
from ..events import Cancelled
from ..priors.checkpoint import checkpoint_paths
from ..priors.network import EDMDenoiser, build_unet, count_parameters
from ..priors.patches import MixedPatchSampler, coordinate_grid, pad_image, random_patches
from .checkpoints import (Progress, checkpoint_metadata, early_stop_record, init_from,
                          resume_from, save_run)
from .config import TrainConfig
from .data import TrainingVolume, split_slices, training_volumes
from .memorisation import MemorisationMonitor, OnsetRule
from .objective import P_MEAN, P_STD, SIGMA_DATA, Validator, edm_loss, step_seed

__all__ = ["TrainEvent", "train", "TrainingData", "prepare_data", "build_run", "draw_batch",
           "optimisation_step", "output_paths"]

#: consecutive non-finite losses after which training stops as diverged
MAX_BAD_STEPS = 5


@dataclass(frozen=True)
class TrainEvent:
    """Progress of :func:`train`.

    step, total : steps done (1-based) and the run's target.
    loss : mean training loss over the steps since the previous event (skipped non-finite steps
        left out; NaN if every one of them was skipped).
    val_losses : {sigma: validation loss} when validation ran at this step, else None.
    seconds : wall time of the whole run so far (earlier sessions included when resumed).
    checkpoint : path of the checkpoint written at this step, else None.
    memorisation : ``{"gap", "icr"}`` of the memorisation monitor when it ran at this step
        (:mod:`~napari_patchdiff.training.memorisation`), else None.
    early_stop : the checkpoint's ``early_stop`` record when the run stopped at the
        memorisation onset (the last event), else None.
    """

    step: int
    total: int
    loss: float
    val_losses: dict[float, float] | None
    seconds: float
    checkpoint: str | None = None
    memorisation: dict[str, float] | None = None
    early_stop: dict | None = None

    @property
    def done(self) -> bool:
        return self.step >= self.total or self.early_stop is not None


def train(volumes, out, config: TrainConfig, cancel=None) -> Iterator[TrainEvent]:
    """Train a prior as ``config`` says, yielding :class:`TrainEvent` s.

    volumes : what :func:`~napari_patchdiff.training.training_volumes` takes (usually its
        :class:`TrainingVolume` list; ``config.modality`` None: that of the data).
    out : checkpoint path (``out.safetensors``, ``out.json``, ``out.state.safetensors``).
    cancel : a :class:`~napari_patchdiff.events.CancelToken`, checked before every step; when it
        is set, a checkpoint is written and :class:`~napari_patchdiff.events.Cancelled` raised.

    ``KeyboardInterrupt`` (Ctrl-C) inside the loop likewise saves the EMA weights and training
    state of the last completed step and raises :class:`~napari_patchdiff.events.Cancelled`
    ("training interrupted at step N; checkpoint saved to PATH (resume with resume=True)"),
    chained to the interrupt; ``resume=True`` then continues exactly as if uninterrupted.
    """
    started = time.perf_counter()
    if not isinstance(config, TrainConfig):
        raise InputError(f"config must be a TrainConfig, got {type(config).__name__}")
    paths = output_paths(out, config)
    config, data = prepare_data(volumes, config)
    name = paths["weights"].name[: -len(".safetensors")]
    meta = checkpoint_metadata(config, data, name)
    run = build_run(config, meta, paths, started)
    meta.update({"initialised_from": run.origin} if run.origin else {},
                parameters=count_parameters(run.model))

    def save() -> str:
        return save_run(paths, meta, run, run.step)

    if run.step >= config.steps:
        yield TrainEvent(run.step, config.steps, float("nan"), None, run.elapsed(), None)
        return
    try:
        validator = Validator(data.val_images, config.kind, config.inference_patch_size or 0,
                              config.pad, config.seed, config.val_patches, config.val_sigmas,
                              data.device)
        watch = Watch(config, data)
        losses = _LossLog()
        while run.step < config.steps:
            _stop_if_cancelled(cancel, run, save)
            t = run.step + 1
            losses.add(optimisation_step(run, draw_batch(config, data, t), config, t))
            due = _due(t, config.val_every, config.steps)
            val = validator(run.ema_model) if due else None
            if val is not None:
                run.progress.val_history.append([t, val])
                run.last_val = val
            mem, onset = watch(run, t) if due else (None, None)
            if onset is not None:
                path = save_run(paths, meta, run, run.step, early_stop=onset)
                yield TrainEvent(t, config.steps, losses.pop_mean(), val, run.elapsed(), path,
                                 mem, early_stop_record(onset))
                return
            ckpt = save() if _due(t, config.save_every, config.steps) else None
            if t % max(1, config.log_every) == 0 or val is not None or ckpt or t == config.steps:
                yield TrainEvent(t, config.steps, losses.pop_mean(), val, run.elapsed(), ckpt,
                                 mem)
    except KeyboardInterrupt as exc:
        raise _interrupted(run, save, paths) from exc


# ------------------------------------------------------------------------------------------------
# before the first step


def output_paths(out, config: TrainConfig) -> dict:
    """The checkpoint's paths; refuses to replace a checkpoint unless resuming or overwriting,
    and to resume one without its training state. The messages name the API's keywords (the
    command line shows its flags instead: ``napari_patchdiff.cli._common.API_WORDS``)."""
    paths = checkpoint_paths(out)
    if not config.resume and not config.overwrite and paths["weights"].exists():
        raise InputError(f"{paths['weights']} exists; pass resume=True to continue it or "
                         f"overwrite=True to replace it")
    if (config.resume and not config.overwrite and paths["weights"].exists()
            and not paths["state"].exists()):
        raise InputError(f"cannot resume {paths['weights']}: its training state "
                         f"{paths['state'].name} is missing (pass overwrite=True to start "
                         f"afresh)")
    return paths


@dataclass
class TrainingData:
    """The volumes, their split into ``(volume, slice)`` indices, the stacked slices (N, 1, H, W)
    on the device, and the patch sizes with their probabilities and batch multipliers (for a
    whole-image prior: the canvas, [1.0] and None)."""

    volumes: list[TrainingVolume]
    train_idx: list[tuple[int, int]]
    val_idx: list[tuple[int, int]]
    train_images: torch.Tensor
    val_images: torch.Tensor
    sampler: MixedPatchSampler | None
    patch_sizes: list[int]
    patch_probs: list[float]
    multipliers: dict[str, int] | None
    full_coords: torch.Tensor | None  # the canvas coordinates (whole-image priors)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.volumes[0].data.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.train_images.device


def prepare_data(volumes, config: TrainConfig) -> tuple[TrainConfig, TrainingData]:
    """Normalise and split ``volumes``, check the patch sizes against the network and the
    canvas; returns the config (with the data's modality if it had none) and the data."""
    vols, modality = training_volumes(volumes, config.modality)
    if config.modality is None:
        config = dataclasses.replace(config, modality=modality)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {config.device!r} asked for, but torch sees no CUDA device")
    train_idx, val_idx = split_slices(vols, config.val_fraction)
    h, w = vols[0].data.shape[1:]
    pad, mult = config.pad, config.downsampling
    sampler, full_coords = None, None
    if config.kind == "patch":
        sampler = MixedPatchSampler(config.patch_sizes, config.patch_probs, config.batch)
        bad = [p for p in sampler.patch_sizes if p % mult or p > min(h, w) + 2 * pad]
        if bad:
            raise InputError(f"patch sizes {bad} must be multiples of {mult} and fit the canvas")
        ip = config.inference_patch_size
        if ip % mult or ip > min(h, w) + 2 * pad:
            raise InputError(f"inference patch size {ip} must be a multiple of {mult} and fit "
                             "the canvas")
        sizes, probs = list(sampler.patch_sizes), list(sampler.probs)
        multipliers = {str(k): v for k, v in sampler.multipliers.items()}
    else:
        sizes = [h + 2 * pad] if h == w else [h + 2 * pad, w + 2 * pad]
        probs, multipliers = [1.0], None
        full_coords = coordinate_grid(h + 2 * pad, w + 2 * pad, device=device)

    def stack(idx):
        arr = np.stack([vols[v].data[j] for v, j in idx]) if idx else np.zeros((0, h, w), np.float32)
        return torch.from_numpy(arr)[:, None].to(device)

    data = TrainingData(vols, train_idx, val_idx, stack(train_idx), stack(val_idx), sampler,
                        sizes, probs, multipliers, full_coords)
    return config, data


class Run:
    """The state of a run: the trained network, its EMA copy, Adam, the :class:`Progress`, the
    last validation losses and the clock (``started``: this session's start)."""

    def __init__(self, model, ema_model, opt, progress: Progress, started: float,
                 origin: dict | None = None):
        self.model, self.ema_model, self.opt = model, ema_model, opt
        self.progress, self.started, self.origin = progress, started, origin
        self.first_step = progress.step
        self.last_val = progress.val_history[-1][1] if progress.val_history else None
        self.bad_steps = 0  # consecutive non-finite losses
        self.updating: int | None = None  # the step whose weight update is under way

    @property
    def step(self) -> int:
        return self.progress.step

    def session_seconds(self) -> float:
        return time.perf_counter() - self.started

    def elapsed(self) -> float:
        """Wall time of the whole run, earlier sessions included."""
        return self.progress.wall_before + self.session_seconds()


def build_run(config: TrainConfig, meta: dict, paths: dict, started: float) -> Run:
    """The network (initialised from ``seed`` without touching the global RNG), its EMA copy
    and Adam, restored from ``config.init`` or, resuming, from the training state at ``paths``."""
    device, mem = torch.device(config.device), config.memory_format
    torch_state = torch.get_rng_state()
    torch.manual_seed(config.seed)
    model = EDMDenoiser(build_unet(config.architecture), SIGMA_DATA)
    torch.set_rng_state(torch_state)
    model.to(device, memory_format=mem)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    origin = None
    if config.init is not None:
        progress, ema_model, origin = init_from(config.init, meta, model)
    elif config.resume and paths["state"].exists():
        progress, ema_model = resume_from(paths, meta, model, opt, device)
    else:
        progress, ema_model = Progress(), copy.deepcopy(model)
    ema_model.to(device, memory_format=mem).eval().requires_grad_(False)
    model.train()
    return Run(model, ema_model, opt, progress, started, origin)


class Watch:
    """The memorisation monitor of a run (:mod:`~napari_patchdiff.training.memorisation`): at
    each validation it measures the EMA network, records the result in the progress and, with
    ``stop_on_memorisation``, keeps the EMA weights of the last measurement below the threshold
    and reports the onset as ``{"onset_step", "kept_step", "threshold", "weights"}``."""

    def __init__(self, config: TrainConfig, data: TrainingData):
        self.monitor = None
        if config.memorisation_probes:
            patch = config.inference_patch_size or 0
            self.monitor = MemorisationMonitor(data.train_images, config.kind, patch, config.pad,
                                               config.seed, data.device,
                                               n=config.memorisation_probes)
        self.rule = (OnsetRule(config.memorisation_threshold)
                     if config.stop_on_memorisation else None)
        self.kept: tuple[int, dict] | None = None

    def __call__(self, run: Run, t: int) -> tuple[dict | None, dict | None]:
        if self.monitor is None:
            return None, None
        mem = self.monitor(run.ema_model)
        if mem is None:
            return None, None
        run.progress.memorisation_history.append([t, mem])
        if self.rule is None:
            return mem, None
        if not self.rule.update(t, mem["gap"]):
            if self.rule.last_good == t:
                self.kept = (t, copy.deepcopy(run.ema_model.state_dict()))
            return mem, None
        if self.kept is None:  # memorising from the first validation: keep nothing earlier
            return mem, None
        return mem, {"onset_step": t, "kept_step": self.kept[0],
                     "threshold": self.rule.threshold, "weights": self.kept[1]}


# ------------------------------------------------------------------------------------------------
# one step


@dataclass
class Batch:
    x0: torch.Tensor  # clean patches or padded slices (N, 1, P, P)
    coords: torch.Tensor  # their canvas coordinates (N, 2, P, P)
    sigma: torch.Tensor  # (N,)
    noise: torch.Tensor  # like x0


def draw_batch(config: TrainConfig, data: TrainingData, t: int) -> Batch:
    """Step ``t``'s batch, drawn from a generator seeded with ``(seed, t)`` alone: the patch
    size (patch priors), the slices, the patch locations, sigma (log-normal) and the noise."""
    g = torch.Generator().manual_seed(step_seed(config.seed, t))
    n_train, device = data.train_images.shape[0], data.device
    if config.kind == "patch":
        p, n = data.sampler.draw(g)
        idx = torch.randint(0, n_train, (n,), generator=g)
        x0, coords, _ = random_patches(data.train_images, p, config.pad, g, index=idx)
    else:
        n = config.batch
        idx = torch.randint(0, n_train, (n,), generator=g)
        x0 = pad_image(data.train_images[idx.to(device)], config.pad)
        coords = data.full_coords.expand(n, -1, -1, -1)
    sigma = torch.exp(P_MEAN + P_STD * torch.randn(n, generator=g)).to(device)
    noise = torch.randn(x0.shape, generator=g).to(device)
    return Batch(x0.contiguous(memory_format=config.memory_format), coords, sigma, noise)


def optimisation_step(run: Run, batch: Batch, config: TrainConfig, t: int) -> float:
    """One Adam step on ``batch`` (dropout seeded with ``(seed, t)``; skipped if the loss is not
    finite, and :class:`SolverError` after :data:`MAX_BAD_STEPS` such steps in a row), then the
    EMA update ``ema <- d ema + (1 - d) w`` with the warm-up ``d = min(ema, (1 + t) / (10 + t))``.
    Returns the loss (NaN/Inf for a skipped step).

    The loss and its gradients change nothing that is saved; the update (Adam, EMA and
    ``run.progress.step = t``) runs with Ctrl-C held back (:func:`_interrupts_deferred`) and
    with ``run.updating = t`` meanwhile, so an interrupt never leaves a half-updated run that
    looks complete."""
    device = batch.x0.device
    fork_devices = ([device.index if device.index is not None else torch.cuda.current_device()]
                    if device.type == "cuda" else [])
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(step_seed(config.seed, t) ^ 0x5EED)
        loss = edm_loss(run.model, batch.x0, batch.sigma, batch.noise, batch.coords)
        finite = bool(torch.isfinite(loss))
        if finite:
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
    if not finite and run.bad_steps + 1 >= MAX_BAD_STEPS:
        run.bad_steps += 1
        raise SolverError(f"training diverged: non-finite loss at step {t}")
    decay = min(config.ema, (1 + t) / (10 + t))
    with _interrupts_deferred():
        run.updating = t
        if finite:
            run.opt.step()
        run.bad_steps = 0 if finite else run.bad_steps + 1
        with torch.no_grad():
            for pe, pm in zip(run.ema_model.parameters(), run.model.parameters()):
                pe.lerp_(pm, 1.0 - decay)
        run.progress.step = t
        run.updating = None
    return float(loss.detach())


# ------------------------------------------------------------------------------------------------
# between steps


class _LossLog:
    """The mean of the finite losses since the last event (NaN if there were none)."""

    def __init__(self):
        self.losses: list[float] = []

    def add(self, loss: float) -> None:
        if math.isfinite(loss):
            self.losses.append(loss)

    def pop_mean(self) -> float:
        mean = float(np.mean(self.losses)) if self.losses else float("nan")
        self.losses = []
        return mean


def _due(step: int, every: int, total: int) -> bool:
    """Whether a periodic action (every ``every`` steps, 0: never, and at the end) is due."""
    return bool(every and step % every == 0) or step == total


@contextlib.contextmanager
def _interrupts_deferred(deliver: bool = True):
    """Hold back Ctrl-C (SIGINT) inside the block; afterwards, if one came and the block ended
    normally, hand it to the previous handler (``KeyboardInterrupt`` by default), or drop it
    (``deliver=False``). A no-op outside the main thread (signals only reach that one) and
    where SIGINT is ignored or left to the OS."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        try:
            previous = signal.getsignal(signal.SIGINT)
        except (ValueError, OSError):  # pragma: no cover - no signal support
            previous = None
    if not callable(previous):
        yield
        return
    caught: list = []
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: caught.append((signum, frame)))
    except (ValueError, OSError):  # pragma: no cover - e.g. an embedded interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and deliver:
        previous(*caught[0])


def _kept(paths) -> str:
    """What the checkpoint at ``paths`` holds now, in words."""
    from ..priors.checkpoint import read_metadata

    if not paths["weights"].is_file():
        return "no checkpoint was kept"
    try:
        return f"{paths['weights']} holds step {read_metadata(paths['weights']).get('steps')}"
    except InputError as exc:
        return f"{paths['weights']} is unreadable ({exc})"


def _interrupted(run: Run, save, paths) -> Cancelled:
    """After Ctrl-C: save the last completed step (Ctrl-C again is ignored while saving) and
    return the :class:`Cancelled` that says so; nothing is saved if a weight update was
    interrupted half-way (only possible for a ``KeyboardInterrupt`` raised, not signalled)."""
    if run.updating is not None:
        return Cancelled(f"training interrupted during step {run.updating}, before its weight "
                         f"update finished; no checkpoint saved (the state is inconsistent); "
                         f"{_kept(paths)}")
    with _interrupts_deferred(deliver=False):
        path = save()
    return Cancelled(f"training interrupted at step {run.step}; checkpoint saved to {path} "
                     "(resume with resume=True)")


def _stop_if_cancelled(cancel, run: Run, save) -> None:
    """Save a checkpoint and raise :class:`Cancelled` (saying where) if ``cancel`` is set."""
    if cancel is None:
        return
    try:
        cancel.check()
    except Cancelled as exc:
        path = save()
        raise Cancelled(f"training cancelled at step {run.step}; checkpoint saved to "
                        f"{path}") from exc
