"""Conjugate gradients and power iteration on batches of images (torch only, no package imports).

Operators use them for their data-consistency solve and norm
(:meth:`napari_patchdiff.operators.Operator.solve` and ``Operator.norm``).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

__all__ = ["cg_steps", "conjugate_gradient", "power_iteration"]

Linear = Callable[[torch.Tensor], torch.Tensor]


def _dot(a: torch.Tensor, b: torch.Tensor, per_item: bool) -> torch.Tensor:
    """Inner product per batch item ``(B, 1, 1, 1)`` or over the whole batch (0-d)."""
    if per_item:
        return (a * b).sum(dim=tuple(range(1, a.ndim)), keepdim=True)
    return (a * b).sum()


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def cg_steps(apply: Linear, b: torch.Tensor, x: torch.Tensor,
             per_item: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Conjugate gradients for ``apply(x) = b`` (``apply`` symmetric positive semi-definite).

    Yields ``(x, r)`` after each iteration, where ``r = b - apply(x)``. With ``per_item`` the step
    sizes are computed per batch item (valid when ``apply`` acts on each item separately);
    otherwise from whole-batch inner products (needed when ``apply`` couples the items).
    Out-of-place updates: yielded tensors are never modified afterwards.
    """
    r = b - apply(x)
    p = r
    rr = _dot(r, r, per_item)
    # an item whose residual fell to round-off level (relative to ||b||, or absolutely when b = 0)
    # stops moving: with a projection A^T A (MRI, inpainting) CG converges in one step and
    # further steps would divide round-off by round-off
    eps = torch.finfo(b.dtype).eps
    floor = (100 * eps) ** 2 * torch.clamp(_dot(b, b, per_item), min=torch.finfo(b.dtype).tiny)
    while True:
        ap = apply(p)
        pap = _dot(p, ap, per_item)
        active = (rr > floor) & (pap > 0)
        alpha = torch.where(active, _safe_div(rr, pap), torch.zeros_like(rr))
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = _dot(r, r, per_item)
        beta = torch.where(active, _safe_div(rr_new, rr), torch.zeros_like(rr))
        p = r + beta * p
        rr = rr_new
        yield x, r


def conjugate_gradient(apply: Linear, b: torch.Tensor, x0: torch.Tensor, iterations: int,
                       per_item: bool = True) -> torch.Tensor:
    """Run ``iterations`` CG steps on ``apply(x) = b`` from ``x0`` and return ``x``."""
    x = x0
    if iterations <= 0:
        return x
    for k, (x, _) in enumerate(cg_steps(apply, b, x0, per_item), start=1):
        if k >= iterations:
            break
    return x


def power_iteration(apply: Linear, start: torch.Tensor, iterations: int = 20) -> float:
    """The largest eigenvalue of the symmetric positive semi-definite ``apply``, estimated by the
    Rayleigh quotient after ``iterations`` power steps from ``start`` (a lower bound, accurate to
    a few percent after 20 steps); 0 if ``apply`` maps ``start`` to zero."""
    v = start / start.norm()
    lam = 0.0
    for _ in range(max(1, int(iterations))):
        w = apply(v)
        lam = float((w * v).sum())
        n = float(w.norm())
        if n == 0:
            break
        v = w / n
    return lam
