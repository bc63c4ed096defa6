"""A linear-Gaussian test model: an analytic Gaussian prior with its exact denoiser, a small
linear operator and the closed-form posterior (float64, tiny images).

With a Gaussian prior N(mu, Sigma) the exact denoiser is D(x, s) = mu + Sigma (Sigma + s^2 I)^-1
(x - mu); with a linear operator and Gaussian noise the posterior is Gaussian:
C = (Sigma^-1 + A^T A / sy^2)^-1, m = C (Sigma^-1 mu + A^T y / sy^2).
"""
from __future__ import annotations

import torch

from napari_patchdiff.operators import make_operator
from napari_patchdiff.priors.prior import Prior
from napari_patchdiff.solvers.noise_source import NoiseSource

DT = torch.float64
N = 8  # image side (operators need >= 8)


class GaussianPrior(Prior):
    """Prior N(mu, Sigma) on flattened (H*W) images, with its exact (Tweedie) denoiser."""

    name = "gaussian"

    def __init__(self, mu: torch.Tensor, Sigma: torch.Tensor):
        super().__init__()
        self.mu = mu.reshape(-1).to(DT)
        self.Sigma = Sigma.to(DT)
        self.evals, self.U = torch.linalg.eigh(self.Sigma)

    def _denoise(self, x, sigma, generator):
        b = x.shape[0]
        flat = x.reshape(b, -1).to(DT) - self.mu
        s2 = torch.as_tensor(sigma, dtype=DT).reshape(-1, 1) ** 2
        shrink = self.evals / (self.evals + s2)  # (1 or B, n)
        out = ((flat @ self.U) * shrink) @ self.U.T + self.mu
        return out.reshape(x.shape)


def smooth_prior(n=N, mean=0.5, std=0.2, length=1.5, nugget=1e-3):
    """Squared-exponential covariance on an n x n grid (plus a small nugget)."""
    ii, jj = torch.meshgrid(torch.arange(n, dtype=DT), torch.arange(n, dtype=DT), indexing="ij")
    p = torch.stack([ii.reshape(-1), jj.reshape(-1)], 1)
    d2 = ((p[:, None] - p[None]) ** 2).sum(-1)
    Sigma = std**2 * torch.exp(-d2 / (2 * length**2)) + nugget * torch.eye(n * n, dtype=DT)
    return GaussianPrior(torch.full((n * n,), mean, dtype=DT), Sigma)


def dense_matrix(op):
    """The matrix of a real linear operator, columns = A e_k."""
    n = op.image_shape[0] * op.image_shape[1]
    eye = torch.eye(n, dtype=DT).reshape(n, 1, *op.image_shape)
    return op.forward(eye).reshape(n, -1).T


def exact_posterior(prior, op, y, sy):
    A = dense_matrix(op)
    Si = torch.linalg.inv(prior.Sigma)
    C = torch.linalg.inv(Si + A.T @ A / sy**2)
    C = (C + C.T) / 2
    m = C @ (Si @ prior.mu + A.T @ y.reshape(-1) / sy**2)
    return m, C


class ZeroNoise(NoiseSource):
    """A noise stream of zeros: the 'zero-noise path' of a sampler."""

    def randn(self, shape, dtype=None, device=None):
        return super().randn(shape, dtype, device) * 0


def problem(sy=0.05, fraction=0.5, seed=1):
    prior = smooth_prior()
    op = make_operator("inpaint", (N, N), dtype=DT, fraction=fraction)
    g = torch.Generator().manual_seed(seed)
    L = torch.linalg.cholesky(prior.Sigma)
    x_true = (prior.mu + L @ torch.randn(N * N, generator=g, dtype=DT)).reshape(1, 1, N, N)
    y = op.forward(x_true) + sy * op.forward(torch.randn(1, 1, N, N, generator=g, dtype=DT))
    return prior, op, x_true, y


def last(gen):
    ev = None
    for ev in gen:
        pass
    return ev
