"""A memorisation monitor for training, computed from training patches alone (no held-out set).

What it measures. A fixed probe set is drawn once per run from the *training* slices (seed
``seed + 54321``): ``n`` patches of the inference patch size (whole padded slices for a
whole-image prior) with fixed noise at ``sigma`` = 0.2 (an intermediate level). Each probe is
seen four times: as drawn and rotated by 180 degrees, each with two noise draws. At every
validation the EMA network denoises the probes and two numbers are recorded:

``gap`` (the memorisation indicator, used by the onset rule)
    the denoising loss on the rotated probes over that on the probes as drawn. A prior that
    generalises denoises a training patch about as well as a rotated copy of it; a network
    that memorises its training patches denoises them far better than anything else, and the
    ratio climbs. The rotation makes a held-out copy of every training patch with the same
    intensities and textures, so no held-out slice is needed (one-slice training has none).
    Anatomy that is not rotation symmetric raises the ratio a little for a prior that
    generalises. Measured (``benchmarks/results/memorisation.md``): the shipped priors on their
    own training slices 1.06-1.27 (ct 1.27 on training slices, 1.21 on test slices); a tiny
    network on one 32 x 32 CT slice 1.58 after 200 steps, 3.1 after 400, 22 after 2,000; the
    same recipe on 24 slices 1.15, 1.26, 2.36.
``icr`` (recorded for study, not used by the rule)
    our estimate of the Invariant Contamination Ratio of Li et al., "Evaluating the
    Representation Space of Diffusion Models via Self-Supervised Principles" (ICML 2026, arXiv
    2606.09718), on the bottleneck features (the U-Net's middle block, averaged over space):
    invariant part ``s`` = the mean of a probe's four views, residual ``xi`` = view - ``s``;
    ICR = the mean over the ``k = min(8, n - 1, d)`` leading generalised eigenvectors ``v`` of
    ``S_inv v = lambda S_res v`` (Fisher directions) of ``v' S_res v / v' S_inv v``. The paper
    reports it rising at the onset of memorisation; with our estimator and patch priors it
    *falls* while a network memorises one slice (0.21 to 0.05 over 2,000 steps, same
    benchmark: the separation of the probes grows faster than the residual), so it does not
    drive the onset rule.

The onset rule (:class:`OnsetRule`): ``gap`` above ``threshold`` (default 2.0, above every
shipped prior) at ``patience`` (2) consecutive validations. ``train --stop-on-memorisation``
(``TrainConfig(stop_on_memorisation=True)``) then ends the run and keeps the EMA weights of the
last validation before the onset (the checkpoint's ``early_stop`` says which steps).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..priors.patches import coordinate_grid, pad_image, random_patches

__all__ = ["icr", "MemorisationMonitor", "OnsetRule", "PROBE_SIGMA", "MONITOR_RECORD"]

#: the probe noise level (normalised intensities; sigma_data is 0.5)
PROBE_SIGMA = 0.2
#: the number of Fisher directions averaged
DIRECTIONS = 8
#: what a checkpoint's ``memorisation_history`` holds, in words
MONITOR_RECORD = (
    "gap: denoising loss of the EMA network on 180-degree rotated training probes over that on "
    f"the probes as drawn (sigma {PROBE_SIGMA:g}); about 1 generalises, rising means "
    "memorising; icr: Invariant Contamination Ratio estimate on the bottleneck features "
    "(napari_patchdiff.training.memorisation)")


def icr(features: torch.Tensor, directions: int = DIRECTIONS) -> float:
    """The Invariant Contamination Ratio of ``features`` (n probes, views, d), float64 inside."""
    h = features.detach().to(torch.float64)
    n, views, d = h.shape
    if n < 2 or views < 2:
        raise ValueError(f"ICR needs at least 2 probes and 2 views, got {n} and {views}")
    s = h.mean(1)
    xi = (h - s[:, None]).reshape(-1, d)
    s = s - s.mean(0)
    s_inv = s.T @ s / (n - 1)
    s_res = xi.T @ xi / (n * (views - 1))
    ridge = 1e-4 * float(torch.trace(s_res)) / d + 1e-12
    chol = torch.linalg.cholesky(s_res + ridge * torch.eye(d, dtype=h.dtype))
    # L^-1 S_inv L^-T has the generalised eigenvalues of (S_inv, S_res + ridge)
    w = torch.linalg.solve_triangular(chol, s_inv, upper=False)
    m = torch.linalg.solve_triangular(chol, w.T, upper=False)
    lam = torch.linalg.eigvalsh((m + m.T) / 2).flip(0)
    k = max(1, min(directions, n - 1, d))
    top = lam[:k].clamp_min(1e-12)
    return float((1.0 / top).mean())


class MemorisationMonitor:
    """The fixed probe set of a run and the memorisation measures of a network on it (see the
    module docstring).

    images : the training slices (N, 1, H, W); kind, patch_size, pad : as the run's;
    n : probes; sigma : their noise level."""

    def __init__(self, images: torch.Tensor, kind: str, patch_size: int, pad: int, seed: int,
                 device, n: int = 32, sigma: float = PROBE_SIGMA):
        self.empty = images.shape[0] == 0 or n < 2
        if self.empty:
            return
        g = torch.Generator().manual_seed(int(seed) + 54_321)
        imgs = images.detach().cpu().float()
        idx = torch.randint(0, imgs.shape[0], (n,), generator=g)
        if kind == "patch":
            x0, coords, _ = random_patches(imgs, patch_size, pad, g, index=idx)
        else:
            x0 = pad_image(imgs[idx], pad)
            coords = coordinate_grid(*x0.shape[-2:]).expand(n, -1, -1, -1)
        rot = x0.flip(-1).flip(-2)
        clean = torch.cat([x0, rot, x0, rot])  # views: drawn, rotated, drawn, rotated
        noise = torch.randn(clean.shape, generator=g)
        self.n, self.sigma = n, float(sigma)
        self.clean = clean.to(device)
        self.x = (clean + sigma * noise).to(device)
        self.coords = coords.repeat(4, 1, 1, 1).to(device)

    @torch.no_grad()
    def __call__(self, model, max_batch: int = 64) -> dict[str, float] | None:
        """``{"gap", "icr"}`` of ``model`` (an EDMDenoiser) on the probes; None without probes."""
        if self.empty:
            return None
        feats, err = [], []
        hook = model.net.mid[-1].register_forward_hook(
            lambda _m, _i, out: feats.append(out.float().mean(dim=(2, 3)).cpu()))
        try:
            for i in range(0, self.x.shape[0], max_batch):
                sl = slice(i, i + max_batch)
                sig = torch.full((self.x[sl].shape[0],), self.sigma, device=self.x.device)
                d = model(self.x[sl], sig, self.coords[sl])
                err.append(((d.float() - self.clean[sl]) ** 2).mean(dim=(1, 2, 3)).cpu())
        finally:
            hook.remove()
        e = torch.cat(err).reshape(4, self.n).to(torch.float64)
        gap = float((e[1].sum() + e[3].sum()) / (e[0].sum() + e[2].sum()).clamp_min(1e-30))
        h = torch.cat(feats).reshape(4, self.n, -1).transpose(0, 1)
        return {"gap": gap, "icr": icr(h)}


@dataclass
class OnsetRule:
    """Memorisation onset: ``gap`` above ``threshold`` at ``patience`` consecutive measurements.
    :meth:`update` returns True at the onset; ``last_good`` is the step of the last measurement
    at or below the threshold before it (None if there was none)."""

    threshold: float = 2.0
    patience: int = 2
    above: int = 0
    last_good: int | None = None
    onset_step: int | None = None

    def update(self, step: int, gap: float) -> bool:
        if gap <= self.threshold:
            self.above, self.last_good = 0, step
            return False
        self.above += 1
        if self.above >= self.patience and self.onset_step is None:
            self.onset_step = step
            return True
        return False
