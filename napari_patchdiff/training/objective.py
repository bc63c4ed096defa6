"""The EDM training objective and the fixed validation set it is scored on.

Objective (Karras et al. 2022): ``ln sigma ~ N(-1.2, 1.2^2)``, loss
``(s^2 + sd^2) / (s sd)^2 * |D(x0 + s n, s) - x0|^2`` averaged over pixels and samples.
"""
from __future__ import annotations

import torch

from ..priors.patches import coordinate_grid, pad_image, random_patches

__all__ = ["VAL_SIGMAS", "P_MEAN", "P_STD", "SIGMA_DATA", "edm_loss", "step_seed", "Validator"]

#: the noise levels the validation loss is reported at
VAL_SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
#: the log-normal training noise distribution and the data standard deviation of EDM
P_MEAN, P_STD, SIGMA_DATA = -1.2, 1.2, 0.5


def edm_loss(denoiser, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
             coords: torch.Tensor | None, reduce: bool = True) -> torch.Tensor:
    """EDM-weighted denoising loss; per-sample values if ``reduce`` is False."""
    s = sigma.reshape(-1, 1, 1, 1)
    weight = (s * s + SIGMA_DATA ** 2) / (s * SIGMA_DATA) ** 2
    d = denoiser(x0 + s * noise, sigma, coords)
    per = (weight * (d - x0) ** 2).mean(dim=(1, 2, 3))
    return per.mean() if reduce else per


def step_seed(seed: int, step: int) -> int:
    """The seed of everything step ``step`` of a run seeded ``seed`` draws."""
    return (int(seed) * 1_000_003 + int(step) * 7_919 + 12_345) % (2 ** 62)


class Validator:
    """A fixed validation set (patches or whole slices, noise; seed ``seed + 12345``) scored at
    fixed sigmas with the training loss."""

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
