"""Finite differences for total variation, with their exact adjoints.

Images are batches ``(B, 1, H, W)``. The in-plane gradient uses forward differences with a
Neumann (replicate) boundary, i.e. the difference across the last row / column is zero:

    (D x)[:, 0, i, j] = x[i+1, j] - x[i, j]   (0 on the last row)
    (D x)[:, 1, i, j] = x[i, j+1] - x[i, j]   (0 on the last column)

:func:`divergence` is ``-D^T``, so ``<D x, p> = -<x, div p>``. The slice-axis difference
:func:`gradient_z` treats the batch axis as z (a volume passed as consecutive slices
``(D, 1, H, W)``), with a zero difference after the last slice;
:func:`gradient_z_adjoint` is its adjoint.
"""
from __future__ import annotations

import torch

from ..operators.linalg import fixed_sum

__all__ = ["gradient", "divergence", "gradient_z", "gradient_z_adjoint", "laplacian_z",
           "laplacian_like",
           "tv_norm", "shrink_isotropic", "shrink"]


def gradient(x: torch.Tensor) -> torch.Tensor:
    """Forward differences along H and W: ``(B, 1, H, W) -> (B, 2, H, W)``."""
    g = torch.zeros((x.shape[0], 2, *x.shape[2:]), dtype=x.dtype, device=x.device)
    g[:, 0, :-1, :] = x[:, 0, 1:, :] - x[:, 0, :-1, :]
    g[:, 1, :, :-1] = x[:, 0, :, 1:] - x[:, 0, :, :-1]
    return g


def divergence(p: torch.Tensor) -> torch.Tensor:
    """``-D^T p`` for ``p`` of shape ``(B, 2, H, W)``; returns ``(B, 1, H, W)``."""
    p0, p1 = p[:, 0], p[:, 1]
    d = torch.zeros_like(p0)
    # d/dh part: -D_h^T p0 = p0[i] - p0[i-1] with p0[-1] := 0 and p0[H-1] ignored
    d[:, :-1, :] += p0[:, :-1, :]
    d[:, 1:, :] -= p0[:, :-1, :]
    d[:, :, :-1] += p1[:, :, :-1]
    d[:, :, 1:] -= p1[:, :, :-1]
    return d[:, None]


def gradient_z(x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
    """Forward difference along the batch (slice) axis, zero after the last slice; with
    ``depth`` the batch holds volumes of that many slices and no difference crosses them."""
    v = x.reshape(-1, depth or x.shape[0], *x.shape[1:])
    g = torch.zeros_like(v)
    g[:, :-1] = v[:, 1:] - v[:, :-1]
    return g.reshape(x.shape)


def gradient_z_adjoint(q: torch.Tensor, depth: int | None = None) -> torch.Tensor:
    """Adjoint of :func:`gradient_z` (``q`` of the same shape as the volume)."""
    v = q.reshape(-1, depth or q.shape[0], *q.shape[1:])
    a = torch.zeros_like(v)
    a[:, :-1] -= v[:, :-1]
    a[:, 1:] += v[:, :-1]
    return a.reshape(q.shape)


def laplacian_z(x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
    """``D_z^T D_z x``: the smoothness penalty along z that couples the slices of volumes."""
    return gradient_z_adjoint(gradient_z(x, depth), depth)


def laplacian_like(x: torch.Tensor) -> torch.Tensor:
    """``D^T D x`` (the negative Neumann Laplacian), used in the ADMM x-update."""
    return -divergence(gradient(x))


def tv_norm(x: torch.Tensor, per_item: bool = False) -> torch.Tensor:
    """Isotropic TV ``sum |D x|_2`` (over the whole batch, or one value per batch item; the
    same bits on any number of threads)."""
    mag = gradient(x).pow(2).sum(dim=1).sqrt()
    return fixed_sum(mag, per_item)


def shrink_isotropic(v: torch.Tensor, threshold: float) -> torch.Tensor:
    """Proximal map of ``threshold * |.|_2`` applied to each pixel's gradient vector (dim 1)."""
    mag = v.pow(2).sum(dim=1, keepdim=True).sqrt()
    scale = torch.clamp(1 - threshold / torch.clamp(mag, min=torch.finfo(v.dtype).tiny), min=0)
    return v * scale


def shrink(v: torch.Tensor, threshold: float) -> torch.Tensor:
    """Soft thresholding, the proximal map of ``threshold * |.|_1``."""
    return torch.sign(v) * torch.clamp(v.abs() - threshold, min=0)
