"""Conjugate gradients and power iteration on batches of images (torch only, no package imports).

Operators use them for their data-consistency solve and norm
(:meth:`napari_patchdiff.operators.Operator.solve` and ``Operator.norm``).

Sums and norms here (and wherever a result depends on one: DPS's residual norms, the metrics)
go through :func:`fixed_sum` / :func:`fixed_norm`, whose summation order is fixed by the data's
shape: torch splits a reduction into one value (one image's inner product) between its
threads and rounds it differently on 1 and 2 threads, so a whole run depended on the thread
count. The fixed order costs tens of microseconds per call (``tests/test_reproducibility.py``).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

__all__ = ["cg_steps", "conjugate_gradient", "power_iteration", "fixed_sum", "fixed_norm"]

Linear = Callable[[torch.Tensor], torch.Tensor]

#: the longest last dimension whose rows :func:`fixed_sum` reduces first, and the row length
#: of its later levels (torch reduces fewer than 32768 values into one output on one thread)
ROW = 1024
LAST_DIM_ROWS = 8192


def _two_level(x: torch.Tensor, per_item: bool, reduce) -> torch.Tensor:
    """``reduce`` (over the last dim) of ``x``'s values per batch item ``(B,)`` or of all of
    them (``(1,)``), in an order that depends on ``x``'s shape only. torch splits a reduction
    into one output between its threads (each rounds its part, then the parts are added), but
    a reduction into several outputs by output, so a row is never split: first each row of
    ``x``'s last dimension is reduced on its own (an image row, where it has at most
    :data:`LAST_DIM_ROWS` values), then the row results in rows of :data:`ROW`, until at most
    :data:`ROW` values per item are left, which one thread reduces."""
    b = x.shape[0] if per_item and x.ndim else 1
    w = x.shape[-1] if x.ndim >= 2 else 0
    v = reduce(x.reshape(b, -1, w)) if 1 < w <= LAST_DIM_ROWS else x.reshape(b, -1)
    while v.shape[1] > ROW:
        n = v.shape[1]
        m = n - n % ROW
        rows = reduce(v[:, :m].reshape(b, m // ROW, ROW))
        v = rows if m == n else torch.cat([rows, reduce(v[:, m:])[:, None]], 1)
    return reduce(v)


def fixed_sum(x: torch.Tensor, per_item: bool = False) -> torch.Tensor:
    """The sum of ``x``'s values (0-d), or per batch item (``(B,)``) with ``per_item``, with
    the same bits whatever the number of torch threads (see :func:`_two_level`)."""
    out = _two_level(x, per_item, lambda t: t.sum(-1))
    return out if per_item else out[0]


def fixed_norm(x: torch.Tensor, per_item: bool = False) -> torch.Tensor:
    """The 2-norm of ``x`` (0-d, real), or per batch item (``(B,)``) with ``per_item``, with
    the same bits whatever the number of torch threads: a norm of row norms (differentiable
    like ``torch.linalg.vector_norm``, zero included)."""
    out = _two_level(x, per_item, lambda t: torch.linalg.vector_norm(t, dim=-1))
    return out if per_item else out[0]


def _dot(a: torch.Tensor, b: torch.Tensor, per_item: bool) -> torch.Tensor:
    """Inner product per batch item ``(B, 1, 1, 1)`` or over the whole batch (0-d)."""
    if per_item:
        return fixed_sum(a * b, True).reshape(-1, *([1] * (a.ndim - 1)))
    return fixed_sum(a * b)


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
    v = start / fixed_norm(start)
    lam = 0.0
    for _ in range(max(1, int(iterations))):
        w = apply(v)
        lam = float(fixed_sum(w * v))
        n = float(fixed_norm(w))
        if n == 0:
            break
        v = w / n
    return lam
