"""Unconditional sampling from a prior with the EDM noise schedule (Karras et al. 2022).

``edm_sigmas`` is the rho = 7 schedule the samplers share; ``sample_unconditional`` runs the
deterministic Heun sampler (2 network evaluations per step but the last), used to look at
what a prior has learned.
"""
from __future__ import annotations

import torch

__all__ = ["edm_sigmas", "sample_unconditional"]


def edm_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 10.0, rho: float = 7.0,
               device="cpu", dtype=torch.float64) -> torch.Tensor:
    """``steps`` noise levels from ``sigma_max`` down to ``sigma_min``, then a final 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    i = torch.arange(steps, dtype=torch.float64)
    frac = i / max(steps - 1, 1)
    s = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)]).to(device=device, dtype=dtype)


@torch.no_grad()
def sample_unconditional(prior, shape, steps: int = 18, sigma_min: float = 0.002,
                         sigma_max: float = 10.0, generator: torch.Generator | None = None,
                         dtype=torch.float32) -> torch.Tensor:
    """Draw ``shape = (B, 1, H, W)`` images from ``prior`` by the deterministic Heun sampler.

    The initial noise comes from ``generator`` (CPU), so a seed fixes the result.
    """
    sig = edm_sigmas(steps, sigma_min, sigma_max)
    x = torch.randn(shape, generator=generator, dtype=torch.float64).to(prior.device, dtype)
    x = x * float(sig[0])
    for s, s_next in zip(sig[:-1].tolist(), sig[1:].tolist()):
        d = (x - prior.denoise(x, s, generator=generator)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = (x_next - prior.denoise(x_next, s_next, generator=generator)) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d_next)
        x = x_next
    return x
