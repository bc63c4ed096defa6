"""Training patch (PaDIS) and whole-image diffusion priors with the EDM objective.

The CLI, the GUI and scripts all train the same way: :func:`training_volumes` turns files,
arrays or image layers into normalised volumes, a :class:`TrainConfig` holds (and checks) every
option, and :func:`train` is a generator of :class:`TrainEvent` s::

    from napari_patchdiff.training import TrainConfig, train, training_volumes

    vols, modality = training_volumes(["scan.nii.gz"], bin=2)   # or "ct" / "mri": DATA.md's split
    config = TrainConfig(modality=modality, network="cpu", steps=20000)
    for ev in train(vols, "priors/my_ct", config):
        print(ev.step, ev.total, ev.loss, ev.val_losses)

Modules: :mod:`.config` (:class:`TrainConfig` and its derived defaults), :mod:`.data` (volumes,
the development split, the validation split; with :mod:`.phantoms`, the synthetic training
images, and :mod:`.resample`, 2 x 2 binning), :mod:`.objective` (the EDM loss, the validation
set), :mod:`.checkpoints` (metadata, saving, resuming, starting from a prior), :mod:`.loop`
(:func:`train`).

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
A step whose loss is not finite is skipped (and left out of the logged loss); five in a row stop
the run with :class:`~napari_patchdiff.errors.SolverError`.

EMA: ``ema <- d ema + (1 - d) w`` after every step with ``d = min(ema, (1 + t) / (10 + t))`` (a
warm-up so short runs are not dominated by the initial weights).

Validation: every ``k = round(1 / val_fraction)``-th slice of each volume (local indices
``k // 2, k // 2 + k, ...``) is held out. Every ``val_every`` steps and at the end, the EMA model
is scored on a fixed set (seed ``seed + 12345``) of ``val_patches`` patches of the inference
patch size (whole slices for whole-image priors), with fixed noise, at each sigma in
:data:`VAL_SIGMAS`, with the same weighted loss.
"""
from .config import TrainConfig
from .data import DATA_DIR, TrainingVolume, load_training_slices, split_slices, training_volumes
from .loop import TrainEvent, train
from .objective import VAL_SIGMAS, edm_loss

__all__ = ["TrainConfig", "TrainEvent", "TrainingVolume", "train", "training_volumes",
           "load_training_slices", "split_slices", "VAL_SIGMAS", "DATA_DIR", "edm_loss"]
