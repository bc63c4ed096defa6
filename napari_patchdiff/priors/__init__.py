"""Diffusion priors: the U-Net, EDM preconditioning, PaDIS patch geometry, checkpoints.

Public API::

    from napari_patchdiff.priors import load_prior
    prior = load_prior("path/to/ct_cpu.safetensors", device="cpu")   # or a shipped name
    prior.check((256, 256), "ct")          # InputError on a convention mismatch
    d = prior.denoise(x, sigma)            # x (B, 1, H, W) on [0, 1]; prior.nfe counts calls
"""
from .checkpoint import (check_compatible, load_checkpoint, read_metadata, save_checkpoint)
from .network import CONFIGS, EDMDenoiser, UNet, build_unet, count_parameters
from .patches import (COORDINATE_NORMALISATION, MixedPatchSampler, assembled_denoise,
                      averaged_denoise, coordinate_grid, overlapping_origins, pad_image,
                      random_patches, random_shift, stitched_denoise, tiling_origins)
from .prior import PatchPrior, Prior, WholeImagePrior, load_prior, shipped_priors

__all__ = [
    "CONFIGS", "COORDINATE_NORMALISATION", "EDMDenoiser", "MixedPatchSampler", "PatchPrior",
    "Prior", "UNet", "WholeImagePrior", "assembled_denoise", "averaged_denoise", "build_unet",
    "check_compatible", "coordinate_grid", "count_parameters", "load_checkpoint", "load_prior",
    "overlapping_origins", "pad_image", "random_patches", "random_shift", "read_metadata",
    "save_checkpoint", "shipped_priors", "stitched_denoise", "tiling_origins",
]
